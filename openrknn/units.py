"""One unit convention for sizes, everywhere (command line, build log, GUI, reports): decimal units, 1 kB = 1000
bytes and 1 MB = 10^6 bytes, the GUI's fmtBytes rule. Every printed size goes through format_bytes."""

from __future__ import annotations

from typing import Optional


def format_bytes(n: Optional[float]) -> str:
    """'519.2 kB', '5.21 MB': one decimal below a megabyte, two above; '-' for an unknown size."""
    if n is None:
        return "-"
    if n < 1e3:
        return f"{n:.0f} B"
    if n < 1e6:
        return f"{n / 1e3:.1f} kB"
    if n < 1e9:
        return f"{n / 1e6:.2f} MB"
    return f"{n / 1e9:.2f} GB"
