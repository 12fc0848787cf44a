"""The accuracy / latency Pareto front of each chip, and the configuration to recommend on it."""

from __future__ import annotations

import math
from typing import Dict, List, Sequence


def pareto_front(rows: Sequence[dict], value: str = "value", cost: str = "npu_ms") -> List[int]:
    """Indices of the rows no other row beats: another row dominates one when it is at least as accurate and at
    least as fast, and strictly better in one of the two. Rows with a NaN metric are never on the front."""
    ok = [i for i, r in enumerate(rows) if not math.isnan(r[value])]
    front = []
    for i in ok:
        a, c = rows[i][value], rows[i][cost]
        dominated = any(rows[j][value] >= a and rows[j][cost] <= c and (rows[j][value] > a or rows[j][cost] < c)
                        for j in ok if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (rows[i][cost], -rows[i][value], rows[i]["label"]))


def recommend(rows: Sequence[dict], front: Sequence[int], tolerance: float, value: str = "value",
              cost: str = "npu_ms") -> int:
    """The fastest point of the front whose metric is within ``tolerance`` of the front's best (ties: the more
    accurate, then the label, so the choice is the same on every run)."""
    best = max(rows[i][value] for i in front)
    ok = [i for i in front if rows[i][value] >= best - tolerance]
    return min(ok, key=lambda i: (rows[i][cost], -rows[i][value], rows[i]["label"]))


def per_target(rows: Sequence[dict], tolerance: float) -> Dict[str, dict]:
    """{target: {'front': [row indices], 'recommended': row index}} for every target with a measured row."""
    out: Dict[str, dict] = {}
    for target in sorted({r["target"] for r in rows}):
        idx = [i for i, r in enumerate(rows) if r["target"] == target]
        sub = [rows[i] for i in idx]
        front = [idx[k] for k in pareto_front(sub)]
        if front:
            out[target] = {"front": front, "recommended": recommend(rows, front, tolerance)}
    return out
