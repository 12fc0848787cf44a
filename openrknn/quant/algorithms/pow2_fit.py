"""Power-of-two range fitting for dynamic fixed point: rescale a tensor so its range fills its grid.

A dynamic_fixed_point scale is a power of two, so a tensor whose largest value is 4.1 gets the grid 2^-4 (up to
7.94) and uses 66 of its 127 positive levels: almost a bit lost. A ReLU6 output (6 of 7.94) loses 0.4 bit.
Multiplying a tensor by a factor f is exact when its producer is a conv followed by at most a ReLU or Clip (the
conv's weights and bias and the clip bounds times f) and all its readers are convs (their weights divided by f);
a residual stream (convs without activation joined by Adds, read by convs: MobileNetV2's block outputs) takes one
factor for all its tensors.
A factor that brings the tensor's maximum to the top of a grid moves the weights on both sides along their own
power-of-two grids, so f is chosen to minimise the summed relative rounding noise, 1 / levels^2, of the tensor and
of the weights it touches; one tensor at a time, in graph order, for a few sweeps (a conv's weights see the
factors of its input and of its output). Only the fractional part of log2(f) matters, so f stays in [1, 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import onnx
from onnx import numpy_helper

from ..ir import GraphInfo
from ..plan import Plan
from ..schemes import TensorFormat, qparams
from ..stages import QuantState, Rewrite, StageResult
from .residual_equalize import find_streams

GRID = np.exp2(np.arange(64) / 64.0)  # candidate factors in [1, 2)
SWEEPS = 3
ACTIVATIONS = ("Relu", "Clip")        # positively homogeneous: act(f x) = f act(x) for f > 0 (Clip bounds x f)


@dataclass
class Fit:
    """Tensors that take one factor together: a conv's output, or a residual stream (tensors joined by Adds)."""
    tensors: List[str]
    producers: List[int]   # the convs making them
    clips: List[int]       # Clip nodes between a producer and its tensor (their bounds move with the factor)
    readers: List[int]     # convs reading them as their input


def _single(info: GraphInfo, plan: Plan, t: str) -> Optional[Fit]:
    """conv [-> ReLU | Clip] -> t -> convs only."""
    p = info.producer.get(t)
    if p is None:
        return None
    clips = []
    if info.nodes[p].op_type in ACTIVATIONS:
        act, x = p, info.nodes[p].input[0]
        if x in plan.points or info.consumers.get(x) != [act] or x in info.output_set:
            return None
        p = info.producer.get(x)
        if p is None:
            return None
        if info.nodes[act].op_type == "Clip":
            if not all(info.is_const(b) for b in info.nodes[act].input[1:] if b):
                return None
            clips.append(act)
    if info.nodes[p].op_type != "Conv" or not info.owns_consts(p):
        return None
    readers = info.consumers.get(t, [])
    if not readers or not all(_plain_reader(info, c, t) for c in readers):
        return None
    return Fit([t], [p], clips, list(readers))


def _plain_reader(info: GraphInfo, c: int, t: str) -> bool:
    inputs = list(info.nodes[c].input)
    return info.nodes[c].op_type == "Conv" and inputs.index(t) == 0 and inputs.count(t) == 1 \
        and info.owns_consts(c)


def find_fits(info: GraphInfo, plan: Plan) -> List[Fit]:
    """The quantization points that can be rescaled exactly (see module doc), in graph order: single tensors, and
    residual streams (algorithms/residual_equalize.py: convs without activation and Adds, read by convs) whose
    tensors each have a scale of their own."""
    def alone(t: str) -> bool:  # a scale of its own: nothing else is tied to its grid
        return t in plan.group_of and len(plan.groups[plan.group_of[t]]) == 1

    out = []
    for t in plan.points:
        if alone(t) and t not in info.output_set and info.is_float(t):
            fit = _single(info, plan, t)
            if fit is not None:
                out.append(fit)
    taken = {t for f in out for t in f.tensors}
    for st in find_streams(info):
        if all(alone(t) for t in st.tensors) and not taken & set(st.tensors):
            out.append(Fit(list(st.tensors), list(st.producers), [], list(st.readers)))
    order = {t: i for i, t in enumerate(plan.points)}
    return sorted(out, key=lambda f: min(order[t] for t in f.tensors))


def _noise(amax: np.ndarray, fmt: TensorFormat):
    """Relative rounding noise power 1 / levels^2 on the power-of-two grid the dtype picks for maxima ``amax``,
    averaged over the last axis (zeros ignored): a float for a 1-D ``amax``, one value per row for [rows, n]."""
    amax = np.asarray(amax, np.float64)
    scale, _ = qparams(-amax, amax, fmt)
    live = amax > 0
    inv = np.where(live, (scale / np.where(live, amax, 1.0)) ** 2, 0.0)
    out = inv.sum(axis=-1) / np.maximum(live.sum(axis=-1), 1)
    return float(out) if out.ndim == 0 else out


