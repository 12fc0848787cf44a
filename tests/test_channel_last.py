"""Channel-last (NHWC) model inputs: detection, per-channel mean/std/reorder, the NHWC feed, Transposes folded away."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from openrknn.api import RKNN
from openrknn.config import make_config
from openrknn.convert import build, load_onnx
from openrknn.convert.build import BuildOptions
from openrknn.errors import ConfigError
from openrknn.graph.layout import count_layout_transposes, push_transposes
from openrknn.metrics import cosine

RNG = np.random.default_rng(7)


def _w(*shape):
    return RNG.normal(0, 0.3, shape).astype(np.float32)


def _save(tmp_path, name, nodes, inp_shape, out_names, inits, opset=13):
    g = helper.make_graph(nodes, name, [helper.make_tensor_value_info("image", TensorProto.FLOAT, inp_shape)],
                          [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in out_names],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, path)
    return path


def keras_like(tmp_path, h=12, w=16):
    """What tf2onnx writes for a Keras CNN: Transposes around every conv, bias/BN as NHWC constants, global pool on
    the channel-last tensor."""
    nodes = [
        helper.make_node("Transpose", ["image"], ["x0"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["x0", "w1"], ["c1"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Transpose", ["c1"], ["t1"], perm=[0, 2, 3, 1]),
        helper.make_node("Add", ["t1", "b1"], ["a1"]),
        helper.make_node("Sub", ["a1", "m1"], ["s1"]),
        helper.make_node("Mul", ["s1", "g1"], ["n1"]),
        helper.make_node("Relu", ["n1"], ["r1"]),
        helper.make_node("Transpose", ["r1"], ["x1"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["x1", "w2", "b2"], ["c2"], kernel_shape=[1, 1]),
        helper.make_node("Transpose", ["c2"], ["t2"], perm=[0, 2, 3, 1]),
        helper.make_node("Relu", ["t2"], ["r2"]),
        helper.make_node("ReduceMean", ["r2"], ["pooled"], axes=[1, 2], keepdims=0),
        helper.make_node("Gemm", ["pooled", "fc"], ["logits"]),
    ]
    inits = {"w1": _w(8, 3, 3, 3), "b1": _w(1, 1, 1, 8), "m1": _w(1, 1, 1, 8), "g1": np.abs(_w(1, 1, 1, 8)) + 0.5,
             "w2": _w(6, 8, 1, 1), "b2": _w(6), "fc": _w(6, 5)}
    return _save(tmp_path, "keras_like", nodes, [1, h, w, 3], ["logits"], inits)


def padded_first(tmp_path):
    """A PyTorch NHWC wrapper: the input is padded in NHWC before the first Transpose (open_nsfw's shape)."""
    nodes = [
        helper.make_node("Pad", ["image", "pads"], ["p"]),
        helper.make_node("Transpose", ["p"], ["x0"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["x0", "w1", "b1"], ["c1"], kernel_shape=[3, 3], strides=[2, 2]),
        helper.make_node("Relu", ["c1"], ["out"]),
    ]
    inits = {"pads": np.array([0, 1, 1, 0, 0, 1, 1, 0], np.int64), "w1": _w(4, 3, 3, 3), "b1": _w(4)}
    return _save(tmp_path, "padded_first", nodes, [1, 10, 14, 3], ["out"], inits)


def gray_reshape(tmp_path):
    """A C=1 channel-last input turned NCHW by a Reshape (openwakeword's embedding model)."""
    nodes = [
        helper.make_node("Reshape", ["image", "shape"], ["x0"]),
        helper.make_node("Conv", ["x0", "w1"], ["c1"], kernel_shape=[3, 3]),
        helper.make_node("LeakyRelu", ["c1"], ["out"], alpha=0.2),
    ]
    inits = {"shape": np.array([1, 1, 20, 8], np.int64), "w1": _w(4, 1, 3, 3)}
    return _save(tmp_path, "gray_reshape", nodes, [1, 20, 8, 1], ["out"], inits)


def _reference(path, x_u8, mean, std, reorder=None):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = x_u8.astype(np.float32)
    if reorder is not None:
        x = x[..., reorder]
    x = (x - np.array(mean, np.float32)) / np.array(std, np.float32)
    return sess.run(None, {sess.get_inputs()[0].name: x})


def _float_build(path, **cfg):
    loaded = load_onnx(path)
    return build(loaded, make_config(**cfg), BuildOptions(do_quantization=False), progress=False)


def _run(result, x_u8):
    sess = ort.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x_u8.astype(np.float32)})


