"""`openrknn serve`: run the openrknn runtime server on a board, so that a PC's init_runtime(target, device_id) runs
models there. Board side: needs only numpy and onnxruntime."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from ..runtime.server.main import add_arguments

    p = sub.add_parser("serve", help="run models for remote clients (start this on the board)",
                       description="Serve .rknn models to openrknn clients over TCP (protocol: docs/protocol.md). "
                                   "Listens on 127.0.0.1 by default; reach it with `adb forward` or an SSH tunnel, or "
                                   "serve the network with --host 0.0.0.0 --allow-remote --token-file F.")
    add_arguments(p, verbose_flag=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..runtime.server.main import run_from_args

    return run_from_args(args, standalone=False)
