"""Weight ranges: min/max or MSE-optimal clipping, per output channel or per tensor, vectorised over channels."""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from ..schemes import TensorFormat, fake_quantize, qparams


def channel_view(w: np.ndarray, axis: Optional[int]) -> np.ndarray:
    """[C, K] view with the channel axis first (C = 1 for per-tensor)."""
    if axis is None:
        return w.reshape(1, -1)
    return np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)


def minmax_range(w: np.ndarray, axis: Optional[int]) -> Tuple[np.ndarray, np.ndarray]:
    v = channel_view(w, axis)
    return v.min(axis=1), v.max(axis=1)


def mmse_range(w: np.ndarray, axis: Optional[int], fmt: TensorFormat, candidates: int = 40,
               min_ratio: float = 0.3) -> Tuple[np.ndarray, np.ndarray]:
    """Per channel, the shrink factor of the min/max range (min_ratio..1) with the least squared rounding +
    clipping error; all candidates of all channels are evaluated in one vectorised pass (chunked by memory)."""
    v = channel_view(w, axis).astype(np.float32)
    lo, hi = v.min(axis=1), v.max(axis=1)
    ratios = np.linspace(min_ratio, 1.0, candidates, dtype=np.float32)
    best_err = np.full(v.shape[0], np.inf)
    best = np.ones(v.shape[0], np.float32)
    chunk = max(1, int(2e7 // max(v.size, 1)))
    for start in range(0, candidates, chunk):
        r = ratios[start:start + chunk]                                   # [R]
        clo, chi = lo[None, :] * r[:, None], hi[None, :] * r[:, None]     # [R, C]
        scale, zp = qparams(clo, chi, fmt)
        s = scale[..., None].astype(np.float32)
        z = zp[..., None].astype(np.float32)
        q = np.clip(np.round(v[None] / s) + z, fmt.qmin, fmt.qmax)
        err = np.square((q - z) * s - v[None]).sum(axis=2)               # [R, C]
        k = err.argmin(axis=0)
        e = err[k, np.arange(v.shape[0])]
        better = e < best_err
        best_err[better] = e[better]
        best[better] = r[k[better]]
    return lo * best, hi * best


# A channel whose weights span less than this share of the layer's widest channel gets that much of a range: its
# output is below float32's resolution of the other channels' anyway, and a scale of 1e-18 (a squeeze-excite
# channel trained to ~1e-16) makes input x weight scale underflow and requantization multipliers that TFLite's
# XNNPACK refuses ("failed to prepare"). The channel's integers only get coarser.
CHANNEL_FLOOR = 2.0 ** -20


def quantize_weight(w: np.ndarray, axis: Optional[int], fmt: TensorFormat, method: str = "minmax"):
    """(q nominal ints, scale, zero_point) of w; per channel along ``axis`` or per tensor when axis is None."""
    lo, hi = mmse_range(w, axis, fmt) if method == "mmse" else minmax_range(w, axis)
    if axis is not None and np.size(hi) > 1:
        width = np.maximum(hi, -lo) if fmt.symmetric else np.maximum(hi, 0) - np.minimum(lo, 0)
        floor = width.max() * CHANNEL_FLOOR
        hi = np.where(width < floor, np.maximum(hi, floor), hi)
    scale, zp = qparams(lo, hi, fmt)
    if axis is None:
        scale, zp = scale.reshape(()), zp.reshape(())
    q = np.clip(np.round(w / _bc(scale, w, axis)) + _bc(zp, w, axis), fmt.qmin, fmt.qmax).astype(np.int64)
    return q, scale, zp


def dequantized(q: np.ndarray, scale: np.ndarray, zp: np.ndarray, axis: Optional[int]) -> np.ndarray:
    return ((q - _bc(zp, q, axis)) * _bc(scale, q, axis)).astype(np.float32)


def _bc(a: np.ndarray, like: np.ndarray, axis: Optional[int]) -> np.ndarray:
    a = np.asarray(a)
    if axis is None or a.ndim == 0:
        return a
    shape = [1] * like.ndim
    shape[axis] = -1
    return a.reshape(shape)


__all__ = ["channel_view", "minmax_range", "mmse_range", "quantize_weight", "dequantized", "fake_quantize"]
