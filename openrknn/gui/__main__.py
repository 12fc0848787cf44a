"""`python -m openrknn.gui [--host 127.0.0.1] [--port 8000]`: the same as `openrknn gui`."""

from __future__ import annotations

import sys

from ..commands.gui import add_arguments, run
from ..errors import OpenRKNNError


def main(argv=None) -> int:
    import argparse
    import logging

    parser = argparse.ArgumentParser(prog="python -m openrknn.gui", description="openrknn conversion GUI (local web "
                                     "app)")
    add_arguments(parser)
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname).1s openrknn: %(message)s"))
    root = logging.getLogger("openrknn")
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False
    try:
        return run(args)
    except OpenRKNNError as e:  # as `openrknn gui` reports it: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
