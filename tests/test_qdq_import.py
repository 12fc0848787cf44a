"""Models quantized elsewhere keep their scales: a QDQ ONNX from onnxruntime's quantize_static and an int8 TFLite
model, built with do_quantization=False, against onnxruntime's / LiteRT's own run of the quantized model."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from openrknn.api import RKNN
from openrknn.convert.loaders import load_onnx
from openrknn.convert.qdq_import import strip
from openrknn.metrics import cosine

MEAN, STD = 128.0, 64.0


def _float_model(path: Path) -> Path:
    """Conv+ReLU, depthwise+ReLU, 1x1 conv, residual Add, global pool, Gemm: what quantize_static quantizes."""
    rng = np.random.default_rng(0)

    def w(*s):
        return rng.normal(0, 0.3, s).astype(np.float32)

    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], group=8),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"]), helper.make_node("Add", ["c3", "r1"], ["a"]),
             helper.make_node("GlobalAveragePool", ["a"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "fc", "fb"], ["y"], transB=1)]
    inits = {"w1": w(8, 3, 3, 3), "b1": w(8), "w2": w(8, 1, 3, 3), "b2": w(8), "w3": w(8, 8, 1, 1), "b3": w(8),
             "fc": w(5, 8), "fb": w(5)}
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _pixels(n, seed):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (1, 16, 16, 3)).astype(np.uint8) for _ in range(n)]


def _normalised(img):
    return ((img.transpose(0, 3, 1, 2).astype(np.float32) - MEAN) / STD).astype(np.float32)


def _qdq(tmp_path: Path, activation: str = "QUInt8", weight: str = "QInt8", per_channel: bool = True) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter({"x": _normalised(p)} for p in _pixels(8, 1))

        def get_next(self):
            return next(self.it, None)

    out = tmp_path / f"q_{activation}_{weight}.onnx"
    quantize_static(str(_float_model(tmp_path / "f.onnx")), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=per_channel, activation_type=getattr(QuantType, activation),
                    weight_type=getattr(QuantType, weight))
    return out


def _output_scale(path: Path) -> float:
    m = onnx.load(path)
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    dq = next(n for n in m.graph.node if n.op_type == "DequantizeLinear" and n.output[0] == "y")
    return float(inits[dq.input[1]])


@pytest.mark.parametrize("activation", ["QUInt8", "QInt8"])
def test_qdq_onnx_keeps_its_scales(tmp_path, activation):
    path = _qdq(tmp_path, activation)
    r = RKNN()
    assert r.config(mean_values=[MEAN] * 3, std_values=[STD] * 3, target_platform="rk3588") == 0
    assert r.load_onnx(str(path)) == 0
    assert r.build(do_quantization=False) == 0
    src = r._package.metadata["quantization"]["source_parameters"]
    # the conv whose residual Add the chip fuses has no rounding of its own (quant/plan.py _residual_conv_outputs)
    assert src["kept"] == src["given"] - 1 and len(src["re_derived"]) == 1, src["re_derived"]
    assert "inside a fused op" in src["re_derived"][0]
    assert r.init_runtime() == 0
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    step = _output_scale(path)
    for img in _pixels(4, 7):
        ours = r.inference([img])[0]
        theirs = sess.run(None, {"x": _normalised(img)})[0]
        assert np.abs(ours - theirs).max() <= step * 1.001  # within one quantization step of onnxruntime's run
    # the package's float reference is the dequantized graph: accuracy analysis compares against it
    np.save(tmp_path / "a.npy", _pixels(1, 9)[0][0])
    assert r.accuracy_analysis(inputs=[str(tmp_path / "a.npy")], output_dir=str(tmp_path / "snap")) == 0
    assert any((tmp_path / "snap").iterdir())
    r.release()


def test_asymmetric_uint8_weights_keep_their_integers_on_a_symmetric_target(tmp_path, rknn_log):
    """onnxruntime's U8U8 (and old uint8 TFLite) weights: per tensor, with a zero point. RK3588's weights are
    symmetric, so each output channel whose integers less the zero point fit [-127, 127] keeps the source's scale
    and those integers exactly; only the others are rounded anew. (Rounding them all anew, a QAT-trained SSD kept 13
    of LiteRT's 20 detections.)"""
    path = _qdq(tmp_path, "QUInt8", "QUInt8", per_channel=False)
    source = onnx.load(path)
    inits = {t.name: numpy_helper.to_array(t) for t in source.graph.initializer}
    r = RKNN()
    assert r.config(mean_values=[MEAN] * 3, std_values=[STD] * 3, target_platform="rk3588") == 0
    assert r.load_onnx(str(path)) == 0
    with rknn_log.at_level(logging.INFO, logger="openrknn"):
        assert r.build(do_quantization=False) == 0
    said = [rec.getMessage() for rec in rknn_log.records if "on the source's own scale" in rec.getMessage()]
    assert len(said) == 4
    package = {t.name: numpy_helper.to_array(t) for t in r._build.model.graph.initializer}
    exact = 0
    for dq in (n for n in source.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
               and inits[n.input[0]].dtype == np.uint8):
        q, scale, zp = (inits[i] for i in dq.input)
        ints = q.astype(np.int64) - int(zp)
        ours = next(n for n in r._build.model.graph.node if n.op_type == "DequantizeLinear"
                    and n.output[0].startswith(dq.output[0].split("_DequantizeLinear")[0]))
        our_q, our_scale = package[ours.input[0]].astype(np.int64), np.ravel(package[ours.input[1]])
        axis = 1 if q.shape[0] != our_scale.size else 0   # Gemm's weight is [out, in] read as MatMul's [in, out]
        for c in range(our_scale.size):
            src_c, our_c = np.take(ints, c, axis=axis), np.take(our_q, c, axis=axis)
            if np.abs(src_c).max() <= 127:
                assert our_scale[c] == pytest.approx(float(scale), rel=1e-6)
                np.testing.assert_array_equal(our_c, src_c)
                exact += 1
    assert exact >= 20
    r.release()


def test_strip_gives_the_float_graph_with_exact_weights(tmp_path):
    path = _qdq(tmp_path)
    model = onnx.load(path)
    float_model, params, notes = strip(model)
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in float_model.graph.node)
    weights = {k: v for k, v in params.items() if v.kind == "weight"}
    assert len(weights) == 4 and all(v.dtype == "int8" for v in weights.values())
    inits = {t.name: numpy_helper.to_array(t) for t in float_model.graph.initializer}
    for name, p in weights.items():  # each float weight is exactly its integers times its scale
        shape = [1] * inits[name].ndim
        if p.axis is not None:
            shape[p.axis] = -1
        q = inits[name] / p.scale.reshape(shape if p.scale.size > 1 else [])
        np.testing.assert_allclose(q, np.round(q), atol=1e-3)
    assert "y" in params and params["y"].kind == "activation"  # the output keeps its name and its scale


