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

from typing import List, Optional, Set, Tuple

import onnx

from .constants import KnownShapes, constant_value, constants
from .names import rename_uses, subgraphs, unique_name


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
        consts = constants(graph)
        shapes = KnownShapes(model)
        shapes.prefetch([n.input[0] for n in graph.node if n.op_type in ("Shape", "Size") and n.input])
        hit = None
        for k, node in enumerate(graph.node):
            if node.op_type != "If" or node.domain not in ("", "ai.onnx"):
                continue
            cond = constant_value(graph, node.input[0], consts, opset, shapes)
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
