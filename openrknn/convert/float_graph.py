"""LoadedModel + config -> the deployable float graph: optimised, with the board's pre-processing inside."""

from __future__ import annotations

import dataclasses
import logging
from typing import List, Tuple

import onnx

from ..config import BuildConfig
from ..errors import BuildError, ConfigError
from ..frontends import LoadedModel
from ..frontends.onnx import STRICT_CHECK_NOTE
from ..graph import optimize as graph_optimize
from ..graph import layout, preprocess
from ..graph.fold import einsum_as_matmul, vector_matmuls
from ..graph.shapes import infer_shapes

log = logging.getLogger("openrknn.build")


def dims(value_info) -> List[int]:
    return [d.dim_value if d.HasField("dim_value") else -1 for d in value_info.type.tensor_type.shape.dim]


def check_config_against_model(cfg: BuildConfig, model: onnx.ModelProto) -> List[int]:
    """mean/std/reorder must fit the image inputs (channels counted in each input's own layout, graph/layout.py);
    returns their channel counts."""
    layouts = preprocess.input_layouts(model, cfg.mean_values, cfg.std_values, cfg.reorder_channel, cfg.input_layout)
    channels = [lay.channels if lay is not None else 1 for lay in layouts]
    if all(lay is None for lay in layouts) and any(
            v is not None for v in (cfg.mean_values, cfg.std_values, cfg.reorder_channel)):
        raise ConfigError("mean_values", cfg.mean_values, hint="the model has no 4-D image input, so mean/std/reorder "
                          "cannot apply; leave them unset")
    counts = list(channels)
    for i, (lay, inp) in enumerate(zip(layouts, model.graph.input)):
        if lay is None:
            counts[i] = _plain_input_count(cfg, i, inp)
    cfg.check_channels(counts, [lay.describe(inp.name, dims(inp)) if lay is not None else None
                                for lay, inp in zip(layouts, model.graph.input)])
    return channels


def _plain_input_count(cfg: BuildConfig, i: int, inp) -> int:
    """mean/std/reorder entries of an input that is not a 4-D image (sizes, ids, states) are placeholders: one
    value, or one per element of its last dim as rknn-toolkit2 counts them; anything but mean 0 / std 1 would be
    silently dropped, so it is refused."""
    shape = dims(inp)
    given = [v[i] for v in (cfg.mean_values, cfg.std_values) if v is not None and i < len(v)]
    for key, values, identity in (("mean_values", cfg.mean_values, 0.0), ("std_values", cfg.std_values, 1.0)):
        if values is not None and i < len(values) and any(float(x) != identity for x in values[i]):
            raise ConfigError(key, values[i], hint=f"input {i} ('{inp.name}', shape {shape}) is not a 4-D image "
                              f"input, so pre-processing does not apply to it; give [{identity:g}] for it and feed "
                              "its values already as the model takes them")
    last = shape[-1] if shape and shape[-1] > 0 else 1
    return last if any(len(v) == last for v in given) else 1


def file_normalisation(loaded: LoadedModel, cfg: BuildConfig) -> BuildConfig:
    """A model whose file takes integer pixels (a uint8 / int8 TFLite input with a scale and zero point) is fed those
    integers as they are when config() gives no mean/std: the file's own normalisation is the default, as its
    runtime would apply it. Without it the pixels would reach the model as real values, and its outputs would be
    noise (EfficientNet-Lite0 uint8: top-1 0/12, cosine 0.006)."""
    norm = loaded.input_normalisation
    names = [i.name for i in loaded.model.graph.input]
    if not norm or cfg.mean_values is not None or cfg.std_values is not None or not all(n in norm for n in names):
        return cfg
    mean, std = [norm[n][0] for n in names], [norm[n][1] for n in names]
    for n, m, s in zip(names, mean, std):
        log.warning("input '%s' takes integer pixels in the file: mean_values %s, std_values [%.6g, ...] from its "
                    "quantization (pixels are fed as its runtime takes them); config(mean_values=..., "
                    "std_values=...) overrides", n, [round(v, 6) for v in m], s[0])
    return dataclasses.replace(cfg, mean_values=mean, std_values=std)


def file_layouts(loaded: LoadedModel, cfg: BuildConfig) -> BuildConfig:
    """The layout a file states for its inputs (a TFLite input is NHWC whatever its dims look like: [1, 3, 22, 32]
    is 3 rows of 22 columns of 32 channels there) is the default where config(input_layout=...) says nothing; the
    shape alone would read that one as NCHW with 3 channels."""
    stated = loaded.input_layouts
    if not stated or cfg.input_layout is not None:
        return cfg
    layouts = [stated.get(i.name, "auto") for i in loaded.model.graph.input]
    if all(v == "auto" for v in layouts):
        return cfg
    for i, v in zip(loaded.model.graph.input, layouts):
        if v != "auto":
            log.info("input '%s': %s, as the %s file lays it out (config(input_layout=...) overrides)", i.name,
                     v.upper(), loaded.framework)
    return dataclasses.replace(cfg, input_layout=layouts)


