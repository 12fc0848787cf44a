"""The vendor API's other loaders (TFLite, Darknet, Caffe, TensorFlow) against independent implementations: OpenCV 4.x
reference outputs stored in tests/data/loaders (bench/loader_refs.py, run on the same generated files), and the LiteRT
interpreter live for TFLite."""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import loader_models as lm
from openrknn.api import RKNN
from openrknn.config import make_config
from openrknn.convert import BuildOptions, build
from openrknn.convert.loaders import load_caffe, load_darknet, load_model, load_tensorflow, load_tflite, model_kind
from openrknn.errors import ModelLoadError
from openrknn.frontends.builder import UnsupportedLayer
from openrknn.graph.layout import count_layout_transposes
from openrknn.metrics import cosine

REFS = Path(__file__).resolve().parent / "data" / "loaders"


def _run(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})


def _sha(*paths) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).read_bytes())
    return h.hexdigest()


def _check_against_opencv(name: str, outputs, files):
    ref = np.load(REFS / f"{name}.npz")
    # the reference was computed on these exact bytes: a change in the generator must regenerate it
    assert str(ref["sha256"]) == _sha(*files), f"{name}: regenerate tests/data/loaders (python bench/loaders.py refs)"
    for i, got in enumerate(outputs):
        want = ref[f"out{i}"].reshape(got.shape)
        assert cosine(got, want) >= 0.9999, (name, i)
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * max(1.0, float(np.abs(want).max())))


# ---------------------------------------------------------------- against OpenCV's readers


def test_darknet_matches_opencv(tmp_path):
    f = lm.write_darknet(tmp_path)
    loaded = load_darknet(f["cfg"], f["weights"])
    assert loaded.framework == "darknet" and loaded.input_shapes == [[1, 3, 32, 32]]
    assert len(loaded.output_names) == 2  # the maps the two [yolo] layers read
    out = _run(loaded.model, lm.reference_input((1, 3, 32, 32), lo=0, hi=1))
    _check_against_opencv("tiny_darknet", out, [f["cfg"], f["weights"]])


def test_caffe_matches_opencv(tmp_path):
    f = lm.write_caffe(tmp_path)
    loaded = load_caffe(f["prototxt"], f["caffemodel"])
    ops = [n.op_type for n in loaded.model.graph.node]
    assert "Mul" not in ops  # the Scale after the BatchNorm folded into it
    out = _run(loaded.model, lm.reference_input((1, 3, 23, 23), lo=-50, hi=50))
    _check_against_opencv("tiny_caffe", out, [f["prototxt"], f["caffemodel"]])


def test_tensorflow_matches_opencv(tmp_path):
    pb = lm.tiny_tf_graph().save(tmp_path / "tiny_tf.pb")
    loaded = load_tensorflow(pb, ["image"], [[1, 20, 20, 3]], ["output"])
    assert loaded.input_shapes == [[1, 20, 20, 3]] and loaded.output_names == ["output"]
    _check_against_opencv("tiny_tf", _run(loaded.model, lm.reference_input((1, 20, 20, 3))), [pb])


def test_tensorflow_mobilenet_v1_matches_opencv(tmp_path):
    pb = lm.mobilenet_v1_graph().save(tmp_path / "mobilenet_v1_025.pb")
    loaded = load_model(pb)  # inputs / outputs found: the placeholder and the final Softmax
    assert loaded.input_names == ["input"] and loaded.output_names == ["Predictions"]
    _check_against_opencv("mobilenet_v1_025", _run(loaded.model, lm.reference_input((1, 128, 128, 3))), [pb])
    # NHWC in the file, NCHW-native convolutions: the only Transpose is the input's
    assert count_layout_transposes(loaded.model) == 1


# ---------------------------------------------------------------- TFLite against LiteRT


