"""`openrknn eval model.rknn VALSET`: a metric over a whole validation set, sharded across workers (a local process
pool or Ray), with a bootstrap confidence interval."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a .rknn on a validation set (sharded, with a confidence interval)",
                       description=__doc__)
    p.add_argument("model", help=".rknn file")
    p.add_argument("valset", help="validation images: a text file listing them, a folder, or a .npy [N, ...]")
    p.add_argument("--metric", default="cosine", help="cosine (to the float model) | top1 (agreement with the "
                   "float model) | accuracy | map50 (default: cosine)")
    p.add_argument("--labels", help="accuracy: '<image> <class>' lines; map50: a COCO JSON, or 'float'")
    p.add_argument("--postprocess", help="yolox (default for map50) or package.module:function")
    p.add_argument("--resize", default="letterbox", help="letterbox | stretch | crop | none (default letterbox)")
    p.add_argument("--letterbox", default="topleft", help="topleft | center (default topleft)")
    p.add_argument("--pad", type=int, default=114, help="letterbox pad value (default 114)")
    p.add_argument("--channel-order", default="bgr", help="order the model is fed: bgr | rgb (default bgr)")
    p.add_argument("--shard-size", type=int, default=8, help="images per work unit (default 8)")
    p.add_argument("--limit", type=int, default=None, help="first N images only")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: one per core)")
    p.add_argument("--ray", nargs="?", const=True, default=None, metavar="ADDRESS",
                   help="run on Ray: a local Ray started here, or the cluster at ADDRESS")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from ..sweep.evaluation import parse_eval
    from ..sweep.runner import run_eval

    block = {"images": args.valset, "metric": args.metric, "labels": args.labels, "postprocess": args.postprocess,
             "input": {"resize": args.resize, "letterbox": args.letterbox, "pad": args.pad,
                       "channel_order": args.channel_order},
             "shard_size": args.shard_size, "limit": args.limit}
    spec = parse_eval({k: v for k, v in block.items() if v is not None}, Path("."))
    result, _ = run_eval(args.model, spec, args.workers, args.ray, progress=not args.json)
    if args.json:
        print(json.dumps(result.as_dict()))
    else:
        print(f"{result.name} {result.value:.4f} ({spec.confidence:.0%} interval {result.low:.4f} .. "
              f"{result.high:.4f}) on {result.samples} samples")
    return 0
