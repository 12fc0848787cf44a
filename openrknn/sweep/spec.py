"""The sweep YAML: an `openrknn convert` file plus a `sweep:` block (lists of values) and an `evaluation:` block.

```
model: yolox_nano.onnx            # the convert file's keys: model, input_size_list, inputs, outputs, config, build
config: {mean_values: [0, 0, 0], std_values: [1, 1, 1]}
build: {dataset: calib.txt}       # do_quantization is implied
sweep:                            # every combination of these lists is one configuration
  target_platform: [rk1808, rk3588]
  quantized_dtype: [asymmetric_quantized-u8, w8a8]  # a dtype is kept only for targets whose NPU runs it
  quantized_method: [layer, channel]
  quantized_algorithm: [normal, kl_divergence, mmse]
  weight_rounding: [auto, nearest]
  auto_hybrid: [false, 0.99]      # false = plain build; a number = auto hybrid with that cosine threshold
evaluation: {...}                 # see evaluation.EvalSpec
```
Any config() key may be listed under `sweep:`; a single value is the same as a list of one. `sweep:` may also be a
list of such blocks: the union of their combinations (e.g. one block per chip).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..config import KNOWN_KEYS, make_config
from ..convert.loaders import WEIGHT_SUFFIXES, model_kind, weights_beside
from ..convert.spec import ConvertSpec, parse_spec, read_yaml_file
from ..errors import ConfigError
from .. import targets
from .evaluation import EvalSpec, parse_eval

SWEEP_KEYS = tuple(k for k in KNOWN_KEYS if k not in ("mean_values", "std_values", "reorder_channel")) + \
    ("auto_hybrid",)
_SHORT_DTYPE = {"asymmetric_quantized-u8": "u8", "dynamic_fixed_point-i8": "dfp-i8", "dynamic_fixed_point-i16":
                "dfp-i16"}


@dataclass(frozen=True)
class Configuration:
    """One point of the sweep: config() options and whether to run auto hybrid (its threshold, or None)."""

    config: Tuple[Tuple[str, Any], ...]  # sorted (key, value) pairs, the whole config() of the build
    auto_hybrid: Optional[float] = None

    @property
    def options(self) -> Dict[str, Any]:
        return dict(self.config)

    @property
    def target(self) -> str:
        return self.options["target_platform"]

    @property
    def label(self) -> str:
        o = self.options
        rounding = {"auto": "gptq"}.get(o.get("weight_rounding", "auto"), o.get("weight_rounding"))
        parts = [o["target_platform"], _SHORT_DTYPE.get(o["quantized_dtype"], o["quantized_dtype"]),
                 o["quantized_method"], o["quantized_algorithm"], rounding]
        extra = [f"{k}={v}" for k, v in self.config if k not in ("target_platform", "quantized_dtype",
                 "quantized_method", "quantized_algorithm", "weight_rounding", "mean_values", "std_values",
                 "reorder_channel", "quant_img_RGB2BGR") and v != _DEFAULTS.get(k)]
        if self.auto_hybrid is not None:
            extra.append(f"hybrid@{self.auto_hybrid:g}")
        return " ".join(parts + extra)

    def identity(self) -> dict:
        return {"config": self.options, "auto_hybrid": self.auto_hybrid}


_DEFAULTS = make_config().to_dict()


@dataclass
class SweepSpec:
    convert: ConvertSpec
    configurations: List[Configuration]
    evaluation: EvalSpec
    skipped: List[str] = field(default_factory=list)  # combinations whose dtype the target does not run
    source: Optional[Path] = None

    def fingerprint(self) -> str:
        """Hash of what every result depends on besides its configuration: model and calibration file contents,
        load options and the evaluation (a changed file or evaluation invalidates cached results)."""
        h = hashlib.sha256()
        h.update(_file_digest(self.convert.model))
        kind = model_kind(self.convert.model)
        if kind in WEIGHT_SUFFIXES:
            h.update(_file_digest(self.convert.weights or weights_beside(self.convert.model, kind)))
        if self.convert.dataset is not None:
            h.update(_dataset_digest(self.convert.dataset))
        h.update(json.dumps({"input_size_list": self.convert.input_size_list, "inputs": self.convert.inputs,
                             "outputs": self.convert.outputs, "rknn_batch_size": self.convert.rknn_batch_size},
                            sort_keys=True, default=str).encode())
        h.update(self.evaluation.fingerprint().encode())
        from .. import __version__

        h.update(__version__.encode())
        return h.hexdigest()


def configuration_key(fingerprint: str, conf: Configuration) -> str:
    return hashlib.sha256((fingerprint + json.dumps(conf.identity(), sort_keys=True, default=str)).encode()) \
        .hexdigest()[:20]


def _file_digest(path: Path) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.digest()


def _dataset_digest(listing: Path) -> bytes:
    """The dataset file and every file it lists (so an edited calibration image is a new sweep)."""
    from .files import dataset_files

    h = hashlib.sha256(_file_digest(listing))
    for p in dataset_files(listing):
        h.update(p.name.encode())
        h.update(_file_digest(p))
    return h.digest()


def _as_list(key: str, value: Any) -> List[Any]:
    if isinstance(value, list):
        if not value:
            raise ConfigError(f"sweep.{key}", value, hint="give at least one value")
        return value
    return [value]


def _hybrid(value: Any) -> Optional[float]:
    if value is False or value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < float(value) <= 1:
        raise ConfigError("sweep.auto_hybrid", value, "false (plain build) or a cosine threshold in (0, 1]")
    return float(value)


def expand(base_config: Dict[str, Any], block: Any) -> Tuple[List[Configuration], List[str]]:
    """Every combination of the sweep block's lists on top of the convert file's config; combinations whose
    quantized_dtype their target does not run are skipped (returned as labels), any other bad value is an error.
    A list of blocks is the union of their combinations (in order, each configuration once)."""
    if isinstance(block, list) and block:
        confs: List[Configuration] = []
        skipped: List[str] = []
        for part in block:
            c, sk = expand(base_config, part)
            confs += [x for x in c if x not in confs]
            skipped += sk
        return confs, sorted(set(skipped))
    if not isinstance(block, dict) or not block:
        raise ConfigError("sweep", block, hint="a mapping of config() keys to lists of values, e.g. "
                          "{quantized_algorithm: [normal, kl_divergence]}, or a list of such mappings")
    unknown = [k for k in block if k not in SWEEP_KEYS]
    if unknown:
        hint = "mean/std/reorder are the model's contract, not a setting to sweep" if unknown[0] in KNOWN_KEYS else ""
        raise ConfigError(f"sweep.{unknown[0]}", block[unknown[0]], SWEEP_KEYS, hint)
    keys = list(block)
    lists = [_as_list(k, block[k]) for k in keys]
    confs: List[Configuration] = []
    skipped: List[str] = []
    seen = set()
    for values in itertools.product(*lists):
        options = dict(base_config)
        hybrid = None
        for k, v in zip(keys, values):
            if k == "auto_hybrid":
                hybrid = _hybrid(v)
            else:
                options[k] = v
        if hybrid is not None:
            options["auto_hybrid_cos_thresh"] = hybrid
        targets_ = options.get("target_platform") or "rk1808"
        if isinstance(targets_, list):
            if len(targets_) != 1:
                raise ConfigError("target_platform", targets_, hint="a sweep builds for one target per "
                                  "configuration: list chips under sweep.target_platform")
            targets_ = targets_[0]
        dtype = options.get("quantized_dtype")
        gen = targets.NPU_GENERATION.get(str(targets_).lower())
        if dtype is not None and gen is not None and dtype not in targets.QUANTIZED_DTYPES[gen]:
            skipped.append(f"{targets_} {dtype}")
            continue
        cfg = make_config(**options)  # ConfigError names the key and value
        full = cfg.to_dict()
        full["target_platform"] = cfg.target
        for k in ("mean_values", "std_values", "reorder_channel"):
            if full[k] is None:
                full.pop(k)
        conf = Configuration(tuple(sorted((k, _freeze(v)) for k, v in full.items())), hybrid)
        if conf not in seen:
            seen.add(conf)
            confs.append(conf)
    if not confs:
        raise ConfigError("sweep", block, hint="no combination is valid: every quantized_dtype listed belongs to "
                          "another NPU generation than the targets listed")
    return confs, sorted(set(skipped))


def _freeze(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)
    return v


def thaw(v: Any) -> Any:
    if isinstance(v, tuple):
        return [thaw(x) for x in v]
    return v


def config_kwargs(frozen) -> Dict[str, Any]:
    """config() keyword arguments of a configuration's frozen (key, value) pairs: reorder_channel back in the
    vendor's string form, the only one config() takes."""
    config = {k: thaw(v) for k, v in frozen}
    if isinstance(config.get("reorder_channel"), list):
        config["reorder_channel"] = "#".join(" ".join(str(i) for i in g) for g in config["reorder_channel"])
    return config


