"""Target platforms as data. One table per chip; the checker, the quantizer and the cost model read them.

This module holds the names and NPU generation; per-chip hardware tables live in `chips.py`.
"""

from __future__ import annotations

# chip name -> NPU generation. RKNPU1 chips use Toolkit v1 dtypes, RKNPU2 chips use Toolkit2 dtypes.
NPU_GENERATION = {
    "rk1808": "rknpu1",
    "rk1806": "rknpu1",
    "rk3399pro": "rknpu1",
    "rv1109": "rknpu1",
    "rv1126": "rknpu1",
    "rk3562": "rknpu2",
    "rk3566": "rknpu2",
    "rk3568": "rknpu2",
    "rk3576": "rknpu2",
    "rk3588": "rknpu2",
    "rv1103": "rknpu2",
    "rv1106": "rknpu2",
}

PLATFORMS = tuple(NPU_GENERATION)

QUANTIZED_DTYPES = {
    "rknpu1": ("asymmetric_quantized-u8", "dynamic_fixed_point-i8", "dynamic_fixed_point-i16"),
    "rknpu2": ("w8a8", "w8a16", "w16a16i", "float16"),
}
DEFAULT_QUANTIZED_DTYPE = {"rknpu1": "asymmetric_quantized-u8", "rknpu2": "w8a8"}


def generation(platform: str) -> str:
    return NPU_GENERATION[platform.lower()]
