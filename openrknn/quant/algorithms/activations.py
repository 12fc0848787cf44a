"""Activation clipping ranges from a fixed-range histogram: KL divergence and MSE searches, vectorised.

Both take ``hist`` (counts in equal bins over [lo, hi]) and return the chosen [lo', hi'] inside [lo, hi].
A tensor whose negative side is small next to its positive side (ReLU, SiLU, sigmoid) keeps its lower end and only
the upper end is searched; a two-sided tensor is folded to |x| and clipped symmetrically.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

from ..schemes import TensorFormat, qparams

ONE_SIDED = 1 / 16  # negative extent below 1/16 of the positive one: search the upper end only
# The KL search alone clips the rare large activations that carry a detector's objects (on YOLOX-nano w8a8 it lost a
# fifth of the detections without this floor, and MobileNetV2 gains from it too): its threshold never clips more
# than this share of the calibration values.
KL_MIN_COVERAGE = 0.9999


def _centers(lo: float, hi: float, nb: int) -> np.ndarray:
    w = (hi - lo) / nb
    return lo + (np.arange(nb) + 0.5) * w


def _fold(hist: np.ndarray, lo: float, hi: float) -> Tuple[np.ndarray, float]:
    """|x| histogram over [0, amax] with the same number of bins."""
    nb = hist.size
    amax = max(-lo, hi)
    c = np.abs(_centers(lo, hi, nb))
    idx = np.minimum((c / amax * nb).astype(np.int64), nb - 1)
    return np.bincount(idx, weights=hist.astype(np.float64), minlength=nb), amax


def _kl_threshold_bins(hist: np.ndarray, levels: int, step: int = 0, candidates: int = 128) -> int:
    """TensorRT-style search: the number of leading bins whose clipped distribution, requantized to ``levels``
    bins, stays closest (KL) to the reference.

    Every candidate at once: within one level the requantized distribution q is flat over the non-empty bins, so
    KL(p || q) = sum p log p - sum_levels (p's mass in the level) log q_level, from prefix sums of h and h log h;
    only the last kept bin, which takes the clipped tail, is a term of its own. (The same values as summing bin by
    bin, to ~1e-14; 4x faster on 2048 bins.)"""
    hist = np.asarray(hist, np.float64)
    nb = hist.size
    if nb <= levels or hist.sum() == 0:
        return nb
    step = step or max(1, (nb - levels) // candidates)
    nz = hist > 0
    csum = np.concatenate([[0.0], np.cumsum(hist)])
    cnz = np.concatenate([[0.0], np.cumsum(nz)])
    hlogh = np.concatenate([[0.0], np.cumsum(np.where(nz, hist * np.log(np.where(nz, hist, 1.0)), 0.0))])
    total = csum[-1]
    cand = np.arange(levels, nb + 1, step)                                   # kept bins, one row each
    edges = (np.arange(levels + 1)[None, :] * cand[:, None]) // levels       # bins of each level
    sums = csum[edges[:, 1:]] - csum[edges[:, :-1]]
    cnts = cnz[edges[:, 1:]] - cnz[edges[:, :-1]]
    avg = np.divide(sums, cnts, out=np.zeros_like(sums), where=cnts > 0)
    kept = csum[cand]                            # q's total (the clipped tail is only in p's last bin)
    last = hist[cand - 1]
    log_q = np.log(np.maximum(avg / np.maximum(kept, 1e-30)[:, None], 1e-12))
    body = sums.copy()
    body[:, -1] -= last                          # the last bin is always in the last level
    p_log_p = (hlogh[cand - 1] - csum[cand - 1] * np.log(total)) / total
    p_log_q = np.where(body > 0, body * log_q, 0.0).sum(1) / total
    p_last = (last + total - kept) / total
    q_last = np.where(last > 0, np.exp(log_q[:, -1]), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_last = np.where(p_last > 0, p_last * np.log(p_last / np.maximum(q_last, 1e-12)), 0.0)
    kl = p_log_p - p_log_q + t_last
    # the first of the (near-)equal minima, as a bin-by-bin search that keeps only strict improvements picks it
    return int(cand[int(np.flatnonzero(kl <= kl.min() + 1e-12)[0])])


def _coverage_bins(hist: np.ndarray, share: float) -> int:
    """The number of leading bins that hold ``share`` of the histogram's counts."""
    c = np.cumsum(np.asarray(hist, np.float64))
    if c[-1] <= 0:
        return hist.size
    return min(int(np.searchsorted(c, share * c[-1])) + 1, hist.size)


def _kl_bins(hist: np.ndarray, levels: int, candidates: int = 128) -> int:
    return max(_kl_threshold_bins(hist, levels, candidates=candidates), _coverage_bins(hist, KL_MIN_COVERAGE))


def kl_range(hist: np.ndarray, lo: float, hi: float, fmt: TensorFormat, candidates: int = 128
             ) -> Tuple[float, float]:
    """``candidates``: how many clipping thresholds the KL search tries (evenly spaced)."""
    nb = hist.size
    if hi <= lo:
        return lo, hi
    if not fmt.symmetric and lo >= -ONE_SIDED * hi:
        i = _kl_bins(hist, fmt.levels, candidates)
        return lo, lo + (hi - lo) * i / nb
    if not fmt.symmetric and hi <= -ONE_SIDED * lo:
        i = _kl_bins(hist[::-1], fmt.levels, candidates)
        return hi - (hi - lo) * i / nb, hi
    folded, amax = _fold(hist, lo, hi)
    i = _kl_bins(folded, (fmt.levels + 1) // 2, candidates)
    t = amax * i / nb
    return max(lo, -t), min(hi, t)


def mse_of_ranges(hist: np.ndarray, lo: float, hi: float, clo: np.ndarray, chi: np.ndarray,
                  fmt: TensorFormat) -> np.ndarray:
    """Expected squared error of quantizing the histogram with each candidate range [clo, chi] (arrays):
    clipping error from prefix sums, rounding error as step^2 / 12 per value inside the range."""
    c = _centers(lo, hi, hist.size)
    h = np.asarray(hist, np.float64)
    s0 = np.concatenate([[0.0], np.cumsum(h)])
    s1 = np.concatenate([[0.0], np.cumsum(h * c)])
    s2 = np.concatenate([[0.0], np.cumsum(h * c * c)])
    scale, zp = qparams(clo, chi, fmt)
    scale = scale.astype(np.float64)
    lo_eff = (fmt.qmin - zp) * scale
    hi_eff = (fmt.qmax - zp) * scale
    kb = np.searchsorted(c, lo_eff)               # bins [0, kb) clip to lo_eff
    ka = np.searchsorted(c, hi_eff, side="right")  # bins [ka, n) clip to hi_eff
    below = s2[kb] - 2 * lo_eff * s1[kb] + lo_eff ** 2 * s0[kb]
    above = (s2[-1] - s2[ka]) - 2 * hi_eff * (s1[-1] - s1[ka]) + hi_eff ** 2 * (s0[-1] - s0[ka])
    inside = (s0[ka] - s0[kb]) * scale ** 2 / 12.0
    return below + above + inside


def mmse_range(hist: np.ndarray, lo: float, hi: float, fmt: TensorFormat, grid: int = 96) -> Tuple[float, float]:
    if hi <= lo:
        return lo, hi
    r = np.linspace(1.0 / grid, 1.0, grid)
    if fmt.symmetric or (lo < -ONE_SIDED * hi and hi > -ONE_SIDED * lo):
        if fmt.symmetric:
            amax = max(-lo, hi)
            clo, chi = -amax * r, amax * r
        else:  # two-sided asymmetric: search both ends on a grid
            a, b = np.meshgrid(r, r, indexing="ij")
            clo, chi = (lo * a).ravel(), (hi * b).ravel()
    elif lo >= -ONE_SIDED * hi:
        clo, chi = np.full(grid, lo), hi * r
    else:
        clo, chi = lo * r, np.full(grid, hi)
    err = mse_of_ranges(hist, lo, hi, clo, chi, fmt)
    k = int(np.argmin(err))
    return float(max(clo[k], lo)), float(min(chi[k], hi))


# --- pre-activations: a conv output the chip requantizes before its activation (plan.py) -------------------------
def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -80.0, 80.0)))