def _tiny_tflite(path: Path, quantized: bool = False) -> Path:
    """A float TFLite model written with the schema package: SAME/VALID convs, depthwise, pad, add, resize, concat,
    mean, fully connected, softmax, and a 4-D output."""
    from openrknn.export.tflite.writer import Model, serialize

    rng = np.random.default_rng(5)
    m = Model()

    def t(name, shape):
        return m.add_tensor(name, shape, np.float32)

    def c(name, arr):
        return m.add_const(name, np.asarray(arr, np.float32))

    x = t("image", [1, 16, 16, 3])
    m.inputs = [x.index]
    conv = t("conv", [1, 8, 8, 8])
    m.add_op("CONV_2D", [x, c("w1", rng.normal(0, .3, (8, 3, 3, 3))), c("b1", rng.normal(0, .1, 8))], [conv],
             ("Conv2DOptions", {"Padding": 0, "StrideW": 2, "StrideH": 2, "FusedActivationFunction": 3,
                                "DilationWFactor": 1, "DilationHFactor": 1}))
    dw = t("dw", [1, 8, 8, 8])
    m.add_op("DEPTHWISE_CONV_2D", [conv, c("w2", rng.normal(0, .3, (1, 3, 3, 8))), c("b2", rng.normal(0, .1, 8))],
             [dw], ("DepthwiseConv2DOptions", {"Padding": 0, "StrideW": 1, "StrideH": 1, "DepthMultiplier": 1,
                                               "FusedActivationFunction": 1, "DilationWFactor": 1,
                                               "DilationHFactor": 1}), version=2)
    add = t("add", [1, 8, 8, 8])
    m.add_op("ADD", [dw, conv], [add], ("AddOptions", {"FusedActivationFunction": 0}))
    padded = t("padded", [1, 10, 10, 8])
    m.add_op("PAD", [add, m.add_const("pads", np.array([[0, 0], [1, 1], [1, 1], [0, 0]], np.int32))], [padded])
    valid = t("valid", [1, 4, 4, 6])
    m.add_op("CONV_2D", [padded, c("w3", rng.normal(0, .3, (6, 3, 3, 8))), c("b3", rng.normal(0, .1, 6))], [valid],
             ("Conv2DOptions", {"Padding": 1, "StrideW": 2, "StrideH": 2, "FusedActivationFunction": 0,
                                "DilationWFactor": 1, "DilationHFactor": 1}))
    up = t("up", [1, 8, 8, 6])
    m.add_op("RESIZE_BILINEAR", [valid, m.add_const("size", np.array([8, 8], np.int32))], [up],
             ("ResizeBilinearOptions", {"AlignCorners": False, "HalfPixelCenters": True}), version=3)
    cat = t("cat", [1, 8, 8, 14])
    m.add_op("CONCATENATION", [up, add], [cat], ("ConcatenationOptions", {"Axis": 3, "FusedActivationFunction": 0}))
    mean = t("mean", [1, 14])
    m.add_op("MEAN", [cat, m.add_const("axes", np.array([1, 2], np.int32))], [mean],
             ("ReducerOptions", {"KeepDims": False}))
    fc = t("fc", [1, 5])
    m.add_op("FULLY_CONNECTED", [mean, c("fw", rng.normal(0, .3, (5, 14))), c("fb", rng.normal(0, .1, 5))], [fc],
             ("FullyConnectedOptions", {"FusedActivationFunction": 0}))
    prob = t("prob", [1, 5])
    m.add_op("SOFTMAX", [fc], [prob], ("SoftmaxOptions", {"Beta": 1.0}))
    m.outputs = [prob.index, cat.index]
    path.write_bytes(serialize(m))
    return path


def _litert(path: Path, x: np.ndarray):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return [it.get_tensor(d["index"]) for d in it.get_output_details()]


def test_tflite_matches_litert(tmp_path):
    path = _tiny_tflite(tmp_path / "tiny.tflite")
    loaded = load_tflite(path)
    assert loaded.input_shapes == [[1, 16, 16, 3]] and loaded.output_names == ["prob", "cat"]
    x = lm.reference_input((1, 16, 16, 3))
    ref = _litert(path, x)
    got = _run(loaded.model, x)
    for g, r in zip(got, ref):
        assert g.shape == r.shape  # 4-D outputs keep the file's NHWC layout
        assert cosine(g, r) >= 0.99999
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5)


