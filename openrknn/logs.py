"""One console handler for the 'openrknn' logger, shared by every RKNN object and the CLI.

Each owner (an RKNN object, the CLI) asks for a console level; the handler shows the most verbose level any live
owner asked for, so two objects never print a line twice and a quiet object never silences a verbose one.
The logger itself stays at DEBUG; handlers do the filtering (verbose_file handlers get DEBUG lines).
"""

from __future__ import annotations

import logging
import sys
import weakref

LOGGER = logging.getLogger("openrknn")
DEFAULT_LEVEL = logging.WARNING


class VendorStyleFormatter(logging.Formatter):
    """'E openrknn: ...' like the vendor's 'E RKNN: ...', so users' log greps keep working."""

    def format(self, record: logging.LogRecord) -> str:
        text = f"{record.levelname[0]} openrknn: {record.getMessage()}"
        if record.exc_info:  # verbose mode's traceback of an unexpected failure (api.py): the point of asking for it
            text += "\n" + self.formatException(record.exc_info)
        return text


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at emit time (redirections made after the first RKNN() still apply)."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr


_console: logging.Handler | None = None
_levels: "weakref.WeakKeyDictionary[object, int]" = weakref.WeakKeyDictionary()


def _install() -> logging.Handler:
    """(Re)attach the console handler; someone may have removed it from the logger since."""
    global _console
    if _console is None:
        _console = _StderrHandler()
        _console.setFormatter(VendorStyleFormatter())
    if _console not in LOGGER.handlers:
        LOGGER.addHandler(_console)
    LOGGER.setLevel(logging.DEBUG)
    LOGGER.propagate = False  # our own console line; an application's root handler would print it twice
    return _console


def _refresh() -> None:
    levels = list(_levels.values())
    if not levels:  # nobody left: detach, so a released RKNN leaves the logger as it found it
        if _console is not None:
            LOGGER.removeHandler(_console)
        return
    _install().setLevel(min(levels))


def request_console_level(owner: object, level: int) -> None:
    _levels[owner] = level
    _refresh()


def release_console_level(owner: object) -> None:
    _levels.pop(owner, None)
    _refresh()
