"""Add / Sub / Mul / Div / Max / Min with numpy broadcasting, int8 (two quantized activations), float or on
integer ids; Mod as FLOOR_MOD."""

from __future__ import annotations

import numpy as np

from ....errors import NotSupportedError
from . import attr, layer_name, register
from .activations import NONE, fused_code
from .ids import typed_operands, typed_output

BUILTINS = {"Add": ("ADD", "AddOptions"), "Sub": ("SUB", "SubOptions"), "Mul": ("MUL", "MulOptions"),
            "Div": ("DIV", "DivOptions"), "Max": ("MAXIMUM", None), "Min": ("MINIMUM", None)}


def _layout(ctx, node) -> bool:
    """Store the op N,H,W,C when its rank-4 activation inputs are; lower-rank activations force ONNX order."""
    acts = ctx.activation_inputs(node)
    shapes = [ctx.value(i).shape for i in acts]
    out_rank = max(len(s) for s in shapes) if shapes else 0
    return out_rank == 4 and all(len(s) == 4 or int(np.prod(s)) == 1 for s in shapes) and \
        any(ctx.value(i).nhwc for i in acts)


def _operands(ctx, node, kind: str, nhwc: bool):
    layer = layer_name(node)
    rank = max(len(ctx.value(i).shape) for i in ctx.activation_inputs(node))
    ops = []
    for name in node.input:
        if ctx.g.is_const(name) or ctx.g.quant_const(name) is not None:
            qc = ctx.g.quant_const(name)
            arr = qc.dequantized() if qc is not None else np.asarray(ctx.g.const(name), np.float32)
            ops.append(ctx.const_for(arr, rank, nhwc, name))
        elif len(ctx.value(name).shape) == 4:
            ops.append(ctx.view(name, kind, nhwc, layer))
        else:
            ops.append(ctx.value(name).q if kind == "q" else ctx.f_of(name, layer))
    return ops


def _int8(ctx, node, act) -> str:
    builtin, opts = BUILTINS[node.op_type]
    nhwc = _layout(ctx, node)
    ins = _operands(ctx, node, "q", nhwc)
    out = ctx.out_q(act.output[0] if act is not None else node.output[0], nhwc, ctx.out_shape(node.output[0]))
    if builtin in ("MAXIMUM", "MINIMUM"):
        # TFLite's int8 MAXIMUM / MINIMUM compare the stored integers: both inputs must be on the output's scale
        ins = [ctx.requantize(t, out.quant, layer_name(node), f"TFLite's int8 {builtin} takes its inputs on its "
                              "output's scale") for t in ins]
    code = fused_code(ctx, act) if act is not None else NONE
    ctx.m.add_op(builtin, ins, [out], (opts, {"FusedActivationFunction": code}) if opts else None, version=2)
    return ""


def _integer(ctx, node, dtype) -> str:
    """Index arithmetic on integer ids (a Keras embedding offsetting its ids: Cast to int32, then Add; a recognizer
    turning its input width into a sequence length): TFLite's ADD / SUB / MUL / MAXIMUM / MINIMUM on the ids' own
    type, a constant operand written in that type. Division truncates toward zero in ONNX (onnxruntime's integer
    Div) and in TFLite's int32 DIV, which has no int64 form: int64 operands are divided as int32 between CASTs,
    exact while they fit in 32 bits (lengths, widths and ids do)."""
    builtin, opts = BUILTINS[node.op_type]
    layer = layer_name(node)
    ins = _pairwise(ctx, node, builtin, typed_operands(ctx, node.input, dtype, layer, "mixes"), dtype)
    out = ctx.m.add_tensor(ctx._tname(node.output[0]), ctx.out_shape(node.output[0]), dtype)
    if builtin == "DIV" and dtype != np.int32:
        if dtype != np.int64:
            raise NotSupportedError(f"export-tflite: {layer} divides {dtype.name} tensors; TFLite's DIV takes "
                                    "int32 and float")
        narrow = []
        for i, t in enumerate(ins):
            n32 = ctx.m.add_tensor(ctx._tname(f"{node.output[0]}/int32_{i}"), t.shape, np.int32)
            ctx.m.add_op("CAST", [t], [n32], layer=layer)
            narrow.append(n32)
        q32 = ctx.m.add_tensor(ctx._tname(node.output[0] + "/int32"), out.shape, np.int32)
        ctx.m.add_op(builtin, narrow, [q32], (opts, {"FusedActivationFunction": NONE}), layer=layer)
        ctx.m.add_op("CAST", [q32], [out], layer=layer)
        ctx.set_f(node.output[0], out)
        return "int64 divided as int32 (TFLite's DIV has no int64 form), truncating as ONNX does; exact below 2^31"
    ctx.m.add_op(builtin, ins, [out], (opts, {"FusedActivationFunction": NONE}) if opts else None, layer=layer)
    ctx.set_f(node.output[0], out)
    return f"on {dtype.name} values, exact" + (", truncating as ONNX does" if builtin == "DIV" else "")


