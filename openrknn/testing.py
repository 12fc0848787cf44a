"""Helpers for tests, benchmarks and local experiments; the product never imports this module."""

from __future__ import annotations

import subprocess
import sys
import threading
from typing import Callable, Dict, Optional, Sequence, Tuple

from .runtime.server.config import ServerSetupError


def spawn_server(args: Sequence[str] = (), env: Optional[dict] = None, timeout: float = 30.0,
                 stderr=None, preexec_fn: Optional[Callable[[], None]] = None,
                 cwd: Optional[str] = None) -> Tuple[subprocess.Popen, int]:
    """Start `python -m openrknn.runtime.server --port 0 *args` as a child process and wait until it listens.
    Returns (process, port); the caller stops the process. preexec_fn: e.g. resource limits for the child; cwd: its
    working folder (`python -m` imports from there first)."""
    cmd = [sys.executable, "-m", "openrknn.runtime.server", "--port", "0", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, env=env, text=True, preexec_fn=preexec_fn,
                            cwd=cwd)
    result: Dict[str, str] = {}

    def read_first_line():
        result["line"] = proc.stdout.readline()

    reader = threading.Thread(target=read_first_line, daemon=True)
    reader.start()
    reader.join(timeout)
    line = result.get("line", "")
    if "listening on" not in line:
        proc.kill()
        proc.wait()
        raise ServerSetupError(f"the server did not start within {timeout:g} s (exit code {proc.returncode}, "
                               f"first line {line!r}); run `{' '.join(cmd)}` by hand to see why")
    port = int(line.split("listening on ", 1)[1].split(" ", 1)[0].rsplit(":", 1)[1])
    return proc, port