def test_tflite_api_float_build_feeds_nhwc(tmp_path):
    path = _tiny_tflite(tmp_path / "tiny.tflite")
    r = RKNN()
    assert r.config(mean_values=[127.5, 127.5, 127.5], std_values=[127.5, 127.5, 127.5]) == 0
    assert r.load_tflite(str(path)) == 0
    assert r.build(do_quantization=False) == 0
    meta = r._package.metadata["inputs"][0]
    assert meta["shape"] == [1, 16, 16, 3] and meta["model_layout"] == "nhwc"
    assert r.init_runtime() == 0
    img = np.random.default_rng(3).integers(0, 256, (1, 16, 16, 3)).astype(np.uint8)
    out = r.inference([img])
    ref = _litert(path, ((img.astype(np.float32) - 127.5) / 127.5).astype(np.float32))
    assert cosine(out[0], ref[0]) >= 0.9999 and cosine(out[1], ref[1]) >= 0.9999
    r.release()


def _uint8_input_tflite(path: Path, scale: float = 0.0125, zero_point: int = 131) -> Path:
    """EfficientNet-Lite0's input as shipped: uint8 pixels with a scale and zero point, DEQUANTIZE'd into a float
    conv."""
    from openrknn.export.tflite.writer import Model, Quant, serialize

    rng = np.random.default_rng(11)
    m = Model()
    x = m.add_tensor("images", [1, 8, 8, 3], np.uint8, Quant.per_tensor(scale, zero_point))
    m.inputs = [x.index]
    real = m.add_tensor("real", [1, 8, 8, 3], np.float32)
    m.add_op("DEQUANTIZE", [x], [real])
    conv = m.add_tensor("conv", [1, 8, 8, 4], np.float32)
    m.add_op("CONV_2D", [real, m.add_const("w", rng.normal(0, .4, (4, 3, 3, 3)).astype(np.float32)),
                         m.add_const("b", rng.normal(0, .1, 4).astype(np.float32))], [conv],
             ("Conv2DOptions", {"Padding": 0, "StrideW": 1, "StrideH": 1, "FusedActivationFunction": 0,
                                "DilationWFactor": 1, "DilationHFactor": 1}))
    m.outputs = [conv.index]
    path.write_bytes(serialize(m))
    return path


def test_a_tflite_taking_integer_pixels_defaults_to_its_own_normalisation(tmp_path, rknn_log):
    """With no mean/std in config() the file's input scale and zero point become them (logged): the pixels go in as
    its runtime takes them. Without that they would reach the model as real values (EfficientNet-Lite0 as shipped:
    top-1 0/12, bench/RESULTS.md). Values given in config() still win."""
    import logging

    path = _uint8_input_tflite(tmp_path / "u8in.tflite")
    img = np.random.default_rng(2).integers(0, 256, (1, 8, 8, 3)).astype(np.uint8)
    ref = _litert(path, img)[0]
    outs = {}
    for label, config in (("default", {}), ("given", {"mean_values": [131] * 3, "std_values": [80.0] * 3}),
                          ("other", {"mean_values": [0] * 3, "std_values": [1] * 3})):
        rknn_log.clear()
        r = RKNN()
        assert r.config(target_platform="rk3588", **config) == 0
        assert r.load_tflite(str(path)) == 0
        assert r.build(do_quantization=False) == 0
        warned = [m.getMessage() for m in rknn_log.records
                  if m.levelno == logging.WARNING and "takes integer pixels in the file" in m.getMessage()]
        assert bool(warned) == (label == "default")
        assert r.init_runtime() == 0
        outs[label] = r.inference([img])[0]
        r.release()
    # build(do_quantization=False) keeps the file's input scale and quantizes the rest (an int8 package)
    assert cosine(outs["default"], ref) >= 0.999
    np.testing.assert_allclose(outs["given"], outs["default"], rtol=1e-5, atol=1e-5)  # 1 / 0.0125 = 80
    assert cosine(outs["other"], ref) < 0.9


