"""Which settings for my model on my chip: many conversions through the one conversion core, each evaluated on a
validation set, with an accuracy / latency Pareto front per chip.

spec.py (the sweep YAML: a convert file + `sweep:` lists + `evaluation:`) -> runner.py (work units: one build per
configuration, one evaluation per (configuration, shard); results kept on disk by hash, so a sweep resumes) on an
executor (executors.py: a local process pool, or Ray) running tasks.py -> metrics.py (cosine, top-1, accuracy,
mAP@0.5 with pycocotools; bootstrap intervals) -> pareto.py -> outputs.py (table.csv/json, recommended YAML and
.rknn per chip, report.html). Builds share calibration statistics (openrknn.quant.stats_cache).
"""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path
from typing import Any, Optional, Union

from .runner import SweepError, SweepResult, run_sweep
from .spec import SweepSpec, load_sweep_file, parse_sweep


def sweep(config: Union[str, os.PathLike, dict], out_dir: Union[str, os.PathLike] = "sweep-out",
          workers: Optional[int] = None, ray: Any = None, progress: bool = True,
          base: Optional[Union[str, os.PathLike]] = None) -> SweepResult:
    """Run a sweep. ``config``: a sweep YAML file, or the same document as a dict (its relative paths resolve
    against ``base``, default the current folder). ``workers``: processes (default: one per core). ``ray``: None
    = the local process pool; True = a local Ray; an address = that Ray cluster. Returns the table, the Pareto
    front and the recommendation per chip; files go to ``out_dir``."""
    if isinstance(config, dict):
        spec = parse_sweep(config, Path(base or "."))
    else:
        spec = load_sweep_file(config)
    return run_sweep(spec, out_dir, workers, ray, progress)


class _CallableModule(types.ModuleType):
    """`openrknn.sweep(...)` is the function: importing this package replaces the attribute `openrknn.sweep` with
    the package, so the package calls it too."""

    def __call__(self, *args: Any, **kwargs: Any) -> SweepResult:
        return sweep(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["sweep", "SweepResult", "SweepSpec", "SweepError", "run_sweep", "load_sweep_file", "parse_sweep"]