def test_keras_like_model_takes_nhwc_feed_and_per_channel_mean(tmp_path):
    path = keras_like(tmp_path)
    mean, std = [120.0, 110.0, 100.0], [60.0, 50.0, 40.0]
    res = _float_build(path, mean_values=mean, std_values=std, reorder_channel="2 1 0")
    meta = res.package.metadata["inputs"][0]
    assert meta["shape"] == [1, 12, 16, 3] and meta["layout"] == "nhwc" and meta["model_layout"] == "nhwc"
    assert meta["preprocess"]["mean"] == mean
    x = RNG.integers(0, 256, (1, 12, 16, 3)).astype(np.uint8)
    got = _run(res, x)
    ref = _reference(path, x, mean, std, reorder=[2, 1, 0])
    assert cosine(got[0], ref[0]) >= 0.99999
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-4, atol=1e-4)
    # every Transpose around the convolutions is gone; the only one left is the feed's NHWC -> NCHW
    assert count_layout_transposes(res.model) == 1
    assert res.model.graph.node[0].op_type == "Transpose"
    # ... and the pre-processing folded into the first conv like an NCHW model's
    assert meta["preprocess"]["folded_into"]
    assert any("Transposes folded away" in n for n in res.notes)


def test_nhwc_pad_before_first_transpose_is_hoisted(tmp_path):
    path = padded_first(tmp_path)
    res = _float_build(path, mean_values=[127.5], std_values=[128.0])
    x = RNG.integers(0, 256, (1, 10, 14, 3)).astype(np.uint8)
    np.testing.assert_allclose(_run(res, x)[0], _reference(path, x, [127.5], [128.0])[0], rtol=1e-4, atol=1e-5)
    assert count_layout_transposes(res.model) == 1
    assert res.package.metadata["inputs"][0]["model_layout"] == "nhwc"


def test_single_channel_nhwc_needs_no_transpose(tmp_path):
    path = gray_reshape(tmp_path)
    res = _float_build(path, mean_values=[10.0], std_values=[2.0])
    meta = res.package.metadata["inputs"][0]
    assert meta["shape"] == [1, 20, 8, 1] and meta["model_layout"] == "nhwc"
    x = RNG.integers(0, 256, (1, 20, 8, 1)).astype(np.uint8)
    np.testing.assert_allclose(_run(res, x)[0], _reference(path, x, [10.0], [2.0])[0], rtol=1e-4, atol=1e-5)
    assert count_layout_transposes(res.model) == 0


def test_nchw_model_unchanged(tmp_path):
    nodes = [helper.make_node("Conv", ["image", "w"], ["out"], kernel_shape=[3, 3])]
    path = _save(tmp_path, "nchw", nodes, [1, 3, 10, 12], ["out"], {"w": _w(2, 3, 3, 3)})
    res = _float_build(path, mean_values=[1.0, 2.0, 3.0], std_values=[4.0, 5.0, 6.0])
    meta = res.package.metadata["inputs"][0]
    assert meta["shape"] == [1, 10, 12, 3] and meta["model_layout"] == "nchw"


def test_mismatch_message_names_the_detected_layout_and_why(tmp_path):
    path = keras_like(tmp_path)
    with pytest.raises(ConfigError) as e:
        _float_build(path, mean_values=[1.0, 2.0], std_values=[1.0, 1.0])
    msg = str(e.value)
    assert "read as NHWC (C=3)" in msg and "Transpose(perm=[0, 3, 1, 2])" in msg and "give 3 values" in msg
    # stating the wrong layout explicitly: the message says the config decided it
    with pytest.raises(ConfigError) as e:
        _float_build(path, mean_values=[1.0, 2.0, 3.0], input_layout="nchw")
    msg = str(e.value)
    assert "read as NCHW (C=12)" in msg and "config(input_layout='nchw') says so" in msg


def test_mean_length_decides_when_the_graph_does_not(tmp_path):
    # a channel-last input whose first reader is not a Transpose, with dims that do not look like an image
    nodes = [helper.make_node("Relu", ["image"], ["out"])]
    path = _save(tmp_path, "ambiguous", nodes, [1, 6, 5, 2], ["out"], {})
    res = _float_build(path, mean_values=[1.0, 2.0], std_values=[1.0, 1.0])
    assert res.package.metadata["inputs"][0]["model_layout"] == "nhwc"
    x = RNG.integers(0, 256, (1, 6, 5, 2)).astype(np.uint8)
    np.testing.assert_allclose(_run(res, x)[0], _reference(path, x, [1.0, 2.0], [1.0, 1.0])[0])
    res = _float_build(path, mean_values=[1.0] * 6, std_values=[1.0] * 6)
    assert res.package.metadata["inputs"][0]["model_layout"] == "nchw"
    res = _float_build(path, input_layout="nhwc")
    assert res.package.metadata["inputs"][0]["shape"] == [1, 6, 5, 2]


def test_input_layout_config_validation():
    assert make_config(input_layout="nhwc").input_layout == ["nhwc"]
    assert make_config(input_layout="nchw#nhwc").input_layout == ["nchw", "nhwc"]
    assert make_config(input_layout="auto").input_layout is None
    with pytest.raises(ConfigError, match="input_layout='nhcw'"):
        make_config(input_layout="nhcw")
    with pytest.raises(ConfigError, match="input_layout"):
        make_config(input_layout=3)