def fold_shape_arithmetic(model: onnx.ModelProto, cfg: BuildConfig, notes: List[str]) -> onnx.ModelProto:
    """Shape computations (exporters' SAME-padding and resize arithmetic: Shape -> Gather -> ... -> Pad) are folded
    by onnxruntime, the reference implementation, before the graph optimiser: onnxslim's own folding evaluates a Slice
    with a negative step wrongly and moved a pad to the other side on a real model (open_nsfw)."""
    if cfg.optimization_level < 1 or not any(n.op_type == "Shape" for n in model.graph.node):
        return model
    try:
        folded = layout.ort_basic(model)
    except Exception as e:  # keep the graph: the optimiser folds it (logged)
        log.warning("onnxruntime could not fold the shape arithmetic (%s); the graph optimiser folds it", e)
        return model
    if any(n.op_type == "Shape" for n in folded.graph.node):
        return model  # dynamic shapes onnxruntime could not fold either
    notes.append("shape arithmetic folded by onnxruntime")
    return folded


def fold_layout(model: onnx.ModelProto, cfg: BuildConfig, notes: List[str]) -> onnx.ModelProto:
    """Channel-last graphs: cancel the layout Transposes around convolutions, so the NPU sees NCHW convs."""
    lays = preprocess.input_layouts(model, cfg.mean_values, cfg.std_values, cfg.reorder_channel, cfg.input_layout)
    nhwc = [inp.name for inp, lay in zip(model.graph.input, lays) if lay is not None and lay.layout == "nhwc"]
    if cfg.optimization_level < 1 or not (nhwc or layout.has_layout_transposes(model)):
        return model
    model, before, after = layout.fold_transposes(model, nhwc)
    if after != before:
        model = graph_optimize.optimize(model, cfg.optimization_level)  # fusions the folding made possible
        notes.append(f"layout: {before - after} of {before} Transposes folded away ({after} left)")
    return model


def build_float_graph(loaded: LoadedModel, cfg: BuildConfig) -> Tuple[onnx.ModelProto, List[dict], List[str]]:
    """Optimise, then put the pre-processing inside the graph. Returns (model, input metas, notes)."""
    model = onnx.ModelProto()
    model.CopyFrom(loaded.model)
    check_config_against_model(cfg, model)
    notes: List[str] = []
    wrong = vector_matmuls(model)  # at every level: the simulator's onnxruntime would compute them wrongly
    if wrong:
        notes.append(f"onnxruntime computes {len(wrong)} MatMul(s) of a transposed matrix and a vector wrongly "
                     f"({', '.join(wrong[:4])}): a reference run of the file on onnxruntime is off there; the "
                     "simulator computes them as matrix products, as the NPU does")
        log.warning(notes[-1])
    products = einsum_as_matmul(model)  # at every level: the NPU runs a MatMul, not an Einsum
    if products:
        notes.append(f"{products} Einsum(s) written as MatMuls")
    model = fold_shape_arithmetic(model, cfg, notes)
    model = graph_optimize.optimize(model, cfg.optimization_level)
    model = fold_layout(model, cfg, notes)
    specs = preprocess.make_specs(model, cfg.mean_values, cfg.std_values, cfg.reorder_channel, cfg.input_layout)
    metas = preprocess.attach(model, specs)
    if cfg.optimization_level >= 3:
        notes += preprocess.fold_into_first_conv(model, metas)
    transposes = layout.count_layout_transposes(model)
    if any(m.get("model_layout") == "nhwc" for m in metas):
        notes.append(f"layout: {transposes} Transpose(s) in the deployed graph (the input's NHWC->NCHW included)")
    model = infer_shapes(model)
    try:
        onnx.checker.check_model(model)
    except Exception as e:
        if any(n.startswith(STRICT_CHECK_NOTE) for n in loaded.notes):
            # the file itself fails onnx's strict check and onnxruntime runs it (load_onnx said so): not ours
            log.warning("onnx's checker still objects to the optimised graph (%s), as it did to the file; "
                        "onnxruntime runs it", str(e)[:160])
        else:  # a pass produced an invalid graph: that is our bug, say so plainly
            raise BuildError(f"internal error: the optimised graph is invalid ({e}); retry with optimization_level=0 "
                             "and report this model") from None
    for m in metas:
        pre = m.get("preprocess")
        if pre:
            log.info("input '%s': feed %s uint8 NHWC; model channel c = feed channel %s; mean %s std %s (model "
                     "channel order)", m["name"], m["shape"], pre["reorder_channel"] or "c (no reorder)",
                     pre["mean"], pre["std"])
    return model, metas, notes
