"""Numerics of every quantized dtype and the NPU-faithful graph structure, on tiny hand-made ONNX models."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import write_npy_dataset
from openrknn.errors import ConfigError
from openrknn.quant import QuantOptions, quantize
from openrknn.quant.dataset import InputSpec, read_dataset
from openrknn.quant.schemes import SCHEMES, get_scheme, qparams

RNG = np.random.default_rng(0)
H = W = 8


def _init(name, arr):
    return numpy_helper.from_array(np.asarray(arr, np.float32), name)


def tiny_model() -> onnx.ModelProto:
    """NHWC raw input -> Transpose -> Sub/Mul (pre-processing) -> Conv+Relu -> depthwise Conv+SiLU -> MaxPool
    -> Concat(with a 1x1 conv branch) -> Conv 1x1 -> head: Concat(box conv, Sigmoid(score conv)) -> Reshape ->
    output; plus a Gemm classifier on a GlobalAveragePool as a second output. Same weights on every call."""
    rng = np.random.default_rng(0)
    inits = [
        _init("mean", np.full((1, 3, 1, 1), 100.0)), _init("istd", np.full((1, 3, 1, 1), 1 / 50.0)),
        _init("w1", rng.normal(0, 0.5, (8, 3, 3, 3))), _init("b1", rng.normal(0, 0.1, 8)),
        _init("wdw", rng.normal(0, 1.0, (8, 1, 3, 3)) * np.logspace(-1, 0.5, 8)[:, None, None, None]),
        _init("bdw", rng.normal(0, 0.1, 8)),
        _init("wb", rng.normal(0, 0.3, (4, 8, 1, 1))), _init("bb", np.zeros(4)),
        _init("w3", rng.normal(0, 0.3, (8, 12, 1, 1))), _init("b3", rng.normal(0, 0.1, 8)),
        _init("wbox", rng.normal(0, 3.0, (4, 8, 1, 1))), _init("bbox", np.full(4, 20.0)),
        _init("wcls", rng.normal(0, 0.3, (2, 8, 1, 1))), _init("bcls", np.zeros(2)),
        _init("wfc", rng.normal(0, 0.3, (5, 8))), _init("bfc", rng.normal(0, 0.1, 5)),
        numpy_helper.from_array(np.array([1, 6, -1], np.int64), "shape"),
    ]
    n = helper.make_node
    nodes = [
        n("Transpose", ["raw"], ["nchw"], perm=[0, 3, 1, 2]), n("Sub", ["nchw", "mean"], ["c"]),
        n("Mul", ["c", "istd"], ["x"]),
        n("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]), n("Relu", ["c1"], ["r1"]),
        n("Conv", ["r1", "wdw", "bdw"], ["c2"], pads=[1, 1, 1, 1], group=8), n("Sigmoid", ["c2"], ["s2"]),
        n("Mul", ["c2", "s2"], ["silu"]),
        n("MaxPool", ["silu"], ["pool"], kernel_shape=[2, 2], strides=[2, 2]),
        n("Conv", ["pool", "wb", "bb"], ["branch"]),
        n("Concat", ["pool", "branch"], ["cat"], axis=1),
        n("Conv", ["cat", "w3", "b3"], ["c3"]), n("Relu", ["c3"], ["feat"]),
        n("Conv", ["feat", "wbox", "bbox"], ["box"]),
        n("Conv", ["feat", "wcls", "bcls"], ["cls_logit"]), n("Sigmoid", ["cls_logit"], ["cls"]),
        n("Concat", ["box", "cls"], ["head"], axis=1), n("Reshape", ["head", "shape"], ["det"]),
        n("GlobalAveragePool", ["feat"], ["gap"]), n("Flatten", ["gap"], ["flat"]),
        n("Gemm", ["flat", "wfc", "bfc"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("raw", TensorProto.FLOAT, [1, H, W, 3])],
                              [helper.make_tensor_value_info("det", TensorProto.FLOAT, [1, 6, 16]),
                               helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


SPEC = [InputSpec("raw", (1, H, W, 3))]


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    return read_dataset(write_npy_dataset(tmp_path_factory.mktemp("calib"), (H, W, 3)), SPEC)


def _run(model, feed, names=None):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(names, feed)


def _float_values(model, data, names):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.extend([onnx.ValueInfoProto(name=n) for n in names])
    vals = [_run(m, f, names) for f in data]
    return {n: np.stack([v[k] for v in vals]) for k, n in enumerate(names)}


def _cos(a, b):
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _q(model, data, **kw):
    return quantize(model, data, QuantOptions(**kw), progress=False)


def _nodes_by_output(model):
    return {o: n for n in model.graph.node for o in n.output}


def test_u8_per_tensor_scales_and_zero_points_follow_calibrated_range(calib):
    model = tiny_model()
    res = _q(model, calib, dtype="asymmetric_quantized-u8", bias_correction=False, equalization=False)
    vals = _float_values(model, calib, ["silu", "branch", "feat"])
    t = res.tensors["feat"]
    lo, hi = min(vals["feat"].min(), 0), max(vals["feat"].max(), 0)
    assert t["dtype"] == "uint8" and t["axis"] is None
    assert t["scale"][0] == pytest.approx((hi - lo) / 255, rel=1e-5)
    assert t["zero_point"][0] == round(-lo / t["scale"][0])
    # a scale group (silu -> maxpool -> concat with branch) takes the union of its members' ranges
    t = res.tensors["silu"]
    lo = min(vals["silu"].min(), vals["branch"].min(), 0)
    hi = max(vals["silu"].max(), vals["branch"].max())
    assert t["scale"][0] == pytest.approx((hi - lo) / 255, rel=1e-5)
    assert t["zero_point"][0] == round(-lo / t["scale"][0])
    w = res.tensors["w1"]
    assert w["dtype"] == "uint8" and w["axis"] is None and len(w["scale"]) == 1 and 0 <= w["zero_point"][0] <= 255
    w1 = onnx.numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "w1"))
    assert w["scale"][0] == pytest.approx((w1.max() - min(w1.min(), 0)) / 255, rel=1e-5)
    # the normalized input that leaves the pre-processing prefix is the first quantization point
    assert "x" in res.tensors and "nchw" not in res.tensors and "c" not in res.tensors
    out = _run(res.model, next(iter(calib)))
    ref = _run(model, next(iter(calib)))
    assert _cos(out[1], ref[1]) > 0.99 and _cos(out[0], ref[0]) > 0.99


@pytest.mark.parametrize("dtype,bits", [("dynamic_fixed_point-i8", 8), ("dynamic_fixed_point-i16", 16)])
def test_dynamic_fixed_point_is_symmetric_power_of_two(calib, dtype, bits):
    model = tiny_model()
    res = _q(model, calib, dtype=dtype, bias_correction=False)
    vals = _float_values(model, calib, ["feat"])
    qmax = 2 ** (bits - 1) - 1
    for name, t in res.tensors.items():
        if t["kind"] == "bias":
            continue
        assert t["dtype"] == f"int{bits}", name
        for s, z in zip(t["scale"], t["zero_point"]):
            assert z == 0 and np.log2(s) == np.round(np.log2(s)), (name, s)
    s = res.tensors["feat"]["scale"][0]
    amax = np.abs(vals["feat"]).max()
    assert amax <= qmax * s and amax > qmax * s / 2  # the tightest power of two that holds the range
    out, ref = _run(res.model, next(iter(calib))), _run(model, next(iter(calib)))
    assert _cos(out[1], ref[1]) > (0.99 if bits == 8 else 0.9999)


def test_w8a8_per_channel_symmetric_weights_and_asymmetric_int8_activations(calib):
    model = tiny_model()
    res = _q(model, calib, dtype="w8a8", bias_correction=False)
    assert QuantOptions(dtype="w8a8").resolved_method == "channel"
    wdw = onnx.numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "wdw"))
    t = res.tensors["wdw"]
    assert t["dtype"] == "int8" and t["axis"] == 0 and len(t["scale"]) == 8 and set(t["zero_point"]) == {0}
    np.testing.assert_allclose(t["scale"], np.abs(wdw).reshape(8, -1).max(1) / 127, rtol=1e-6)
    assert res.tensors["wfc"]["axis"] == 0 and len(res.tensors["wfc"]["scale"]) == 5  # Gemm transB=1: rows
    a = res.tensors["silu"]
    assert a["dtype"] == "int8" and -128 <= a["zero_point"][0] <= 127 and a["zero_point"][0] != 0
    # stored as uint8 with zero point + 128 (fast U8S8 kernels), numerically the same int8 tensor
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in res.model.graph.initializer}
    zp_store = next(v for k, v in inits.items() if k.startswith("silu__zp"))
    assert zp_store.dtype == np.uint8 and int(zp_store) == a["zero_point"][0] + 128
    wq = next(v for k, v in inits.items() if k.startswith("wdw__q"))
    assert wq.dtype == np.int8 and np.abs(wq).max() == 127
    # 8-bit bias: int32 with scale = s_in * s_w
    b = res.tensors["bdw"]
    np.testing.assert_allclose(b["scale"], res.tensors["r1"]["scale"][0] * np.asarray(t["scale"]), rtol=1e-6)
    out, ref = _run(res.model, next(iter(calib))), _run(model, next(iter(calib)))
    assert _cos(out[1], ref[1]) > 0.995


@pytest.mark.parametrize("dtype,wbits", [("w8a16", 8), ("w16a16i", 16)])
def test_16_bit_activations(calib, dtype, wbits):
    model = tiny_model()
    res = _q(model, calib, dtype=dtype, bias_correction=False)
    assert res.tensors["silu"]["dtype"] == "int16" and res.tensors["w1"]["dtype"] == f"int{wbits}"
    assert res.tensors["w1"]["axis"] == 0
    assert any(n.domain == "com.microsoft" for n in res.model.graph.node)  # int16 Q/DQ at opset 17
    out, ref = _run(res.model, next(iter(calib))), _run(model, next(iter(calib)))
    limit = 0.9999 if wbits == 16 else 0.999  # w8a16: the 8-bit weights dominate the error
    assert _cos(out[1], ref[1]) > limit and _cos(out[0], ref[0]) > limit


def test_float16_casts_weights(calib):
    model = tiny_model()
    res = _q(model, calib, dtype="float16")
    assert any(i.data_type == TensorProto.FLOAT16 for i in res.model.graph.initializer)
    assert all(t["dtype"] == "float16" for t in res.tensors.values()) and res.tensors
    feed = next(iter(calib))
    out, ref = _run(res.model, feed), _run(model, feed)
    assert out[1].dtype == np.float32
    np.testing.assert_allclose(out[1], ref[1], rtol=2e-2, atol=2e-2)


def test_layer_method_gives_one_scale_per_weight(calib):
    res = _q(tiny_model(), calib, dtype="w8a8", method="layer", bias_correction=False, range_split=False)
    assert res.tensors["wdw"]["axis"] is None and len(res.tensors["wdw"]["scale"]) == 1
    res = _q(tiny_model(), calib, dtype="asymmetric_quantized-u8", method="channel", bias_correction=False,
             range_split=False)
    assert res.tensors["wdw"]["axis"] == 0 and len(res.tensors["wdw"]["scale"]) == 8


def test_npu_faithful_structure(calib):
    res = _q(tiny_model(), calib, dtype="w8a8", bias_correction=False)
    prod = _nodes_by_output(res.model)
    t = res.tensors
    # conv + ReLU fused, SiLU as one activation: no quantization of the conv outputs or of the sigmoid inside SiLU
    for internal in ("c1", "c2", "s2", "c3", "cls_logit"):
        assert internal not in t
        assert prod[internal].op_type not in ("DequantizeLinear",)
    assert prod["c2"].op_type == "Conv" and prod["s2"].op_type == "Sigmoid"
    # max-pool keeps its input's scale; concat inputs share the output's scale
    assert t["pool"]["scale"] == t["silu"]["scale"]
    assert t["cat"]["scale"] == t["pool"]["scale"] == t["branch"]["scale"]
    # the head concat only feeds the output: boxes and scores keep their own scales, concat runs in float
    assert t["box"]["scale"][0] > 20 * t["cls"]["scale"][0]
    assert "head" not in t and "det" not in t
    assert prod["head"].op_type == "Concat" and prod["det"].op_type == "Reshape"
    assert t["cls"]["scale"][0] <= 1 / 255 + 1e-9
    # residual-free graph output of a Gemm is quantized and dequantized (NPU output), name unchanged
    assert prod["logits"].op_type == "DequantizeLinear"
    assert res.report["plan"]["float_concats"]


def test_without_float_concat_scores_lose_resolution(calib):
    res = _q(tiny_model(), calib, dtype="w8a8", keep_mixed_concat_float=False, bias_correction=False)
    assert res.tensors["box"]["scale"] == res.tensors["cls"]["scale"]  # one shared scale: what we avoid
    assert res.tensors["cls"]["scale"][0] > 10 / 255


def test_qparams_edge_cases():
    fmt = get_scheme("asymmetric_quantized-u8").act
    s, z = qparams(np.float64(2.0), np.float64(5.0), fmt)  # range widened to hold 0
    assert z == 0 and s == pytest.approx(5 / 255)
    s, z = qparams(np.float64(-4.0), np.float64(-1.0), fmt)
    assert z == 255 and s == pytest.approx(4 / 255)
    s, z = qparams(np.float64(0.0), np.float64(0.0), fmt)
    assert s > 0 and np.isfinite(s)
    dfp = get_scheme("dynamic_fixed_point-i8").act
    s, z = qparams(np.float64(-3.0), np.float64(1.0), dfp)
    assert s == 2.0 ** -5 and z == 0  # 3 / 127 = 0.0236 -> 2^-5 = 0.03125


@pytest.mark.parametrize("dtype", ["asymmetric_quantized-u8", "w8a8", "w16a16i"])
def test_an_empty_range_gets_a_scale_products_survive(dtype):
    """A ReLU dead on every calibration sample (range [0, 0], or float noise like 3e-30): a scale of 2^-20 with zero
    exact, not a denormal-sized one whose product with the next layer's weight scale underflows float32."""
    from openrknn.quant.schemes import EMPTY_SCALE

    for fmt in (get_scheme(dtype).act, get_scheme(dtype).weight):
        for hi in (0.0, 3e-30):
            s, z = qparams(np.float64(0.0), np.float64(hi), fmt)
            assert s == np.float32(EMPTY_SCALE) and (z == 0 or z == fmt.qmin), (fmt, hi)
            assert float(s) * 1e-12 > np.finfo(np.float32).tiny  # times a small weight scale: still a normal float
    s, _ = qparams(np.float64(0.0), np.float64(1e-20), get_scheme("w8a8").act)  # tiny but real: its own scale
    assert s == pytest.approx(1e-20 / 255, rel=1e-5)


