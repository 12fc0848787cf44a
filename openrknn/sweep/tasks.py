"""The two work units of a sweep, as they run in a worker: build one configuration, evaluate one shard.

Both take the sweep's WorkerContext first (files as bytes, load options, the evaluation); each executor hands it to
its workers once (the local pool at worker start, Ray through its object store). A worker process keeps what it
made from the context (the files written out, the loaded model, the calibration statistics store, the last
evaluator) in ``_WORKER``: the state of one worker process, never shared with the driver.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .evaluation import EvalSpec, ShardEvaluator
from .files import Bundle
from .spec import Configuration, config_kwargs

_WORKER: Dict[str, Any] = {}


@dataclass(frozen=True)
class WorkerContext:
    bundle: Optional[Bundle]  # None: evaluation only (`openrknn eval`)
    input_size_list: Optional[list]
    inputs: Optional[list]
    outputs: Optional[list]
    rknn_batch_size: Optional[int]
    evaluation: EvalSpec
    stats_dir: str  # calibration statistics shared by the workers of one machine (quant.stats_cache.DirStore)
    threads: int = 1  # onnxruntime threads per worker: the workers are the parallelism


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM; ru_maxrss where /proc is absent)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _prepared(ctx: WorkerContext):
    """(loaded model, dataset path, stats cache) of this context, made once per worker process."""
    key = ("ctx", ctx.bundle.digest, ctx.stats_dir)
    if _WORKER.get("key") != key:
        from ..convert import load_model
        from ..quant.stats_cache import DirStore, StatsCache

        os.environ["OPENRKNN_THREADS"] = str(ctx.threads)
        root = Path(tempfile.gettempdir()) / "openrknn-sweep-files"
        model_path, dataset = ctx.bundle.materialize(root)
        loaded = load_model(model_path, ctx.input_size_list, ctx.inputs, ctx.outputs)
        _WORKER.clear()
        _WORKER.update(key=key, loaded=loaded, dataset=str(dataset),
                       cache=StatsCache(DirStore(ctx.stats_dir)))
    return _WORKER["loaded"], _WORKER["dataset"], _WORKER["cache"]


def build_task(ctx: WorkerContext, conf: Configuration) -> Tuple[dict, bytes]:
    """Build ``conf`` through the conversion core; (record, .rknn bytes). The record has the estimated NPU time and
    memory on the configuration's target."""
    from ..analysis.memory import eval_memory_report
    from ..analysis.perf import estimate_perf
    from ..config import make_config
    from ..convert import BuildOptions, build
    from ..package import package_to_bytes

    loaded, dataset, cache = _prepared(ctx)
    cfg = make_config(**config_kwargs(conf.config))
    hits, misses = cache.hits, cache.misses
    t0 = time.perf_counter()
    result = build(loaded, cfg, BuildOptions(do_quantization=True, dataset=dataset,
                                             rknn_batch_size=ctx.rknn_batch_size,
                                             auto_hybrid=conf.auto_hybrid is not None, stats_cache=cache),
                   progress=False)
    build_s = time.perf_counter() - t0
    dtype = cfg.quantized_dtype
    npu = estimate_perf(result.model, cfg.target, dtype)
    mem = eval_memory_report(result.model, cfg.target, dtype, is_print=False)
    overrides = (result.package.metadata.get("quantization") or {}).get("overrides") or {}
    record = {"npu_ms": npu.total_us / 1000.0, "memory_mib": mem["total"] / 2**20,
              "weights_mib": mem["weight"]["total"] / 2**20, "kept_out_of_8bit": len(overrides),
              "build_s": build_s, "stats_reused": cache.hits - hits, "stats_computed": cache.misses - misses,
              "pid": os.getpid(), "peak_rss_mb": peak_rss_mb(),
              "stages": {**result.timings, **((result.quant_report or {}).get("stages") or {})}}
    return record, package_to_bytes(result.package)


def eval_task(ctx: WorkerContext, key: str, package: Any, items: List[Tuple[int, str, bytes]]) -> dict:
    """Evaluate one shard of the validation set on the model ``key`` (its bytes, or a path on this machine)."""
    t0 = time.perf_counter()
    ev = _WORKER.get("evaluator")
    if _WORKER.get("evaluator_key") != key:
        os.environ["OPENRKNN_THREADS"] = str(ctx.threads)
        data = Path(package).read_bytes() if isinstance(package, str) else package
        ev = ShardEvaluator(data, ctx.evaluation, threads=ctx.threads)
        _WORKER.update(evaluator=ev, evaluator_key=key)
    part = ev.run(items)
    part["_worker"] = [{"pid": os.getpid(), "peak_rss_mb": peak_rss_mb(), "eval_s": time.perf_counter() - t0}]
    return part


def score_task(ctx: WorkerContext, merged: dict, labels) -> dict:
    """The metric and its bootstrap interval from a configuration's merged shards (pycocotools runs once per
    resample for map50: work for a worker, not for the driver)."""
    from .metrics import score

    return score(merged, ctx.evaluation, labels).as_dict()


TASKS = {"build": build_task, "eval": eval_task, "score": score_task}


def call(ctx: WorkerContext, name: str, args: tuple):
    return TASKS[name](ctx, *args)
