"""The server fuzz suite (issue 17): malformed frames before and after authentication are all answered, slow and
idle unauthenticated peers never starve a real client and are cut within 2x their deadline, special files in
--model-dir are refused without blocking. The CI part is small; `python bench/fuzz.py` runs the full set."""

from __future__ import annotations

import json
import os
import socket
import time

import numpy as np
import pytest
from container_cases import ContainerFuzzer, build_seeds
from protocol_fuzz import (FuzzServer, PeerSwarm, ProtocolFuzzer, concurrent_clients, frame, local_outputs,
                           real_client, run_protocol_fuzz)

from openrknn.runtime import protocol as P

AUTH_TIMEOUT = 1.5


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return build_seeds(tmp_path_factory.mktemp("proto_seeds"), ["float", "int8"])


@pytest.fixture(scope="module")
def server(tmp_path_factory, seeds):
    srv = FuzzServer(tmp_path_factory.mktemp("fuzz_server"), seeds[0].path,
                     ["--auth-timeout", str(AUTH_TIMEOUT), "--io-timeout", "1", "--min-rate-kib", "64",
                      "--max-clients", "2", "--max-pending", "64", "--max-models", "4", "--max-message-mb", "8"])
    yield srv
    srv.stop()


@pytest.fixture
def token_env(server, monkeypatch, tmp_path):
    monkeypatch.setenv("OPENRKNN_TOKEN", server.token)
    monkeypatch.setenv("OPENRKNN_DEVICES", str(tmp_path / "no-devices.json"))
    monkeypatch.setenv("OPENRKNN_ADB", str(tmp_path / "no-adb"))


def fuzzer(seeds, server, seed: int) -> ProtocolFuzzer:
    files = ContainerFuzzer(seeds, seed)

    def damaged(k: int) -> bytes:
        case = files.case(k)
        return case.data if case.data else b"x"
    return ProtocolFuzzer(seed, seeds[0].data, server.models, damaged)


def _check(report) -> None:
    rows = report.rows()
    print(json.dumps(rows))
    assert rows["dropped without a reply"] == 0, report.dropped[:10]
    assert rows["InternalError replies"] == 0, report.internal[:10]
    assert rows["tracebacks in the server log"] == 0
    assert rows["server alive after the run"] and rows["setup failures"] == 0
    assert len(rows["replies by kind"]) >= 6  # refusals of many kinds, and successes


def test_600_fuzzed_frames_are_each_answered_and_none_is_an_internal_error(server, seeds):
    # a single authenticated slot (--max-clients 2, and 16 cases at once) would turn most post-auth cases into
    # ServerBusy; this run uses a server of its own with room for them
    srv = FuzzServer(server.folder / "wide", seeds[0].path,
                     ["--auth-timeout", "2", "--io-timeout", "1", "--min-rate-kib", "64", "--max-clients", "64",
                      "--max-models", "4", "--max-message-mb", "8"])
    try:
        _check(run_protocol_fuzz(srv, fuzzer(seeds, srv, 3), 600))
    finally:
        srv.stop()


def test_idle_and_trickling_peers_never_starve_a_real_client(server, seeds, token_env):
    """20 unauthenticated peers against 2 client slots: init_runtime + 100 inferences still work bit for bit, and
    every peer is cut, with an error frame, within 2x --auth-timeout."""
    rng = np.random.default_rng(0)
    xs = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(100)]
    want = local_outputs(seeds[0].path, xs)
    with PeerSwarm(server, 20) as swarm:
        time.sleep(0.5)  # the peers hold their connections
        result = real_client(server, seeds[0].path, xs, want)
        time.sleep(2 * AUTH_TIMEOUT + 0.5)  # long enough for every first peer connection to be cut
    summary = swarm.summary(AUTH_TIMEOUT)
    print(result, summary)
    assert result == {"inferences": 100, "errors": 0, "mismatches": 0}
    assert summary["cut"] >= 20 and summary["cut with an error reply"] == summary["cut"]
    assert summary["not cut within 2x the deadline"] == 0 and summary["slowest cut / deadline"] <= 2.0