def test_a_channel_far_below_the_others_gets_a_floor_scale():
    """Per-channel weights with one channel ~1e-16 (a squeeze-excite channel trained to nothing): its scale is
    floored at 2^-20 of the widest channel's, so input x weight scale and TFLite's requantization multipliers stay
    representable; its integers round to zero, and the other channels are untouched."""
    from openrknn.quant.algorithms.weights import CHANNEL_FLOOR, quantize_weight

    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.5, (4, 8, 1, 1)).astype(np.float32)
    w[2] *= 1e-16
    fmt = get_scheme("w8a8").weight
    q, scale, zp = quantize_weight(w, 0, fmt)
    free, _, _ = quantize_weight(np.delete(w, 2, axis=0), 0, fmt)
    assert scale[2] == pytest.approx(np.abs(w).max() * CHANNEL_FLOOR / 127, rel=1e-5)
    assert np.all(q[2] == 0) and np.array_equal(np.delete(q, 2, axis=0), free)


def test_equalization_keeps_the_function_and_evens_depthwise_ranges(calib):
    model = tiny_model()
    # range split off: it would also rescue the uneven depthwise channels, by another route
    res = _q(model, calib, dtype="asymmetric_quantized-u8", bias_correction=False, range_split=False)  # auto: on
    assert res.report["equalization"]["pairs"] == 1  # conv -> ReLU -> depthwise; SiLU/ReLU6 pairs are not exact
    eq = res.report["equalization"]
    assert eq["range_precision_after"] > eq["range_precision_before"]
    plain = _q(model, calib, dtype="asymmetric_quantized-u8", bias_correction=False, equalization=False,
               range_split=False)
    feeds = list(calib)
    ref = [_run(model, f)[1] for f in feeds]
    err = [np.mean([np.abs(_run(r.model, f)[1] - y).mean() for f, y in zip(feeds, ref)]) for r in (res, plain)]
    assert err[0] < err[1]


