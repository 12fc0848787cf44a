"""The client side of the board protocol: a connection (BoardClient) and a model on the board (RemoteRuntime).

RemoteRuntime has the Simulator's interface (run / release) plus sdk_version, perf and memory, so RKNN's inference,
eval_perf, eval_memory and release work the same on a board. Errors are the protocol module's types (unreachable,
refused, lost, wrong token, version mismatch, too large, server failure) or, for failures the server reports with one
of openrknn's own error types (bad inputs, damaged package), that same type.
"""

from __future__ import annotations

import logging
import secrets
import socket
import threading
from typing import List, Optional, Sequence

import numpy as np

from .. import __version__
from .. import errors as E
from . import protocol as P

log = logging.getLogger("openrknn.remote")

DEFAULT_MAX_REPLY = 1 << 31  # outputs of one inference; a reply larger than this is refused unread

# errors the server reports that mean the same on this side: re-raised as that type
_SAME_TYPE = {cls.__name__: cls for cls in (
    E.InferenceInputError, E.RuntimeStateError, E.PackageError, E.CorruptPackageError, E.PackageVersionError,
    E.VendorPackageError, E.NotSupportedError, P.AuthError, P.ProtocolError, P.ProtocolVersionError,
    P.MessageTooLargeError)}
_HINT = ("check that `openrknn serve` runs on the board (its log says why it stopped), restart it if needed, then "
         "call init_runtime() again")


