"""`openrknn perf model.rknn`: estimated NPU time per layer and memory on the target, and measured time on this host.

The per-layer table lists the layers of your model (the parts the quantizer cut a layer into add up into its row);
--debug lists the parts under each layer. "Host" is onnxruntime on this machine, after one warm-up run, median of
--runs, with its profiler on (it also times each layer): the same measure as `openrknn detect`'s inference time.
"""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("perf", help="eval_perf + eval_memory of a .rknn: NPU estimate per layer and host measurement")
    p.add_argument("model", help=".rknn file")
    p.add_argument("--target", default=None, help="chip to estimate for (default: the model's target)")
    p.add_argument("--debug", action="store_true", help="also list the built graph's parts of each layer (the "
                   "quantizer's split parts, the nodes fused or free on the NPU)")
    p.add_argument("--runs", type=int, default=10, help="host timing runs (default 10)")
    p.add_argument("--json", default=None, help="also write both reports to this JSON file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..analysis.package_reports import eval_memory, eval_perf
    from ..package import read_package
    from ..runtime.simulator import Simulator

    pkg = read_package(args.model)
    sim = Simulator(pkg.model_bytes, pkg.metadata)
    perf = eval_perf(pkg, sim, None, True, True, target=args.target, runs=args.runs, show_parts=args.debug)
    memory = eval_memory(pkg, sim, True, target=args.target)
    if args.json:
        from ..atomic import write_text_atomic

        write_text_atomic(args.json, json.dumps({"perf": perf, "memory": memory}, indent=2, default=str))
    return 0
