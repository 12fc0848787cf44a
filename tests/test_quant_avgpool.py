"""A windowed AveragePool's output keeps its input's scale and zero point: rknn-toolkit2 gives the pool's output its
input's range in its own quantization file, and its simulator keeps the pool on the input's grid even when another
range is asked for (PP-OCRv4's recognizer through the vendor bridge: a 3x2 pool whose own range was narrower came out
on the input's grid, every value up to 37 of our steps away; `vendor-export --layers`). TFLite's int8 AVERAGE_POOL_2D
requires the same, so the export needs no requantization after it. A GlobalAveragePool keeps a range of its own."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from conftest import built_rknn, save_graph, write_samples
from openrknn.quant.ir import GraphInfo, normalize
from openrknn.quant.plan import build_plan

C, H, W = 4, 6, 8


def _model(path):
    """x -> conv -> Relu -> r; r -> AveragePool 3x2 / (3, 2) -> p -> 1x1 conv -> y; r -> GlobalAveragePool -> g
    (a second output). The pool's mean is much narrower than r on these inputs (a few bright pixels)."""
    rng = np.random.default_rng(0)
    w1 = (np.abs(rng.standard_normal((C, 3, 3, 3))) * 0.3).astype(np.float32)
    w2 = (rng.standard_normal((C, C, 1, 1)) * 0.5).astype(np.float32)
    n = helper.make_node
    nodes = [n("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1]), n("Relu", ["c"], ["r"]),
             n("AveragePool", ["r"], ["p"], kernel_shape=[3, 2], strides=[3, 2]),
             n("Conv", ["p", "w2"], ["y"]), n("GlobalAveragePool", ["r"], ["g"])]
    g = helper.make_graph(nodes, "pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, H, W])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, C, H // 3, W // 2]),
                           helper.make_tensor_value_info("g", TensorProto.FLOAT, [1, C, 1, 1])],
                          [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return save_graph(g, path)


def _samples(n: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = rng.uniform(0, 20, (1, H, W, 3)).astype(np.float32)
        x[0, rng.integers(0, H, 2), rng.integers(0, W, 2)] = 255.0
        out.append(x)
    return out


def _qparams(model: onnx.ModelProto) -> dict:
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return {n.input[0]: (float(inits[n.input[1]]), int(inits[n.input[2]])) for n in model.graph.node
            if n.op_type == "QuantizeLinear" and n.input[1] in inits and n.input[2] in inits}


def test_the_pool_shares_its_input_group_and_the_global_pool_does_not(tmp_path):
    plan = build_plan(GraphInfo(normalize(onnx.load(str(_model(tmp_path / "m.onnx"))))))
    assert plan.group_of["p"] == plan.group_of["r"]
    assert plan.group_of["g"] != plan.group_of["r"]


def test_a_build_keeps_the_pool_on_its_input_grid_and_the_export_adds_no_requantization(tmp_path):
    from openrknn.export.tflite import export_tflite_bytes

    (tmp_path / "calib").mkdir()
    ds = write_samples(tmp_path / "calib", _samples(6, 1))
    for target, dtype in (("rk3588", "w8a8"), ("rk1808", "asymmetric_quantized-u8")):
        rknn = built_rknn(_model(tmp_path / "m.onnx"), ds, target_platform=target, quantized_dtype=dtype,
                          mean_values=[[0, 0, 0]], std_values=[[1, 1, 1]])
        q = _qparams(onnx.load_from_string(rknn._package.model_bytes))
        pool_in = next(v for k, v in q.items() if k.split("__")[0] == "r")
        pool_out = next(v for k, v in q.items() if k.split("__")[0] == "p")
        glob = next(v for k, v in q.items() if k.split("__")[0] == "g")
        assert pool_out == pool_in, (target, q)
        assert glob != pool_in  # the global mean's narrower range keeps its own, finer scale
        assert glob[0] < pool_in[0]
        if target == "rk3588":
            _, report = export_tflite_bytes(rknn._package)
            assert not [c for c in report.changes if "AVERAGE_POOL_2D" in c], report.changes
        rknn.release()
