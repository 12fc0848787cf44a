"""The one onnxruntime session factory refuses what an uploaded graph must not do."""

import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from openrknn.runtime.ort_session import make_session


def _reads_a_file(location: str) -> bytes:
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4], data_location=TensorProto.EXTERNAL)
    for k, v in (("location", location), ("length", "16")):
        e = t.external_data.add()
        e.key, e.value = k, v
    g = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "g", [],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [t])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m.SerializeToString()


def test_a_model_from_bytes_cannot_read_files_beside_the_process(tmp_path, monkeypatch):
    """onnxruntime resolves a bytes model's external-data paths against the working folder: a graph uploaded to
    `openrknn serve` could return any file there as an output. Sessions made from bytes refuse it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "secret.bin").write_bytes(b"SECRETSECRETSECR")
    data = _reads_a_file("secret.bin")
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    plain.log_severity_level = 4
    leaked = ort.InferenceSession(data, plain, providers=["CPUExecutionProvider"]).run(None, {})[0]
    assert leaked.tobytes() == b"SECRETSECRETSECR"  # what the guard is for
    for optimize in (False, True):
        with pytest.raises(Exception, match="[Ee]xternal data|model_path"):
            make_session(data, optimize=optimize).run(None, {})


def test_a_model_from_a_path_keeps_its_external_data(tmp_path):
    """A user's own model file may keep its weights beside it: loading by path still works."""
    (tmp_path / "w.bin").write_bytes(b"\x00\x00\x80\x3f" * 4)
    (tmp_path / "m.onnx").write_bytes(_reads_a_file("w.bin"))
    assert make_session(str(tmp_path / "m.onnx")).run(None, {})[0].tolist() == [1.0] * 4
    assert onnx.load(str(tmp_path / "m.onnx")).graph.initializer[0].name == "w"


def test_the_empty_lookup_folder_is_removed_when_the_process_exits(tmp_path):
    """Each process that runs a session from bytes makes one private empty folder in the temp folder; it goes
    when the process does (7,000 were left in /tmp by a day of test runs)."""
    import os
    import subprocess
    import sys

    script = ("import onnx; from onnx import helper, TensorProto; from openrknn.runtime import ort_session\n"
              "g = helper.make_graph([helper.make_node('Identity', ['x'], ['y'])], 'g',"
              " [helper.make_tensor_value_info('x', TensorProto.FLOAT, [1])],"
              " [helper.make_tensor_value_info('y', TensorProto.FLOAT, [1])])\n"
              "m = helper.make_model(g, opset_imports=[helper.make_opsetid('', 17)]); m.ir_version = 8\n"
              "ort_session.make_session(m.SerializeToString())\n"
              "print(ort_session._EMPTY[0])\n")
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    folder = out.stdout.strip().splitlines()[-1]
    assert folder.startswith(str(tmp_path)), folder
    assert not os.path.exists(folder)
    assert not any(p.name.startswith("openrknn-no-external-data-") for p in tmp_path.iterdir())
