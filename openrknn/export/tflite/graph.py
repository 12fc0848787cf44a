"""Read openrknn's QDQ ONNX graph (quant/qdq.py) back into what a TFLite writer needs.

The simulator's graph stores activations as uint8 with the zero point shifted by 128 when the nominal type is
int8 (schemes.py); TFLite int8 is the nominal type, so q_int8 = q_uint8 - 128 exactly. Weights are int8 behind a
DequantizeLinear (per output channel, axis 0), biases int32 behind one.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

Q_OPS = ("QuantizeLinear",)
DQ_OPS = ("DequantizeLinear",)
LENGTH_OPS = ("NonMaxSuppression",)   # outputs whose length is the image's own


@dataclass
class ActPoint:
    """A per-tensor activation quantization point, in TFLite's int8 domain."""

    scale: float
    zero_point: int        # int8 zero point
    bits: int


@dataclass
class QuantConst:
    """An integer constant behind a DequantizeLinear (weights, biases)."""

    q: np.ndarray          # int8 / int16 / int32 values as stored
    scale: np.ndarray      # 1-D (per channel) or shape (1,)
    zero_point: np.ndarray
    axis: Optional[int]

    def dequantized(self) -> np.ndarray:
        """What onnxruntime's DequantizeLinear computes (float32 arithmetic)."""
        shape = [1] * self.q.ndim
        if self.axis is not None and self.scale.size > 1:
            shape[self.axis] = -1
        s = self.scale.astype(np.float32).reshape(shape)
        z = self.zero_point.astype(np.int64).reshape(shape)
        return ((self.q.astype(np.int64) - z).astype(np.float32) * s).astype(np.float32)


def _infer_shapes(model: onnx.ModelProto, rounds: int = 16) -> onnx.ModelProto:
    """ONNX shape inference, carried across the Q/DQ pairs of 16-bit points (a peak map, a user's int16 layer),
    which the simulator writes in onnxruntime's com.microsoft domain: onnx has no schema there and stops at them.
    Each round gives their outputs their inputs' shapes and infers again. Shape inference is a help, never a
    requirement: ops fall back to runtime shapes."""
    for _ in range(rounds):
        try:
            inferred = shape_inference.infer_shapes(model, strict_mode=False)
        except Exception:
            return model
        g = inferred.graph
        inits = {t.name: t for t in g.initializer}
        known = {vi.name: vi for vi in list(g.input) + list(g.value_info) + list(g.output)}
        added = []
        for n in g.node:
            if n.domain != "com.microsoft" or n.op_type not in Q_OPS + DQ_OPS or n.input[0] not in known or \
                    n.output[0] in known or not known[n.input[0]].type.tensor_type.HasField("shape"):
                continue
            typed = inits.get(n.input[2]) if n.op_type in Q_OPS and len(n.input) > 2 else inits.get(n.input[1])
            if typed is None:
                continue
            dims = [d.dim_value if d.HasField("dim_value") else None
                    for d in known[n.input[0]].type.tensor_type.shape.dim]
            added.append(onnx.helper.make_tensor_value_info(n.output[0], typed.data_type, dims))
        if not added:
            return inferred
        g.value_info.extend(added)
        model = inferred
    return model


