"""Ranges for the tensors on the way into a Log or a magnitude's square root, cut together in decades where the
model's outputs gain.

A log-mel front end (speech recognisers, wake-word and speaker models) squares a spectrum into power, sums it into
mel bands and takes the Log; the result spans 80 dB or more, eight decades of power. A linear 8-bit range that the
loudest value sets keeps about two and a half of them: every value below 1/255 of the top rounds to zero, and the Log
turns all of those into its floor. No one tensor can be fixed alone. Clipping the mel energies gains nothing while
the power spectrum before them still rounds the quiet bins to zero, and clipping the power gains nothing while the
amplitudes squared into it do (openwakeword's mel model: no single group's cut moves its output cosine).

So the scale groups on the way into the Log move together: each range is cut by 10^(-e * degree), where the degree
says how the tensor scales with the Log's input (1 for the mel energies and the power spectrum, 1/2 for the
amplitudes a square makes that power of), and e, in decades of the Log's input, is searched on the model's outputs
on calibration samples. The loud values saturate instead; the outputs say whether that costs less than the quiet
ones it brings back. Of the cuts, the shallowest that takes three quarters of the best one's gain is taken, and kept
on range choice's rule (a tenth of the output error gone, better on at least half the samples).

A magnitude spectrum has the same trouble one step earlier: sqrt(re^2 + im^2) squares the amplitudes into a power
with twice their decades, and the quiet bins round to zero before the square root can bring them back (silero-vad's
STFT front end: speech decisions 876/927 chunks uncut, 892 cut by 2.5 decades). A square root whose input is a
quantized tensor starts such a walk too; a normalisation's square root does not (its statistics are not quantized:
graph/norms.py).
"""

from __future__ import annotations

import itertools
from typing import Dict, Set, Tuple

import numpy as np
import onnx

from ..ir import GraphInfo
from ..plan import Plan
from ..qdq import ActQuant, WeightQuant
from .range_choice import MARGIN, MIN_GAIN, MIN_WINS, CandidateModel, reference_session, sample_losses, wins
from .range_search import _scaled

DECADES = tuple(np.arange(0.5, 6.01, 0.5))   # e, in decades of the Log's input
MAX_DEPTH = 32                                # nodes walked back from a Log
GAIN_SHARE = 0.75                             # of the best cut's gain, what the cut taken must reach
# ops whose output scales like their (non-constant) inputs: data movement, sums, linear layers, floors
SAME_DEGREE = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Slice", "Identity", "Concat", "Split",
               "Pad", "Clip", "Relu", "Max", "Min", "Abs", "Add", "Sub", "ReduceSum", "ReduceMean", "AveragePool",
               "GlobalAveragePool", "MatMul", "Gemm", "Conv", "ConvTranspose", "Mul", "Div", "Cast"}


def _degrees_into(info: GraphInfo, t: str, degree: float, out: Dict[str, float], depth: int = 0) -> None:
    """Every tensor the value ``t`` is computed from through ops whose scaling is known, with how it scales
    relative to the Log's input (``out``: tensor -> degree; the first degree found for a tensor is kept)."""
    if depth > MAX_DEPTH or t in out:
        return
    out[t] = degree
    p = info.producer.get(t)
    if p is None:
        return
    node = info.nodes[p]
    acts = info.activations(p)
    op = node.op_type
    if op == "Mul" and len(acts) == 2 and acts[0] == acts[1]:          # x * x
        nxt = [(acts[0], degree / 2)]
    elif op in ("Mul", "MatMul", "Gemm", "Conv", "ConvTranspose") and len(acts) > 1:
        return  # a product of two activations: how the scaling splits between them is unknown
    elif op == "Div" and (not acts or acts[0] != node.input[0] or len(acts) > 1):
        return  # x / y of activations, or a constant over x
    elif op in SAME_DEGREE:
        nxt = [(a, degree) for a in acts]
    elif op == "Pow" and len(acts) == 1 and acts[0] == node.input[0] and info.is_const(node.input[1]):
        c = float(np.asarray(info.const(node.input[1])).reshape(-1)[0])
        if c <= 0:
            return
        nxt = [(acts[0], degree / c)]
    elif op == "ReduceSumSquare":
        nxt = [(a, degree / 2) for a in acts]
    elif op == "Sqrt":
        nxt = [(a, degree * 2) for a in acts]
    else:
        return
    for a, d in nxt:
        _degrees_into(info, a, d, out, depth + 1)


