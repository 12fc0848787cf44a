"""The scale math of quantization: value ranges -> scales and zero points, and (de)quantization of arrays. The
dtype table itself (TensorFormat, Scheme, SCHEMES) lives in openrknn/targets/schemes.py."""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from ..targets.schemes import SCHEMES, Scheme, TensorFormat, get_scheme

__all__ = ["SCHEMES", "Scheme", "TensorFormat", "get_scheme", "qparams", "fixed_point_fraction_length",
           "quantize_array", "dequantize_array", "fake_quantize"]


def _pow2_ceil(x: np.ndarray) -> np.ndarray:
    return np.exp2(np.ceil(np.log2(x)))


# The scale of an empty range. Any scale keeps its zeros exact; a float32 denormal-sized one (the old floor, 1e-32)
# made every product with it underflow: the next conv's input x weight scale, TFLite's requantization multipliers
# (XNNPACK refuses such a layer). This one still maps anything the calibration never saw to about zero.
EMPTY_SCALE = 2.0 ** -20


def qparams(lo: np.ndarray, hi: np.ndarray, fmt: TensorFormat) -> Tuple[np.ndarray, np.ndarray]:
    """Scale and nominal zero point for ranges [lo, hi] (arrays, elementwise). The range is widened to hold 0 so
    that zero (padding, ReLU) is exact; an empty range (a ReLU dead on every calibration sample) gets EMPTY_SCALE."""
    lo = np.minimum(np.asarray(lo, np.float64), 0.0)
    hi = np.maximum(np.asarray(hi, np.float64), 0.0)
    empty = (hi - lo) <= np.finfo(np.float32).tiny * 2 ** 20 * fmt.levels
    hi = np.where(empty, EMPTY_SCALE * fmt.levels / (2 if fmt.symmetric else 1), hi)
    tiny = np.finfo(np.float32).tiny * 2 ** 20
    if fmt.symmetric:
        amax = np.maximum(np.maximum(-lo, hi), tiny)
        scale = amax / fmt.qmax
        if fmt.pow2:
            scale = _pow2_ceil(scale)
        zp = np.zeros_like(scale)
    else:
        scale = np.maximum((hi - lo) / fmt.levels, tiny)
        zp = np.clip(np.round(fmt.qmin - lo / scale), fmt.qmin, fmt.qmax)
    return scale.astype(np.float32), zp.astype(np.int64)


def whole_reciprocal_scale(scale: float) -> float:
    """The float32 scale nearest 1/N, N = floor(1/scale), whose reciprocal computed in float32 floors to N: the
    range widens by less than 1/N (or narrows by a float32 rounding when scale is 1/N already). onnxruntime's int8
    Softmax kernel, the simulator's, multiplies the probabilities by floor(1 / scale) instead of dividing by the
    scale: with a calibrated 0.0039106 it scaled by 255 for 255.71, and 1.7% of a recognizer's probabilities came out
    one level low. On such a scale the two agree."""
    n = np.floor(1.0 / np.float64(scale))
    if n < 1 or n >= 2 ** 24:
        return float(scale)
    s = np.float32(1.0 / n)
    while np.floor(np.float32(1.0) / s) < n:
        s = np.nextafter(s, np.float32(0.0), dtype=np.float32)
    return float(s)


def fixed_point_fraction_length(scale: np.ndarray) -> np.ndarray:
    """Dynamic fixed point: the 'fl' the vendor records, scale = 2^-fl."""
    return (-np.round(np.log2(scale))).astype(np.int64)


def quantize_array(x: np.ndarray, scale: np.ndarray, zp: np.ndarray, fmt: TensorFormat,
                   axis: Optional[int] = None) -> np.ndarray:
    """Nominal integer values (int64) of x; scale/zp broadcast along ``axis`` when per-channel."""
    s, z = _broadcast(x, scale, zp, axis)
    return np.clip(np.round(x / s) + z, fmt.qmin, fmt.qmax).astype(np.int64)


def dequantize_array(q: np.ndarray, scale: np.ndarray, zp: np.ndarray, axis: Optional[int] = None) -> np.ndarray:
    s, z = _broadcast(q, scale, zp, axis)
    return ((q - z) * s).astype(np.float32)


def fake_quantize(x: np.ndarray, scale: np.ndarray, zp: np.ndarray, fmt: TensorFormat,
                  axis: Optional[int] = None) -> np.ndarray:
    return dequantize_array(quantize_array(x, scale, zp, fmt, axis), scale, zp, axis)


def _broadcast(x: np.ndarray, scale, zp, axis: Optional[int]):
    scale = np.asarray(scale, np.float64)
    zp = np.asarray(zp, np.float64)
    if axis is None or scale.ndim == 0:
        return scale.reshape(()) if scale.size == 1 else scale, zp.reshape(()) if zp.size == 1 else zp
    shape = [1] * x.ndim
    shape[axis] = -1
    return scale.reshape(shape), zp.reshape(shape)
