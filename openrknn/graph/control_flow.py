"""If nodes whose condition is a constant, replaced by the branch they always take.

A model exported with a branch on a setting (silero-vad branches on its sample-rate input) holds both networks inside
an If. Once that setting is fixed (load_onnx's input_initial_val), the condition is a constant: the taken branch's
nodes move into the graph and the If goes. The network is then an ordinary graph that the optimizer, the quantizer
and the NPU see whole, rather than one opaque node.

An If on data (openWakeWord's hey_jarvis runs a second "verifier" network only when the first one's score reaches
0.5) has no form in a static graph such as a TFLite file for an NPU delegate. predicate_ifs computes both branches
and picks each output with a Where on the condition: the same values, at the cost of the branch not taken.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Set, Tuple

import numpy as np
import onnx
from onnx import numpy_helper

from .names import rename_uses, subgraphs, unique_name

# ops a condition is computed with that are cheap and safe to evaluate at load time
_EVALUABLE = {"Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Not", "And", "Or", "Xor", "Cast",
              "Identity", "Squeeze", "Unsqueeze", "Reshape", "ReduceMin", "ReduceMax", "Add", "Sub", "Mul", "Div",
              "Mod", "Abs", "Neg", "Gather", "Slice", "Concat"}


def _constants(graph: onnx.GraphProto) -> Dict[str, np.ndarray]:
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            attr = next((a for a in node.attribute if a.name == "value"), None)
            if attr is not None:
                values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


# ops whose output shape can depend on input values: a Shape read after one of them is not fixed by the input sizes
_VALUE_SHAPED = {"NonZero", "Unique", "NonMaxSuppression", "Compress", "Loop", "Scan", "TopK", "Range", "If"}


class _Shapes:
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
            if node.op_type in _VALUE_SHAPED:
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


def _shape_value(node: onnx.NodeProto, shapes: _Shapes) -> Optional[np.ndarray]:
    """A Shape (its start/end attributes applied) or Size node's output when its input's shape is fully known."""
    shape = shapes.get(node.input[0])
    if shape is None:
        return None
    if node.op_type == "Size":
        return np.array(int(np.prod(shape, dtype=np.int64)), np.int64)
    start = next((a.i for a in node.attribute if a.name == "start"), 0)
    end = next((a.i for a in node.attribute if a.name == "end"), None)
    return np.array(shape[start:end], np.int64)


def _constant_value(graph: onnx.GraphProto, name: str, consts: Dict[str, np.ndarray], opset: int,
                    shapes: _Shapes) -> Optional[np.ndarray]:
    """The value of tensor ``name`` when it is computed from constants and known shapes by small arithmetic, else
    None."""
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
            value = _shape_value(node, shapes)
            if value is None:
                return None
            consts = dict(consts, **{t: value})
            leaves.add(t)
            continue
        if node is None or node.op_type not in _EVALUABLE or node.domain not in ("", "ai.onnx"):
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


def _names(graph: onnx.GraphProto, skip: Optional[int] = None) -> Set[str]:
    """Every tensor name of ``graph`` and its bodies, leaving out the bodies of node ``skip``."""
    names = {o.name for o in graph.output} | {i.name for i in graph.input} | {t.name for t in graph.initializer}
    for k, node in enumerate(graph.node):
        names.update(x for x in list(node.input) + list(node.output) if x)
        if k != skip:
            for sub in subgraphs(node):
                names |= _names(sub)
    return names


def _renamed(branch: onnx.GraphProto, taken: Set[str]):
    """A copy of ``branch`` whose own names are renamed where they collide with ``taken`` (which gains them all):
    (its nodes, its initializers, its output names)."""
    body = onnx.GraphProto()
    body.CopyFrom(branch)
    defined = [t.name for t in body.initializer] + [o for n in body.node for o in n.output if o]
    for old in defined:
        if old in taken:
            new = unique_name(old, taken)
            rename_uses(body, old, new)
            for n in body.node:
                n.output[:] = [new if o == old else o for o in n.output]
            for t in body.initializer:
                if t.name == old:
                    t.name = new
            for o in body.output:
                if o.name == old:
                    o.name = new
        else:
            taken.add(old)
    return list(body.node), list(body.initializer), [o.name for o in body.output]


def _inline(graph: onnx.GraphProto, index: int, branch: onnx.GraphProto, taken: Set[str]) -> None:
    """Replace node ``index`` (an If) by ``branch``'s nodes; the branch's own names are renamed where they collide
    with names of the graph, and the If's outputs become Identity copies of the branch's outputs."""
    if_node = graph.node[index]
    nodes, inits, outs = _renamed(branch, taken)
    nodes += [onnx.helper.make_node("Identity", [src], [dst], name=unique_name(f"{if_node.name}_out{k}", taken))
              for k, (src, dst) in enumerate(zip(outs, if_node.output))]
    graph.initializer.extend(inits)
    rest = list(graph.node)
    del graph.node[:]
    graph.node.extend(rest[:index] + nodes + rest[index + 1:])


def inline_constant_ifs(model: onnx.ModelProto) -> List[str]:
    """Inline every If of the main graph whose condition is a constant (nested ones too, as they come up); returns
    the inlined nodes' names with the branch each took."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    graph = model.graph
    done: List[str] = []
    while True:
        if not any(n.op_type == "If" for n in graph.node):
            return done
        consts = _constants(graph)
        shapes = _Shapes(model)
        shapes.prefetch([n.input[0] for n in graph.node if n.op_type in ("Shape", "Size") and n.input])
        hit = None
        for k, node in enumerate(graph.node):
            if node.op_type != "If" or node.domain not in ("", "ai.onnx"):
                continue
            cond = _constant_value(graph, node.input[0], consts, opset, shapes)
            if cond is not None and cond.size == 1:
                hit = (k, node, bool(cond.reshape(-1)[0]))
                break
        if hit is None:
            return done
        k, node, take = hit
        branch = next(a.g for a in node.attribute if a.name == ("then_branch" if take else "else_branch"))
        _inline(graph, k, branch, _names(graph, skip=k))
        done.append(f"{node.name} ({'then' if take else 'else'} branch)")


