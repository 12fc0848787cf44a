"""The listening socket: one thread per connection (socketserver.ThreadingTCPServer), the shared model registry,
admission budgets and counters, and serve() (run until SIGINT/SIGTERM)."""

from __future__ import annotations

import logging
import signal
import socket
import socketserver
import threading
import time
from typing import Callable, Optional

from .. import protocol as P
from .admission import Admission
from .config import ServerConfig, ServerSetupError, check_config
from .connection import Connection
from .registry import ModelRegistry

log = logging.getLogger("openrknn.server")


class _Handler(socketserver.BaseRequestHandler):
    server: "RuntimeServer"

    def handle(self) -> None:
        srv = self.server
        P.tune_socket(self.request)
        number = srv.count("connections")
        srv.count("active_connections")
        try:
            Connection(srv, self.request, self.client_address, number).serve()
        finally:
            srv.count("active_connections", -1)


class RuntimeServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True  # a restarted server must rebind at once, whatever TIME_WAIT sockets remain
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, config: ServerConfig):
        self.config = config
        self.address_family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
        self.registry = ModelRegistry(config.max_models, config.threads, config.core_mask,
                                      None if config.tflite_delegate == "none" else config.tflite_delegate)
        self.admission = Admission(config.max_pending, config.max_clients)
        self._stats = {"connections": 0, "active_connections": 0, "requests": 0, "errors": 0, "protocol_errors": 0,
                       "auth_failures": 0}
        self._stats_lock = threading.Lock()
        self.started = time.time()
        super().__init__((config.host, config.port), _Handler)

    def count(self, key: str, step: int = 1) -> int:
        with self._stats_lock:
            self._stats[key] += step
            return self._stats[key]

    def stats(self) -> dict:
        with self._stats_lock:
            out = dict(self._stats)
        out.update(self.admission.counts())
        out["models_loaded"] = len(self.registry)
        out["uptime_s"] = round(time.time() - self.started, 1)
        return out

    def handle_error(self, request, client_address) -> None:  # never let one connection's failure go unlogged
        log.exception("unexpected error serving %s", client_address)


def make_server(config: ServerConfig) -> RuntimeServer:
    check_config(config)
    try:
        return RuntimeServer(config)
    except OSError as e:
        raise ServerSetupError(f"cannot listen on {config.host}:{config.port}: {e.strerror or e}. Is another "
                               "server running there? Pick another --port") from e


def serve(config: ServerConfig, ready: Optional[Callable[[RuntimeServer], None]] = None) -> None:
    """Run until SIGINT/SIGTERM. `ready` is called once the socket listens (tests, embedding)."""
    try:
        import onnxruntime  # noqa: F401  (fail now, not at the first request)
    except ImportError as e:
        raise ServerSetupError(f"onnxruntime is not installed ({e}); on the board: pip install numpy onnxruntime"
                               ) from e
    server = make_server(config)
    host, port = server.server_address[:2]

    def stop(signum, _frame):
        log.info("signal %d: shutting down", signum)
        threading.Thread(target=server.shutdown, daemon=True).start()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
    auth = "token required" if config.token else "NO token (loopback only)"
    # one parseable line on stdout: scripts and test fixtures wait for it (and read the port when --port 0)
    print(f"openrknn runtime server listening on {host}:{port} (protocol {P.PROTOCOL_VERSION}, {auth}, "
          f"max message {config.max_message >> 20} MiB)", flush=True)
    if not config.token:
        log.warning("no token: any local user can run models on this server; use --token-file")
    if ready:
        ready(server)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
        log.info("server stopped")
