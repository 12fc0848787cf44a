"""Cross-layer equalization (Nagel et al., 2019): rescale conv pairs so per-tensor weight ranges stop wasting levels.

For conv1 -> act -> conv2 with a positively homogeneous ``act`` (none, ReLU, LeakyReLU, PRelu with one slope),
act(z / s) = act(z) / s for s > 0, so dividing output channel i of conv1 (weights and bias) by s_i and multiplying
input channel i of conv2 by s_i leaves the network function unchanged. s_i = sqrt(r1_i / r2_i) makes both ranges
sqrt(r1_i r2_i), which is what per-tensor ('layer') weight quantization needs, above all for depthwise convs.
ReLU6 / Clip and SiLU are not homogeneous, so pairs joined by them are left alone (exactness first).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np
import onnx
from onnx import numpy_helper

from ..ir import GraphInfo
from ..plan import Plan
from ..stages import QuantState, Rewrite, StageResult

HOMOGENEOUS = {"Relu", "LeakyRelu", "PRelu"}


def _pairs(info: GraphInfo, plan: Plan) -> List[Tuple[int, int]]:
    """(conv1 node, conv2 node) pairs joined by at most one homogeneous activation, single-consumer chain."""
    conv_nodes = {w.node for w in plan.weighted if info.nodes[w.node].op_type == "Conv"}
    use_count: Dict[str, int] = {}
    for n in info.nodes:
        for t in n.input:
            use_count[t] = use_count.get(t, 0) + 1
    pairs = []
    for i in conv_nodes:
        node = info.nodes[i]
        y = node.output[0]
        if use_count.get(node.input[1], 0) != 1 or (len(node.input) > 2 and use_count.get(node.input[2], 0) != 1):
            continue
        chain = y
        cons = info.consumers.get(chain, [])
        if y in info.output_set or len(cons) != 1:
            continue
        nxt = cons[0]
        if info.nodes[nxt].op_type in HOMOGENEOUS:
            if info.nodes[nxt].op_type == "PRelu" and np.size(info.const(info.nodes[nxt].input[1])) != 1:
                continue
            chain = info.nodes[nxt].output[0]
            cons = info.consumers.get(chain, [])
            if chain in info.output_set or len(cons) != 1:
                continue
            nxt = cons[0]
        if nxt in conv_nodes and info.nodes[nxt].input[0] == chain and use_count.get(info.nodes[nxt].input[1]) == 1:
            if _conv2_view(info, nxt) is not None and _groups_ok(info, i):
                pairs.append((i, nxt))
    return pairs


def _groups_ok(info: GraphInfo, conv1: int) -> bool:
    w = info.const(info.nodes[conv1].input[1])
    g = int(info.attr(conv1, "group", 1))
    return g == 1 or w.shape[1] == 1  # plain or depthwise: output channel i is one row of the weight


def _conv2_view(info: GraphInfo, conv2: int) -> Optional[str]:
    w = info.const(info.nodes[conv2].input[1])
    g = int(info.attr(conv2, "group", 1))
    if g == 1:
        return "plain"
    if w.shape[1] == 1 and g == w.shape[0]:
        return "depthwise"
    return None


def _in_range(w2: np.ndarray, view: str) -> np.ndarray:
    if view == "depthwise":
        return np.abs(w2).reshape(w2.shape[0], -1).max(axis=1)
    return np.abs(w2).max(axis=(0, 2, 3)) if w2.ndim == 4 else np.abs(w2).max(axis=0)


def equalize(model: onnx.ModelProto, info: GraphInfo, plan: Plan, iterations: int = 4) -> Tuple[onnx.ModelProto, Dict]:
    """Return an equalized copy of ``model`` (same function) and a report: pairs equalized and the median range
    precision (see _precision) before and after."""
    pairs = _pairs(info, plan)
    if not pairs:
        return model, {"pairs": 0}
    weights = {}
    for a, b in pairs:
        for n in (a, b):
            node = info.nodes[n]
            weights[node.input[1]] = info.const(node.input[1]).astype(np.float64).copy()
            if len(node.input) > 2 and node.input[2]:
                weights[node.input[2]] = info.const(node.input[2]).astype(np.float64).copy()
    before = _precision(weights, info, pairs)
    total = {a: np.ones(info.const(info.nodes[a].input[1]).shape[0]) for a, _ in pairs}
    for _ in range(iterations):
        for a, b in pairs:
            na, nb = info.nodes[a], info.nodes[b]
            w1, w2 = weights[na.input[1]], weights[nb.input[1]]
            view = _conv2_view(info, b)
            r1 = np.abs(w1).reshape(w1.shape[0], -1).max(axis=1)
            r2 = _in_range(w2, view)
            if r1.shape != r2.shape:
                continue
            s = np.where((r1 > 0) & (r2 > 0), np.sqrt(r1 / np.maximum(r2, 1e-30)), 1.0)
            s = np.clip(s, 1e-4, 1e4)
            total[a] *= s
            w1 /= s.reshape(-1, *([1] * (w1.ndim - 1)))
            if len(na.input) > 2 and na.input[2]:
                weights[na.input[2]] /= s
            if view == "depthwise":
                w2 *= s.reshape(-1, *([1] * (w2.ndim - 1)))
            else:
                w2 *= s.reshape(1, -1, *([1] * (w2.ndim - 2)))
    after = _precision(weights, info, pairs)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        if t.name in weights:
            t.CopyFrom(numpy_helper.from_array(weights[t.name].astype(np.float32), t.name))
    # tensors between an equalized pair now hold float / s per channel: record s so analysis can compare
    scaled = {}
    for a, b in pairs:
        t = info.nodes[a].output[0]
        while True:
            scaled[t] = total[a].astype(np.float32)
            if info.nodes[b].input[0] == t:
                break
            t = info.nodes[info.consumers[t][0]].output[0]
    return out, {"pairs": len(pairs), "range_precision_before": round(before, 4),
                 "range_precision_after": round(after, 4), "channel_scales": scaled}


def _precision(weights: Dict[str, np.ndarray], info: GraphInfo, pairs: List[Tuple[int, int]]) -> float:
    """The quantity equalization maximises (Nagel et al.): per channel, the product of the share of the per-tensor
    range each of the two layers uses, averaged over channels; median over pairs. 1.0 = no waste."""
    vals = []
    for a, b in pairs:
        w1, w2 = weights[info.nodes[a].input[1]], weights[info.nodes[b].input[1]]
        r1 = np.abs(w1).reshape(w1.shape[0], -1).max(axis=1)
        r2 = _in_range(w2, _conv2_view(info, b))
        if r1.shape == r2.shape and r1.max() > 0 and r2.max() > 0:
            vals.append(float(np.mean(r1 / r1.max() * r2 / r2.max())))
    return float(np.median(vals)) if vals else 0.0


class CrossLayerEqualization(Rewrite):
    """Before calibration: only the weights decide the factors. 'auto' runs it with per-layer weights only, where one
    scale per weight tensor wastes levels; per-channel weights gain nothing from it."""

    name, phase = "equalization", "graph"

    def enabled(self, state: QuantState) -> bool:
        eq = state.options.equalization
        return eq is True or (eq == "auto" and not state.per_channel)

    def apply(self, state: QuantState) -> StageResult:
        model, report = equalize(state.model, state.info, state.plan)
        scales = report.pop("channel_scales", {})
        state.replace_model(model)
        return StageResult(self.name, report, channel_scales=scales)
