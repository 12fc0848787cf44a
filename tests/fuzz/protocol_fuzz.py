"""Fuzzing the runtime server as a hostile peer would: seeded malformed frames before and after authentication (the
prefix, the header JSON, array specs, bodies, truncations, model loads by path and by upload of damaged packages),
slow and idle unauthenticated peers beside a real client, and concurrent clients with garbage beside them.

The server runs as a real subprocess (`python -m openrknn.runtime.server`, via openrknn.testing.spawn_server), with
its own memory limit (RLIMIT_AS) and short deadlines; every case expects a reply frame.
"""

from __future__ import annotations

import json
import os
import random
import socket
import struct
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from openrknn.runtime import protocol as P

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- the server under test


class FuzzServer:
    """A server subprocess with short deadlines, a token, a log file, and a model folder holding hostile entries."""

    def __init__(self, folder: Path, model: Path, extra: Sequence[str] = (), memory_bytes: int = 4 << 30,
                 root: Path = ROOT):
        """root: the openrknn checkout the server runs from (another checkout gives a baseline)."""
        from openrknn.testing import spawn_server

        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.models = folder / "models"
        self.models.mkdir(exist_ok=True)
        (self.models / "good.rknn").write_bytes(model.read_bytes())
        self._hostile_entries()
        self.token_file = folder / "token"
        self.log_path = folder / "server.log"
        args = ["--token-file", str(self.token_file), "--model-dir", str(self.models), *extra]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
        env.setdefault("OPENRKNN_THREADS", "1")
        self.log = open(self.log_path, "a")

        def limits():
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))

        # cwd: `python -m` would import an openrknn folder in the working directory before PYTHONPATH's
        self.proc, self.port = spawn_server(args, env=env, stderr=self.log, preexec_fn=limits, cwd=str(folder))
        self.token = self.token_file.read_text().strip()

    def _hostile_entries(self) -> None:
        d = self.models
        if hasattr(os, "mkfifo") and not (d / "pipe.rknn").exists():
            os.mkfifo(d / "pipe.rknn")
        for name, target in (("zero.rknn", "/dev/zero"), ("escape.rknn", "/etc/hostname")):
            if not (d / name).is_symlink():
                (d / name).symlink_to(target)
        (d / "folder.rknn").mkdir(exist_ok=True)
        (d / "garbage.rknn").write_bytes(os.urandom(300))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def connect(self, timeout: float = 10.0) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        s.settimeout(timeout)
        return s

    def authenticate(self, s: socket.socket) -> None:
        hello = P.recv_frame(s, max_message=P.HANDSHAKE_MAX_HEADER).header
        P.send_frame(s, {"op": "auth", "protocol": 1, "mac": P.client_mac(self.token, hello["nonce"])})
        reply = P.recv_frame(s).header
        if not reply.get("ok"):
            raise P.RemoteError(f"fuzz client could not authenticate: {reply}")


# ---------------------------------------------------------------- frames


def frame(header: object, body: bytes = b"", head_len: Optional[int] = None, body_len: Optional[int] = None,
          magic: bytes = P.MAGIC, version: int = P.PROTOCOL_VERSION, flags: int = 0,
          raw_header: Optional[bytes] = None) -> bytes:
    head = raw_header if raw_header is not None else json.dumps(header, separators=(",", ":")).encode()
    return P.PREFIX.pack(magic, version, flags, len(head) if head_len is None else head_len,
                         len(body) if body_len is None else body_len) + head + body


def _array_body(specs: List[dict]) -> bytes:
    """Zero bytes laid out as the specs say (valid specs only); invalid ones get a guessed length."""
    try:
        _, total = P.array_layout(specs, 0, max_bytes=1 << 22)
    except P.ProtocolError:
        return bytes(64)
    return bytes(total)


_DEEP_JSON = [b"[" * 8000 + b"]" * 8000, b'{"a":' * 40 + b"1" + b"}" * 40, b"[" * 33 + b"]" * 33]


def _interesting(rng: random.Random):
    return rng.choice([None, True, False, 0, -1, 2 ** 63, 2 ** 70, 1.5, "", "x" * rng.choice([10, 5000]), [], {},
                       [None], {"a": [1]}, "m1", "m999", "\u0000", "../../etc/passwd", 10 ** 6])


@dataclass
class ProtoCase:
    number: int
    stage: str  # "pre": sent instead of the auth reply; "post": sent after authenticating
    kind: str
    make: Callable[[str, str], bytes] = field(repr=False)  # (nonce, token) -> bytes on the wire
    end: str = "close"  # after sending: "close" (half-close) or "silent" (stay connected, send nothing)
    load_model: bool = False  # post: load the good model first (handle m1)
    detail: str = ""


