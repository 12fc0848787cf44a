"""`openrknn` command line. Each subcommand lives in openrknn/commands/<name>.py with register() and run()."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import List, Optional

from . import __version__

# Subcommands in help order; each module defines register(subparsers) and run(args) -> int.
COMMANDS = ["convert", "sweep", "eval", "export_tflite", "vendor", "info", "run", "check", "perf", "report", "detect",
            "yolox", "train_eyes", "demo", "serve", "gui"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="openrknn", description="Open deployment toolkit for Rockchip NPUs "
                                     "(RKNN-Toolkit compatible).")
    parser.add_argument("--version", action="version", version=f"openrknn {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"openrknn.commands.{name}").register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from . import logs
    from .errors import OpenRKNNError

    logs.request_console_level(main, logging.DEBUG if args.verbose else logging.INFO)

    try:
        return int(args.func(args) or 0)
    except OpenRKNNError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except FileNotFoundError as e:
        print(f"error: file not found: {e.filename or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:  # main() called in-process (a script, a test) leaves the logger as it found it
        logs.release_console_level(main)


if __name__ == "__main__":
    sys.exit(main())