def choose_factors(info: GraphInfo, fits: List[Fit], amax: Dict[str, float], act_fmt: TensorFormat,
                   weight_fmt: TensorFormat, per_channel: bool) -> Dict[int, float]:
    """Factor per fit (index into ``fits``; see module doc). ``amax``: the tensors' calibrated absolute maxima.
    Every candidate factor of a fit is scored at once: maxima [len(GRID), n]."""
    def weight_max(i: int) -> np.ndarray:
        w = np.abs(info.const(info.nodes[i].input[1]))
        return w.reshape(w.shape[0], -1).max(axis=1) if per_channel else np.array([w.max()])

    wmax = {i: weight_max(i) for f in fits for i in f.producers + f.readers}
    out_of = {p: k for k, f in enumerate(fits) for p in f.producers}  # conv -> the fit it makes
    in_of = {c: k for k, f in enumerate(fits) for c in f.readers}     # conv -> the fit it reads
    factor = [1.0] * len(fits)
    g = GRID[:, None]
    for _ in range(SWEEPS):
        for k, f in enumerate(fits):
            maxima = np.array([amax.get(t, 0.0) for t in f.tensors])
            if not (maxima > 0).all():
                continue
            costs = _noise(maxima[None, :] * g, act_fmt) * len(f.tensors)  # summed over the fit's tensors
            for p in f.producers:  # weights x factor / (factor of the producer's input)
                costs = costs + _noise(wmax[p][None, :] * g / (factor[in_of[p]] if p in in_of else 1.0), weight_fmt)
            for c in f.readers:    # weights x (factor of the reader's output) / factor
                costs = costs + _noise(wmax[c][None, :] * (factor[out_of[c]] if c in out_of else 1.0) / g,
                                       weight_fmt)
            factor[k] = float(GRID[int(np.argmin(costs))])
    return {k: s for k, s in enumerate(factor) if s != 1.0}


def pow2_fit(model: onnx.ModelProto, info: GraphInfo, fits: List[Fit],
             factors: Dict[int, float]) -> Tuple[onnx.ModelProto, Dict]:
    """Apply the factors ({fit index: factor}). Returns the rewritten copy and a report with "channel_scales":
    {tensor: s} (float tensor = new tensor * s, as the other rewrites record it)."""
    scale: Dict[str, np.ndarray] = {}   # initializer -> new value
    clip_bounds: Dict[int, float] = {}  # Clip node -> factor for its bounds

    def rescale(name: str, f: float) -> None:
        v = scale.setdefault(name, info.const(name).astype(np.float64))
        v *= f

    channel_scales = {}
    for k, f in factors.items():
        fit = fits[k]
        for p in fit.producers:
            node = info.nodes[p]
            rescale(node.input[1], f)
            if len(node.input) > 2 and node.input[2]:
                rescale(node.input[2], f)
        for c in fit.clips:
            clip_bounds[c] = f
        for c in fit.readers:
            rescale(info.nodes[c].input[1], 1.0 / f)
        for t in fit.tensors:
            channels = (info.shape.get(t) or [0, 0])[1] or 1
            channel_scales[t] = np.full(channels, 1.0 / f, np.float32)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    for t in g.initializer:
        if t.name in scale:
            t.CopyFrom(numpy_helper.from_array(scale[t.name].astype(np.float32), t.name))
    for i, f in clip_bounds.items():
        node = g.node[i]
        for k in (1, 2):  # opset >= 11: bounds are inputs; each Clip gets its own copies
            if len(node.input) > k and node.input[k]:
                name = f"{node.input[k]}__pow2fit_{i}"
                g.initializer.append(numpy_helper.from_array(
                    (info.const(node.input[k]).astype(np.float64) * f).astype(np.float32), name))
                node.input[k] = name
        for a in node.attribute:  # opset < 11: bounds are attributes
            if a.name in ("min", "max"):
                a.f *= f
    return out, {"tensors": len(channel_scales), "channel_scales": channel_scales}


__all__ = ["find_fits", "choose_factors", "pow2_fit", "Fit"]


class Pow2Fit(Rewrite):
    """After pass 1, dynamic fixed point (8-bit) only: rescale the tensors that can be rescaled exactly so their
    ranges fill their power-of-two grids; their pass-1 statistics are multiplied by the same factors."""

    name = "pow2_fit"

    def enabled(self, state: QuantState) -> bool:
        act = state.scheme.act
        return bool(state.options.pow2_fit) and act.pow2 and act.bits == 8

    def apply(self, state: QuantState) -> Optional[StageResult]:
        stats, info = state.stats, state.info
        fits = find_fits(info, state.plan)
        amax = {name: max(abs(stats.minmax[name][0]), abs(stats.minmax[name][1]))
                for f in fits for name in f.tensors if name in stats.minmax}
        factors = choose_factors(info, fits, amax, state.scheme.act, state.scheme.weight, state.per_channel)
        if not factors:
            return None
        model, report = pow2_fit(state.model, info, fits, factors)
        for name, f in ((t, f) for k, f in factors.items() for t in fits[k].tensors):
            lo, hi = stats.minmax[name]
            stats.minmax[name] = (lo * f, hi * f)
            if name in stats.channel_minmax:
                clo, chi = stats.channel_minmax[name]
                stats.channel_minmax[name] = (clo * f, chi * f)
            if name in stats.channel_mean:
                stats.channel_mean[name] = (stats.channel_mean[name] * f).astype(np.float32)
        scales = report.pop("channel_scales", {})
        state.replace_model(model)
        return StageResult(self.name, report, channel_scales=scales)
