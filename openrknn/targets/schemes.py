"""The one table of quantized dtypes: what each config(quantized_dtype=...) value means for the tensors the NPU
stores (activation and weight formats), its default weight granularity, and the MAC mode it runs in. The quantizer
(quant/schemes.py adds the scale math), the checker and the cost model all read it.

Every format is the *nominal* type recorded in the container. The simulator's QDQ graph may store a tensor in a
different but numerically identical type: an asymmetric int8 tensor with zero point z is exactly a uint8 tensor with
zero point z + 128, and onnxruntime runs uint8-activation x int8-weight kernels much faster than int8 x int8 (see
FACTS.md), so activations are stored as uint8 / uint16 and weights as int8 / int16 whatever their nominal signedness.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Dict, Optional

from ..errors import ConfigError

DTYPE_BYTES: Mapping[str, float] = {
    "int4": 0.5, "uint8": 1, "int8": 1, "int16": 2, "uint16": 2, "float16": 2, "bfloat16": 2,
    "int32": 4, "float32": 4, "int64": 8, "bool": 1, "float64": 8, "uint32": 4, "uint64": 8,
}


def mac_class(dtype: str) -> str:
    """The multiplier-array mode that a tensor dtype runs in (uint8 and int8 share the 8-bit array)."""
    return {"uint8": "int8", "int8": "int8", "int4": "int4", "int16": "int16", "uint16": "int16",
            "float16": "float16", "bfloat16": "bfloat16"}.get(dtype, "float16")


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
    """act / weight: None = float16 (no quantization). default_method: 'layer' (one weight scale per tensor) or
    'channel' (one per output channel), the hardware's granularity. simulated: openrknn's quantizer makes it."""

    name: str
    act: Optional[TensorFormat]
    weight: Optional[TensorFormat]
    default_method: str
    float16: bool = False
    simulated: bool = True

    @property
    def act_dtype(self) -> str:
        return self.act.nominal if self.act else "float16"

    @property
    def weight_dtype(self) -> str:
        return self.weight.nominal if self.weight else "float16"

    @property
    def per_channel(self) -> bool:
        return self.default_method == "channel"

    @property
    def mac(self) -> str:
        """The multiplier-array mode: the wider operand sets it (w8a16 multiplies 16-bit activations)."""
        a, w = self.act_dtype, self.weight_dtype
        return mac_class(a) if DTYPE_BYTES[a] >= DTYPE_BYTES[w] else mac_class(w)


_U8 = TensorFormat(8, False, False)
SCHEMES: Dict[str, Scheme] = {
    # RKNPU1 (RK1808, RV1109/1126): per-layer hardware, so 'layer' is the faithful default.
    "asymmetric_quantized-u8": Scheme("asymmetric_quantized-u8", _U8, _U8, "layer"),
    "dynamic_fixed_point-i8": Scheme("dynamic_fixed_point-i8", TensorFormat(8, True, True, True),
                                     TensorFormat(8, True, True, True), "layer"),
    "dynamic_fixed_point-i16": Scheme("dynamic_fixed_point-i16", TensorFormat(16, True, True, True),
                                      TensorFormat(16, True, True, True), "layer"),
    # RKNPU2: per-channel symmetric weights, per-tensor asymmetric activations.
    "w8a8": Scheme("w8a8", TensorFormat(8, True, False), TensorFormat(8, True, True), "channel"),
    "w8a16": Scheme("w8a16", TensorFormat(16, True, False), TensorFormat(8, True, True), "channel"),
    "w16a16i": Scheme("w16a16i", TensorFormat(16, True, False), TensorFormat(16, True, True), "channel"),
    # 4-bit weights (RK3576 / RK3588 toolkit options): the cost model knows them, the quantizer does not make them.
    "w4a16": Scheme("w4a16", TensorFormat(16, True, False), TensorFormat(4, True, True), "channel", simulated=False),
    "w4a8": Scheme("w4a8", TensorFormat(8, True, False), TensorFormat(4, True, True), "channel", simulated=False),
    "float16": Scheme("float16", None, None, "layer", float16=True),
}
FLOAT16 = SCHEMES["float16"]


def get_scheme(dtype: Optional[str]) -> Scheme:
    """The scheme of a quantized_dtype; None (a float model) runs in float16 on both NPU generations."""
    if dtype is None:
        return FLOAT16
    try:
        return SCHEMES[dtype]
    except KeyError:
        raise ConfigError("quantized_dtype", dtype, list(SCHEMES)) from None
