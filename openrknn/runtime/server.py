"""The openrknn runtime server: runs .rknn models for remote clients (`openrknn serve`, `python -m
openrknn.runtime.server`).

It runs on the board (any Linux with Python, numpy and onnxruntime) and imports nothing else: the standard library,
numpy, onnxruntime, the container reader, the simulator and openrknn.errors. docs/protocol.md specifies the wire
protocol; this module is its reference server. One thread per connection (socketserver.ThreadingTCPServer); models
are shared between connections by content (SHA-256) and released when the last connection that holds them closes.
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import logging
import os
import platform
import secrets
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .. import __version__
from ..errors import InferenceInputError, OpenRKNNError, RuntimeStateError
from ..package import read_package_bytes
from . import protocol as P
from .feeds import prepare_feeds

# onnxruntime (and the simulator, which imports it) load lazily: `openrknn --help` must not pay for them; serve()
# imports them before it listens, so a board without onnxruntime fails at start, not at the first request.

if TYPE_CHECKING:
    from .simulator import Simulator

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
    max_clients: int = 32
    max_models: int = 16
    io_timeout: float = 30.0  # seconds for each read/write inside a frame
    idle_timeout: float = 3600.0  # seconds a connection may wait between requests
    auth_timeout: float = 10.0  # seconds to complete the handshake
    model_dirs: List[str] = field(default_factory=lambda: [os.getcwd()])  # where {"op":"load","path":...} may read
    threads: Optional[int] = None  # onnxruntime intra-op threads per model (None: OPENRKNN_THREADS or all cores)


# ---------------------------------------------------------------- facts about this machine


def _meminfo() -> Dict[str, int]:
    out = {}
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if parts and parts[0].isdigit():
                    out[key] = int(parts[0]) * 1024
    except OSError:
        pass
    return out


def process_memory() -> Dict[str, Optional[int]]:
    """This process's resident set size now and at its peak, in bytes (None where the OS does not say)."""
    rss = peak = None
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) * 1024
    except OSError:
        try:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        except (ImportError, OSError):
            pass
    return {"rss_bytes": rss, "peak_rss_bytes": peak}


def _board_model() -> Optional[str]:
    # Rockchip boards name themselves here ("Rockchip RK1808 EVB"); absent on PCs
    try:
        with open("/proc/device-tree/model", "rb") as f:
            return f.read().rstrip(b"\x00\n").decode("utf-8", "replace") or None
    except OSError:
        return None


def device_facts() -> dict:
    import onnxruntime as ort

    mem = _meminfo()
    return {
        "openrknn": __version__,
        "protocol": P.PROTOCOL_VERSION,
        "hostname": socket.gethostname(),
        "machine": platform.machine(),
        "system": platform.system(),
        "platform": platform.platform(),
        "board": _board_model(),
        "cpu_cores": os.cpu_count(),
        "ram_bytes": mem.get("MemTotal"),
        "ram_available_bytes": mem.get("MemAvailable"),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(),
    }


# ---------------------------------------------------------------- per-layer timings


def parse_profile(events: Sequence[dict], skip_runs: int = 1) -> dict:
    """Per-node mean kernel time from an onnxruntime profile (Chrome trace events), ignoring the first skip_runs runs
    (warm-up). Pure, so it can be tested on a saved trace."""
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])
    if len(runs) <= skip_runs:
        raise RuntimeStateError(f"the profile holds {len(runs)} run(s), need more than {skip_runs}")
    start = runs[skip_runs]["ts"]
    kept = runs[skip_runs:]
    layers: Dict[str, dict] = {}
    for e in events:
        if e.get("cat") != "Node" or e.get("ts", -1) < start or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        name = e["name"][: -len("_kernel_time")]
        row = layers.setdefault(name, {"name": name, "op_type": (e.get("args") or {}).get("op_name", "?"),
                                       "time_us": 0.0, "first_ts": e["ts"]})
        row["time_us"] += float(e.get("dur", 0))
    rows = sorted(layers.values(), key=lambda r: r["first_ts"])
    for r in rows:
        r["time_us"] = round(r["time_us"] / len(kept), 3)
        del r["first_ts"]
    return {"layers": rows, "total_us": round(sum(float(r["dur"]) for r in kept) / len(kept), 3),
            "layers_total_us": round(sum(r["time_us"] for r in rows), 3), "runs": len(kept)}


