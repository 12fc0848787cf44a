"""`openrknn info model.rknn`: what a model file holds."""

from __future__ import annotations

import argparse
import json
import logging
import sys

log = logging.getLogger("openrknn.info")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="show inputs, outputs, pre-processing, target and build options of a .rknn file")
    p.add_argument("model", help=".rknn file")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import OpenRKNNError
    from ..package import read_package
    from ..package_info import describe_package, package_summary

    try:
        pkg = read_package(args.model)
        text = (json.dumps(package_summary(pkg, args.model), indent=2, sort_keys=True) if args.json
                else describe_package(pkg, args.model))
    except OpenRKNNError:
        raise  # the command line prints these as one "error:" line
    except Exception as e:  # a file the reader accepted but we cannot show: a bug of ours, still one line
        print(f"error: could not describe {args.model}: {type(e).__name__}: {e} (this is a bug in openrknn; please "
              "report it with the file)", file=sys.stderr)
        log.debug("traceback", exc_info=True)
        return 3
    print(text)
    return 0
