"""The sweep's driver: plan the work units, run them on an executor, keep every result on disk, write the outputs.

Work units: one build per configuration, then one evaluation per (configuration, shard of the validation set).
Everything a unit produces is written under the output folder as it arrives, keyed by a hash of the configuration
and of what it depends on (model and calibration files, load options, the evaluation), so an interrupted sweep
resumes where it stopped and a finished one answers from disk:
  results/<key>.build.json, models/<key>.rknn   a build (its record and its package)
  results/<key>.s<k>.json                       shard k of its evaluation
  results/<key>.json                            its scored row
  stats/                                        calibration statistics shared by the builds (quant.stats_cache)
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..atomic import write_bytes_atomic, write_text_atomic
from ..errors import OpenRKNNError
from .evaluation import merge_shards, read_items, shard, with_bytes
from .metrics import Labels, score
from .spec import Configuration, SweepSpec, configuration_key

log = logging.getLogger("openrknn.sweep")

# Row fields that depend on where and when a unit ran, not on the configuration (left out when comparing runs).
MEASURED_FIELDS = ("build_s", "stats_reused")


class SweepError(OpenRKNNError):
    """No configuration of the sweep could be built and evaluated."""


@dataclass
class SweepResult:
    rows: List[dict]
    targets: Dict[str, dict]  # {target: {'front': [row indices], 'recommended': row index}}
    out_dir: Path
    wall_s: float
    workers: List[dict] = field(default_factory=list)  # per worker process: pid, peak RSS, units run
    skipped: List[str] = field(default_factory=list)
    executor: str = "local"
    paths: Dict[str, str] = field(default_factory=dict)
    units_run: int = 0  # build and evaluation units run by this call (0: everything came from disk)
    restarts: int = 0  # times the local pool was restarted after a worker died

    @property
    def front(self) -> List[dict]:
        return [self.rows[i] for t in self.targets.values() for i in t["front"]]

    @property
    def recommended(self) -> Dict[str, dict]:
        return {t: self.rows[v["recommended"]] for t, v in self.targets.items()}

    def table(self, measured: bool = True) -> List[dict]:
        """The rows; measured=False leaves out timings and cache counts (what two runs of one sweep share)."""
        return [r if measured else {k: v for k, v in r.items() if k not in MEASURED_FIELDS} for r in self.rows]


def _read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # absent, or left half-written by a crash before atomic writes: redo the unit


def _family(conf: Configuration) -> tuple:
    """Configurations that calibrate the same graph: all options but the ones applied after calibration."""
    return tuple((k, v) for k, v in conf.config if k not in ("quantized_algorithm", "weight_rounding",
                                                           "target_platform", "auto_hybrid_cos_thresh"))


def _interleave(confs: List[Configuration]) -> List[Configuration]:
    """Round-robin over calibration families, so workers starting together calibrate different graphs and later
    builds of each family find its statistics ready."""
    groups: Dict[tuple, List[Configuration]] = {}
    for c in confs:
        groups.setdefault(_family(c), []).append(c)
    out: List[Configuration] = []
    queues = list(groups.values())
    while any(queues):
        for q in queues:
            if q:
                out.append(q.pop(0))
    return out


def run_sweep(spec: SweepSpec, out_dir: "str | os.PathLike", workers: Optional[int] = None, ray: Any = None,
              progress: bool = True, max_attempts: int = 3) -> SweepResult:
    from tqdm import tqdm

    t_start = time.perf_counter()
    out = Path(out_dir)
    for sub in ("results", "models", "stats"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    ev = spec.evaluation
    fingerprint = spec.fingerprint()
    keys = {c: configuration_key(fingerprint, c) for c in spec.configurations}
    shards = shard(read_items(ev.images, ev.limit), ev.shard_size)
    labels = Labels(ev.labels, ev.metric) if ev.labels and ev.labels != "float" else None
    res_dir, model_dir = out / "results", out / "models"

    rows: Dict[str, dict] = {}
    builds: Dict[str, dict] = {}
    parts: Dict[str, Dict[int, dict]] = {}
    todo_build: List[Configuration] = []
    todo_eval: List[tuple] = []
    todo_score: List[Configuration] = []
    for conf in spec.configurations:
        key = keys[conf]
        done = _read_json(res_dir / f"{key}.json")
        if done is not None:
            rows[key] = done
            continue
        rec = _read_json(res_dir / f"{key}.build.json")
        if rec is None or not (model_dir / f"{key}.rknn").is_file():
            todo_build.append(conf)
            continue
        builds[key] = rec
        parts[key] = {}
        for k in range(len(shards)):
            p = _read_json(res_dir / f"{key}.s{k}.json")
            if p is None:
                todo_eval.append((conf, k))
            else:
                parts[key][k] = p
        if len(parts[key]) == len(shards):
            todo_score.append(conf)
    worker_stats: Dict[int, dict] = {}
    errors: Dict[str, str] = {}
    executor_kind, units, restarts = ("ray" if ray else "local"), 0, 0
    # units: a build, its shards' evaluations and its scoring per configuration to build; what is left of the others
    total = len(todo_build) * (2 + len(shards)) + len(todo_eval) + len({c for c, _ in todo_eval}) + len(todo_score)
    if total:
        executor_kind, units, restarts = _run_units(spec, out, keys, shards, todo_build, todo_eval, todo_score,
                                                    builds, parts, rows, errors, worker_stats, labels, workers, ray,
                                                    max_attempts, total, progress, tqdm)
    table = []
    for conf in spec.configurations:
        key = keys[conf]
        if key in rows:
            table.append(dict(rows[key], pareto=False, recommended=False))
        else:
            table.append(_error_row(spec, conf, key, errors.get(key, "not run")))
    if all(r.get("error") for r in table):
        raise SweepError(f"no configuration could be built and evaluated; first error: {table[0]['error']}")
    from .pareto import per_target

    fronts = per_target([r for r in table], ev.select_tolerance)
    for t in fronts.values():
        for i in t["front"]:
            table[i]["pareto"] = True
        table[t["recommended"]]["recommended"] = True
    result = SweepResult(table, fronts, out, time.perf_counter() - t_start,
                         sorted(worker_stats.values(), key=lambda w: w["pid"]), spec.skipped, executor_kind,
                         units_run=units, restarts=restarts)
    from .outputs import write_outputs

    write_outputs(spec, result, keys)
    return result


def _run_units(spec, out, keys, shards, todo_build, todo_eval, todo_score, builds, parts, rows, errors, worker_stats,
               labels, workers, ray, max_attempts, total, progress, tqdm) -> tuple:
    from .executors import make_executor
    from .files import Bundle
    from .tasks import WorkerContext

    c = spec.convert
    local_stats = str((out / "stats").resolve())
    workers = workers or os.cpu_count() or 1
    ctx = WorkerContext(Bundle.from_paths(c.model, c.dataset, c.weights), c.input_size_list, c.inputs, c.outputs,
                        c.rknn_batch_size, spec.evaluation,
                        local_stats if not (isinstance(ray, str) and ray) else _node_stats_dir(spec),
                        _threads_per_worker(workers, ray))
    with worker_threads(ctx.threads):
        executor = make_executor(workers, ctx, ray, max_attempts)
        return _schedule(executor, spec, out, keys, shards, todo_build, todo_eval, todo_score, builds, parts, rows,
                         errors, worker_stats, labels, total, progress, tqdm)


# the math libraries' thread pools: what a worker process starts with, from its environment
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@contextlib.contextmanager
def worker_threads(threads: int):
    """Workers inherit the driver's environment when they start: give numpy's BLAS (GPTQ's solves) the same thread
    budget as onnxruntime, so N workers do not start N x cores threads and fight over the cores. Variables the user
    set are kept."""
    saved = {k: os.environ.get(k) for k in _THREAD_VARS}
    for k in _THREAD_VARS:
        os.environ.setdefault(k, str(threads))
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _schedule(executor, spec, out, keys, shards, todo_build, todo_eval, todo_score, builds, parts, rows, errors,
              worker_stats, labels, total, progress, tqdm) -> tuple:
    by_key = {keys[conf]: conf for conf in spec.configurations}
    res_dir, model_dir = out / "results", out / "models"
    pending: Dict[int, tuple] = {}
    units = 0
    try:
        # local workers read the images from this machine's files; Ray workers get them through the object store
        shard_refs = shards if executor.kind == "local" else [executor.put(with_bytes(s)) for s in shards]
        packages: Dict[str, Any] = {}

        def package_ref(key: str):
            if key not in packages:
                path = model_dir / f"{key}.rknn"
                packages[key] = str(path.resolve()) if executor.kind == "local" else executor.put(path.read_bytes())
            return packages[key]

        for conf in _interleave(todo_build):
            pending[executor.submit("build", conf)] = ("build", keys[conf], None)
        labels_ref = executor.put(labels)

        def submit_score(key: str) -> None:
            merged = merge_shards([parts[key][j] for j in range(len(shards))])
            pending[executor.submit("score", merged, labels_ref)] = ("score", key, merged)

        for conf in todo_score:
            submit_score(keys[conf])
        for conf, k in todo_eval:
            pending[executor.submit("eval", keys[conf], package_ref(keys[conf]), shard_refs[k])] = \
                ("eval", keys[conf], k)
        with tqdm(total=total, desc=f"sweep ({executor.kind})", unit="unit", disable=not progress) as bar:
            while pending:
                for tid, ok, value in executor.wait():
                    kind, key, k = pending.pop(tid)
                    units += 1
                    bar.update(1 if kind != "build" else 1 + (0 if ok else len(shards) + 1))
                    if not ok:
                        errors.setdefault(key, f"{kind}: {type(value).__name__}: {value}")
                        log.error("configuration %s: %s failed: %s", by_key[key].label, kind, value)
                        continue
                    if key in errors:
                        continue
                    if kind == "build":
                        record, package = value
                        _note_worker(worker_stats, record["pid"], record["peak_rss_mb"], "build")
                        write_bytes_atomic(model_dir / f"{key}.rknn", package)
                        write_text_atomic(res_dir / f"{key}.build.json", json.dumps(record))
                        builds[key] = record
                        parts[key] = {}
                        ref = package_ref(key)
                        for j, sref in enumerate(shard_refs):
                            pending[executor.submit("eval", key, ref, sref)] = ("eval", key, j)
                    elif kind == "eval":
                        for w in value.pop("_worker"):
                            _note_worker(worker_stats, w["pid"], w["peak_rss_mb"], "eval", w["eval_s"])
                        write_text_atomic(res_dir / f"{key}.s{k}.json", json.dumps(value))
                        parts[key][k] = value
                        if len(parts[key]) == len(shards):
                            submit_score(key)
                    else:  # scored: k holds the merged shards
                        rows[key] = _score_row(spec, by_key[key], key, builds[key], value, k, res_dir)
                        bar.set_postfix(configurations=f"{len(rows)}/{len(keys)}")
    finally:
        executor.close()
    return executor.kind, units, getattr(executor, "restarts", 0)


def _threads_per_worker(workers: int, ray: Any) -> int:
    """onnxruntime threads per worker: the cores shared out (a Ray task holds one CPU of its node)."""
    return 1 if ray else max(1, (os.cpu_count() or 1) // workers)


def _node_stats_dir(spec: SweepSpec) -> str:
    """On a Ray cluster the output folder is the driver's: statistics are shared per node, in its temp folder."""
    import tempfile

    return str(Path(tempfile.gettempdir()) / "openrknn-sweep-stats" / spec.fingerprint()[:16])


def _note_worker(stats: Dict[int, dict], pid: int, rss: float, kind: str, eval_s: float = 0.0) -> None:
    w = stats.setdefault(pid, {"pid": pid, "peak_rss_mb": 0.0, "builds": 0, "evals": 0})
    w["peak_rss_mb"] = max(w["peak_rss_mb"], rss)
    w["builds" if kind == "build" else "evals"] += 1


def _base_row(conf: Configuration, key: str) -> dict:
    o = conf.options
    return {"label": conf.label, "key": key, "target": o["target_platform"], "quantized_dtype": o["quantized_dtype"],
            "quantized_method": o["quantized_method"], "quantized_algorithm": o["quantized_algorithm"],
            "weight_rounding": o.get("weight_rounding", "auto"), "auto_hybrid": conf.auto_hybrid}


def _score_row(spec: SweepSpec, conf: Configuration, key: str, record: dict, metric: dict, merged: dict,
               res_dir: Path) -> dict:
    row = _base_row(conf, key)
    row.update(metric=metric["metric"], value=metric["value"], ci_low=metric["ci_low"], ci_high=metric["ci_high"],
               samples=metric["samples"],
               npu_ms=record["npu_ms"], memory_mib=record["memory_mib"], weights_mib=record["weights_mib"],
               kept_out_of_8bit=record["kept_out_of_8bit"], build_s=record["build_s"],
               stats_reused=record["stats_reused"], error=None)
    write_text_atomic(res_dir / f"{key}.json", json.dumps(row))
    if spec.evaluation.labels == "float" and spec.evaluation.metric == "map50":
        from .metrics import write_coco_labels

        labels_path = res_dir.parent / "float_labels.json"
        if not labels_path.is_file():
            write_coco_labels(labels_path, merged["name"], merged["size"], merged["ref"])
    return row


def _error_row(spec: SweepSpec, conf: Configuration, key: str, error: str) -> dict:
    row = _base_row(conf, key)
    row.update(metric=spec.evaluation.metric, value=math.nan, ci_low=math.nan, ci_high=math.nan, samples=0,
               npu_ms=math.nan, memory_mib=math.nan, weights_mib=math.nan, kept_out_of_8bit=0, build_s=None,
               stats_reused=0, error=error, pareto=False, recommended=False)
    return row


def run_eval(package_path: "str | os.PathLike", spec, workers: Optional[int] = None, ray: Any = None,
             progress: bool = True, max_attempts: int = 3):
    """Evaluate one .rknn on a validation set, sharded over workers (`openrknn eval`); (MetricResult, merged
    per-image results)."""
    from .executors import make_executor
    from .tasks import WorkerContext

    path = Path(package_path)
    from ..package import read_package

    read_package(path)  # a bad file fails here, with the container's own message, not in a worker
    shards = shard(read_items(spec.images, spec.limit), spec.shard_size)
    labels = Labels(spec.labels, spec.metric) if spec.labels and spec.labels != "float" else None
    workers = min(workers or os.cpu_count() or 1, len(shards))
    ctx = WorkerContext(None, None, None, None, None, spec, "", _threads_per_worker(workers, ray))
    with worker_threads(ctx.threads):
        executor = make_executor(workers, ctx, ray, max_attempts)
        return _evaluate(executor, path, shards, spec, labels, progress)


def _evaluate(executor, path: Path, shards, spec, labels, progress: bool):
    from tqdm import tqdm

    parts = []
    try:
        ref = str(path.resolve()) if executor.kind == "local" else executor.put(path.read_bytes())
        pending = {executor.submit("eval", "model", ref, s if executor.kind == "local" else executor.put(with_bytes(s)))
                   for s in shards}
        with tqdm(total=len(shards), desc=f"eval ({executor.kind})", unit="shard", disable=not progress) as bar:
            while pending:
                for tid, ok, value in executor.wait():
                    pending.discard(tid)
                    if not ok:
                        raise value
                    value.pop("_worker")
                    parts.append(value)
                    bar.update()
    finally:
        executor.close()
    merged = merge_shards(parts)
    return score(merged, spec, labels), merged
