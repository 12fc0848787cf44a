"""What "inference time on this host" means, for every command that reports one (`openrknn detect`, `openrknn perf`,
RKNN.eval_perf, the GUI): the wall time of one simulator inference (input conversion + onnxruntime's run of the
graph), after WARMUP_RUNS untimed runs, median over the runs. The first run of an onnxruntime session also
allocates its buffers and starts its threads, so a cold figure is slower and says nothing about steady speed."""

from __future__ import annotations

import time
from typing import Callable, List

import numpy as np

WARMUP_RUNS = 1


def time_runs(run: Callable[[], object], runs: int, warmup: int = WARMUP_RUNS) -> List[float]:
    """Milliseconds of each of `runs` calls of run(), after `warmup` untimed calls."""
    for _ in range(warmup):
        run()
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        run()
        out.append((time.perf_counter() - t) * 1e3)
    return out


def median_ms(samples: List[float]) -> float:
    return float(np.median(samples)) if samples else 0.0
