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


def graph_and_bodies(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph``, then every graph nested in its nodes (If branches, Loop and Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for sub in subgraphs(node):
            yield from graph_and_bodies(sub)


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


def outer_reads(node: onnx.NodeProto) -> Set[str]:
    """The tensors of the graphs around ``node`` that its nested bodies read by name (not defined inside them)."""
    out: Set[str] = set()
    for sub in subgraphs(node):
        defined = {i.name for i in sub.input} | {t.name for t in sub.initializer}
        defined |= {o for n in sub.node for o in n.output}
        read = {o.name for o in sub.output}
        for n in sub.node:
            read.update(x for x in n.input if x)
            read |= outer_reads(n)
        out |= read - defined
    return out


def sort_nodes(graph: onnx.GraphProto) -> int:
    """Put ``graph``'s nodes in topological order, in place: each after the producers of what it reads (its nested
    bodies' outer reads included). Among nodes ready together the one listed first goes first, so a sorted graph is
    left as it is. Returns how many nodes were listed before a producer of their inputs (0: nothing changed). Raises
    ValueError naming a node that waits on itself (a cycle)."""
    import heapq

    nodes = list(graph.node)
    producer = {o: k for k, n in enumerate(nodes) for o in n.output if o}
    deps = [{producer[x] for x in ({x for x in n.input if x} | outer_reads(n)) if x in producer} - {k}
            for k, n in enumerate(nodes)]
    early = sum(1 for k, d in enumerate(deps) if any(j > k for j in d))
    if not early:
        return 0
    readers: Dict[int, List[int]] = {}
    for k, d in enumerate(deps):
        for j in d:
            readers.setdefault(j, []).append(k)
    waiting = [len(d) for d in deps]
    ready = [k for k, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order: List[int] = []
    while ready:
        k = heapq.heappop(ready)
        order.append(k)
        for r in readers.get(k, ()):
            waiting[r] -= 1
            if waiting[r] == 0:
                heapq.heappush(ready, r)
    if len(order) < len(nodes):  # walk back from a node never ready until a node repeats: that one is on a cycle
        k, seen = next(k for k, w in enumerate(waiting) if w), set()
        while k not in seen:
            seen.add(k)
            k = next(j for j in deps[k] if waiting[j])
        raise ValueError(f"node '{nodes[k].name or nodes[k].op_type}' ({nodes[k].op_type}) is on a cycle: it reads, "
                         "through other nodes, its own output")
    del graph.node[:]
    graph.node.extend(nodes[k] for k in order)
    return early
