"""Which score heads' Sigmoids the host computes from their int8 logits, and which the chip keeps.

A Sigmoid that reaches the graph outputs only through layout ops (a detector's score maps, a pose net's heatmaps)
can run on the host CPU in float, as rknn_model_zoo's demos do after cutting such models before it: the chip then
puts out the logits, int8 on their own range. Where the Sigmoid reads a point anyway (after an Add, a Concat),
that only removes a rounding and plan.py always does it. Where the chip would fuse it into its conv (a score head:
the Sigmoid of the unrounded sum, rounded onto the [0, 1] grid), the two round differently:

- the chip's [0, 1] grid is 1/255 apart: it holds a probability near 0.5 to +-0.002, and one of 0.003 as one step
  (NanoDet's and the layout detector's score maps, whose probabilities stay below 0.4 and 0.8 on most images);
- the host's error is the logit step times the sigmoid's slope p (1 - p): small for small probabilities, up to
  step / 4 near 0.5 (YOLOX-nano's logits span [-35, 6]: 0.16 a step, 0.04 near 0.5, where its 0.3 score threshold
  decides).

So each head is measured: on a few calibration samples, the probabilities' squared error after each way of rounding
(the host's on the logits' range, the chip's on its output grid), and the host takes the heads where its error is
clearly smaller (MARGIN). YOLOX-nano keeps its six heads on the chip, NanoDet and the layout detector move theirs
to the host.
"""

from __future__ import annotations

import itertools
import logging
from typing import Dict, FrozenSet, Optional, Tuple

import numpy as np
import onnx

from ..ir import GraphInfo
from ..plan import Plan, output_sigmoids

log = logging.getLogger("openrknn.quant")

# calibration samples measured: YOLOX-nano's closest head is at 0.47-0.70 of the chip's error on 4, 0.56-0.64 on 8
SAMPLES = 8
# the host takes a head where its error is at most this fraction of the chip's: its estimate rounds the logits on the
# few samples' range, which the whole calibration set only widens (YOLOX-nano's head at 0.70 cost a detection at
# the 0.3 threshold, 97.5% -> 96.6% kept; NanoDet's and the layout detector's heads are at 0.01-0.46)
MARGIN = 0.5


def fused_heads(info: GraphInfo, plan: Plan) -> Dict[str, str]:
    """Output Sigmoids the chip fuses into their conv: {Sigmoid output: the logits it reads (conv output or a
    channel part of one)}."""
    tail = output_sigmoids(info, set(info.producer))
    return {n.output[0]: n.input[0] for n in info.nodes
            if n.op_type == "Sigmoid" and n.output[0] in tail and n.output[0] in plan.fused}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow warning for logits far below zero


def _rounded(x: np.ndarray, lo: float, hi: float, levels: int) -> np.ndarray:
    """x on the affine grid of ``levels`` steps over [lo, hi] widened to hold zero, as a point's range is."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / levels if hi > lo else 1.0
    zero = np.round(-lo / scale)
    return (np.clip(np.round(x / scale) + zero, 0, levels) - zero) * scale


def head_errors(logits: np.ndarray, levels: int, unit: Optional[Tuple[float, float]]) -> Tuple[float, float]:
    """(host, chip) mean squared error of the probabilities: the host's Sigmoid of logits rounded on their range, the
    chip's Sigmoid of the exact logits rounded on its output grid (``unit``: the range the chip fixes, RKNPU2's
    [0, 1]; else the probabilities' own range)."""
    x = np.asarray(logits, np.float64).ravel()
    p = _sigmoid(x)
    host = _sigmoid(_rounded(x, float(x.min()), float(x.max()), levels))
    lo, hi = unit if unit is not None else (float(p.min()), float(p.max()))
    chip = _rounded(p, lo, hi, levels)
    return float(np.mean((host - p) ** 2)), float(np.mean((chip - p) ** 2))


