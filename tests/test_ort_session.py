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
