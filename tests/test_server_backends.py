"""`openrknn serve` runs three kinds of model: openrknn packages (onnxruntime), vendor .rknn files (rknn-toolkit-lite2
on the NPU, with their host-side tail) and int8 .tflite files (LiteRT; Mesa's Teflon delegate when present).

rknn-toolkit-lite2 installs only on aarch64 boards and no NPU delegate exists here: the vendor tests are WIRING TESTS
against a stand-in `rknnlite.api` module (it records the calls and returns arrays computed from the inputs), and the
delegate test uses a stand-in delegate. The host-side tail and the .tflite models run for real (onnxruntime,
LiteRT on the CPU)."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from openrknn import errors as E
from openrknn.runtime import protocol as P
from openrknn.runtime.connect import BoardModel, connect_board
from openrknn.runtime.server.backends import kind_of, open_backend
from openrknn.runtime.server.config import ServerSetupError
from openrknn.testing import spawn_server

litert = pytest.importorskip("ai_edge_litert", reason="the .tflite tests need ai-edge-litert (pip install "
                             "'openrknn[tflite]')")

STAND_IN = textwrap.dedent('''
    """Stand-in for rknn-toolkit-lite2's rknnlite.api (wiring tests): records calls, computes arrays."""
    import json, os
    import numpy as np

    def _log(*call):
        with open(os.environ["STAND_IN_CALLS"], "a") as f:
            f.write(json.dumps(call) + "\\n")

    class RKNNLite(object):
        def __init__(self, verbose=False):
            _log("RKNNLite")
            self.size = None
        def load_rknn(self, path):
            with open(path, "rb") as f:
                data = f.read()
            self.size = len(data)
            _log("load_rknn", data[:4].decode("latin-1"), len(data))
            return 0 if data.startswith(b"RKNN") else -1
        def init_runtime(self, core_mask=0):
            _log("init_runtime", core_mask)
            return 0
        def inference(self, inputs, data_format="nhwc"):
            _log("inference", [list(a.shape) for a in inputs], data_format)
            x = inputs[0].astype(np.float32)
            return [x.mean(axis=(1, 2)), np.full((1, 2), float(self.size), np.float32)]
        def release(self):
            _log("release")