def test_bad_options_raise_config_error(calib):
    with pytest.raises(ConfigError, match="quantized_dtype"):
        _q(tiny_model(), calib, dtype="int4")
    with pytest.raises(ConfigError, match="quantized_algorithm"):
        _q(tiny_model(), calib, algorithm="percentile")
    with pytest.raises(ConfigError, match="quantized_method"):
        _q(tiny_model(), calib, method="group")
    assert {k for k, v in SCHEMES.items() if v.simulated} == {
        "asymmetric_quantized-u8", "dynamic_fixed_point-i8", "dynamic_fixed_point-i16", "w8a8", "w8a16", "w16a16i",
        "float16"}
    with pytest.raises(ConfigError, match="quantized_dtype"):  # the cost model knows 4-bit weights; we do not make them
        _q(tiny_model(), calib, dtype="w4a16")


@pytest.mark.parametrize("algorithm", ["kl_divergence", "mmse"])
def test_histogram_algorithms_clip_inside_the_observed_range(calib, algorithm):
    model = tiny_model()
    base = _q(model, calib, dtype="w8a8", bias_correction=False)
    res = _q(model, calib, dtype="w8a8", algorithm=algorithm, bias_correction=False)
    assert res.report["stages"].get("histogram_pass", 0) > 0
    for name in ("feat", "silu", "r1"):
        assert res.tensors[name]["scale"][0] <= base.tensors[name]["scale"][0] * (1 + 1e-6)
    # bounded activations (the sigmoid scores) keep their full range
    assert res.tensors["cls"]["scale"] == base.tensors["cls"]["scale"]
    out, ref = _run(res.model, next(iter(calib))), _run(model, next(iter(calib)))
    assert _cos(out[1], ref[1]) > 0.98


