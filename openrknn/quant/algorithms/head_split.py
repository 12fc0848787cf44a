"""Head split: a conv whose output channels are read in groups of very different ranges gets one conv per group.

A detector or line finder often computes several maps in one conv and cuts them apart later, after a per-channel op:
M-LSD's head makes 16 channels, upsamples them with one bilinear Resize, then slices out its centre logits (-15..5)
and its displacement maps (-110..110). On the NPU one conv output has one int8 scale, so the centre map kept 5-6
distinct values and its peak test found plateaus everywhere. Cutting the conv by the groups the Slices (or a channel
Split) read is an exact rewrite: each group's conv has the group's weights and bias, the per-channel ops after it are
copied, and the group's last op writes the tensor the Slice wrote. Channels no group reads are dropped. Each group's
output is then an ordinary per-tensor quantized NPU tensor with its own range; the op count grows by the copies.

Made where the groups' ranges (from calibration pass 1's per-channel statistics) span more than the ratio range
split uses (QuantOptions.range_split_ratio).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ...graph.names import splice_nodes
from ..ir import GraphInfo
from ..stages import Needs, QuantState, Rewrite, StageResult
from .score_bias import split_sizes

# an op between the conv and the Slices that acts on each channel alone (the copy each group gets); one at most, so
# every tensor the rewrite makes has its range from the conv output's channels
PER_CHANNEL = ("Resize",)


@dataclass
class Head:
    """One candidate: the conv node, the per-channel op after it (if any), and per group (the node cutting it out,
    the output that node wrote, the conv channels it holds)."""

    conv: int
    chain: List[int]
    groups: List[Tuple[int, str, List[int]]]


def _slice_channels(info: GraphInfo, i: int, shape: Tuple) -> Optional[List[int]]:
    """The channels a Slice keeps when it cuts only axis 1 (step 1) and keeps every other axis whole, else None."""
    node = info.nodes[i]
    consts = [info.const(t) if t else None for t in node.input[1:]]
    if len(consts) < 2 or any(c is None for c in consts):
        return None
    starts, ends = (np.ravel(c).astype(np.int64) for c in consts[:2])
    rank = len(shape)
    axes = np.ravel(consts[2]).astype(np.int64) % rank if len(consts) > 2 else np.arange(len(starts))
    steps = np.ravel(consts[3]).astype(np.int64) if len(consts) > 3 else np.ones(len(starts), np.int64)
    channels = None
    for a, s, e, st in zip(axes, starts, ends, steps):
        if st != 1:
            return None
        dim = shape[a]
        s, e = (s + dim if s < 0 else s), (e + dim if e < 0 else min(e, dim))
        if a == 1:
            channels = list(range(int(s), int(e)))
        elif s != 0 or e < dim:
            return None
    return channels


def _split_channels(info: GraphInfo, i: int, channels: int) -> Optional[List[List[int]]]:
    sizes = split_sizes(info, i, channels)
    if sizes is None or sum(sizes) != channels:
        return None
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int)
    return [list(range(s, s + n)) for s, n in zip(starts, sizes)]


def find_heads(info: GraphInfo) -> Dict[str, Head]:
    """{conv output: Head} for each Conv with constant weights whose output reaches, through PER_CHANNEL ops only
    (one reader each), nothing but channel Slices or a channel Split that cut it into two or more groups."""
    out: Dict[str, Head] = {}
    for i, node in enumerate(info.nodes):
        if node.op_type != "Conv" or len(node.input) < 2 or not info.is_const(node.input[1]) or \
                int(info.attr(i, "group", 1)) != 1:  # a grouped conv's output channels read only their group
            continue
        if len(node.input) > 2 and node.input[2] and not info.is_const(node.input[2]):
            continue
        y, chain = node.output[0], []
        t = y
        readers = info.consumers.get(t, [])
        if len(readers) == 1 and info.nodes[readers[0]].op_type in PER_CHANNEL and t not in info.output_set:
            if not _copyable(info, readers[0]):
                continue
            chain.append(readers[0])
            t = info.nodes[readers[0]].output[0]
            readers = info.consumers.get(t, [])
        shape = info.shape.get(t)
        if t in info.output_set or not readers or shape is None or None in shape or len(shape) < 2:
            continue
        channels = int(np.shape(info.const(node.input[1]))[0])
        groups: List[Tuple[int, str, List[int]]] = []
        for r in readers:
            op = info.nodes[r].op_type
            if op == "Slice":
                kept = _slice_channels(info, r, shape)
                if kept is None or not kept:
                    groups = []
                    break
                groups.append((r, info.nodes[r].output[0], kept))
            elif op == "Split" and int(info.attr(r, "axis", 0)) % len(shape) == 1:
                parts = _split_channels(info, r, channels)
                if parts is None:
                    groups = []
                    break
                groups += [(r, o, p) for o, p in zip(info.nodes[r].output, parts) if o]
            else:
                groups = []
                break
        if len(groups) >= 2:
            out[y] = Head(i, chain, groups)
    return out


def _copyable(info: GraphInfo, i: int) -> bool:
    """A Resize whose scales or sizes are constants that keep the batch and channel axes (a group's copy gets sizes
    with its own channel count)."""
    node = info.nodes[i]
    if not all(not t or info.is_const(t) for t in node.input[1:]):
        return False
    scales = info.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if scales is not None and np.size(scales) and not np.all(np.ravel(scales)[:2] == 1):
        return False
    sizes = info.const(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    shape = info.shape.get(node.input[0])
    return sizes is None or (shape is not None and list(np.ravel(sizes)[:2]) == list(shape[:2]))


def _copy_inputs(info: GraphInfo, m: onnx.ModelProto, src: onnx.NodeProto, x: str, channels: int, k: int) -> list:
    """The inputs of a group's copy of ``src``: ``x``, then src's constants; a Resize's sizes with the group's
    channel count on axis 1."""
    inputs = [x] + list(src.input[1:])
    if src.op_type == "Resize" and len(src.input) > 3 and src.input[3]:
        sizes = np.asarray(info.const(src.input[3]), np.int64).copy()
        sizes[1] = channels
        name = f"{src.input[3]}__split{k}"
        m.graph.initializer.append(numpy_helper.from_array(sizes, name))
        inputs[3] = name
    return inputs


def _width(lo: np.ndarray, hi: np.ndarray, idx: List[int]) -> float:
    return float(max(np.max(hi[idx]), 0.0) - min(np.min(lo[idx]), 0.0))


def split_heads(model: onnx.ModelProto, info: GraphInfo, heads: Dict[str, Head],
                ranges: Dict[str, Tuple[np.ndarray, np.ndarray]], max_ratio: float
                ) -> Tuple[onnx.ModelProto, Dict, Dict[str, Tuple[str, List[int]]], Dict[str, str]]:
    """Cut each head whose groups' ranges span more than ``max_ratio``. Returns (model, report, {group conv
    output: (conv output, its channels)}, {new node: node it was made from})."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    replace: Dict[int, List[onnx.NodeProto]] = {}
    drop = set()
    parts: Dict[str, Tuple[str, List[int]]] = {}
    origins: Dict[str, str] = {}
    made = []
    for y, head in heads.items():
        lo, hi = ranges[y]
        widths = [_width(lo, hi, idx) for _, _, idx in head.groups]
        if max(widths) <= max_ratio * max(min(widths), 1e-12):
            continue
        conv = info.nodes[head.conv]
        w = info.const(conv.input[1])
        b = info.const(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
        nodes = []
        for k, (_, target, idx) in enumerate(head.groups):
            wn, bn, yk = f"{conv.input[1]}__split{k}", f"{conv.input[1]}__split{k}_bias", f"{y}__split{k}"
            m.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w[idx]), wn))
            inputs = [conv.input[0], wn]
            if b is not None:
                m.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(b[idx]), bn))
                inputs.append(bn)
            x = target if not head.chain else yk
            part = helper.make_node("Conv", inputs, [x], name=f"{conv.name or y}__split{k}")
            part.attribute.extend(conv.attribute)
            nodes.append(part)
            origins[part.name] = conv.name or y
            parts[x] = (y, idx)
            for j, c in enumerate(head.chain):
                src = info.nodes[c]
                out = target if j == len(head.chain) - 1 else f"{src.output[0]}__split{k}"
                copy = helper.make_node(src.op_type, _copy_inputs(info, m, src, x, len(idx), k), [out],
                                        name=f"{src.name or src.output[0]}__split{k}")
                copy.attribute.extend(src.attribute)
                nodes.append(copy)
                origins[copy.name] = src.name or src.output[0]
                x = out
        replace[head.conv] = nodes
        drop.update(head.chain)
        drop.update(r for r, _, _ in head.groups)
        made.append({"tensor": y, "groups": [len(idx) for _, _, idx in head.groups],
                     "range_ratio": round(max(widths) / max(min(widths), 1e-12), 1)})
    if not made:
        return model, {}, {}, {}
    splice_nodes(m.graph, list(m.graph.node), replace, drop)
    used = {t for n in m.graph.node for t in n.input}
    keep = [t for t in m.graph.initializer if t.name in used]
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep)
    return m, {"heads": made}, parts, origins


