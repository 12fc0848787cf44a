"""Add / Sub / Mul / Div / Max / Min with numpy broadcasting, int8 (two quantized activations) or float."""

from __future__ import annotations

import numpy as np

from ....errors import NotSupportedError
from . import layer_name, register
from .activations import NONE, fused_code
from .ids import typed_operands

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
    """Index arithmetic on integer ids (a Keras embedding offsetting its ids: Cast to int32, then Add): TFLite's
    ADD / SUB / MUL / MAXIMUM / MINIMUM on the ids' own type, a constant operand written in that type."""
    builtin, opts = BUILTINS[node.op_type]
    layer = layer_name(node)
    if builtin == "DIV":
        raise NotSupportedError(f"export-tflite: {layer} divides integer tensors; only float division is exported")
    ins = typed_operands(ctx, node.input, dtype, layer, "mixes")
    out = ctx.m.add_tensor(ctx._tname(node.output[0]), ctx.out_shape(node.output[0]), dtype)
    ctx.m.add_op(builtin, ins, [out], (opts, {"FusedActivationFunction": NONE}) if opts else None, layer=layer)
    ctx.set_f(node.output[0], out)
    return f"on {dtype.name} values, exact"


def _float(ctx, node) -> str:
    builtin, opts = BUILTINS[node.op_type]
    typed = [ctx.value(i).f.dtype for i in ctx.activation_inputs(node)
             if ctx.value(i).q is None and np.dtype(ctx.value(i).f.dtype).kind in "iu"]
    if typed:
        return _integer(ctx, node, np.dtype(typed[0]))
    nhwc = _layout(ctx, node)
    ins = _operands(ctx, node, "f", nhwc)
    out = ctx.out_f(node.output[0], nhwc)
    ctx.m.add_op(builtin, ins, [out], (opts, {"FusedActivationFunction": NONE}) if opts else None)
    return ""


def _int8_ok(ctx, node) -> bool:
    # int8 only between two quantized activations: a constant operand has no scale of ours to keep
    return node.op_type in ("Add", "Sub", "Mul", "Max", "Min") and len(ctx.activation_inputs(node)) == 2 and \
        all(i for i in node.input)


for _op in BUILTINS:
    register(_op, int8=_int8, float=_float, fuses_activation=_op in ("Add", "Sub", "Mul"), int8_ok=_int8_ok)
