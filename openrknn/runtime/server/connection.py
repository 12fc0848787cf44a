"""One client connection: the handshake, then one reply per request until the client leaves, breaks the protocol or
idles out (docs/protocol.md).

Every frame the server refuses is answered with an error frame before the connection closes, and logged as one line:
the handshake must be complete within --auth-timeout of connecting, every later frame within --io-timeout plus its
size at --min-rate-kib, and everything is bounded before it is allocated (protocol.recv_frame).
"""

from __future__ import annotations

import logging
import secrets
import socket
import time
from typing import TYPE_CHECKING, Callable, Dict, Sequence, Tuple

import numpy as np

from ... import __version__
from ...errors import InferenceInputError, OpenRKNNError, PackageError, RuntimeStateError
from .. import protocol as P
from ..feeds import prepare_feeds
from .admission import Admission
from .backends import time_runs
from .facts import device_facts, meminfo, process_memory
from .profiling import profile_model
from .registry import ServedModel, read_model_file

if TYPE_CHECKING:
    from .config import ServerConfig
    from .tcp import RuntimeServer

log = logging.getLogger("openrknn.server")

DRAIN_S = 2.0  # how long a refused peer's remaining bytes are read before closing (so the refusal is not reset)


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


def _error_kind(e: Exception) -> str:
    # a frame that timed out is reported as the protocol error it is (the kinds clients know: docs/protocol.md)
    return "ProtocolError" if isinstance(e, P.FrameTimeoutError) else type(e).__name__


