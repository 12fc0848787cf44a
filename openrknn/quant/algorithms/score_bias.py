"""Score bias correction: a probability output should not come out of int8 systematically lower than in float.

Bias correction (bias_correction.py) removes each layer's own mean output shift, for the float input it should
see. What the layers before it do to that input is left: quantization noise flattens the strong responses a
detector's head depends on, so on YOLOX-nano w8a8 the objectness logit of a real object comes out 0.12-0.17 lower
than in float (sd 0.3-0.37), the class logit 0.06-0.10 lower, and the score (objectness x class) of an object near
the 0.3 threshold loses 0.024 on average: every detection int8 drops is one whose score fell to 0.25-0.29. The
mean over all positions, which bias correction fits, is dominated by background, where the error is near zero.

For a conv, transposed conv (a DB text detector's upsampling head) or Gemm whose output (or a channel Split's part
of it) goes through a Sigmoid to the model's outputs, this stage measures the error the complete quantized model
makes at the Sigmoid's input and shifts the layer's bias per channel by delta = sum s'(f) (f - q) / sum s'(f) (f:
float logit, q: quantized, s' the sigmoid's slope at f). Adding delta to the logits changes each probability by
s'(f) delta to first order, so the mean probability error of the channel becomes zero: weighted by s', positions
whose probability cannot move (background at logit -10) count for nothing, and those near the decision count most.
One bias per channel, no new op; the chip computes it as before.
"""

from __future__ import annotations

import itertools
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx

from ..ir import GraphInfo
from ..plan import Plan, tail_ok
from ..qdq import ActQuant, WeightQuant, build_qdq, with_outputs

SAMPLES = 8  # calibration samples measured: on YOLOX-nano, 4 leave a third of the bias, 8 and 15 agree


def split_sizes(info: GraphInfo, i: int, channels: int) -> Optional[List[int]]:
    """Channel counts of a Split along axis 1 (sizes from its input, its attribute, or equal parts)."""
    node = info.nodes[i]
    rank = info.rank(node.input[0])
    axis = int(info.attr(i, "axis", 0))
    if rank is None or axis % rank != 1:
        return None
    if len(node.input) > 1 and node.input[1]:
        sizes = info.const(node.input[1])
        return None if sizes is None else [int(x) for x in np.ravel(sizes)]
    sizes = info.attr(i, "split", None)
    if sizes:
        return [int(x) for x in sizes]
    n = len(node.output)
    return [channels // n] * n if channels % n == 0 else None


# ops that only move a head's logits between its conv and its Sigmoid (SCRFD: conv -> Transpose -> Reshape ->
# Sigmoid, one score per anchor and cell in a [1, N, 1] output)
MOVES = ("Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity")

Head = Tuple[str, int, Optional[np.ndarray]]  # (tensor a Sigmoid reads, first channel, channel of each element)


def _moved_channels(info: GraphInfo, y: str, channels: int) -> Optional[Tuple[str, np.ndarray]]:
    """Follow ``y`` (a conv output, channels on axis 1) through MOVES, one reader at a time, to the tensor they end
    in: (that tensor, the conv channel each of its elements came from), or None when no op moves it or a shape is
    unknown."""
    shape = info.shape.get(y)
    if shape is None or None in shape or len(shape) < 2:
        return None
    index = np.broadcast_to(np.arange(channels).reshape((1, -1) + (1,) * (len(shape) - 2)), shape)
    t, moved = y, False
    while True:
        readers = info.consumers.get(t, [])
        if t in info.output_set or len(readers) != 1 or info.nodes[readers[0]].op_type not in MOVES:
            return (t, np.ascontiguousarray(index)) if moved else None
        i = readers[0]
        out = info.nodes[i].output[0]
        if info.nodes[i].op_type == "Transpose":
            perm = info.attr(i, "perm", None)
            index = np.transpose(index, perm)
        else:
            shape = info.shape.get(out)
            if shape is None or None in shape or int(np.prod(shape)) != index.size:
                return None
            index = index.reshape(shape)
        t, moved = out, True


def sigmoid_heads(info: GraphInfo, plan: Plan, weights: Dict[int, WeightQuant]) -> Dict[int, List[Head]]:
    """{weighted node: [(tensor a Sigmoid reads, first channel of the node's output it holds, None)]} for each
    quantized Conv/ConvTranspose/Gemm whose output, alone or cut by a channel Split (a head's scores next to its box
    distribution), goes into Sigmoids whose probabilities reach the model's outputs unchanged: a detector's score
    maps, not a SiLU or a gate. A Split's other parts are left as they are. Where layout ops (MOVES) carry the
    output to its Sigmoid, the third entry gives the conv channel of each element the Sigmoid reads."""

    # probabilities reach the outputs unchanged when only layout ops and concats follow (YOLOX-nano concatenates
    # objectness, classes and boxes and reshapes them): plan.py's float-tail walk
    unchanged = tail_ok(info)

    def scored(t: str) -> bool:
        readers = info.consumers.get(t, [])
        return t not in info.output_set and len(readers) == 1 and info.nodes[readers[0]].op_type == "Sigmoid" and \
            unchanged.get(info.nodes[readers[0]].output[0], False)

    out: Dict[int, List[Tuple[str, int]]] = {}
    for w in plan.weighted:
        node = info.nodes[w.node]
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm") or w.node not in weights:
            continue
        y = node.output[0]
        readers = info.consumers.get(y, [])
        channels = int(np.shape(info.const(w.w))[w.axis])
        if scored(y):
            out[w.node] = [(y, 0, None)]
        elif len(readers) == 1 and y not in info.output_set and info.nodes[readers[0]].op_type == "Split":
            sizes = split_sizes(info, readers[0], channels)
            if sizes is None:
                continue
            starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int)
            parts = [(t, int(s), None) for t, s in zip(info.nodes[readers[0]].output, starts) if scored(t)]
            if parts:
                out[w.node] = parts
        elif node.op_type != "Gemm":
            moved = _moved_channels(info, y, channels)
            if moved is not None and scored(moved[0]):
                out[w.node] = [(moved[0], 0, moved[1])]
    return out