# ---------------------------------------------------------------- the API: signatures, builds, errors


def test_vendor_signatures():
    sig = {n: inspect.signature(getattr(RKNN, n)) for n in ("load_tflite", "load_darknet", "load_caffe",
                                                             "load_tensorflow")}
    assert list(sig["load_tflite"].parameters)[1:3] == ["model", "input_is_nchw"]
    assert sig["load_tflite"].parameters["input_is_nchw"].default is False
    assert list(sig["load_darknet"].parameters)[1:] == ["model", "weight"]
    assert list(sig["load_caffe"].parameters)[1:4] == ["model", "blobs", "input_name"]
    assert sig["load_caffe"].parameters["blobs"].default is None
    assert list(sig["load_tensorflow"].parameters)[1:6] == ["tf_pb", "inputs", "input_size_list", "outputs",
                                                            "input_is_nchw"]


def test_api_darknet_float_and_int8(tmp_path):
    f = lm.write_darknet(tmp_path)
    x = np.random.default_rng(0).integers(0, 256, (1, 32, 32, 3)).astype(np.uint8)
    ref = _run(load_darknet(f["cfg"], f["weights"]).model,
               (x.astype(np.float32) / 255).transpose(0, 3, 1, 2).copy())
    for i in range(4):
        np.save(tmp_path / f"c{i}.npy", np.random.default_rng(10 + i).integers(0, 256, (32, 32, 3)).astype(np.uint8))
    (tmp_path / "dataset.txt").write_text("".join(f"c{i}.npy\n" for i in range(4)))
    for quant in (False, True):
        r = RKNN()
        assert r.config(mean_values=[0, 0, 0], std_values=[255, 255, 255], target_platform="rk3588") == 0
        assert r.load_darknet(str(f["cfg"]), str(f["weights"])) == 0
        assert r.build(do_quantization=quant, dataset=str(tmp_path / "dataset.txt")) == 0
        assert r.init_runtime() == 0
        out = r.inference([x])
        for o, want in zip(out, ref):
            assert cosine(o, want) >= (0.98 if quant else 0.9999)
        r.release()


def test_api_caffe_v1_call_and_tensorflow(tmp_path):
    f = lm.write_caffe(tmp_path)
    r = RKNN()
    # Toolkit v1's positional form load_caffe(model, proto, blobs)
    assert r.load_caffe(str(f["prototxt"]), "caffe", str(f["caffemodel"])) == 0
    assert r.build(do_quantization=False) == 0
    pb = lm.tiny_tf_graph().save(tmp_path / "tiny_tf.pb")
    assert r.config(mean_values=[128, 128, 128], std_values=[128, 128, 128]) == 0
    assert r.load_tensorflow(str(pb), inputs=["image"], input_size_list=[[20, 20, 3]], outputs=["output"]) == 0
    assert r.build(do_quantization=False) == 0
    assert r.init_runtime() == 0
    img = np.random.default_rng(1).integers(0, 256, (1, 20, 20, 3)).astype(np.uint8)
    ref = _run(load_tensorflow(pb, ["image"], [[1, 20, 20, 3]], ["output"]).model,
               (img.astype(np.float32) - 128) / 128)
    assert cosine(r.inference([img])[0], ref[0]) >= 0.9999
    r.release()


