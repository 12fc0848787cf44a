"""Quantized builds of models with control flow: a Loop body runs in float and may read the outer graph's weights by
name; the QDQ graph must keep them (a table recognizer's GRU decoder is such a Loop)."""

from __future__ import annotations

import numpy as np
import pytest
import onnx
from onnx import TensorProto, helper, numpy_helper

from conftest import ort_run
from openrknn.quant import QuantOptions, quantize


def loop_model(decode: bool = False) -> onnx.ModelProto:
    """conv -> ReLU -> a 3-step Loop whose body multiplies its state by an outer weight matrix; decode=True: the
    body also takes the ArgMax of each step and adds that row of the weights to the state (a step-by-step decode,
    each choice feeding the next)."""
    rng = np.random.default_rng(0)
    n = helper.make_node
    steps = [n("MatMul", ["state", "dec_w"], ["mm"])]
    if decode:
        steps += [n("ArgMax", ["mm"], ["pick"], axis=1, keepdims=0), n("Gather", ["dec_w", "pick"], ["row"]),
                  n("Add", ["mm", "row"], ["mixed"]), n("Tanh", ["mixed"], ["state_out"])]
    else:
        steps += [n("Tanh", ["mm"], ["state_out"])]
    body = helper.make_graph(
        steps + [n("Identity", ["cond"], ["cond_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [1, 16])])
    nodes = [n("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), n("Relu", ["c"], ["r"]),
             n("GlobalAveragePool", ["r"], ["p"]), n("Flatten", ["p"], ["f"]),
             n("Loop", ["trip", "", "f"], ["y"], body=body)]
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (16, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(0, 0.3, (16, 16)).astype(np.float32), "dec_w"),
             numpy_helper.from_array(np.asarray(3, np.int64), "trip")]
    g = helper.make_graph(nodes, "loop", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("decode", [False, True])
def test_quantized_build_keeps_what_a_loop_body_reads(caplog, decode):
    """A decode loop's outputs on a few samples cannot judge ranges: range choice keeps the calibrated ones there,
    and runs for a loop that chooses nothing."""
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.normal(0, 1, (1, 3, 8, 8)).astype(np.float32)} for _ in range(4)]
    with caplog.at_level("INFO", logger="openrknn"):
        res = quantize(loop_model(decode), feeds, QuantOptions(dtype="w8a8", target="rk3588"), progress=False)
    assert "dec_w" in {t.name for t in res.model.graph.initializer}
    skipped = any("a loop decodes step by step" in r.getMessage() for r in caplog.records)
    assert skipped == decode
    for f in feeds:
        (got,), (want,) = ort_run(res.model, f), ort_run(loop_model(decode), f)
        assert np.dot(got.ravel(), want.ravel()) / (np.linalg.norm(got) * np.linalg.norm(want)) > 0.99
