"""build(): loaded model + config -> the deployable graph -> an in-memory .rknn package.

One direction: frontends -> graph passes (optimise, attach + fold pre-processing) -> quant -> package.
"""

from __future__ import annotations

import datetime as _dt
import logging
import time
from dataclasses import dataclass, field
from typing import List, Optional

import onnx
from onnx import helper

from . import __version__
from .config import BuildConfig
from .errors import BuildError, ConfigError
from .frontends import LoadedModel
from .graph import optimize as graph_optimize
from .graph import preprocess
from .package import RknnPackage

log = logging.getLogger("openrknn.build")


@dataclass
class BuildResult:
    package: RknnPackage
    float_model: onnx.ModelProto  # the float graph with pre-processing, before quantization
    model: onnx.ModelProto  # what the package holds (float or QDQ)
    notes: List[str] = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    quant_report: Optional[dict] = None


def _dims(vi) -> List[int]:
    return [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]


def _output_meta(model: onnx.ModelProto) -> List[dict]:
    inferred = onnx.shape_inference.infer_shapes(model)
    out = []
    for o in inferred.graph.output:
        out.append({"name": o.name, "shape": _dims(o),
                    "dtype": helper.tensor_dtype_to_np_dtype(o.type.tensor_type.elem_type).name})
    return out


def check_config_against_model(cfg: BuildConfig, model: onnx.ModelProto) -> List[int]:
    """mean/std/reorder must fit the image inputs; returns their channel counts."""
    channels = []
    for inp in model.graph.input:
        dims = _dims(inp)
        channels.append(dims[1] if preprocess.is_image_input(inp) else 1)
    image_inputs = [i for i, inp in enumerate(model.graph.input) if preprocess.is_image_input(inp)]
    if not image_inputs and any(v is not None for v in (cfg.mean_values, cfg.std_values, cfg.reorder_channel)):
        raise ConfigError("mean_values", cfg.mean_values, hint="the model has no 4-D image input, so mean/std/reorder "
                          "cannot apply; leave them unset")
    cfg.check_channels(channels)
    return channels


def build_float_graph(loaded: LoadedModel, cfg: BuildConfig):
    """Optimise, then put the pre-processing inside the graph. Returns (model, input metas, notes)."""
    model = onnx.ModelProto()
    model.CopyFrom(loaded.model)
    check_config_against_model(cfg, model)
    notes = []
    model = graph_optimize.optimize(model, cfg.optimization_level)
    specs = preprocess.make_specs(model, cfg.mean_values, cfg.std_values, cfg.reorder_channel)
    metas = preprocess.attach(model, specs)
    if cfg.optimization_level >= 3:
        notes += preprocess.fold_into_first_conv(model, metas)
    model = onnx.shape_inference.infer_shapes(model)
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # a pass produced an invalid graph: that is our bug, say so plainly
        raise BuildError(f"internal error: the optimised graph is invalid ({e}); retry with optimization_level=0 and "
                         "report this model") from None
    for m in metas:
        pre = m.get("preprocess")
        if pre:
            log.info("input '%s': feed %s uint8 NHWC; model channel c = feed channel %s; mean %s std %s (model "
                     "channel order)", m["name"], m["shape"], pre["reorder_channel"] or "c (no reorder)",
                     pre["mean"], pre["std"])
    return model, metas, notes


def build(loaded: LoadedModel, cfg: BuildConfig, do_quantization: bool = True, dataset: Optional[str] = None,
          pre_compile: bool = False, rknn_batch_size: Optional[int] = None, quantize_fn=None,
          quant_overrides: Optional[dict] = None) -> BuildResult:
    """quant_overrides: hybrid quantization, {tensor or weight name: 'int8' | 'uint8' | 'int16' | 'float'}."""
    t0 = time.perf_counter()
    if rknn_batch_size is not None and (isinstance(rknn_batch_size, bool) or not isinstance(rknn_batch_size, int)
                                        or rknn_batch_size < 1):
        raise BuildError(f"rknn_batch_size={rknn_batch_size!r} must be a positive integer (or None for 1)")
    if pre_compile:
        log.warning("pre_compile=True has no effect with openrknn: the model stays runnable in the simulator and on "
                    "boards running the openrknn runtime server")
    # Vendor options kept for script compatibility; say so rather than silently ignoring them.
    for key, default, why in (("force_builtin_perm", False, "inputs are always NHWC with the permute inside the graph"),
                              ("quantize_input_node", False, "the input is always quantized by the graph's first "
                               "quantize step"),
                              ("output_optimize", 0, "outputs keep their float layout")):
        if getattr(cfg, key) != default:
            log.info("%s=%r is recorded but changes nothing in openrknn: %s", key, getattr(cfg, key), why)
    float_model, metas, notes = build_float_graph(loaded, cfg)
    timings = {"float_graph_s": time.perf_counter() - t0}
    model = float_model
    quant_meta = None
    quant_report = None
    if do_quantization:
        if quantize_fn is None:
            from .quant_bridge import quantize_for_build as quantize_fn
        t1 = time.perf_counter()
        model, quant_meta, quant_report = quantize_fn(float_model, metas, cfg, dataset, overrides=quant_overrides)
        timings["quantize_s"] = time.perf_counter() - t1
    batch = rknn_batch_size or 1
    outputs = _output_meta(model)
    if batch > 1:  # the file records what the application feeds and gets back: N frames per call
        for m in metas + outputs:
            m["shape"] = [m["shape"][0] * batch] + list(m["shape"][1:])
    build_opts = {k: v for k, v in cfg.to_dict().items() if k not in ("mean_values", "std_values", "reorder_channel")}
    build_opts.update({"do_quantization": bool(do_quantization), "dataset": str(dataset) if dataset else None,
                       "pre_compile": bool(pre_compile), "rknn_batch_size": rknn_batch_size or 1})
    metadata = {
        "toolkit": "openrknn",
        "toolkit_version": __version__,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "target_platform": list(cfg.target_platform),
        "inputs": metas,
        "outputs": outputs,
        "build": build_opts,
        "quantization": quant_meta,
        "source": {"framework": loaded.framework, "file": loaded.source_file, "sha256": loaded.source_sha256,
                   "notes": loaded.notes + notes},
    }
    model.producer_name, model.producer_version = "openrknn", __version__
    # A quantized model keeps its float graph beside it so accuracy_analysis also works after load_rknn.
    float_ref = float_model.SerializeToString() if do_quantization else None
    pkg = RknnPackage(metadata=metadata, model_bytes=model.SerializeToString(), float_model_bytes=float_ref)
    timings["total_s"] = time.perf_counter() - t0
    log.info("build done in %.2f s (%s)", timings["total_s"], "int8" if do_quantization else "float")
    return BuildResult(pkg, float_model, model, loaded.notes + notes, timings, quant_report)