def test_api_channel_last_int8_build(tmp_path):
    path = keras_like(tmp_path, 16, 16)
    for i in range(4):
        np.save(tmp_path / f"c{i}.npy", RNG.integers(0, 256, (16, 16, 3)).astype(np.uint8))
    (tmp_path / "dataset.txt").write_text("\n".join(f"c{i}.npy" for i in range(4)) + "\n")
    r = RKNN()
    assert r.config(mean_values=[128, 128, 128], std_values=[64, 64, 64], target_platform="rk3588") == 0
    assert r.load_onnx(str(path)) == 0
    assert r.build(do_quantization=True, dataset=str(tmp_path / "dataset.txt")) == 0
    assert r.init_runtime() == 0
    x = RNG.integers(0, 256, (1, 16, 16, 3)).astype(np.uint8)
    out = r.inference([x])
    ref = _reference(path, x, [128] * 3, [64] * 3)
    assert cosine(out[0], ref[0]) > 0.98
    r.release()


def test_push_transposes_through_reduction_and_pad():
    perm = [0, 2, 3, 1]
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=perm),
             helper.make_node("Pad", ["t", "pads"], ["p"]),
             helper.make_node("Mul", ["p", "k"], ["m"]),
             helper.make_node("ReduceMax", ["m"], ["y"], axes=[1], keepdims=0)]
    inits = [numpy_helper.from_array(np.array([0, 1, 0, 0, 0, 2, 0, 0], np.int64), "pads"),
             numpy_helper.from_array(_w(4), "k")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    x = RNG.normal(size=(1, 4, 5, 6)).astype(np.float32)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    pushed = push_transposes(model)
    got = ort.InferenceSession(pushed.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    # a ReduceMax over H with keepdims=0 leaves [N, W, C] from [N, C, H, W]: one smaller Transpose, after it
    assert [n.op_type for n in pushed.graph.node] == ["Pad", "Mul", "ReduceMax", "Transpose"]


def test_shape_arithmetic_is_folded_as_onnxruntime_computes_it(tmp_path):
    """PyTorch's export of F.pad on an NHWC tensor (open_nsfw's shape): the pads are built from Shape, padded with
    ConstantOfShape zeros and reordered with a negative-step Slice; the build folds such shape arithmetic with
    onnxruntime before the graph optimiser (on open_nsfw itself onnxslim's folding put the padding on the wrong
    side; the corpus bench covers that model) and the result is exactly onnxruntime's."""
    big = np.iinfo(np.int64).max
    i64 = lambda *v: np.array(v, np.int64)  # noqa: E731
    nodes = [
        helper.make_node("Shape", ["image"], ["shape"]),
        helper.make_node("Gather", ["shape", "i1"], ["h"]),
        helper.make_node("Sub", ["h", "h"], ["zero"]),
        helper.make_node("Add", ["zero", "one"], ["one_"]),
        helper.make_node("Concat", ["zero", "one_", "zero", "one_"], ["given"], axis=0),  # F.pad's (W, H) pairs
        helper.make_node("Cast", ["given"], ["given64"], to=TensorProto.INT64),
        helper.make_node("ConstantOfShape", ["four"], ["rest"], value=helper.make_tensor("v", TensorProto.INT64,
                                                                                         [1], [0])),
        helper.make_node("Concat", ["given64", "rest"], ["pairs"], axis=0),
        helper.make_node("Reshape", ["pairs", "shape_m12"], ["p42"]),
        helper.make_node("Slice", ["p42", "start", "end", "axis0", "step"], ["rev"]),
        helper.make_node("Transpose", ["rev"], ["t"], perm=[1, 0]),
        helper.make_node("Reshape", ["t", "flat"], ["pads"]),
        helper.make_node("Pad", ["image", "pads"], ["padded"]),
        helper.make_node("Transpose", ["padded"], ["x0"], perm=[0, 3, 1, 2]),
        helper.make_node("MaxPool", ["x0"], ["out"], kernel_shape=[3, 3], strides=[2, 2]),
    ]
    consts = {"i1": i64(1), "one": i64(1), "four": i64(4), "shape_m12": i64(-1, 2), "start": i64(-1),
              "end": i64(-big), "axis0": i64(0), "step": i64(-1), "flat": i64(-1)}
    nodes = [helper.make_node("Constant", [], [k], value=numpy_helper.from_array(v, k)) for k, v in consts.items()] \
        + nodes  # Constant nodes, as the exporter writes them
    path = _save(tmp_path, "shape_pads", nodes, [1, 8, 10, 3], ["out"], {}, opset=17)
    x = RNG.integers(0, 256, (1, 8, 10, 3)).astype(np.uint8)
    res = _float_build(path)
    ref = _reference(path, x, [0.0], [1.0])[0]
    got = _run(res, x)[0]
    assert got.shape == ref.shape
    np.testing.assert_array_equal(got, ref)
