"""Bias correction: rounding the weights shifts each output channel's mean by (W_q - W) . E[x]; subtract it.

E[x] is the per-channel mean of each layer's input measured during calibration (pass 1), so the correction costs
no extra pass. Border effects of padding are ignored (the interior dominates).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Set, Tuple

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
    return nodes, inits


class MeanShiftProbe:
    """What one float pass must measure for empirical bias correction: the per-channel means E[x] and E[Q(x)] of
    every Conv/Gemm input (Q at the scale calibration chose). They depend on the activation scales only, not on
    the weights, so the pass can run before the weights are final and share a session with other statistics
    (weight rounding's); ``apply`` turns the means into corrections once the integers are fixed."""

    def __init__(self, info: GraphInfo, plan: Plan, acts: Dict, weights: Dict, max_samples: int = 32,
                 variants: Optional[Dict[str, Dict]] = None):
        """``variants``: other activation parameter sets {name: acts} whose E[Q(x)] the same pass measures too
        (the range choice compares them); ``apply(..., variant=name)`` corrects for one of them."""
        self.max_samples = max_samples
        self.targets = []
        for w in plan.weighted:
            op = info.nodes[w.node].op_type
            r = info.rank(w.x)
            if op not in ("Conv", "Gemm") or w.node not in weights or w.x not in acts or r is None:
                continue
            if op == "Gemm" and (r != 2 or bool(info.attr(w.node, "transA", 0))):
                continue
            self.targets.append((w, tuple(a for a in range(r) if a != 1)))
        self.variants = {"": acts, **(variants or {})}
        self.tags: Dict[str, str] = {}
        for w, _ in self.targets:
            self.tags.setdefault(w.x, f"bc{len(self.tags)}")
        self.outputs = [tag + "_fmean" for tag in self.tags.values()] + \
            [tag + self._suffix(v) + "_qmean" for v in self.variants for tag in self.tags.values()]
        self.sums = [0.0] * len(self.outputs)
        self.n = 0

    def _suffix(self, variant: str) -> str:
        return f"_{list(self.variants).index(variant)}" if variant else ""

    def augment(self, m: onnx.ModelProto) -> None:
        """Add the side branches and their outputs to ``m`` (a copy of the float model), in place."""
        from ..calibrate import opset_of, reduce_node

        opset = opset_of(m)
        axes_of = {w.x: axes for w, axes in self.targets}
        for x, tag in self.tags.items():
            for k, (variant, acts) in enumerate(self.variants.items()):
                vtag = tag + self._suffix(variant)
                # the float mean is the same for every variant: measured once, under the plain tag
                nodes, inits = _qdq_mean_nodes(x, acts[x], axes_of[x], opset, vtag)
                if k == 0:
                    nodes.append(reduce_node("ReduceMean", x, tag + "_fmean", axes_of[x], opset, inits))
                m.graph.node.extend(nodes)
                m.graph.initializer.extend(inits)
                m.graph.output.append(onnx.ValueInfoProto(name=vtag + "_qmean"))
            m.graph.output.append(onnx.ValueInfoProto(name=tag + "_fmean"))
        if any(acts[x].fmt.bits == 16 for acts in self.variants.values() for x in self.tags) and \
                not any(o.domain == "com.microsoft" for o in m.opset_import):
            m.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))

    def add(self, values: Dict[str, np.ndarray]) -> None:
        self.sums = [a + np.asarray(values[name], np.float64) for a, name in zip(self.sums, self.outputs)]
        self.n += 1

    def apply(self, info: GraphInfo, weights: Dict, variant: str = "", inputs: Optional[Set[str]] = None) -> Dict:
        """Set ``WeightQuant.bias`` of every target (or of those reading ``inputs``) from the measured means and its
        final integers (for the activation parameters ``variant``; '' = the ones the probe was made with)."""
        means = {name: v / max(self.n, 1) for name, v in zip(self.outputs, self.sums)}
        largest = 0.0
        for w, _ in self.targets:
            if inputs is not None and w.x not in inputs:
                continue
            op = info.nodes[w.node].op_type
            wq = weights[w.node]
            wf = info.const(w.w).astype(np.float64)
            wd = dequantized(wq.q, wq.scale, wq.zero_point, wq.axis).astype(np.float64)
            tag = self.tags[w.x]
            mq = means[tag + self._suffix(variant) + "_qmean"].reshape(-1)
            mf = means[tag + "_fmean"].reshape(-1)
            group = int(info.attr(w.node, "group", 1))
            trans_b = bool(info.attr(w.node, "transB", 0))
            if op == "Conv" and mq.size != wf.shape[1] * group:
                continue
            shift = output_shift(op, wd, mq, group, trans_b) - output_shift(op, wf, mf, group, trans_b)
            base = wq.bias if wq.bias is not None else (info.const(w.bias).astype(np.float64) if w.bias else 0.0)
            wq.bias = (base - shift).astype(np.float32)
            largest = max(largest, float(np.abs(shift).max()))
        return {"layers": len(self.targets), "samples": self.n, "max_shift": largest}


def empirical_bias_correction(model: onnx.ModelProto, info: GraphInfo, plan: Plan, acts: Dict, weights: Dict,
                              data, max_samples: int = 32, progress: bool = True, threads: int = 0,
                              probe: Optional[MeanShiftProbe] = None, variant: str = "") -> Dict:
    """Measured bias correction: each layer's own mean output shift, from weight rounding *and* from quantizing
    its input, is removed. A layer's pre-activation output is linear in its input, so the shift is exactly
    W_q . E[Q(x)] - W . E[x] per output channel (up to zero-padded borders); one extra float pass measures the
    per-channel means E[x] and E[Q(x)] of every layer input (Q at the scale calibration chose). Each layer is
    corrected for the float input it should see, so the corrections are independent and applied at once.
    ``probe``: the means, already measured in a shared pass, or a probe to measure them with (its variants too);
    ``variant``: which of its activation parameter sets to correct for. Sets ``WeightQuant.bias``; returns a
    small report."""
    import itertools

    from ...progress import progress_bar

    from ..calibrate import make_session

    if probe is None:
        probe = MeanShiftProbe(info, plan, acts, weights, max_samples)
    if not probe.targets:
        return {"layers": 0}
    if probe.n == 0:
        m = onnx.ModelProto()
        m.CopyFrom(model)
        probe.augment(m)
        sess = make_session(m, threads)
        total = min(probe.max_samples, len(data))
        for feed in progress_bar(itertools.islice(data, total), total=total, desc="bias correction",
                                 enabled=progress, leave=False):
            probe.add(dict(zip(probe.outputs, sess.run(probe.outputs, feed))))
    return probe.apply(info, weights, variant)
