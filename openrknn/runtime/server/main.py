"""The server's command line: `openrknn serve` and `python -m openrknn.runtime.server` (options, logging, start)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import List, Optional, Sequence

from ...errors import OpenRKNNError
from .. import protocol as P
from .config import ServerConfig, load_token
from .tcp import serve

log = logging.getLogger("openrknn.server")


def add_arguments(p: argparse.ArgumentParser, verbose_flag: bool = True) -> None:
    """The server's options; `openrknn serve` reuses them (its top-level parser already has -v)."""
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this board only; "
                   "reach it through `adb forward` / SSH, or bind another address with --allow-remote)")
    p.add_argument("--port", type=int, default=P.DEFAULT_PORT, help=f"TCP port (default {P.DEFAULT_PORT}; 0 = any "
                   "free port, printed at start)")
    p.add_argument("--token-file", help="file holding the shared token (created with a random token if missing); "
                   "default: the OPENRKNN_TOKEN environment variable, else no token (loopback only)")
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --host (needs a token)")
    p.add_argument("--max-message-mb", type=float, default=P.DEFAULT_MAX_MESSAGE / (1 << 20),
                   help="largest accepted message, i.e. model upload, in MiB (default %(default)g)")
    p.add_argument("--max-clients", type=int, default=32, help="authenticated connections at once (default "
                   "%(default)s)")
    p.add_argument("--max-pending", type=int, default=64, help="connections still authenticating, counted apart from "
                   "the clients; when full, the one waiting longest is dropped (default %(default)s)")
    p.add_argument("--max-models", type=int, default=16, help="models held at once (default %(default)s)")
    p.add_argument("--auth-timeout", type=float, default=10.0, help="seconds from connecting to a completed "
                   "handshake (default %(default)g)")
    p.add_argument("--io-timeout", type=float, default=30.0, help="seconds any read or write inside a message may "
                   "wait (default %(default)g)")
    p.add_argument("--min-rate-kib", type=float, default=256.0, help="a message must arrive within --io-timeout plus "
                   "its size at this rate, in KiB/s (default %(default)g)")
    p.add_argument("--idle-timeout", type=float, default=3600.0, help="seconds a client may stay idle between "
                   "requests (default %(default)g)")
    p.add_argument("--model-dir", action="append", help="folder the clients may load models from by path "
                   "(repeatable; default: the current folder)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime threads per model (default: all cores)")
    p.add_argument("--npu-core-mask", default="auto", help="NPU cores that run vendor .rknn models through "
                   "rknn-toolkit-lite2: auto, 0, 1, 2, 0_1, 0_1_2, all or a bit mask such as 0x3 (default auto)")
    p.add_argument("--tflite-delegate", default="auto", help=".tflite models: 'auto' runs them through Mesa's "
                   "Teflon delegate (libteflon.so) when it is found and loads, on the CPU otherwise; 'none' always on "
                   "the CPU; or the delegate's path (default auto)")
    p.add_argument("--log-file", help="also write the request log to this file")
    if verbose_flag:
        p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(host=args.host, port=args.port, token=load_token(args.token_file),
                        allow_remote=args.allow_remote, max_message=int(args.max_message_mb * (1 << 20)),
                        max_clients=args.max_clients, max_pending=args.max_pending, max_models=args.max_models,
                        auth_timeout=args.auth_timeout, io_timeout=args.io_timeout,
                        min_rate=args.min_rate_kib * 1024, idle_timeout=args.idle_timeout,
                        model_dirs=args.model_dir or [os.getcwd()], threads=args.threads,
                        core_mask=args.npu_core_mask, tflite_delegate=args.tflite_delegate)


def setup_logging(verbose: bool = False, log_file: Optional[str] = None, standalone: bool = True) -> None:
    """Timestamped request log on stderr (and log_file). standalone: also show other openrknn modules' messages
    (under `openrknn serve` the command line already does)."""
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handlers: List[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    for h in handlers:
        h.setFormatter(fmt)
    names = ["openrknn"] if standalone else ["openrknn.server"]
    for name in names:
        logger = logging.getLogger(name)
        logger.setLevel(logging.DEBUG if verbose else logging.INFO)
        for h in handlers:
            logger.addHandler(h)
        logger.propagate = False


def run_from_args(args: argparse.Namespace, standalone: bool = True) -> int:
    setup_logging(getattr(args, "verbose", False), args.log_file, standalone)
    try:
        config = config_from_args(args)
        serve(config)
    except OpenRKNNError as e:
        log.error("%s", e)
        return 2
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m openrknn.runtime.server",
                                     description="Run .rknn models for remote openrknn clients (the board side).")
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))