class ProtocolFuzzer:
    def __init__(self, seed: int, package: bytes, models_dir: Path, damaged_packages: Callable[[int], bytes]):
        self.seed, self.package, self.models_dir, self.damaged = seed, package, models_dir, damaged_packages

    def case(self, n: int) -> ProtoCase:
        rng = random.Random(f"proto:{self.seed}:{n}")
        stage = "pre" if rng.random() < 0.35 else "post"
        maker = self._pre if stage == "pre" else self._post
        kind, make, load, detail = maker(rng, n)
        if rng.random() < 0.25:  # byte-level damage on top of whatever was built
            kind, make, detail = self._damage(rng, kind, make, detail)
        end = "silent" if rng.random() < 0.08 else "close"
        return ProtoCase(n, stage, kind, make, end, load, detail)

    # -- before authentication
    def _pre(self, rng: random.Random, n: int):
        choice = rng.choice(["garbage", "auth_mutated", "auth_wrong", "op_before_auth", "deep", "prefix_fields",
                             "auth_right", "huge", "http"])
        if choice == "garbage":
            data = rng.randbytes(rng.choice([1, 19, 20, 64, 4096]))
            return choice, lambda nonce, tok: data, False, ""
        if choice == "http":
            return choice, lambda nonce, tok: b"GET / HTTP/1.1\r\nHost: board\r\n\r\n", False, ""
        if choice == "deep":
            raw = rng.choice(_DEEP_JSON)
            return choice, lambda nonce, tok: frame(None, raw_header=raw), False, f"{len(raw)} bytes"
        if choice == "huge":
            h = rng.choice([P.HANDSHAKE_MAX_HEADER + 1, P.MAX_HEADER_BYTES, 2 ** 32 - 1])
            b = rng.choice([0, 1 << 20, 2 ** 64 - 1])
            return choice, lambda nonce, tok: frame(None, raw_header=b"{}", head_len=h, body_len=b), False, f"{h}/{b}"
        if choice == "prefix_fields":
            field_ = rng.choice(["magic", "version", "flags"])
            kw = {"magic": {"magic": b"ORKQ"}, "version": {"version": rng.choice([0, 2, 65535])},
                  "flags": {"flags": rng.choice([1, 0x8000])}}[field_]
            return choice, lambda nonce, tok: frame({"op": "auth", "protocol": 1}, **kw), False, field_
        if choice == "op_before_auth":
            op = rng.choice(["info", "load", "run", "bye", "perf"])
            body = self.package if op == "load" else b""
            head = {"op": op, "blob": len(body)} if body else {"op": op}
            return choice, lambda nonce, tok: frame(head, body), False, op
        if choice == "auth_right":
            return choice, lambda nonce, tok: frame({"op": "auth", "protocol": 1,
                                                     "mac": P.client_mac(tok, nonce)}), False, ""

        def auth(nonce: str, tok: str) -> dict:
            return {"op": "auth", "protocol": 1, "mac": P.client_mac(tok, nonce), "client_nonce": "c" * 32}
        if choice == "auth_wrong":
            return choice, lambda nonce, tok: frame(dict(auth(nonce, tok), mac="0" * 64)), False, ""
        key = rng.choice(["op", "protocol", "mac", "client_nonce", "client", "arrays", "blob"])
        value = _interesting(rng)

        def make(nonce: str, tok: str) -> bytes:
            head = auth(nonce, tok)
            head[key] = value
            return frame(head)
        return choice, make, False, f"{key}={str(value)[:30]!r}"

    # -- after authentication
    def _post(self, rng: random.Random, n: int):
        op = rng.choice(["run", "run", "run", "perf", "load_blob", "load_path", "attach", "memory", "unload", "info",
                         "bye", "unknown", "deep", "specs"])
        good_input = {"dtype": "uint8", "shape": [1, 8, 8, 3]}
        if op == "run":
            head = {"op": "run", "handle": "m1", "arrays": [good_input]}
            key = rng.choice(["handle", "data_type", "data_format", "pass_through", "arrays", None])
            if key == "arrays":
                head["arrays"] = rng.choice([[], [good_input] * 3, [{"dtype": "float32", "shape": [1, 3, 8, 8]}],
                                             [{"dtype": "bool", "shape": [1, 8, 8, 3]}],
                                             [{"dtype": "float64", "shape": [8, 8, 3]}],
                                             [{"dtype": "uint8", "shape": [0, 8, 8, 3]}],
                                             [{"dtype": "int64", "shape": []}]])
            elif key:
                head[key] = _interesting(rng)
            body = _array_body(head["arrays"])
            return op, lambda nonce, tok: frame(head, body), True, f"{key}"
        if op == "perf":
            head = {"op": "perf", "handle": "m1", "runs": rng.choice([1, 0, 1001, True, "3", 2])}
            if rng.random() < 0.5:
                head["feed_names"] = rng.choice([["x"], ["y"], "x", [None], []])
                head["arrays"] = rng.choice([[{"dtype": "float32", "shape": [1, 8, 8, 3]}],
                                             [{"dtype": "uint8", "shape": [1, 8, 8, 3]}],
                                             [{"dtype": "float32", "shape": [2, 3]}]])
            body = _array_body(head.get("arrays", []))
            return op, lambda nonce, tok: frame(head, body), True, str(head)[:60]
        if op == "load_blob":
            blob = self.damaged(rng.randrange(10 ** 6)) if rng.random() < 0.8 else self.package
            head = {"op": "load", "blob": len(blob)}
            return op, lambda nonce, tok: frame(head, blob), False, f"{len(blob)} bytes"
        if op == "load_path":
            path = rng.choice([str(self.models_dir / name) for name in
                               ("good.rknn", "pipe.rknn", "zero.rknn", "escape.rknn", "folder.rknn", "garbage.rknn",
                                "missing.rknn")] + ["/etc/passwd", "", "a\u0000b", "n" * 5000,
                                                    str(self.models_dir / ("n" * 300)), 5, None])
            return op, lambda nonce, tok: frame({"op": "load", "path": path}), False, str(path)[:40]
        if op == "attach":
            value = rng.choice(["0" * 64, "x", 5, None, "a" * 10000])
            return op, lambda nonce, tok: frame({"op": "attach", "sha256": value}), False, ""
        if op in ("memory", "unload", "info", "bye"):
            head = {"op": op, "handle": rng.choice(["m1", "m2", 7, None])}
            return op, lambda nonce, tok: frame(head), True, ""
        if op == "unknown":
            head = {"op": rng.choice(["exec", "", None, 5, ["run"], "RUN"])}
            return op, lambda nonce, tok: frame(head), False, str(head)
        if op == "deep":
            raw = rng.choice(_DEEP_JSON)
            return op, lambda nonce, tok: frame(None, raw_header=raw), False, ""
        specs = rng.choice([
            [{"dtype": "uint8", "shape": [2 ** 70, 0]}], [{"dtype": "uint8", "shape": [2 ** 40, 2 ** 40, 0]}],
            [{"dtype": "float32", "shape": [-1]}], [{"dtype": "object", "shape": [1]}],
            [{"dtype": "float32", "shape": [1] * 40}], [{"dtype": "uint8", "shape": []}] * 2000,
            [{"dtype": "uint8", "shape": [True]}], "float32", [{"dtype": "uint8", "shape": [1 << 30]}]])
        head = {"op": "run", "handle": "m1", "arrays": specs}
        body_len = rng.choice([0, 8, 64])
        return op, lambda nonce, tok: frame(head, bytes(body_len)), True, str(specs)[:50]

    def _damage(self, rng: random.Random, kind: str, make, detail: str):
        how = rng.choice(["flip", "truncate", "append", "head_len", "body_len"])

        def damaged(nonce: str, tok: str) -> bytes:
            data = bytearray(make(nonce, tok))
            r = random.Random(f"{self.seed}:{kind}:{detail}:{how}")
            if how == "flip" and data:
                for _ in range(r.randint(1, 4)):
                    i = r.randrange(len(data))
                    data[i] ^= 1 << r.randrange(8)
            elif how == "truncate" and len(data) > 1:  # at least one byte: a frame was begun
                del data[r.randrange(1, len(data)):]
            elif how == "append":
                data += r.randbytes(r.randint(1, 64))
            elif len(data) >= P.PREFIX_SIZE:
                off, fmt, bits = (8, "<I", 32) if how == "head_len" else (12, "<Q", 64)
                current = struct.unpack_from(fmt, data, off)[0]
                struct.pack_into(fmt, data, off, (current + r.choice([-5, -1, 1, 7, 1000])) % (1 << bits))
            return bytes(data)
        return kind, damaged, f"{detail} +{how}"