def log_groups(info: GraphInfo, plan: Plan, acts: Dict[str, ActQuant], exempt: Set[int]) -> Dict[int, float]:
    """Scale group -> degree, for the quantized groups on the way into every Log and every square root of a
    quantized tensor, leaving out the model's inputs (what the user feeds: saturating it distorts everything after)
    and the ``exempt`` groups."""
    degrees: Dict[str, float] = {}
    for i, node in enumerate(info.nodes):
        into_root = node.op_type == "Sqrt" and node.input[0] in acts
        if (node.op_type == "Log" or into_root) and info.activations(i):
            _degrees_into(info, node.input[0], 1.0, degrees)
    inputs = set(info.inputs) | plan.prefix
    out: Dict[int, float] = {}
    for t, d in degrees.items():
        g = plan.group_of.get(t)
        if g is None or g in exempt or t not in acts or any(m in inputs for m in plan.groups[g]):
            continue
        out.setdefault(g, d)
    return out


def _cut(acts: Dict[str, ActQuant], plan: Plan, groups: Dict[int, float], decades: float) -> Dict[str, ActQuant]:
    cut = dict(acts)
    for g, d in groups.items():
        factor = 10.0 ** (-decades * d)
        for t in plan.groups[g]:
            if t in acts:
                cut[t] = _scaled(acts[t], factor)
    return cut


def search_log_ranges(model: onnx.ModelProto, info: GraphInfo, plan: Plan, acts: Dict[str, ActQuant],
                      weights: Dict[int, WeightQuant], data, samples: int, exempt: Set[int], threads: int = 0
                      ) -> Tuple[Dict[str, ActQuant], dict]:
    """The activation parameters with the groups into each Log cut by the best number of decades (``acts`` itself
    when none gains), and a report. Judged on the first ``samples`` samples of ``data`` against the float model."""
    groups = log_groups(info, plan, acts, exempt)
    if not groups:
        return acts, {}
    feeds = list(itertools.islice(data, samples))
    runner = CandidateModel(model, plan, acts, weights, threads)
    ref_sess = reference_session(model, runner, threads)
    reference = [ref_sess.run(runner.measured, f) for f in feeds]

    def losses(candidate: Dict[str, ActQuant]) -> np.ndarray:
        return sample_losses(runner.run(feeds, runner.feed(candidate, weights, model)), reference)

    base = losses(acts)
    tried = {float(e): losses(_cut(acts, plan, groups, float(e))) for e in DECADES}
    mean = {e: float(np.nan_to_num(v.mean(), nan=np.inf)) for e, v in tried.items()}  # a NaN output: no candidate
    before = float(base.mean())
    least = min(mean.values())
    best, keep = 0.0, False
    if least < before:
        # the shallowest cut that takes GAIN_SHARE of the largest gain away: a deep cut saturates more of the loud
        # values, and which ones are loud depends on the samples (NeMo's front end, calibrated on two espeak voices
        # and judged on two others: its best cut on the calibration voices, 3 decades, gives 0.07 on the others,
        # against 0.57 uncut and 0.66 for the 1 decade this rule takes)
        enough = before - GAIN_SHARE * (before - least)
        best = min(e for e, m in mean.items() if m <= enough)
        keep = mean[best] <= (1.0 - MARGIN) * before and before - mean[best] >= MIN_GAIN and \
            wins(tried[best], base) >= MIN_WINS * len(feeds)
    report = {"groups": len(groups), "samples": len(feeds), "loss_before": round(before, 6),
              "per_sample": {f"{e:g}": [round(float(x), 4) for x in v] for e, v in {0.0: base, **tried}.items()},
              "losses": {f"{e:g}": round(m, 6) for e, m in mean.items()},
              "decades": best if keep else 0.0}
    return (_cut(acts, plan, groups, best) if keep else acts), report


__all__ = ["DECADES", "log_groups", "search_log_ranges"]
