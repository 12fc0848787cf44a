"""A sum of two activations read only by a Relu is no quantization point of its own: the NPU's elementwise unit
applies the Relu before it requantizes, and rknn-toolkit2 gives the sum the Relu's range. CSRNet (a photo retoucher:
conv * scale + shift + conv, then a Relu, per layer) lost 1.5 dB of PSNR to the vendor with the sum's negative half
taking int8 levels of its own."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from conftest import built_rknn, write_samples
from openrknn.quant.ir import GraphInfo, normalize
from openrknn.quant.plan import build_plan

C, H, W = 4, 8, 8


def _model(path, op: str = "Add", also_read: bool = False):
    """x -> two 1x1 convs a, b -> a (op) b -> Relu -> r. a reads channels 1..3 (within [0, 3] each); b takes ten times
    channel 0 off (a pixel's channel 0 is 0, or up to 3 on one pixel in five), so the sum spans about [-30, 3] and
    the Relu keeps [0, 3]. ``also_read``: the sum is a graph output too."""
    rng = np.random.default_rng(3)
    wa = (np.abs(rng.standard_normal((C, C, 1, 1))) * 0.3).astype(np.float32)
    wa[:, 0] = 0.0
    wb = np.zeros((C, C, 1, 1), np.float32)
    wb[:, 0] = 10.0 if op == "Sub" else -10.0
    n = helper.make_node
    nodes = [n("Conv", ["x", "wa"], ["a"]), n("Conv", ["x", "wb"], ["b"]), n(op, ["a", "b"], ["s"]),
             n("Relu", ["s"], ["r"])]
    outs = [helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, C, H, W])]
    if also_read:
        outs.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, C, H, W]))
    g = helper.make_graph(nodes, "sum_relu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, H, W])],
                          outs, [numpy_helper.from_array(wa, "wa"), numpy_helper.from_array(wb, "wb")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def _samples(n: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = np.abs(rng.normal(0, 1.5, (1, H, W, C))).clip(0, 3).astype(np.float32)
        x[..., 0] = np.where(rng.random((1, H, W)) < 0.2, rng.uniform(1, 3, (1, H, W)), 0.0)
        out.append(x)
    return out


def test_the_relu_output_is_the_point_and_the_sum_is_not(tmp_path):
    for op in ("Add", "Sub"):
        plan = build_plan(GraphInfo(normalize(onnx.load(str(_model(tmp_path / "m.onnx", op))))))
        assert "s" in plan.internal and "s" not in plan.points
        assert "r" in plan.points and plan.fused["r"] == "Relu"
    # a sum something else reads (here: a graph output) keeps its own point
    plan = build_plan(GraphInfo(normalize(onnx.load(str(_model(tmp_path / "m.onnx", "Add", also_read=True))))))
    assert "s" in plan.points and "s" not in plan.internal


def test_int8_keeps_the_relu_range_fine(tmp_path):
    path = _model(tmp_path / "m.onnx")
    r = built_rknn(path, write_samples(tmp_path, _samples(12, 1)), target_platform="rk3588",
                   mean_values=[[0] * C], std_values=[[1] * C])
    sess = ort.InferenceSession(str(path))
    worst = 0.0
    for x in _samples(6, 9):
        want = sess.run(None, {"x": x.transpose(0, 3, 1, 2)})[0]
        got = np.asarray(r.inference(inputs=[x])[0]).reshape(want.shape)
        assert (want > 0.05).mean() > 0.1  # the Relu keeps a fair share: the test judges something
        worst = max(worst, float(np.abs(got - want).max()))
    r.release()
    # with the sum a point of its own, [-30, 5] rounds in steps of 0.14 (0.09 measured, its half step on top of the
    # convs' own); the Relu's [0, 5] in steps of 0.02 (0.04 measured)
    assert worst < 0.06, worst
