"""Fuzz worker for `.rknn` files (run by workers.run_jobs; one JSON job per stdin line, one JSON result per line).

For each file it does what a user does, and classifies what happened:
1. read_package(path), counting the bytes this process read meanwhile (/proc/self/io rchar) against the file's size;
2. `openrknn info` (text or --json) as the command line runs it: an openrknn error is one "error:" line, anything
   else would be a traceback;
3. when the file reads: RKNN().load_rknn -> init_runtime -> inference on the seed's inputs, outputs compared bit for
   bit with the unmodified seed's.
Outcomes: refused (a clean openrknn error), same (accepted, outputs identical), different (accepted, outputs differ),
internal (an exception that is not an openrknn error, i.e. "failed unexpectedly"), traceback (info would print one).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import stat
import sys
import traceback

import numpy as np

from openrknn.api import RKNN
from openrknn.commands import info as info_command
from openrknn.errors import OpenRKNNError
from openrknn.package import read_package

CLEAN = (OpenRKNNError, FileNotFoundError)  # what cli.main prints as one "error:" line
_refs: dict = {}


def bytes_read() -> int:
    with open("/proc/self/io", "rb") as f:
        for line in f:
            if line.startswith(b"rchar:"):
                return int(line.split()[1])
    return 0


def file_size(path: str) -> int:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return 0
    return st.st_size if stat.S_ISREG(st.st_mode) else 0


def run_api(path: str, inputs: list) -> tuple:
    """(stage reached or the failing stage, error or None, outputs or None)."""
    r = RKNN()
    try:
        for stage, call in (("load_rknn", lambda: r.load_rknn(path)), ("init_runtime", lambda: r.init_runtime())):
            if call() != 0:
                return stage, r.last_error, None
        outputs = r.inference(inputs=inputs)
        if outputs is None:
            return "inference", r.last_error, None
        return "ran", None, outputs
    finally:
        r.release()


def reference(seed_path: str, inputs_path: str) -> tuple:
    if seed_path not in _refs:
        with np.load(inputs_path) as z:
            inputs = [z[k] for k in sorted(z.files, key=lambda k: int(k.split("_")[1]))]
        stage, err, outputs = run_api(seed_path, inputs)
        assert stage == "ran", f"the seed {seed_path} itself fails: {err}"
        _refs[seed_path] = (inputs, outputs)
    return _refs[seed_path]


def run_info(path: str, as_json: bool) -> tuple:
    """(exit code, stderr) of `openrknn info` with cli.main's error handling; exit code None = a traceback."""
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            code = info_command.run(argparse.Namespace(model=path, json=as_json))
        except CLEAN as e:
            print(f"error: {e}", file=sys.stderr)
            code = 1
        except Exception:
            traceback.print_exc()
            code = None
    return code, err.getvalue()


def classify(job: dict) -> dict:
    """Every stage runs whatever the previous one did (a file can break `info` and the reader both); the outcome is
    the worst thing seen: traceback > internal > refused > different > same."""
    path = job["path"]
    result: dict = {"n": job["n"], "traceback": False, "internal": False}
    size = file_size(path)
    before = bytes_read()
    read_error = None
    try:
        read_package(path)
    except CLEAN as e:
        read_error = e
    except Exception as e:
        read_error = e
        result.update(internal=True, stage="read_package", error=f"{type(e).__name__}: {str(e)[:300]}")
    result["read_excess"] = bytes_read() - before - size
    code, err = run_info(path, as_json=job["n"] % 2 == 1)
    if code is None or "Traceback" in err:
        result.update(traceback=True, stage="info", error=err[-600:])
    elif code == 3:  # info's own last-resort line for an unexpected exception
        result.update(internal=True, stage="info", error=err[-300:])
    if result["traceback"] or result["internal"]:
        result["outcome"] = "traceback" if result["traceback"] else "internal"
        return result
    if read_error is not None:
        result.update(outcome="refused", stage="read_package", error_type=type(read_error).__name__,
                      error=str(read_error)[:300])
        return result
    inputs, want = reference(job["seed_path"], job["inputs_path"])
    stage, error, outputs = run_api(path, inputs)
    if error is not None:
        clean = isinstance(error, CLEAN)
        result.update(outcome="refused" if clean else "internal", internal=not clean, stage=stage,
                      error_type=type(error).__name__, error=str(error)[:300])
        return result
    same = len(outputs) == len(want) and all(a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
                                             for a, b in zip(outputs, want))
    result.update(outcome="same" if same else "different", stage="ran")
    return result


def main() -> None:
    out = os.fdopen(os.dup(1), "w", buffering=1)  # results only; stray prints go to the worker log
    os.dup2(2, 1)
    out.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        job = json.loads(line)
        try:
            result = classify(job)
        except MemoryError:
            result = {"n": job["n"], "outcome": "internal", "stage": "?", "error": "MemoryError"}
        out.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
