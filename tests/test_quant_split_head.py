"""A detector head's conv read by a channel Split whose score part goes to a Sigmoid and whose box part goes on
(layout_cdla's four heads): rknn-toolkit2 compiles one conv per part; its simulator's values of a score part lie on
no grid (the Sigmoid reads the unrounded sum, as after a score head's own conv) and its quantization file gives each
part a range of its own. So on RKNPU2 the conv output is no point, the score part is fused with its Sigmoid and the
box part is a point of its own. TFLite's SPLIT keeps one scale: a TFLite build keeps the conv's point."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from conftest import built_rknn, save_graph, write_samples
from openrknn.quant.ir import GraphInfo, normalize
from openrknn.quant.plan import ALL_PRE_ACTIVATIONS, build_plan

C, H, W = 6, 8, 8


def _model(path):
    """x -> conv h (6 channels) -> Split [2, 4] -> s (score logits) -> Sigmoid -> score; b -> Reshape -> boxes."""
    rng = np.random.default_rng(4)
    w = (rng.standard_normal((C, 3, 3, 3)) * 0.3).astype(np.float32)
    w[:2] *= 0.2                   # the score logits span a few units, the boxes many more
    bias = np.array([-4, -4, 0, 0, 0, 0], np.float32)
    n = helper.make_node
    nodes = [n("Conv", ["x", "w", "bias"], ["h"], pads=[1, 1, 1, 1]),
             n("Split", ["h", "sizes"], ["s", "b"], axis=1), n("Sigmoid", ["s"], ["score"]),
             n("Reshape", ["b", "shape"], ["boxes"])]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(bias, "bias"),
             numpy_helper.from_array(np.array([2, 4], np.int64), "sizes"),
             numpy_helper.from_array(np.array([1, 4, H * W], np.int64), "shape")]
    g = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, H, W])],
                          [helper.make_tensor_value_info("score", TensorProto.FLOAT, [1, 2, H, W]),
                           helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 4, H * W])], inits)
    return save_graph(g, path)


def test_the_plan_fuses_the_score_part_and_gives_the_box_part_its_own_point(tmp_path):
    info = GraphInfo(normalize(onnx.load(str(_model(tmp_path / "m.onnx")))))
    chip = build_plan(info, requantized_pre_activations=True)
    assert {"h", "s"} <= chip.internal and "score" in chip.points and "b" in chip.points
    assert chip.fused.get("score") == "Sigmoid"
    for other in (False, ALL_PRE_ACTIVATIONS):
        plan = build_plan(info, requantized_pre_activations=other)
        assert "h" in plan.points and plan.group_of["b"] == plan.group_of["h"]


def test_a_chip_build_rounds_the_box_part_on_its_own_range(tmp_path):
    (tmp_path / "calib").mkdir()
    rng = np.random.default_rng(8)
    ds = write_samples(tmp_path / "calib", [rng.uniform(0, 255, (1, H, W, 3)).astype(np.float32) for _ in range(6)])
    path = _model(tmp_path / "m.onnx")

    def scales(**config):
        rknn = built_rknn(path, ds, target_platform="rk3588", quantized_dtype="w8a8", mean_values=[[128] * 3],
                          std_values=[[64] * 3], **config)
        m = onnx.load_from_string(rknn._package.model_bytes)
        inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
        out = {n.input[0].split("__")[0]: float(inits[n.input[1]]) for n in m.graph.node
               if n.op_type == "QuantizeLinear" and n.input[1] in inits}
        rknn.release()
        return out

    chip, tflite = scales(host_sigmoid_heads="none"), scales(pre_activation_points="tflite")
    assert "h" not in chip and "s" not in chip and "b" in chip
    assert "h" in tflite and tflite["b"] == tflite["h"]
    assert chip["b"] < tflite["h"]  # the box part alone spans less than the whole conv output
    # by default the host computes this head's Sigmoid (its probabilities stay under 0.12): the score logits are
    # int8 on a range of their own, finer than the box part's
    auto = scales()
    assert "s" in auto and "score" not in auto and auto["s"] < auto["b"]


def test_a_sigmoid_output_is_on_the_unit_grid_on_the_chip(tmp_path):
    """rknn-toolkit2's simulator puts a standalone Sigmoid's output on the [0, 1] grid (1/255 steps) whatever range
    its cfg asks for (layout_cdla's score maps: calibrated [0, 0.37], dumped values on 1/255 steps up to 144/255).
    Here the score logits stay below -2 (probabilities under 0.12): a chip build that keeps the Sigmoid on the chip
    still uses 1/255; TFLite's LOGISTIC would use its own 1/256 steps."""
    info = GraphInfo(normalize(onnx.load(str(_model(tmp_path / "m.onnx")))))
    # (without a float tail, which would let the host compute an output Sigmoid: plan.host_sigmoids)
    assert build_plan(info, False, requantized_pre_activations=True).unit_ranges == {"score": (0.0, 1.0)}
    assert build_plan(info, False, requantized_pre_activations=ALL_PRE_ACTIVATIONS).unit_ranges == \
        {"score": (0, 255 / 256)}
    assert not build_plan(info, False, requantized_pre_activations=False).unit_ranges  # RKNPU1: calibrated
    # a TFLite build's LOGISTIC would read the int8 score part: the host computes it from that, in float
    assert build_plan(info, requantized_pre_activations=ALL_PRE_ACTIVATIONS).host_sigmoids == {"score": "s"}
    (tmp_path / "calib").mkdir()
    rng = np.random.default_rng(8)
    ds = write_samples(tmp_path / "calib", [rng.uniform(0, 255, (1, H, W, 3)).astype(np.float32) for _ in range(6)])
    for points in ("chip", "tflite"):
        rknn = built_rknn(_model(tmp_path / "m.onnx"), ds, target_platform="rk3588", quantized_dtype="w8a8",
                          mean_values=[[128] * 3], std_values=[[64] * 3], pre_activation_points=points,
                          host_sigmoid_heads="none")
        m = onnx.load_from_string(rknn._package.model_bytes)
        inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
        q = [n for n in m.graph.node if n.op_type == "QuantizeLinear" and n.input[0].split("__")[0] == "score"]
        if points == "tflite":
            assert not q
        else:
            z = inits[q[0].input[2]]
            scale, zp = float(inits[q[0].input[1]]), int(z) - (128 if z.dtype == np.uint8 else 0)  # int8 as uint8
            assert abs(scale - 1 / 255) < 1e-9 and zp == -128, (scale, zp)
        rknn.release()