class QdqGraph:
    """Nodes, constants, quantization points and shapes of a QDQ model."""

    def __init__(self, model: onnx.ModelProto):
        inferred = _infer_shapes(model)
        g = inferred.graph
        self.model = inferred
        self.nodes: List[onnx.NodeProto] = list(g.node)
        self.inits: Dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        self.inputs = [i.name for i in g.input if i.name not in self.inits]
        # element types of the graph inputs (byte / token ids are integer tensors, not pixels)
        self.input_dtypes: Dict[str, np.dtype] = {
            i.name: np.dtype(onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type))
            for i in g.input if i.name not in self.inits}
        self.outputs = [o.name for o in g.output]
        self.producer: Dict[str, onnx.NodeProto] = {o: n for n in self.nodes for o in n.output if o}
        self.consumers: Dict[str, List[onnx.NodeProto]] = defaultdict(list)
        for n in self.nodes:
            for i in n.input:
                if i:
                    self.consumers[i].append(n)
        self.shapes: Dict[str, Tuple[int, ...]] = {}
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            dims = vi.type.tensor_type.shape.dim
            if vi.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
                self.shapes[vi.name] = tuple(int(d.dim_value) for d in dims)
        for name, arr in self.inits.items():
            self.shapes[name] = tuple(arr.shape)
        # after an NMS, a length known only when the model runs: -1 in those dims (the writer's shape signature)
        for vi in list(g.value_info) + list(g.output):
            if vi.name in self.run_time_length() and vi.type.tensor_type.HasField("shape"):
                self.shapes.setdefault(vi.name, tuple(int(d.dim_value) if d.HasField("dim_value") else -1
                                                      for d in vi.type.tensor_type.shape.dim))

    def positions_computed(self, node: onnx.NodeProto) -> bool:
        """A Slice or Pad whose positions the graph computes (a crop or border its inputs decide)."""
        at = {"Slice": (1, 2), "Pad": (1,)}.get(node.op_type, ())
        return any(k < len(node.input) and node.input[k] and not self.is_const(node.input[k]) for k in at)

    def run_time_length(self) -> set:
        """Tensors computed from an NMS's selection, or cut / padded at computed positions: their lengths depend
        on the input."""
        if not hasattr(self, "_run_time_length"):
            todo = [o for n in self.nodes if n.op_type in LENGTH_OPS or self.positions_computed(n)
                    for o in n.output if o]
            seen = set(todo)
            while todo:
                for reader in self.consumers.get(todo.pop(), []):
                    for o in reader.output:
                        if o and o not in seen:
                            seen.add(o)
                            todo.append(o)
            self._run_time_length = seen
        return self._run_time_length

    # ---- constants ------------------------------------------------------------------------------------------------
    def is_const(self, name: str) -> bool:
        if name in self.inits:
            return True
        p = self.producer.get(name)
        return p is not None and p.op_type == "Constant"

    def const(self, name: str) -> np.ndarray:
        if name in self.inits:
            return self.inits[name]
        p = self.producer[name]
        return numpy_helper.to_array(p.attribute[0].t)

    def quant_const(self, name: str) -> Optional[QuantConst]:
        """The integer constant behind the DequantizeLinear that produces `name` (a weight or bias), else None."""
        p = self.producer.get(name)
        if p is None or p.op_type not in DQ_OPS or p.input[0] not in self.inits:
            return None
        axis = next((a.i for a in p.attribute if a.name == "axis"), 1)
        scale = np.atleast_1d(self.inits[p.input[1]]).astype(np.float32)
        zp = np.atleast_1d(self.inits[p.input[2]]) if len(p.input) > 2 and p.input[2] else np.zeros(1, np.int64)
        return QuantConst(self.inits[p.input[0]], scale, zp.astype(np.int64), axis if scale.size > 1 else None)

    # ---- activation quantization points -----------------------------------------------------------------------------
    def act_point(self, q_node: onnx.NodeProto) -> ActPoint:
        """The quantization of a QuantizeLinear node's output, in TFLite's domain."""
        scale = float(np.asarray(self.inits[q_node.input[1]]).reshape(()))
        zp = np.asarray(self.inits[q_node.input[2]])
        bits = 8 * zp.dtype.itemsize
        zp_val = int(zp.reshape(()))
        if zp.dtype == np.uint8:
            zp_val -= 128
        elif zp.dtype == np.uint16:
            zp_val -= 32768
        return ActPoint(scale, zp_val, bits)

    def sole_quantizer(self, name: str) -> Optional[onnx.NodeProto]:
        """The QuantizeLinear that is the only reader of `name`, if so."""
        readers = self.consumers.get(name, [])
        if len(readers) == 1 and readers[0].op_type in Q_OPS and name not in self.outputs:
            return readers[0]
        return None

    def shape(self, name: str) -> Optional[Tuple[int, ...]]:
        return self.shapes.get(name)