def _silu(x: np.ndarray) -> np.ndarray:
    return x * _sigmoid(x)


def _hardswish(x: np.ndarray) -> np.ndarray:
    return x * np.clip(x + 3.0, 0.0, 6.0) / 6.0


ACTIVATIONS = {"silu": _silu, "sigmoid": _sigmoid, "hardswish": _hardswish}
# the lower end never cuts into the part of the activation that is not flat: SiLU's dip down to its minimum at
# x = -1.2785 (its output's own range starts there, so the output's quantizer keeps that value representable);
# HardSwish is flat (zero) below -3
LOWEST_CUT = {"silu": -1.2784645427610738, "sigmoid": 0.0, "hardswish": -3.0}
PRE_ACTIVATION_GRID = 192
PRE_ACTIVATION_BINS = 1024  # the search's histogram resolution (finer histograms are summed down to it)


def _sigmoid_into(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """_sigmoid(x) written into ``out``: the same operations in the same order, so the same bits."""
    np.clip(x, -80.0, 80.0, out=out)
    np.negative(out, out=out)
    np.exp(out, out=out)
    np.add(1.0, out, out=out)
    return np.divide(1.0, out, out=out)


def _silu_into(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    return np.multiply(x, _sigmoid_into(x, out), out=out)


def _hardswish_into(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """_hardswish(x) written into ``out``: the same operations in the same order, so the same bits."""
    np.add(x, 3.0, out=out)
    np.clip(out, 0.0, 6.0, out=out)
    np.multiply(x, out, out=out)
    return np.divide(out, 6.0, out=out)


ACTIVATIONS_INTO = {"silu": _silu_into, "sigmoid": _sigmoid_into, "hardswish": _hardswish_into}


class _RangeErrors:
    """Weighted squared error of an activation on the grid of each of a set of ranges, over one histogram.

    Bins are equal and every bin is kept (an empty one adds exact zeros to the prefix sums), so the bins that round
    to one level form a run found from the level's rounding threshold by arithmetic, corrected by one step each way
    to what a binary search gives; each range then costs O(levels) from prefix sums of w, w ref and w ref^2, with
    ref = f(bin centre): sum over the level of w (f_l - ref)^2 = f_l^2 W - 2 f_l R1 + R2.
    Every array is allocated once per search and reused for each upper end: fresh arrays of this size on every
    step cost more in page faults than the arithmetic (YOLOX-nano: 1.2 million faults in its 112 searches)."""

    def __init__(self, hist: np.ndarray, lo: float, hi: float, act: str, fmt: TensorFormat, rows: int):
        self.f, self.fmt, self.lo = ACTIVATIONS_INTO[act], fmt, lo
        self.n = hist.size
        self.bw = (hi - lo) / hist.size
        c = _centers(lo, hi, hist.size)
        ref = ACTIVATIONS[act](c)
        self.sums = [np.concatenate([[0.0], np.cumsum(v)]) for v in (hist, hist * ref, hist * ref * ref)]
        self.c_left = np.concatenate([[-np.inf], c, [np.inf]])  # c_left[k] = c[k - 1]
        self.c_at = self.c_left[1:]                            # c_at[k] = c[k], +inf past the end
        levels = fmt.qmax - fmt.qmin + 1
        self.levels = np.arange(fmt.qmin, fmt.qmax + 1, dtype=np.float64)[None, :]
        shape = (rows, levels)
        self.x, self.f_levels, self.a, self.b = (np.empty(shape) for _ in range(4))
        self.parts = [np.empty(shape) for _ in range(3)]
        self.t, self.fi, self.g = (np.empty((rows, levels - 1)) for _ in range(3))
        self.hit = np.empty((rows, levels - 1), bool)
        self.bounds = np.empty((rows, levels + 1), np.int64)
        self.bounds[:, 0], self.bounds[:, -1] = 0, self.n
        self.gathered = np.empty((rows, levels + 1))

    def __call__(self, los: np.ndarray, his: np.ndarray) -> np.ndarray:
        s, z = qparams(los.astype(np.float64), his.astype(np.float64), self.fmt)
        s, z = s.astype(np.float64)[:, None], z.astype(np.float64)[:, None]
        lv, x, t, fi = self.levels, self.x, self.t, self.fi
        np.subtract(lv, z, out=x)
        np.multiply(x, s, out=x)
        f = self.f(x, self.f_levels)
        # first bin of each level above the lowest: round(c / s) + z >= level  <=>  c >= (level - z - 0.5) s
        np.subtract(lv[:, 1:], z, out=t)
        np.subtract(t, 0.5, out=t)
        np.multiply(t, s, out=t)
        first = self.bounds[:, 1:-1]
        np.subtract(t, self.lo, out=fi)
        np.divide(fi, self.bw, out=fi)
        np.subtract(fi, 0.5, out=fi)
        np.ceil(fi, out=fi)
        np.clip(fi, 0, self.n, out=fi)
        np.copyto(first, fi, casting="unsafe")
        np.take(self.c_left, first, out=self.g, mode="clip")   # c[first - 1] >= t: one bin further left
        np.greater_equal(self.g, t, out=self.hit)
        np.subtract(first, self.hit, out=first, casting="unsafe")
        np.take(self.c_at, first, out=self.g, mode="clip")     # c[first] < t: one bin further right
        np.less(self.g, t, out=self.hit)
        np.add(first, self.hit, out=first, casting="unsafe")
        for v, part in zip(self.sums, self.parts):
            np.take(v, self.bounds, out=self.gathered, mode="clip")
            np.subtract(self.gathered[:, 1:], self.gathered[:, :-1], out=part)
        n, r1, r2 = self.parts
        a, b = self.a, self.b
        np.multiply(f, f, out=a)
        np.multiply(a, n, out=a)
        np.multiply(2.0, f, out=b)
        np.multiply(b, r1, out=b)
        np.subtract(a, b, out=a)
        np.add(a, r2, out=a)
        return a.sum(1)


def activation_range(hist: np.ndarray, lo: float, hi: float, act: str, clip_top: bool, fmt: TensorFormat,
                     grid: int = PRE_ACTIVATION_GRID) -> Tuple[float, float]:
    """The range of a pre-activation whose activation output stays closest to the unquantized one.

    hist: counts over [lo, hi] (equal bins). Levels below the flat part of the activation are wasted, so the lower
    end is searched on a grid between lo and the activation's flat point; the upper end stays at hi (as min/max
    keeps it for every other tensor) unless clip_top (kl_divergence / mmse, whose other ranges clip), then it is
    searched between hi / 2 and hi. Error = sum over bins of count * (f(q(x)) - f(x))^2."""
    if not hi > lo:
        return lo, hi
    hist = np.asarray(hist, np.float64)
    if hist.size > PRE_ACTIVATION_BINS and hist.size % PRE_ACTIVATION_BINS == 0:
        hist = hist.reshape(PRE_ACTIVATION_BINS, -1).sum(1)
    top = min(LOWEST_CUT[act], 0.0)
    los = np.linspace(lo, top, grid) if lo < top else np.array([lo])
    his = np.linspace(hi, hi / 2, grid // 8, endpoint=False) if clip_top and hi > 0 else np.array([hi])
    errors = _RangeErrors(hist, lo, hi, act, fmt, len(los))
    best = (np.inf, lo, hi)
    for b in his:
        err = errors(los, np.full(los.shape, b))
        k = int(np.argmin(err))
        if err[k] < best[0]:
            best = (float(err[k]), float(los[k]), float(b))
    return best[1], best[2]
