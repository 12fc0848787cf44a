"""MaxPool / AveragePool / GlobalAveragePool / GlobalMaxPool / ReduceMean / ReduceMax / ReduceSum / ReduceSumSquare /
ArgMax."""

from __future__ import annotations

import numpy as np

from ....errors import NotSupportedError
from ..lower import Value
from . import attr, layer_name, register
from .conv import PADDING_VALID, geometry, pad_input, tfl_padding

# int8 averages over windows of at most this many values are exported as the simulator computes them, a slice and an
# add per value (_average_as_simulated); larger windows keep TFLite's one int8 op
SIMULATED_TAPS = 25


def _ceil_pads(in_hw, kernel, strides, dil, pads) -> list:
    """ONNX pads [top, left, bottom, right] grown at the end so that a floor-rounding pool gives ceil_mode's output
    size (a last window that would start in the end padding is dropped, as ONNX does)."""
    out = list(pads)
    for d in range(2):
        k_eff = (kernel[d] - 1) * dil[d] + 1
        span = in_hw[d] + pads[d] + pads[d + 2] - k_eff
        n = -(-span // strides[d]) + 1
        if (n - 1) * strides[d] >= in_hw[d] + pads[d]:
            n -= 1
        out[d + 2] = max(pads[d + 2], (n - 1) * strides[d] + k_eff - in_hw[d] - pads[d])
    return out


def _pool(ctx, node, kind: str, act=None) -> str:
    layer = layer_name(node)
    x = ctx.view(node.input[0], kind, True, layer)
    kernel = list(attr(node, "kernel_shape"))
    strides, dil, pads = geometry(node, kernel)
    is_max = node.op_type == "MaxPool"
    if attr(node, "ceil_mode", 0):
        if not is_max and attr(node, "count_include_pad", 0):
            raise NotSupportedError(f"export-tflite: {layer} averages with ceil_mode=1 counting its pads; TFLite "
                                    "pooling rounds output sizes down and cannot count part of a window")
        # max: over a padded edge of minima, the same. average (pads not counted): the last window's overhang is
        # end padding, which TFLite's SAME average leaves out of the count, as ONNX does (a ResNet-D shortcut's
        # 2x2 / 2 pooling in SCRFD); where the pads are not SAME's, the explicit-pad refusal below says so
        pads = _ceil_pads(x.shape[1:3], kernel, strides, dil, pads)
    padding = tfl_padding(x.shape[1:3], kernel, strides, dil, pads)
    if padding is not None and not is_max and padding != PADDING_VALID and attr(node, "count_include_pad", 0):
        padding = None  # TFLite's SAME average leaves the padding out of the count
    if padding is None:
        if not is_max and not attr(node, "count_include_pad", 0):
            if kind == "f" and dil == [1, 1]:
                return _average_uncounted(ctx, node, x, kernel, strides, pads)
            raise NotSupportedError(f"export-tflite: {layer} averages over explicit pads without counting them; "
                                    "TFLite's int8 pooling cannot express that")
        fill = None if not is_max else (-128 if kind == "q" else float(np.finfo(np.float32).min))
        x = pad_input(ctx, x, pads, layer, fill)
        padding = PADDING_VALID
    builtin = "MAX_POOL_2D" if is_max else "AVERAGE_POOL_2D"
    if kind == "q" and not is_max and padding == PADDING_VALID and dil == [1, 1] and \
            kernel[0] * kernel[1] <= SIMULATED_TAPS:
        return _average_as_simulated(ctx, node, kernel, strides)
    return _emit(ctx, node, kind, x, builtin, kernel, strides, padding)


def _average_as_simulated(ctx, node, kernel, strides) -> str:
    """An int8 average over whole windows, computed in float the way the simulator's onnxruntime kernel does, one
    step per op: the dequantized values added one tap at a time in row order (a strided slice per tap: a depthwise
    conv of ones adds them in another order), divided by the window size, divided by the output scale, plus the
    output zero point, rounded half to even and clamped. Our int8 point holds that result. TFLite's int8
    AVERAGE_POOL_2D rounds the window's exact mean, and the two break ties otherwise: over a 3x2 window (sums of
    six) one output in twelve came out a level apart."""
    layer = layer_name(node)
    x = ctx.view(node.input[0], "f", True, layer)
    qn = ctx.g.sole_quantizer(node.output[0])
    scale = np.float32(np.ravel(ctx.g.inits[qn.input[1]])[0])
    stored = np.asarray(ctx.g.inits[qn.input[2]])              # the simulator's zero point, in its own type
    info = np.iinfo(stored.dtype)
    zp = np.float32(stored.reshape(-1)[0])
    (kh, kw), (sh, sw) = kernel, strides
    shape = ctx.out_shape(node.output[0])
    mid = (shape[0], shape[2], shape[3], shape[1])
    out = node.output[0]

    def const(name, value, dtype=np.float32):
        return ctx.m.add_const(ctx._tname(name), np.asarray(value, dtype))

    total = None
    for i in range(kh):
        for j in range(kw):
            begin = [0, i, j, 0]
            end = [mid[0], i + (mid[1] - 1) * sh + 1, j + (mid[2] - 1) * sw + 1, mid[3]]
            tap = ctx.float_op("STRIDED_SLICE", [x, const("begin", begin, np.int32), const("end", end, np.int32),
                                                 const("strides", [1, sh, sw, 1], np.int32)],
                               mid, f"{out}/tap{i}_{j}", layer, ("StridedSliceOptions", {}))
            total = tap if total is None else ctx.float_binary("ADD", total, tap, f"{out}/sum{i}_{j}", layer)
    mean = ctx.float_binary("DIV", total, const("count", kh * kw), out + "/mean", layer)
    levels = ctx.float_binary("ADD", ctx.float_binary("DIV", mean, const("scale", scale), out + "/levels", layer),
                              const("zero_point", zp), out + "/shifted", layer)
    rounded = ctx.float_op("ROUND", [levels], mid, out + "/rounded", layer)
    low = ctx.float_op("MAXIMUM", [rounded, const("lowest", info.min)], mid, out + "/low", layer)
    held = ctx.float_op("MINIMUM", [low, const("highest", info.max)], mid, out + "/held", layer)
    # back to real terms on the point's grid: QUANTIZE then gives exactly these levels
    real = ctx.float_binary("MUL", ctx.float_binary("SUB", held, const("zero_point", zp), out + "/centred", layer),
                            const("scale", scale), out + "/real", layer)
    ctx.m.add_op("QUANTIZE", [real], [ctx.out_q(out, True)], version=2, layer=layer)
    return ("the simulator's arithmetic step by step in float (taps added in row order, / size, / scale, + zero "
            "point, round half to even): TFLite's int8 average breaks ties otherwise")


def _uncounted_pads(ctx, node) -> bool:
    """An AveragePool over explicit pads (not SAME's) that leaves them out of its count (a Kuwahara filter's window
    means at the image border)."""
    if node.op_type != "AveragePool" or attr(node, "count_include_pad", 0) or len(ctx.value(node.input[0]).shape) != 4:
        return False
    kernel = list(attr(node, "kernel_shape"))
    strides, dil, pads = geometry(node, kernel)
    hw = list(ctx.value(node.input[0]).shape[2:4])
    if attr(node, "ceil_mode", 0):
        pads = _ceil_pads(hw, kernel, strides, dil, pads)
    return tfl_padding(hw, kernel, strides, dil, pads) is None


def _average_uncounted(ctx, node, x, kernel, strides, pads) -> str:
    """The float form: the input padded with zeros, a VALID AVERAGE_POOL_2D (which divides by the whole window),
    times each window's size over the real values it covers (a constant map)."""
    layer = layer_name(node)
    (kh, kw), (sh, sw), (t, left, b, r) = kernel, strides, pads
    h, w, c = x.shape[1:4]
    inside = np.zeros((h + t + b, w + left + r), np.float64)
    inside[t:t + h, left:left + w] = 1
    ho, wo = (h + t + b - kh) // sh + 1, (w + left + r - kw) // sw + 1
    count = np.array([[inside[i * sh:i * sh + kh, j * sw:j * sw + kw].sum() for j in range(wo)] for i in range(ho)])
    factor = ctx.m.add_const(ctx._tname(node.output[0] + "/window_over_count"),
                             (kh * kw / np.maximum(count, 1)).astype(np.float32).reshape(1, ho, wo, 1))
    padded = pad_input(ctx, x, pads, layer)
    opts = ("Pool2DOptions", {"Padding": PADDING_VALID, "StrideW": sw, "StrideH": sh, "FilterWidth": kw,
                              "FilterHeight": kh, "FusedActivationFunction": 0})
    mean = ctx.float_op("AVERAGE_POOL_2D", [padded], (1, ho, wo, c), node.output[0] + "/zero_padded_mean", layer,
                        opts)
    ctx.m.add_op("MUL", [mean, factor], [ctx.out_f(node.output[0], True)],
                 ("MulOptions", {"FusedActivationFunction": 0}), layer=layer)
    return "the pads left out of the count: a zero-padded average times window size / values covered"


def _emit(ctx, node, kind, x, builtin, kernel, strides, padding) -> str:
    layer = layer_name(node)
    opts = ("Pool2DOptions", {"Padding": padding, "StrideW": strides[1], "StrideH": strides[0],
                              "FilterWidth": kernel[1], "FilterHeight": kernel[0], "FusedActivationFunction": 0})
    shape = ctx.out_shape(node.output[0])
    if kind == "f":
        ctx.m.add_op(builtin, [x], [ctx.out_f(node.output[0], True)], opts, layer=layer)
        return ""
    # TFLite int8 pooling keeps its input's scale; requantize when our output point differs
    from ..lower import nhwc_shape

    mid = ctx.m.add_tensor(ctx._tname(node.output[0]), nhwc_shape(shape), np.int8, x.quant)
    ctx.m.add_op(builtin, [x], [mid], opts, version=2, layer=layer)
    out = ctx.requantize(mid, ctx.out_point(node.output[0]), layer, f"TFLite's int8 {builtin} keeps its input scale")
    ctx.set_q(node.output[0], out, True, shape)
    return ""


def _global_reduce(ctx, node, kind: str) -> str:
    """Global pooling of a tensor that is not rank 4 (a 1-D conv's N,C,L): REDUCE_MAX / MEAN over the axes after
    the channels, in the ONNX order."""
    layer = layer_name(node)
    v = ctx.value(node.input[0])
    x = v.q if kind == "q" else ctx.f_of(node.input[0], layer)
    axes = ctx.m.add_const(ctx._tname("axes"), np.arange(2, len(v.shape), dtype=np.int32))
    builtin = "REDUCE_MAX" if node.op_type == "GlobalMaxPool" else "MEAN"
    opts = ("ReducerOptions", {"KeepDims": True})
    shape = ctx.out_shape(node.output[0])
    if kind == "f":
        ctx.m.add_op(builtin, [x, axes], [ctx.out_f(node.output[0], False)], opts, layer=layer)
    elif builtin == "MEAN":  # int8 MEAN requantizes onto our output scale itself
        ctx.m.add_op(builtin, [x, axes], [ctx.out_q(node.output[0], False)], opts, version=2, layer=layer)
    else:  # int8 REDUCE_MAX keeps its input's scale
        mid = ctx.m.add_tensor(ctx._tname(node.output[0]), shape, np.int8, x.quant)
        ctx.m.add_op(builtin, [x, axes], [mid], opts, version=2, layer=layer)
        out = ctx.requantize(mid, ctx.out_point(node.output[0]), layer,
                             "TFLite's int8 REDUCE_MAX keeps its input scale")
        ctx.set_q(node.output[0], out, False, shape)
    return ""


def _global(ctx, node, kind: str, act=None) -> str:
    layer = layer_name(node)
    if len(ctx.value(node.input[0]).shape) != 4:
        return _global_reduce(ctx, node, kind)
    x = ctx.view(node.input[0], kind, True, layer)
    h, w = x.shape[1:3]
    builtin = "MAX_POOL_2D" if node.op_type == "GlobalMaxPool" else "AVERAGE_POOL_2D"
    if kind == "q" and builtin == "AVERAGE_POOL_2D" and not ctx.out_point(node.output[0]).same_as(x.quant):
        # int8 MEAN requantizes onto our output scale in one step (AVERAGE_POOL_2D would need a second rounding)
        axes = ctx.m.add_const(ctx._tname("axes"), np.asarray([1, 2], np.int32))
        ctx.m.add_op("MEAN", [x, axes], [ctx.out_q(node.output[0], True)], ("ReducerOptions", {"KeepDims": True}),
                     version=2, layer=layer)
        return ""
    return _emit(ctx, node, kind, x, builtin, [h, w], [1, 1], PADDING_VALID)


def _reduce(ctx, node, kind: str, builtin: str = "MEAN", square: bool = False) -> str:
    """``square``: ReduceSumSquare, which TFLite's builtins lack, as the float MUL of x by itself, then SUM."""
    layer = layer_name(node)
    v = ctx.value(node.input[0])
    axes = attr(node, "axes", None)
    if axes is None and len(node.input) > 1 and node.input[1]:
        if not ctx.g.is_const(node.input[1]):
            raise NotSupportedError(f"export-tflite: {layer} reduces over computed axes; only constant axes are "
                                    "exported")
        axes = [int(a) for a in np.asarray(ctx.g.const(node.input[1])).reshape(-1)]
        if not axes and attr(node, "noop_with_empty_axes", 0):  # ONNX: empty axes with this flag is the identity
            ctx.values[node.output[0]] = v
            return ""
    axes = [a % len(v.shape) for a in (axes if axes else range(len(v.shape)))]
    keep = bool(attr(node, "keepdims", 1))
    nhwc = v.nhwc and keep
    if nhwc:
        axes = [{0: 0, 1: 3, 2: 1, 3: 2}[a] for a in axes]
    x = ctx.view(node.input[0], kind, nhwc, layer) if len(v.shape) == 4 else (
        v.q if kind == "q" else ctx.f_of(node.input[0], layer))
    if square:
        sq = ctx.new_f(node.output[0] + "/square", x.shape)
        ctx.m.add_op("MUL", [x, x], [sq], ("MulOptions", {"FusedActivationFunction": 0}), layer=layer)
        x = sq
    axes_t = ctx.m.add_const(ctx._tname("axes"), np.asarray(sorted(axes), np.int32))
    opts = ("ReducerOptions", {"KeepDims": keep})
    if kind == "q":
        out = ctx.out_q(node.output[0], nhwc)
        ctx.m.add_op(builtin, [x, axes_t], [out], opts, version=2, layer=layer)
    else:
        ctx.m.add_op(builtin, [x, axes_t], [ctx.out_f(node.output[0], nhwc)], opts, layer=layer)
    return ""


register("MaxPool", "AveragePool", int8=lambda c, n, a: _pool(c, n, "q"), float=lambda c, n: _pool(c, n, "f"),
         int8_ok=lambda c, n: not _uncounted_pads(c, n))
register("GlobalAveragePool", "GlobalMaxPool", int8=lambda c, n, a: _global(c, n, "q"),
         float=lambda c, n: _global(c, n, "f"))
register("ReduceMean", int8=lambda c, n, a: _reduce(c, n, "q"), float=lambda c, n: _reduce(c, n, "f"))
register("ReduceMax", int8=lambda c, n, a: _reduce(c, n, "q", "REDUCE_MAX"),
         float=lambda c, n: _reduce(c, n, "f", "REDUCE_MAX"))
register("ReduceMin", int8=lambda c, n, a: _reduce(c, n, "q", "REDUCE_MIN"),
         float=lambda c, n: _reduce(c, n, "f", "REDUCE_MIN"))
register("ReduceSum", int8=lambda c, n, a: _reduce(c, n, "q", "SUM"), float=lambda c, n: _reduce(c, n, "f", "SUM"))
register("ReduceSumSquare", float=lambda c, n: _reduce(c, n, "f", "SUM", square=True))


def _arg_max(ctx, node) -> str:
    """ArgMax -> ARG_MAX (int64 indices, as ONNX gives them); on the int8 tensor when there is one (int8 is
    monotonic in the real value, so the index is the same)."""
    layer = layer_name(node)
    if attr(node, "select_last_index", 0):
        raise NotSupportedError(f"export-tflite: {layer} selects the last maximal index; TFLite's ARG_MAX takes the "
                                "first")
    v = ctx.value(node.input[0])
    rank = len(v.shape)
    axis = int(attr(node, "axis", 0)) % rank
    keep = bool(attr(node, "keepdims", 1))
    x = v.q if v.q is not None and v.q.dtype == np.int8 else ctx.f_of(node.input[0], layer)
    if v.nhwc and rank == 4:
        axis = {0: 0, 1: 3, 2: 1, 3: 2}[axis]
    shape = ctx.out_shape(node.output[0])
    reduced = tuple(d for i, d in enumerate(x.shape) if i != axis)
    nhwc = v.nhwc and rank == 4 and keep
    idx = ctx.m.add_tensor(ctx._tname(node.output[0] + ("/reduced" if keep else "")), reduced, np.int64)
    ctx.m.add_op("ARG_MAX", [x, ctx.m.add_const(ctx._tname("axis"), np.asarray([axis], np.int32))], [idx],
                 ("ArgMaxOptions", {"OutputType": 4}), version=2, layer=layer)   # 4: TensorType INT64
    if keep:
        stored = tuple(x.shape[:axis]) + (1,) + tuple(x.shape[axis + 1:])
        idx = ctx.reshape(idx, ctx.m.add_tensor(ctx._tname(node.output[0]), stored, np.int64), layer)
    ctx.values[node.output[0]] = Value(tuple(shape), f=idx, nhwc=nhwc)
    return ""


register("ArgMax", float=_arg_max)


def _topk(ctx, node) -> str:
    """TopK over the last axis, largest first, sorted (a heat map's k best peaks) -> TOPK_V2 in float: the values in
    float and the indices int32, cast to ONNX's int64. Other axes, the smallest or unsorted have no TFLite form."""
    layer = layer_name(node)
    v = ctx.value(node.input[0])
    rank = len(v.shape)
    if (int(attr(node, "axis", -1)) % rank != rank - 1 or not attr(node, "largest", 1) or not attr(node, "sorted", 1)
            or (v.nhwc and rank == 4)):
        raise NotSupportedError(f"export-tflite: {layer} is a TopK over an axis other than the last (in the model's "
                                "own order), or of the smallest, or unsorted; TFLite's TOPK_V2 takes the largest "
                                "along the last axis, sorted")
    if not ctx.g.is_const(node.input[1]):
        raise NotSupportedError(f"export-tflite: {layer}'s k is computed; TFLite's TOPK_V2 takes a constant k here")
    k = int(np.ravel(ctx.g.const(node.input[1]))[0])
    x = ctx.f_of(node.input[0], layer)
    shape = tuple(v.shape[:-1]) + (k,)
    values = ctx.out_f(node.output[0], False, shape)
    idx32 = ctx.m.add_tensor(ctx._tname(node.output[1] + "/int32"), shape, np.int32)
    ctx.m.add_op("TOPK_V2", [x, ctx.m.add_const(ctx._tname("k"), np.asarray(k, np.int32).reshape(()))],
                 [values, idx32], layer=layer)
    if node.output[1]:
        idx = ctx.m.add_tensor(ctx._tname(node.output[1]), shape, np.int64)
        ctx.m.add_op("CAST", [idx32], [idx], layer=layer)
        ctx.values[node.output[1]] = Value(shape, f=idx)
    return f"the {k} largest along the last axis, in float; int32 indices cast to int64"


register("TopK", float=_topk)