class HeadSplit(Rewrite):
    """After pass 1: cut the heads (find_heads) whose channel groups' ranges are too uneven."""

    name = "head_split"

    def enabled(self, state: QuantState) -> bool:
        return bool(state.options.range_split)

    def needs(self, state: QuantState) -> Needs:
        # a head whose conv output the plan keeps unrounded (on RKNPU2 a Split with a score part: one conv per part
        # on the chip, plan.py) is measured too: cut here where its groups are uneven, it is the same per-part convs
        return Needs(channel_ranges=[y for y in find_heads(state.info)
                                     if y in state.plan.sources or y in state.plan.internal])

    def apply(self, state: QuantState) -> Optional[StageResult]:
        stats = state.stats
        heads = {y: h for y, h in find_heads(state.info).items() if y in stats.channel_minmax}
        if not heads:
            return None
        ranges = {y: stats.channel_minmax[y] for y in heads}
        model, report, parts, origins = split_heads(state.model, state.info, heads, ranges,
                                                    state.options.range_split_ratio)
        if not report:
            return None
        for part, (y, idx) in parts.items():
            lo, hi = ranges[y]
            stats.minmax[part] = (float(np.min(lo[idx])), float(np.max(hi[idx])))
        for y, head in heads.items():  # the tensors the copies now write: their groups' ranges
            lo, hi = ranges[y]
            for _, target, idx in head.groups:
                stats.minmax.setdefault(target, (float(np.min(lo[idx])), float(np.max(hi[idx]))))
        state.replace_model(model)
        return StageResult(self.name, report, node_origins=origins,
                           channel_parts={p: (y, np.asarray(idx)) for p, (y, idx) in parts.items()})


__all__ = ["HeadSplit", "find_heads", "split_heads"]
