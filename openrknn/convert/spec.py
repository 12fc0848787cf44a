"""`openrknn convert` YAML files: our flat layout or the vendor's rknn_convert `models:` layout -> a ConvertSpec,
then load, build and export through the one conversion core."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..config import KNOWN_KEYS, make_config
from ..errors import ConfigError


@dataclass
class ConvertSpec:
    model: Path
    output: Path
    weights: Optional[Path] = None  # Darknet .weights / Caffe .caffemodel (default: beside the model, same name)
    input_size_list: Optional[List[List[int]]] = None
    input_initial_val: Optional[list] = None  # ONNX: one value or null per input, as load_onnx takes it
    inputs: Optional[List[str]] = None
    outputs: Optional[List[str]] = None
    config: Dict[str, Any] = field(default_factory=dict)
    do_quantization: bool = False
    dataset: Optional[Path] = None
    rknn_batch_size: Optional[int] = None
    pre_compile: bool = False
    auto_hybrid: bool = False


_TOP_KEYS = {"model", "weights", "output", "input_size_list", "input_initial_val", "inputs", "outputs", "config",
             "build"}
_BUILD_KEYS = {"do_quantization", "dataset", "rknn_batch_size", "pre_compile", "auto_hybrid"}
# The vendor's rknn_convert layout: models: {name, platform, model_file_path, quantize, dataset, configs, ...}
_VENDOR_KEYS = {"name", "platform", "model_file_path", "quantize", "dataset", "configs", "subgraphs",
                "input_size_list", "output_path", "pt_file_path", "prototxt_file_path", "caffemodel_file_path",
                "darknet_cfg_path", "darknet_weights_path"}
# the vendor's per-format file keys: (model file key, weights file key)
_VENDOR_FILES = (("model_file_path", None), ("pt_file_path", None), ("prototxt_file_path", "caffemodel_file_path"),
                 ("darknet_cfg_path", "darknet_weights_path"))


def _resolve(base: Path, p: Optional[str]) -> Optional[Path]:
    if p is None:
        return None
    q = Path(str(p)).expanduser()
    return q if q.is_absolute() else (base / q)


def read_yaml_file(path: "str | Path", what: str) -> Any:
    """The YAML document of ``path`` (a convert or sweep file); ConfigError naming ``what`` when it is missing or not
    YAML."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(what, str(path), hint="the YAML file does not exist")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError("<yaml>", str(path), hint=f"not valid YAML: {e}") from None


def parse_spec(data: Any, base: Path, output: Optional[str] = None) -> ConvertSpec:
    """Validate a conversion spec (our flat layout or the vendor's `models:` layout); paths are relative to `base`."""
    if not isinstance(data, dict):
        raise ConfigError("<yaml>", type(data).__name__, hint="the YAML file must be a mapping with 'model:' (or the "
                          "vendor's 'models:') at the top")
    if "models" in data:
        m = data["models"]
        if isinstance(m, list):
            if len(m) != 1:
                raise ConfigError("models", f"{len(m)} entries", hint="convert one model per file")
            m = m[0]
        if not isinstance(m, dict):
            raise ConfigError("models", m, hint="'models:' must be a mapping")
        unknown = set(m) - _VENDOR_KEYS
        if unknown:
            raise ConfigError(sorted(unknown)[0], m[sorted(unknown)[0]], sorted(_VENDOR_KEYS))
        files = next(((m[k], m.get(w) if w else None) for k, w in _VENDOR_FILES if m.get(k)), None)
        if files is None:
            raise ConfigError("models.model_file_path", None, hint="name the model file to convert (.onnx, .pt, "
                              ".tflite, .pb; prototxt_file_path + caffemodel_file_path for Caffe; darknet_cfg_path "
                              "+ darknet_weights_path for Darknet)")
        sub = m.get("subgraphs") or {}
        flat = {"model": files[0], "weights": files[1],
                "input_size_list": (m.get("input_size_list") or sub.get("input_size_list")
                                    or sub.get("input-size-list")),
                "inputs": sub.get("inputs"), "outputs": sub.get("outputs"), "config": m.get("configs") or {},
                "build": {"do_quantization": bool(m.get("quantize", False)), "dataset": m.get("dataset")}}
        out_default = Path(m.get("output_path") or ".") / f"{m.get('name') or Path(files[0]).stem}.rknn"
        flat["output"] = str(out_default)
        data = flat
    unknown = set(data) - _TOP_KEYS
    if unknown:
        key = sorted(unknown)[0]
        hint = ""
        if key in KNOWN_KEYS:
            hint = f"'{key}' is a config() option: put it under 'config:'"
        elif key in _BUILD_KEYS:
            hint = f"'{key}' is a build() option: put it under 'build:'"
        raise ConfigError(key, data[key], sorted(_TOP_KEYS), hint)
    if not data.get("model"):
        raise ConfigError("model", None, hint="name the model file to convert (.onnx, .pt, .tflite, a Darknet .cfg, "
                          "a Caffe .prototxt or a TensorFlow .pb)")
    cfg = data.get("config") or {}
    if not isinstance(cfg, dict):
        raise ConfigError("config", cfg, hint="'config:' must be a mapping of config() options")
    make_config(**cfg)  # validate now, so a bad value fails before the slow load
    build = data.get("build") or {}
    if not isinstance(build, dict) or set(build) - _BUILD_KEYS:
        bad = sorted(set(build) - _BUILD_KEYS) if isinstance(build, dict) else ["build"]
        raise ConfigError(f"build.{bad[0]}", build.get(bad[0]) if isinstance(build, dict) else build,
                          sorted(_BUILD_KEYS))
    model = _resolve(base, data["model"])
    out = Path(output) if output else (_resolve(base, data.get("output")) or model.with_suffix(".rknn"))
    return ConvertSpec(model=model, output=out, weights=_resolve(base, data.get("weights")),
                       input_size_list=data.get("input_size_list"), input_initial_val=data.get("input_initial_val"),
                       inputs=data.get("inputs"), outputs=data.get("outputs"), config=cfg,
                       # a dataset means quantize, as build() defaults to and a sweep file implies; a file with
                       # no dataset builds float (build() would look for dataset.txt)
                       do_quantization=bool(build.get("do_quantization", bool(build.get("dataset")))),
                       dataset=_resolve(base, build.get("dataset")), rknn_batch_size=build.get("rknn_batch_size"),
                       pre_compile=bool(build.get("pre_compile", False)),
                       auto_hybrid=bool(build.get("auto_hybrid", False)))


def run_spec(spec: ConvertSpec):
    """Load, build and export; returns the BuildResult. The output file appears only when everything succeeded."""
    from ..package import write_package
    from .build import BuildOptions, build
    from .loaders import load_model

    cfg = make_config(**spec.config)
    loaded = load_model(spec.model, spec.input_size_list or cfg.dynamic_base, spec.inputs, spec.outputs,
                        weights=spec.weights, input_initial_val=spec.input_initial_val)
    opts = BuildOptions(do_quantization=spec.do_quantization, dataset=str(spec.dataset) if spec.dataset else None,
                        pre_compile=spec.pre_compile, rknn_batch_size=spec.rknn_batch_size,
                        auto_hybrid=spec.auto_hybrid)
    result = build(loaded, cfg, opts)
    write_package(spec.output, result.package)
    return result
