"""Facts about the machine the server runs on: memory, board name, versions (the handshake's and `info`'s FACTS)."""

from __future__ import annotations

import os
import platform
import socket
from typing import Dict, Optional

from ... import __version__
from .. import protocol as P


def meminfo() -> Dict[str, int]:
    out = {}
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if parts and parts[0].isdigit():
                    out[key] = int(parts[0]) * 1024
    except OSError:
        pass
    return out


def process_memory() -> Dict[str, Optional[int]]:
    """This process's resident set size now and at its peak, in bytes (None where the OS does not say)."""
    rss = peak = None
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) * 1024
    except OSError:
        try:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        except (ImportError, OSError):
            pass
    return {"rss_bytes": rss, "peak_rss_bytes": peak}


def board_model() -> Optional[str]:
    # Rockchip boards name themselves here ("Rockchip RK1808 EVB"); absent on PCs
    try:
        with open("/proc/device-tree/model", "rb") as f:
            return f.read().rstrip(b"\x00\n").decode("utf-8", "replace") or None
    except OSError:
        return None


def device_facts() -> dict:
    import onnxruntime as ort

    mem = meminfo()
    return {
        "openrknn": __version__,
        "protocol": P.PROTOCOL_VERSION,
        "hostname": socket.gethostname(),
        "machine": platform.machine(),
        "system": platform.system(),
        "platform": platform.platform(),
        "board": board_model(),
        "cpu_cores": os.cpu_count(),
        "ram_bytes": mem.get("MemTotal"),
        "ram_available_bytes": mem.get("MemAvailable"),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(),
        "runtimes": model_runtimes(),
    }


def model_runtimes() -> dict:
    """Which kinds of model this board can run, and on what (no runtime is loaded to find out)."""
    import importlib.util

    from ..tflite_runner import find_teflon

    def has(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            return False

    tflite = has("ai_edge_litert") or has("tflite_runtime")
    return {"openrknn": "onnxruntime (CPU)",
            "vendor": "rknn-toolkit-lite2 (NPU)" if has("rknnlite") else None,
            "tflite": (("Teflon delegate (NPU) " + find_teflon()) if find_teflon() else "LiteRT (CPU)") if tflite
            else None}
