"""A user post-processing function for sweep tests: the first call in the whole test (marked by a file named in
$SWEEP_CRASH_MARKER) kills its own worker process, as a node running out of memory would; later calls return the
logits. Imported by the sweep's worker processes, so it lives in its own module."""

from __future__ import annotations

import os

import numpy as np


def crash_once(outputs, transform, spec):
    marker = os.environ.get("SWEEP_CRASH_MARKER")
    if marker:
        try:
            with open(marker, "x"):
                pass
        except FileExistsError:
            pass
        else:
            os._exit(137)  # no cleanup, no exception: the process is simply gone
    return np.ravel(outputs[0])
