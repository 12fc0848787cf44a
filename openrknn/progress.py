"""Progress bars drawn on a terminal only: piped output, log files and the GUI's build log stay clean lines.

A bar that is enabled but not drawn still counts (the GUI reads the open bars' counts for its own progress bar).
"""

from __future__ import annotations

import sys


class _Discard:
    """Where an undrawn bar writes."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def progress_bar(iterable=None, *, enabled: bool = True, **kwargs):
    """tqdm(iterable, **kwargs), drawn only when its stream (stderr unless `file` says) is a terminal."""
    from tqdm import tqdm

    stream = kwargs.pop("file", None) or sys.stderr
    drawn = enabled and bool(getattr(stream, "isatty", lambda: False)())
    return tqdm(iterable, disable=not enabled, file=stream if drawn else _Discard(), **kwargs)
