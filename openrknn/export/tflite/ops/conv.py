"""Conv -> CONV_2D / DEPTHWISE_CONV_2D, Gemm -> FULLY_CONNECTED (int8 with our integers, or float)."""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import onnx

from ....errors import NotSupportedError
from ..graph import QuantConst
from ..writer import Quant, Tensor
from . import attr, layer_name, register
from .activations import NONE, fused_code

PADDING_SAME, PADDING_VALID = 0, 1


def tfl_padding(in_hw: Sequence[int], kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int],
                pads: Sequence[int]) -> Optional[int]:
    """SAME or VALID when ONNX's explicit pads [top, left, bottom, right] are exactly that, else None."""
    if not any(pads):
        return PADDING_VALID
    for d in range(2):
        k_eff = (kernel[d] - 1) * dilations[d] + 1
        out = -(-in_hw[d] // strides[d])
        total = max((out - 1) * strides[d] + k_eff - in_hw[d], 0)
        if pads[d] != total // 2 or pads[d + 2] != total - total // 2:
            return None
    return PADDING_SAME


def pad_input(ctx, x: Tensor, pads: Sequence[int], layer: str, value: Optional[float] = None) -> Tensor:
    """Explicit spatial padding of an N,H,W,C tensor (zero in real terms: TFLite pads int8 with the zero point)."""
    t, left, b, r = pads
    shape = (x.shape[0], x.shape[1] + t + b, x.shape[2] + left + r, x.shape[3])
    out = ctx.m.add_tensor(ctx._tname(x.name.split("#")[0] + "/pad"), shape, x.dtype, x.quant)
    paddings = ctx.m.add_const(ctx._tname("paddings"), np.asarray([[0, 0], [t, b], [left, r], [0, 0]], np.int32))
    if value is None:
        ctx.m.add_op("PAD", [x, paddings], [out], version=2 if x.quant is not None else 1, layer=layer)
    else:
        # an int8 fill value is a quantized constant on the tensor's own grid (LiteRT checks its zero point)
        fill = ctx.m.add_const(ctx._tname("pad_value"), np.asarray(value, x.dtype).reshape(()), x.quant)
        ctx.m.add_op("PADV2", [x, paddings, fill], [out], version=2 if x.quant is not None else 1, layer=layer)
    return out


def geometry(node: onnx.NodeProto, kernel: Sequence[int]) -> Tuple[List[int], List[int], List[int]]:
    if attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise NotSupportedError(f"export-tflite: {layer_name(node)} uses auto_pad; openrknn's graphs carry explicit "
                                "pads")
    strides = list(attr(node, "strides", [1, 1]))
    dil = list(attr(node, "dilations", [1, 1]))
    pads = list(attr(node, "pads", [0, 0, 0, 0]))
    if len(kernel) != 2:
        raise NotSupportedError(f"export-tflite: {layer_name(node)} is a {len(kernel)}-D {node.op_type}; TFLite's "
                                "CONV_2D / pooling take 2-D kernels only")
    return strides, dil, pads


def _bias_int32(ctx, node, o: int, s_in: float, w_scale: np.ndarray, layer: str) -> np.ndarray:
    want = (np.float64(s_in) * w_scale.astype(np.float64)).astype(np.float32)
    if len(node.input) < 3 or not node.input[2]:
        return np.zeros(o, np.int32), want
    bq = ctx.g.quant_const(node.input[2])
    if bq is None:
        real = np.asarray(ctx.g.const(node.input[2]), np.float64).reshape(-1)
        q = np.round(real / want.astype(np.float64))
        ctx.changes.append(f"{layer}: float bias quantized to int32 with scale input x weight scale")
    else:
        have = np.broadcast_to(bq.scale.astype(np.float64), (o,))
        q = bq.q.astype(np.float64).reshape(-1)
        if not np.allclose(have, want, rtol=1e-6, atol=0):
            q = np.round(q * have / want.astype(np.float64))
            ctx.changes.append(f"{layer}: int32 bias re-rounded onto scale input x weight scale (TFLite's rule; the "
                               f"container's bias used a finer scale because s_in x s_w would not fit int32)")
    return np.clip(q, -2 ** 31, 2 ** 31 - 1).astype(np.int32), want


def _weight_array(ctx, node) -> np.ndarray:
    """The conv's weight as stored: its integers, or the float constant of a layer the graph itself computes in
    float (a box decode's projection in the float tail, quant/plan.py)."""
    wq = ctx.g.quant_const(node.input[1])
    return wq.q if wq is not None else np.asarray(ctx.g.const(node.input[1]), np.float32)


def _weights(ctx, node):
    wq = ctx.g.quant_const(node.input[1])
    if wq is None:
        why = (" (a grouped transposed conv with strides: its output channels are no one axis of the weight, so "
               "the quantizer leaves it float)" if node.op_type == "ConvTranspose" and attr(node, "group", 1) != 1
               else "")
        raise NotSupportedError(f"export-tflite: {layer_name(node)} ({node.op_type}) has float weights in this "
                                f"build{why}; the export writes it from int8 weights only: build w8a8, or keep the "
                                "model's part from it on the CPU (load_onnx(..., outputs=[...]))")
    return wq


def _conv_kind(ctx, node, w: np.ndarray) -> Tuple[bool, int]:
    group = int(attr(node, "group", 1))
    c_in = ctx.value(node.input[0]).shape[1]
    return group > 1 and group == c_in and w.shape[1] == 1, group


def _conv_int8_ok(ctx, node) -> bool:
    wq = ctx.g.quant_const(node.input[1])
    if wq is None or wq.q.dtype != np.int8 or np.any(wq.zero_point != 0):
        return False
    depthwise, group = _conv_kind(ctx, node, wq.q)
    return group == 1 or depthwise or not _is_1d(ctx, node)


def _check_groups(ctx, node, group: int, depthwise: bool, layer: str) -> None:
    if group > 1 and not depthwise and _is_1d(ctx, node):
        raise NotSupportedError(f"export-tflite: {layer} is a 1-D grouped conv (group {group}); the exporter splits "
                                "grouped 2-D convs only")


def _split_channels(ctx, x: Tensor, group: int, layer: str) -> List[Tensor]:
    """An N,H,W,C tensor cut into ``group`` equal channel slices (SPLIT keeps an int8 tensor's scale)."""
    n, h, w, c = x.shape
    parts = [ctx.m.add_tensor(ctx._tname(x.name.split("#")[0] + f"/group{k}"), (n, h, w, c // group), x.dtype,
                              x.quant) for k in range(group)]
    axis = ctx.m.add_const(ctx._tname("split_axis"), np.asarray(3, np.int32))
    ctx.m.add_op("SPLIT", [axis, x], parts, ("SplitOptions", {"NumSplits": group}), layer=layer)
    return parts


def _grouped(ctx, node, x: Tensor, out: Tensor, group: int, conv_of, layer: str) -> str:
    """A grouped conv that is not depthwise as TFLite's kernels and Teflon take it: the input's channels split into
    the groups, one CONV_2D per group (``conv_of(k, part, y)`` emits group k's), the outputs concatenated. Every
    group's output carries the conv's own output quantization, so the concatenation moves integers only."""
    ys = [ctx.m.add_tensor(ctx._tname(out.name.split("#")[0] + f"/group{k}"),
                           out.shape[:3] + (out.shape[3] // group,), out.dtype, out.quant) for k in range(group)]
    for k, (part, y) in enumerate(zip(_split_channels(ctx, x, group, layer), ys)):
        conv_of(k, part, y)
    ctx.m.add_op("CONCATENATION", ys, [out], ("ConcatenationOptions", {"Axis": 3, "FusedActivationFunction": 0}),
                 layer=layer)
    return f"{layer}: grouped conv (group {group}) written as SPLIT, {group} CONV_2D, CONCATENATION"


def _geometry_2d(ctx, node) -> Tuple[List[int], List[int], List[int], List[int]]:
    """kernel, strides, dilations, pads [top, left, bottom, right]; a 1-D conv as a 2-D one over a height of 1."""
    kernel = list(attr(node, "kernel_shape", None) or _weight_array(ctx, node).shape[2:])
    if len(kernel) != 1:
        strides, dil, pads = geometry(node, kernel)
        return kernel, strides, dil, pads
    if attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise NotSupportedError(f"export-tflite: {layer_name(node)} uses auto_pad; openrknn's graphs carry explicit "
                                "pads")
    pads = list(attr(node, "pads", [0, 0]))
    return [1] + kernel, [1] + list(attr(node, "strides", [1])), [1] + list(attr(node, "dilations", [1])), \
        [0, pads[0], 0, pads[1]]


def _is_1d(ctx, node) -> bool:
    return len(ctx.value(node.input[0]).shape) == 3


def _rows_1d(ctx, name: str, kind: str, layer: str) -> Tensor:
    """An N,C,L tensor as the N,1,L,C image TFLite's 2-D kernels read."""
    v = ctx.value(name)
    base = v.q if kind == "q" else ctx.f_of(name, layer)
    n, c, length = v.shape
    if c != 1:
        t = ctx.m.add_tensor(ctx._tname(name + "/nlc"), (n, length, c), base.dtype, base.quant)
        ctx.m.add_op("TRANSPOSE", [base, ctx.m.add_const(ctx._tname("perm"), np.asarray((0, 2, 1), np.int32))], [t],
                     version=2, layer=layer)
        base = t
    return ctx.reshape(base, ctx.m.add_tensor(ctx._tname(name + "/rows"), (n, 1, length, c), base.dtype, base.quant),
                       layer)


def _unrows_1d(ctx, y: Tensor, out: Tensor, layer: str) -> None:
    """The conv's N,1,L,O result back to the N,O,L tensor the graph reads."""
    n, _, length, o = y.shape
    flat = ctx.m.add_tensor(ctx._tname(out.name.split("#")[0] + "/nlc"), (n, length, o), y.dtype, y.quant) \
        if o != 1 else out
    ctx.reshape(y, flat, layer)
    if o != 1:
        ctx.m.add_op("TRANSPOSE", [flat, ctx.m.add_const(ctx._tname("perm"), np.asarray((0, 2, 1), np.int32))],
                     [out], version=2, layer=layer)


def _emit_conv(ctx, node, x: Tensor, filt: Tensor, bias: Tensor, out: Tensor, act_code: int, depthwise: bool,
               layer: str) -> None:
    kernel, strides, dil, pads = _geometry_2d(ctx, node)
    one_d = len(out.shape) == 3
    y = ctx.m.add_tensor(ctx._tname(out.name.split("#")[0] + "/rows"), (out.shape[0], 1, out.shape[2], out.shape[1]),
                         out.dtype, out.quant) if one_d else out
    padding = tfl_padding(x.shape[1:3], kernel, strides, dil, pads)
    if padding is None:
        x = pad_input(ctx, x, pads, layer)
        padding = PADDING_VALID
    common = {"Padding": padding, "StrideW": strides[1], "StrideH": strides[0], "FusedActivationFunction": act_code,
              "DilationWFactor": dil[1], "DilationHFactor": dil[0]}
    q = x.quant is not None and x.dtype == np.int8
    if depthwise:
        mult = y.shape[3] // x.shape[3]
        ctx.m.add_op("DEPTHWISE_CONV_2D", [x, filt, bias], [y],
                     ("DepthwiseConv2DOptions", {**common, "DepthMultiplier": mult}), version=3 if q else 2,
                     layer=layer)
    else:
        ctx.m.add_op("CONV_2D", [x, filt, bias], [y], ("Conv2DOptions", common), version=3 if q else 2,
                     layer=layer)
    if one_d:
        _unrows_1d(ctx, y, out, layer)


def _filter(w: np.ndarray, depthwise: bool) -> np.ndarray:
    # ONNX O,I,kh,kw -> TFLite O,kh,kw,I (conv) or 1,kh,kw,O (depthwise); a 1-D kernel O,I,k has kh = 1
    w = w.reshape(w.shape[:2] + (1,) + w.shape[2:]) if w.ndim == 3 else w
    return w.transpose(1, 2, 3, 0) if depthwise else w.transpose(0, 2, 3, 1)


def conv_int8(ctx, node, act) -> str:
    layer = layer_name(node)
    wq = _weights(ctx, node)
    depthwise, group = _conv_kind(ctx, node, wq.q)
    _check_groups(ctx, node, group, depthwise, layer)
    one_d = _is_1d(ctx, node)
    x = _rows_1d(ctx, node.input[0], "q", layer) if one_d else ctx.view(node.input[0], "q", True, layer)
    o = wq.q.shape[0]
    w_scale = np.broadcast_to(wq.scale, (o,)).astype(np.float32)
    per_channel = wq.scale.size > 1
    bq, bscale = _bias_int32(ctx, node, o, float(x.quant.scale[0]), w_scale, layer)
    out = ctx.out_q(act.output[0] if act is not None else node.output[0], not one_d, ctx.out_shape(node.output[0]))
    code = fused_code(ctx, act) if act is not None else NONE

    def conv(rows: slice, x_in: Tensor, y: Tensor) -> None:  # the output channels ``rows`` of the filter
        n = rows.stop - rows.start
        fq = Quant(w_scale[rows] if per_channel else w_scale[:1], np.zeros(n if per_channel else 1, np.int64),
                   3 if depthwise else 0)
        filt = ctx.m.add_const(ctx._tname(node.input[1]), np.ascontiguousarray(_filter(wq.q[rows], depthwise)), fq)
        bias = ctx.m.add_const(ctx._tname(layer + "/bias"), bq[rows], Quant(
            bscale[rows] if per_channel else bscale[:1], np.zeros(n if per_channel else 1, np.int64)))
        _emit_conv(ctx, node, x_in, filt, bias, y, code, depthwise, layer)

    if group > 1 and not depthwise:
        step = o // group
        return _grouped(ctx, node, x, out, group, lambda k, part, y: conv(slice(k * step, (k + 1) * step), part, y),
                        layer)
    conv(slice(0, o), x, out)
    return ""


def _rows_of(wq: QuantConst, rows: slice) -> QuantConst:
    """The output channels ``rows`` of a weight, with their own scales and zero points."""
    per_channel = wq.scale.size > 1
    return QuantConst(wq.q[rows], wq.scale[rows] if per_channel else wq.scale,
                      wq.zero_point[rows] if wq.zero_point.size > 1 else wq.zero_point, wq.axis)


def _dequantized_weights(ctx, wq, arr: np.ndarray, axis: int, name: str, layer: str) -> Tensor:
    """int8 weights kept in the file, DEQUANTIZE'd to float for a float op (TFLite's weight-only form)."""
    o = wq.q.shape[0]
    per_channel = wq.scale.size > 1
    quant = Quant(np.broadcast_to(wq.scale, (o,)).astype(np.float32) if per_channel else wq.scale[:1].astype(
        np.float32), np.asarray(np.broadcast_to(wq.zero_point, (o,)) if per_channel else wq.zero_point[:1],
                                np.int64), axis)
    if wq.q.dtype not in (np.int8, np.int16):
        raise NotSupportedError(f"export-tflite: {layer} has {wq.q.dtype} weights; TFLite keeps int8/int16 weights")
    qt = ctx.m.add_const(ctx._tname(name), np.ascontiguousarray(arr), quant)
    ft = ctx.new_f(name + "/dequantized", arr.shape)
    ctx.m.add_op("DEQUANTIZE", [qt], [ft], version=2, layer=layer)
    return ft


def _float_bias(ctx, node, o: int) -> np.ndarray:
    if len(node.input) < 3 or not node.input[2]:
        return np.zeros(o, np.float32)
    bq = ctx.g.quant_const(node.input[2])
    return (bq.dequantized() if bq is not None else np.asarray(ctx.g.const(node.input[2]), np.float32)).reshape(-1)


def conv_float(ctx, node) -> str:
    layer = layer_name(node)
    wq = ctx.g.quant_const(node.input[1])
    w = _weight_array(ctx, node)
    depthwise, group = _conv_kind(ctx, node, w)
    _check_groups(ctx, node, group, depthwise, layer)
    one_d = _is_1d(ctx, node)
    x = _rows_1d(ctx, node.input[0], "f", layer) if one_d else ctx.view(node.input[0], "f", True, layer)
    biases = _float_bias(ctx, node, w.shape[0])
    out = ctx.out_f(node.output[0], not one_d)

    def conv(rows: slice, x_in: Tensor, y: Tensor) -> None:  # the output channels ``rows`` of the filter
        if wq is None:  # float weights: a float filter
            filt = ctx.m.add_const(ctx._tname(node.input[1]), np.ascontiguousarray(_filter(w[rows], depthwise)))
        else:
            filt = _dequantized_weights(ctx, _rows_of(wq, rows), _filter(w[rows], depthwise), 3 if depthwise else 0,
                                        node.input[1], layer)
        bias = ctx.m.add_const(ctx._tname(layer + "/bias"), biases[rows])
        _emit_conv(ctx, node, x_in, filt, bias, y, NONE, depthwise, layer)

    if group > 1 and not depthwise:
        step = w.shape[0] // group
        return _grouped(ctx, node, x, out, group, lambda k, part, y: conv(slice(k * step, (k + 1) * step), part, y),
                        layer)
    conv(slice(0, w.shape[0]), x, out)
    return ""


register("Conv", int8=conv_int8, float=conv_float, fuses_activation=True, int8_ok=_conv_int8_ok)


# ----------------------------------------------------------------------------------------------------------- Gemm
def _gemm_matrix(ctx, node, w: np.ndarray) -> np.ndarray:
    """The weight ``w`` (integers or float) as FULLY_CONNECTED reads it: [out, in]."""
    if attr(node, "transA", 0) or attr(node, "alpha", 1.0) != 1.0 or attr(node, "beta", 1.0) != 1.0:
        raise NotSupportedError(f"export-tflite: {layer_name(node)} is a Gemm with transA/alpha/beta; only "
                                "y = x W^T + b maps to FULLY_CONNECTED")
    return w if attr(node, "transB", 0) else w.T


def _gemm_int8_ok(ctx, node) -> bool:
    wq = ctx.g.quant_const(node.input[1])
    if wq is None or wq.q.dtype != np.int8 or np.any(wq.zero_point != 0):
        return False
    per_axis_ok = wq.scale.size == 1 or (attr(node, "transB", 0) and wq.axis == 0) or \
        (not attr(node, "transB", 0) and wq.axis == 1)
    return bool(per_axis_ok) and len(ctx.value(node.input[0]).shape) == 2


def gemm_int8(ctx, node, act) -> str:
    layer = layer_name(node)
    wq = _weights(ctx, node)
    w = np.ascontiguousarray(_gemm_matrix(ctx, node, wq.q))
    o = w.shape[0]
    x = ctx.value(node.input[0]).q
    w_scale = np.broadcast_to(wq.scale, (o,)).astype(np.float32)
    per_channel = wq.scale.size > 1
    filt = ctx.m.add_const(ctx._tname(node.input[1]), w, Quant(w_scale if per_channel else w_scale[:1],
                                                               np.zeros(o if per_channel else 1, np.int64), 0))
    bq, bscale = _bias_int32(ctx, node, o, float(x.quant.scale[0]), w_scale, layer)
    bias = ctx.m.add_const(ctx._tname(layer + "/bias"), bq,
                           Quant(bscale if per_channel else bscale[:1], np.zeros(o if per_channel else 1, np.int64)))
    out = ctx.out_q(act.output[0] if act is not None else node.output[0], False, ctx.out_shape(node.output[0]))
    ctx.m.add_op("FULLY_CONNECTED", [x, filt, bias], [out],
                 ("FullyConnectedOptions", {"FusedActivationFunction": fused_code(ctx, act) if act else NONE}),
                 version=5 if per_channel else 4, layer=layer)
    return ""


def gemm_float(ctx, node) -> str:
    layer = layer_name(node)
    wq = ctx.g.quant_const(node.input[1])
    w = np.ascontiguousarray(_gemm_matrix(ctx, node, _weight_array(ctx, node)))
    x = ctx.f_of(node.input[0], layer)
    if wq is None:  # float weights: a layer the build computes in float (a conditioning branch, quant/plan.py)
        filt = ctx.m.add_const(ctx._tname(node.input[1]), w)
    else:
        wq_axis0 = type(wq)(w, wq.scale, wq.zero_point, 0) if wq.scale.size > 1 else wq
        filt = _dequantized_weights(ctx, wq_axis0, w, 0, node.input[1], layer)
    bias = ctx.m.add_const(ctx._tname(layer + "/bias"), _float_bias(ctx, node, w.shape[0]))
    out = ctx.out_f(node.output[0], False)
    ctx.m.add_op("FULLY_CONNECTED", [x, filt, bias], [out], ("FullyConnectedOptions", {"FusedActivationFunction": 0}),
                 layer=layer)
    return ""


register("Gemm", int8=gemm_int8, float=gemm_float, fuses_activation=True, int8_ok=_gemm_int8_ok)


# -------------------------------------------------------------------------------------------------- ConvTranspose
def _deconv_geometry(ctx, node, w_shape, grouped_ok: bool = False
                     ) -> Tuple[List[int], List[int], List[int], Tuple[int, ...]]:
    """strides, kernel, ONNX pads and the uncropped N,H,W,C output TRANSPOSE_CONV writes with VALID padding (C: one
    group's output channels, ONNX's weight dim 1). grouped_ok: the caller writes one TRANSPOSE_CONV per group."""
    layer = layer_name(node)
    kernel = list(w_shape[2:])
    if len(kernel) != 2:
        raise NotSupportedError(f"export-tflite: {layer} is a {len(kernel)}-D ConvTranspose; TFLite's "
                                "TRANSPOSE_CONV takes 2-D kernels only")
    if (int(attr(node, "group", 1)) != 1 and not grouped_ok) or any(d != 1 for d in attr(node, "dilations", [1, 1])):
        raise NotSupportedError(f"export-tflite: {layer} is a grouped or dilated ConvTranspose; TFLite's "
                                "TRANSPOSE_CONV has neither")
    if attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or attr(node, "output_shape") is not None:
        raise NotSupportedError(f"export-tflite: {layer} sets auto_pad / output_shape; openrknn's graphs carry "
                                "explicit pads")
    strides = list(attr(node, "strides", [1, 1]))
    pads = list(attr(node, "pads", [0, 0, 0, 0]))
    extra = list(attr(node, "output_padding", [0, 0]))
    if any(e > pads[d + 2] for d, e in enumerate(extra)):
        raise NotSupportedError(f"export-tflite: {layer} has output_padding beyond its end pads; TFLite's "
                                "TRANSPOSE_CONV cannot write those rows")
    n, _, h, w = ctx.value(node.input[0]).shape
    full = (n, (h - 1) * strides[0] + kernel[0], (w - 1) * strides[1] + kernel[1], w_shape[1])
    return strides, kernel, pads, full


def _deconv_emit(ctx, geom, x: Tensor, filt: Tensor, bias: Tensor, out: Tensor, act_code: int, layer: str) -> None:
    """TRANSPOSE_CONV with VALID padding, then a crop of ONNX's pads (exact for any pads / output_padding)."""
    strides, _, pads, full = geom
    crop = out.shape != full
    y = ctx.m.add_tensor(ctx._tname(out.name.split("#")[0] + "/uncropped"), full, out.dtype, out.quant) \
        if crop else out
    shape = ctx.m.add_const(ctx._tname("output_shape"), np.asarray(full, np.int32))
    q = x.dtype == np.int8
    # TFLite's versions: 3 = with a bias input, 4 = with a fused activation
    ctx.m.add_op("TRANSPOSE_CONV", [shape, filt, x, bias], [y],
                 ("TransposeConvOptions", {"Padding": PADDING_VALID, "StrideW": strides[1], "StrideH": strides[0],
                                           "FusedActivationFunction": act_code}),
                 version=4 if act_code != NONE else 3, layer=layer)
    if crop:
        begin = [0, pads[0], pads[1], 0]
        size = list(out.shape)
        ctx.m.add_op("SLICE", [y, ctx.m.add_const(ctx._tname("begin"), np.asarray(begin, np.int32)),
                               ctx.m.add_const(ctx._tname("size"), np.asarray(size, np.int32))], [out],
                     version=2 if q else 1, layer=layer)


def _deconv_filter(w: np.ndarray) -> np.ndarray:
    # ONNX C_in,C_out,kh,kw -> TFLite C_out,kh,kw,C_in (TFLite's TRANSPOSE_CONV is the same gradient-of-conv map)
    return np.ascontiguousarray(w.transpose(1, 2, 3, 0))


def _deconv_int8_ok(ctx, node) -> bool:
    wq = ctx.g.quant_const(node.input[1])
    # per-channel scales must run along ONNX's output-channel axis (1), TFLite's quantized dimension 0
    return (wq is not None and wq.q.dtype == np.int8 and not np.any(wq.zero_point != 0)
            and (wq.scale.size == 1 or wq.axis == 1))


def deconv_int8(ctx, node, act) -> str:
    layer = layer_name(node)
    wq = _weights(ctx, node)
    geom = _deconv_geometry(ctx, node, wq.q.shape)
    x = ctx.view(node.input[0], "q", True, layer)
    o = wq.q.shape[1]
    w_scale = np.broadcast_to(wq.scale.reshape(-1), (o,)).astype(np.float32)
    per_channel = wq.scale.size > 1
    filt = ctx.m.add_const(ctx._tname(node.input[1]), _deconv_filter(wq.q),
                           Quant(w_scale if per_channel else w_scale[:1],
                                 np.zeros(o if per_channel else 1, np.int64), 0))
    bq, bscale = _bias_int32(ctx, node, o, float(x.quant.scale[0]), w_scale, layer)
    bias = ctx.m.add_const(ctx._tname(layer + "/bias"), bq,
                           Quant(bscale if per_channel else bscale[:1], np.zeros(o if per_channel else 1, np.int64)))
    out = ctx.out_q(act.output[0] if act is not None else node.output[0], True, ctx.out_shape(node.output[0]))
    _deconv_emit(ctx, geom, x, filt, bias, out, fused_code(ctx, act) if act is not None else NONE, layer)
    return ""


def deconv_float(ctx, node) -> str:
    """A float TRANSPOSE_CONV (int8 weights DEQUANTIZE'd, or the float weights of a layer the build left float: a
    grouped strided ConvTranspose, whose output channels span two weight axes). Grouped: one TRANSPOSE_CONV per
    group, as the grouped convs are written."""
    layer = layer_name(node)
    wq = ctx.g.quant_const(node.input[1])
    w = _weight_array(ctx, node)  # ONNX C_in, C_out / group, kh, kw
    group = int(attr(node, "group", 1))
    geom = _deconv_geometry(ctx, node, w.shape, grouped_ok=wq is None)
    x = ctx.view(node.input[0], "f", True, layer)
    if wq is not None and wq.scale.size > 1 and wq.axis != 1:
        raise NotSupportedError(f"export-tflite: {layer}'s weights are quantized per input channel; TFLite keeps "
                                "per-channel weights along the output channels only")
    c_in, c_out = w.shape[0] // group, w.shape[1]
    biases = _float_bias(ctx, node, c_out * group)
    out = ctx.out_f(node.output[0], True)

    def deconv(k: int, x_in: Tensor, y: Tensor) -> None:  # group k
        arr = _deconv_filter(w[k * c_in:(k + 1) * c_in])
        if wq is None:
            filt = ctx.m.add_const(ctx._tname(node.input[1]), np.ascontiguousarray(arr, np.float32))
        else:
            wq_out = type(wq)(arr, wq.scale.reshape(-1), wq.zero_point.reshape(-1), 0 if wq.scale.size > 1 else None)
            filt = _dequantized_weights(ctx, wq_out, arr, 0, node.input[1], layer)
        bias = ctx.m.add_const(ctx._tname(layer + "/bias"), biases[k * c_out:(k + 1) * c_out])
        _deconv_emit(ctx, geom, x_in, filt, bias, y, NONE, layer)

    if group > 1:
        return _grouped(ctx, node, x, out, group, deconv, layer).replace("CONV_2D", "TRANSPOSE_CONV")
    deconv(0, x, out)
    return ""


register("ConvTranspose", int8=deconv_int8, float=deconv_float, fuses_activation=True, int8_ok=_deconv_int8_ok)
