"""Conv -> CONV_2D / DEPTHWISE_CONV_2D, Gemm -> FULLY_CONNECTED (int8 with our integers, or float)."""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import onnx

from ....errors import NotSupportedError
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


def _weights(ctx, node):
    wq = ctx.g.quant_const(node.input[1])
    if wq is None:
        raise NotSupportedError(f"export-tflite: {layer_name(node)} has float weights; export needs a quantized "
                                "build (w8a8)")
    return wq


def _conv_kind(ctx, node, wq) -> Tuple[bool, int]:
    group = int(attr(node, "group", 1))
    c_in = ctx.value(node.input[0]).shape[1]
    return group > 1 and group == c_in and wq.q.shape[1] == 1, group


def _conv_int8_ok(ctx, node) -> bool:
    wq = ctx.g.quant_const(node.input[1])
    if wq is None or wq.q.dtype != np.int8 or np.any(wq.zero_point != 0):
        return False
    depthwise, group = _conv_kind(ctx, node, wq)
    return group == 1 or depthwise


def _emit_conv(ctx, node, x: Tensor, filt: Tensor, bias: Tensor, out: Tensor, act_code: int, depthwise: bool,
               layer: str) -> None:
    kernel = list(attr(node, "kernel_shape", None) or ctx.g.quant_const(node.input[1]).q.shape[2:])
    strides, dil, pads = geometry(node, kernel)
    padding = tfl_padding(x.shape[1:3], kernel, strides, dil, pads)
    if padding is None:
        x = pad_input(ctx, x, pads, layer)
        padding = PADDING_VALID
    common = {"Padding": padding, "StrideW": strides[1], "StrideH": strides[0], "FusedActivationFunction": act_code,
              "DilationWFactor": dil[1], "DilationHFactor": dil[0]}
    q = x.quant is not None and x.dtype == np.int8
    if depthwise:
        mult = out.shape[3] // x.shape[3]
        ctx.m.add_op("DEPTHWISE_CONV_2D", [x, filt, bias], [out],
                     ("DepthwiseConv2DOptions", {**common, "DepthMultiplier": mult}), version=3 if q else 2,
                     layer=layer)
    else:
        ctx.m.add_op("CONV_2D", [x, filt, bias], [out], ("Conv2DOptions", common), version=3 if q else 2,
                     layer=layer)


def _filter(wq, depthwise: bool) -> np.ndarray:
    # ONNX O,I,kh,kw -> TFLite O,kh,kw,I (conv) or 1,kh,kw,O (depthwise)
    return wq.q.transpose(1, 2, 3, 0) if depthwise else wq.q.transpose(0, 2, 3, 1)


def conv_int8(ctx, node, act) -> str:
    layer = layer_name(node)
    wq = _weights(ctx, node)
    depthwise, _ = _conv_kind(ctx, node, wq)
    x = ctx.view(node.input[0], "q", True, layer)
    o = wq.q.shape[0]
    w_scale = np.broadcast_to(wq.scale, (o,)).astype(np.float32)
    per_channel = wq.scale.size > 1
    fq = Quant(w_scale if per_channel else w_scale[:1], np.zeros(o if per_channel else 1, np.int64),
               3 if depthwise else 0)
    filt = ctx.m.add_const(ctx._tname(node.input[1]), np.ascontiguousarray(_filter(wq, depthwise)), fq)
    bq, bscale = _bias_int32(ctx, node, o, float(x.quant.scale[0]), w_scale, layer)
    bias = ctx.m.add_const(ctx._tname(layer + "/bias"), bq,
                           Quant(bscale if per_channel else bscale[:1], np.zeros(o if per_channel else 1, np.int64)))
    out = ctx.out_q(act.output[0] if act is not None else node.output[0], True, ctx.out_shape(node.output[0]))
    _emit_conv(ctx, node, x, filt, bias, out, fused_code(ctx, act) if act is not None else NONE, depthwise, layer)
    return ""


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
    wq = _weights(ctx, node)
    depthwise, group = _conv_kind(ctx, node, wq)
    if group > 1 and not depthwise:
        raise NotSupportedError(f"export-tflite: {layer} is a grouped conv (group {group}) that is not depthwise; "
                                "TFLite's CONV_2D kernels do not take groups")
    x = ctx.view(node.input[0], "f", True, layer)
    filt = _dequantized_weights(ctx, wq, _filter(wq, depthwise), 3 if depthwise else 0, node.input[1], layer)
    bias = ctx.m.add_const(ctx._tname(layer + "/bias"), _float_bias(ctx, node, wq.q.shape[0]))
    out = ctx.out_f(node.output[0], True)
    _emit_conv(ctx, node, x, filt, bias, out, NONE, depthwise, layer)
    return ""


register("Conv", int8=conv_int8, float=conv_float, fuses_activation=True, int8_ok=_conv_int8_ok)


# ----------------------------------------------------------------------------------------------------------- Gemm
def _gemm_matrix(ctx, node, wq) -> np.ndarray:
    if attr(node, "transA", 0) or attr(node, "alpha", 1.0) != 1.0 or attr(node, "beta", 1.0) != 1.0:
        raise NotSupportedError(f"export-tflite: {layer_name(node)} is a Gemm with transA/alpha/beta; only "
                                "y = x W^T + b maps to FULLY_CONNECTED")
    return wq.q if attr(node, "transB", 0) else wq.q.T


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
    w = np.ascontiguousarray(_gemm_matrix(ctx, node, wq))
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
    wq = _weights(ctx, node)
    w = np.ascontiguousarray(_gemm_matrix(ctx, node, wq))
    x = ctx.f_of(node.input[0], layer)
    if wq.scale.size > 1:
        wq_axis0 = type(wq)(w, wq.scale, wq.zero_point, 0)
    else:
        wq_axis0 = wq
    filt = _dequantized_weights(ctx, wq_axis0, w, 0, node.input[1], layer)
    bias = ctx.m.add_const(ctx._tname(layer + "/bias"), _float_bias(ctx, node, w.shape[0]))
    out = ctx.out_f(node.output[0], False)
    ctx.m.add_op("FULLY_CONNECTED", [x, filt, bias], [out], ("FullyConnectedOptions", {"FusedActivationFunction": 0}),
                 layer=layer)
    return ""


register("Gemm", int8=gemm_int8, float=gemm_float, fuses_activation=True, int8_ok=_gemm_int8_ok)
