"""A multiply by a constant read only by an add of a constant (a BatchNorm spelled out after a residual Add, per
channel) is one layer on RKNPU2: rknn-toolkit2 dumps no value of the product and rounds only the sum (captcha_crnn,
`vendor-export --layers`: the twice-rounded sum was a step away on 28% of its values). A TFLite build keeps the
product's point, which TFLite's int8 MUL writes."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from conftest import built_rknn, save_graph, write_samples
from openrknn.quant.ir import GraphInfo, normalize
from openrknn.quant.plan import ALL_PRE_ACTIVATIONS, build_plan

C, H, W = 4, 6, 6


def _model(path, sub: bool = False):
    """x -> conv a, conv b -> a + b = s -> s * k (per channel) = m -> m + c (or m - c) = y -> Relu -> r."""
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array((rng.standard_normal((C, 3, 1, 1)) * 0.4).astype(np.float32), "wa"),
             numpy_helper.from_array((rng.standard_normal((C, 3, 1, 1)) * 0.4).astype(np.float32), "wb"),
             numpy_helper.from_array(rng.uniform(0.3, 2.0, (1, C, 1, 1)).astype(np.float32), "k"),
             numpy_helper.from_array(rng.uniform(-0.5, 0.5, (1, C, 1, 1)).astype(np.float32), "c")]
    n = helper.make_node
    nodes = [n("Conv", ["x", "wa"], ["a"]), n("Conv", ["x", "wb"], ["b"]), n("Add", ["a", "b"], ["s"]),
             n("Mul", ["s", "k"], ["m"]), n("Sub" if sub else "Add", ["m", "c"], ["y"]), n("Relu", ["y"], ["r"])]
    g = helper.make_graph(nodes, "affine", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, H, W])],
                          [helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, C, H, W])], inits)
    return save_graph(g, path)


def test_the_product_is_no_point_on_the_chip_and_is_one_for_tflite(tmp_path):
    for sub in (False, True):
        info = GraphInfo(normalize(onnx.load(str(_model(tmp_path / "m.onnx", sub)))))
        chip = build_plan(info, requantized_pre_activations=True)
        assert "m" in chip.internal and "m" not in chip.points and "y" in chip.points
        for other in (False, ALL_PRE_ACTIVATIONS):  # RKNPU1 and the TFLite policy keep it
            assert "m" in build_plan(info, requantized_pre_activations=other).points


def test_a_build_rounds_the_sum_once(tmp_path):
    (tmp_path / "calib").mkdir()
    rng = np.random.default_rng(2)
    ds = write_samples(tmp_path / "calib", [rng.uniform(0, 255, (1, H, W, 3)).astype(np.float32) for _ in range(6)])
    path = _model(tmp_path / "m.onnx")
    rknn = built_rknn(path, ds, target_platform="rk3588", quantized_dtype="w8a8")
    quantized = {n.input[0].split("__")[0] for n in onnx.load_from_string(rknn._package.model_bytes).graph.node
                 if n.op_type == "QuantizeLinear"}
    assert "m" not in quantized and ("y" in quantized or "r" in quantized), quantized
    rknn.release()
    rknn = built_rknn(path, ds, target_platform="rk3588", quantized_dtype="w8a8", pre_activation_points="tflite")
    quantized = {n.input[0].split("__")[0] for n in onnx.load_from_string(rknn._package.model_bytes).graph.node
                 if n.op_type == "QuantizeLinear"}
    assert "m" in quantized, quantized
    rknn.release()
