"""Where a sweep's work units run: a local process pool (the default: nothing to start) or a Ray cluster.

Both have one interface, so the sweep's scheduling loop (runner.py) is the same code for both:
- ``put(obj)``: a handle to a large object shared by many tasks (Ray: its object store, once; local: the object);
- ``submit(name, *args)``: run tasks.TASKS[name](context, *args) in a worker; returns a task id;
- ``wait()``: block until at least one task ends; [(task id, ok, result or error)];
- ``close()``.
The worker context goes to each worker once. A worker that dies mid-task (killed, out of memory) costs its tasks
one attempt each and they run again, up to ``max_attempts``; an exception raised by the task itself is not retried
(it would fail the same way) and is returned as the task's error.
"""

from __future__ import annotations

import logging
import multiprocessing
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor
from concurrent.futures import wait as wait_futures
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Dict, List, Optional, Tuple

from ..errors import OpenRKNNError
from . import tasks

log = logging.getLogger("openrknn.sweep")


class WorkerLostError(OpenRKNNError):
    """A task's worker process died on every attempt."""


_CONTEXT: Dict[str, Any] = {}


def _init_worker(ctx) -> None:
    _CONTEXT["ctx"] = ctx


def _run_local(name: str, args: tuple):
    return tasks.call(_CONTEXT["ctx"], name, args)


class LocalPool:
    """``workers`` spawned processes (spawn, not fork: onnxruntime's threads do not survive a fork)."""

    kind = "local"

    def __init__(self, workers: int, ctx: "tasks.WorkerContext", max_attempts: int = 3):
        self.workers, self.ctx, self.max_attempts = workers, ctx, max_attempts
        self._pool = self._start()
        self._tasks: Dict[int, Dict[str, Any]] = {}
        self._next = 0
        self.restarts = 0

    def _start(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(self.ctx,))

    def put(self, obj: Any) -> Any:
        return obj

    def submit(self, name: str, *args: Any) -> int:
        tid = self._next
        self._next += 1
        sent = True
        try:
            future = self._pool.submit(_run_local, name, args)
        except BrokenProcessPool:  # a worker died since the last wait: that wait's restart sends this task again
            future, sent = Future(), False
            future.set_exception(BrokenProcessPool("the pool broke before this task was sent"))
        self._tasks[tid] = {"name": name, "args": args, "attempts": 1 if sent else 0, "future": future}
        return tid

    def wait(self) -> List[Tuple[int, bool, Any]]:
        futures = {t["future"]: tid for tid, t in self._tasks.items()}
        done, _ = wait_futures(list(futures), return_when=FIRST_COMPLETED)
        out: List[Tuple[int, bool, Any]] = []
        broken = False
        for f in done:
            tid = futures[f]
            try:
                out.append((tid, True, f.result()))
            except BrokenProcessPool:
                broken = True
                continue
            except Exception as e:  # the task's own error: returned, not retried
                out.append((tid, False, e))
            del self._tasks[tid]
        if broken:
            out += self._restart()
        return out

    def _restart(self) -> List[Tuple[int, bool, Any]]:
        """A worker died: every task still in the pool lost its run. Start a new pool and run them again."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.restarts += 1
        self._pool = self._start()
        failed = []
        for tid, t in list(self._tasks.items()):
            f = t["future"]
            if f.done() and not f.cancelled() and f.exception() is None:
                continue  # finished before the pool broke: collected by the next wait
            t["attempts"] += 1
            if t["attempts"] > self.max_attempts:
                failed.append((tid, False, WorkerLostError(
                    f"the worker running task {t['name']} died {self.max_attempts} times (killed, or out of "
                    "memory?); lower --workers or check the machine's memory")))
                del self._tasks[tid]
                continue
            log.warning("a sweep worker died; task %s runs again (attempt %d of %d)", t["name"], t["attempts"],
                        self.max_attempts)
            t["future"] = self._pool.submit(_run_local, t["name"], t["args"])
        return failed

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _ray_call(ctx, name: str, *args):
    return tasks.call(ctx, name, args)


class RayPool:
    """Tasks on Ray: a local Ray started here (``address`` None, ``workers`` CPUs) or the cluster at ``address``.
    The context and shared objects go through the object store once; a task whose worker dies is retried by Ray."""

    kind = "ray"

    def __init__(self, workers: Optional[int], ctx: "tasks.WorkerContext", address: Optional[str] = None,
                 max_attempts: int = 3):
        try:
            import ray
        except ImportError:
            raise OpenRKNNError("--ray needs Ray: pip install 'openrknn[ray]' (or ray)") from None
        self.ray = ray
        self._owns = not ray.is_initialized()
        if self._owns:
            kwargs: Dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address:
                kwargs["address"] = address
            else:
                kwargs["num_cpus"] = workers
            ray.init(**kwargs)
        self._ctx = ray.put(ctx)
        self._remote = ray.remote(_ray_call).options(num_cpus=1, max_retries=max_attempts - 1,
                                                     retry_exceptions=False)
        self._tasks: Dict[Any, int] = {}
        self._next = 0

    def put(self, obj: Any) -> Any:
        return self.ray.put(obj)

    def submit(self, name: str, *args: Any) -> int:
        tid = self._next
        self._next += 1
        self._tasks[self._remote.remote(self._ctx, name, *args)] = tid
        return tid

    def wait(self) -> List[Tuple[int, bool, Any]]:
        ray = self.ray
        refs = list(self._tasks)
        done, _ = ray.wait(refs, num_returns=1)
        more, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        out = []
        for ref in dict.fromkeys(done + more):
            tid = self._tasks.pop(ref)
            try:
                out.append((tid, True, ray.get(ref)))
            except ray.exceptions.RayTaskError as e:  # the task raised: hand back its own exception
                cause = e.as_instanceof_cause()
                out.append((tid, False, getattr(cause, "cause", None) or cause))
            except ray.exceptions.RayError as e:  # worker or node lost on every attempt
                out.append((tid, False, WorkerLostError(f"Ray lost the worker of this task on every attempt: {e}")))
        return out

    def close(self) -> None:
        if self._owns:
            self.ray.shutdown()


def make_executor(workers: Optional[int], ctx: "tasks.WorkerContext", ray: Any = None, max_attempts: int = 3):
    """ray: None/False = the local pool; True = a local Ray; a string = the address of a Ray cluster."""
    if ray:
        return RayPool(workers, ctx, None if ray is True else str(ray), max_attempts)
    return LocalPool(max(1, workers or 1), ctx, max_attempts)
