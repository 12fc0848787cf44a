"""The NPU design checker: every rule fires on a tiny graph that breaks it and stays quiet on one that does not."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from openrknn.analysis.lint import RULES, check_model, findings_json, findings_table
from openrknn.errors import ConfigError


class G:
    """A tiny NCHW graph builder: every op returns its output name (which is also its node name)."""

    def __init__(self, shape=(1, 16, 16, 16), seed=0):
        self.nodes, self.inits, self.n = [], [], 0
        self.rng = np.random.default_rng(seed)
        self.inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))]

    def op(self, op_type, inputs, name=None, domain=None, **attrs):
        self.n += 1
        out = name or f"{op_type.lower()}{self.n}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, domain=domain, **attrs))
        return out

    def const(self, arr, dtype=np.float32):
        self.n += 1
        name = f"w{self.n}"
        self.inits.append(numpy_helper.from_array(np.asarray(arr, dtype=dtype), name))
        return name

    def conv(self, x, cin, cout, k=3, s=1, group=1, pad=None, name=None, w=None, dil=1):
        kh, kw = (k, k) if isinstance(k, int) else k
        w = self.const(self.rng.standard_normal((cout, cin // group, kh, kw)) if w is None else w)
        ph, pw = (kh // 2, kw // 2) if pad is None else (pad, pad)
        return self.op("Conv", [x, w], name=name, kernel_shape=[kh, kw], strides=[s, s], pads=[ph, pw, ph, pw],
                       group=group, dilations=[dil, dil])

    def model(self, outputs, opsets=None):
        outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs]
        g = helper.make_graph(self.nodes, "g", self.inputs, outs, self.inits)
        return helper.make_model(g, opset_imports=opsets or [helper.make_opsetid("", 17)])


def fired(model, rule, target="rk1808", quant="asymmetric_quantized-u8", **kw):
    return [f for f in check_model(model, target, quant, rules=[rule], **kw)]


# --------------------------------------------------------------------------------------------------- op support
def test_op_support_flags_cpu_fallback_and_unsupported_ops():
    g = G()
    c = g.conv("x", 16, 16)
    t = g.op("TopK", [g.op("Flatten", [c]), g.const(np.array([5], np.int64), np.int64)], name="topk")
    g.nodes[-1].output.append("topk_idx")
    u = g.op("Frobnicate", [c], name="frob", domain="my.ops")
    m = g.model([t, u], opsets=[helper.make_opsetid("", 17), helper.make_opsetid("my.ops", 1)])
    for target in ("rk1808", "rk3588"):
        fs = {f.layer: f for f in check_model(m, target, rules=["op-support"])}
        assert fs["topk"].severity == "warning" and "CPU" in fs["topk"].why
        assert fs["frob"].severity == "error"
        assert c not in fs


def test_every_comparison_runs_on_the_cpu_on_both_generations():
    """Greater and Less were CPU fallbacks while GreaterOrEqual and LessOrEqual (openWakeWord's hey_jarvis) were
    'unsupported' errors; the four are one kind of op."""
    from openrknn.targets.chips import placement

    for gen in ("rknpu1", "rknpu2"):
        assert {op: placement(op, gen) for op in ("Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Equal")} == \
            dict.fromkeys(("Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Equal"), "cpu")


def test_op_support_takes_an_lstm_as_an_rknpu2_npu_op():
    """A CRNN recognizer's BiLSTM (EasyOCR's) was an error, 'replace it with supported ops', on rk3588, where
    rknn-toolkit2 compiles it into one NPU op."""
    from test_perf import _recurrent

    m = _recurrent("LSTM", 20)
    assert fired(m, "op-support", target="rk3588", quant="w8a8") == []
    assert [f.severity for f in check_model(_recurrent("GRU", 20), "rk3588", rules=["op-support"])] == ["warning"]
    # rknn-toolkit2's op list: batch 1 only, no input_forget
    for bad, words in ((_recurrent("LSTM", 20, batch=4), "batch 4"), (_recurrent("GRU", 20, batch=2), "batch 2"),
                       (_recurrent("LSTM", 20, input_forget=1), "input_forget=1")):
        errors = [f for f in check_model(bad, "rk3588", rules=["op-support"]) if f.severity == "error"]
        assert len(errors) == 1 and words in errors[0].why and "batch size 1" in errors[0].why


def test_op_support_is_quiet_on_npu_ops():
    g = G()
    m = g.model([g.op("Relu", [g.conv("x", 16, 16)])])
    assert fired(m, "op-support") == [] and fired(m, "op-support", target="rk3588", quant="w8a8") == []


# --------------------------------------------------------------------------------------------------- conv limits
@pytest.mark.parametrize("k,s,bad", [(11, 1, True), (10, 1, False), (11, 2, False), (21, 2, False), (23, 2, True)])
def test_rknpu1_kernel_limit_is_11_times_stride_minus_1(k, s, bad):
    g = G(shape=(1, 4, 48, 48))
    m = g.model([g.conv("x", 4, 4, k=k, s=s)])
    fs = fired(m, "conv-limits")
    assert bool(fs) is bad
    if bad:
        assert fs[0].severity == "error" and f"kernel {k} with stride {s}" in fs[0].why


@pytest.mark.parametrize("kw,bad_word", [
    (dict(k=33), "kernel"), (dict(k=3, s=8), "stride"), (dict(k=3, pad=16), "padding"),
    (dict(k=3, dil=32, pad=1), "dilation"), (dict(k=9, group=4), "depthwise"), (dict(k=31), None),
    (dict(k=7, group=4), None), (dict(k=3, s=7, pad=15, dil=31), None),
])
def test_rknpu2_conv_limits(kw, bad_word):
    g = G(shape=(1, 4, 40, 40))
    m = g.model([g.conv("x", 4, 4, **kw)])
    fs = fired(m, "conv-limits", target="rk3566", quant="w8a8")
    if bad_word is None:
        assert fs == []
    else:
        assert len(fs) == 1 and bad_word in fs[0].why and fs[0].severity == "error"


# --------------------------------------------------------------------------------------------------- 3x3 preference
def test_kernel_3x3_preference():
    g = G()
    five = g.conv("x", 16, 16, k=5, name="five")
    asym = g.conv(five, 16, 16, k=(1, 3), name="asym")
    ok = g.conv(g.conv(asym, 16, 16, k=3), 16, 16, k=1)
    dw = g.conv(ok, 16, 16, k=5, group=16, name="dw5")  # depthwise kernels are judged by conv-limits instead
    fs = {f.layer: f for f in fired(g.model([dw]), "kernel-3x3")}
    assert set(fs) == {"five", "asym"}
    assert fs["five"].severity == "info" and "Asymmetric" in fs["asym"].why


# --------------------------------------------------------------------------------------------------- fusion
def test_activation_fusion_rules():
    g = G()
    a = g.op("Relu", [g.conv("x", 16, 16)], name="relu_ok")               # fuses: quiet
    b = g.op("LeakyRelu", [g.conv(a, 16, 16)], name="leaky", alpha=0.1)   # not an RKNPU1 fusable activation
    c = g.conv(b, 16, 16)
    r = g.op("Relu", [c], name="relu_shared")                             # conv output also read by the Add
    s = g.op("Add", [r, c])
    d = g.conv(s, 16, 16)
    silu = g.op("Mul", [d, g.op("Sigmoid", [d])], name="silu")
    m = g.model([silu])
    fs = {f.layer or f.op_type: f for f in fired(m, "activation-fusion")}
    assert set(fs) == {"leaky", "relu_shared", "SiLU"}
    assert "readers" in fs["relu_shared"].why and fs["SiLU"].severity == "info" and "1 SiLU" in fs["SiLU"].why
    # RKNPU2 fuses LeakyRelu
    v2 = {f.layer or f.op_type for f in fired(m, "activation-fusion", target="rk3588", quant="w8a8")}
    assert "leaky" not in v2 and "relu_shared" in v2


@pytest.mark.parametrize("shape,k,pads,bits,problem", [
    ((16, 16), 2, 0, 8, None),
    ((15, 16), 2, 0, 8, "not even"),
    ((16, 16), 2, 1, 8, "padding"),
    ((31, 31), 3, 0, 8, None),
    ((16, 16), 3, 0, 8, "odd"),
    ((63, 63), 3, 0, 8, None),
    ((65, 65), 3, 0, 8, "width 65"),
    ((33, 33), 3, 0, 16, "width 33"),
    ((1, 1), 3, 0, 8, "odd and not 1"),
])
def test_maxpool_fusion_conditions(shape, k, pads, bits, problem):
    g = G(shape=(1, 16) + shape)
    r = g.op("Relu", [g.conv("x", 16, 16)])
    p = g.op("MaxPool", [r], name="pool", kernel_shape=[k, k], strides=[2, 2], pads=[pads] * 4)
    m = g.model([p])
    quant = "asymmetric_quantized-u8" if bits == 8 else "dynamic_fixed_point-i16"
    fs = fired(m, "maxpool-fusion", quant=quant)
    if problem is None:
        assert fs == []
    else:
        assert len(fs) == 1 and problem in fs[0].why and fs[0].layer == "pool"
    assert fired(m, "maxpool-fusion", target="rk3588", quant="w8a8") == []  # an RKNPU1 rule


def test_maxpool_with_wrong_stride_or_not_after_a_conv():
    g = G()
    p1 = g.op("MaxPool", [g.conv("x", 16, 16)], name="s1", kernel_shape=[2, 2], strides=[1, 1])
    p2 = g.op("MaxPool", [g.op("Sigmoid", [p1])], name="after_sigmoid", kernel_shape=[3, 3], strides=[1, 1])
    fs = {f.layer: f for f in fired(g.model([p2]), "maxpool-fusion")}
    assert set(fs) == {"s1"} and "stride 1x1" in fs["s1"].why


# --------------------------------------------------------------------------------------------------- quantization
def test_depthwise_under_int8():
    g = G()
    w = np.ones((16, 1, 3, 3), np.float32)
    w[0] *= 100  # one channel's range 100x the others
    dw = g.conv("x", 16, 16, group=16, w=w, name="dw")
    silu = g.op("Mul", [dw, g.op("Sigmoid", [dw])])
    plain = g.conv(silu, 16, 16, group=16, name="dw_plain", w=np.ones((16, 1, 3, 3)))
    m = g.model([g.conv(plain, 16, 8, k=1)])
    fs = {f.layer: f for f in fired(m, "depthwise-int8")}
    assert set(fs) == {"dw", "dw_plain"}
    assert fs["dw"].severity == "warning" and "SiLU" in fs["dw"].why and "100x" in fs["dw"].why
    assert fs["dw_plain"].severity == "info" and "L2" in fs["dw_plain"].what_to_do
    # per-channel (Toolkit2 default) removes the range note; float and 16-bit models are not flagged at all
    v2 = {f.layer: f for f in fired(m, "depthwise-int8", target="rk3588", quant="w8a8")}
    assert "100x" not in v2["dw"].why and "SiLU" in v2["dw"].why
    assert fired(m, "depthwise-int8", quant=None) == []
    assert fired(m, "depthwise-int8", quant="dynamic_fixed_point-i16") == []


def test_reductions_in_8bit_on_rknpu1():
    g = G()
    m = g.model([g.op("ReduceMean", [g.conv("x", 16, 16)], name="mean", axes=[2, 3], keepdims=1)])
    assert [f.layer for f in fired(m, "reduce-8bit")] == ["mean"]
    assert fired(m, "reduce-8bit", quant="dynamic_fixed_point-i16") == []
    assert fired(m, "reduce-8bit", target="rk3588", quant="w8a8") == []


def test_mixed_range_output():
    g = G()
    box = g.conv("x", 16, 4, k=1)
    score = g.op("Sigmoid", [g.conv("x", 16, 2, k=1)])
    mixed = g.op("Concat", [box, score], name="mixed", axis=1)
    two_boxes = g.op("Concat", [g.conv("x", 16, 4, k=1), g.conv("x", 16, 4, k=1)], name="boxes", axis=1)
    m = g.model([mixed, two_boxes])
    assert [f.layer for f in fired(m, "mixed-range-output")] == ["mixed"]
    g2 = G()
    m2 = g2.model([g2.conv("x", 16, 4, k=1), g2.op("Sigmoid", [g2.conv("x", 16, 2, k=1)])])  # separate outputs
    assert fired(m2, "mixed-range-output") == []


def test_mixed_range_output_is_quiet_on_a_build_that_keeps_the_parts_apart(tmp_path):
    """openrknn's own build of that concat keeps one scale per part (the plan's float tail): checking the .rknn
    warned all the same (a YOLO11n of Ultralytics, checked after its build)."""
    import onnx

    from conftest import built_rknn, write_npy_dataset
    from openrknn.package import read_package

    g = G()
    box = g.conv("x", 16, 4, k=1)
    mixed = g.op("Concat", [box, g.op("Sigmoid", [g.conv("x", 16, 2, k=1)])], name="mixed", axis=1)
    onnx.save(g.model([mixed]), tmp_path / "m.onnx")
    rk = built_rknn(tmp_path / "m.onnx", write_npy_dataset(tmp_path, (16, 16, 16), high=1.0),
                    target_platform="rk3588", quantized_dtype="w8a8")
    rk.export_rknn(str(tmp_path / "m.rknn"))
    rk.release()
    quantized = onnx.load_from_string(read_package(tmp_path / "m.rknn").model_bytes)
    assert fired(quantized, "mixed-range-output", target="rk3588", quant="w8a8") == []


@pytest.mark.parametrize("count,fires", [(30, True), (99, True), (100, False), (None, False)])
def test_calibration_set_size(count, fires):
    g = G()
    fs = fired(g.model([g.conv("x", 16, 16)]), "calibration-size", calib_count=count)
    assert bool(fs) is fires
    if fires:
        assert str(count) in fs[0].why and "100-500" in fs[0].what_to_do


@pytest.mark.parametrize("cos,fires", [(0.95, True), (0.9799, True), (0.98, False), (0.999, False), (None, False)])
def test_first_layer_cosine(cos, fires):
    g = G()
    first = g.conv("x", 16, 16, name="first")
    fs = fired(g.model([g.conv(first, 16, 16)]), "first-layer-cosine", first_layer_cosine=cos)
    assert bool(fs) is fires
    if fires:
        f = fs[0]
        assert f.layer == "first" and f.severity == "error"
        assert "mean_values" in f.what_to_do and "reorder_channel" in f.what_to_do


@pytest.mark.parametrize("mean,std,fires", [
    ([[0.485, 0.456, 0.406]], [[0.229, 0.224, 0.225]], True),
    ([[0, 0, 0]], [[0.0039, 0.0039, 0.0039]], True),
    ([[123.675, 116.28, 103.53]], [[58.395, 57.12, 57.375]], False),
    ([[0, 0, 0]], [[1, 1, 1]], False),
    (None, None, False),
])
def test_preprocess_scale(mean, std, fires):
    g = G()
    fs = fired(g.model([g.conv("x", 16, 16)]), "preprocess-scale", mean_values=mean, std_values=std)
    assert bool(fs) is fires
    if fires:
        assert "255" in fs[0].what_to_do and fs[0].severity == "warning"


# --------------------------------------------------------------------------------------------------- output
def test_findings_table_and_json():
    g = G()
    m = g.model([g.op("LeakyRelu", [g.conv("x", 16, 16, k=5)], name="leaky")])
    fs = check_model(m, "rk1808", "asymmetric_quantized-u8", calib_count=10, first_layer_cosine=0.5)
    assert [f.severity for f in fs] == sorted((f.severity for f in fs), key=("error", "warning", "info").index)
    js = findings_json(fs)
    json.dumps(js)
    assert {d["rule"] for d in js} >= {"kernel-3x3", "activation-fusion", "calibration-size", "first-layer-cosine"}
    assert set(js[0]) == {"severity", "rule", "layer", "op_type", "why", "what_to_do", "parts"}
    table = findings_table(fs)
    assert "first-layer-cosine" in table and "leaky" in table and "-> " in table and "1 error" in table
    assert findings_table([]).startswith("No findings")
    with pytest.raises(ConfigError, match="no-such-rule"):
        check_model(m, "rk1808", rules=["no-such-rule"])
    assert len(RULES) >= 10


def test_yolox_nano_findings(real_data):
    import onnx

    m = onnx.load(str(real_data("models/yolox_nano_coco.onnx")))
    fs = check_model(m, "rk1808", "asymmetric_quantized-u8", calib_count=30)
    rules = {f.rule for f in fs}
    # depthwise convs with SiLU, per-layer u8, sigmoid scores concatenated with boxes, a small calibration set
    assert {"depthwise-int8", "mixed-range-output", "calibration-size", "activation-fusion"} <= rules
    assert "op-support" not in rules and "conv-limits" not in rules
