"""Convs the RKNPU2 computes in input-channel slices (rknn-toolkit2's tiling_conv_channelin): the slices, the float
function kept, the partial sums as int8 points in the chip's order, and builds for other targets left whole."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from openrknn.package import read_package
from openrknn.quant.algorithms.conv_tiles import slices, tile_convs, tiled_convs
from openrknn.quant.ir import GraphInfo, normalize
from openrknn.quant.plan import ALL_PRE_ACTIVATIONS, build_plan

# rknn-toolkit2 2.5.0's build log for one conv of (input channels, kernel side): its slices (None: whole)
VENDOR = {(256, 3): None, (384, 3): [192, 192], (448, 3): [224, 224], (512, 3): [256, 256], (512, 1): None,
          (1024, 1): None, (2048, 1): None, (4096, 1): [2048, 2048], (512, 2): None, (768, 2): None,
          (1024, 2): [512, 512], (128, 5): [64, 64], (256, 5): [112, 112, 32], (64, 7): [32, 32],
          (96, 7): [48, 48], (400, 3): [336, 64], (1000, 3): [336, 336, 328], (720, 3): [240, 240, 240],
          (3100, 1): [3072, 28], (6144, 1): [3072, 3072], (6400, 1): [3072, 3072, 256], (344, 3): [336, 8],
          (3088, 1): [3072, 16], (3104, 1): [1552, 1552], (3120, 1): [3072, 48], (1040, 3): [336, 336, 336, 32],
          (130, 5): [112, 18]}


def test_the_slices_are_the_vendors():
    assert {key: slices(c, k * k) for key, (c, k) in zip(VENDOR, VENDOR)} == VENDOR


def model(channels: int, kernel: int = 3, after: str = "Relu") -> onnx.ModelProto:
    """x -> conv to ``channels`` -> Relu -> the conv under test (to 32 channels, with a bias) -> ``after``."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (channels, 4, 3, 3)).astype(np.float32), "w0"),
             numpy_helper.from_array(rng.normal(0, 0.05, (32, channels, kernel, kernel)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(0, 0.5, 32).astype(np.float32), "b")]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"], pads=[1] * 4, name="stem"),
             helper.make_node("Relu", ["a"], ["r"], name="stem_relu"),
             helper.make_node("Conv", ["r", "w", "b"], ["c"], pads=[kernel // 2] * 4, name="big"),
             helper.make_node(after, ["c"], ["y"], name="after")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 12, 12])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return normalize(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


def _run(m: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("channels", [512, 1040])
def test_the_tiled_graph_computes_the_same_and_rounds_where_the_chip_does(channels):
    m = model(channels)
    info = GraphInfo(m)
    tiled = tiled_convs(info)
    assert list(tiled.values()) == [slices(channels, 9)] and info.nodes[next(iter(tiled))].name == "big"
    t, report, origins = tile_convs(m, info, tiled)
    x = np.random.default_rng(1).normal(0, 1, (1, 4, 12, 12)).astype(np.float32)
    np.testing.assert_allclose(_run(t, x), _run(m, x), rtol=1e-4, atol=1e-4)
    assert report["convs"] == [{"conv": "big", "slices": slices(channels, 9)}]
    assert set(origins.values()) == {"big"}
    plan = build_plan(GraphInfo(t), True, True)
    n = len(slices(channels, 9))
    # the second slice's conv first, rounded; each later sum but the last rounded; each other conv fused into its Add
    assert "c__tile1" in plan.points and "c__tile0" in plan.internal
    assert [p for p in plan.points if "tile_sum" in p] == [f"c__tile_sum{j}" for j in range(1, n - 1)]
    assert {f"c__tile{k}" for k in range(n) if k != 1} <= plan.internal
    convs = [node.name for node in t.graph.node if node.op_type == "Conv"]
    assert convs[1:3] == ["big__tile1", "big__tile0"]
    # TFLite's points (every conv output an int8 tensor) would round each slice: that build is never tiled
    assert "c__tile0" in build_plan(GraphInfo(t), True, ALL_PRE_ACTIVATIONS).points


def test_two_convs_sharing_a_weight_share_its_slices():
    """A siamese net's branches read one set of weights: cut once, each branch its own tiles."""
    m = model(512)
    twin = helper.make_node("Conv", ["r", "w", "b"], ["c2"], pads=[1] * 4, name="twin")
    m.graph.node.append(twin)
    m.graph.output.append(helper.make_tensor_value_info("c2", TensorProto.FLOAT, None))
    m = normalize(m)
    info = GraphInfo(m)
    t, report, _ = tile_convs(m, info, tiled_convs(info))
    names = [i.name for i in t.graph.initializer]
    assert len(names) == len(set(names)) and len(report["convs"]) == 2
    onnx.checker.check_model(t)
    x = np.random.default_rng(5).normal(0, 1, (1, 4, 12, 12)).astype(np.float32)
    ours = ort.InferenceSession(t.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_convs_under_the_limit_and_grouped_convs_stay_whole():
    assert tiled_convs(GraphInfo(model(256))) == {}  # 256 x 9 = 2304
    m = model(512, kernel=1)
    assert tiled_convs(GraphInfo(m)) == {}
    w = next(i for i in m.graph.initializer if i.name == "w")
    w.CopyFrom(numpy_helper.from_array(np.zeros((32, 1, 3, 3), np.float32), "w"))
    next(n for n in m.graph.node if n.name == "big").attribute.append(helper.make_attribute("group", 32))
    assert tiled_convs(GraphInfo(m)) == {}


def _samples(tmp_path):
    from conftest import write_samples

    rng = np.random.default_rng(2)
    return write_samples(tmp_path, [rng.normal(0, 1, (1, 12, 12, 4)).astype(np.float32) for _ in range(6)])  # NHWC


@pytest.mark.parametrize("config, tiled", [(dict(target_platform="rk3588", quantized_dtype="w8a8"), True),
                                           (dict(target_platform="rk1808"), False),
                                           (dict(target_platform="rk3588", quantized_dtype="w8a8",
                                                 pre_activation_points="tflite"), False)])
def test_a_build_tiles_only_for_the_rknpu2(tmp_path, config, tiled):
    from conftest import built_rknn

    path = tmp_path / "big.onnx"
    onnx.save(model(512), str(path))
    rk = built_rknn(path, _samples(tmp_path), mean_values=[[0] * 4], std_values=[[1] * 4], **config)
    try:
        assert rk.export_rknn(str(tmp_path / "big.rknn")) == 0
        built = onnx.load_from_string(read_package(str(tmp_path / "big.rknn")).model_bytes)
        quantized = {n.input[0] for n in built.graph.node if n.op_type == "QuantizeLinear"}
        assert ("c__tile1__f" in quantized) is tiled
        assert any(n.name.startswith("big__tile") for n in built.graph.node) is tiled
        x = np.random.default_rng(3).normal(0, 1, (1, 12, 12, 4)).astype(np.float32)
        ref = _run(model(512), np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        out = rk.inference(inputs=[x])[0]
        cos = float(np.sum(out * ref) / np.linalg.norm(out) / np.linalg.norm(ref))
        assert cos > 0.99
    finally:
        rk.release()


def test_an_override_of_a_tiled_convs_weight_reaches_its_slices_and_partial_sums():
    """Auto hybrid names a layer by its points and its weight: the weight of a tiled conv is no longer one tensor
    (an override naming it failed as an unknown name) and its partial sum is the layer's too."""
    from openrknn.quant import QuantOptions, quantize

    rng = np.random.default_rng(4)
    data = [{"x": rng.normal(0, 1, (1, 4, 12, 12)).astype(np.float32)} for _ in range(4)]
    options = dict(dtype="w8a8", target="rk3588", range_choice=False)
    res = quantize(model(512), data, QuantOptions(**options, overrides={"w": "int16", "y": "int16"}), progress=False)
    plain = quantize(model(512), data, QuantOptions(**options), progress=False)
    assert plain.tensors["c__tile1"]["dtype"] == "int8"
    assert res.tensors["c__tile1"]["dtype"] == "int16"
    assert {res.tensors[f"w__tile{k}"]["dtype"] for k in (0, 1)} == {"int16"}
