"""Per-layer timings on the board: onnxruntime's profiler around a separate session (the `perf` request)."""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from typing import Dict, Optional, Sequence

import numpy as np

from ...errors import RuntimeStateError


def parse_profile(events: Sequence[dict], skip_runs: int = 1) -> dict:
    """Per-node mean kernel time from an onnxruntime profile (Chrome trace events), ignoring the first skip_runs runs
    (warm-up). Pure, so it can be tested on a saved trace."""
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])
    if len(runs) <= skip_runs:
        raise RuntimeStateError(f"the profile holds {len(runs)} run(s), need more than {skip_runs}")
    start = runs[skip_runs]["ts"]
    kept = runs[skip_runs:]
    layers: Dict[str, dict] = {}
    for e in events:
        if e.get("cat") != "Node" or e.get("ts", -1) < start or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        name = e["name"][: -len("_kernel_time")]
        row = layers.setdefault(name, {"name": name, "op_type": (e.get("args") or {}).get("op_name", "?"),
                                       "time_us": 0.0, "first_ts": e["ts"]})
        row["time_us"] += float(e.get("dur", 0))
    rows = sorted(layers.values(), key=lambda r: r["first_ts"])
    for r in rows:
        r["time_us"] = round(r["time_us"] / len(kept), 3)
        del r["first_ts"]
    return {"layers": rows, "total_us": round(sum(float(r["dur"]) for r in kept) / len(kept), 3),
            "layers_total_us": round(sum(r["time_us"] for r in rows), 3), "runs": len(kept)}


def profile_model(model_bytes: bytes, feeds: Dict[str, np.ndarray], runs: int, threads: Optional[int]) -> dict:
    """Run the model `runs` times (plus one warm-up) under onnxruntime's profiler on this machine."""
    from ..ort_session import make_session
    from ..simulator import ORT_FAILURES

    with tempfile.TemporaryDirectory(prefix="openrknn-prof-") as tmp:
        try:
            session = make_session(model_bytes, threads, profile_prefix=os.path.join(tmp, "profile"))
            names = [o.name for o in session.get_outputs()]
            wall = []
            for _ in range(runs + 1):
                t = time.perf_counter()
                session.run(names, feeds)
                wall.append((time.perf_counter() - t) * 1e6)
            path = session.end_profiling()
        except ORT_FAILURES as e:  # the feeds were checked against the graph: the model itself failed
            raise RuntimeStateError(f"profiling failed in onnxruntime ({type(e).__name__}: {str(e)[:300]})") from None
        with open(path, encoding="utf-8") as f:
            events = json.load(f)
    result = parse_profile(events, skip_runs=1)
    result["wall_median_us"] = round(float(np.median(wall[1:])), 3)
    result["fps"] = round(1e6 / result["total_us"], 2) if result["total_us"] > 0 else None
    result["host"] = socket.gethostname()
    return result