def _plain(graph: onnx.GraphProto) -> bool:
    """A branch of tensor ops only (no nested control flow, no sequences): running it when not taken is harmless."""
    return all(not list(subgraphs(n)) and "Sequence" not in n.op_type and not n.op_type.startswith("Optional")
               for n in graph.node) and all(o.type.HasField("tensor_type") for o in graph.output)


def predicate_ifs(model: onnx.ModelProto, selected: Optional[List[Tuple[str, str]]] = None) -> List[str]:
    """Replace every If of the main graph whose branches are plain tensor computations by both branches, inlined,
    and one Where(condition, then output, else output) per output; returns the predicated nodes' names.
    ``selected``: gets each Where's (then output, else output) names, for the caller to check their shapes agree."""
    graph = model.graph
    done: List[str] = []
    while True:
        k = next((k for k, n in enumerate(graph.node) if n.op_type == "If" and n.domain in ("", "ai.onnx")
                  and all(_plain(b) for b in subgraphs(n))), None)
        if k is None:
            return done
        node = graph.node[k]
        taken = _names(graph)
        nodes: List[onnx.NodeProto] = []
        outs = {}
        for a in node.attribute:
            body_nodes, inits, outs[a.name] = _renamed(a.g, taken)
            nodes += body_nodes
            graph.initializer.extend(inits)
        cond = unique_name(f"{node.name or 'if'}_condition", taken)
        nodes.append(onnx.helper.make_node("Cast", [node.input[0]], [cond], to=onnx.TensorProto.BOOL,
                                           name=unique_name(f"{node.name}_condition", taken)))
        nodes += [onnx.helper.make_node("Where", [cond, t, e], [o], name=unique_name(f"{node.name}_select{j}", taken))
                  for j, (t, e, o) in enumerate(zip(outs["then_branch"], outs["else_branch"], node.output))]
        if selected is not None:
            selected.extend(zip(outs["then_branch"], outs["else_branch"]))
        rest = list(graph.node)
        del graph.node[:]
        graph.node.extend(rest[:k] + nodes + rest[k + 1:])
        done.append(node.name)
