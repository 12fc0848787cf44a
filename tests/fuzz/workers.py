"""Fuzz cases run in worker subprocesses with a memory limit (RLIMIT_AS) and a time limit per case: a case that
hangs is killed and counted, one that exhausts memory fails inside its worker (MemoryError) or kills it, and either
way the next case gets a fresh worker. A worker reads one JSON job per line on stdin and answers one JSON line."""

from __future__ import annotations

import json
import os
import queue
import select
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional

ROOT = Path(__file__).resolve().parents[2]


def _limits(memory_bytes: int) -> Callable[[], None]:
    def apply() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return apply


class Worker:
    def __init__(self, script: Path, memory_bytes: int, log_path: Path, start_timeout: float = 120.0,
                 root: Path = ROOT):
        env = dict(os.environ)  # root: the openrknn checkout under test (another one gives a baseline)
        env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
        env.setdefault("OPENRKNN_THREADS", "1")
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, env=env, preexec_fn=_limits(memory_bytes))
        self._buf = b""
        ready = self._line(start_timeout)
        if ready is None or not json.loads(ready).get("ready"):
            self.close()
            raise RuntimeError(f"fuzz worker {script.name} did not start (see {log_path})")

    def _line(self, timeout: float) -> Optional[bytes]:
        """The next line from the worker, or None on timeout or death."""
        end = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = end - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def ask(self, job: dict, timeout: float) -> dict:
        t = time.monotonic()
        try:
            self.proc.stdin.write((json.dumps(job) + "\n").encode())
            self.proc.stdin.flush()
        except OSError:
            return {"outcome": "crash", "returncode": self.proc.poll()}
        line = self._line(timeout)
        if line is not None:
            result = json.loads(line)
            result["wall_s"] = time.monotonic() - t
            return result
        if self.proc.poll() is None:
            return {"outcome": "hang", "wall_s": time.monotonic() - t}
        return {"outcome": "crash", "returncode": self.proc.returncode, "wall_s": time.monotonic() - t}

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.log.close()


def run_jobs(script: Path, jobs: Iterable[dict], workers: int, case_timeout: float, memory_bytes: int,
             log_dir: Path, prepare: Callable[[dict], dict], finish: Callable[[dict], None],
             progress: Optional[Callable[[dict], None]] = None, root: Path = ROOT) -> List[dict]:
    """Run every job on `workers` worker processes. prepare(job) -> the message sent (e.g. after writing its file),
    finish(job) cleans up. A worker that hangs or dies is replaced; its case is recorded as such."""
    todo: "queue.Queue[Optional[dict]]" = queue.Queue()
    for job in jobs:
        todo.put(job)
    results: List[dict] = []
    lock = threading.Lock()
    failures: List[BaseException] = []

    def loop(k: int) -> None:
        worker: Optional[Worker] = None
        try:
            while True:
                try:
                    job = todo.get_nowait()
                except queue.Empty:
                    return
                if worker is None:
                    worker = Worker(script, memory_bytes, log_dir / f"worker{k}.log", root=root)
                message = prepare(job)
                try:
                    result = worker.ask(message, case_timeout)
                finally:
                    finish(job)
                if result["outcome"] in ("hang", "crash"):
                    worker.close()
                    worker = None
                result.update({key: job[key] for key in ("n", "kind", "seed", "detail", "forged") if key in job})
                with lock:
                    results.append(result)
                if progress:
                    progress(result)
        except BaseException as e:  # reported by the caller
            failures.append(e)
        finally:
            if worker is not None:
                worker.close()

    threads = [threading.Thread(target=loop, args=(k,), daemon=True) for k in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise failures[0]
    return sorted(results, key=lambda r: r.get("n", 0))


def tally(results: List[dict], key: str = "outcome") -> Dict[str, int]:
    out: Dict[str, int] = {}
    for r in results:
        out[r[key]] = out.get(r[key], 0) + 1
    return dict(sorted(out.items()))
