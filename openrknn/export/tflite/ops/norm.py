"""LayerNormalization, InstanceNormalization and BatchNormalization: float forms built from TFLite's elementwise
kernels (TFLite has no normalization builtin). Our graph computes them in float between quantization points, as the
NPU does."""

from __future__ import annotations

import numpy as np

from ....errors import NotSupportedError
from . import attr, layer_name, register


def _const_param(ctx, node, i: int, default: float):
    if len(node.input) <= i or not node.input[i]:
        return np.float32(default)
    qc = ctx.g.quant_const(node.input[i])
    if qc is not None:
        return qc.dequantized()
    if not ctx.g.is_const(node.input[i]):
        raise NotSupportedError(f"export-tflite: {layer_name(node)}'s scale / bias are computed, not constants")
    return np.asarray(ctx.g.const(node.input[i]), np.float32)


def _normalized(ctx, node, x, axes: list, layer: str):
    """(x - mean) * rsqrt(var + epsilon), mean and variance over ``axes`` of the stored tensor ``x``."""
    axes_t = ctx.m.add_const(ctx._tname("axes"), np.asarray(axes, np.int32))
    reduced = tuple(1 if d in axes else s for d, s in enumerate(x.shape))
    keep = ("ReducerOptions", {"KeepDims": True})
    mean = ctx.float_op("MEAN", [x, axes_t], reduced, layer + "/mean", layer, keep)
    centred = ctx.float_binary("SUB", x, mean, layer + "/centred", layer)
    square = ctx.float_binary("MUL", centred, centred, layer + "/square", layer)
    var = ctx.float_op("MEAN", [square, axes_t], reduced, layer + "/var", layer, keep)
    eps = ctx.m.add_const(ctx._tname("eps"), np.float32(attr(node, "epsilon", 1e-5)).reshape(()))
    var_eps = ctx.float_binary("ADD", var, eps, layer + "/var_eps", layer)
    inv = ctx.float_op("RSQRT", [var_eps], reduced, layer + "/rsqrt", layer)
    return ctx.float_binary("MUL", centred, inv, layer + "/normalized", layer)


def _layer_norm(ctx, node) -> str:
    """(x - mean) * rsqrt(var + eps) * gamma + beta over the trailing axes from `axis`, in the ONNX order."""
    layer = layer_name(node)
    v = ctx.value(node.input[0])
    rank = len(v.shape)
    axis = int(attr(node, "axis", -1)) % rank
    ctx.first_output_only(node, "mean / inverse deviation outputs")
    x = ctx.view(node.input[0], "f", False, layer) if rank == 4 else ctx.f_of(node.input[0], layer)
    y = _normalized(ctx, node, x, list(range(axis, rank)), layer)
    gamma = np.asarray(_const_param(ctx, node, 1, 1.0), np.float32)
    beta = np.asarray(_const_param(ctx, node, 2, 0.0), np.float32)
    out = ctx.out_f(node.output[0], False)
    y = ctx.float_binary("MUL", y, ctx.m.add_const(ctx._tname("gamma"), gamma), layer + "/scaled", layer)
    ctx.m.add_op("ADD", [y, ctx.m.add_const(ctx._tname("beta"), beta)], [out],
                 ("AddOptions", {"FusedActivationFunction": 0}), layer=layer)
    return ""


register("LayerNormalization", float=_layer_norm)


def _instance_norm(ctx, node) -> str:
    """(x - mean) * rsqrt(var + eps) * scale_c + bias_c, mean and variance over each channel's own positions (every
    axis after ONNX's channel axis 1): MEAN over the spatial axes of the channel-last tensor (an edge detector's and
    XFeat's input normalization)."""
    layer = layer_name(node)
    v = ctx.value(node.input[0])
    rank = len(v.shape)
    if rank < 3:
        raise NotSupportedError(f"export-tflite: {layer} normalizes a rank-{rank} tensor; InstanceNormalization "
                                "needs [N, C, ...]")
    nhwc = v.nhwc and rank == 4
    x = ctx.f_of(node.input[0], layer)
    spatial = list(range(1, rank - 1)) if nhwc else list(range(2, rank))
    y = _normalized(ctx, node, x, spatial, layer)
    bshape = (1, -1) + (1,) * (rank - 2)
    gamma = np.asarray(_const_param(ctx, node, 1, 1.0), np.float32).reshape(bshape)
    beta = np.asarray(_const_param(ctx, node, 2, 0.0), np.float32).reshape(bshape)
    y = ctx.float_binary("MUL", y, ctx.const_for(gamma, rank, nhwc, "in_scale"), layer + "/scaled", layer)
    ctx.m.add_op("ADD", [y, ctx.const_for(beta, rank, nhwc, "in_bias")], [ctx.out_f(node.output[0], nhwc)],
                 ("AddOptions", {"FusedActivationFunction": 0}), layer=layer)
    return ""