def test_rk1808_rules_re_derive_with_a_log_line(tmp_path, rknn_log):
    path = _qdq(tmp_path)
    r = RKNN()
    assert r.config(mean_values=[MEAN] * 3, std_values=[STD] * 3, target_platform="rk1808") == 0
    assert r.load_onnx(str(path)) == 0
    with rknn_log.at_level(logging.INFO, logger="openrknn"):
        assert r.build(do_quantization=False) == 0
    src = r._package.metadata["quantization"]["source_parameters"]
    # rk1808 quantizes weights per tensor: the four per-channel weight scales are re-derived, one line each
    per_tensor = [line for line in src["re_derived"] if "per-channel weight scales re-derived" in line]
    assert len(per_tensor) == 4 and src["kept"] == src["given"] - 4
    assert sum("per-channel weight scales re-derived" in rec.getMessage() for rec in rknn_log.records) == 4
    r.release()


def test_do_quantization_true_requantizes(tmp_path, rknn_log):
    path = _qdq(tmp_path)
    for i, img in enumerate(_pixels(4, 3)):
        np.save(tmp_path / f"c{i}.npy", img[0])
    (tmp_path / "dataset.txt").write_text("".join(f"c{i}.npy\n" for i in range(4)))
    r = RKNN()
    assert r.config(mean_values=[MEAN] * 3, std_values=[STD] * 3, target_platform="rk3588") == 0
    assert r.load_onnx(str(path)) == 0
    with rknn_log.at_level(logging.INFO, logger="openrknn"):
        assert r.build(do_quantization=True, dataset=str(tmp_path / "dataset.txt")) == 0
    assert "re-quantizes it" in rknn_log.text
    assert "source_parameters" not in r._package.metadata["quantization"]
    r.release()