def _mod(ctx, node) -> str:
    """Mod with fmod=0 (the remainder takes the divisor's sign, as Python's %): TFLite's FLOOR_MOD, on int32,
    int64 or float. fmod=1 (C's fmod, the dividend's sign) has no TFLite op of its own."""
    layer = layer_name(node)
    if attr(node, "fmod", 0):
        raise NotSupportedError(f"export-tflite: {layer} is a Mod with fmod=1 (the remainder takes the dividend's "
                                "sign); TFLite's FLOOR_MOD computes fmod=0 only")
    acts = ctx.activation_inputs(node)
    if any(ctx.value(i).nhwc for i in acts):
        raise NotSupportedError(f"export-tflite: {layer} takes the remainder of a channel-last tensor; only "
                                "tensors in the model's own order are exported")
    first = ctx.value(acts[0])
    dtype = np.dtype(np.float32) if first.q is not None else np.dtype(ctx.f_of(acts[0], layer).dtype)
    if dtype not in (np.int32, np.int64, np.float32):
        raise NotSupportedError(f"export-tflite: {layer} takes the remainder of {dtype.name} tensors; TFLite's "
                                "FLOOR_MOD takes int32, int64 and float")
    ins = typed_operands(ctx, node.input, dtype, layer, "takes the remainder of")
    ctx.m.add_op("FLOOR_MOD", ins, [typed_output(ctx, node.output[0], dtype)], layer=layer)
    return f"on {dtype.name} values, the divisor's sign as ONNX's fmod=0"


def _pairwise(ctx, node, builtin: str, ins: list, dtype) -> list:
    """ONNX's Max / Min take any number of inputs, TFLite's MAXIMUM / MINIMUM two: all but the last pair are
    combined first, left to right (onnx-cv-graph's HSV saturation: the max of three channels)."""
    k = 0
    while len(ins) > 2:
        shape = list(np.broadcast_shapes(tuple(ins[0].shape), tuple(ins[1].shape)))
        part = ctx.m.add_tensor(ctx._tname(f"{node.output[0]}/{builtin.lower()}_{k}"), shape, dtype)
        ctx.m.add_op(builtin, ins[:2], [part], layer=layer_name(node))
        ins, k = [part] + ins[2:], k + 1
    return ins


def _float(ctx, node) -> str:
    builtin, opts = BUILTINS[node.op_type]
    typed = [ctx.value(i).f.dtype for i in ctx.activation_inputs(node)
             if ctx.value(i).q is None and np.dtype(ctx.value(i).f.dtype).kind in "iu"]
    if typed:
        return _integer(ctx, node, np.dtype(typed[0]))
    nhwc = _layout(ctx, node)
    ins = _pairwise(ctx, node, builtin, _operands(ctx, node, "f", nhwc), np.float32)
    out = ctx.out_f(node.output[0], nhwc)
    ctx.m.add_op(builtin, ins, [out], (opts, {"FusedActivationFunction": NONE}) if opts else None)
    return ""


def _int8_ok(ctx, node) -> bool:
    # int8 only between two quantized activations: a constant operand has no scale of ours to keep
    return node.op_type in ("Add", "Sub", "Mul", "Max", "Min") and len(ctx.activation_inputs(node)) == 2 and \
        all(i for i in node.input)


for _op in BUILTINS:
    register(_op, int8=_int8, float=_float, fuses_activation=_op in ("Add", "Sub", "Mul"), int8_ok=_int8_ok)
register("Mod", float=_mod)