def parse_sweep(data: Any, base: Path) -> SweepSpec:
    """Validate a sweep YAML document; paths are relative to ``base`` (the file's folder)."""
    if not isinstance(data, dict):
        raise ConfigError("<yaml>", type(data).__name__, hint="the sweep file must be a mapping with model:, "
                          "sweep: and evaluation:")
    if "sweep" not in data:
        raise ConfigError("sweep", None, hint="add a 'sweep:' block listing the values to try, e.g. "
                          "quantized_algorithm: [normal, kl_divergence, mmse]")
    if "evaluation" not in data:
        raise ConfigError("evaluation", None, hint="add an 'evaluation:' block with at least 'images:' (the "
                          "validation images) and optionally 'metric:'")
    convert_part = {k: v for k, v in data.items() if k not in ("sweep", "evaluation")}
    convert_part.setdefault("output", "sweep.rknn")  # unused: each configuration's model goes in the output folder
    build = dict(convert_part.get("build") or {})
    if build.get("do_quantization") is False:
        raise ConfigError("build.do_quantization", False, hint="a sweep compares quantized builds; the float model "
                          "is the reference row of every sweep")
    build["do_quantization"] = True
    convert_part["build"] = build
    spec = parse_spec(convert_part, base)
    if spec.dataset is None:
        raise ConfigError("build.dataset", None, hint="name the calibration dataset.txt under 'build:'")
    if spec.auto_hybrid:
        raise ConfigError("build.auto_hybrid", True, hint="list it under 'sweep:' instead, e.g. auto_hybrid: "
                          "[false, 0.99]")
    confs, skipped = expand(spec.config, data["sweep"])
    evaluation = parse_eval(data["evaluation"], base)
    return SweepSpec(spec, confs, evaluation, skipped)