# ---------------------------------------------------------------- running cases


def run_case(server: FuzzServer, case: ProtoCase, reply_timeout: float) -> dict:
    """Send the case on a fresh connection; the outcome is the server's first answer to it."""
    result = {"n": case.number, "stage": case.stage, "kind": case.kind, "detail": case.detail, "end": case.end}
    try:
        s = server.connect()
    except OSError as e:
        result.update(outcome="connect_failed", error=str(e))
        return result
    try:
        if case.stage == "pre":
            nonce = P.recv_frame(s, max_message=P.HANDSHAKE_MAX_HEADER).header["nonce"]
        else:
            server.authenticate(s)
            nonce = ""
            if case.load_model:
                P.send_frame(s, {"op": "load", "path": str(server.models / "good.rknn")})
                if not P.recv_frame(s).header.get("ok"):
                    result.update(outcome="setup_failed")
                    return result
        data = case.make(nonce, server.token)
        t = time.monotonic()
        try:
            s.sendall(data)
            if case.end == "close":
                s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may refuse early and stop reading; its answer is still there to read
        s.settimeout(reply_timeout)
        try:
            header = P.recv_frame(s, max_message=1 << 30).header
        except P.PeerClosedError:
            result.update(outcome="dropped")
        except (ConnectionResetError, BrokenPipeError, P.ConnectionLostError) as e:
            result.update(outcome="dropped", error=str(e)[:200])
        except socket.timeout:
            result.update(outcome="no_reply")
        except P.ProtocolError as e:
            result.update(outcome="bad_reply", error=str(e)[:200])
        else:
            kind = P.reply_error(header)[0] if header.get("ok") is False else "ok"
            result.update(outcome="reply", reply=kind, seconds=round(time.monotonic() - t, 3))
    except (OSError, P.RemoteError, KeyError) as e:
        result.update(outcome="setup_failed", error=f"{type(e).__name__}: {e}"[:200])
    finally:
        s.close()
    return result


