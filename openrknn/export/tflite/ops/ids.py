"""Equal / Cast: the integer-id ops a one-hot embedding is spelled with (byte or token ids compared with a constant
range, the result cast to float and multiplied by a table). TFLite's EQUAL and CAST on the ids' own integer type;
two float maps compared channel-last (a heat map's peak test).
Not / And / Or / Xor / Where: an attention mask turned into the scores' additive -inf / 0 (a transformer over padded
ids): TFLite's LOGICAL_* ops and SELECT_V2 on the boolean mask."""

from __future__ import annotations

import numpy as np
import onnx

from ....errors import NotSupportedError
from ..lower import nhwc_shape
from . import attr, layer_name, register

# ONNX Cast targets TFLite can hold (writer.TENSOR_TYPES)
CAST_TO = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.INT32: np.int32, onnx.TensorProto.INT64: np.int64,
           onnx.TensorProto.BOOL: np.bool_, onnx.TensorProto.UINT8: np.uint8, onnx.TensorProto.INT8: np.int8,
           onnx.TensorProto.INT16: np.int16}


def typed_operands(ctx, names, dtype: np.dtype, layer: str, what: str) -> list:
    """``names`` as TFLite tensors of one type: constants (a quantized one dequantized) written in it where it holds
    their values exactly, computed tensors required to have it. ``what``: the op's verb for the errors."""
    out = []
    for name in names:
        if ctx.g.is_const(name) or ctx.g.quant_const(name) is not None:
            qc = ctx.g.quant_const(name)
            arr = qc.dequantized() if qc is not None else np.asarray(ctx.g.const(name))
            if not np.array_equal(arr.astype(dtype), arr, equal_nan=arr.dtype.kind == "f"):
                raise NotSupportedError(f"export-tflite: {layer} {what} {dtype.name} values and constants that "
                                        f"{dtype.name} cannot hold exactly")
            out.append(ctx.m.add_const(ctx._tname(name), np.ascontiguousarray(arr.astype(dtype))))
        else:
            t = ctx.f_of(name, layer)
            if np.dtype(t.dtype) != dtype:
                raise NotSupportedError(f"export-tflite: {layer} {what} {dtype.name} and {np.dtype(t.dtype).name} "
                                        "tensors")
            out.append(t)
    return out


def typed_output(ctx, name: str, dtype: np.dtype):
    """The TFLite tensor for ONNX output ``name`` in ``dtype``, in the model's own order of dims: a float one as
    every float output is made, an integer one registered as a value of that type."""
    if dtype == np.float32:
        return ctx.out_f(name, False)
    out = ctx.m.add_tensor(ctx._tname(name), ctx.out_shape(name), dtype)
    ctx.set_f(name, out)
    return out


COMPARISONS = {"Equal": "EQUAL", "Less": "LESS", "Greater": "GREATER", "LessOrEqual": "LESS_EQUAL",
               "GreaterOrEqual": "GREATER_EQUAL"}


def _equal(ctx, node) -> str:
    """EQUAL (LESS, GREATER, ...) on two unquantized tensors; a constant operand is written in the other's type."""
    layer = layer_name(node)
    acts = ctx.activation_inputs(node)
    if any(len(ctx.value(i).shape) == 4 and ctx.value(i).nhwc for i in acts):
        return _equal_channel_last(ctx, node, acts, layer)
    dtype = np.dtype(ctx.f_of(acts[0], layer).dtype)
    ins = typed_operands(ctx, node.input, dtype, layer, "compares")
    out = ctx.m.add_tensor(ctx._tname(node.output[0]), ctx.out_shape(node.output[0]), np.bool_)
    ctx.m.add_op(COMPARISONS[node.op_type], ins, [out], layer=layer)
    ctx.set_f(node.output[0], out)
    return f"on {dtype.name} values, exact"


def _stored_channel_last(ctx, node) -> bool:
    """The op is computed on the channel-last layout: its output is 4-D and a 4-D activation input is stored so."""
    return len(ctx.out_shape(node.output[0])) == 4 and any(
        ctx.values.get(i) is not None and len(ctx.value(i).shape) == 4 and ctx.value(i).nhwc
        for i in node.input if i and not ctx.g.is_const(i) and ctx.g.quant_const(i) is None)


def _channel_last_operand(ctx, name: str, layer: str, dtype=None):
    """``name`` as an operand of a channel-last op: a 4-D activation viewed N,H,W,C; a constant laid out so (in
    ``dtype``, default its own); a one-element tensor as it is (it broadcasts the same in either layout)."""
    if ctx.g.is_const(name) or ctx.g.quant_const(name) is not None:
        qc = ctx.g.quant_const(name)
        arr = qc.dequantized() if qc is not None else np.asarray(ctx.g.const(name))
        return ctx.const_for(arr, 4, True, name, dtype or (np.float32 if arr.dtype.kind == "f" else arr.dtype))
    if len(ctx.value(name).shape) == 4:
        return ctx.view(name, "f", True, layer)
    if int(np.prod(ctx.value(name).shape)) == 1:
        return ctx.f_of(name, layer)
    raise NotSupportedError(f"export-tflite: {layer} combines a channel-last tensor with a tensor of another rank "
                            f"('{name}', {list(ctx.value(name).shape)}); only 4-D maps, constants and single values "
                            "are combined channel-last")


