"""`openrknn gui [--host 127.0.0.1] [--port 8000]`: the conversion GUI in the browser."""

from __future__ import annotations

import argparse

from ..gui import DEFAULT_HOST, DEFAULT_PORT


def _bounded(lo: int, hi: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value} is not in {lo}..{hi}")
        return value

    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default: {DEFAULT_HOST}, this machine "
                   "only; give 0.0.0.0 only on a trusted network, then open the GUI by this machine's IP address or "
                   "host name: other names are refused, against DNS rebinding)")
    p.add_argument("--port", type=_bounded(1, 65535), default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT})")
    p.add_argument("--workdir", default=None, help="folder for session files (uploads, built models); default: a new "
                   "temporary folder")
    p.add_argument("--max-upload-mb", type=_bounded(1, 1 << 20), default=512,
                   help="largest model upload in MB (default: 512); give bigger models as a path on this machine")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gui", help="convert, inspect and test models in a local web GUI")
    add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import NotSupportedError
    from ..gui.listen import listen_socket

    sock = listen_socket(args.host, args.port)  # first: a taken port fails fast, before the web stack loads
    try:
        try:
            from ..gui.app import serve
        except ImportError as e:
            raise NotSupportedError(f"the GUI needs fastapi and uvicorn ({e}); install them with "
                                    "`pip install fastapi uvicorn`") from None
        return serve(host=args.host, port=args.port, workdir=args.workdir, max_upload_mb=args.max_upload_mb,
                     sock=sock)
    finally:
        sock.close()
