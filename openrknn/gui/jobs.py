"""Background jobs with an event log the page streams (SSE): stages, log records of the 'openrknn' logger emitted by
the job's thread, tqdm progress, and the final result or error.

One worker thread runs jobs one after another: a conversion already uses every core it is given.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from ..errors import OpenRKNNError

log = logging.getLogger("openrknn.gui")

TERMINAL = ("done", "failed")


@dataclass
class Job:
    id: str
    session_key: str
    title: str
    stages: List[str]
    state: str = "queued"  # queued | running | done | failed
    events: List[dict] = field(default_factory=list)
    result: Optional[dict] = None
    error: Optional[str] = None
    started: float = field(default_factory=time.time)
    redact: Callable[[str], str] = field(default=lambda text: text, repr=False)  # keeps server paths off the page
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def emit(self, kind: str, **data: Any) -> None:
        data = _redact_strings(data, self.redact)
        with self._lock:
            event = {"id": len(self.events), "type": kind, "t": round(time.time() - self.started, 3), **data}
            self.events.append(event)

    def events_since(self, index: int) -> List[dict]:
        with self._lock:
            return list(self.events[index:])

    def stage(self, name: str) -> None:
        """Announce the next stage; the page shows it and its share of the progress bar."""
        index = self.stages.index(name) if name in self.stages else len(self.stages) - 1
        self.emit("stage", name=name, index=index, total=len(self.stages))
        log.info("%s", name)

    def snapshot(self) -> dict:
        with self._lock:
            return {"id": self.id, "title": self.title, "state": self.state, "stages": self.stages,
                    "events": len(self.events), "result": self.result, "error": self.error}


def _redact_strings(value: Any, redact: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_strings(v, redact) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact_strings(v, redact) for v in value]
    return value


class _ThreadLogHandler(logging.Handler):
    """Forwards records from one thread only, so two sessions' work never mixes in one log view."""

    def __init__(self, job: Job, thread_id: int):
        super().__init__(logging.DEBUG)
        self.job, self.thread_id = job, thread_id

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self.thread_id:
            return
        try:
            msg = record.getMessage()
        except Exception:  # a bad format string in someone's log call must not kill the job
            msg = str(record.msg)
        self.job.emit("log", level=record.levelname, logger=record.name, message=msg)


def _active_bars() -> List[dict]:
    """tqdm bars currently open (calibration, analysis); builds run one at a time, so they are the job's."""
    try:
        from tqdm.std import tqdm
    except ImportError:
        return []
    bars = []
    for bar in list(getattr(tqdm, "_instances", ())):
        if getattr(bar, "disable", True) or not getattr(bar, "total", None):
            continue
        bars.append({"desc": str(bar.desc or "").rstrip(": "), "n": int(bar.n), "total": int(bar.total)})
    return bars


class JobRunner:
    def __init__(self, progress_interval: float = 0.4):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="openrknn-gui-job")
        self._jobs: Dict[str, Job] = {}
        self._lock = threading.Lock()
        self.progress_interval = progress_interval

    def get(self, job_id: str) -> Optional[Job]:
        with self._lock:
            return self._jobs.get(job_id)

    def busy(self) -> bool:
        with self._lock:
            return any(j.state not in TERMINAL for j in self._jobs.values())

    def active_job(self, session_key: str) -> Optional[str]:
        """The id of this session's queued or running job, if any (a reloaded page follows it again)."""
        with self._lock:
            return next((j.id for j in self._jobs.values() if j.session_key == session_key
                         and j.state not in TERMINAL), None)

    def submit(self, session_key: str, title: str, stages: List[str], fn: Callable[[Job], dict],
               on_done: Optional[Callable[[Job], None]] = None,
               redact: Optional[Callable[[str], str]] = None) -> Job:
        job = Job(id=secrets.token_hex(8), session_key=session_key, title=title, stages=list(stages))
        if redact is not None:
            job.redact = redact
        with self._lock:
            self._jobs[job.id] = job
        job.emit("queued", title=title)
        self._pool.submit(self._run, job, fn, on_done)
        return job

    def _run(self, job: Job, fn: Callable[[Job], dict], on_done: Optional[Callable[[Job], None]]) -> None:
        root = logging.getLogger("openrknn")
        handler = _ThreadLogHandler(job, threading.get_ident())
        old_level = root.level
        if root.getEffectiveLevel() > logging.INFO:  # INFO lines are the progress story the page tells
            root.setLevel(logging.INFO)
        root.addHandler(handler)
        stop = threading.Event()
        watcher = threading.Thread(target=self._watch_bars, args=(job, stop), daemon=True)
        job.state = "running"
        job.emit("state", state="running")
        watcher.start()
        try:
            job.result = _redact_strings(fn(job), job.redact)
            job.state = "done"
        except OpenRKNNError as e:
            job.error, job.state = job.redact(str(e)), "failed"
        except FileNotFoundError as e:
            job.error, job.state = job.redact(f"file not found: {e.filename or e}"), "failed"
        except Exception as e:  # a bug or a missing piece of the backend: say which, keep the trace in the log
            job.error, job.state = job.redact(f"{type(e).__name__}: {e}"), "failed"
            log.debug("job %s failed:\n%s", job.id, traceback.format_exc())
        finally:
            stop.set()
            watcher.join(timeout=2)
            root.removeHandler(handler)
            root.setLevel(old_level)
        if job.state == "failed":
            job.emit("failure", message=job.error)
        if on_done is not None:
            try:
                on_done(job)
            except Exception as e:  # the result is still reported even if bookkeeping fails
                log.warning("job %s: after-build step failed: %s", job.id, e)
        if job.state == "done":
            job.emit("done", result=job.result)
        job.emit("state", state=job.state)

    def _watch_bars(self, job: Job, stop: threading.Event) -> None:
        last: List[dict] = []
        while not stop.wait(self.progress_interval):
            bars = _active_bars()
            if bars and bars != last:
                job.emit("progress", bars=bars)
            last = bars

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
