"""Power-of-two range fitting for dynamic fixed point: rescale a tensor so its range fills its grid.

A dynamic_fixed_point scale is a power of two, so a tensor whose largest value is 4.1 gets the grid 2^-4 (up to
7.94) and uses 66 of its 127 positive levels: almost a bit lost. A ReLU6 output (6 of 7.94) loses 0.4 bit.
Multiplying a tensor by a factor f is exact when its producer is a conv followed by at most a ReLU or Clip (the
conv's weights and bias and the clip bounds times f) and all its readers are convs (their weights divided by f).
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
from ..schemes import TensorFormat
from .residual_equalize import _own_consts, _use_count

GRID = np.exp2(np.arange(64) / 64.0)  # candidate factors in [1, 2)
SWEEPS = 3
ACTIVATIONS = ("Relu", "Clip")        # positively homogeneous: act(f x) = f act(x) for f > 0 (Clip bounds x f)


@dataclass
class Fit:
    tensor: str
    producer: int            # the conv making the tensor
    activation: Optional[int]  # its ReLU / Clip, if any
    readers: List[int]       # convs reading the tensor as their input


def find_fits(info: GraphInfo, plan: Plan) -> List[Fit]:
    """The quantization points that can be rescaled exactly (see module doc), in graph order."""
    uses = _use_count(info)
    out = []
    for t in plan.points:
        if len(plan.groups[plan.group_of[t]]) != 1 or t in info.output_set or not info.is_float(t):
            continue
        p = info.producer.get(t)
        if p is None:
            continue
        act = None
        if info.nodes[p].op_type in ACTIVATIONS:
            act, x = p, info.nodes[p].input[0]
            if x in plan.points or info.consumers.get(x) != [p] or x in info.output_set:
                continue
            p = info.producer.get(x)
            if p is None:
                continue
            if info.nodes[act].op_type == "Clip" and not all(info.is_const(b) for b in info.nodes[act].input[1:]
                                                             if b):
                continue
        if info.nodes[p].op_type != "Conv" or not _own_consts(info, p, uses):
            continue
        readers = info.consumers.get(t, [])
        if not readers or not all(info.nodes[c].op_type == "Conv" and list(info.nodes[c].input).index(t) == 0
                                  and list(info.nodes[c].input).count(t) == 1 and _own_consts(info, c, uses)
                                  for c in readers):
            continue
        out.append(Fit(t, p, act, list(readers)))
    return out


def _noise(amax: np.ndarray, fmt: TensorFormat) -> float:
    """Mean relative rounding noise power 1 / levels^2 of symmetric power-of-two grids for maxima ``amax``."""
    amax = np.asarray(amax, np.float64)
    amax = amax[amax > 0]
    if amax.size == 0:
        return 0.0
    levels = amax / np.exp2(np.ceil(np.log2(amax / fmt.qmax)))
    return float(np.mean(1.0 / levels ** 2))


def choose_factors(info: GraphInfo, fits: List[Fit], amax: Dict[str, float], act_fmt: TensorFormat,
                   weight_fmt: TensorFormat, per_channel: bool) -> Dict[str, float]:
    """Factor per fitted tensor (see module doc). ``amax``: the tensors' calibrated absolute maxima."""
    def weight_max(i: int) -> np.ndarray:
        w = np.abs(info.const(info.nodes[i].input[1]))
        return w.reshape(w.shape[0], -1).max(axis=1) if per_channel else np.array([w.max()])

    wmax = {i: weight_max(i) for f in fits for i in [f.producer] + f.readers}
    out_of = {f.producer: f.tensor for f in fits}            # conv -> the fitted tensor it makes
    in_of = {c: f.tensor for f in fits for c in f.readers}   # conv -> the fitted tensor it reads
    factor = {f.tensor: 1.0 for f in fits}

    def conv_noise(i: int, f_in: float, f_out: float) -> float:
        return _noise(wmax[i] * f_out / f_in, weight_fmt)

    for _ in range(SWEEPS):
        for f in fits:
            if amax.get(f.tensor, 0.0) <= 0:
                continue
            f_in = factor.get(in_of.get(f.producer, ""), 1.0)
            costs = [_noise(np.array([amax[f.tensor] * g]), act_fmt) + conv_noise(f.producer, f_in, g)
                     + sum(conv_noise(c, g, factor.get(out_of.get(c, ""), 1.0)) for c in f.readers)
                     for g in GRID]
            factor[f.tensor] = float(GRID[int(np.argmin(costs))])
    return {t: s for t, s in factor.items() if s != 1.0}


def pow2_fit(model: onnx.ModelProto, info: GraphInfo, fits: List[Fit],
             factors: Dict[str, float]) -> Tuple[onnx.ModelProto, Dict]:
    """Apply the factors. Returns the rewritten copy and a report with "channel_scales": {tensor: s}
    (float tensor = new tensor * s, as the other rewrites record it)."""
    scale: Dict[str, np.ndarray] = {}   # initializer -> new value
    clip_bounds: Dict[int, float] = {}  # Clip node -> factor for its bounds

    def rescale(name: str, f: np.ndarray) -> None:
        v = scale.setdefault(name, info.const(name).astype(np.float64))
        v *= f

    channel_scales = {}
    for fit in fits:
        f = factors.get(fit.tensor)
        if f is None:
            continue
        node = info.nodes[fit.producer]
        rescale(node.input[1], np.float64(f))
        if len(node.input) > 2 and node.input[2]:
            rescale(node.input[2], np.float64(f))
        if fit.activation is not None and info.nodes[fit.activation].op_type == "Clip":
            clip_bounds[fit.activation] = f
        for c in fit.readers:
            rescale(info.nodes[c].input[1], np.float64(1.0 / f))
        channels = (info.shape.get(fit.tensor) or [0, 0])[1] or 1
        channel_scales[fit.tensor] = np.full(channels, 1.0 / f, np.float32)
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
