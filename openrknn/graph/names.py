"""Tensor-name bookkeeping that sees into control-flow sub-graphs (Loop, If, Scan bodies).

A sub-graph may read any tensor of the graphs around it by name, so a pass that renames or drops a tensor of the main
graph must look inside every body too; otherwise a Loop body is left reading a name that no longer exists.
"""

from __future__ import annotations

from typing import Dict, Iterable, Iterator, List, Set

import onnx


def subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield a.g
        elif a.type == onnx.AttributeProto.GRAPHS:
            yield from a.graphs


def used_names(graph: onnx.GraphProto) -> Set[str]:
    """Every tensor name read by a node of this graph or of any nested body, plus the graph outputs."""
    used = {o.name for o in graph.output}
    for node in graph.node:
        used.update(x for x in node.input if x)
        for sub in subgraphs(node):
            used |= used_names(sub)
    return used


def drop_unread(graph: onnx.GraphProto) -> None:
    """Drop the nodes none of whose outputs is read (here, in a nested body, or as a graph output), until none is
    left, then the initializers nothing reads (one an old-IR file also lists as a graph input stays: dropping it would
    turn it into an input to feed): what a rewrite leaves behind."""
    while True:
        used = used_names(graph)
        keep = [n for n in graph.node if any(o in used for o in n.output if o)]
        if len(keep) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(keep)
    used = used_names(graph) | {i.name for i in graph.input}
    inits = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)


def rename_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Make every reader of `old` (in this graph and in nested bodies) read `new` instead."""
    for node in graph.node:
        for k, x in enumerate(node.input):
            if x == old:
                node.input[k] = new
        for sub in subgraphs(node):
            rename_uses(sub, old, new)


def unique_name(base: str, taken: Set[str]) -> str:
    """``base``, or ``base_1``, ``base_2``, ... whichever is not in ``taken``; added to ``taken``."""
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


def splice_nodes(graph: onnx.GraphProto, nodes: List[onnx.NodeProto], replace: Dict[int, Iterable[onnx.NodeProto]],
                 drop: Set[int]) -> None:
    """Set ``graph``'s nodes to ``nodes`` (indexed as ``replace`` and ``drop`` are) with node i replaced by
    ``replace[i]`` (in place, keeping topological order) and the ``drop`` ones left out."""
    out: List[onnx.NodeProto] = []
    for i, n in enumerate(nodes):
        if i in replace:
            out.extend(replace[i])
        elif i not in drop:
            out.append(n)
    del graph.node[:]
    graph.node.extend(out)
