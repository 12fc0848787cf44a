"""Normalisations written out as nodes (LayerNorm, RMSNorm), found by their structure.

Exporters spell LayerNorm as ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt, Div, or (jax2tf) as E[x^2] - E[x]^2 with
ReduceSum, Max, Sqrt and Reciprocal, the statistics broadcast back with Reshape / Expand. The NPU runs a
normalisation as one op that keeps its statistics at high precision. Rounding each step to 8 bits is what breaks
it: a variance taken as the difference of two rounded means has no correct digit left once the mean is large
against the spread (magika's file-type model: cosine 0.80 to its float model quantized step by step, 0.997 with the
normalisations one step each).

A *normalisation region* is the set of nodes from a tensor x to a tensor z that read only x, data-independent
tensors (constants, shape arithmetic) and each other, that nothing outside reads inside, and that hold a reduction
and a square root.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Set

import numpy as np
import onnx

from .activations import BINARY, UNARY, scan_regions

REDUCE = {"ReduceMean", "ReduceSum", "ReduceSumSquare"}
MOVES = {"Reshape", "Expand", "Unsqueeze", "Squeeze", "Identity"}  # the statistics broadcast back to x's shape
ALLOWED = UNARY | BINARY | REDUCE | MOVES
MAX_NODES = 24  # jax2tf's LayerNorm with its gamma and beta: 19


@dataclass
class NormRegion:
    """Nodes (indices, graph order) computing z from x alone; ``inner``: the tensors between them."""

    x: str
    z: str
    nodes: List[int]
    inner: Set[str]


def _root(node: onnx.NodeProto, const: Callable[[str], Optional[np.ndarray]]) -> bool:
    """A square root: Sqrt, or Pow by 0.5 / -0.5."""
    if node.op_type == "Sqrt":
        return True
    if node.op_type == "Pow" and len(node.input) > 1:
        e = const(node.input[1])
        return e is not None and e.size == 1 and abs(abs(float(e.reshape(-1)[0])) - 0.5) < 1e-6
    return False


def find_norm_regions(nodes: Sequence[onnx.NodeProto], dynamic: Set[str], keep: Set[str],
                      const: Callable[[str], Optional[np.ndarray]], claimed: Set[str] = frozenset()
                      ) -> List[NormRegion]:
    """Normalisation regions, each the largest closed one from its x. ``dynamic``: tensors that depend on the
    input data; ``keep``: tensors that must stay visible (graph outputs, what sub-graphs read); ``const``: a
    constant's value by name (None for other tensors); ``claimed``: tensors other fused steps compute (a
    spelled-out GELU after a LayerNorm, which the largest region would swallow): a region neither ends at nor
    hides one. Regions do not overlap."""
    def grow(x: str, consumers, taken) -> Optional[NormRegion]:
        if x not in dynamic or len(consumers.get(x, [])) < 2:  # x is read by the statistics and by the centring
            return None
        return _largest(x, nodes, dynamic, consumers, keep, taken, const, claimed)

    return scan_regions(nodes, grow)


def _largest(x: str, nodes, dynamic: Set[str], consumers, keep: Set[str], taken: Set[int],
             const, claimed: Set[str] = frozenset()) -> Optional[NormRegion]:
    region: List[int] = []
    made = {x}
    while len(region) < MAX_NODES:
        # the next node (graph order) of an allowed op whose data inputs are all x or made inside
        ready = sorted({c for t in made for c in consumers.get(t, []) if c not in region and c not in taken})
        step = next((c for c in ready if nodes[c].op_type in ALLOWED and nodes[c].domain in ("", "ai.onnx")
                     and len(nodes[c].output) == 1
                     and all(t in made for t in nodes[c].input if t and t in dynamic)), None)
        if step is None:
            break
        region.append(step)
        made.add(nodes[step].output[0])
    producer = {nodes[i].output[0]: i for i in region}
    best: Optional[NormRegion] = None
    for i in region:
        z = nodes[i].output[0]
        part, todo = set(), [i]  # the region's nodes on the paths from x to z
        while todo:
            k = todo.pop()
            if k not in part:
                part.add(k)
                todo += [producer[t] for t in nodes[k].input if t in producer]
        inner = {nodes[k].output[0] for k in part} - {z}
        closed = z not in claimed and not any(t in keep or t in claimed or any(c not in part for c in
                                                                              consumers.get(t, [])) for t in inner)
        ops = [nodes[k] for k in part]
        if closed and any(n.op_type in REDUCE for n in ops) and any(_root(n, const) for n in ops) \
                and (best is None or len(part) > len(best.nodes)):
            best = NormRegion(x, z, sorted(part), inner)
    return best


__all__ = ["NormRegion", "find_norm_regions"]