def _argmax_model(decide: bool) -> onnx.ModelProto:
    """Conv+Relu -> a 1x1 conv of 40 class logits per pixel -> ArgMax over the classes (a recognizer with its
    decision inside), or (decide=False) a further 1x1 conv reading the same logits. A few classes carry rare large
    logits: the tail a clipping algorithm cuts."""
    rng = np.random.default_rng(4)
    wcls = rng.normal(0, 0.02, (40, 8, 1, 1)) * np.where(np.arange(40) < 2, 10.0, 1.0)[:, None, None, None]
    inits = [_init("w1", rng.normal(0, 0.5, (8, 3, 3, 3))), _init("b1", rng.normal(0, 0.1, 8)),
             _init("wcls", wcls), _init("bcls", np.zeros(40)), _init("wnext", rng.normal(0, 0.2, (2, 40, 1, 1)))]
    n = helper.make_node
    nodes = [n("Transpose", ["raw"], ["x"], perm=[0, 3, 1, 2]),
             n("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]), n("Relu", ["c1"], ["feat"]),
             n("Conv", ["feat", "wcls", "bcls"], ["logits"]),
             n("ArgMax", ["logits"], ["out"], axis=1, keepdims=0) if decide else
             n("Conv", ["logits", "wnext"], ["out"])]
    out = helper.make_tensor_value_info("out", TensorProto.INT64 if decide else TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "argmax", [helper.make_tensor_value_info("raw", TensorProto.FLOAT, [1, H, W, 3])],
                              [out], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("algorithm", ["kl_divergence", "mmse"])
def test_what_an_argmax_decides_on_keeps_its_full_range(calib, algorithm):
    """A clipped top ties the strongest classes, and ArgMax then returns the first of them: logits an ArgMax reads
    keep their calibrated range under the clipping algorithms; the same logits read by a conv are clipped."""
    def scales(decide: bool):
        kw = dict(dtype="w8a8", target="rk3588", bias_correction=False)
        base = _q(_argmax_model(decide), calib, **kw)
        res = _q(_argmax_model(decide), calib, algorithm=algorithm, **kw)
        return res.tensors["logits"]["scale"][0], base.tensors["logits"]["scale"][0]

    clipped, full = scales(decide=False)
    assert clipped < full * 0.99
    kept, full = scales(decide=True)
    assert kept == full


@pytest.mark.parametrize("mode", ["empirical", "analytical"])
def test_bias_correction_changes_only_biases(calib, mode):
    model = tiny_model()
    # nearest rounding: GPTQ already removes most of the mean shift bias correction is there to remove
    base = _q(model, calib, dtype="asymmetric_quantized-u8", bias_correction=False, equalization=False,
              weight_rounding="nearest")
    res = _q(model, calib, dtype="asymmetric_quantized-u8", bias_correction=mode, equalization=False,
             weight_rounding="nearest")
    assert res.report["bias_correction"]["layers"] >= 5
    assert res.tensors["w1"] == base.tensors["w1"] and res.tensors["silu"] == base.tensors["silu"]
    def biases(r):
        return {i.name: onnx.numpy_helper.to_array(i) for i in r.model.graph.initializer if i.data_type == 6}

    b0, b1 = biases(base), biases(res)
    assert b0.keys() == b1.keys() and any(not np.array_equal(b0[k], b1[k]) for k in b0)
    if mode == "empirical":  # the first conv's pre-activation mean error per channel mostly goes
        feeds = list(calib)
        ref = _float_values(model, feeds, ["c1"])["c1"].mean(axis=(0, 1, 3, 4))
        err = [np.abs(_float_values(r.model, feeds, ["c1"])["c1"].mean(axis=(0, 1, 3, 4)) - ref).max()
               for r in (base, res)]
        assert err[1] < 0.3 * err[0]  # not 0: zero-padded borders see fewer taps (8x8 input, 3x3 kernel)


@pytest.mark.parametrize("group", [1, 4])
def test_analytical_output_shift_matches_a_conv_of_the_mean(group):
    from openrknn.quant.algorithms.bias_correction import output_shift

    dw = RNG.normal(size=(8, 8 // group, 3, 3))
    mean = RNG.normal(size=8)
    x = np.broadcast_to(mean.reshape(1, 8, 1, 1), (1, 8, 5, 5)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], group=group)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 5, 5])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [_init("w", dw)])
    y = _run(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), {"x": x})[0]
    np.testing.assert_allclose(output_shift("Conv", dw, mean, group), y[0, :, 1, 1], rtol=1e-4, atol=1e-4)
    w = RNG.normal(size=(5, 8))
    np.testing.assert_allclose(output_shift("Gemm", w, mean, trans_b=True), w @ mean)


