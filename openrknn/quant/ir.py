"""A read-only view of an ONNX graph for the quantizer: producers, consumers, constants, types and shapes."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Dict, List, Optional, Tuple

import numpy as np
import onnx
from onnx import numpy_helper

from ..graph.shapes import infer_shapes

FLOAT = onnx.TensorProto.FLOAT


def normalize(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy with Constant nodes turned into initializers, initializers dropped from the graph inputs (old
    exporters list them there) and shapes inferred. The model's function is unchanged."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    keep = []
    for node in g.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.attribute) == 1 \
                and node.attribute[0].name == "value":
            t = onnx.TensorProto()
            t.CopyFrom(node.attribute[0].t)
            t.name = node.output[0]
            g.initializer.append(t)
        else:
            keep.append(node)
    if len(keep) != len(g.node):
        del g.node[:]
        g.node.extend(keep)
    counts = Counter(n.name for n in g.node if n.name)
    used = set(counts)
    for i, node in enumerate(g.node):  # every node uniquely named: later stages find nodes again by name
        if not node.name or counts[node.name] > 1:
            name, k = f"{node.op_type}_{i}", 0
            while name in used:
                k += 1
                name = f"{node.op_type}_{i}_{k}"
            node.name = name
            used.add(name)
    init_names = {t.name for t in g.initializer}
    real_inputs = [i for i in g.input if i.name not in init_names]
    if len(real_inputs) != len(g.input):
        del g.input[:]
        g.input.extend(real_inputs)
    del g.value_info[:]
    return infer_shapes(m)


class GraphInfo:
    """Indexes of one (normalized) graph. Nodes are referred to by their position in ``graph.node``."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        g = model.graph
        self.nodes = list(g.node)
        self.inits: Dict[str, onnx.TensorProto] = {t.name: t for t in g.initializer}
        self.producer: Dict[str, int] = {}
        self.consumers: Dict[str, List[int]] = defaultdict(list)
        for i, node in enumerate(self.nodes):
            for name in node.output:
                if name:
                    self.producer[name] = i
            for name in node.input:
                if name:
                    self.consumers[name].append(i)
        self.inputs = [i.name for i in g.input]
        self.outputs = [o.name for o in g.output]
        self.output_set = set(self.outputs)
        self.elem_type: Dict[str, int] = {}
        self.shape: Dict[str, Optional[Tuple]] = {}
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            tt = vi.type.tensor_type
            self.elem_type[vi.name] = tt.elem_type
            if tt.HasField("shape"):
                self.shape[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
        for name, t in self.inits.items():
            self.elem_type[name] = t.data_type
            self.shape[name] = tuple(t.dims)
        self._const_cache: Dict[str, np.ndarray] = {}

    def is_const(self, name: str) -> bool:
        return name in self.inits

    def const(self, name: str) -> Optional[np.ndarray]:
        if name not in self.inits:
            return None
        if name not in self._const_cache:
            self._const_cache[name] = numpy_helper.to_array(self.inits[name])
        return self._const_cache[name]

    def is_float(self, name: str) -> bool:
        return self.elem_type.get(name) == FLOAT

    def rank(self, name: str) -> Optional[int]:
        s = self.shape.get(name)
        return None if s is None else len(s)

    def attr(self, node_index: int, name: str, default=None):
        for a in self.nodes[node_index].attribute:
            if a.name == name:
                return onnx.helper.get_attribute_value(a)
        return default

    def owns_consts(self, node_index: int) -> bool:
        """The node's weight (and bias, if any) are constants read by this node only: rewriting them (an exact
        rescaling) changes nothing else."""
        node = self.nodes[node_index]
        names = [node.input[1]] + ([node.input[2]] if len(node.input) > 2 and node.input[2] else [])
        return all(self.is_const(n) and len(self.consumers.get(n, ())) == 1 for n in names)

    def activations(self, node_index: int) -> List[str]:
        """The non-constant, non-empty inputs of a node."""
        return [n for n in self.nodes[node_index].input if n and n not in self.inits]

    def node_label(self, node_index: int) -> str:
        node = self.nodes[node_index]
        return node.name or f"{node.op_type}_{node_index}"
