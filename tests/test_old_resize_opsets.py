"""Upsample (opset 9) and Resize (opset 10) sample at x_out / scale. onnx's version converter turns them into
Resize without that rule, so a linear one took Resize's default half-pixel centres once loaded: a DeepLabV3
converted from TFLite (opset 9, its last Upsample 33 -> 257) had logits off by up to 4 in the float build."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from openrknn.convert import load_onnx


@pytest.mark.parametrize("op, opset, mode, scales", [
    ("Upsample", 9, "linear", [1, 1, 2, 2]), ("Upsample", 9, "linear", [1, 1, 7.787879, 7.787879]),
    ("Upsample", 9, "nearest", [1, 1, 1.5, 2.7]), ("Resize", 10, "linear", [1, 1, 2.5, 1.5]),
    ("Resize", 10, "nearest", [1, 1, 2.5, 2]), ("Resize", 10, "nearest", [1, 1, 0.5, 0.6])])
def test_an_old_resize_loads_as_onnxruntime_runs_it(tmp_path, op, opset, mode, scales):
    # a node after it, as in a real model: the converter renames the resize's output then
    g = helper.make_graph([helper.make_node(op, ["x", "s"], ["u"], mode=mode, name="up"),
                           helper.make_node("Relu", ["u"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 9, 11])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(np.array(scales, np.float32), "s")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.save(model, tmp_path / "m.onnx")
    x = np.random.default_rng(0).random((1, 2, 9, 11), np.float32)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    loaded = load_onnx(tmp_path / "m.onnx").model
    got = ort.InferenceSession(loaded.SerializeToString()).run(None, {"x": x})[0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-6)