def test_unsupported_layers_are_named(tmp_path):
    cfg = lm.TINY_DARKNET_CFG.replace("[maxpool]\nsize=2\nstride=2\n", "[reorg]\nstride=2\n", 1)
    f = lm.write_darknet(tmp_path, lm.TINY_DARKNET_CFG)
    (tmp_path / "bad.cfg").write_text(cfg)
    with pytest.raises(UnsupportedLayer, match=r"Darknet layer 'layer 1 \[reorg\]' of type \[reorg\]"):
        load_darknet(tmp_path / "bad.cfg", f["weights"])
    proto = lm.TINY_CAFFE_PROTOTXT.replace('type: "PReLU"', 'type: "PriorBox"')
    f = lm.write_caffe(tmp_path)
    (tmp_path / "bad.prototxt").write_text(proto)
    with pytest.raises(UnsupportedLayer, match="Caffe layer 'prelu' of type PriorBox"):
        load_caffe(tmp_path / "bad.prototxt", f["caffemodel"])
    g = lm.tiny_tf_graph()
    g.node("NonMaxSuppressionV3", "nms", ["output"])
    pb = g.save(tmp_path / "nms.pb")
    with pytest.raises(UnsupportedLayer, match="TensorFlow layer 'nms' of type NonMaxSuppressionV3"):
        load_tensorflow(pb, ["image"], [[1, 20, 20, 3]], ["nms"])
    # through the API: a logged error and the vendor's failure code
    r = RKNN()
    assert r.load_tensorflow(str(pb), ["image"], [[1, 20, 20, 3]], ["nms"]) == -1
    assert "NonMaxSuppressionV3" in str(r.last_error)


def test_bad_files_say_what_to_do(tmp_path):
    f = lm.write_darknet(tmp_path)
    short = tmp_path / "short.weights"
    short.write_bytes(f["weights"].read_bytes()[:-400])
    with pytest.raises(ModelLoadError, match="does not match the .cfg"):
        load_darknet(f["cfg"], short)
    long = tmp_path / "long.weights"
    long.write_bytes(f["weights"].read_bytes() + b"\0" * 8)
    with pytest.raises(ModelLoadError, match="left after the last layer"):
        load_darknet(f["cfg"], long)
    (tmp_path / "x.cfg").write_text("[convolutional]\nsize=1\n")
    with pytest.raises(ModelLoadError, match=r"starts with a \[net\]"):
        load_darknet(tmp_path / "x.cfg", f["weights"])
    with pytest.raises(ModelLoadError, match="not a TFLite flatbuffer"):
        load_tflite(f["cfg"])
    with pytest.raises(ModelLoadError, match="not found"):
        load_caffe(tmp_path / "missing.prototxt", tmp_path / "missing.caffemodel")
    with pytest.raises(ModelLoadError, match="needs the weights"):
        load_caffe(lm.write_caffe(tmp_path)["prototxt"])
    pb = lm.tiny_tf_graph().save(tmp_path / "t.pb")
    with pytest.raises(ModelLoadError, match="names no node"):
        load_tensorflow(pb, ["nope"], [[1, 20, 20, 3]], ["output"])
    with pytest.raises(ModelLoadError, match="not a TensorFlow frozen GraphDef"):
        load_tensorflow(f["cfg"], ["image"], [[1, 20, 20, 3]], ["output"])
    (tmp_path / "alone.cfg").write_text("[net]\n")
    with pytest.raises(ModelLoadError, match="is not beside it"):
        load_model(tmp_path / "alone.cfg")
    with pytest.raises(ModelLoadError, match="loaded from its .cfg"):
        model_kind("yolo.weights")


def test_convert_yaml_vendor_keys(tmp_path):
    from openrknn.convert.spec import parse_spec, run_spec

    f = lm.write_darknet(tmp_path)
    spec = parse_spec({"models": {"name": "yolo", "platform": "darknet", "darknet_cfg_path": "tiny.cfg",
                                  "darknet_weights_path": "tiny.weights", "quantize": False,
                                  "configs": {"mean_values": [0, 0, 0], "std_values": [255, 255, 255]}}}, tmp_path)
    assert spec.model == f["cfg"] and spec.weights == f["weights"] and spec.output.name == "yolo.rknn"
    run_spec(spec)
    assert (tmp_path / "yolo.rknn").is_file()
    c = lm.write_caffe(tmp_path)
    spec = parse_spec({"model": c["prototxt"].name, "weights": c["caffemodel"].name, "output": "c.rknn"}, tmp_path)
    assert spec.weights == c["caffemodel"]
    run_spec(spec)
    assert (tmp_path / "c.rknn").is_file()