class BoardClient:
    """One authenticated connection to a server. Thread-safe: requests are serialised."""

    def __init__(self, host: str, port: int, token: str = "", name: Optional[str] = None,
                 connect_timeout: float = 5.0, timeout: float = 60.0, max_reply: int = DEFAULT_MAX_REPLY):
        self.host, self.port, self.token = host, port, token or ""
        self.name = name or self.address
        self.connect_timeout, self.timeout, self.max_reply = connect_timeout, timeout, max_reply
        self.sock: Optional[socket.socket] = None
        self.device: dict = {}
        self.server_max_message = P.DEFAULT_MAX_MESSAGE
        self._lock = threading.Lock()

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def where(self) -> str:
        return f"board {self.name!r}" + ("" if self.name == self.address else f" ({self.address})")

    # ---- connecting
    def _open_socket(self) -> socket.socket:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        except ConnectionRefusedError:
            raise P.BoardRefusedError(
                f"{self.where()} refused the connection: the machine answers but nothing listens on port {self.port}. "
                f"Start the server on the board: `openrknn serve --port {self.port} --token-file F` (add --host "
                "0.0.0.0 --allow-remote to serve the network, or use `adb forward`)") from None
        except socket.gaierror as e:
            raise P.BoardUnreachableError(f"{self.where()}: cannot resolve host {self.host!r} ({e.strerror}); check "
                                          "the name or use the board's IP address") from None
        except socket.timeout:
            raise P.BoardUnreachableError(f"{self.where()} did not answer within {self.connect_timeout:g} s: check the "
                                          "address, the cable/network, and that the board is powered on") from None
        except OSError as e:
            raise P.BoardUnreachableError(f"{self.where()} is unreachable ({e.strerror or e}): check the address and "
                                          "the network") from None
        P.tune_socket(sock)
        return sock

    def connect(self) -> "BoardClient":
        """Open the connection and authenticate; fills self.device with the board's facts."""
        sock = self._open_socket()
        try:
            self._handshake(sock)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        return self

    def _read(self, sock: socket.socket, what: str, timeout: float, max_message: int) -> P.Frame:
        try:
            return P.recv_frame(sock, max_message=max_message, first_timeout=timeout, io_timeout=timeout)
        except socket.timeout:
            raise P.ConnectionLostError(f"{self.where()} did not answer {what} within {timeout:g} s; {_HINT}") from None
        except P.ProtocolVersionError as e:
            raise P.ProtocolVersionError(f"{self.where()}: {e}") from None
        except P.ConnectionLostError as e:
            raise P.ConnectionLostError(f"the connection to {self.where()} was lost during {what} ({e}): the server "
                                        f"stopped or crashed; {_HINT}") from None
        except P.ProtocolError as e:
            raise P.ProtocolError(f"{self.where()} sent something that is not an openrknn reply during {what}: {e}"
                                  ) from None
        except OSError as e:
            raise P.ConnectionLostError(f"the connection to {self.where()} failed during {what} ({e}); {_HINT}"
                                        ) from None

    def _handshake(self, sock: socket.socket) -> None:
        hello = self._read(sock, "the greeting", max(self.connect_timeout, 10.0), P.HANDSHAKE_MAX_HEADER).header
        if hello.get("ok") is False:  # e.g. ServerBusy instead of a challenge
            self._raise_reply(hello, "connect")
        if hello.get("op") != "challenge" or not isinstance(hello.get("nonce"), str):
            raise P.ProtocolError(f"{self.where()} did not greet like an openrknn server: {hello!r:.200}")
        if hello.get("protocol") != P.PROTOCOL_VERSION:
            raise P.ProtocolVersionError(
                f"{self.where()} runs openrknn {hello.get('version', '?')} speaking protocol {hello.get('protocol')!r};"
                f" this client is openrknn {__version__} speaking {P.PROTOCOL_VERSION}. Install the same openrknn "
                "version on the board and the PC")
        if hello.get("auth") and not self.token:
            raise P.AuthError(f"{self.where()} requires a token and none is configured: put \"token_file\" in its "
                              "devices file entry, or export OPENRKNN_TOKEN=<the contents of the server's "
                              "--token-file>")
        if not hello.get("auth") and self.token:
            log.warning("%s accepts clients without a token (no --token-file on the server)", self.where())
        token = self.token if hello.get("auth") else ""
        cnonce = secrets.token_hex(16)
        sock.settimeout(max(self.connect_timeout, 10.0))
        try:
            P.send_frame(sock, {"op": "auth", "protocol": P.PROTOCOL_VERSION, "client": f"openrknn {__version__}",
                                "mac": P.client_mac(token, hello["nonce"]), "client_nonce": cnonce})
        except OSError as e:
            raise P.ConnectionLostError(f"the connection to {self.where()} failed during the handshake ({e}); {_HINT}"
                                        ) from None
        reply = self._read(sock, "the handshake", max(self.connect_timeout, 10.0), P.MAX_HEADER_BYTES).header
        if not reply.get("ok"):
            self._raise_reply(reply, "auth")
        if token and not P.macs_equal(P.server_mac(token, hello["nonce"], cnonce), reply.get("mac")):
            raise P.AuthError(f"{self.where()} accepted the token but could not prove it knows it: this is not the "
                              "server the token belongs to (check the address)")
        self.device = reply.get("device") or {}
        mm = hello.get("max_message")
        if isinstance(mm, int) and mm > 0:
            self.server_max_message = mm
        log.info("connected to %s: openrknn %s on %s, onnxruntime %s", self.where(), self.device.get("openrknn"),
                 self.device.get("machine"), self.device.get("onnxruntime"))

    # ---- requests
    def _raise_reply(self, header: dict, op: str):
        kind, message = P.reply_error(header)
        text = f"{self.where()}: {op} failed on the server: {message}"
        if kind == "AuthError":
            raise P.AuthError(f"{self.where()}: {message}")
        if kind == "MessageTooLargeError":
            raise P.MessageTooLargeError(f"{self.where()}: {message}")
        if kind in _SAME_TYPE:
            raise _SAME_TYPE[kind](text)
        raise P.RemoteServerError(f"{text} [{kind}]", kind=kind, server_message=message)

    def request(self, header: dict, arrays: Sequence[np.ndarray] = (), blob: bytes = b"") -> P.Frame:
        """Send one request and return the server's successful reply; raise the matching error otherwise."""
        op = str(header.get("op"))
        with self._lock:
            sock = self.sock
            if sock is None:
                raise P.ConnectionLostError(f"the connection to {self.where()} is closed; call init_runtime() again")
            try:
                sock.settimeout(self.timeout)
                P.send_frame(sock, header, arrays, blob)
            except socket.timeout:
                self._close_locked()
                raise P.ConnectionLostError(f"{self.where()} stopped reading during '{op}' (no progress within "
                                            f"{self.timeout:g} s); {_HINT}") from None
            except OSError as e:
                early = _early_error(sock)  # the server may have refused the request before reading all of it
                self._close_locked()
                if early is not None:
                    self._raise_reply(early, f"'{op}'")
                raise P.ConnectionLostError(f"the connection to {self.where()} was lost during '{op}' ({e}): the "
                                            f"server stopped or crashed; {_HINT}") from None
            try:
                reply = self._read(sock, f"'{op}'", self.timeout, self.max_reply)
            except P.RemoteError:
                self._close_locked()
                raise
            if not reply.header.get("ok"):
                kind, _ = P.reply_error(reply.header)
                if kind.startswith("Protocol") or kind == "MessageTooLargeError":
                    self._close_locked()  # the server closes the connection after these
                self._raise_reply(reply.header, f"'{op}'")
            return reply

    def _close_locked(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None

    def close(self) -> None:
        """Say goodbye (best effort) and close; never raises."""
        with self._lock:
            if self.sock is None:
                return
            try:
                self.sock.settimeout(2.0)
                P.send_frame(self.sock, {"op": "bye"})
            except (OSError, P.RemoteError):
                pass
            self._close_locked()

    def __enter__(self) -> "BoardClient":
        return self if self.sock is not None else self.connect()

    def __exit__(self, *exc) -> None:
        self.close()


def _early_error(sock: socket.socket) -> Optional[dict]:
    """An error reply the server sent before closing, if one is waiting to be read."""
    try:
        sock.settimeout(1.0)
        header = P.recv_frame(sock, max_message=P.MAX_HEADER_BYTES).header
    except (OSError, P.RemoteError):
        return None
    return header if header.get("ok") is False else None


def _input_list(inputs) -> List[np.ndarray]:
    if isinstance(inputs, np.ndarray):
        inputs = [inputs]
    if not isinstance(inputs, (list, tuple)) or not all(isinstance(x, np.ndarray) for x in inputs):
        raise E.InferenceInputError(f"inputs must be a list of numpy arrays, got {type(inputs).__name__}; e.g. "
                                    "inference(inputs=[img]) with img from cv2.imread")
    out = []
    for i, x in enumerate(inputs):
        try:
            out.append(P.to_wire_array(x, f"input {i}"))
        except P.ProtocolError as e:
            raise E.InferenceInputError(str(e)) from None
    return out


class RemoteRuntime:
    """A model loaded on a board: the Simulator's interface, run remotely."""

    def __init__(self, client: BoardClient, handle: str, metadata: dict, shared: bool = False):
        self.client, self.handle, self.metadata, self.shared = client, handle, metadata, shared
        self.last_run_us: Optional[float] = None  # the board's own time for the last run (the rest is transfer)

    def _check(self) -> None:
        if self.handle is None:
            raise E.RuntimeStateError("the runtime was released; call init_runtime() again")

    def run(self, inputs, data_type=None, data_format="nhwc", pass_through: Optional[Sequence[int]] = None
            ) -> List[np.ndarray]:
        self._check()
        arrays = _input_list(inputs)
        reply = self.client.request({"op": "run", "handle": self.handle, "data_type": data_type,
                                     "data_format": data_format, "pass_through": _plain(pass_through)}, arrays)
        self.last_run_us = reply.header.get("run_us")
        return list(reply.arrays)

    def perf(self, inputs=None, runs: int = 10, data_type=None, data_format="nhwc",
             pass_through: Optional[Sequence[int]] = None) -> dict:
        """Per-layer times measured on the board by onnxruntime's profiler: {"layers": [{"name", "op_type",
        "time_us"}], "total_us", "fps", "layers_total_us", "runs", "wall_median_us", "host"}.
        inputs: what inference() takes, or a dict {graph input name: graph-ready tensor} (Simulator.run_feeds'
        feeds, one frame), or None (zeros of the deployed shapes)."""
        self._check()
        header = {"op": "perf", "handle": self.handle, "runs": int(runs)}
        if isinstance(inputs, dict):
            header["feed_names"] = list(inputs)
            arrays = _input_list(list(inputs.values()))
        else:
            header.update(data_type=data_type, data_format=data_format, pass_through=_plain(pass_through))
            arrays = _input_list(inputs) if inputs is not None else []
        return self.client.request(header, arrays).header["perf"]

    def memory(self) -> dict:
        """{"rss_bytes", "peak_rss_bytes"} of the server process, this model's "package_bytes" / "model_bytes" (ONNX),
        "load_rss_delta_bytes" (RSS it added when loaded), "models_loaded", "ram_bytes", "ram_available_bytes"."""
        self._check()
        return self.client.request({"op": "memory", "handle": self.handle}).header["memory"]

    def device_info(self) -> dict:
        return dict(self.client.device)

    def sdk_version(self) -> str:
        d = self.client.device
        ram = d.get("ram_bytes")
        ram_s = f", {ram / (1 << 30):.1f} GiB RAM" if isinstance(ram, int) else ""
        board = f" ({d['board']})" if d.get("board") else ""
        return (f"API: openrknn {__version__} (client)\n"
                f"DRV: openrknn {d.get('openrknn', '?')} runtime server, protocol {d.get('protocol', '?')}, "
                f"onnxruntime {d.get('onnxruntime', '?')} [{', '.join(d.get('providers') or [])}] on "
                f"{d.get('hostname', '?')}{board}: {d.get('system', '?')} {d.get('machine', '?')}, "
                f"{d.get('cpu_cores', '?')} CPU cores{ram_s}")

    def release(self) -> None:
        """Unload the model and close the connection; never raises (the board may already be gone)."""
        if self.handle is None:
            return
        try:
            self.client.request({"op": "unload", "handle": self.handle})
        except P.RemoteError as e:
            log.debug("release on %s: %s", self.client.where(), e)
        finally:
            self.handle = None
            self.client.close()


def _plain(value):
    """numpy scalars/arrays in user options (e.g. pass_through) -> JSON types."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value


def open_model(client: BoardClient, package_bytes: bytes, sha256: str, metadata: dict, post: bytes = b"",
               kind: str = "openrknn") -> RemoteRuntime:
    """Load a model on the board: reuse the board's copy when it already holds these bytes, else upload them.
    package_bytes: an openrknn package, a vendor .rknn or a .tflite; post: a vendor model's host-side tail
    (.post.onnx), sent after the model in the same blob; sha256: protocol.model_key(package_bytes, post)."""
    reply = client.request({"op": "attach", "sha256": sha256}).header
    if reply.get("handle") is None:
        limit = client.server_max_message - P.MAX_HEADER_BYTES
        size = len(package_bytes) + len(post)
        if size > limit:
            raise P.MessageTooLargeError(
                f"the model has {size:,} bytes but {client.where()} accepts messages up to "
                f"{client.server_max_message:,} bytes: restart the server with a larger --max-message-mb, or copy "
                "the model to the board and load it by path")
        header = {"op": "load", "post_bytes": len(post)} if post else {"op": "load"}
        reply = client.request(header, blob=bytes(package_bytes) + bytes(post)).header
    if reply.get("sha256") != sha256:
        raise P.ProtocolError(f"{client.where()} loaded a model with SHA-256 {reply.get('sha256')!r:.20}, expected "
                              f"{sha256[:16]}...: the upload was damaged")
    if reply.get("kind", "openrknn") != kind:
        raise P.ProtocolError(f"{client.where()} took the upload for a {reply.get('kind')!r:.20} model, this is a "
                              f"{kind} model")
    if kind != "openrknn":  # the board says what it is running it on (NPU core mask, delegate)
        metadata = {**metadata, **{k: reply[k] for k in ("inputs", "outputs", "core_mask", "delegate", "post")
                                   if k in reply}}
    return RemoteRuntime(client, reply["handle"], metadata, shared=bool(reply.get("shared")))


def open_model_path(client: BoardClient, board_path: str, post_path: Optional[str] = None) -> RemoteRuntime:
    """Load a model that is already on the board (under one of the server's --model-dir folders): an openrknn
    .rknn, a vendor .rknn (post_path: its .post.onnx there) or a .tflite."""
    header = {"op": "load", "path": board_path}
    if post_path:
        header["post_path"] = post_path
    reply = client.request(header).header
    meta = {k: reply.get(k) for k in ("inputs", "outputs", "kind", "core_mask", "delegate") if k in reply}
    return RemoteRuntime(client, reply["handle"], meta, shared=bool(reply.get("shared")))
