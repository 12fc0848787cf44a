"""The board protocol's pure parts: framing, array specs, handshake MACs, profile parsing, devices file, server
configuration checks. No server process here (test_remote_server.py has those)."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time

import numpy as np
import pytest

from openrknn.runtime import protocol as P
from openrknn.runtime.devices import DevicesFileError, load_devices, parse_address
from openrknn.runtime.server import ServerConfig, ServerSetupError, check_config, is_loopback, load_token, parse_profile


def roundtrip(header, arrays=(), blob=b"", max_message=P.DEFAULT_MAX_MESSAGE):
    a, b = socket.socketpair()
    try:
        a.settimeout(5)
        b.settimeout(5)
        sender = threading.Thread(target=P.send_frame, args=(a, header, arrays, blob))
        sender.start()
        frame = P.recv_frame(b, max_message=max_message)
        sender.join()
        return frame
    finally:
        a.close()
        b.close()


def recv_raw(data: bytes, **kw):
    """recv_frame on exactly these bytes followed by EOF."""
    a, b = socket.socketpair()
    try:
        b.settimeout(5)
        a.sendall(data)
        a.shutdown(socket.SHUT_WR)
        return P.recv_frame(b, **kw)
    finally:
        a.close()
        b.close()


def frame_bytes(header: dict, body: bytes = b"", version=P.PROTOCOL_VERSION, magic=P.MAGIC) -> bytes:
    head = json.dumps(header).encode()
    return P.PREFIX.pack(magic, version, 0, len(head), len(body)) + head + body


# ---------------------------------------------------------------- framing


def test_roundtrip_every_dtype_with_blob_and_empty_arrays():
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 2, (3, 1), dtype=bool)]
    for name, dt in P.DTYPES.items():
        if name != "bool":
            arrays.append((rng.standard_normal((2, 3, 5)) * 100).astype(dt))
    arrays.append(np.zeros((0, 4), np.float32))
    frame = roundtrip({"op": "x", "note": "é"}, arrays, blob=b"abc")
    assert frame.header["op"] == "x" and frame.header["note"] == "é"
    assert bytes(frame.blob) == b"abc"
    assert len(frame.arrays) == len(arrays)
    for got, want in zip(frame.arrays, arrays):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert got.tobytes() == want.tobytes()
    # arrays start at 8-byte offsets whatever came before (the 3-byte blob, 1-byte bools)
    specs, total = P.array_layout(frame.header["arrays"], 3)
    assert all(s.offset % P.ARRAY_ALIGN == 0 for s in specs)
    assert frame.size == P.PREFIX_SIZE + len(json.dumps(frame.header, separators=(",", ":"))) + total


def test_big_endian_and_non_contiguous_arrays_arrive_as_values():
    x = np.arange(24, dtype=">f4").reshape(4, 6)[:, ::2]  # big-endian and strided
    frame = roundtrip({"op": "x"}, [x])
    got = frame.arrays[0]
    assert got.dtype == np.dtype("<f4") and np.array_equal(got, x.astype("<f4"))


def test_unsupported_dtype_is_refused_on_send():
    with pytest.raises(P.ProtocolError, match="cannot carry"):
        P.frame_buffers({"op": "x"}, [np.array(["a"], dtype=object)])
    with pytest.raises(P.ProtocolError, match="cannot carry"):
        P.frame_buffers({"op": "x"}, [np.zeros(2, np.complex64)])


@pytest.mark.parametrize("spec, message", [
    ([{"dtype": "object", "shape": [1]}], "not allowed"),
    ([{"dtype": "<U10", "shape": [1]}], "not allowed"),
    ([{"dtype": "float128", "shape": [1]}], "not allowed"),
    ([{"dtype": "float32", "shape": [-1]}], "ints >= 0"),
    ([{"dtype": "float32", "shape": [1.5]}], "ints >= 0"),
    ([{"dtype": "float32", "shape": [True]}], "ints >= 0"),
    ([{"dtype": "float32", "shape": [1] * 33}], "at most"),
    ([{"dtype": "float32"}], "ints >= 0"),
    (["float32"], "must be an object"),
    ({"dtype": "float32"}, "must be a list"),
])
def test_array_layout_refuses_bad_specs(spec, message):
    with pytest.raises(P.ProtocolError, match=message):
        P.array_layout(spec, 0)


def test_array_layout_sizes_do_not_overflow():
    # Python ints: a huge declared shape gives a huge size, which the length check then refuses
    _, total = P.array_layout([{"dtype": "float64", "shape": [1 << 30, 1 << 30]}], 0)
    assert total == 8 << 60


@pytest.mark.parametrize("shape", [[2 ** 70, 0], [2 ** 40, 2 ** 40, 0], [0, 2 ** 63], [1 << 30, 1 << 30]])
def test_array_specs_beyond_the_message_limit_are_refused_before_numpy_sees_them(shape):
    """An empty array with a huge dimension has 0 bytes but no numpy shape: refused like a huge one."""
    with pytest.raises(P.ProtocolError, match="describes more than the 1,048,576-byte message limit"):
        P.array_layout([{"dtype": "uint8", "shape": shape}], 0, max_bytes=1 << 20)
    head = json.dumps({"op": "run", "arrays": [{"dtype": "uint8", "shape": shape}]}).encode()
    with pytest.raises(P.ProtocolError, match="message limit"):
        recv_raw(P.PREFIX.pack(P.MAGIC, P.PROTOCOL_VERSION, 0, len(head), 0) + head)
    specs, total = P.array_layout([{"dtype": "uint8", "shape": [0, 1 << 20]}], 0, max_bytes=1 << 20)
    assert total == 0 and specs[0].shape == (0, 1 << 20)  # at the limit is fine


def test_too_many_arrays_and_deep_headers_are_protocol_errors():
    with pytest.raises(P.ProtocolError, match="more than the 1024"):
        P.array_layout([{"dtype": "uint8", "shape": []}] * 1025, 0)
    for head in (b"[" * 8000 + b"]" * 8000, b'{"a":' * 33 + b"1" + b"}" * 33):
        data = P.PREFIX.pack(P.MAGIC, P.PROTOCOL_VERSION, 0, len(head), 0) + head
        with pytest.raises(P.ProtocolError, match="nested deeper than 32"):
            recv_raw(data)
    head = b'{"a": NaN}'
    with pytest.raises(P.ProtocolError, match="NaN"):
        recv_raw(P.PREFIX.pack(P.MAGIC, P.PROTOCOL_VERSION, 0, len(head), 0) + head)


def _trickle(sock, data: bytes, pause: float, stop: threading.Event) -> None:
    for i in range(len(data)):
        if stop.wait(pause):
            return
        try:
            sock.sendall(data[i:i + 1])
        except OSError:
            return


def test_a_trickling_peer_misses_the_frame_deadline_though_every_read_succeeds():
    """One byte every 0.1 s never trips a 1 s per-read timeout; the whole-frame deadline still cuts it."""
    data = frame_bytes({"op": "info", "pad": "x" * 200})
    for kw in ({"deadline_in": 0.8}, {"min_rate": 1000.0}):  # an absolute deadline, or io_timeout + size / rate
        a, b = socket.socketpair()
        stop = threading.Event()
        sender = threading.Thread(target=_trickle, args=(a, data, 0.1, stop), daemon=True)
        sender.start()
        t = time.monotonic()
        try:
            deadline = t + kw["deadline_in"] if "deadline_in" in kw else None
            with pytest.raises(P.FrameTimeoutError, match="not completed in time") as err:
                P.recv_frame(b, first_timeout=5, io_timeout=0.5 if "min_rate" in kw else 1.0, deadline=deadline,
                             min_rate=kw.get("min_rate"))
            assert isinstance(err.value, P.ProtocolError) and isinstance(err.value, TimeoutError)
            assert time.monotonic() - t < 1.6  # 0.8 s, or 0.5 s + ~250 bytes at 1000 B/s
        finally:
            stop.set()
            a.close()
            b.close()
    roundtrip_ok = roundtrip({"op": "info"})  # a prompt frame is unaffected
    assert roundtrip_ok.header == {"op": "info"}


def test_recv_refuses_bad_magic_and_random_bytes():
    with pytest.raises(P.ProtocolError, match="not an openrknn protocol frame"):
        recv_raw(frame_bytes({"op": "x"}, magic=b"HTTP"))
    with pytest.raises(P.ProtocolError):
        recv_raw(np.random.default_rng(1).bytes(64))


def test_recv_refuses_other_protocol_versions():
    with pytest.raises(P.ProtocolVersionError, match="version 2"):
        recv_raw(frame_bytes({"op": "x"}, version=2))


def test_recv_refuses_huge_lengths_before_reading_them():
    # 2^40 body bytes are never allocated: the prefix alone is enough to refuse
    data = P.PREFIX.pack(P.MAGIC, P.PROTOCOL_VERSION, 0, 10, 1 << 40)
    with pytest.raises(P.MessageTooLargeError, match="larger than"):
        recv_raw(data + b"{}")
    with pytest.raises(P.ProtocolError, match="header length"):
        recv_raw(P.PREFIX.pack(P.MAGIC, P.PROTOCOL_VERSION, 0, P.MAX_HEADER_BYTES + 1, 0))
    with pytest.raises(P.ProtocolError, match="header length"):
        recv_raw(P.PREFIX.pack(P.MAGIC, P.PROTOCOL_VERSION, 0, 0, 0))


def test_recv_refuses_truncated_frames():
    full = frame_bytes({"op": "x", "arrays": [{"dtype": "uint8", "shape": [8]}]}, bytes(8))
    for cut in (5, P.PREFIX_SIZE + 3, len(full) - 1):
        with pytest.raises(P.ConnectionLostError):
            recv_raw(full[:cut])
    with pytest.raises(P.PeerClosedError):
        recv_raw(b"")


def test_recv_refuses_bad_headers():
    for head in (b"\xff\xfe not utf8", b"[1, 2]", b"{not json"):
        data = P.PREFIX.pack(P.MAGIC, P.PROTOCOL_VERSION, 0, len(head), 0) + head
        with pytest.raises(P.ProtocolError, match="header"):
            recv_raw(data)


def test_recv_refuses_shape_bytes_mismatch_before_reading_the_body():
    header = {"op": "run", "arrays": [{"dtype": "float32", "shape": [10]}]}
    with pytest.raises(P.ProtocolError, match="do not match"):
        recv_raw(frame_bytes(header, bytes(39)))
    with pytest.raises(P.ProtocolError, match="do not match"):
        recv_raw(frame_bytes({"op": "load", "blob": 5}, bytes(4)))


def test_recv_refuses_flags():
    head = b"{}"
    with pytest.raises(P.ProtocolError, match="flags"):
        recv_raw(P.PREFIX.pack(P.MAGIC, P.PROTOCOL_VERSION, 1, len(head), 0) + head)


# ---------------------------------------------------------------- handshake


def test_macs_depend_on_token_and_nonce_and_compare_safely():
    m = P.client_mac("secret-token", "00ff")
    assert m == P.client_mac("secret-token", "00ff")
    assert m != P.client_mac("secret-tokeN", "00ff") and m != P.client_mac("secret-token", "00fe")
    assert P.server_mac("t", "a", "b") != P.client_mac("t", "a")  # a client MAC cannot be replayed as the server's
    assert P.macs_equal(m, m)
    for bad in (None, 123, m[:-1], m.upper(), "é" * 64, ["x"]):
        assert not P.macs_equal(m, bad)


# ---------------------------------------------------------------- profiling


def test_parse_profile_skips_the_warm_up_and_averages_per_node():
    events = []
    for run, (t0, durs) in enumerate([(0, (900, 900)), (1000, (10, 30)), (2000, (20, 50))]):
        events.append({"cat": "Session", "name": "model_run", "ts": t0, "dur": 100 + run})
        events.append({"cat": "Node", "name": "conv1_kernel_time", "ts": t0 + 1, "dur": durs[0],
                       "args": {"op_name": "Conv"}})
        events.append({"cat": "Node", "name": "conv1_fence_before", "ts": t0 + 1, "dur": 5, "args": {}})
        events.append({"cat": "Node", "name": "relu_kernel_time", "ts": t0 + 2, "dur": durs[1],
                       "args": {"op_name": "Relu"}})
    p = parse_profile(events, skip_runs=1)
    assert p["runs"] == 2
    assert [(r["name"], r["op_type"], r["time_us"]) for r in p["layers"]] == [("conv1", "Conv", 15.0),
                                                                            ("relu", "Relu", 40.0)]
    assert p["total_us"] == 101.5 and p["layers_total_us"] == 55.0


# ---------------------------------------------------------------- devices file


def test_parse_address():
    assert parse_address("10.0.0.5:9000") == ("10.0.0.5", 9000)
    assert parse_address("board.local") == ("board.local", P.DEFAULT_PORT)
    assert parse_address("[::1]:7000") == ("::1", 7000)
    assert parse_address("::1") == ("::1", P.DEFAULT_PORT)
    for bad in ("host:port", "host:0", "host:70000", ":8765", "", "[::1"):
        with pytest.raises(DevicesFileError):
            parse_address(bad)


def test_devices_file_entries_tokens_and_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENRKNN_TOKEN", "from-env")
    (tmp_path / "lab.token").write_text("from-file\n")
    f = tmp_path / "devices.json"
    f.write_text(json.dumps({"devices": {
        "lab": {"address": "192.168.1.20:9000", "token_file": "lab.token", "target": "rk1808", "timeout": 5},
        "usb": {"adb": "0123456789ABCDEF"},
        "inline": {"address": "h", "token": "inline-token"}}}))
    d = load_devices(f)
    assert (d["lab"].host, d["lab"].port, d["lab"].token, d["lab"].timeout) == ("192.168.1.20", 9000, "from-file", 5)
    assert d["usb"].adb_serial == "0123456789ABCDEF" and d["usb"].token == "from-env"
    assert d["usb"].token_source == "$OPENRKNN_TOKEN"
    assert d["inline"].token == "inline-token" and d["inline"].port == P.DEFAULT_PORT
    assert load_devices(tmp_path / "missing.json") == {}

    for entry, message in (({"adress": "h:1"}, "unknown key"), ({"address": "h", "adb": "x"}, "exactly one"),
                           ({}, "exactly one"), ({"address": "h", "port": "80"}, "port"),
                           ({"address": "h", "timeout": 0}, "timeout"),
                           ({"address": "h", "token_file": "nope.token"}, "does not exist")):
        f.write_text(json.dumps({"devices": {"b": entry}}))
        with pytest.raises(DevicesFileError, match=message):
            load_devices(f)
    f.write_text("{broken")
    with pytest.raises(DevicesFileError, match="not valid JSON"):
        load_devices(f)
    f.write_text("[]")
    with pytest.raises(DevicesFileError, match='"devices"'):
        load_devices(f)


def test_resolve_device_without_device_id(tmp_path, monkeypatch):
    from openrknn.runtime.connect import resolve_device

    monkeypatch.setenv("OPENRKNN_ADB", str(tmp_path / "no-adb-here"))  # adb must not be consulted for real
    f = tmp_path / "devices.json"
    with pytest.raises(DevicesFileError, match="openrknn serve"):
        resolve_device(None, devices_path=f)
    f.write_text(json.dumps({"devices": {"only": {"address": "10.1.1.1"}}}))
    assert resolve_device(None, devices_path=f).host == "10.1.1.1"
    f.write_text(json.dumps({"devices": {"a": {"address": "10.1.1.1"}, "b": {"address": "10.1.1.2"}}}))
    with pytest.raises(DevicesFileError, match="a, b"):
        resolve_device(None, devices_path=f)
    assert resolve_device("b", devices_path=f).host == "10.1.1.2"
    assert (resolve_device("10.9.9.9:1234", devices_path=f).host, resolve_device("10.9.9.9:1234", devices_path=f).port
            ) == ("10.9.9.9", 1234)


# ---------------------------------------------------------------- server configuration


def test_server_binds_loopback_only_unless_told_and_tokened():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    check_config(ServerConfig(host="127.0.0.1"))  # no token is fine on loopback
    with pytest.raises(ServerSetupError, match="--allow-remote"):
        check_config(ServerConfig(host="0.0.0.0", token="x" * 32))
    with pytest.raises(ServerSetupError, match="token"):
        check_config(ServerConfig(host="0.0.0.0", allow_remote=True, token="short"))
    check_config(ServerConfig(host="0.0.0.0", allow_remote=True, token="x" * 32))


def test_token_file_is_created_private_and_reused(tmp_path):
    path = tmp_path / "t.token"
    token = load_token(str(path))
    assert len(token) >= 32 and path.read_text().strip() == token
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_token(str(path)) == token
    path.write_text("\n")
    with pytest.raises(ServerSetupError, match="empty"):
        load_token(str(path))
