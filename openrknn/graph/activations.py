"""Activation functions written out as several elementwise nodes, recognised by what they compute.

Exporters spell the same activation many ways: HardSwish as x * Clip(x + 3, 0, 6) / 6 or x * HardSigmoid(x), GELU as
x * 0.5 * (1 + Erf(x / sqrt 2)) in either multiplication order, SiLU as x * Sigmoid(x). The NPU evaluates each as one
lookup-table activation, so it must be one step here too (one quantization point, not four). Rather than listing
spellings, a *region* is found structurally (the nodes between a tensor x and a tensor z that read only x, scalar
constants and each other, with nothing else reading inside) and identified numerically: the region is evaluated on
a grid of x values and compared with the known activations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import onnx

# Elementwise ops a spelled-out activation is made of (all broadcast scalars; none changes the shape).
UNARY = {"Relu", "Sigmoid", "Tanh", "Erf", "Exp", "Softplus", "HardSigmoid", "Neg", "Abs", "Sqrt", "Clip", "Log",
         "Reciprocal", "HardSwish", "LeakyRelu"}
BINARY = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min"}
MAX_NODES = 10  # the longest spelling seen: jax2tf's tanh-approximated GELU, 9 nodes (x * x * x as three Muls)

_GRID = np.concatenate([np.linspace(-12.0, 12.0, 481), [-0.3, -1e-3, 0.0, 1e-3, 0.3]])
_ERF = np.frompyfunc(math.erf, 1, 1)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _ERF(x / math.sqrt(2.0)).astype(np.float64))


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


# name -> the function; what the NPU (and ONNX, where an op exists) calls it
KNOWN: Dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "SiLU": lambda x: x * _sigmoid(x),
    "HardSwish": lambda x: x * np.clip(x / 6.0 + 0.5, 0.0, 1.0),
    "Gelu": _gelu,
    "GeluTanh": _gelu_tanh,
    "Mish": lambda x: x * np.tanh(np.logaddexp(0.0, x)),
    "Sigmoid": _sigmoid,
    "Tanh": np.tanh,
}
TOLERANCE = 2e-5  # of the function's scale on the grid: float32 rounding of the spelled constants (1/6, sqrt 2)


@dataclass
class Region:
    """Nodes (indices, graph order) computing z = act(x) from x alone; ``inner``: the tensors between them."""

    x: str
    z: str
    nodes: List[int]
    inner: Set[str]
    name: str                    # a KNOWN name, or 'HardSigmoid'
    params: Tuple[float, ...] = ()  # HardSigmoid: (alpha, beta)


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _scalar(consts: Dict[str, np.ndarray], name: str) -> Optional[float]:
    v = consts.get(name)
    return float(np.asarray(v).reshape(-1)[0]) if v is not None and np.size(v) == 1 else None


def _eval_node(node: onnx.NodeProto, vals: List[Optional[np.ndarray]]) -> Optional[np.ndarray]:
    op = node.op_type
    a = vals[0]
    with np.errstate(all="ignore"):
        if op == "Relu":
            return np.maximum(a, 0.0)
        if op == "Sigmoid":
            return _sigmoid(a)
        if op == "Tanh":
            return np.tanh(a)
        if op == "Erf":
            return _ERF(a).astype(np.float64)
        if op == "Exp":
            return np.exp(a)
        if op == "Log":
            return np.log(a)
        if op == "Softplus":
            return np.logaddexp(0.0, a)
        if op == "HardSigmoid":
            return np.clip(_attr(node, "alpha", 0.2) * a + _attr(node, "beta", 0.5), 0.0, 1.0)
        if op == "HardSwish":
            return a * np.clip(a / 6.0 + 0.5, 0.0, 1.0)
        if op == "LeakyRelu":
            return np.where(a >= 0, a, _attr(node, "alpha", 0.01) * a)
        if op == "Neg":
            return -a
        if op == "Abs":
            return np.abs(a)
        if op == "Sqrt":
            return np.sqrt(a)
        if op == "Reciprocal":
            return 1.0 / a
        if op == "Clip":
            lo = vals[1] if len(vals) > 1 and vals[1] is not None else _attr(node, "min", -np.inf)
            hi = vals[2] if len(vals) > 2 and vals[2] is not None else _attr(node, "max", np.inf)
            return np.clip(a, lo, hi)
        b = vals[1]
        return {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide, "Pow": np.power,
                "Max": np.maximum, "Min": np.minimum}[op](a, b)


def _identify(f: np.ndarray) -> Optional[Tuple[str, Tuple[float, ...]]]:
    if not np.all(np.isfinite(f)):
        return None
    for name, g in KNOWN.items():
        ref = g(_GRID).astype(np.float64)
        if np.max(np.abs(f - ref)) <= TOLERANCE * max(1.0, float(np.max(np.abs(ref)))):
            return name, ()
    # HardSigmoid with any slope: clip(alpha x + beta, 0, 1), alpha > 0; both clips must show on the grid (a ReLU
    # then a small scale, relu(x) / 127.5, is that line up to x = 12 but not beyond)
    mid = (f > 1e-3) & (f < 1 - 1e-3)
    if mid.sum() >= 4 and abs(f.min()) <= 1e-6 and abs(f.max() - 1) <= 1e-6:
        alpha, beta = np.polyfit(_GRID[mid], f[mid], 1)
        if alpha > 0 and np.max(np.abs(np.clip(alpha * _GRID + beta, 0, 1) - f)) <= TOLERANCE:
            return "HardSigmoid", (float(alpha), float(beta))
    return None


def find_regions(nodes: Sequence[onnx.NodeProto], consts: Dict[str, np.ndarray], keep: Set[str]) -> List[Region]:
    """Spelled-out activations: for each tensor x, the largest region from x (at least 2 nodes) whose value is a
    known activation of x. ``consts``: constant tensors by name; ``keep``: tensors that must stay visible (graph
    outputs, what sub-graphs read), which no region may hide inside. Regions do not overlap."""
    return scan_regions(nodes, lambda x, consumers, taken: None if x in consts else
                        _largest_region(x, nodes, consts, consumers, keep, taken))


def scan_regions(nodes: Sequence[onnx.NodeProto], grow: Callable) -> list:
    """Every node output x in graph order, ``grow(x, consumers, taken)``: the region from x (with .nodes) or None;
    ``taken``: the nodes earlier regions hold, which no later one may take."""
    consumers: Dict[str, List[int]] = {}
    for i, n in enumerate(nodes):
        for t in n.input:
            if t:
                consumers.setdefault(t, []).append(i)
    taken: Set[int] = set()
    found = []
    for node in nodes:
        for x in node.output:
            if x:
                r = grow(x, consumers, taken)
                if r is not None:
                    found.append(r)
                    taken.update(r.nodes)
    return found


def _operands(node: onnx.NodeProto, consts: Dict[str, np.ndarray]) -> Optional[List[Optional[str]]]:
    """The node's inputs as tensor names, None for a scalar constant; None when it is not an elementwise op of
    one variable."""
    if node.op_type not in UNARY | BINARY or node.domain not in ("", "ai.onnx") or len(node.output) != 1:
        return None
    out: List[Optional[str]] = []
    for t in node.input:
        if not t:
            out.append(None)
        elif t in consts:
            if np.size(consts[t]) != 1:
                return None
            out.append(None)
        else:
            out.append(t)
    return out


def _largest_region(x: str, nodes, consts, consumers, keep: Set[str], taken: Set[int]) -> Optional[Region]:
    values: Dict[str, np.ndarray] = {x: _GRID}
    region: List[int] = []
    best: Optional[Region] = None
    frontier = [x]
    while frontier and len(region) < MAX_NODES:
        # the next node (graph order) whose variable inputs are all computed
        ready = sorted({c for t in frontier for c in consumers.get(t, []) if c not in region and c not in taken})
        step = None
        for c in ready:
            ops = _operands(nodes[c], consts)
            if ops is not None and any(ops) and all(t is None or t in values for t in ops):
                step = c
                break
        if step is None:
            break
        node = nodes[step]
        ops = _operands(node, consts)
        vals = [values[t] if t is not None else (np.float64(_scalar(consts, name)) if name in consts else None)
                for t, name in zip(ops, node.input)]
        values[node.output[0]] = np.asarray(_eval_node(node, vals), np.float64)
        region.append(step)
        frontier.append(node.output[0])
        if len(region) < 2:
            continue
        z = node.output[0]
        inner = {nodes[i].output[0] for i in region} - {z}
        # a region is closed when nothing outside it reads x's descendants other than through z
        if any(t in keep for t in inner) or any(c not in region for t in inner for c in consumers.get(t, [])):
            continue
        ident = _identify(values[z])
        if ident is not None:
            best = Region(x, z, sorted(region), inner, ident[0], ident[1])
    return best


__all__ = ["Region", "find_regions", "scan_regions", "KNOWN"]
