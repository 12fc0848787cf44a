"""Quantized dtypes as data, and the pure functions that turn value ranges into scales and zero points.

Every scheme says how activations and weights are represented on the NPU (the *nominal* type recorded in the
container). The simulator's QDQ graph may store a tensor in a different but numerically identical type: an
asymmetric int8 tensor with zero point z is exactly a uint8 tensor with zero point z + 128, and onnxruntime runs
uint8-activation x int8-weight kernels 2.5-3x faster than int8 x int8 (see FACTS.md), so activations are stored as
uint8 / uint16 and weights as int8 / int16 whatever their nominal signedness.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np

from ..errors import ConfigError


@dataclass(frozen=True)
class TensorFormat:
    """How one class of tensors is quantized: bit width, signedness, symmetry, power-of-two scales."""

    bits: int
    signed: bool
    symmetric: bool
    pow2: bool = False

    @property
    def qmin(self) -> int:
        if not self.signed:
            return 0
        # symmetric signed formats use the restricted range [-(2^(b-1)-1), 2^(b-1)-1] so that -x is representable
        return -(1 << (self.bits - 1)) + (1 if self.symmetric else 0)

    @property
    def qmax(self) -> int:
        return (1 << self.bits) - 1 if not self.signed else (1 << (self.bits - 1)) - 1

    @property
    def nominal(self) -> str:
        return f"{'int' if self.signed else 'uint'}{self.bits}"

    @property
    def storage_shift(self) -> int:
        """What to add to a nominal zero point to store it as the unsigned type of the same width (activations)."""
        return (1 << (self.bits - 1)) if self.signed else 0

    @property
    def levels(self) -> int:
        return self.qmax - self.qmin


@dataclass(frozen=True)
class Scheme:
    name: str
    act: Optional[TensorFormat]
    weight: Optional[TensorFormat]
    default_method: str  # 'layer' (per-tensor weights) or 'channel' (per-output-channel weights)
    float16: bool = False


SCHEMES: Dict[str, Scheme] = {
    # RKNPU1 (RK1808, RV1109/1126): per-layer hardware, so 'layer' is the faithful default.
    "asymmetric_quantized-u8": Scheme("asymmetric_quantized-u8", TensorFormat(8, False, False),
                                      TensorFormat(8, False, False), "layer"),
    "dynamic_fixed_point-i8": Scheme("dynamic_fixed_point-i8", TensorFormat(8, True, True, True),
                                     TensorFormat(8, True, True, True), "layer"),
    "dynamic_fixed_point-i16": Scheme("dynamic_fixed_point-i16", TensorFormat(16, True, True, True),
                                      TensorFormat(16, True, True, True), "layer"),
    # RKNPU2: per-channel symmetric weights, per-tensor asymmetric activations.
    "w8a8": Scheme("w8a8", TensorFormat(8, True, False), TensorFormat(8, True, True), "channel"),
    "w8a16": Scheme("w8a16", TensorFormat(16, True, False), TensorFormat(8, True, True), "channel"),
    "w16a16i": Scheme("w16a16i", TensorFormat(16, True, False), TensorFormat(16, True, True), "channel"),
    "float16": Scheme("float16", None, None, "layer", float16=True),
}


def get_scheme(dtype: str) -> Scheme:
    try:
        return SCHEMES[dtype]
    except KeyError:
        raise ConfigError("quantized_dtype", dtype, list(SCHEMES)) from None


def _pow2_ceil(x: np.ndarray) -> np.ndarray:
    return np.exp2(np.ceil(np.log2(x)))


def qparams(lo: np.ndarray, hi: np.ndarray, fmt: TensorFormat) -> Tuple[np.ndarray, np.ndarray]:
    """Scale and nominal zero point for ranges [lo, hi] (arrays, elementwise). The range is widened to hold 0 so
    that zero (padding, ReLU) is exact; a degenerate range gets a tiny positive scale."""
    lo = np.minimum(np.asarray(lo, np.float64), 0.0)
    hi = np.maximum(np.asarray(hi, np.float64), 0.0)
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
