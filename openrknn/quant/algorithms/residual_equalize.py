"""Residual-stream channel equalization: even out the channel ranges of a residual stream by an exact rewrite.

A residual stream is a set of tensors joined by Add nodes (MobileNetV2's inverted residual stages: T14, A15 =
T14 + P15, A16 = A15 + P16) whose producers are all convs with no activation in between and whose readers are
those Adds or plain (group 1) convs. One per-tensor activation scale spans the stream's widest channel; a few
channels 5-10x the median waste most levels of all the others. Dividing stream channel c by s_c is exact: every
producer's output row c (weight row and bias) is divided by s_c, every reading conv's input column c multiplied by
s_c, and the Adds, being linear, carry the factor through. s_c = r_act_c^alpha / r_weight_c^(1 - alpha) (alpha 0.5
is the balance of cross-layer equalization) trades the activation's per-tensor range against the reading convs'
weight ranges. Streams with any other producer/reader, or a graph output among their tensors, are left alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import onnx
from onnx import numpy_helper

from ..ir import GraphInfo
from ..stages import Needs, QuantState, Rewrite, StageResult

ALPHA = 0.5        # weight of the activation range in s_c (1.0 = flatten the activation only)
MAX_FACTOR = 100.0  # s_c kept within [1/MAX_FACTOR, MAX_FACTOR] x its geometric mean


@dataclass
class Stream:
    tensors: List[str]   # the stream's tensors (producer outputs and Add outputs)
    producers: List[int]  # convs whose output is a stream tensor
    readers: List[int]    # group-1 convs reading a stream tensor as their input
    channels: int


def _components(info: GraphInfo) -> List[Tuple[List[str], List[int]]]:
    """(tensors, Add nodes) of every set of tensors joined by Adds of two same-shape activations."""
    parent: Dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    adds = []
    for i, node in enumerate(info.nodes):
        if node.op_type != "Add" or len(node.input) != 2 or any(info.is_const(t) for t in node.input):
            continue
        shapes = {info.shape.get(t) for t in list(node.input) + [node.output[0]]}
        shape = next(iter(shapes))
        if len(shapes) != 1 or shape is None or len(shape) != 4 or not shape[1]:
            continue  # broadcasting or unknown shape: a channel factor might not carry through
        adds.append(i)
        for t in list(node.input) + [node.output[0]]:
            parent[find(t)] = find(node.output[0])
    comps: Dict[str, Tuple[List[str], List[int]]] = {}
    for i in adds:
        root = find(info.nodes[i].output[0])
        tensors, nodes = comps.setdefault(root, ([], []))
        nodes.append(i)
        for t in list(info.nodes[i].input) + [info.nodes[i].output[0]]:
            if t not in tensors:
                tensors.append(t)
    return list(comps.values())


def find_streams(info: GraphInfo) -> List[Stream]:
    """The residual streams that can be rescaled exactly (see module doc)."""
    out = []
    for tensors, adds in _components(info):
        stream = _check(info, tensors, set(adds))
        if stream is not None:
            out.append(stream)
    return out


def _check(info: GraphInfo, tensors: List[str], adds: set) -> Optional[Stream]:
    channels = info.shape[tensors[0]][1]
    producers, readers = [], []
    for t in tensors:
        p = info.producer.get(t)
        if t in info.output_set or p is None or not info.is_float(t):
            return None
        if p not in adds:
            node = info.nodes[p]
            if node.op_type != "Conv" or node.output[0] != t or not info.owns_consts(p):
                return None
            if info.const(node.input[1]).shape[0] != channels:
                return None
            producers.append(p)
        for c in info.consumers.get(t, []):
            if c in adds:
                continue
            node = info.nodes[c]
            if node.op_type != "Conv" or int(info.attr(c, "group", 1)) != 1 or list(node.input).count(t) != 1 \
                    or node.input[0] != t or not info.owns_consts(c):
                return None
            if info.const(node.input[1]).shape[1] != channels:
                return None
            if c not in readers:
                readers.append(c)
    if not readers:
        return None
    return Stream(tensors, producers, readers, channels)


def _act_range(stream: Stream, ranges: Dict[str, Tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Per-channel absolute maximum over all the stream's tensors."""
    r = np.zeros(stream.channels)
    for t in stream.tensors:
        lo, hi = ranges[t]
        r = np.maximum(r, np.maximum(np.abs(lo), np.abs(hi)))
    return r