def choose(model: onnx.ModelProto, info: GraphInfo, plan: Plan, data, bits: int, unit_grid: bool,
           threads: int = 0, samples: int = SAMPLES) -> Tuple[FrozenSet[str], Optional[dict]]:
    """The fused output Sigmoids whose host rounding loses clearly less than the chip's on ``samples`` samples,
    and a report ({Sigmoid output: {host_mse, chip_mse, host}}; None when the model has no such head)."""
    from ..calibrate import make_session
    from ..qdq import with_outputs

    heads = fused_heads(info, plan)
    feeds = list(itertools.islice(data, samples)) if heads else []
    if not feeds:
        return frozenset(), None
    names = list(dict.fromkeys(heads.values()))
    sess = make_session(with_outputs(model, names), threads)
    values: Dict[str, list] = {t: [] for t in names}
    for feed in feeds:
        for t, v in zip(names, sess.run(names, feed)):
            values[t].append(np.ravel(v))
    levels = (1 << bits) - 1
    report, chosen = {}, set()
    for sig, x in heads.items():
        host, chip = head_errors(np.concatenate(values[x]), levels, (0.0, 1.0) if unit_grid else None)
        on_host = host <= MARGIN * chip
        report[sig] = {"host_mse": float(f"{host:.3g}"), "chip_mse": float(f"{chip:.3g}"), "host": on_host}
        if on_host:
            chosen.add(sig)
    if chosen:
        log.info("score heads' Sigmoids on the host, from int8 logits (less error than the chip's output grid on "
                 "%d samples): %s", len(feeds), ", ".join(sorted(chosen)))
    return frozenset(chosen), report


LAYOUT_OPS = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten")


def sink_past_layout(qmodel: onnx.ModelProto, tensors: Dict[str, dict], host: Dict[str, str]) -> int:
    """In the QDQ graph, move each host Sigmoid (``host``: Plan.host_sigmoids) after the layout ops between it and
    the graph output (a score map's Reshape and Transpose), which then move the int8 logits on the NPU, each output
    quantized on the logits' own grid (a layout op moves values, so that is exact): the board's CPU computes the
    Sigmoid alone, on int8 logits already in the output's layout, instead of moving float probabilities. The
    layout ops' outputs get new names (they now hold logits); the graph output keeps its name. Adds the new
    points to ``tensors`` (build_qdq's record), each with "follows": the logits point whose parameters it copies
    (a hybrid edit goes to that point). Returns how many Sigmoids moved."""
    from onnx import helper

    g = qmodel.graph
    outputs = {o.name for o in g.output}
    producer = {o: n for n in g.node for o in n.output}
    readers: Dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    nodes = list(g.node)  # the graph's own messages: edited in place, written back once

    def index(node: onnx.NodeProto) -> int:
        return next(k for k, x in enumerate(nodes) if x is node)

    moved = 0
    for s in [n for n in nodes if n.op_type == "Sigmoid" and n.output[0] in host]:
        dq = producer.get(s.input[0])
        point = s.input[0]
        if dq is None or dq.op_type != "DequantizeLinear" or point not in tensors or point in outputs:
            continue
        chain, t = [], s.output[0]
        while t not in outputs and len(readers.get(t, [])) == 1 and readers[t][0].op_type in LAYOUT_OPS:
            chain.append(readers[t][0])
            t = chain[-1].output[0]
        if not chain or len(readers.get(point, [])) != 1:  # the logits read elsewhere too: leave it as it is
            continue
        del nodes[index(s)]
        x = point
        for n in chain:
            out = n.output[0]
            f, q, dqo = out + "__logits_f", out + "__logits_q", out + "__logits"
            n.input[0], n.output[0] = x, f
            pair = [helper.make_node("QuantizeLinear", [f] + list(dq.input[1:]), [q], name=out + "__logits_Q",
                                     domain=dq.domain),
                    helper.make_node("DequantizeLinear", [q] + list(dq.input[1:]), [dqo], name=out + "__logits_DQ",
                                     domain=dq.domain)]
            at = index(n) + 1
            nodes[at:at] = pair
            tensors[dqo] = {**tensors[point], "follows": point}  # not a parameter of its own: the logits' grid
            x = dqo
        s.input[0], s.output[0] = x, t
        nodes.insert(index(chain[-1]) + 3, s)  # after the last layout op's Q/DQ pair
        moved += 1
    if moved:
        del g.node[:]
        g.node.extend(nodes)
        log.info("%d host Sigmoid(s) moved after the layout ops before their output: those move int8 logits on the "
                 "NPU", moved)
    return moved