def load_sweep_file(path: "str | Path") -> SweepSpec:
    path = Path(path)
    spec = parse_sweep(read_yaml_file(path, "sweep file"), path.parent)
    spec.source = path
    return spec


def convert_document(spec: SweepSpec, conf: Configuration, output: str, model: Optional[str] = None,
                     dataset: Optional[str] = None) -> dict:
    """The `openrknn convert` YAML document that rebuilds ``conf`` (absolute paths unless given)."""
    c = spec.convert
    config = config_kwargs((k, v) for k, v in conf.config if v != _DEFAULTS.get(k) or k in (
        "target_platform", "quantized_dtype", "quantized_method", "quantized_algorithm"))
    for k in ("mean_values", "std_values"):
        if k in config:
            config[k] = [list(map(float, g)) for g in config[k]]
    doc: Dict[str, Any] = {"model": model or str(c.model.resolve()), "output": output}
    if c.weights is not None:
        doc["weights"] = str(Path(c.weights).resolve())
    for k in ("input_size_list", "inputs", "outputs"):
        if getattr(c, k) is not None:
            doc[k] = getattr(c, k)
    doc["config"] = config
    build: Dict[str, Any] = {"do_quantization": True, "dataset": dataset or str(Path(c.dataset).resolve())}
    if c.rknn_batch_size:
        build["rknn_batch_size"] = c.rknn_batch_size
    if conf.auto_hybrid is not None:
        build["auto_hybrid"] = True
    doc["build"] = build
    return doc
