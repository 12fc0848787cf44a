"""`openrknn info model.rknn`: what a model file holds."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="show inputs, outputs, pre-processing, target and build options of a .rknn file")
    p.add_argument("model", help=".rknn file")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..package import describe_package, package_summary, read_package

    pkg = read_package(args.model)
    if args.json:
        print(json.dumps(package_summary(pkg, args.model), indent=2, sort_keys=True))
    else:
        print(describe_package(pkg, args.model))
    return 0
