"""Values computed from constants at load time: an If's condition, a reduction's axes.

Exporters sometimes write a constant as a small computation (a Reshape of Constants, a Shape of a tensor whose
size the fixed inputs decide, a comparison of them); the steps that need the value (an If inlined, an opset-18
reduction stepped down) evaluate that computation once, with onnx's reference evaluator.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Set

import numpy as np
import onnx
from onnx import numpy_helper


# ops a condition is computed with that are cheap and safe to evaluate at load time
EVALUABLE = {"Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Not", "And", "Or", "Xor", "Cast",
             "Identity", "Squeeze", "Unsqueeze", "Reshape", "ReduceMin", "ReduceMax", "Add", "Sub", "Mul", "Div",
             "Mod", "Abs", "Neg", "Gather", "Slice", "Concat"}


def constants(graph: onnx.GraphProto) -> Dict[str, np.ndarray]:
    """The initializers and Constant nodes' outputs of ``graph``, by name (every form a Constant takes its value in:
    a tensor, or a float / int / list of them)."""
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    kinds = {"value": None, "value_float": np.float32, "value_floats": np.float32, "value_int": np.int64,
             "value_ints": np.int64}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            attr = next((a for a in node.attribute if a.name in kinds), None)
            if attr is not None:
                value = onnx.helper.get_attribute_value(attr)
                values[node.output[0]] = numpy_helper.to_array(value) if attr.name == "value" else \
                    np.array(value, kinds[attr.name])
    return values


# ops whose output shape can depend on input values: a Shape read after one of them is not fixed by the input sizes
VALUE_SHAPED = {"NonZero", "Unique", "NonMaxSuppression", "Compress", "Loop", "Scan", "TopK", "Range", "If"}


class KnownShapes:
    """Fully known shapes of main-graph tensors at the fixed input sizes: onnx's inference first, else one run of
    the graph (shapes that depend on input values only through the input sizes, as graph/shapes.run_shapes holds)."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.producer = {o: n for n in model.graph.node for o in n.output}
        self.known: Dict[str, List[int]] = {}
        try:
            inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)  # pads computed from constants
        except Exception:
            return
        for vi in list(inferred.graph.value_info) + list(inferred.graph.input):
            dims = vi.type.tensor_type.shape.dim
            if vi.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
                self.known[vi.name] = [d.dim_value for d in dims]

    def _value_shaped(self, name: str) -> bool:
        stack, seen = [name], set()
        while stack:
            node = self.producer.get(stack.pop())
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            if node.op_type in VALUE_SHAPED:
                return True
            stack.extend(x for x in node.input if x)
        return False

    def prefetch(self, names: List[str]) -> None:
        """Run the graph once for every tensor of ``names`` whose shape onnx could not infer (one session for all)."""
        from .shapes import run_shapes

        wanted = sorted({n for n in names if n not in self.known and not self._value_shaped(n)})
        if not wanted:
            return
        try:
            self.known.update({n: list(s) for n, s in zip(wanted, run_shapes(self.model, wanted))})
        except Exception:
            pass  # the graph does not run at these sizes: those shapes stay unknown, their Ifs stay

    def get(self, name: str) -> Optional[List[int]]:
        return self.known.get(name)


def shape_value(node: onnx.NodeProto, shapes: KnownShapes) -> Optional[np.ndarray]:
    """A Shape (its start/end attributes applied) or Size node's output when its input's shape is fully known."""
    shape = shapes.get(node.input[0])
    if shape is None:
        return None
    if node.op_type == "Size":
        return np.array(int(np.prod(shape, dtype=np.int64)), np.int64)
    start = next((a.i for a in node.attribute if a.name == "start"), 0)
    end = next((a.i for a in node.attribute if a.name == "end"), None)
    return np.array(shape[start:end], np.int64)


def constant_value(graph: onnx.GraphProto, name: str, consts: Dict[str, np.ndarray], opset: int,
                    shapes: Optional[KnownShapes]) -> Optional[np.ndarray]:
    """The value of tensor ``name`` when it is computed from constants and known shapes (``shapes``; None: no Shape
    read) by small arithmetic, else None."""
    if name in consts:
        return consts[name]
    producer = {o: n for n in graph.node for o in n.output}
    needed: List[onnx.NodeProto] = []
    leaves: Set[str] = set()
    stack, seen = [name], set()
    while stack:
        t = stack.pop()
        if t in seen or not t:
            continue
        seen.add(t)
        if t in consts:
            leaves.add(t)
            continue
        node = producer.get(t)
        if node is not None and node.op_type in ("Shape", "Size") and node.domain in ("", "ai.onnx"):
            value = shape_value(node, shapes) if shapes is not None else None
            if value is None:
                return None
            consts = dict(consts, **{t: value})
            leaves.add(t)
            continue
        if node is None or node.op_type not in EVALUABLE or node.domain not in ("", "ai.onnx"):
            return None  # a graph input, an outer-scope name or an op not worth evaluating here
        needed.append(node)
        stack.extend(node.input)
    order = [n for n in graph.node if any(n is m for m in needed)]
    from onnx.reference import ReferenceEvaluator

    mini = onnx.helper.make_graph(order, "cond", [], [onnx.helper.make_empty_tensor_value_info(name)],
                                  initializer=[numpy_helper.from_array(np.asarray(consts[x]), x) for x in leaves])
    try:
        out = ReferenceEvaluator(onnx.helper.make_model(mini, opset_imports=[onnx.helper.make_opsetid("", opset)]))
        return np.asarray(out.run(None, {})[0])
    except Exception:
        return None  # not evaluable after all; the If stays