@dataclass
class ProtocolReport:
    results: List[dict]
    seconds: float
    server_alive: bool
    tracebacks_in_log: int

    def count(self, test) -> int:
        return sum(1 for r in self.results if test(r))

    @property
    def dropped(self) -> List[dict]:
        return [r for r in self.results if r["outcome"] in ("dropped", "no_reply", "bad_reply")]

    @property
    def internal(self) -> List[dict]:
        return [r for r in self.results if r.get("reply") == "InternalError"]

    def rows(self) -> Dict[str, object]:
        kinds: Dict[str, int] = {}
        for r in self.results:
            if r["outcome"] == "reply":
                kinds[r["reply"]] = kinds.get(r["reply"], 0) + 1
        return {"frames": len(self.results), "dropped without a reply": len(self.dropped),
                "InternalError replies": len(self.internal), "tracebacks in the server log": self.tracebacks_in_log,
                "server alive after the run": self.server_alive,
                "setup failures": self.count(lambda r: r["outcome"] in ("setup_failed", "connect_failed")),
                "replies by kind": dict(sorted(kinds.items(), key=lambda kv: -kv[1]))}


def run_protocol_fuzz(server: FuzzServer, fuzzer: ProtocolFuzzer, cases: int, parallel: int = 16,
                      reply_timeout: float = 10.0) -> ProtocolReport:
    t = time.monotonic()
    with ThreadPoolExecutor(parallel) as pool:
        results = list(pool.map(lambda n: run_case(server, fuzzer.case(n), reply_timeout), range(cases)))
    log = server.log_text()
    return ProtocolReport(results, time.monotonic() - t, server.alive(), log.count("Traceback"))


# ---------------------------------------------------------------- slow and idle peers


PEER_KINDS = ("idle", "trickle_auth", "prefix_then_idle", "trickle_header")


@dataclass
class PeerStats:
    connections: int = 0
    connect_failures: int = 0
    cut_s: List[float] = field(default_factory=list)  # connect -> the server closed it
    answered: int = 0  # cut with an error frame first
    not_cut_s: List[float] = field(default_factory=list)  # ages of those still open when the run ended


def _misbehave(s: socket.socket, kind: str, stop: threading.Event, pause: float) -> tuple:
    """One hostile connection until the server cuts it: (cut, seconds, answered with an error frame first)."""
    auth = frame({"op": "auth", "protocol": 1, "mac": "0" * 64, "pad": "p" * 200})
    t0, got = time.monotonic(), b""
    if kind == "prefix_then_idle":
        s.sendall(auth[:P.PREFIX_SIZE - 1])
    elif kind == "trickle_header":
        s.sendall(P.PREFIX.pack(P.MAGIC, 1, 0, P.HANDSHAKE_MAX_HEADER, 0))
    to_send = auth if kind == "trickle_auth" else (b"{" * 200 if kind == "trickle_header" else b"")
    i = 0
    while not stop.is_set() and time.monotonic() - t0 < 60:
        if i < len(to_send):
            try:
                s.sendall(to_send[i:i + 1])
            except OSError:
                return True, time.monotonic() - t0, b'"ok":false' in got
            i += 1
        s.settimeout(pause)  # read meanwhile: the challenge, then the refusal and the close
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    return True, time.monotonic() - t0, b'"ok":false' in got
                got += chunk
        except socket.timeout:
            continue
        except OSError:
            return True, time.monotonic() - t0, b'"ok":false' in got
    return False, time.monotonic() - t0, False