@pytest.mark.slow
def test_int8_build_of_tensorflow_mobilenet(tmp_path):
    """A channel-last graph quantized end to end: NHWC feed, one Transpose, int8 close to the float model."""
    pb = lm.mobilenet_v1_graph(size=64).save(tmp_path / "m.pb")
    rng = np.random.default_rng(2)
    for i in range(4):
        np.save(tmp_path / f"c{i}.npy", rng.integers(0, 256, (64, 64, 3)).astype(np.uint8))
    (tmp_path / "dataset.txt").write_text("".join(f"c{i}.npy\n" for i in range(4)))
    loaded = load_model(pb, [[1, 64, 64, 3]])
    cfg = make_config(mean_values=[127.5] * 3, std_values=[127.5] * 3, target_platform="rk3588")
    res = build(loaded, cfg, BuildOptions(do_quantization=True, dataset=str(tmp_path / "dataset.txt")),
                progress=False)
    assert count_layout_transposes(res.float_model) == 1
    img = rng.integers(0, 256, (1, 64, 64, 3)).astype(np.float32)
    want = _run(loaded.model, (img - 127.5) / 127.5)[0]
    got = _run(res.model, img)[0]
    assert cosine(got, want) >= 0.98


def test_a_tflite_file_with_an_nchw_input_stays_nchw(tmp_path):
    """A file written from PyTorch keeps its NCHW input ([1, 3, H, W], a TRANSPOSE to NHWC inside; TensorFlow Lite
    Micro's int8 MobileNetV2 from PyTorch QAT is so): input_is_nchw=True, which a user reading 'my input is NCHW'
    sets, leaves it as it is instead of taking it for an NHWC input with 16 channels, and the three channels are the
    ones a build normalises."""

    from openrknn.export.tflite.writer import Model, serialize
    from openrknn.frontends.tflite import load_tflite

    rng = np.random.default_rng(9)
    m = Model()
    x = m.add_tensor("x", [1, 3, 16, 16], np.float32)
    m.inputs = [x.index]
    nhwc = m.add_tensor("nhwc", [1, 16, 16, 3], np.float32)
    m.add_op("TRANSPOSE", [x, m.add_const("perm", np.array([0, 2, 3, 1], np.int32))], [nhwc])
    y = m.add_tensor("y", [1, 16, 16, 4], np.float32)
    m.add_op("CONV_2D", [nhwc, m.add_const("w", rng.normal(0, .3, (4, 3, 3, 3)).astype(np.float32)),
                         m.add_const("b", np.zeros(4, np.float32))], [y],
             ("Conv2DOptions", {"Padding": 0, "StrideW": 1, "StrideH": 1, "FusedActivationFunction": 0,
                                "DilationWFactor": 1, "DilationHFactor": 1}))
    m.outputs = [y.index]
    path = tmp_path / "nchw.tflite"
    path.write_bytes(serialize(m))
    img = rng.uniform(0, 255, (1, 16, 16, 3)).astype(np.float32)
    want = _litert(path, np.ascontiguousarray(((img - 127.5) / 64).transpose(0, 3, 1, 2)))[0]
    for flag in (False, True):
        loaded = load_tflite(path, input_is_nchw=flag)
        assert [d.dim_value for d in loaded.model.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 16, 16]
        assert not flag or any("NCHW in the file already" in n for n in loaded.notes)
        r = RKNN(verbose=False)
        assert r.config(target_platform="rk3588", mean_values=[[127.5] * 3], std_values=[[64] * 3]) == 0
        assert r.load_tflite(str(path), input_is_nchw=flag) == 0
        assert r.build(do_quantization=False) == 0, r.last_error
        assert r.init_runtime() == 0
        got = np.asarray(r.inference(inputs=[img])[0]).reshape(want.shape)
        assert np.abs(got - want).max() < 1e-4
        r.release()


