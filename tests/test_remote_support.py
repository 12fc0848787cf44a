"""Helpers for the remote-runtime tests: a real server subprocess on loopback, raw protocol sockets, model builders.
(No tests here; the test_remote_*.py modules import these.)"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]


def build_float_rknn(onnx_path: Path, out: Path, **load_kw) -> Path:
    """The documented float build through the public API."""
    from openrknn.api import RKNN

    r = RKNN()
    try:
        assert r.config(mean_values=[0, 0, 0], std_values=[1, 1, 1]) == 0
        if str(onnx_path).endswith(".pt"):
            assert r.load_pytorch(str(onnx_path), **load_kw) == 0, r.last_error
        else:
            assert r.load_onnx(str(onnx_path)) == 0, r.last_error
        assert r.build(do_quantization=False) == 0, r.last_error
        assert r.export_rknn(str(out)) == 0, r.last_error
    finally:
        r.release()
    return out


def conv_stack_onnx(path: Path, hw: int, channels: int, layers: int, seed: int = 0) -> Path:
    """x [1,3,hw,hw] -> Conv 3x3 (3->C) -> `layers` x (Conv 3x3 C->C, Relu) -> y. Compute and weight size scale with
    hw, channels and layers (a slow model, or a big one)."""
    rng = np.random.default_rng(seed)
    inits, nodes, cur, cin = [], [], "x", 3
    for i in range(layers + 1):
        w = (rng.standard_normal((channels, cin, 3, 3)) / np.sqrt(cin * 9)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("Conv", [cur, f"w{i}"], [f"c{i}"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        cur, cin = f"r{i}", channels
    nodes.append(helper.make_node("ReduceMean", [cur], ["y"], axes=[2, 3], keepdims=0))
    graph = helper.make_graph(nodes, "conv_stack", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                 [1, 3, hw, hw])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


class ServerProcess:
    """`python -m openrknn.runtime.server` on 127.0.0.1 as a child process, with a token file and a log file."""

    def __init__(self, folder: Path, extra: Sequence[str] = (), port: int = 0, name: str = "server"):
        self.folder, self.extra, self.name = folder, list(extra), name
        self.token_file = folder / f"{name}.token"
        self.log_path = folder / f"{name}.log"
        self.proc: Optional[subprocess.Popen] = None
        self.port = port
        self.start()
        self.token = self.token_file.read_text().strip()

    def start(self) -> None:
        from openrknn.testing import spawn_server

        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
        args = ["--token-file", str(self.token_file), "--io-timeout", "2", *self.extra]
        if self.port:
            args += ["--port", str(self.port)]
        with open(self.log_path, "a") as log:
            self.proc, self.port = spawn_server(args, env=env, stderr=log)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, like a crash or a power cut of the process."""
        if self.alive():
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(10)

    def stop(self) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def restart(self) -> None:
        self.kill()
        self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self, token: Optional[str] = None, timeout: float = 30.0):
        from openrknn.runtime.remote import BoardClient

        return BoardClient("127.0.0.1", self.port, token=self.token if token is None else token,
                           timeout=timeout).connect()

    def stats(self) -> dict:
        c = self.client()
        try:
            return c.request({"op": "info"}).header["stats"]
        finally:
            c.close()


# ---------------------------------------------------------------- raw protocol access (for malformed frames)


def raw_connect(port: int, timeout: float = 5.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.settimeout(timeout)
    return s


def read_challenge(s: socket.socket) -> dict:
    from openrknn.runtime import protocol as P

    return P.recv_frame(s, max_message=P.HANDSHAKE_MAX_HEADER).header


def raw_authenticated(port: int, token: str) -> socket.socket:
    from openrknn.runtime import protocol as P

    s = raw_connect(port)
    hello = read_challenge(s)
    P.send_frame(s, {"op": "auth", "protocol": P.PROTOCOL_VERSION, "mac": P.client_mac(token, hello["nonce"])})
    reply = P.recv_frame(s).header
    assert reply.get("ok"), reply
    return s


def prefix(head_len: int, body_len: int, version: Optional[int] = None, magic: bytes = b"ORKP") -> bytes:
    from openrknn.runtime import protocol as P

    return P.PREFIX.pack(magic, P.PROTOCOL_VERSION if version is None else version, 0, head_len, body_len)


def reply_or_close(s: socket.socket, timeout: float = 5.0) -> Optional[dict]:
    """The server's answer to a bad frame: its error header, or None when it just closed the connection."""
    from openrknn.runtime import protocol as P

    s.settimeout(timeout)
    try:
        return P.recv_frame(s).header
    except (P.ConnectionLostError, ConnectionResetError, BrokenPipeError):
        return None


def wait_for(predicate, timeout: float, step: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def run_child(code: str) -> subprocess.Popen:
    """A separate Python process (a real client that a test can SIGKILL)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            text=True)


def outputs_equal(a: List[np.ndarray], b: List[np.ndarray]) -> bool:
    """Bit for bit: same count, dtypes, shapes and bytes."""
    return len(a) == len(b) and all(x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()
                                    for x, y in zip(a, b))
