"""Output-aware range search: it shrinks a range only where the outputs gain, and leaves a model alone otherwise."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import write_npy_dataset
from openrknn.errors import ConfigError
from openrknn.quant import QuantOptions, quantize
from openrknn.quant.algorithms.range_search import _scaled, output_weights
from openrknn.quant.dataset import InputSpec, read_dataset
from openrknn.quant.qdq import ActQuant
from openrknn.quant.schemes import get_scheme

H = W = 8


def _model(loud_weight: float) -> onnx.ModelProto:
    """x -> Conv+Relu making a loud channel (x100) and a quiet one -> 1x1 conv reading the loud channel with
    ``loud_weight`` and the quiet one with 5: with a small loud_weight the loud channel's range only costs the quiet
    channel its resolution."""
    w1 = np.zeros((2, 3, 1, 1), np.float32)
    w1[0, 0], w1[1, 1] = 100.0, 1.0
    w2 = np.array([[loud_weight, 5.0]], np.float32).reshape(1, 2, 1, 1)
    nodes = [helper.make_node("Transpose", ["raw"], ["x"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["x", "w1"], ["c1"]), helper.make_node("Relu", ["c1"], ["t"]),
             helper.make_node("Conv", ["t", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("raw", TensorProto.FLOAT, [1, H, W, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, H, W])],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _data(tmp_path, seed: int, n: int = 6):
    folder = tmp_path / f"d{seed}"
    folder.mkdir()
    listing = write_npy_dataset(folder, (H, W, 3), n=n, seed=seed, high=1.0)
    return read_dataset(listing, [InputSpec("raw", (1, H, W, 3))])


def _error(model: onnx.ModelProto, qmodel: onnx.ModelProto, data) -> float:
    run = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]) for m in (model, qmodel)]
    return float(np.mean([np.mean((run[0].run(None, f)[0] - run[1].run(None, f)[0]) ** 2) for f in data]))


def test_shrinks_the_range_that_costs_the_outputs(tmp_path):
    model, calib, held = _model(0.001), _data(tmp_path, 0), _data(tmp_path, 1)
    opts = dict(dtype="asymmetric_quantized-u8", bias_correction=False, equalization=False)  # CLE would fix it
    base = quantize(model, calib, QuantOptions(**opts), progress=False)
    res = quantize(model, calib, QuantOptions(**opts, range_search=True), progress=False)
    rep = res.report["range_search"]
    assert rep["changed"] == {"t": 0.5}
    assert rep["loss_after"] < 0.8 * rep["loss_before"]
    assert res.tensors["t"]["scale"][0] == pytest.approx(base.tensors["t"]["scale"][0] * 0.5, rel=1e-6)
    assert _error(model, res.model, held) < 0.8 * _error(model, base.model, held)  # on images it never saw


def test_leaves_a_range_alone_when_the_outputs_need_it(tmp_path):
    model, calib = _model(1.0), _data(tmp_path, 0)  # the loud channel now matters: clipping it would hurt
    res = quantize(model, calib, QuantOptions(dtype="w8a8", range_search=True), progress=False)
    assert res.report["range_search"]["changed"] == {}
    assert res.report["range_search"]["groups_tried"] >= 1


def test_scaled_range_keeps_zero_exact_and_output_weights():
    fmt = get_scheme("asymmetric_quantized-u8").act
    a = ActQuant(0.1, 20, fmt)
    b = _scaled(a, 0.5)
    assert b.scale == pytest.approx(0.05, rel=1e-6) and b.zero_point == 20
    w = output_weights([[np.ones((1, 4, 3)) * np.arange(3)], [np.zeros((1, 4, 3))]])
    assert w[0].shape == (3,) and np.all(np.isfinite(w[0]))


def test_bad_search_options_are_refused(tmp_path):
    model, calib = _model(0.001), _data(tmp_path, 0)
    for key in ("range_search_groups", "range_search_samples"):
        with pytest.raises(ConfigError, match=key):
            quantize(model, calib, QuantOptions(range_search=True, **{key: 0}), progress=False)