def test_when_pending_connections_are_full_the_longest_waiting_one_makes_room(tmp_path, seeds):
    srv = FuzzServer(tmp_path, seeds[0].path, ["--max-pending", "2", "--auth-timeout", "30"])
    try:
        idle = [srv.connect(), srv.connect()]
        for s in idle:
            P.recv_frame(s, max_message=P.HANDSHAKE_MAX_HEADER)  # both are in their handshake
        s = srv.connect()
        srv.authenticate(s)  # the newcomer gets in ...
        P.send_frame(s, {"op": "info"})
        stats = P.recv_frame(s).header["stats"]
        assert stats["evicted_pending"] == 1 and stats["authenticated_connections"] == 1
        reply = P.recv_frame(idle[0]).header  # ... and the one waiting longest was told why it goes
        assert reply["error"]["kind"] == "ServerBusy" and "--max-pending" in reply["error"]["message"]
        for sock in idle + [s]:
            sock.close()
    finally:
        srv.stop()


def test_an_authenticated_peer_trickling_a_frame_is_cut_at_its_deadline(server):
    s = server.connect()
    try:
        server.authenticate(s)
        data = frame({"op": "run", "handle": "m1", "arrays": [{"dtype": "uint8", "shape": [1, 8, 8, 3]}]},
                     bytes(192))
        t = time.monotonic()
        s.settimeout(0.2)
        reply = None
        for i in range(len(data)):  # 1 byte / 0.2 s: every read succeeds within --io-timeout 1
            try:
                s.sendall(data[i:i + 1])
            except OSError:
                break
            try:
                reply = P.recv_frame(s).header
                break
            except socket.timeout:
                continue
        seconds = time.monotonic() - t
    finally:
        s.close()
    assert reply is not None and reply["error"]["kind"] == "ProtocolError"
    assert "not completed in time" in reply["error"]["message"]
    assert seconds < 2 * (1 + len(data) / (64 * 1024))  # io_timeout + size / min rate, with 2x room


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_model_dir_entries_that_are_not_regular_files_or_bad_names_are_refused_clearly(server):
    d = server.models
    cases = {str(d / "pipe.rknn"): "named pipe (FIFO)", str(d / "zero.rknn"): "outside the folders",
             str(d / "folder.rknn"): "is a folder", "a\x00b.rknn": "NUL byte", "n" * 5000: "4096",
             str(d / ("n" * 300)): "too long", str(d / "garbage.rknn"): "not an openrknn .rknn package"}
    s = server.connect()
    try:
        server.authenticate(s)
        for path, expect in cases.items():
            t = time.monotonic()
            P.send_frame(s, {"op": "load", "path": path})
            reply = P.recv_frame(s).header
            assert reply["ok"] is False and expect in reply["error"]["message"], (path[:40], reply)
            assert reply["error"]["kind"] in ("PackageError", "CorruptPackageError", "RuntimeStateError")
            assert time.monotonic() - t < 2
        P.send_frame(s, {"op": "load", "path": str(d / "good.rknn")})  # the connection still serves
        assert P.recv_frame(s).header["ok"]
    finally:
        s.close()
    assert "Traceback" not in server.log_text()


@pytest.mark.slow
def test_full_protocol_fuzz_with_peers_and_concurrent_clients(tmp_path, seeds, monkeypatch):
    srv = FuzzServer(tmp_path, seeds[0].path, ["--auth-timeout", "2", "--io-timeout", "1", "--min-rate-kib", "64",
                                               "--max-clients", "64", "--max-models", "4", "--max-message-mb", "8"])
    monkeypatch.setenv("OPENRKNN_TOKEN", srv.token)
    monkeypatch.setenv("OPENRKNN_DEVICES", str(tmp_path / "no-devices.json"))
    monkeypatch.setenv("OPENRKNN_ADB", str(tmp_path / "no-adb"))
    try:
        _check(run_protocol_fuzz(srv, fuzzer(seeds, srv, 11), 3000))
        with PeerSwarm(srv, 50):
            result = concurrent_clients(srv, seeds[0].path, 8, 200)
        assert result["errors"] == 0 and result["mismatches"] == 0 and result["inferences"] == 1600
    finally:
        srv.stop()
