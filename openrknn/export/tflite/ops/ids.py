"""Equal / Cast: the integer-id ops a one-hot embedding is spelled with (byte or token ids compared with a constant
range, the result cast to float and multiplied by a table). TFLite's EQUAL and CAST on the ids' own integer type."""

from __future__ import annotations

import numpy as np
import onnx

from ....errors import NotSupportedError
from . import attr, layer_name, register

# ONNX Cast targets TFLite can hold (writer.TENSOR_TYPES)
CAST_TO = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.INT32: np.int32, onnx.TensorProto.INT64: np.int64,
           onnx.TensorProto.BOOL: np.bool_, onnx.TensorProto.UINT8: np.uint8, onnx.TensorProto.INT8: np.int8,
           onnx.TensorProto.INT16: np.int16}


def _equal(ctx, node) -> str:
    """EQUAL on two unquantized tensors; a constant operand is written in the other's type."""
    layer = layer_name(node)
    acts = ctx.activation_inputs(node)
    if any(len(ctx.value(i).shape) == 4 and ctx.value(i).nhwc for i in acts):
        raise NotSupportedError(f"export-tflite: {layer} compares a channel-last tensor; only ids in the model's own "
                                "order are exported")
    dtype = ctx.f_of(acts[0], layer).dtype
    ins = []
    for name in node.input:
        if name in acts:
            ins.append(ctx.f_of(name, layer))
        elif ctx.g.is_const(name):
            arr = np.asarray(ctx.g.const(name))
            if not np.array_equal(arr.astype(dtype), arr):
                raise NotSupportedError(f"export-tflite: {layer} compares with constants that {dtype.name} cannot "
                                        "hold exactly")
            ins.append(ctx.m.add_const(ctx._tname(name), np.ascontiguousarray(arr.astype(dtype))))
        else:
            raise NotSupportedError(f"export-tflite: {layer} compares a quantized tensor; only ids and constants are")
    if ins[0].dtype != ins[1].dtype:
        raise NotSupportedError(f"export-tflite: {layer} compares {ins[0].dtype.name} with {ins[1].dtype.name}")
    out = ctx.m.add_tensor(ctx._tname(node.output[0]), ctx.out_shape(node.output[0]), np.bool_)
    ctx.m.add_op("EQUAL", ins, [out], layer=layer)
    ctx.set_f(node.output[0], out)
    return f"on {dtype.name} values, exact"


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


register("Equal", float=_equal)
register("Cast", float=_cast)
