"""Bias correction: rounding the weights shifts each output channel's mean by (W_q - W) . E[x]; subtract it.

E[x] is the per-channel mean of each layer's input measured during calibration (pass 1), so the correction costs
no extra pass. Border effects of padding are ignored (the interior dominates).
"""

from __future__ import annotations

from typing import Dict, List, Tuple

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


def _qdq_mean_nodes(x: str, act, axes, opset: int, tag: str) -> Tuple[List[onnx.NodeProto], List]:
    """Nodes computing the per-channel mean of Q/DQ(x) with the activation's storage type (a side branch)."""
    from ..calibrate import reduce_node
    from ..qdq import act_storage, storage_domain

    dtype, shift = act_storage(act.fmt)
    inits = [onnx.numpy_helper.from_array(np.float32(act.scale), f"{tag}_s"),
             onnx.numpy_helper.from_array(np.asarray(act.zero_point + shift, dtype), f"{tag}_z")]
    dom = storage_domain(act.fmt.bits)
    nodes = [onnx.helper.make_node("QuantizeLinear", [x, f"{tag}_s", f"{tag}_z"], [f"{tag}_q"], domain=dom),
             onnx.helper.make_node("DequantizeLinear", [f"{tag}_q", f"{tag}_s", f"{tag}_z"], [f"{tag}_dq"],
                                   domain=dom)]
    nodes.append(reduce_node("ReduceMean", f"{tag}_dq", f"{tag}_qmean", axes, opset, inits))
    nodes.append(reduce_node("ReduceMean", x, f"{tag}_fmean", axes, opset, inits))
    return nodes, inits


def empirical_bias_correction(model: onnx.ModelProto, info: GraphInfo, plan: Plan, acts: Dict, weights: Dict,
                              data, max_samples: int = 32, progress: bool = True, threads: int = 0) -> Dict:
    """Measured bias correction: each layer's own mean output shift, from weight rounding *and* from quantizing
    its input, is removed. A layer's pre-activation output is linear in its input, so the shift is exactly
    W_q . E[Q(x)] - W . E[x] per output channel (up to zero-padded borders); one extra float pass measures the
    per-channel means E[x] and E[Q(x)] of every layer input (Q at the scale calibration chose). Each layer is
    corrected for the float input it should see, so the corrections are independent and applied at once.
    Sets ``WeightQuant.bias``; returns a small report."""
    import itertools

    from tqdm import tqdm

    from ..calibrate import make_session, opset_of

    targets = []
    for w in plan.weighted:
        op = info.nodes[w.node].op_type
        r = info.rank(w.x)
        if op not in ("Conv", "Gemm") or w.node not in weights or w.x not in acts or r is None:
            continue
        if op == "Gemm" and (r != 2 or bool(info.attr(w.node, "transA", 0))):
            continue
        targets.append((w, tuple(a for a in range(r) if a != 1)))
    if not targets:
        return {"layers": 0}
    m = onnx.ModelProto()
    m.CopyFrom(model)
    opset = opset_of(m)
    tags: Dict[str, str] = {}
    for w, axes in targets:
        if w.x in tags:
            continue
        tag = f"bc{len(tags)}"
        nodes, inits = _qdq_mean_nodes(w.x, acts[w.x], axes, opset, tag)
        m.graph.node.extend(nodes)
        m.graph.initializer.extend(inits)
        for suffix in ("_qmean", "_fmean"):
            m.graph.output.append(onnx.ValueInfoProto(name=tag + suffix))
        tags[w.x] = tag
    if any(a.fmt.bits == 16 for a in acts.values()) and not any(o.domain == "com.microsoft"
                                                                 for o in m.opset_import):
        m.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    sess = make_session(m, threads)
    names = [tags[x] + s for x in tags for s in ("_qmean", "_fmean")]
    sums = [0.0] * len(names)
    total = min(max_samples, len(data))
    n = 0
    for feed in tqdm(itertools.islice(data, total), total=total, desc="bias correction", disable=not progress,
                     leave=False):
        sums = [a + np.asarray(b, np.float64) for a, b in zip(sums, sess.run(names, feed))]
        n += 1
    means = {name: v / max(n, 1) for name, v in zip(names, sums)}
    largest = 0.0
    for w, _ in targets:
        op = info.nodes[w.node].op_type
        wq = weights[w.node]
        wf = info.const(w.w).astype(np.float64)
        wd = dequantized(wq.q, wq.scale, wq.zero_point, wq.axis).astype(np.float64)
        mq, mf = means[tags[w.x] + "_qmean"].reshape(-1), means[tags[w.x] + "_fmean"].reshape(-1)
        group = int(info.attr(w.node, "group", 1))
        trans_b = bool(info.attr(w.node, "transB", 0))
        if op == "Conv" and mq.size != wf.shape[1] * group:
            continue
        shift = output_shift(op, wd, mq, group, trans_b) - output_shift(op, wf, mf, group, trans_b)
        base = wq.bias if wq.bias is not None else (info.const(w.bias).astype(np.float64) if w.bias else 0.0)
        wq.bias = (base - shift).astype(np.float32)
        largest = max(largest, float(np.abs(shift).max()))
    return {"layers": len(targets), "samples": n, "max_shift": largest}