def _peer(server: FuzzServer, kind: str, stop: threading.Event, stats: PeerStats, lock: threading.Lock,
          pause: float) -> None:
    """One hostile peer: connects, misbehaves, waits to be cut, reconnects; until stop."""
    while not stop.is_set():
        try:
            s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        except OSError:
            with lock:
                stats.connect_failures += 1
            time.sleep(0.05)
            continue
        try:
            cut, seconds, answered = _misbehave(s, kind, stop, pause)
        finally:
            s.close()
        with lock:
            stats.connections += 1
            if cut:
                stats.cut_s.append(seconds)
                stats.answered += answered
            else:
                stats.not_cut_s.append(seconds)
        stop.wait(0.05)


class PeerSwarm:
    """n hostile peers of the given kinds (round robin), each reconnecting as soon as it is cut."""

    def __init__(self, server: FuzzServer, n: int, kinds: Sequence[str] = PEER_KINDS, pause: float = 0.3):
        self.stats = {k: PeerStats() for k in kinds}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=_peer, args=(server, kinds[i % len(kinds)], self._stop,
                                                              self.stats[kinds[i % len(kinds)]], self._lock, pause),
                                          daemon=True) for i in range(n)]

    def __enter__(self) -> "PeerSwarm":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(70)

    def summary(self, deadline: float) -> Dict[str, object]:
        cuts = [c for s in self.stats.values() for c in s.cut_s]
        still_open = [c for s in self.stats.values() for c in s.not_cut_s]
        return {"peer connections": sum(s.connections for s in self.stats.values()),
                "cut": len(cuts), "cut with an error reply": sum(s.answered for s in self.stats.values()),
                "not cut within 2x the deadline": sum(c > 2 * deadline for c in cuts + still_open),
                "still open at the end (younger than 2x the deadline)": sum(c <= 2 * deadline for c in still_open),
                "connect failures": sum(s.connect_failures for s in self.stats.values()),
                "slowest cut (s)": round(max(cuts), 2) if cuts else None,
                "slowest cut / deadline": round(max(cuts) / deadline, 2) if cuts else None}


# ---------------------------------------------------------------- real clients beside them


def local_outputs(package_path: Path, inputs: List[np.ndarray]) -> List[List[np.ndarray]]:
    from openrknn.package import read_package
    from openrknn.runtime.simulator import Simulator

    pkg = read_package(package_path)
    sim = Simulator(pkg.model_bytes, pkg.metadata)
    try:
        return [sim.run([x]) for x in inputs]
    finally:
        sim.release()


def real_client(server: FuzzServer, package_path: Path, inputs: List[np.ndarray],
                want: List[List[np.ndarray]]) -> Dict[str, int]:
    """init_runtime on the board through the public API, then one inference per input, each compared bit for bit
    with the local simulator."""
    from openrknn.api import RKNN

    errors = mismatches = done = 0
    r = RKNN()
    try:
        if r.load_rknn(str(package_path)) != 0 or r.init_runtime(target="rk1808",
                                                                 device_id=f"127.0.0.1:{server.port}") != 0:
            return {"inferences": 0, "errors": 1, "mismatches": 0, "error": str(r.last_error)}
        for x, expect in zip(inputs, want):
            outputs = r.inference(inputs=[x])
            if outputs is None:
                errors += 1
                continue
            done += 1
            mismatches += not (len(outputs) == len(expect) and all(
                a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
                for a, b in zip(outputs, expect)))
    finally:
        r.release()
    return {"inferences": done, "errors": errors, "mismatches": mismatches}


def concurrent_clients(server: FuzzServer, package_path: Path, clients: int, per_client: int,
                       seed: int = 0) -> Dict[str, int]:
    rng = np.random.default_rng(seed)
    inputs = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(per_client)]
    want = local_outputs(package_path, inputs)
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda _: real_client(server, package_path, inputs, want), range(clients)))
    return {"clients": clients, "inferences": sum(r["inferences"] for r in results),
            "errors": sum(r["errors"] for r in results), "mismatches": sum(r["mismatches"] for r in results)}
