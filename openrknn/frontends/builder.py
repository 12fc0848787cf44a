"""Building an ONNX graph from another framework's layers: unique names, constants, nodes, and (for TFLite and
TensorFlow, whose 4-D tensors are NHWC) each tensor's layout, so convolutions are emitted NCHW-native and a Transpose
appears only where a layout-sensitive op (Reshape, a channel-last output) needs the other layout."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import ModelLoadError
from . import OPSET

NHWC_TO_NCHW = [0, 3, 1, 2]
NCHW_TO_NHWC = [0, 2, 3, 1]
NHWC_AXIS_IN_NCHW = {0: 0, 1: 2, 2: 3, 3: 1}  # where an NHWC axis sits in the NCHW tensor


class UnsupportedLayer(ModelLoadError):
    """A layer type the loader has no mapping for; the message names the layer and its type."""

    def __init__(self, framework: str, layer: str, kind: str, hint: str = ""):
        self.layer, self.kind = layer, kind
        super().__init__(f"{framework} layer '{layer}' of type {kind} is not supported by openrknn's {framework} "
                         "loader" + (f" ({hint})" if hint else "") + "; convert the model to ONNX with a tool that "
                         "handles that layer and use load_onnx()")


class GraphBuilder:
    def __init__(self, name: str):
        self.name = name
        self.nodes: List[onnx.NodeProto] = []
        self.inits: List[onnx.TensorProto] = []
        self.inputs: List[onnx.ValueInfoProto] = []
        self.outputs: List[str] = []
        self._taken: set = set()

    def unique(self, base: str) -> str:
        base = base or "t"
        name, k = base, 1
        while name in self._taken:
            name, k = f"{base}_{k}", k + 1
        self._taken.add(name)
        return name

    def const(self, value, base: str) -> str:
        name = self.unique(base)
        arr = np.asarray(value)
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def node(self, op: str, inputs: Sequence[str], base: str, n_out: int = 1, outputs: Optional[Sequence[str]] = None,
             **attrs) -> Union[str, List[str]]:
        outs = list(outputs) if outputs is not None else [self.unique(base if n_out == 1 else f"{base}:{i}")
                                                          for i in range(n_out)]
        for o in outs:
            self._taken.add(o)
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=self.unique(f"{base}/{op}") if outputs
                                           is None else self.unique(base), **attrs))
        return outs[0] if len(outs) == 1 else outs

    def add_input(self, name: str, shape: Sequence[int], elem_type: int = TensorProto.FLOAT) -> str:
        self._taken.add(name)
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))
        return name

    def model(self, producer: str) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, self.inputs,
                                  [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None)
                                   for o in self.outputs], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=producer)
        model.ir_version = 8
        model = onnx.shape_inference.infer_shapes(model)
        inferred = {v.name: v for v in list(model.graph.value_info) + list(model.graph.output)}
        for o in model.graph.output:  # the outputs' element types, so every reader of the model sees them
            if o.type.tensor_type.elem_type == TensorProto.UNDEFINED and o.name in inferred:
                o.type.CopyFrom(inferred[o.name].type)
            if o.type.tensor_type.elem_type == TensorProto.UNDEFINED:
                o.type.tensor_type.elem_type = TensorProto.FLOAT
        return model


# ---------------------------------------------------------------- channel-last tensors


@dataclass
class Value:
    name: str  # ONNX tensor name
    layout: str  # "nhwc" | "nchw" (4-D tensors of a channel-last graph) | "plain" (any other rank)
    rank: int


class ChannelLast:
    """The ONNX value of each source tensor, in the layout it was produced in; get() transposes on demand (once)."""

    def __init__(self, b: GraphBuilder, shape_of=None):
        self.b = b
        self.values: Dict[str, Value] = {}
        self._other: Dict[str, str] = {}
        self.shape_of = shape_of  # source tensor -> its NHWC shape, or None when unknown

    def set(self, src: str, name: str, layout: str, rank: int) -> None:
        self.values[src] = Value(name, layout if rank == 4 else "plain", rank)

    def has(self, src: str) -> bool:
        return src in self.values

    def get(self, src: str, want: str = "any") -> Value:
        v = self.values[src]
        if want == "any" or v.rank != 4 or v.layout == want:
            return v
        key = f"{src}->{want}"
        if key not in self._other:
            shape = self.shape_of(src) if self.shape_of is not None else None
            if shape is not None and len(shape) == 4 and shape[1] == shape[2] == 1 and shape[0] > 0 and shape[3] > 0:
                # H = W = 1 (after a global pool): both layouts hold the same element order, a Reshape will do
                target = [shape[0], shape[3], 1, 1] if want == "nchw" else list(shape)
                self._other[key] = self.b.node("Reshape", [v.name, self.b.const(np.array(target, np.int64),
                                                                                f"{src}/{want}_shape")],
                                               f"{src}/to_{want}")
            else:
                perm = NHWC_TO_NCHW if want == "nchw" else NCHW_TO_NHWC
                self._other[key] = self.b.node("Transpose", [v.name], f"{src}/to_{want}", perm=perm)
        return Value(self._other[key], want, 4)


def const_for_layout(arr: np.ndarray, layout: str) -> np.ndarray:
    """A constant operand written for an NHWC tensor, made to broadcast against the NCHW one."""
    if layout != "nchw" or arr.ndim == 0 or arr.size == 1:
        return arr
    if arr.ndim > 4:
        raise ModelLoadError(f"a constant of rank {arr.ndim} cannot broadcast against a 4-D tensor")
    arr = arr.reshape((1,) * (4 - arr.ndim) + arr.shape)
    return np.ascontiguousarray(arr.transpose(NHWC_TO_NCHW))


def transpose_pads(in_hw: Sequence[int], strides: Sequence[int], kernel: Sequence[int], out_hw: Sequence[int],
                   same: bool = True) -> Tuple[List[int], List[int]]:
    """ONNX ConvTranspose pads and output_padding giving a file's stated output size exactly (explicit, as every graph
    of openrknn carries them: no output_shape): stride * (in - 1) + kernel - pads = out, any surplus as output_padding.
    ``kernel``: the dilated extent. SAME crops as the forward conv padded (the odd pixel at the end); VALID crops
    nothing at the start."""
    total = [(i - 1) * s + k - o for i, s, k, o in zip(in_hw, strides, kernel, out_hw)]
    if not same:
        return [0, 0] + [max(t, 0) for t in total], [max(-t, 0) for t in total]
    pads = [max(t, 0) for t in total]
    return [t // 2 for t in pads] + [t - t // 2 for t in pads], [max(-t, 0) for t in total]


def same_pads(in_hw: Sequence[int], k_hw: Sequence[int], strides: Sequence[int],
              dilations: Sequence[int] = (1, 1)) -> List[int]:
    """TensorFlow's SAME padding as ONNX pads [top, left, bottom, right] (the extra pixel goes after)."""
    begin, end = [], []
    for size, k, s, d in zip(in_hw, k_hw, strides, dilations):
        if size <= 0:
            raise ModelLoadError("SAME padding needs static spatial sizes; give input_size_list")
        out = -(-size // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        begin.append(total // 2)
        end.append(total - total // 2)
    return begin + end


def activation(b: GraphBuilder, x: str, kind: str, base: str) -> str:
    """A fused activation by name: NONE, RELU, RELU6, RELU_N1_TO_1, TANH, SIGMOID."""
    if kind in ("NONE", "", None):
        return x
    if kind == "RELU":
        return b.node("Relu", [x], base)
    if kind == "RELU6":
        return b.node("Clip", [x, b.const(np.float32(0), f"{base}/min"), b.const(np.float32(6), f"{base}/max")],
                      base)
    if kind == "RELU_N1_TO_1":
        return b.node("Clip", [x, b.const(np.float32(-1), f"{base}/min"), b.const(np.float32(1), f"{base}/max")],
                      base)
    if kind == "TANH":
        return b.node("Tanh", [x], base)
    if kind == "SIGMOID":
        return b.node("Sigmoid", [x], base)
    raise ModelLoadError(f"fused activation {kind} of '{base}' is not supported")