''')


def _tail(path: Path) -> bytes:
    """A host-side tail as vendor-export writes it: the two vendor outputs concatenated and scaled."""
    nodes = [helper.make_node("Concat", ["a", "b"], ["c"], axis=1),
             helper.make_node("Mul", ["c", "k"], ["y"])]
    g = helper.make_graph(nodes, "post", [helper.make_tensor_value_info("a", TensorProto.FLOAT, None),
                                          helper.make_tensor_value_info("b", TensorProto.FLOAT, None)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [onnx.numpy_helper.from_array(np.float32(0.5), "k")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    path.write_bytes(m.SerializeToString())
    return path.read_bytes()


@pytest.fixture(scope="module")
def tflite_model(tmp_path_factory) -> Path:
    from test_export_tflite import _build

    folder = tmp_path_factory.mktemp("serve_tflite")
    rknn = _build(folder)
    out = folder / "tiny.tflite"
    assert rknn.export_tflite(str(out)) == 0
    rknn.release()
    return out


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    """A server whose Python finds the stand-in rknnlite; --npu-core-mask 0_1, .tflite on the CPU."""
    d = tmp_path_factory.mktemp("serve_npu")
    (d / "stand_in" / "rknnlite").mkdir(parents=True)
    (d / "stand_in" / "rknnlite" / "__init__.py").write_text("")
    (d / "stand_in" / "rknnlite" / "api.py").write_text(STAND_IN)
    calls = d / "calls.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(d / "stand_in"), os.environ.get("PYTHONPATH", "")]),
           "STAND_IN_CALLS": str(calls), "OPENRKNN_TOKEN": ""}
    env.pop("OPENRKNN_TEFLON", None)
    proc, port = spawn_server(["--npu-core-mask", "0_1", "--tflite-delegate", "none", "--model-dir", str(d)],
                              env=env)
    yield {"address": f"127.0.0.1:{port}", "calls": calls, "dir": d}
    proc.terminate()
    proc.wait(10)


def _calls(board) -> list:
    return [json.loads(line) for line in board["calls"].read_text().splitlines()] if board["calls"].exists() else []


def test_kind_of_tells_the_three_kinds(tflite_model):
    assert kind_of(b"RKNN\x00\x00\x00\x00") == "vendor" and kind_of(b"CYPTRKNN") == "vendor"
    assert kind_of(tflite_model.read_bytes()) == "tflite"
    assert kind_of(b"ORKNN\x00\r\n") == "openrknn"


def test_wiring_vendor_model_with_its_tail_on_the_npu(board, tmp_path, monkeypatch):
    """Wiring test (stand-in rknnlite): the upload reaches RKNNLite.load_rknn byte for byte, init_runtime gets the
    server's core mask, the inputs reach inference() and the tail runs on the board's onnxruntime."""
    monkeypatch.setenv("OPENRKNN_TOKEN", "")
    vendor = tmp_path / "m.rknn"
    vendor.write_bytes(b"RKNN" + bytes(range(256)) * 4)
    tail = _tail(tmp_path / "m.rknn.post.onnx")
    model = BoardModel.from_file(vendor)
    assert model.kind == "vendor" and model.post == tail
    rt = connect_board("rk3588", board["address"], model)
    try:
        assert rt.metadata["kind"] == "vendor" and rt.metadata["core_mask"] == 3 and rt.metadata["post"]
        x = np.arange(2 * 4 * 3, dtype=np.uint8).reshape(1, 2, 4, 3)
        (y,) = rt.run([x])
        expect = np.concatenate([x.astype(np.float32).mean(axis=(1, 2)), [[len(model.data)] * 2]], 1) * 0.5
        np.testing.assert_allclose(y, expect, rtol=1e-6)
        perf = rt.perf([x], runs=3)
        assert perf["layers"] == [] and perf["runs"] == 3 and perf["backend"] == "vendor"
        assert rt.memory()["kind"] == "vendor"
        with pytest.raises(E.InferenceInputError, match="pass_through"):
            rt.run([x], pass_through=[1])
    finally:
        rt.release()
    calls = _calls(board)
    names = [c[0] for c in calls]
    assert names[:3] == ["RKNNLite", "load_rknn", "init_runtime"] and names[-1] == "release"
    assert calls[1] == ["load_rknn", "RKNN", len(model.data)] and calls[2] == ["init_runtime", 3]
    assert ["inference", [[1, 2, 4, 3]], "nhwc"] in calls


def test_vendor_models_are_shared_by_bytes_and_tail(board, tmp_path, monkeypatch):
    """The same vendor bytes with another tail are another model; the same pair is shared."""
    monkeypatch.setenv("OPENRKNN_TOKEN", "")
    data = b"RKNN" + bytes(64)
    tail = _tail(tmp_path / "t.onnx")
    a = connect_board("rk3588", board["address"], BoardModel("vendor", data, tail))
    b = connect_board("rk3588", board["address"], BoardModel("vendor", data, tail))
    c = connect_board("rk3588", board["address"], BoardModel("vendor", data, b""))
    try:
        assert not a.shared and b.shared and not c.shared
        assert P.model_key(data, tail) != P.model_key(data)
        assert P.model_key(data, tail) != P.model_key(data + tail)  # no other split of the bytes shares the key
    finally:
        for rt in (a, b, c):
            rt.release()


def test_tflite_model_runs_on_the_board_as_locally(board, tflite_model, monkeypatch):
    """A .tflite upload runs in the board's LiteRT (CPU here: --tflite-delegate none), bit for bit as locally."""
    from test_export_tflite import _inputs

    from openrknn.runtime.tflite_runner import TfliteRunner

    monkeypatch.setenv("OPENRKNN_TOKEN", "")
    model = BoardModel.from_file(tflite_model)
    rt = connect_board("rk3588", board["address"], model)
    local = TfliteRunner(tflite_model.read_bytes(), delegate=None)
    try:
        assert rt.metadata["kind"] == "tflite" and rt.metadata["delegate"] is None
        assert rt.metadata["inputs"][0]["shape"][0] == 1
        for x in _inputs(3):
            np.testing.assert_array_equal(rt.run([x])[0], local.run([x])[0])
        nchw = _inputs(1)[0].transpose(0, 3, 1, 2)
        np.testing.assert_array_equal(rt.run([nchw], data_format="nchw")[0], local.run(_inputs(1))[0])
        with pytest.raises(E.InferenceInputError, match="data_type"):
            rt.run(_inputs(1), data_type="float32")
    finally:
        rt.release()


def test_load_by_path_on_the_board(board, tflite_model, monkeypatch):
    from openrknn.runtime.connect import open_client, resolve_device
    from openrknn.runtime.remote import open_model_path

    monkeypatch.setenv("OPENRKNN_TOKEN", "")
    on_board = board["dir"] / "copy.tflite"
    on_board.write_bytes(tflite_model.read_bytes())
    client = open_client(resolve_device(board["address"]))
    rt = open_model_path(client, str(on_board))
    try:
        assert rt.metadata["kind"] == "tflite"
    finally:
        rt.release()


def test_refusals(board, tflite_model, tmp_path, monkeypatch):
    from openrknn.runtime.connect import open_client, resolve_device

    monkeypatch.setenv("OPENRKNN_TOKEN", "")
    client = open_client(resolve_device(board["address"]))
    try:
        with pytest.raises(E.PackageError, match="post_bytes"):
            client.request({"op": "load", "post_bytes": 99}, blob=b"RKNN" + bytes(8))
        with pytest.raises(E.PackageError, match="only a vendor"):
            client.request({"op": "load", "post_bytes": 4}, blob=tflite_model.read_bytes() + b"tail")
    finally:
        client.close()
    with pytest.raises(E.PackageError, match="neither a vendor"):
        (tmp_path / "x.bin").write_bytes(b"ORKNN\x00\r\n" + bytes(8))
        BoardModel.from_file(tmp_path / "x.bin")
    from openrknn.runtime.server.config import ServerConfig, check_config

    for change, message in (({"core_mask": "cores"}, "core mask"), ({"core_mask": "0x10000"}, "out of range"),
                            ({"tflite_delegate": "/no/such.so"}, "not a file")):
        with pytest.raises(ServerSetupError, match=message):
            check_config(ServerConfig(**change))
    with pytest.raises(ServerSetupError):  # and the server does not start with it
        spawn_server(["--npu-core-mask", "cores"], timeout=15)


def test_no_rknnlite_is_one_clear_error():
    """Without rknn-toolkit-lite2 (this machine) a vendor model is refused with the fix, before anything runs."""
    with pytest.raises(E.NotSupportedError, match="rknn-toolkit-lite2"):
        open_backend(b"RKNN" + bytes(32), b"", "test", None)


def test_wiring_tflite_backend_uses_teflon_when_found(tflite_model, teflon_stand_in):
    """Wiring test (stand-in delegate): the server's .tflite backend hands libteflon.so to load_delegate under
    'auto' and says so in the model's metadata."""
    lib, loaded = teflon_stand_in
    backend = open_backend(tflite_model.read_bytes(), b"", "test", None, tflite_delegate="auto")
    try:
        assert loaded == [str(lib)] and backend.metadata["delegate"] == str(lib)
    finally:
        backend.release()


def test_facade_runs_a_tflite_here_and_a_vendor_file_on_the_board(board, tflite_model, tmp_path, monkeypatch):
    """RKNN().load_rknn takes a .tflite (init_runtime() runs it in LiteRT here) and a vendor .rknn with its tail,
    which init_runtime(target, device_id) uploads to the board (wiring: stand-in rknnlite there)."""
    from test_export_tflite import _inputs

    from openrknn.api import RKNN
    from openrknn.runtime.tflite_runner import TfliteRunner

    monkeypatch.setenv("OPENRKNN_TOKEN", "")
    x = _inputs(1)[0]
    r = RKNN()
    assert r.load_rknn(str(tflite_model)) == 0 and r.init_runtime() == 0
    np.testing.assert_array_equal(r.inference(inputs=[x])[0], TfliteRunner(str(tflite_model), delegate=None).run(x)[0])
    vendor = tmp_path / "v.rknn"
    vendor.write_bytes(b"RKNN" + bytes(100))
    _tail(tmp_path / "v.rknn.post.onnx")
    assert r.load_rknn(str(vendor)) == 0
    assert r.init_runtime(target="rk3588", device_id=board["address"]) == 0
    (y,) = r.inference(inputs=[np.ones((1, 4, 4, 3), np.uint8)])
    np.testing.assert_allclose(y, [[0.5, 0.5, 0.5, 52.0, 52.0]])  # mean 1 per channel and 104 bytes, halved
    # the estimates read an openrknn package: refused with where to run them, not a crash
    assert r.eval_perf(is_print=False) is None and "openrknn perf" in str(r.last_error)
    assert r.eval_memory(is_print=False) is None and "openrknn perf" in str(r.last_error)
    r.release()


def test_wiring_a_tail_the_board_cannot_open_releases_the_npu(tmp_path, monkeypatch):
    """Wiring test (stand-in rknnlite): a damaged host-side tail is refused with what to do, and the RKNNLite context
    already loaded on the NPU is released first (retries would otherwise leak NPU memory)."""
    from openrknn.runtime.npu_lite import NpuLiteModel

    pkg = tmp_path / "site" / "rknnlite"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "api.py").write_text(STAND_IN)
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv("STAND_IN_CALLS", str(calls))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    for name in [m for m in sys.modules if m == "rknnlite" or m.startswith("rknnlite.")]:
        monkeypatch.delitem(sys.modules, name)
    vendor = tmp_path / "m.rknn"
    vendor.write_bytes(b"RKNN" + bytes(64))
    with pytest.raises(E.CorruptPackageError, match="post.onnx"):
        NpuLiteModel(str(vendor), "auto", post=b"not an onnx model")
    logged = [json.loads(line)[0] for line in calls.read_text().splitlines()]
    assert logged == ["RKNNLite", "load_rknn", "init_runtime", "release"]
