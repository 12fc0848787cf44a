"""`openrknn train-eyes`: train (or evaluate) the built-in YOLOX-nano eye detector on synthetic data.

A thin front door over openrknn.vision.yolox.train, which holds the logic (and is runnable with python -m).
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-eyes", help="train the default eye detector on generated images, or evaluate weights")
    p.add_argument("--out", help="where to write the best weights (.pth state dict); required unless --eval")
    p.add_argument("--eval", metavar="WEIGHTS", help="only evaluate these weights (mAP@0.5 on a held-out set)")
    p.add_argument("--steps", type=int, default=1400)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--sizes", default="256,288,320", help="training input sizes, one picked per step")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--minutes", type=float, default=None, help="wall-time limit for training")
    p.add_argument("--threads", type=int, default=1, help="torch threads (keep 1 on a shared machine)")
    p.add_argument("--n", type=int, default=200, help="held-out images for --eval")
    p.add_argument("--eval-seed", type=int, default=12345)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..vision.yolox import train as trainer

    if args.eval:
        return trainer.main(["--threads", str(args.threads), "eval", args.eval, "--n", str(args.n),
                             "--seed", str(args.eval_seed)])
    if not args.out:
        raise SystemExit("openrknn train-eyes: --out is required to train (or give --eval WEIGHTS)")
    argv = ["--out", args.out, "--steps", str(args.steps), "--batch", str(args.batch), "--sizes", args.sizes,
            "--lr", str(args.lr), "--seed", str(args.seed), "--threads", str(args.threads)]
    if args.minutes is not None:
        argv += ["--minutes", str(args.minutes)]
    return trainer.main(argv)