def profile_model(model_bytes: bytes, feeds: Dict[str, np.ndarray], runs: int, threads: Optional[int]) -> dict:
    """Run the model `runs` times (plus one warm-up) under onnxruntime's profiler on this machine."""
    import json

    from .simulator import make_session

    with tempfile.TemporaryDirectory(prefix="openrknn-prof-") as tmp:
        session = make_session(model_bytes, threads, profile_prefix=os.path.join(tmp, "profile"))
        names = [o.name for o in session.get_outputs()]
        wall = []
        for _ in range(runs + 1):
            t = time.perf_counter()
            session.run(names, feeds)
            wall.append((time.perf_counter() - t) * 1e6)
        path = session.end_profiling()
        with open(path, encoding="utf-8") as f:
            events = json.load(f)
    result = parse_profile(events, skip_runs=1)
    result["wall_median_us"] = round(float(np.median(wall[1:])), 3)
    result["fps"] = round(1e6 / result["total_us"], 2) if result["total_us"] > 0 else None
    result["host"] = socket.gethostname()
    return result


# ---------------------------------------------------------------- models


@dataclass
class LoadedModel:
    key: str  # SHA-256 of the package bytes
    simulator: "Simulator"
    model_bytes: bytes  # kept for profiling sessions
    package_bytes: int
    rss_delta_bytes: Optional[int]
    source: str
    refs: int = 0
    loaded_at: float = field(default_factory=time.time)


class ModelRegistry:
    """Models by content; each connection holds references, the last release frees the session."""

    def __init__(self, max_models: int, threads: Optional[int]):
        self.max_models, self.threads = max_models, threads
        self._models: Dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._models)

    def get(self, key: str) -> Optional[LoadedModel]:
        with self._lock:
            return self._models.get(key)

    def acquire(self, key: str) -> Optional[LoadedModel]:
        with self._lock:
            entry = self._models.get(key)
            if entry is not None:
                entry.refs += 1
            return entry

    def load(self, data: bytes, source: str) -> Tuple[LoadedModel, bool]:
        """(entry, shared): parse and open the package unless the same bytes are already loaded."""
        key = hashlib.sha256(data).hexdigest()
        entry = self.acquire(key)
        if entry is not None:
            return entry, True
        with self._lock:
            if len(self._models) >= self.max_models:
                raise RuntimeStateError(f"the server already holds {len(self._models)} models (its limit); release "
                                        "models you no longer use (rknn.release()) or restart it with a larger "
                                        "--max-models")
        from .simulator import Simulator

        pkg = read_package_bytes(data, source)
        before = process_memory()["rss_bytes"]
        sim = Simulator(pkg.model_bytes, pkg.metadata, threads=self.threads, allow_spinning=False)
        after = process_memory()["rss_bytes"]
        delta = after - before if before is not None and after is not None else None
        fresh = LoadedModel(key, sim, pkg.model_bytes, len(data), delta, source)
        with self._lock:
            entry = self._models.setdefault(key, fresh)  # another connection may have loaded it meanwhile
            entry.refs += 1
        if entry is not fresh:
            sim.release()
        return entry, entry is not fresh

    def release(self, key: str) -> None:
        with self._lock:
            entry = self._models.get(key)
            if entry is None:
                return
            entry.refs -= 1
            if entry.refs <= 0:
                del self._models[key]
                entry.simulator.release()
                log.info("model %s unloaded (no connection holds it)", key[:12])


# ---------------------------------------------------------------- one connection


def _check_run_options(header: dict) -> Tuple[object, object, object]:
    """data_type / data_format / pass_through exactly as inference() takes them, JSON types only."""

    def str_or_list(key: str, default):
        v = header.get(key, default)
        ok = v is None or isinstance(v, str) or (isinstance(v, list) and all(x is None or isinstance(x, str)
                                                                            for x in v))
        if not ok:
            raise InferenceInputError(f"{key}={v!r:.80} must be a string, null or a list of them")
        return v

    passes = header.get("pass_through")
    if passes is not None and not (isinstance(passes, list) and all(isinstance(x, (int, bool)) for x in passes)):
        raise InferenceInputError(f"inputs_pass_through={passes!r:.80} must be a list of 0/1")
    return str_or_list("data_type", None), str_or_list("data_format", "nhwc"), passes


