"""openrknn's ranges for the tensors the vendor quantizes and our package does not.

rknn-toolkit2 requantizes some tensors that openrknn's quantizer leaves unquantized inside one fused step: the
output of a depthwise conv before its SiLU (its ConvExSwish takes an int8 pre-activation there), a conv output before
a standalone Sigmoid, the part of a range-split tensor before its remap. Without a range from us it would use its own
calibration; these ranges come from our calibration samples run through our own float graph (the package's graph
with its rewrites, Q/DQ removed), chosen by openrknn:

- a pre-activation (the input of a Sigmoid, or of the Sigmoid and Mul of a SiLU): the range that keeps the
  activation's output closest (squared error over the calibration histogram) to the unquantized one. With the
  package's 'normal' algorithm the upper end stays at the calibrated maximum (as minmax keeps it for every other
  tensor) and only the lower end is searched: below it the activation is flat, so levels spent there are wasted;
  with 'kl_divergence' / 'mmse' (whose packages clip) both ends are searched.
- any other tensor: the package's own algorithm (min/max, or the KL / MSE clipping searches) on its histogram.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import onnx

log = logging.getLogger("openrknn.vendor")

Range = Tuple[float, float]
HIST_BINS = 4096
SEARCH_GRID = 192


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -80.0, 80.0)))


def _silu(x: np.ndarray) -> np.ndarray:
    return x * _sigmoid(x)


ACTIVATIONS: Dict[str, Callable[[np.ndarray], np.ndarray]] = {"silu": _silu, "sigmoid": _sigmoid}
# the lower end never cuts into the part of the activation that is not flat: SiLU's dip down to its minimum at
# x = -1.2785 (its output's own range starts there, so our quantizer keeps that value representable)
LOWEST_CUT = {"silu": -1.2784645427610738, "sigmoid": 0.0}


@dataclass
class ExtraRanges:
    ranges: Dict[str, Range] = field(default_factory=dict)  # every float tensor of the graph we have a range for
    preactivations: Dict[str, str] = field(default_factory=dict)  # tensor -> 'silu' | 'sigmoid'
    samples: int = 0
    seconds: float = 0.0


def _int8():
    from ..quant.schemes import TensorFormat

    return TensorFormat(8, True, False)


def preactivations(model: onnx.ModelProto) -> Dict[str, str]:
    """Inputs of the graph's Sigmoids: 'silu' when the same tensor is multiplied by the sigmoid (x * sigmoid(x)),
    else 'sigmoid'."""
    cons: Dict[str, List[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            cons.setdefault(i, []).append(n)
    out = {}
    for n in model.graph.node:
        if n.op_type != "Sigmoid":
            continue
        x = n.input[0]
        silu = any(c.op_type == "Mul" and n.output[0] in c.input and x in c.input for c in cons.get(x, []))
        out[x] = "silu" if silu else "sigmoid"
    return out


def _fake_quant(x: np.ndarray, lo: np.ndarray, hi: float) -> np.ndarray:
    """x (values, last axis) on the vendor's asymmetric int8 grid of each range [lo[k], hi] (rows); 0 stays exact,
    as qparams widens every range to hold it."""
    from ..quant.schemes import qparams

    fmt = _int8()
    s, z = qparams(np.asarray(lo, np.float64), np.full(np.shape(lo), hi, np.float64), fmt)
    s, z = s.astype(np.float64)[:, None], z.astype(np.float64)[:, None]
    return (np.clip(np.round(x[None, :] / s) + z, fmt.qmin, fmt.qmax) - z) * s


def activation_range(hist: np.ndarray, lo: float, hi: float, act: str, clip_top: bool,
                     grid: int = SEARCH_GRID) -> Range:
    """The int8 range of a pre-activation whose activation output stays closest to the unquantized one.

    hist: counts over [lo, hi] (equal bins). The lower end is searched on a grid between lo and 0 (and the upper end
    between hi / 2 and hi when clip_top); error = sum over bins of count * (f(q(x)) - f(x))^2."""
    if not hi > lo:
        return lo, hi
    f = ACTIVATIONS[act]
    edges = np.linspace(lo, hi, hist.size + 1)
    c = (edges[:-1] + edges[1:]) / 2
    w = np.asarray(hist, np.float64)
    keep = w > 0
    c, w = c[keep], w[keep]
    ref = f(c)
    top = min(LOWEST_CUT[act], 0.0)
    los = np.linspace(lo, top, grid) if lo < top else np.array([lo])
    his = np.linspace(hi, hi / 2, grid // 2, endpoint=False) if clip_top and hi > 0 else np.array([hi])
    best = (np.inf, lo, hi)
    for b in his:
        err = (f(_fake_quant(c, los, b)) - ref[None, :]) ** 2 @ w
        k = int(np.argmin(err))
        if err[k] < best[0]:
            best = (float(err[k]), float(los[k]), float(b))
    return best[1], best[2]


def float_graph(package) -> onnx.ModelProto:
    """The package's graph with its rewrites and its weights on our grid, Q/DQ removed (tensor names kept), in the
    package's own feed layout (so calibration samples feed it as they feed our simulator)."""
    from .prepare import strip_qdq

    model = onnx.load_from_string(package.model_bytes)
    return strip_qdq(model)


def compute(package, samples: Sequence[Tuple[str, List[np.ndarray]]], skip: Sequence[str] = (),
            progress: bool = False) -> ExtraRanges:
    """Ranges for every float tensor of the package's float graph not in `skip` (the tensors our package already
    quantizes), from `samples` ([(stem, [array per input])], NHWC as read_samples returns them)."""
    from ..quant.algorithms.activations import kl_range, mmse_range
    from ..quant.calibrate import Stats, collect_histograms, collect_minmax

    t0 = time.perf_counter()
    model = float_graph(package)
    pre = preactivations(model)
    algorithm = (package.metadata.get("quantization") or {}).get("algorithm") or "normal"
    skip = set(skip)
    names = [o for n in model.graph.node for o in n.output if o and o not in skip]
    feeds = [{m["name"]: a.astype(np.float32) for m, a in zip(package.metadata["inputs"], arrays)}
             for _stem, arrays in samples]
    stats = Stats()
    collect_minmax(model, names, feeds, {}, stats, progress=progress)
    wanted = [t for t in names if t in pre or algorithm != "normal"]
    wanted = [t for t in wanted if stats.minmax[t][1] > stats.minmax[t][0]]
    if wanted:
        collect_histograms(model, wanted, feeds, stats, bins=HIST_BINS, progress=progress)
    fmt = _int8()
    out = ExtraRanges(preactivations={t: k for t, k in pre.items() if t in stats.minmax}, samples=len(feeds))
    for t in names:
        lo, hi = stats.minmax[t]
        if t in stats.hist and t in pre:
            lo, hi = activation_range(stats.hist[t], lo, hi, pre[t], clip_top=algorithm != "normal")
        elif t in stats.hist and algorithm == "kl_divergence":
            lo, hi = kl_range(stats.hist[t], lo, hi, fmt)
        elif t in stats.hist and algorithm == "mmse":
            lo, hi = mmse_range(stats.hist[t], lo, hi, fmt)
        out.ranges[t] = (float(lo), float(hi))
    out.seconds = time.perf_counter() - t0
    log.info("vendor: openrknn ranges for %d tensors the package leaves unquantized (%d pre-activations) from %d "
             "samples in %.1f s", len(out.ranges), len(out.preactivations), out.samples, out.seconds)
    return out