def _equal_channel_last(ctx, node, acts, layer: str) -> str:
    """A comparison of a 4-D float map stored channel-last with another (a heat map against its 3x3 MaxPool: the
    peaks), a constant (a threshold, a per-channel bound) or a one-element tensor (a threshold given as an input),
    made on that layout; the booleans keep it."""
    ins = [_channel_last_operand(ctx, i, layer, np.float32) for i in node.input]
    if any(np.dtype(t.dtype) != np.float32 for t in ins):
        raise NotSupportedError(f"export-tflite: {layer} compares channel-last integer tensors; only float maps are")
    out = ctx.m.add_tensor(ctx._tname(node.output[0]), nhwc_shape(ctx.out_shape(node.output[0])), np.bool_)
    ctx.m.add_op(COMPARISONS[node.op_type], ins, [out], layer=layer)
    ctx.set_f(node.output[0], out, True)
    return "on the float values, channel-last, exact"


def _cast(ctx, node) -> str:
    layer = layer_name(node)
    to = attr(node, "to")
    if to not in CAST_TO:
        raise NotSupportedError(f"export-tflite: {layer} casts to {onnx.TensorProto.DataType.Name(to)}, which TFLite "
                                "tensors here do not hold")
    v = ctx.value(node.input[0])
    x = ctx.f_of(node.input[0], layer)
    if x.dtype == np.dtype(CAST_TO[to]):
        ctx.values[node.output[0]] = v
        return ""
    out = ctx.m.add_tensor(ctx._tname(node.output[0]), x.shape, CAST_TO[to])
    ctx.m.add_op("CAST", [x], [out], layer=layer)
    ctx.set_f(node.output[0], out, v.nhwc)
    return f"{x.dtype.name} -> {np.dtype(CAST_TO[to]).name}"


def _bool_of(ctx, name: str, layer: str):
    """A boolean operand: a computed mask, or a constant written as bool."""
    if ctx.g.is_const(name):
        return ctx.m.add_const(ctx._tname(name), np.ascontiguousarray(np.asarray(ctx.g.const(name)).astype(np.bool_)))
    t = ctx.f_of(name, layer)
    if t.dtype != np.bool_:
        raise NotSupportedError(f"export-tflite: {layer} reads {np.dtype(t.dtype).name} tensor '{name}' as a "
                                "boolean")
    return t


def _logical(ctx, node) -> str:
    layer = layer_name(node)
    nhwc = _stored_channel_last(ctx, node)  # masks of channel-last maps (a pixel in range: two comparisons, And)
    ins = [_channel_last_operand(ctx, name, layer, np.bool_) if nhwc else _bool_of(ctx, name, layer)
           for name in node.input]
    if any(t.dtype != np.bool_ for t in ins):
        raise NotSupportedError(f"export-tflite: {layer} reads a {np.dtype(ins[0].dtype).name} tensor as a boolean")
    shape = ctx.out_shape(node.output[0])
    out = ctx.m.add_tensor(ctx._tname(node.output[0]), nhwc_shape(shape) if nhwc else shape, np.bool_)
    # Xor of two booleans is their inequality (TFLite has no LOGICAL_XOR; NOT_EQUAL takes bool)
    ctx.m.add_op({"Not": "LOGICAL_NOT", "And": "LOGICAL_AND", "Or": "LOGICAL_OR", "Xor": "NOT_EQUAL"}[node.op_type],
                 ins, [out], layer=layer)
    ctx.set_f(node.output[0], out, nhwc)
    return "on booleans, exact" + (", channel-last" if nhwc else "")


def _where(ctx, node) -> str:
    """SELECT_V2 (numpy broadcasting) of two operands by a boolean condition, in the ONNX order of dims: float
    values (a mask's -inf / 0), or integer ids (a Keras embedding wrapping negative ids); constants in that type."""
    layer = layer_name(node)
    computed = [ctx.f_of(name, layer) for name in node.input[1:]
                if not (ctx.g.is_const(name) or ctx.g.quant_const(name) is not None)]
    dtype = np.dtype(computed[0].dtype) if computed else np.dtype(np.float32)
    if _stored_channel_last(ctx, node):  # a pixel chosen between two maps (solarize, overlay), channel-last
        ins = [_channel_last_operand(ctx, node.input[0], layer, np.bool_)] + \
            [_channel_last_operand(ctx, name, layer, dtype) for name in node.input[1:]]
        if ins[0].dtype != np.bool_ or any(np.dtype(t.dtype) != dtype for t in ins[1:]):
            raise NotSupportedError(f"export-tflite: {layer} selects between tensors of different types")
        out = ctx.m.add_tensor(ctx._tname(node.output[0]), nhwc_shape(ctx.out_shape(node.output[0])), dtype)
        ctx.m.add_op("SELECT_V2", ins, [out], layer=layer)
        ctx.set_f(node.output[0], out, True)
        return f"{dtype.name} values chosen by a boolean mask, channel-last"
    cond = _bool_of(ctx, node.input[0], layer)
    ins = [cond] + typed_operands(ctx, node.input[1:], dtype, layer, "selects between")
    ctx.m.add_op("SELECT_V2", ins, [typed_output(ctx, node.output[0], dtype)], layer=layer)
    return f"{dtype.name} values chosen by a boolean mask"


for _op in COMPARISONS:
    register(_op, float=_equal)
register("Cast", float=_cast)
for _op in ("Not", "And", "Or", "Xor"):
    register(_op, float=_logical)
register("Where", float=_where)
