"""LoadedModel + config -> the deployable float graph: optimised, with the board's pre-processing inside."""

from __future__ import annotations

import logging
from typing import List, Tuple

import onnx

from ..config import BuildConfig
from ..errors import BuildError, ConfigError
from ..frontends import LoadedModel
from ..graph import optimize as graph_optimize
from ..graph import preprocess

log = logging.getLogger("openrknn.build")


def dims(value_info) -> List[int]:
    return [d.dim_value if d.HasField("dim_value") else -1 for d in value_info.type.tensor_type.shape.dim]


def check_config_against_model(cfg: BuildConfig, model: onnx.ModelProto) -> List[int]:
    """mean/std/reorder must fit the image inputs; returns their channel counts."""
    channels = []
    for inp in model.graph.input:
        channels.append(dims(inp)[1] if preprocess.is_image_input(inp) else 1)
    image_inputs = [i for i, inp in enumerate(model.graph.input) if preprocess.is_image_input(inp)]
    if not image_inputs and any(v is not None for v in (cfg.mean_values, cfg.std_values, cfg.reorder_channel)):
        raise ConfigError("mean_values", cfg.mean_values, hint="the model has no 4-D image input, so mean/std/reorder "
                          "cannot apply; leave them unset")
    cfg.check_channels(channels)
    return channels


def build_float_graph(loaded: LoadedModel, cfg: BuildConfig) -> Tuple[onnx.ModelProto, List[dict], List[str]]:
    """Optimise, then put the pre-processing inside the graph. Returns (model, input metas, notes)."""
    model = onnx.ModelProto()
    model.CopyFrom(loaded.model)
    check_config_against_model(cfg, model)
    notes: List[str] = []
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