class Connection:
    """Handshake, then one reply per request until the client leaves, breaks the protocol or idles out."""

    def __init__(self, server: "RuntimeServer", sock: socket.socket, peer: Tuple, number: int):
        self.server, self.sock, self.number = server, sock, number
        self.peer = f"{peer[0]}:{peer[1]}" if len(peer) >= 2 else str(peer)
        self.connected = time.monotonic()
        self.handles: Dict[str, str] = {}  # handle -> registry key
        self._next_handle = 1
        self.ops: Dict[str, Callable[[P.Frame], Tuple[dict, list]]] = {
            "info": self.op_info, "load": self.op_load, "attach": self.op_attach, "run": self.op_run,
            "perf": self.op_perf, "memory": self.op_memory, "unload": self.op_unload, "bye": self.op_bye}
        self.closing = False
        self.evicted = False

    @property
    def cfg(self) -> "ServerConfig":
        return self.server.config

    def send(self, header: dict, arrays: Sequence[np.ndarray] = ()) -> int:
        self.sock.settimeout(self.cfg.io_timeout)
        return P.send_frame(self.sock, header, arrays)

    def refuse(self, kind: str, message: str, drain_s: float = DRAIN_S) -> None:
        """Answer a request that ends the connection. The peer may still be sending (the rest of a frame we refused):
        closing with unread data would reset the connection and lose this answer, so half-close and drain briefly."""
        try:
            self.sock.settimeout(min(self.cfg.io_timeout, 5.0))  # a peer that does not read cannot hold us
            P.send_frame(self.sock, P.error_header(kind, message))
            self.sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + drain_s  # bounded: a flood cannot keep this thread
            drained = 0
            while drained < 8 << 20:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.sock.settimeout(min(left, 0.5))
                chunk = self.sock.recv(1 << 16)
                if not chunk:
                    break
                drained += len(chunk)
        except (OSError, OpenRKNNError):
            pass  # the peer is gone or broken; closing is all that is left

    def evict(self) -> None:
        """Called by Admission from another thread: wake this connection's blocked read so it answers ServerBusy."""
        self.evicted = True
        try:
            self.sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass

    # ---- handshake
    def handshake(self) -> bool:
        cfg, srv = self.cfg, self.server
        deadline = self.connected + cfg.auth_timeout
        nonce = secrets.token_hex(16)
        self.send({"op": "challenge", "protocol": P.PROTOCOL_VERSION, "server": "openrknn", "version": __version__,
                   "nonce": nonce, "auth": bool(cfg.token), "max_message": cfg.max_message})
        try:
            frame = P.recv_frame(self.sock, max_message=P.HANDSHAKE_MAX_HEADER, max_header=P.HANDSHAKE_MAX_HEADER,
                                 io_timeout=min(cfg.auth_timeout, cfg.io_timeout), deadline=deadline)
        except P.PeerClosedError:
            if self.evicted:
                return self._refuse_busy_pending()
            log.info("conn %d %s: closed before authenticating", self.number, self.peer)
            return False
        except P.ProtocolError as e:  # also a handshake frame that missed --auth-timeout
            if self.evicted:
                return self._refuse_busy_pending()
            srv.count("protocol_errors")
            log.warning("conn %d %s: handshake refused: %s", self.number, self.peer, e)
            self.refuse(_error_kind(e), str(e), drain_s=0.5)
            return False
        except socket.timeout:
            srv.count("auth_failures")
            log.warning("conn %d %s: no handshake within --auth-timeout %g s, closing", self.number, self.peer,
                        cfg.auth_timeout)
            self.refuse("AuthError", f"no authentication within {cfg.auth_timeout:g} s of connecting "
                                     "(--auth-timeout)", drain_s=0.5)
            return False
        except P.ConnectionLostError as e:  # the peer stopped sending mid-frame
            if self.evicted:
                return self._refuse_busy_pending()
            srv.count("protocol_errors")
            log.warning("conn %d %s: handshake frame incomplete: %s", self.number, self.peer, e)
            self.refuse("ProtocolError", f"incomplete frame: {e}", drain_s=0.5)
            return False
        return self._authenticate(frame, nonce)

    def _refuse_busy_pending(self) -> bool:
        log.warning("conn %d %s: dropped while authenticating: %d connections were authenticating at once "
                    "(--max-pending), this one had waited longest", self.number, self.peer, self.cfg.max_pending)
        self.refuse("ServerBusy", f"too many connections were authenticating at once ({self.cfg.max_pending}, "
                                  "--max-pending) and this one had waited longest; connect again", drain_s=0.5)
        return False

    def _authenticate(self, frame: P.Frame, nonce: str) -> bool:
        cfg, srv = self.cfg, self.server
        h = frame.header
        if h.get("op") != "auth" or frame.arrays or frame.blob.nbytes:
            srv.count("auth_failures")
            log.warning("conn %d %s: request %r before authentication refused", self.number, self.peer,
                        str(h.get("op"))[:40])
            self.refuse("AuthError", "authenticate first: the first message must be the auth reply to the server's "
                                     "challenge")
            return False
        if h.get("protocol") != P.PROTOCOL_VERSION:
            log.warning("conn %d %s: client protocol %r refused", self.number, self.peer, str(h.get("protocol"))[:40])
            self.refuse("ProtocolVersionError",
                        f"the client speaks protocol version {h.get('protocol')!r:.40}, this server speaks "
                        f"{P.PROTOCOL_VERSION} (openrknn {__version__}); install the same openrknn version on the "
                        "board and the PC")
            return False
        if not P.macs_equal(P.client_mac(cfg.token, nonce), h.get("mac")):
            srv.count("auth_failures")
            log.warning("conn %d %s: wrong token", self.number, self.peer)
            self.refuse("AuthError", "wrong token: the client's token does not match the server's --token-file; copy "
                                     "the token file from the board to the PC")
            return False
        state = srv.admission.promote(self.number)
        if state == Admission.EVICTED:
            return self._refuse_busy_pending()
        if state == Admission.FULL:
            log.warning("conn %d %s: refused, %d clients already connected (--max-clients)", self.number,
                        self.peer, cfg.max_clients)
            self.refuse("ServerBusy", f"the server already serves {cfg.max_clients} clients (--max-clients); try "
                                      "again later")
            return False
        cnonce = h.get("client_nonce")
        reply = {"ok": True, "device": device_facts()}
        if isinstance(cnonce, str) and cnonce.isascii() and len(cnonce) <= 128:
            reply["mac"] = P.server_mac(cfg.token, nonce, cnonce)
        try:
            self.send(reply)
        except BaseException:
            srv.admission.leave_client()
            raise
        # peer-chosen strings go to the log as repr: no control characters, no forged log lines
        log.info("conn %d %s: authenticated (client %r)", self.number, self.peer, str(h.get("client", "?"))[:60])
        return True

    # ---- the connection's life
    def serve(self) -> None:
        srv = self.server
        srv.admission.enter(self.number, self.evict)
        try:
            if self.handshake():
                try:
                    self.request_loop()
                finally:
                    srv.admission.leave_client()
        except OSError as e:  # the peer vanished while we wrote to it
            log.warning("conn %d %s: connection error: %s", self.number, self.peer, e)
        finally:
            srv.admission.leave_pending(self.number)
            for key in self.handles.values():
                srv.registry.release(key)
            self.handles.clear()
            log.info("conn %d %s: closed", self.number, self.peer)

    def request_loop(self) -> None:
        cfg, srv = self.cfg, self.server
        while not self.closing:
            try:
                frame = P.recv_frame(self.sock, max_message=cfg.max_message, first_timeout=cfg.idle_timeout,
                                     io_timeout=cfg.io_timeout, min_rate=cfg.min_rate)
            except P.PeerClosedError:
                return
            except P.ProtocolError as e:  # framing is lost (or the frame missed its deadline): answer once, close
                srv.count("protocol_errors")
                log.warning("conn %d %s: protocol error, closing: %s", self.number, self.peer, e)
                self.refuse(_error_kind(e), str(e))
                return
            except P.ConnectionLostError as e:  # the peer stopped sending mid-frame
                srv.count("protocol_errors")
                log.warning("conn %d %s: %s", self.number, self.peer, e)
                self.refuse("ProtocolError", f"incomplete frame: {e}", drain_s=0.5)
                return
            except socket.timeout:
                log.info("conn %d %s: idle for --idle-timeout %g s, closing", self.number, self.peer,
                         cfg.idle_timeout)
                return
            self.handle(frame)

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
            log.exception("conn %d %s: %r failed", self.number, self.peer, str(op)[:40])
            header, arrays, status = P.error_header("InternalError", f"{type(e).__name__}: {e}"), [], "InternalError"
            self.server.count("errors")
        sent = self.send(header, arrays)
        log.info("conn %d %s: %r %r -> %s in %.1f ms (%d bytes in, %d out)", self.number, self.peer, str(op)[:20],
                 str(frame.header.get("handle", ""))[:20], status, (time.perf_counter() - t0) * 1e3, frame.size,
                 sent)

    # ---- operations: each returns (reply header, reply arrays)
    def _entry(self, frame: P.Frame) -> ServedModel:
        handle = frame.header.get("handle")
        key = self.handles.get(handle) if isinstance(handle, str) else None
        entry = self.server.registry.get(key) if key else None  # this connection's reference keeps it alive
        if entry is None:
            raise RuntimeStateError(f"unknown model handle {handle!r:.40} on this connection; load the model first "
                                    "(init_runtime())")
        return entry

    def _new_handle(self, entry: ServedModel, shared: bool) -> dict:
        handle = f"m{self._next_handle}"
        self._next_handle += 1
        self.handles[handle] = entry.key
        meta = entry.metadata
        reply = {"ok": True, "handle": handle, "sha256": entry.key, "shared": shared, "kind": entry.kind,
                 "inputs": meta.get("inputs"), "outputs": meta.get("outputs")}
        for key in ("core_mask", "delegate", "post"):
            if key in meta:
                reply[key] = meta[key]
        return reply

    def op_info(self, frame: P.Frame):
        return {"ok": True, "device": device_facts(), "stats": self.server.stats()}, []

    def op_load(self, frame: P.Frame):
        path, post_path = frame.header.get("path"), frame.header.get("post_path")
        post_bytes = frame.header.get("post_bytes", 0)
        if not isinstance(post_bytes, int) or isinstance(post_bytes, bool) or not 0 <= post_bytes <= frame.blob.nbytes:
            raise PackageError(f"post_bytes={post_bytes!r:.40} must be an int in 0..{frame.blob.nbytes} (the length "
                               "of the host-side tail at the end of the blob)")
        post = b""
        if path is not None:
            data = read_model_file(path, self.cfg.model_dirs, self.cfg.max_message)
            if post_path is not None:
                post = read_model_file(post_path, self.cfg.model_dirs, self.cfg.max_message)
            source = f"{path!r} (on the board)"
        elif frame.blob.nbytes:
            blob = bytes(frame.blob)
            data, post = (blob[:-post_bytes], blob[-post_bytes:]) if post_bytes else (blob, b"")
            source = f"model pushed by {self.peer}"
        else:
            raise P.ProtocolError("load needs the model bytes (blob) or a 'path' on the board")
        entry, shared = self.server.registry.load(data, source, post)
        log.info("conn %d %s: %s model %s %s (%d bytes%s, %s)", self.number, self.peer, entry.kind, entry.key[:12],
                 "shared" if shared else "loaded", len(data), f" + {len(post)}-byte tail" if post else "", source)
        return self._new_handle(entry, shared), []

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
        outputs = entry.backend.run(list(frame.arrays), data_type=data_type, data_format=data_format,
                                    pass_through=passes)
        return {"ok": True, "run_us": round((time.perf_counter() - t) * 1e6, 1)}, outputs

    def op_perf(self, frame: P.Frame):
        entry = self._entry(frame)
        runs = frame.header.get("runs", 10)
        if not isinstance(runs, int) or isinstance(runs, bool) or not 1 <= runs <= 1000:
            raise InferenceInputError(f"perf runs={runs!r:.40} must be an int in 1..1000")
        sim = entry.simulator
        if sim is None:  # the NPU runtimes have no per-layer profiler here: time whole runs
            if frame.header.get("feed_names") is not None or not frame.arrays:
                raise InferenceInputError(f"perf on a {entry.kind} model needs its input arrays (as inference() "
                                          "takes them)")
            data_type, data_format, passes = _check_run_options(frame.header)
            arrays = list(frame.arrays)

            def run_once():
                return entry.backend.run(arrays, data_type=data_type, data_format=data_format, pass_through=passes)

            return {"ok": True, "perf": time_runs(run_once, runs, device_facts()["hostname"], entry.kind)}, []
        names = [m["name"] for m in sim.inputs_meta]
        feed_names = frame.header.get("feed_names")
        if feed_names is not None:  # graph-ready tensors, as Simulator.run_feeds takes them
            if feed_names != names or len(frame.arrays) != len(names):
                raise InferenceInputError(f"perf feeds are named {feed_names!r:.200}; the model's graph inputs are "
                                          f"{names}")
            for meta, a in zip(sim.inputs_meta, frame.arrays):
                want_dtype = "float32" if meta["layout"] == "nhwc" else meta["dtype"]
                want_shape = [meta["shape"][0] // sim.batch] + list(meta["shape"][1:])
                if a.dtype != np.dtype(want_dtype) or list(a.shape) != want_shape:
                    raise InferenceInputError(f"perf feed {meta['name']!r} is {a.dtype} {list(a.shape)}; the graph "
                                              f"takes {want_dtype} {want_shape}")
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
        mem = meminfo()
        proc = process_memory()
        return {"ok": True, "memory": {
            "rss_bytes": proc["rss_bytes"], "peak_rss_bytes": proc["peak_rss_bytes"],
            "package_bytes": entry.package_bytes, "model_bytes": len(entry.model_bytes) or entry.package_bytes,
            "kind": entry.kind,
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