def test_loaded_qdq_model_is_its_float_graph(tmp_path):
    loaded = load_onnx(_qdq(tmp_path))
    assert loaded.source_quant and any("keeps them" in n for n in loaded.notes)
    x = _normalised(_pixels(1, 4)[0])
    want = ort.InferenceSession(str(tmp_path / "f.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = ort.InferenceSession(loaded.model.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert cosine(got, want) > 0.999  # the float graph with the quantized (dequantized) weights


@pytest.mark.slow
def test_int8_tflite_round_trip(tmp_path):
    """Our w8a8 build exported as int8 TFLite, loaded back: the loaded QDQ graph is LiteRT's arithmetic exactly,
    and build(do_quantization=False) keeps the file's scales (SiLU, which TFLite computes as two requantized
    steps and the NPU as one, is re-derived)."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    import test_export_tflite as T
    from ai_edge_litert.interpreter import Interpreter

    rk = T._build(tmp_path, points="tflite")  # built for TFLite: the chip's fused residual Add has no TFLite form
    assert rk.export_tflite(str(tmp_path / "t.tflite")) == 0
    rk.release()
    it = Interpreter(model_path=str(tmp_path / "t.tflite"))
    it.allocate_tensors()
    ind, outd = it.get_input_details()[0], it.get_output_details()[0]
    s, z = ind["quantization"]
    r = RKNN()
    assert r.config(mean_values=[z], std_values=[1 / s], target_platform="rk3588",
                    pre_activation_points="tflite") == 0
    assert r.load_tflite(str(tmp_path / "t.tflite")) == 0
    from openrknn.frontends.tflite import load_tflite  # the QDQ graph, before its parameters are taken out

    qdq_graph = load_tflite(tmp_path / "t.tflite").model
    loaded_sess = ort.InferenceSession(qdq_graph.SerializeToString(), providers=["CPUExecutionProvider"])
    assert r.build(do_quantization=False) == 0
    src = r._package.metadata["quantization"]["source_parameters"]
    assert src["kept"] >= src["given"] - 4
    assert r.init_runtime() == 0
    out_scale = float(r._loaded.source_quant[r._loaded.output_names[0]].scale[0])
    for img in T._inputs():
        it.set_tensor(ind["index"], img.astype(ind["dtype"]))
        it.invoke()
        ref = it.get_tensor(outd["index"]).astype(np.float32)
        qdq = loaded_sess.run(None, {loaded_sess.get_inputs()[0].name: (img.astype(np.float32) - z) * s})[0]
        np.testing.assert_allclose(qdq, ref, atol=1e-6)
        assert np.abs(r.inference([img])[0] - ref).max() <= 2 * out_scale * 1.001
    r.release()


def _relu_free_qdq(path: Path) -> Path:
    """x -> Q/DQ -> two Convs -> Q/DQ each -> their product -> Q/DQ (uint8, zero point 0) -> y: the last range starts
    at exactly 0, so the import puts the ReLU that such a range implies back after the Mul, which is not a fused
    op."""
    rng = np.random.default_rng(3)
    f = lambda v, name: numpy_helper.from_array(np.asarray(v, np.float32), name)  # noqa: E731
    u8 = lambda v, name: numpy_helper.from_array(np.asarray(v, np.uint8), name)  # noqa: E731
    i8 = lambda v, name: numpy_helper.from_array(np.asarray(v, np.int8), name)  # noqa: E731
    w = rng.normal(0, .4, (6, 3, 3, 3)).astype(np.float32)
    w_scale = np.abs(w).reshape(6, -1).max(1) / 127
    inits = [f(1 / 64, "s_in"), u8(128, "z_in"), i8(np.round(w / w_scale[:, None, None, None]), "w_q"),
             f(w_scale, "w_s"), i8(np.zeros(6), "w_z"), f(0.021, "s1"), u8(121, "z1"), f(0.0113, "s2"), u8(0, "z2"),
             i8(rng.integers(-127, 128, (6, 3, 1, 1)), "v_q"), f(0.003, "v_s"), i8(0, "v_z"), f(0.017, "s3"),
             u8(117, "z3")]
    n = helper.make_node
    nodes = [n("QuantizeLinear", ["x", "s_in", "z_in"], ["xq"]), n("DequantizeLinear", ["xq", "s_in", "z_in"], ["xd"]),
             n("DequantizeLinear", ["w_q", "w_s", "w_z"], ["wd"], axis=0),
             n("Conv", ["xd", "wd"], ["c"], pads=[1, 1, 1, 1]),
             n("QuantizeLinear", ["c", "s1", "z1"], ["cq"]), n("DequantizeLinear", ["cq", "s1", "z1"], ["cd"]),
             n("DequantizeLinear", ["v_q", "v_s", "v_z"], ["vd"]), n("Conv", ["xd", "vd"], ["e"]),
             n("QuantizeLinear", ["e", "s3", "z3"], ["eq"]), n("DequantizeLinear", ["eq", "s3", "z3"], ["ed"]),
             n("Mul", ["cd", "ed"], ["m"]),
             n("QuantizeLinear", ["m", "s2", "z2"], ["mq"]), n("DequantizeLinear", ["mq", "s2", "z2"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 12, 12])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_a_restored_relu_rounds_once_as_the_source_did(tmp_path):
    """The tensor before a restored ReLU takes the ReLU output's (source) grid: one rounding, clamped at 0, as the
    source computes it. A grid of its own (calibrated) would round twice and move some values by a step. The
    package's graph, evaluated as QDQ arithmetic, gives the source model's values exactly."""
    from openrknn.package import read_package

    path = _relu_free_qdq(tmp_path / "relu_free.onnx")
    r = RKNN(verbose=False)
    assert r.config(target_platform="rk3588", mean_values=[[0, 0, 0]], std_values=[[1, 1, 1]]) == 0
    assert r.load_onnx(str(path)) == 0
    assert r.build(do_quantization=False) == 0, r.last_error
    assert r.export_rknn(str(tmp_path / "kept.rknn")) == 0
    r.release()
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = ort.InferenceSession(str(path), plain)
    kept = ort.InferenceSession(read_package(tmp_path / "kept.rknn").model_bytes, plain)
    feed = kept.get_inputs()[0]
    rng = np.random.default_rng(5)
    for _ in range(3):
        x = rng.uniform(-2, 2, (1, 3, 12, 12)).astype(np.float32)
        want = source.run(None, {"x": x})[0]
        got = kept.run(None, {feed.name: x if feed.shape[1] == 3 else x.transpose(0, 2, 3, 1)})[0]
        np.testing.assert_array_equal(got.reshape(want.shape), want)


@pytest.mark.slow
def test_an_onnxruntime_quantized_yolox_keeps_its_scores(tmp_path, real_data):
    """YOLOX-nano quantized by onnxruntime (QDQ): its score heads' Sigmoid outputs are quantized on the source's
    grid. Keeping the source's parameters keeps them there; moved to the host (the default build's rule for score
    heads), the logits took that [0, 1] grid and the scores were lost."""
    import cv2
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from openrknn.vision.letterbox import letterbox

    onnx.save(load_onnx(real_data("models/yolox_nano_coco.onnx"), input_size_list=[[1, 3, 416, 416]]).model,
              tmp_path / "float.onnx")
    files = sorted(real_data("images/coco").iterdir())
    pixels = [letterbox(cv2.imread(str(f)), (416, 416), mode="topleft", pad_value=114)[0][None] for f in files[:6]]

    def feed(img):  # BGR, 0..255, NCHW: YOLOX's own input
        return {"images": img.transpose(0, 3, 1, 2).astype(np.float32)}

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(feed(p) for p in pixels[:4])

        def get_next(self):
            return next(self.it, None)

    path = tmp_path / "yolox_qdq.onnx"
    quantize_static(str(tmp_path / "float.onnx"), str(path), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    r = RKNN()
    assert r.config(mean_values=[[0, 0, 0]], std_values=[[1, 1, 1]], target_platform="rk3588") == 0
    assert r.load_onnx(str(path)) == 0 and r.build(do_quantization=False) == 0 and r.init_runtime() == 0
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for img in pixels[4:]:
        ours, theirs = r.inference([img])[0], sess.run(None, feed(img))[0]
        assert cosine(ours, theirs) > 0.9
        # the scores: the chip's Concat gives them the boxes' scale, as it would on the board; not lost altogether
        assert cosine(ours[..., 4:], theirs[..., 4:]) > 0.5