def test_hybrid_overrides(calib):
    model = tiny_model()
    res = _q(model, calib, dtype="w8a8", overrides={"feat": "int16", "silu": "float", "w3": "int16"},
             bias_correction=False)
    t = res.tensors
    assert t["feat"]["dtype"] == "int16" and t["w3"]["dtype"] == "int16" and t["w1"]["dtype"] == "int8"
    # 'float' drops the whole scale group (silu -> pool -> cat <- branch): no Q/DQ, the tensors stay float
    for name in ("silu", "pool", "cat", "branch"):
        assert name not in t
    assert _nodes_by_output(res.model)["silu"].op_type == "Mul"
    out, ref = _run(res.model, next(iter(calib))), _run(model, next(iter(calib)))
    assert _cos(out[1], ref[1]) > 0.995
    with pytest.raises(ConfigError, match="overrides"):
        _q(model, calib, dtype="w8a8", overrides={"no_such_tensor": "int16"})
    with pytest.raises(ConfigError, match="overrides"):
        _q(model, calib, dtype="w8a8", overrides={"feat": "int4"})


def test_bias_scale_is_input_times_weight_scale_per_channel():
    """The chip (and TFLite) add an int32 bias in units of s_in x s_w. A channel whose weights were trained to ~1e-16
    (weight scale ~1e-18: nanodet-m has such channels) cannot hold its bias in those units; only that channel takes
    the finest scale that fits. It used to push every channel of the layer off s_in x s_w, and the TFLite export then
    re-rounded them all (0.15% of a layer's outputs one step off the simulator)."""
    from openrknn.quant.qdq import ActQuant, WeightQuant, bias_integers
    from openrknn.targets.schemes import TensorFormat

    i8 = TensorFormat(8, True, True)
    w_scale = np.asarray([0.01, 1e-18, 0.003], np.float32)
    wq = WeightQuant(np.zeros((3, 4, 1, 1), np.int8), w_scale, np.zeros(3, np.int64), 0, i8)
    x = ActQuant(0.02, 0, TensorFormat(8, True, False))
    bias = np.asarray([0.37, -4.4e-11, -1.2], np.float32)
    q, scale = bias_integers(bias, x, wq)
    unit = np.float32(0.02) * w_scale.astype(np.float64)
    np.testing.assert_allclose(scale[[0, 2]], unit[[0, 2]], rtol=1e-6)
    assert abs(int(q[1])) <= 2 ** 30 and np.allclose(q * scale.astype(np.float64), bias, rtol=1e-6, atol=1e-3 * unit[0])