def channel_delta(f: np.ndarray, q: np.ndarray, channel_of: Optional[np.ndarray] = None) -> np.ndarray:
    """Per channel (axis 1, or ``channel_of`` each element): sum s'(f) (f - q) / sum s'(f), as float64 sums
    (numerator, denominator)."""
    s = 1.0 / (1.0 + np.exp(-f.astype(np.float64)))
    w = s * (1.0 - s)
    if channel_of is not None:
        c = channel_of.ravel()
        n = int(c.max()) + 1
        return np.stack([np.bincount(c, (w * (f - q)).ravel(), n), np.bincount(c, w.ravel(), n)])
    axes = tuple(a for a in range(f.ndim) if a != 1)
    return np.stack([(w * (f - q)).sum(axes), w.sum(axes)])


def shift(per_sample: List[np.ndarray]) -> np.ndarray:
    """The shift of one head's channels from each sample's channel_delta sums: their pooled weighted mean, shrunk
    towards zero by how much the samples disagree (times max(0, 1 - se^2 / mean^2), se^2 the variance of the
    pooled mean over samples). A shift that every image shows is kept (YOLOX-nano's heads keep 94-100% of
    theirs); one that a few images of a varied set make is mostly dropped: on the layout detector's coarsest
    level, 0.8 logit fitted to 5 documents overshot on the held-out ones."""
    num = np.stack([x[0] for x in per_sample])
    den = np.maximum(np.stack([x[1] for x in per_sample]), 1e-12)
    total = den.sum(0)
    mean = num.sum(0) / total
    se2 = (den * den * (num / den - mean) ** 2).sum(0) / (total * total)
    return mean * np.maximum(0.0, 1.0 - se2 / np.maximum(mean * mean, 1e-24))


def head_tensors(heads: Dict[int, List[Head]]) -> List[str]:
    """The tensors the heads' Sigmoids read, in order."""
    return [t for parts in heads.values() for t, _, _ in parts]


def correct_score_biases(model: onnx.ModelProto, info: GraphInfo, plan: Plan, acts: Dict[str, ActQuant],
                         weights: Dict[int, WeightQuant], data, samples: int = SAMPLES, threads: int = 0,
                         runs: Optional[Tuple[Callable, Callable]] = None,
                         measured: Sequence[Tuple[list, list]] = (),
                         heads: Optional[Dict[int, List[Head]]] = None) -> Optional[Dict]:
    """Shift the bias of every sigmoid head (``heads``, default sigmoid_heads) by its measured channel delta; sets
    WeightQuant.bias.
    ``runs``: (float run, quantized run), each (tensor names, feed) -> arrays, on sessions that already output the
    head tensors (range choice's); by default two sessions are made. ``measured``: (float, quantized) head values
    of samples already run (range choice's), counted with the first ``samples`` - len(measured) of ``data``.
    Returns a report, or None when the model has no sigmoid head."""
    from ..calibrate import make_session

    heads = sigmoid_heads(info, plan, weights) if heads is None else heads
    if not heads:
        return None
    feeds = list(itertools.islice(data, max(samples - len(measured), 0)))
    if not feeds and not measured:
        return None
    names = head_tensors(heads)
    if runs is None:
        qmodel, _ = build_qdq(model, plan, acts, weights)
        float_sess = make_session(with_outputs(model, names), threads)
        quant_sess = make_session(with_outputs(qmodel, names), threads)
        runs = float_sess.run, quant_sess.run
    run_float, run_quant = runs
    pairs = itertools.chain(measured, ((run_float(names, feed), run_quant(names, feed)) for feed in feeds))
    sums: Dict[str, List[np.ndarray]] = {t: [] for t in names}
    channel_of = {t: c for parts in heads.values() for t, _, c in parts}
    for floats, quants in pairs:
        for t, f, q in zip(names, floats, quants):
            sums[t].append(channel_delta(f, q, channel_of[t]))
    layers = {}
    for node, parts in heads.items():
        w = next(x for x in plan.weighted if x.node == node)
        delta = np.zeros(int(np.shape(info.const(w.w))[w.axis]))
        for t, first, _ in parts:
            part = shift(sums[t])
            delta[first:first + len(part)] = part
        wq = weights[node]
        base = wq.bias if wq.bias is not None else (info.const(w.bias) if w.bias else np.zeros(delta.shape))
        wq.bias = (np.asarray(base, np.float64) + delta).astype(np.float32)
        layers[info.node_label(node)] = round(float(np.abs(delta).max()), 4)
    return {"layers": layers, "samples": len(feeds) + len(measured)}


__all__ = ["SAMPLES", "channel_delta", "correct_score_biases", "head_tensors", "shift", "sigmoid_heads"]