def _weight_range(info: GraphInfo, stream: Stream) -> np.ndarray:
    """Per input channel, the largest share of a reader's output-row range that the channel's weights use: scaling
    a column up only costs levels where it becomes its row's widest (measured on MobileNetV2: output cosine
    0.9923 w8a8 / 0.9890 u8 against 0.9918 / 0.9878 with each reader's column maxima)."""
    r = np.zeros(stream.channels)
    for c in stream.readers:
        w = info.const(info.nodes[c].input[1])
        w = np.abs(w).reshape(w.shape[0], w.shape[1], -1).max(axis=2)
        r = np.maximum(r, (w / np.maximum(w.max(axis=1, keepdims=True), 1e-30)).max(axis=0))
    return r


def stream_scales(act: np.ndarray, weight: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """s_c = act_c^alpha / weight_c^(1-alpha), geometric mean 1, clipped to MAX_FACTOR; 1 where a range is 0."""
    ok = (act > 0) & (weight > 0)
    if not ok.any():
        return np.ones_like(act)
    log_s = np.zeros_like(act)
    log_s[ok] = alpha * np.log(act[ok]) - (1 - alpha) * np.log(weight[ok])
    log_s[ok] -= log_s[ok].mean()
    return np.exp(np.clip(log_s, -np.log(MAX_FACTOR), np.log(MAX_FACTOR)))


def _spread(r: np.ndarray) -> float:
    """Widest channel over the median channel: what one per-tensor scale wastes."""
    return float(r.max() / max(float(np.median(r)), 1e-12))


def residual_equalize(model: onnx.ModelProto, info: GraphInfo, streams: List[Stream],
                      ranges: Dict[str, Tuple[np.ndarray, np.ndarray]],
                      alpha: float = ALPHA) -> Tuple[onnx.ModelProto, Dict]:
    """Rescale every stream (``ranges``: per-channel (min, max) of each stream tensor, from calibration). Returns
    the rewritten copy and a report with "channel_scales": {tensor: s} (float tensor = new tensor * s)."""
    weights: Dict[str, np.ndarray] = {}
    scaled: Dict[str, np.ndarray] = {}
    done = []
    for st in streams:
        act = _act_range(st, ranges)
        s = stream_scales(act, _weight_range(info, st), alpha)
        for p in st.producers:
            node = info.nodes[p]
            w = weights.setdefault(node.input[1], info.const(node.input[1]).astype(np.float64))
            w /= s.reshape(-1, *([1] * (w.ndim - 1)))
            if len(node.input) > 2 and node.input[2]:
                weights.setdefault(node.input[2], info.const(node.input[2]).astype(np.float64))
                weights[node.input[2]] /= s
        for c in st.readers:
            node = info.nodes[c]
            w = weights.setdefault(node.input[1], info.const(node.input[1]).astype(np.float64))
            w *= s.reshape(1, -1, *([1] * (w.ndim - 2)))
        for t in st.tensors:
            scaled[t] = s.astype(np.float32)
        done.append({"tensors": st.tensors, "channels": st.channels, "spread_before": round(_spread(act), 2),
                     "spread_after": round(_spread(act / s), 2)})
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        if t.name in weights:
            t.CopyFrom(numpy_helper.from_array(weights[t.name].astype(np.float32), t.name))
    return out, {"streams": done, "channel_scales": scaled}


class ResidualEqualization(Rewrite):
    """After pass 1: rescale the residual streams' channels from their per-channel ranges; the pass-1 statistics of
    their tensors are divided by the same factors, so no extra pass is needed (pass 2 runs on the new graph)."""

    name = "residual_equalization"

    def enabled(self, state: QuantState) -> bool:
        return bool(state.options.residual_equalization)

    def needs(self, state: QuantState) -> Needs:
        self.streams = find_streams(state.info)
        return Needs(channel_ranges=[t for st in self.streams for t in st.tensors])

    def apply(self, state: QuantState) -> Optional[StageResult]:
        if not self.streams:
            return None
        stats = state.stats
        model, report = residual_equalize(state.model, state.info, self.streams, stats.channel_minmax)
        for name, s in report["channel_scales"].items():
            lo, hi = stats.channel_minmax[name]
            stats.channel_minmax[name] = (lo / s, hi / s)
            if name in stats.minmax:
                stats.minmax[name] = (float(np.min(lo / s)), float(np.max(hi / s)))
            if name in stats.channel_mean:
                stats.channel_mean[name] = (stats.channel_mean[name] / s).astype(np.float32)
        scales = report.pop("channel_scales")
        state.replace_model(model)
        return StageResult(self.name, report, channel_scales=scales)
