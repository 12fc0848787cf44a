"""float16 and float64 parts of an ONNX model turned into float32 at load.

Mixed-precision exports compute in float16 between Casts: Keras' mixed_float16 policy through tf2onnx (slovorez's
morpheme segmenter: a float32 embedding, a Cast, then every conv in float16, a float16 output), PyTorch's
`model.half()`, onnxconverter-common's float16 conversion; others compute a part in float64 (a Cast to double
around a front end). The quantizer measures, rounds and simulates activations as float32 (QuantizeLinear takes a
float32 scale for a float32 tensor), and the NPU runs float layers in its own fp16 whatever the file says, so both
types carry nothing the build needs, and rknn-toolkit2 changes them the same way: the weights become float32
(float16 ones exactly), Casts to either cast to float32, and such inputs, outputs and intermediate types become
float32. Inputs and outputs are then float32 arrays, as rknn-toolkit2 gives them for every model.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

FLOAT = TensorProto.FLOAT
OTHER_FLOATS = {TensorProto.FLOAT16, TensorProto.DOUBLE}
# attributes that name an output element type
_DTYPE_ATTRS = {("Cast", "to"), ("RandomNormal", "dtype"), ("RandomUniform", "dtype"),
                ("RandomNormalLike", "dtype"), ("RandomUniformLike", "dtype"), ("EyeLike", "dtype"),
                ("Bernoulli", "dtype"), ("Multinomial", "dtype")}


def _as_float32(t: TensorProto) -> TensorProto:
    out = numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name)
    out.doc_string = t.doc_string
    return out


def _widen_graph(g: onnx.GraphProto) -> int:
    changed = 0
    for k, t in enumerate(g.initializer):
        if t.data_type in OTHER_FLOATS:
            g.initializer[k].CopyFrom(_as_float32(t))
            changed += 1
    for v in list(g.input) + list(g.output) + list(g.value_info):
        tt = v.type.tensor_type
        if v.type.HasField("tensor_type") and tt.elem_type in OTHER_FLOATS:
            tt.elem_type = FLOAT
            changed += 1
    for node in g.node:
        for a in node.attribute:
            if (node.op_type, a.name) in _DTYPE_ATTRS and a.i in OTHER_FLOATS:
                a.i = FLOAT
                changed += 1
            elif a.type == onnx.AttributeProto.TENSOR and a.t.data_type in OTHER_FLOATS:  # Constant, ConstantOfShape
                a.t.CopyFrom(_as_float32(a.t))
                changed += 1
            elif a.type == onnx.AttributeProto.GRAPH:
                changed += _widen_graph(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                changed += sum(_widen_graph(sub) for sub in a.graphs)
    return changed


def to_float32(model: onnx.ModelProto) -> int:
    """Turn every float16 and float64 of ``model`` (weights, casts, input / output / intermediate types, sub-graphs)
    into float32, in place; returns how many it changed (0 for a float32 model)."""
    return _widen_graph(model.graph)