class Connection:
    """Handshake, then one reply per request until the client leaves, breaks the protocol or idles out."""

    def __init__(self, server: "RuntimeServer", sock: socket.socket, peer: Tuple, number: int):
        self.server, self.sock, self.number = server, sock, number
        self.peer = f"{peer[0]}:{peer[1]}" if len(peer) >= 2 else str(peer)
        self.handles: Dict[str, str] = {}  # handle -> registry key
        self._next_handle = 1
        self.ops: Dict[str, Callable[[P.Frame], Tuple[dict, list]]] = {
            "info": self.op_info, "load": self.op_load, "attach": self.op_attach, "run": self.op_run,
            "perf": self.op_perf, "memory": self.op_memory, "unload": self.op_unload, "bye": self.op_bye}
        self.closing = False

    @property
    def cfg(self) -> ServerConfig:
        return self.server.config

    def send(self, header: dict, arrays: Sequence[np.ndarray] = ()) -> int:
        self.sock.settimeout(self.cfg.io_timeout)
        return P.send_frame(self.sock, header, arrays)

    def send_error_quietly(self, kind: str, message: str) -> None:
        """Answer a request that ends the connection. The peer may still be sending (the rest of a frame we refused):
        closing with unread data would reset the connection and lose this answer, so half-close and drain briefly."""
        try:
            self.send(P.error_header(kind, message))
            self.sock.shutdown(socket.SHUT_WR)
            self.sock.settimeout(0.5)
            drained, deadline = 0, time.monotonic() + 2.0  # bounded: a flood cannot keep this thread
            while drained < 8 << 20 and time.monotonic() < deadline:
                chunk = self.sock.recv(1 << 16)
                if not chunk:
                    break
                drained += len(chunk)
        except (OSError, OpenRKNNError):
            pass  # the peer is gone or broken; closing is all that is left

    # ---- handshake
    def handshake(self) -> bool:
        cfg = self.cfg
        nonce = secrets.token_hex(16)
        self.send({"op": "challenge", "protocol": P.PROTOCOL_VERSION, "server": "openrknn", "version": __version__,
                   "nonce": nonce, "auth": bool(cfg.token), "max_message": cfg.max_message})
        try:
            frame = P.recv_frame(self.sock, max_message=P.HANDSHAKE_MAX_HEADER, max_header=P.HANDSHAKE_MAX_HEADER,
                                 first_timeout=cfg.auth_timeout, io_timeout=min(cfg.auth_timeout, cfg.io_timeout))
        except P.PeerClosedError:
            log.info("conn %d %s: closed before authenticating", self.number, self.peer)
            return False
        except P.ProtocolError as e:
            self.server.count("protocol_errors")
            log.warning("conn %d %s: handshake refused: %s", self.number, self.peer, e)
            self.send_error_quietly(type(e).__name__, str(e))
            return False
        h = frame.header
        if h.get("op") != "auth" or frame.arrays or frame.blob.nbytes:
            self.server.count("auth_failures")
            log.warning("conn %d %s: request %r before authentication refused", self.number, self.peer,
                        str(h.get("op"))[:40])
            self.send_error_quietly("AuthError", "authenticate first: the first message must be the auth reply to "
                                                 "the server's challenge")
            return False
        if h.get("protocol") != P.PROTOCOL_VERSION:
            log.warning("conn %d %s: client protocol %r refused", self.number, self.peer, h.get("protocol"))
            self.send_error_quietly("ProtocolVersionError",
                                    f"the client speaks protocol version {h.get('protocol')!r}, this server speaks "
                                    f"{P.PROTOCOL_VERSION} (openrknn {__version__}); install the same openrknn "
                                    "version on the board and the PC")
            return False
        if not P.macs_equal(P.client_mac(cfg.token, nonce), h.get("mac")):
            self.server.count("auth_failures")
            log.warning("conn %d %s: wrong token", self.number, self.peer)
            self.send_error_quietly("AuthError", "wrong token: the client's token does not match the server's "
                                                 "--token-file; copy the token file from the board to the PC")
            return False
        cnonce = h.get("client_nonce")
        reply = {"ok": True, "device": device_facts()}
        if isinstance(cnonce, str) and cnonce.isascii() and len(cnonce) <= 128:
            reply["mac"] = P.server_mac(cfg.token, nonce, cnonce)
        self.send(reply)
        log.info("conn %d %s: authenticated (client %s)", self.number, self.peer, str(h.get("client", "?"))[:60])
        return True

    # ---- request loop
    def serve(self) -> None:
        try:
            if not self.handshake():
                return
            while not self.closing:
                try:
                    frame = P.recv_frame(self.sock, max_message=self.cfg.max_message,
                                         first_timeout=self.cfg.idle_timeout, io_timeout=self.cfg.io_timeout)
                except P.PeerClosedError:
                    break
                except P.ProtocolError as e:  # framing is lost: answer once, then close
                    self.server.count("protocol_errors")
                    log.warning("conn %d %s: protocol error, closing: %s", self.number, self.peer, e)
                    self.send_error_quietly(type(e).__name__, str(e))
                    break
                except socket.timeout:
                    log.info("conn %d %s: timed out waiting for the client, closing", self.number, self.peer)
                    break
                self.handle(frame)
        except P.ConnectionLostError as e:
            log.warning("conn %d %s: %s", self.number, self.peer, e)
        except OSError as e:
            log.warning("conn %d %s: connection error: %s", self.number, self.peer, e)
        finally:
            for key in self.handles.values():
                self.server.registry.release(key)
            self.handles.clear()
            log.info("conn %d %s: closed", self.number, self.peer)

    def handle(self, frame: P.Frame) -> None:
        op = frame.header.get("op")
        t0 = time.perf_counter()
        self.server.count("requests")
        fn = self.ops.get(op) if isinstance(op, str) else None
        try:
            if fn is None:
                raise P.ProtocolError(f"unknown request op {op!r:.40}; known: {', '.join(self.ops)}")
            header, arrays = fn(frame)
            arrays = [P.to_wire_array(a, f"output {i}") for i, a in enumerate(arrays)]
            status = "ok"
        except OpenRKNNError as e:
            header, arrays, status = P.error_header(type(e).__name__, str(e)), [], type(e).__name__
            self.server.count("errors")
        except Exception as e:  # a bug or an onnxruntime failure: report it, keep serving
            log.exception("conn %d %s: %r failed", self.number, self.peer, op)
            header, arrays, status = P.error_header("InternalError", f"{type(e).__name__}: {e}"), [], "InternalError"
            self.server.count("errors")
        sent = self.send(header, arrays)
        log.info("conn %d %s: %s %s -> %s in %.1f ms (%d bytes in, %d out)", self.number, self.peer, str(op)[:20],
                 frame.header.get("handle", ""), status, (time.perf_counter() - t0) * 1e3, frame.size, sent)

    # ---- operations: each returns (reply header, reply arrays)
    def _entry(self, frame: P.Frame) -> LoadedModel:
        handle = frame.header.get("handle")
        key = self.handles.get(handle) if isinstance(handle, str) else None
        entry = self.server.registry.get(key) if key else None  # this connection's reference keeps it alive
        if entry is None:
            raise RuntimeStateError(f"unknown model handle {handle!r:.40} on this connection; load the model first "
                                    "(init_runtime())")
        return entry

    def _new_handle(self, entry: LoadedModel, shared: bool) -> dict:
        handle = f"m{self._next_handle}"
        self._next_handle += 1
        self.handles[handle] = entry.key
        meta = entry.simulator.metadata
        return {"ok": True, "handle": handle, "sha256": entry.key, "shared": shared,
                "inputs": meta.get("inputs"), "outputs": meta.get("outputs")}

    def op_info(self, frame: P.Frame):
        return {"ok": True, "device": device_facts(), "stats": self.server.stats()}, []

    def op_load(self, frame: P.Frame):
        path = frame.header.get("path")
        if path is not None:
            data, source = self._read_board_path(path), f"{path} (on the board)"
        elif frame.blob.nbytes:
            data, source = bytes(frame.blob), f"model pushed by {self.peer}"
        else:
            raise P.ProtocolError("load needs the package bytes (blob) or a 'path' on the board")
        entry, shared = self.server.registry.load(data, source)
        log.info("conn %d %s: model %s %s (%d bytes, %s)", self.number, self.peer, entry.key[:12],
                 "shared" if shared else "loaded", len(data), source)
        return self._new_handle(entry, shared), []

    def _read_board_path(self, path: object) -> bytes:
        if not isinstance(path, str) or not path:
            raise P.ProtocolError(f"load path must be a non-empty string, got {path!r:.80}")
        real = os.path.realpath(path)
        roots = [os.path.realpath(d) for d in self.cfg.model_dirs]
        if not any(os.path.commonpath([real, r]) == r for r in roots):
            raise RuntimeStateError(f"{path} is outside the folders this server may read models from "
                                    f"({', '.join(roots)}); copy the model there or restart the server with "
                                    "--model-dir")
        try:
            size = os.path.getsize(real)
            if size > self.cfg.max_message:
                raise P.MessageTooLargeError(f"{path} has {size:,} bytes, over the server's "
                                             f"{self.cfg.max_message:,}-byte model limit (--max-message-mb)")
            with open(real, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise RuntimeStateError(f"{path} does not exist on the board") from None
        except IsADirectoryError:
            raise RuntimeStateError(f"{path} is a folder on the board; give the .rknn file") from None

    def op_attach(self, frame: P.Frame):
        key = frame.header.get("sha256")
        entry = self.server.registry.acquire(key) if isinstance(key, str) else None
        if entry is None:
            return {"ok": True, "handle": None}, []  # not loaded here: the client uploads it
        return self._new_handle(entry, True), []

    def op_run(self, frame: P.Frame):
        entry = self._entry(frame)
        data_type, data_format, passes = _check_run_options(frame.header)
        t = time.perf_counter()
        outputs = entry.simulator.run(list(frame.arrays), data_type=data_type, data_format=data_format,
                                      pass_through=passes)
        return {"ok": True, "run_us": round((time.perf_counter() - t) * 1e6, 1)}, outputs

    def op_perf(self, frame: P.Frame):
        entry = self._entry(frame)
        runs = frame.header.get("runs", 10)
        if not isinstance(runs, int) or isinstance(runs, bool) or not 1 <= runs <= 1000:
            raise InferenceInputError(f"perf runs={runs!r:.40} must be an int in 1..1000")
        sim = entry.simulator
        names = [m["name"] for m in sim.inputs_meta]
        feed_names = frame.header.get("feed_names")
        if feed_names is not None:  # graph-ready tensors, as Simulator.run_feeds takes them
            if feed_names != names or len(frame.arrays) != len(names):
                raise InferenceInputError(f"perf feeds are named {feed_names!r:.200}; the model's graph inputs are "
                                          f"{names}")
            named = dict(zip(names, frame.arrays))
        else:
            inputs = list(frame.arrays) or [np.zeros(m["shape"], np.dtype(m.get("dtype", "float32")))
                                            for m in sim.inputs_meta]
            data_type, data_format, passes = _check_run_options(frame.header)
            feeds = prepare_feeds(inputs, sim.inputs_meta, data_type=data_type, data_format=data_format,
                                  pass_through=passes)
            # a batched model's graph takes one frame at a time (as the simulator runs it): time one frame
            named = {n: np.split(f, sim.batch)[0] if sim.batch > 1 else f for n, f in zip(names, feeds)}
        result = profile_model(entry.model_bytes, named, runs, self.cfg.threads)
        return {"ok": True, "perf": result}, []

    def op_memory(self, frame: P.Frame):
        entry = self._entry(frame)
        mem = _meminfo()
        proc = process_memory()
        return {"ok": True, "memory": {
            "rss_bytes": proc["rss_bytes"], "peak_rss_bytes": proc["peak_rss_bytes"],
            "package_bytes": entry.package_bytes, "model_bytes": len(entry.model_bytes),
            "load_rss_delta_bytes": entry.rss_delta_bytes, "models_loaded": len(self.server.registry),
            "ram_bytes": mem.get("MemTotal"), "ram_available_bytes": mem.get("MemAvailable")}}, []

    def op_unload(self, frame: P.Frame):
        handle = frame.header.get("handle")
        key = self.handles.pop(handle, None) if isinstance(handle, str) else None
        if key is None:
            raise RuntimeStateError(f"unknown model handle {handle!r:.40} on this connection")
        self.server.registry.release(key)
        return {"ok": True}, []

    def op_bye(self, frame: P.Frame):
        self.closing = True
        return {"ok": True}, []


# ---------------------------------------------------------------- the server


class _Handler(socketserver.BaseRequestHandler):
    server: "RuntimeServer"

    def handle(self) -> None:
        srv = self.server
        sock: socket.socket = self.request
        P.tune_socket(sock)
        number = srv.count("connections")
        if not srv.slots.acquire(blocking=False):
            log.warning("conn %d %s: refused, %d clients already connected (--max-clients)", number,
                        self.client_address, srv.config.max_clients)
            sock.settimeout(srv.config.io_timeout)
            try:
                P.send_frame(sock, P.error_header("ServerBusy", f"the server already serves {srv.config.max_clients}"
                                                                " clients (--max-clients); try again later"))
            except OSError:
                pass
            return
        srv.count("active_connections")
        try:
            Connection(srv, sock, self.client_address, number).serve()
        finally:
            srv.count("active_connections", -1)
            srv.slots.release()


class RuntimeServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True  # a restarted server must rebind at once, whatever TIME_WAIT sockets remain
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, config: ServerConfig):
        self.config = config
        self.address_family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
        self.registry = ModelRegistry(config.max_models, config.threads)
        self.slots = threading.BoundedSemaphore(config.max_clients)
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
        out["models_loaded"] = len(self.registry)
        out["uptime_s"] = round(time.time() - self.started, 1)
        return out

    def handle_error(self, request, client_address) -> None:  # never let one connection's failure go unlogged
        log.exception("unexpected error serving %s", client_address)


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
    if not 1 <= config.max_clients <= 4096:
        raise ServerSetupError(f"--max-clients {config.max_clients} must be in 1..4096")
    if config.max_message < 1 << 20:
        raise ServerSetupError(f"max message {config.max_message} bytes is below 1 MiB; no model would fit")


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


