"""The pre-processing contract: the built model takes uint8 NHWC pixels in the feed's channel order and applies
model_channel[c] = (fed[reorder[c]] - mean[c]) / std[c] inside the graph (folded into the first conv where exact)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from openrknn.api import RKNN
from openrknn.errors import InferenceInputError

H, W = 8, 10
# Asymmetric per-channel values: a mean/std applied in the wrong channel order shows up at once.
MEAN = [10.0, 100.0, 200.0]
STD = [2.0, 4.0, 8.0]


def _build(path, level: int = 3, **config) -> RKNN:
    rknn = RKNN()
    assert rknn.config(optimization_level=level, **config) == 0
    assert rknn.load_onnx(str(path)) == 0
    assert rknn.build(do_quantization=False) == 0
    assert rknn.init_runtime() == 0
    return rknn


def _payload(rknn: RKNN) -> onnx.ModelProto:
    return onnx.load_from_string(rknn._package.model_bytes)


def _pre_nodes(rknn: RKNN):
    return [n for n in _payload(rknn).graph.node if n.name.startswith("openrknn_pre")]


# ---------------------------------------------------------------- channel order and mean/std


@pytest.mark.parametrize("pads", [0, 1])
@pytest.mark.parametrize("level", [0, 3])
def test_bgr_feed_with_reorder_equals_rgb_feed_without(conv_onnx, pixels, pads, level):
    path = conv_onnx(pads=pads)
    rgb = pixels(H, W)
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    with_reorder = _build(path, level, reorder_channel="2 1 0", mean_values=[MEAN], std_values=[STD])
    without = _build(path, level, mean_values=[MEAN], std_values=[STD])
    np.testing.assert_allclose(with_reorder.inference([bgr])[0], without.inference([rgb])[0], atol=1e-4, rtol=0)
    # and the reorder does act: the same BGR pixels without it give something else
    assert np.abs(without.inference([bgr])[0] - without.inference([rgb])[0]).max() > 1e-2
    with_reorder.release()
    without.release()


@pytest.mark.parametrize("order", ["2 1 0", "1 2 0", "0 1 2"])
@pytest.mark.parametrize("pads", [0, 1])
def test_mean_std_apply_in_model_channel_order_after_reorder(conv_onnx, pixels, ort_reference, reference_normalise,
                                                             order, pads):
    # '1 2 0' is not its own inverse: it tells "model channel c takes fed channel reorder[c]" from the inverse map
    path = conv_onnx(pads=pads)
    fed = pixels(H, W, seed=1)
    reorder = [int(v) for v in order.split()]
    rknn = _build(path, reorder_channel=order, mean_values=[MEAN], std_values=[STD])
    expected = ort_reference(path, {"x": reference_normalise(fed, MEAN, STD, reorder)})[0]
    np.testing.assert_allclose(rknn.inference([fed])[0], expected, atol=1e-4, rtol=0)
    meta = rknn._package.metadata["inputs"][0]
    assert meta["shape"] == [1, H, W, 3] and meta["dtype"] == "uint8" and meta["layout"] == "nhwc"
    assert meta["preprocess"]["mean"] == MEAN and meta["preprocess"]["std"] == STD
    assert meta["preprocess"]["reorder_channel"] == reorder
    rknn.release()


def test_fold_into_first_conv_is_exact_without_padding(conv_onnx, pixels, ort_reference, reference_normalise):
    path = conv_onnx(pads=0)
    rknn = _build(path, reorder_channel="1 2 0", mean_values=[MEAN], std_values=[STD])
    pre = rknn._package.metadata["inputs"][0]["preprocess"]
    assert pre["folded_into"] == ["conv1"]
    assert pre["mean_folded"] is True
    # everything but the layout change went into the weights
    assert [n.op_type for n in _pre_nodes(rknn)] == ["Transpose"]
    assert not {"Sub", "Div", "Gather"} & {n.op_type for n in _payload(rknn).graph.node}
    fed = pixels(H, W, seed=2)
    expected = ort_reference(path, {"x": reference_normalise(fed, MEAN, STD, [1, 2, 0])})[0]
    np.testing.assert_allclose(rknn.inference([fed])[0], expected, atol=1e-4, rtol=0)
    rknn.release()


def test_mean_is_kept_as_sub_when_the_first_conv_pads(conv_onnx, pixels, ort_reference, reference_normalise):
    path = conv_onnx(pads=1)
    rknn = _build(path, reorder_channel="1 2 0", mean_values=[MEAN], std_values=[STD])
    pre = rknn._package.metadata["inputs"][0]["preprocess"]
    assert pre["folded_into"] == ["conv1"]  # reorder and 1/std still go into the weights
    assert pre["mean_folded"] is False
    assert sorted(n.op_type for n in _pre_nodes(rknn)) == ["Sub", "Transpose"]
    assert not {"Div", "Gather"} & {n.op_type for n in _payload(rknn).graph.node}
    fed = pixels(H, W, seed=3)
    expected = ort_reference(path, {"x": reference_normalise(fed, MEAN, STD, [1, 2, 0])})[0]
    np.testing.assert_allclose(rknn.inference([fed])[0], expected, atol=1e-4, rtol=0)
    rknn.release()


@pytest.mark.parametrize("pads", [0, 1])
def test_a_negative_std_inverts_the_feed(conv_onnx, pixels, ort_reference, reference_normalise, pads):
    """An ink-map model (trueocr's: x = 1 - pixel / 255) is mean 255, std -255; with or without the fold into a
    padding conv (whose zero padding the kept Sub has to respect)."""
    path = conv_onnx(pads=pads)
    mean, std = [255.0] * 3, [-255.0] * 3
    rknn = _build(path, mean_values=[mean], std_values=[std])
    fed = pixels(H, W, seed=4)
    expected = ort_reference(path, {"x": reference_normalise(fed, mean, std, [0, 1, 2])})[0]
    np.testing.assert_allclose(rknn.inference([fed])[0], expected, atol=1e-4, rtol=0)
    rknn.release()


@pytest.mark.parametrize("level", [0, 1, 2])
def test_no_fold_below_level_3(conv_onnx, level):
    rknn = _build(conv_onnx(pads=0), level, reorder_channel="2 1 0", mean_values=[MEAN], std_values=[STD])
    assert rknn._package.metadata["inputs"][0]["preprocess"]["folded_into"] is None
    assert sorted(n.op_type for n in _pre_nodes(rknn)) == ["Div", "Gather", "Sub", "Transpose"]
    rknn.release()


def _relu_first_model(path):
    """x -> Relu -> Conv: the input is not read by a conv, so nothing can fold."""
    w = onnx.numpy_helper.from_array(np.random.default_rng(0).standard_normal((2, 3, 1, 1)).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["r"], name="relu"),
                           helper.make_node("Conv", ["r", "w"], ["y"], name="conv", kernel_shape=[1, 1])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, H, W])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, H, W])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def test_no_fold_when_the_input_does_not_feed_a_conv(tmp_path, pixels, ort_reference, reference_normalise):
    path = _relu_first_model(tmp_path / "relu_first.onnx")
    rknn = _build(path, reorder_channel="2 1 0", mean_values=[MEAN], std_values=[STD])
    assert rknn._package.metadata["inputs"][0]["preprocess"]["folded_into"] is None
    fed = pixels(H, W, seed=4)
    expected = ort_reference(path, {"x": reference_normalise(fed, MEAN, STD, [2, 1, 0])})[0]
    np.testing.assert_allclose(rknn.inference([fed])[0], expected, atol=1e-4, rtol=0)
    rknn.release()


def test_optimization_levels_0_to_3_give_the_same_outputs(conv_onnx, pixels, ort_reference, reference_normalise):
    path = conv_onnx(pads=1, batchnorm=True)
    fed = pixels(H, W, seed=5)
    expected = ort_reference(path, {"x": reference_normalise(fed, MEAN, STD, [2, 1, 0])})[0]
    node_counts = []
    for level in range(4):
        rknn = _build(path, level, reorder_channel="2 1 0", mean_values=[MEAN], std_values=[STD])
        np.testing.assert_allclose(rknn.inference([fed])[0], expected, atol=1e-4, rtol=0)
        node_counts.append(len(_payload(rknn).graph.node))
        assert rknn._package.metadata["build"]["optimization_level"] == level
        rknn.release()
    assert node_counts[0] > node_counts[2]  # BatchNorm was folded from level 2 on (the levels do differ)
    assert node_counts[2] > node_counts[3]  # and the pre-processing at level 3


# ---------------------------------------------------------------- inputs_pass_through


@pytest.mark.parametrize("fmt", ["nchw", "nhwc"])
def test_pass_through_feeds_the_normalised_tensor(conv_onnx, pixels, ort_reference, reference_normalise, fmt):
    path = conv_onnx(pads=1)
    rknn = _build(path, reorder_channel="2 1 0", mean_values=[MEAN], std_values=[STD])
    fed = pixels(H, W, seed=6)
    model_input = reference_normalise(fed, MEAN, STD, [2, 1, 0])  # NCHW, model channel order
    expected = ort_reference(path, {"x": model_input})[0]
    x = model_input if fmt == "nchw" else np.ascontiguousarray(model_input.transpose(0, 2, 3, 1))
    out = rknn.inference([x], data_type="float32", data_format=fmt, inputs_pass_through=[1])
    np.testing.assert_allclose(out[0], expected, atol=1e-4, rtol=0)
    # pass-through off on the raw pixels gives the same result
    np.testing.assert_allclose(rknn.inference([fed], inputs_pass_through=[0])[0], expected, atol=1e-4, rtol=0)
    rknn.release()


def test_pass_through_per_input(two_input_onnx, pixels, ort_reference, reference_normalise):
    rknn = RKNN()
    assert rknn.config(mean_values=[MEAN, [5.0]], std_values=[STD, [3.0]], reorder_channel="2 1 0#0") == 0
    assert rknn.load_onnx(str(two_input_onnx)) == 0
    assert rknn.build(do_quantization=False) == 0
    assert rknn.init_runtime() == 0
    a_raw, b_raw = pixels(6, 6, seed=7), pixels(6, 6, c=1, seed=8)
    a_norm = reference_normalise(a_raw, MEAN, STD, [2, 1, 0])
    b_norm = reference_normalise(b_raw, [5.0], [3.0])
    expected = ort_reference(two_input_onnx, {"a": a_norm, "b": b_norm})[0]
    out = rknn.inference([a_norm, b_raw], data_type=["float32", "uint8"], data_format=["nchw", "nhwc"],
                         inputs_pass_through=[1, 0])
    np.testing.assert_allclose(out[0], expected, atol=1e-4, rtol=0)
    rknn.release()


# ---------------------------------------------------------------- layouts, dtypes, batch dim


@pytest.fixture
def seed_style(conv_onnx):
    rknn = _build(conv_onnx(pads=1), reorder_channel="2 1 0", mean_values=[MEAN], std_values=[STD])
    yield rknn
    rknn.release()


def test_nchw_feed_equals_nhwc_feed(seed_style, pixels):
    fed = pixels(H, W, seed=9)
    nhwc = seed_style.inference([fed])[0]
    nchw = seed_style.inference([np.ascontiguousarray(fed.transpose(0, 3, 1, 2))], data_format="nchw")[0]
    np.testing.assert_array_equal(nhwc, nchw)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int16, np.int8])
def test_every_feed_dtype_gives_the_uint8_result(seed_style, pixels, dtype):
    fed = pixels(H, W, seed=10) // 2  # 0..127: exact in every dtype tried, int8 included
    ref = seed_style.inference([fed])[0]
    np.testing.assert_array_equal(seed_style.inference([fed.astype(dtype)])[0], ref)
    name = np.dtype(dtype).name
    np.testing.assert_array_equal(seed_style.inference([fed.astype(dtype)], data_type=name)[0], ref)


def test_data_type_converts_the_array(seed_style, pixels):
    fed = pixels(H, W, seed=11)
    ref = seed_style.inference([fed])[0]
    # float pixels declared uint8 are rounded to the uint8 the board would receive
    np.testing.assert_array_equal(seed_style.inference([fed.astype(np.float32) + 0.3], data_type="uint8")[0], ref)


def test_missing_batch_dim_is_accepted(seed_style, pixels):
    fed = pixels(H, W, seed=12)
    np.testing.assert_array_equal(seed_style.inference([fed[0]])[0], seed_style.inference([fed])[0])
    np.testing.assert_array_equal(seed_style.inference(fed)[0], seed_style.inference([fed])[0])  # a bare array too


@pytest.mark.parametrize("inputs, kwargs, words", [
    ([np.zeros((1, H + 1, W, 3), np.uint8)], {}, f"[1, {H}, {W}, 3]"),
    ([np.zeros((1, 3, H, W), np.uint8)], {}, "data_format='nchw'"),
    ([np.zeros((H, W), np.uint8)], {}, "[H,W,C]"),
    ([np.zeros((1, H, W, 3), np.uint8)] * 2, {}, "1 input(s) but 2"),
    ([], {}, "1 input(s) but 0"),
    ([np.zeros((1, H, W, 3), np.int64)], {}, "dtype int64"),
    ([np.zeros((1, H, W, 3), bool)], {}, "dtype bool"),
    ([np.zeros((1, H, W, 3), np.uint8)], {"data_type": "float64"}, "data_type='float64'"),
    ([np.zeros((1, H, W, 3), np.uint8)], {"data_format": "chw"}, "data_format='chw'"),
    ([np.zeros((1, H, W, 3), np.uint8)], {"inputs_pass_through": [1, 0]}, "inputs_pass_through"),
    ("image.jpg", {}, "list of numpy arrays"),
])
def test_bad_inputs_return_none_with_a_clear_error(seed_style, rknn_log, logged_errors, inputs, kwargs, words):
    assert seed_style.inference(inputs, **kwargs) is None
    msg = logged_errors(rknn_log)[-1]
    assert words in msg
    assert isinstance(seed_style.last_error, InferenceInputError)


# ---------------------------------------------------------------- inputs read by several convs; other float types


def _three_conv_model(path):
    """x feeds conv c1 (auto_pad SAME_UPPER), c2 (1x1, no pad) and c3 (stride 2, pads 1); two outputs."""
    rng = np.random.default_rng(0)
    inits = [onnx.numpy_helper.from_array((rng.standard_normal(s) * 0.3).astype(np.float32), n)
             for n, s in (("w1", (2, 3, 3, 3)), ("w2", (2, 3, 1, 1)), ("w3", (2, 3, 3, 3)))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], kernel_shape=[3, 3], auto_pad="SAME_UPPER", name="c1"),
             helper.make_node("Conv", ["x", "w2"], ["b"], kernel_shape=[1, 1], name="c2"),
             helper.make_node("Conv", ["x", "w3"], ["c"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                              name="c3"),
             helper.make_node("Add", ["a", "b"], ["y"], name="add")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 7, 7])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 7, 7]),
                           helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 2, 4, 4])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def test_fold_into_every_conv_reading_the_input(tmp_path, pixels, ort_reference, reference_normalise):
    path = _three_conv_model(tmp_path / "three_convs.onnx")
    rknn = _build(path, reorder_channel="1 2 0", mean_values=[MEAN], std_values=[STD])
    pre = rknn._package.metadata["inputs"][0]["preprocess"]
    assert sorted(pre["folded_into"]) == ["c1", "c2", "c3"]
    assert pre["mean_folded"] is False  # c1 and c3 pad
    fed = pixels(7, 7, seed=13)
    expected = ort_reference(path, {"x": reference_normalise(fed, MEAN, STD, [1, 2, 0])})
    for got, ref in zip(rknn.inference([fed]), expected):
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
    rknn.release()


def _siamese_model(path):
    """Two image inputs read by one shared conv weight (a siamese matcher, as capspot's tf2onnx export): each input
    folds its own normalisation into its own copy of the weight."""
    rng = np.random.default_rng(4)
    inits = [onnx.numpy_helper.from_array((rng.standard_normal((2, 3, 1, 1)) * 0.3).astype(np.float32), "w"),
             onnx.numpy_helper.from_array(np.array([0.1, -0.2], np.float32), "b")]
    nodes = [helper.make_node("Conv", ["x1", "w", "b"], ["a"], kernel_shape=[1, 1], name="left"),
             helper.make_node("Conv", ["x2", "w", "b"], ["c"], kernel_shape=[1, 1], name="right"),
             helper.make_node("Sub", ["a", "c"], ["y"], name="diff")]
    g = helper.make_graph(nodes, "siamese", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, H, W])
                                             for n in ("x1", "x2")],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, H, W])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def test_two_inputs_sharing_their_first_weights_fold_each_its_own(tmp_path, pixels, ort_reference,
                                                                  reference_normalise):
    path = _siamese_model(tmp_path / "siamese.onnx")
    other = [0.0, 50.0, 120.0]
    rknn = _build(path, mean_values=[MEAN, other], std_values=[STD, [1.0, 1.0, 1.0]])
    metas = rknn._package.metadata["inputs"]
    assert [m["preprocess"]["folded_into"] for m in metas] == [["left"], ["right"]]
    a, b = pixels(H, W, seed=1), pixels(H, W, seed=2)
    expected = ort_reference(path, {"x1": reference_normalise(a, MEAN, STD),
                                    "x2": reference_normalise(b, other, [1.0, 1.0, 1.0])})
    np.testing.assert_allclose(rknn.inference([a, b])[0], expected[0], atol=1e-3, rtol=0)
    rknn.release()


def _fp16_model(path):
    rng = np.random.default_rng(1)
    inits = [onnx.numpy_helper.from_array((rng.standard_normal((2, 3, 3, 3)) * 0.3).astype(np.float16), "w"),
             onnx.numpy_helper.from_array((rng.standard_normal(2) * 0.3).astype(np.float16), "b")]
    g = helper.make_graph([helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[3, 3], name="conv")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 3, H, W])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 2, H - 2, W - 2])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


@pytest.mark.parametrize("level", [0, 3])
def test_float16_model_builds_and_runs(tmp_path, pixels, ort_reference, level):
    path = _fp16_model(tmp_path / "fp16.onnx")
    rknn = RKNN()
    assert rknn.config(mean_values=[MEAN], std_values=[[64.0] * 3], optimization_level=level) == 0
    assert rknn.load_onnx(str(path)) == 0
    assert rknn.build(do_quantization=False) == 0
    assert rknn.init_runtime() == 0
    fed = pixels(H, W, seed=14)
    x = ((fed.astype(np.float32) - np.float32(MEAN)) / 64.0).transpose(0, 3, 1, 2).astype(np.float16)
    expected = ort_reference(path, {"x": x})[0].astype(np.float32)
    np.testing.assert_allclose(rknn.inference([fed])[0].astype(np.float32), expected, atol=2e-2, rtol=1e-2)
    rknn.release()
