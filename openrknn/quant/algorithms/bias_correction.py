"""Bias correction: rounding the weights shifts each output channel's mean by (W_q - W) . E[x]; subtract it.

E[x] is the per-channel mean of each layer's input measured during calibration (pass 1), so the correction costs
no extra pass. Border effects of padding are ignored (the interior dominates).
"""

from __future__ import annotations

import itertools
from typing import Dict

import numpy as np
import onnx

from ..ir import GraphInfo
from ..plan import Plan
from ..qdq import WeightQuant
from .weights import dequantized


def output_shift(op: str, dw: np.ndarray, mean: np.ndarray, group: int = 1, trans_b: bool = False) -> np.ndarray:
    """Expected per-output-channel change of a layer's output when its weights change by ``dw``."""
    if op == "Conv":
        cout, cpg = dw.shape[0], dw.shape[1]
        per_in = dw.reshape(cout, cpg, -1).sum(axis=2)                     # [Cout, Cin/g]
        out_per_group = cout // group
        idx = (np.arange(cout) // out_per_group)[:, None] * cpg + np.arange(cpg)[None, :]
        return (per_in * mean[idx]).sum(axis=1)
    if op == "Gemm":
        return (dw @ mean) if trans_b else (mean @ dw)
    raise ValueError(op)


def correct_biases(info: GraphInfo, plan: Plan, weights: Dict[int, WeightQuant],
                   channel_mean: Dict[str, np.ndarray]) -> Dict[str, float]:
    """Set ``WeightQuant.bias`` for every Conv/Gemm whose input mean is known; returns {layer: max |shift|}."""
    shifts = {}
    for w in plan.weighted:
        op = info.nodes[w.node].op_type
        if op not in ("Conv", "Gemm") or w.x not in channel_mean or w.node not in weights:
            continue
        wq = weights[w.node]
        wf = info.const(w.w).astype(np.float32)
        dw = dequantized(wq.q, wq.scale, wq.zero_point, wq.axis) - wf
        mean = channel_mean[w.x].astype(np.float64).reshape(-1)
        trans_b = bool(info.attr(w.node, "transB", 0))
        if op == "Conv" and mean.size != dw.shape[1] * int(info.attr(w.node, "group", 1)):
            continue
        shift = output_shift(op, dw.astype(np.float64), mean, int(info.attr(w.node, "group", 1)), trans_b)
        base = info.const(w.bias).astype(np.float64) if w.bias else np.zeros(shift.shape)
        wq.bias = (base - shift).astype(np.float32)
        shifts[info.node_label(w.node)] = float(np.abs(shift).max())
    return {"layers": len(shifts), "max_shift": max(shifts.values(), default=0.0)}


def empirical_bias_correction(model: onnx.ModelProto, info: GraphInfo, plan: Plan, acts: Dict, weights: Dict,
                              data, max_samples: int = 32, progress: bool = True, threads: int = 0) -> Dict:
    """Measured bias correction: each layer's own output shift, from weight rounding *and* the quantization of its
    inputs, in one pass. Every layer runs on the float model's inputs (quantized at their own scales, the
    'single' model of accuracy analysis), so the per-layer shifts E[y_float] - E[y_quant] are independent and all
    corrected at once. Sets ``WeightQuant.bias``; returns a small report."""
    from ..calibrate import augment, make_session
    from ..qdq import build_qdq, quant_points, single_layer_model

    qm, _ = build_qdq(model, plan, acts, weights)
    points = quant_points(qm)
    single, feed_of, _ = single_layer_model(qm, points, info.inputs)
    out_in_single = {n.name: n.output[0] for n in single.graph.node}
    targets = []  # (weighted op, float pre-activation name, single-model name, axes)
    for w in plan.weighted:
        node = info.nodes[w.node]
        if node.op_type not in ("Conv", "Gemm") or w.node not in weights or node.name not in out_in_single:
            continue
        r = info.rank(node.output[0])
        if r is None:
            continue
        axes = tuple(a for a in range(r) if a != 1)
        targets.append((w, node.output[0], out_in_single[node.name], axes))
    if not targets:
        return {"layers": 0}
    f_outs = {f"bc{k}__f": ("ReduceMean", t[1], t[3]) for k, t in enumerate(targets)}
    s_outs = {f"bc{k}__s": ("ReduceMean", t[2], t[3]) for k, t in enumerate(targets)}
    f_sess = make_session(augment(model, f_outs, list(feed_of)), threads)
    s_sess = make_session(augment(single, s_outs), threads)
    f_names, s_names, fetch = list(f_outs), list(s_outs), list(feed_of)
    diff = [0.0] * len(targets)
    n = 0
    from tqdm import tqdm

    total = min(max_samples, len(data))
    for feed in tqdm(itertools.islice(data, total), total=total, desc="bias correction", disable=not progress,
                     leave=False):
        res = f_sess.run(f_names + fetch, feed)
        f_means, f_vals = res[:len(f_names)], res[len(f_names):]
        s_feed = dict(feed)
        s_feed.update({feed_of[t]: v for t, v in zip(fetch, f_vals)})
        s_means = s_sess.run(s_names, s_feed)
        diff = [d + (np.asarray(a, np.float64) - np.asarray(b, np.float64)) for d, a, b in zip(diff, f_means, s_means)]
        n += 1
    largest = 0.0
    for (w, *_), d in zip(targets, diff):
        wq = weights[w.node]
        shift = d / max(n, 1)
        base = wq.bias if wq.bias is not None else (info.const(w.bias).astype(np.float64) if w.bias else 0.0)
        wq.bias = (base + shift).astype(np.float32)
        largest = max(largest, float(np.abs(shift).max()))
    return {"layers": len(targets), "samples": n, "max_shift": largest}