register("InstanceNormalization", float=_instance_norm)


def _batch_norm(ctx, node) -> str:
    """Inference-mode BatchNormalization as one multiply-add per channel (ONNX's channel axis 1)."""
    layer = layer_name(node)
    if attr(node, "training_mode", 0):
        raise NotSupportedError(f"export-tflite: {layer} is a training-mode BatchNormalization; export the model "
                                "in eval mode")
    ctx.first_output_only(node, "running mean / variance outputs (training mode)")
    v = ctx.value(node.input[0])
    rank = len(v.shape)
    if any(node.input[i] and ctx.g.quant_const(node.input[i]) is None and not ctx.g.is_const(node.input[i])
           for i in range(1, min(len(node.input), 5))):
        return _batch_norm_computed(ctx, node, v, rank)
    gamma, beta, mean, var = (np.asarray(_const_param(ctx, node, i, 0.0), np.float64) for i in range(1, 5))
    scale = gamma / np.sqrt(var + float(attr(node, "epsilon", 1e-5)))
    shift = beta - mean * scale
    bshape = (1, -1) + (1,) * (rank - 2)
    nhwc = v.nhwc and rank == 4
    x = ctx.f_of(node.input[0], layer)
    scaled = ctx.new_f(layer + "/scaled", x.shape)
    ctx.m.add_op("MUL", [x, ctx.const_for(scale.reshape(bshape), rank, nhwc, "bn_scale")], [scaled],
                 ("MulOptions", {"FusedActivationFunction": 0}), layer=layer)
    ctx.m.add_op("ADD", [scaled, ctx.const_for(shift.reshape(bshape), rank, nhwc, "bn_shift")],
                 [ctx.out_f(node.output[0], nhwc)], ("AddOptions", {"FusedActivationFunction": 0}), layer=layer)
    return ""


def _batch_norm_computed(ctx, node, v, rank: int) -> str:
    """A BatchNormalization whose statistics or scale are computed (tf2onnx writes a LayerNorm so: the input's own
    mean and variance fed in as the running ones): (x - mean) * scale * rsqrt(var + epsilon) + bias in float ops,
    each parameter a [C] tensor broadcast along the channel axis."""
    layer = layer_name(node)
    nhwc = v.nhwc and rank == 4
    bshape = (1, 1, 1, -1) if nhwc else (1, -1) + (1,) * (rank - 2)

    def param(i: int, default: float):
        if len(node.input) <= i or not node.input[i] or ctx.g.quant_const(node.input[i]) is not None or \
                ctx.g.is_const(node.input[i]):
            return ctx.m.add_const(ctx._tname(f"bn_param{i}"), np.asarray(_const_param(ctx, node, i, default),
                                                                          np.float32).reshape(bshape))
        flat = ctx.f_of(node.input[i], layer)
        shape = tuple(int(np.prod(flat.shape)) if d == -1 else d for d in bshape)
        return ctx.reshape(flat, ctx.new_f(f"{layer}/param{i}", shape), layer)

    gamma, beta, mean, var = param(1, 1.0), param(2, 0.0), param(3, 0.0), param(4, 1.0)
    eps = ctx.m.add_const(ctx._tname("eps"), np.float32(attr(node, "epsilon", 1e-5)).reshape(()))
    inv = ctx.float_op("RSQRT", [ctx.float_binary("ADD", var, eps, layer + "/var_eps", layer)], var.shape,
                       layer + "/rsqrt", layer)
    mult = ctx.float_binary("MUL", gamma, inv, layer + "/mult", layer)
    centred = ctx.float_binary("SUB", ctx.f_of(node.input[0], layer), mean, layer + "/centred", layer)
    scaled = ctx.float_binary("MUL", centred, mult, layer + "/scaled", layer)
    ctx.m.add_op("ADD", [scaled, beta], [ctx.out_f(node.output[0], nhwc)],
                 ("AddOptions", {"FusedActivationFunction": 0}), layer=layer)
    return ""


register("BatchNormalization", float=_batch_norm)