def spawn_server(args: Sequence[str] = (), env: Optional[dict] = None, timeout: float = 30.0,
                 stderr=None) -> Tuple[subprocess.Popen, int]:
    """Start `python -m openrknn.runtime.server --port 0 *args` as a child process and wait until it listens.
    Returns (process, port). For benchmarks, tests and local experiments; the caller stops the process."""

    cmd = [sys.executable, "-m", "openrknn.runtime.server", "--port", "0", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, env=env, text=True)
    result: Dict[str, str] = {}

    def read_first_line():
        result["line"] = proc.stdout.readline()

    reader = threading.Thread(target=read_first_line, daemon=True)
    reader.start()
    reader.join(timeout)
    line = result.get("line", "")
    if "listening on" not in line:
        proc.kill()
        proc.wait()
        raise ServerSetupError(f"the server did not start within {timeout:g} s (exit code {proc.returncode}, "
                               f"first line {line!r}); run `{' '.join(cmd)}` by hand to see why")
    port = int(line.split("listening on ", 1)[1].split(" ", 1)[0].rsplit(":", 1)[1])
    return proc, port


# ---------------------------------------------------------------- command line


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
    p.add_argument("--max-clients", type=int, default=32, help="simultaneous connections (default %(default)s)")
    p.add_argument("--max-models", type=int, default=16, help="models held at once (default %(default)s)")
    p.add_argument("--io-timeout", type=float, default=30.0, help="seconds per read/write inside a message")
    p.add_argument("--idle-timeout", type=float, default=3600.0, help="seconds a client may stay idle")
    p.add_argument("--model-dir", action="append", help="folder the clients may load models from by path "
                   "(repeatable; default: the current folder)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime threads per model (default: all cores)")
    p.add_argument("--log-file", help="also write the request log to this file")
    if verbose_flag:
        p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(host=args.host, port=args.port, token=load_token(args.token_file),
                        allow_remote=args.allow_remote, max_message=int(args.max_message_mb * (1 << 20)),
                        max_clients=args.max_clients, max_models=args.max_models, io_timeout=args.io_timeout,
                        idle_timeout=args.idle_timeout, model_dirs=args.model_dir or [os.getcwd()],
                        threads=args.threads)


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


if __name__ == "__main__":
    sys.exit(main())
