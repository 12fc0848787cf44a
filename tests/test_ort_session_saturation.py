"""On an x86-64 CPU without VNNI onnxruntime's uint8 x int8 kernels add pairs of products in 16 bits and saturate;
every session openrknn makes there widens them first (session.x64quantprecision). The detection, and the widened
session giving the exact integer sums on a conv whose inputs and weights are both at their extremes."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import openrknn.runtime.ort_session as ort_session


@pytest.mark.parametrize("machine, flags, saturates", [
    ("x86_64", {"sse4_2", "avx2", "fma"}, True),                 # Haswell .. Skylake, Zen 1-3
    ("x86_64", {"avx2", "avx512f", "avx512bw"}, True),            # Skylake-SP: AVX-512 without VNNI
    ("x86_64", {"avx2", "avx512f", "avx512_vnni"}, False),        # Cascade Lake and later Xeons, Zen 4
    ("AMD64", {"avx2", "avx_vnni"}, False),                       # Alder Lake: the 256-bit VNNI
    ("aarch64", set(), False),                                    # a board: other kernels
    ("arm64", set(), False),
])
def test_which_cpus_saturate(machine, flags, saturates):
    assert ort_session.int8_dots_saturate(machine, flags) is saturates


def _extreme_conv() -> bytes:
    """uint8 input at 255 times int8 weights at 127, 144 products per output: every 16-bit pair overflows."""
    w = np.full((4, 16, 3, 3), 127, np.int8)
    w[1] = -128
    inits = [numpy_helper.from_array(np.float32(1 / 255), "s"), numpy_helper.from_array(np.uint8(0), "z"),
             numpy_helper.from_array(w, "wq"), numpy_helper.from_array(np.full(4, 0.01, np.float32), "ws"),
             numpy_helper.from_array(np.zeros(4, np.int8), "wz"), numpy_helper.from_array(np.float32(0.25), "so"),
             numpy_helper.from_array(np.uint8(128), "zo")]
    n = helper.make_node
    nodes = [n("QuantizeLinear", ["x", "s", "z"], ["xq"]), n("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             n("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0), n("Conv", ["xd", "wd"], ["c"]),
             n("QuantizeLinear", ["c", "so", "zo"], ["cq"]), n("DequantizeLinear", ["cq", "so", "zo"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m.SerializeToString()


def test_a_widened_session_gives_the_exact_sums(monkeypatch):
    model = _extreme_conv()
    x = np.ones((1, 16, 6, 6), np.float32)
    x[0, :, ::2] = 0.5
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    want = ort.InferenceSession(model, plain).run(None, {"x": x})[0]  # float arithmetic on the QDQ graph
    monkeypatch.setattr(ort_session, "_SATURATES", [True])
    got = ort_session.make_session(model).run(None, {"x": x})[0]  # fused integer kernels, widened
    np.testing.assert_array_equal(got, want)