def test_a_16x8_conv_reads_its_int64_bias_and_unnamed_tensors(tmp_path):
    """A 16x8 TFLite conv (int16 activations, int8 weights; TensorFlow Lite Micro's SEANet layer tests) keeps its
    bias as int64 with a per-channel scale: read as raw integers it was off by 1e5 int16 steps. Its input tensor
    carries no name either, which crashed the loader. The loaded graph now gives LiteRT's int16 kernel's result
    within a step and a half."""

    from openrknn.export.tflite.writer import Model, Quant, serialize
    from openrknn.frontends.tflite import load_tflite

    rng = np.random.default_rng(21)
    s_in, s_out = 0.0009, 0.0017
    w = rng.integers(-127, 128, (3, 3, 3, 2)).astype(np.int8)
    s_w = np.array([0.009, 0.013, 0.011], np.float32)
    bias = rng.integers(-20000, 20000, 3).astype(np.int64)
    m = Model()
    x = m.add_tensor("", [1, 6, 6, 2], np.int16, Quant.per_tensor(s_in, 0))
    m.inputs = [x.index]
    y = m.add_tensor("y", [1, 4, 4, 3], np.int16, Quant.per_tensor(s_out, 0))
    s_b = (s_w * np.float32(s_in)).astype(np.float32)
    m.add_op("CONV_2D", [x, m.add_const("w", w, Quant(s_w, np.zeros(3, np.int64), 0)),
                         m.add_const("b", bias, Quant(s_b, np.zeros(3, np.int64), 0))], [y],
             ("Conv2DOptions", {"Padding": 1, "StrideW": 1, "StrideH": 1, "FusedActivationFunction": 0,
                                "DilationWFactor": 1, "DilationHFactor": 1}), version=4)
    m.outputs = [y.index]
    path = tmp_path / "conv16x8.tflite"
    path.write_bytes(serialize(m))
    q = rng.integers(-6000, 6000, (1, 6, 6, 2)).astype(np.int16)
    want = _litert(path, q)[0].astype(np.float64)
    loaded = load_tflite(path)
    assert any("int16 activations" in n for n in loaded.notes)
    sess = ort.InferenceSession(loaded.model.SerializeToString())
    got = sess.run(None, {sess.get_inputs()[0].name: q.astype(np.float32) * np.float32(s_in)})[0]
    assert np.abs(got.reshape(want.shape) / s_out - want).max() < 1.5


def test_a_tflite_input_is_nhwc_whatever_its_dims_look_like(tmp_path):
    """TFLite lays a 4-D input out NHWC: [1, 3, 8, 16] is 3 rows of 8 columns of 16 channels (SEANet's layers are so).
    With no conv first to say so, the shape alone read it as NCHW with 3 channels and build() asked for [1, 8, 16, 3];
    the loader now states the file's layout, and inference takes the file's own tensor."""

    from openrknn.export.tflite.writer import Model, serialize

    rng = np.random.default_rng(22)
    m = Model()
    x = m.add_tensor("x", [1, 3, 8, 16], np.float32)
    m.inputs = [x.index]
    y = m.add_tensor("y", [1, 3, 8, 16], np.float32)
    m.add_op("MUL", [x, m.add_const("k", rng.normal(0, 1, (16,)).astype(np.float32))], [y],
             ("MulOptions", {"FusedActivationFunction": 0}))
    m.outputs = [y.index]
    path = tmp_path / "nhwc.tflite"
    path.write_bytes(serialize(m))
    feed = rng.normal(0, 1, (1, 3, 8, 16)).astype(np.float32)
    want = _litert(path, feed)[0]
    r = RKNN(verbose=False)
    assert r.config(target_platform="rk3588") == 0
    assert r.load_tflite(str(path)) == 0
    assert r.build(do_quantization=False) == 0, r.last_error
    assert r.init_runtime() == 0
    got = r.inference(inputs=[feed])
    assert got is not None, r.last_error
    assert np.abs(np.asarray(got[0]).reshape(want.shape) - want).max() < 1e-5
    r.release()
