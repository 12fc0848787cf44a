"""The server's settings and the checks made before it listens: address, token, limits."""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import socket
import tempfile
from dataclasses import dataclass, field
from typing import List, Optional

from ...errors import OpenRKNNError
from .. import protocol as P

log = logging.getLogger("openrknn.server")

MIN_REMOTE_TOKEN = 16  # characters; a token that guards a network port must not be guessable


class ServerSetupError(OpenRKNNError):
    """The server cannot start with these options (address, token, limits)."""


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = P.DEFAULT_PORT
    token: str = ""  # empty: no authentication (allowed on loopback only)
    allow_remote: bool = False
    max_message: int = P.DEFAULT_MAX_MESSAGE
    max_clients: int = 32  # authenticated connections
    max_pending: int = 64  # connections still authenticating, counted apart so they never take a client's place
    max_models: int = 16
    io_timeout: float = 30.0  # seconds any read or write inside a frame may wait
    min_rate: float = 256 * 1024  # bytes/s: a frame must be in within io_timeout + its size / min_rate
    idle_timeout: float = 3600.0  # seconds a connection may wait between requests
    auth_timeout: float = 10.0  # seconds from connect to a completed handshake, whatever the peer sends
    model_dirs: List[str] = field(default_factory=lambda: [os.getcwd()])  # where {"op":"load","path":...} may read
    threads: Optional[int] = None  # onnxruntime intra-op threads per model (None: OPENRKNN_THREADS or all cores)
    core_mask: str = "auto"  # NPU cores for vendor models (RKNNLite init_runtime core_mask; npu_lite.CORE_MASKS)
    tflite_delegate: str = "auto"  # .tflite models: 'auto' (Teflon when found), 'none' (CPU) or a delegate path


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback for i in infos)


def load_token(path: Optional[str]) -> str:
    """The token from a token file (created with a fresh random token when missing), else OPENRKNN_TOKEN, else ''."""
    if not path:
        return os.environ.get("OPENRKNN_TOKEN", "").strip()
    path = os.path.expanduser(path)
    if not os.path.exists(path):
        token = secrets.token_urlsafe(32)
        folder = os.path.dirname(os.path.abspath(path))
        try:
            fd, tmp = tempfile.mkstemp(prefix=".token.", dir=folder)  # mkstemp creates it 0600
        except OSError as e:
            raise ServerSetupError(f"cannot create token file {path}: {e.strerror}; create its folder first") from e
        try:
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(token + "\n")
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        log.warning("created a new token in %s: copy this file to the PC and name it in the devices file entry "
                    "(\"token_file\") or export OPENRKNN_TOKEN=$(cat %s)", path, path)
        return token
    if os.stat(path).st_mode & 0o077:
        log.warning("token file %s is readable by other users; chmod 600 it", path)
    with open(path, encoding="utf-8") as f:
        token = f.read().strip()
    if not token:
        raise ServerSetupError(f"token file {path} is empty; delete it to have a fresh token generated")
    return token


def check_config(config: ServerConfig) -> None:
    if not is_loopback(config.host):
        if not config.allow_remote:
            raise ServerSetupError(f"--host {config.host} is not a loopback address: anyone on the network could "
                                   "reach the server. Add --allow-remote (with --token-file) to serve the network, or "
                                   "keep 127.0.0.1 and reach it through `adb forward` or an SSH tunnel")
        if len(config.token) < MIN_REMOTE_TOKEN:
            raise ServerSetupError(f"serving {config.host} needs a token of at least {MIN_REMOTE_TOKEN} characters "
                                   "(--token-file F; a missing F is created with a random token)")
    for flag, value in (("--max-clients", config.max_clients), ("--max-pending", config.max_pending)):
        if not 1 <= value <= 4096:
            raise ServerSetupError(f"{flag} {value} must be in 1..4096")
    from ..npu_lite import parse_core_mask

    try:
        parse_core_mask(config.core_mask)
    except OpenRKNNError as e:
        raise ServerSetupError(f"--npu-core-mask: {e}") from None
    if config.tflite_delegate not in ("auto", "none") and not os.path.isfile(config.tflite_delegate):
        raise ServerSetupError(f"--tflite-delegate {config.tflite_delegate} is not a file; give the path of "
                               "libteflon.so, 'auto' (use it when found) or 'none' (CPU)")
    if config.max_message < 1 << 20:
        raise ServerSetupError(f"max message {config.max_message} bytes is below 1 MiB; no model would fit")
    for flag, value in (("--io-timeout", config.io_timeout), ("--idle-timeout", config.idle_timeout),
                        ("--auth-timeout", config.auth_timeout), ("--min-rate-kib", config.min_rate)):
        if not value > 0:
            raise ServerSetupError(f"{flag} {value} must be a positive number")
