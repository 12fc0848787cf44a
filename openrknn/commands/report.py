"""`openrknn report model.rknn -o report.html`: one HTML file with the model card, speed, memory and design check."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write an HTML report (model, NPU time and memory charts, design check)")
    p.add_argument("model", help=".rknn file")
    p.add_argument("-o", "--output", default="report.html", help="output HTML file (default: report.html)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..analysis.report import model_report
    from ..package import read_package

    path = model_report(read_package(args.model), args.output, model_path=args.model)
    print(f"wrote {path.resolve()}")
    return 0
