"""Speed analysis: MAC counts, utilisation and fusion rules of the NPU estimate, host profiling, the eval_perf report,
and the chip tables they read."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from openrknn.analysis.charts import memory_chart, perf_chart
from openrknn.analysis.graph_info import analyze, node_names
from openrknn.analysis.memory import plan_memory
from openrknn.analysis.perf import (CPU_MACS_PER_SECOND, conv_utilisation, estimate_perf, eval_perf_report,
                                    measure_host_perf)
from openrknn.errors import ConfigError, InferenceInputError, NotSupportedError
from openrknn.targets import PLATFORMS
from openrknn.targets.chips import CHIPS, chip, placement
from openrknn.targets.schemes import get_scheme


class G:
    """A tiny NCHW graph builder: every op returns its output name."""

    def __init__(self, shape=(1, 32, 16, 16), seed=0):
        self.nodes, self.inits, self.n = [], [], 0
        self.rng = np.random.default_rng(seed)
        self.inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))]

    def op(self, op_type, inputs, name=None, **attrs):
        self.n += 1
        out = name or f"{op_type.lower()}{self.n}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def const(self, arr, dtype=np.float32):
        self.n += 1
        name = f"w{self.n}"
        self.inits.append(numpy_helper.from_array(np.asarray(arr, dtype=dtype), name))
        return name

    def conv(self, x, cin, cout, k=3, s=1, group=1, pad=None):
        w = self.const(self.rng.standard_normal((cout, cin // group, k, k)))
        p = k // 2 if pad is None else pad
        return self.op("Conv", [x, w], kernel_shape=[k, k], strides=[s, s], pads=[p] * 4, group=group)

    def model(self, outputs):
        outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs]
        g = helper.make_graph(self.nodes, "g", self.inputs, outs, self.inits)
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def rows(est):
    return {r.name: r for r in est.rows}


# --------------------------------------------------------------------------------------------------- chip tables
def test_every_platform_has_a_table_and_unknown_names_fail_clearly():
    assert set(CHIPS) == set(PLATFORMS)
    for name, spec in CHIPS.items():
        assert spec.macs_per_cycle["int8"] > 0 and spec.npu_clock_mhz > 0 and spec.ddr_peak_gbps > 0
        # the tables agree with the published peak: MACs x 2 x clock x cores within 25% of the TOPS figure
        tops = spec.macs_per_cycle["int8"] * 2 * spec.npu_clock_mhz * 1e6 * spec.cores / 1e12
        assert 0.75 < tops / spec.tops_int8 < 1.3, name
    assert chip("RK1808").macs_per_cycle == {"int8": 1920, "int16": 192, "float16": 64}  # FACTS.md
    with pytest.raises(ConfigError, match="rk9999"):
        chip("rk9999")
    with pytest.raises(ConfigError, match="quantized_dtype"):
        get_scheme("int3")
    assert get_scheme("w8a16").mac == "int16" and get_scheme("asymmetric_quantized-u8").mac == "int8"
    assert placement("TopK", "rknpu2") == "cpu" and placement("Conv", "rknpu1") == "npu"
    assert placement("Reshape", "rknpu1") == "free" and placement("MyCustomOp", "rknpu2") == "unsupported"


# --------------------------------------------------------------------------------------------------- graph info
def test_mac_counts_are_exact():
    g = G(shape=(1, 16, 20, 20))
    c = g.conv("x", 16, 32, k=3, s=2)                       # out 32 x 10 x 10
    d = g.conv(c, 32, 32, k=3, group=32)                    # depthwise
    f = g.op("Flatten", [d])
    y = g.op("Gemm", [f, g.const(np.zeros((10, 3200))), g.const(np.zeros(10))], transB=1)
    gi = analyze(g.model([y]), "w8a8")
    macs = {layer.op_type + str(i): layer.macs for i, layer in enumerate(gi.layers)}
    assert macs["Conv0"] == 32 * 10 * 10 * 16 * 9
    assert macs["Conv1"] == 32 * 10 * 10 * 9
    assert macs["Gemm3"] == 10 * 3200
    assert gi.tensors[c].dtype == "int8" and gi.weights[gi.layers[0].weights[0]].dtype == "int8"


def test_unnamed_nodes_get_stable_unique_names():
    g = G()
    a = g.op("Relu", ["x"])
    b = g.op("Relu", [a])
    m = g.model([b])
    m.graph.node[0].name = ""
    m.graph.node[1].name = "dup"
    m.graph.node.append(helper.make_node("Relu", [b], ["c"], name="dup"))
    assert node_names(m) == ["Relu_0", "dup", "dup_2"]


# --------------------------------------------------------------------------------------------------- NPU estimate
def test_utilisation_prefers_3x3_aligned_channels_and_punishes_depthwise():
    spec = chip("rk1808")
    g = G(shape=(1, 64, 16, 16))
    c3 = g.conv("x", 64, 64, k=3)
    c1 = g.conv("x", 64, 64, k=1)
    c5 = g.conv("x", 64, 64, k=5)
    odd = g.conv("x", 64, 20, k=3)
    dw = g.conv("x", 64, 64, k=3, group=64)
    gi = analyze(g.model([c3, c1, c5, odd, dw]), "asymmetric_quantized-u8")
    u = {layer.outputs[0]: conv_utilisation(layer, gi, spec) for layer in gi.layers}
    assert u[c3] > u[c1] > u[c5] > 0
    assert u[odd] == pytest.approx(u[c3] * 20 / 32)  # 20 output channels pay for two lanes of 16
    assert u[dw] < u[c1] / 5


def test_int8_is_faster_than_int16_and_fp16_on_a_compute_bound_conv():
    g = G(shape=(1, 64, 64, 64))
    m = g.model([g.conv("x", 64, 64, k=3)])
    t = {q: estimate_perf(m, "rk1808", q).total_us for q in ("asymmetric_quantized-u8", "dynamic_fixed_point-i16",
                                                             None)}
    assert t["asymmetric_quantized-u8"] < t["dynamic_fixed_point-i16"] < t[None]
    # RK3588: one core by default; three cores split the compute
    one, three = estimate_perf(m, "rk3588", "w8a8"), estimate_perf(m, "rk3588", "w8a8", cores=3)
    assert one.cores == 1 and three.cores == 3 and three.total_us < one.total_us


def test_relu_fuses_into_the_conv_but_sigmoid_only_on_rknpu2():
    g = G()
    c = g.conv("x", 32, 32)
    r = g.op("Relu", [c], name="relu")
    s = g.op("Sigmoid", [g.conv(r, 32, 32)], name="sig")
    m = g.model([s])
    v1, v2 = rows(estimate_perf(m, "rk1808", "asymmetric_quantized-u8")), rows(estimate_perf(m, "rk3588", "w8a8"))
    assert v1["relu"].unit == "fused" and v1["relu"].time_us == 0 and v1["relu"].fused_into == c
    assert v1["sig"].unit == "NPU" and v1["sig"].time_us > 0
    assert v2["sig"].unit == "fused"


def test_silu_is_one_pass_and_a_shared_conv_output_does_not_fuse():
    g = G()
    c = g.conv("x", 32, 32)
    sig = g.op("Sigmoid", [c], name="sig")
    mul = g.op("Mul", [c, sig], name="mul")
    c2 = g.conv(mul, 32, 32)
    r = g.op("Relu", [c2], name="relu")
    m = g.model([g.op("Add", [r, c2], name="add")])
    est = rows(estimate_perf(m, "rk1808", "asymmetric_quantized-u8"))
    assert est["sig"].unit == "fused" and est["sig"].fused_into == "mul"
    assert est["mul"].op_type == "SiLU" and est["mul"].unit == "NPU"
    assert est["relu"].unit == "NPU"  # c2 has two readers: the relu cannot live in the conv's output stage


def test_hardswish_spelled_as_x_times_hardsigmoid_costs_what_the_op_costs():
    """Exports before opset 14 (PaddlePaddle's p2o, old torch) write HardSwish as x * HardSigmoid(x): the estimate
    must not depend on the spelling (PP-OCRv4 det: 150 NPU layers as exported against 102 built, before this)."""
    def graph(spelled):
        g = G()
        c = g.conv("x", 32, 32)
        if spelled:
            hs = g.op("Mul", [c, g.op("HardSigmoid", [c], name="gate", alpha=1 / 6, beta=0.5)], name="hswish")
        else:
            hs = g.op("HardSwish", [c], name="hswish")
        return g.model([g.conv(hs, 32, 32)]), c

    (spelled, conv), (op, _) = graph(True), graph(False)
    a, b = estimate_perf(spelled, "rk3588", "w8a8"), estimate_perf(op, "rk3588", "w8a8")
    assert a.total_us == pytest.approx(b.total_us)
    ra = rows(a)  # RKNPU2 fuses HardSwish into the conv (ConvHardSwish), gate included
    assert ra["hswish"].fused_into == conv and ra["gate"].fused_into == conv
    # RKNPU1 runs HardSigmoid / HardSwish on the board's CPU (targets/chips.py): no fusion to find there
    assert rows(estimate_perf(spelled, "rk1808", "asymmetric_quantized-u8"))["gate"].unit == "CPU"
    # the conv output read by a third layer keeps the HardSwish a layer of its own
    g = G()
    c = g.conv("x", 32, 32)
    hs = g.op("Mul", [c, g.op("HardSigmoid", [c], name="gate")], name="hswish")
    m = g.model([g.op("Add", [hs, c], name="add")])
    assert rows(estimate_perf(m, "rk3588", "w8a8"))["hswish"].unit == "NPU"


def test_a_scalar_scale_and_shift_join_the_layer_before_on_rknpu1_only():
    """x * k + b after a layer (range split's part remap, PP-OCR's learnable affines): on RKNPU1 a different output
    scale and zero point; rknn-toolkit2 compiles each as a layer of its own for RKNPU2."""
    g = G()
    c = g.conv("x", 32, 32)
    sig = g.op("Sigmoid", [c], name="sig")
    mul = g.op("Mul", [c, sig], name="silu")
    k = g.op("Mul", [mul, g.const(2.5)], name="stretch")
    b = g.op("Add", [k, g.const([0.3])], name="shift")
    wide = g.op("Mul", [b, g.const(np.full((1, 32, 1, 1), 2.0))], name="per_channel")  # not a scalar
    m = g.model([wide])
    est = rows(estimate_perf(m, "rk1808", "asymmetric_quantized-u8"))
    assert est["stretch"].unit == "fused" and est["stretch"].fused_into == "silu"
    assert est["shift"].unit == "fused" and est["shift"].fused_into == "silu"
    assert est["per_channel"].unit == "NPU"
    est = rows(estimate_perf(m, "rk3588", "w8a8"))
    assert all(est[k].unit == "NPU" and est[k].time_us > 0 for k in ("stretch", "shift", "per_channel"))


@pytest.mark.parametrize("h,w,fused", [(16, 16, True), (15, 16, False)])
def test_maxpool_2x2_fuses_on_rknpu1_only_with_even_input(h, w, fused):
    g = G(shape=(1, 32, h, w))
    r = g.op("Relu", [g.conv("x", 32, 32)])
    p = g.op("MaxPool", [r], name="pool", kernel_shape=[2, 2], strides=[2, 2])
    m = g.model([g.conv(p, 32, 8)])
    assert (rows(estimate_perf(m, "rk1808", "asymmetric_quantized-u8"))["pool"].unit == "fused") is fused
    assert rows(estimate_perf(m, "rk3588", "w8a8"))["pool"].unit == "NPU"


def test_cpu_fallback_and_in_place_concat():
    g = G()
    a, b = g.conv("x", 32, 16), g.conv("x", 32, 16)
    cat = g.op("Concat", [a, b], name="cat", axis=1)
    odd = g.op("Concat", [g.conv("x", 32, 5), g.conv("x", 32, 3)], name="odd", axis=1)
    flat = g.op("Flatten", [cat], name="flat")
    m = g.model([odd, g.op("CumSum", [flat, g.const(np.array(1, np.int64), np.int64)], name="cumsum")])
    est = rows(estimate_perf(m, "rk3588", "w8a8"))
    assert est["cumsum"].unit == "CPU" and est["cumsum"].time_us >= chip("rk3588").gen.cost.cpu_op_us
    assert est["cat"].unit == "free" and est["odd"].unit == "NPU"
    assert est["flat"].unit == "free"


def _recurrent(op_type, steps, inp=64, hidden=32, dirs=2, batch=1, **attrs):
    """One LSTM / GRU layer over [steps, batch, inp] with its gate weights as initializers."""
    gates = 4 if op_type == "LSTM" else 3
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [steps, batch, inp])
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in
             (("W", (dirs, gates * hidden, inp)), ("R", (dirs, gates * hidden, hidden)),
              ("B", (dirs, 2 * gates * hidden)))]
    node = helper.make_node(op_type, ["x", "W", "R", "B"], ["y"], name="rnn", hidden_size=hidden,
                            direction="bidirectional" if dirs == 2 else "forward", **attrs)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    return helper.make_model(helper.make_graph([node], "g", [x], [y], inits),
                             opset_imports=[helper.make_opsetid("", 17)])


def test_an_lstm_runs_on_the_rknpu2_npu_one_task_per_time_step():
    """rknn-toolkit2 compiles an LSTM into one NPU op (exLSTM): it was costed as a CPU fallback that only streams its
    data, and `check` told the user to take it out of the model. Its steps depend on each other, so its time grows
    with the sequence, each step reading the gate weights again."""
    short, long = (rows(estimate_perf(_recurrent("LSTM", t), "rk3588", "w8a8"))["rnn"] for t in (20, 40))
    assert short.unit == long.unit == "NPU"
    assert short.macs == 20 * (2 * 128 * 64 + 2 * 128 * 32)
    assert 1.9 < long.time_us / short.time_us < 2.1
    assert placement("LSTM", "rknpu2") == "npu" and placement("GRU", "rknpu2") == "cpu"
    gru = rows(estimate_perf(_recurrent("GRU", 2000, inp=256, hidden=256), "rk3588", "w8a8"))["rnn"]
    assert gru.unit == "CPU" and gru.bound == "compute"  # its MACs on the board's CPU, not a stream of its data
    assert gru.time_us >= gru.macs / CPU_MACS_PER_SECOND * 1e6
    assert placement("LSTM", "rknpu1") == "unsupported"  # rknn-toolkit 1.x is not on PyPI: not known


def test_an_lstm_in_a_quantized_build_stores_integer_gate_weights():
    """rknn-toolkit2's exLSTM keeps W and R as int8 in a w8a8 model (its weight table): counted in fp16, the memory
    report doubled them and the estimate, which reads them every step, took twice as long."""
    m = _recurrent("LSTM", 20)
    scale, zero = numpy_helper.from_array(np.float32(0.05), "s"), numpy_helper.from_array(np.int8(0), "z")
    m.graph.initializer.extend([scale, zero])
    m.graph.node.insert(0, helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"))
    m.graph.node.insert(1, helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq"))
    m.graph.node[2].input[0] = "xd"
    built, plain = analyze(m, "w8a8"), analyze(_recurrent("LSTM", 20), None)
    assert built.quantized
    assert {built.weights[w].dtype for w in ("W", "R")} == {"int8"}
    assert {plain.weights[w].dtype for w in ("W", "R")} == {"float16"}


def test_qdq_graph_is_costed_with_its_own_types():
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    g = G(shape=(1, 8, 16, 16))
    m = g.model([g.op("Relu", [g.conv(g.op("Relu", [g.conv("x", 8, 16)]), 16, 16)])])

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": np.random.default_rng(i).random((1, 8, 16, 16), np.float32)} for i in range(2)])

        def get_next(self):
            return next(self.it, None)

    import os
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        src, dst = os.path.join(d, "f.onnx"), os.path.join(d, "q.onnx")
        onnx.save(m, src)
        quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, per_channel=True)
        q = onnx.load(dst)
    gi = analyze(q, None)
    convs = [layer for layer in gi.layers if layer.op_type == "Conv"]
    assert [c.act_dtype for c in convs] == ["uint8", "uint8"] and {c.weight_dtype for c in convs} == {"int8"}
    assert all(gi.weights[c.weights[0]].quant_params == 2 * 16 for c in convs)  # per channel: scale + zp each
    qdq_nodes = {n.name for n in q.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")}
    assert qdq_nodes <= set(gi.node_layer)  # every Q/DQ node is folded into a layer
    est = estimate_perf(q, "rk1808", None)
    assert {r.op_type for r in est.rows} <= {"Conv", "Relu"}
    assert est.total_us == pytest.approx(estimate_perf(m, "rk1808", "asymmetric_quantized-u8").total_us, rel=0.05)
    # onnxruntime runs QLinearConv kernels named '<conv>_token_N': they still land on the model's conv nodes
    host = measure_host_perf(q.SerializeToString(), {"x": np.zeros((1, 8, 16, 16), np.float32)}, runs=2, threads=1)
    assert {c.name for c in convs} <= set(host.per_node_us)


# --------------------------------------------------------------------------------------------------- host + report
def _small_model():
    g = G(shape=(1, 8, 32, 32))
    r = g.op("Relu", [g.conv("x", 8, 16)])
    p = g.op("MaxPool", [r], kernel_shape=[2, 2], strides=[2, 2])
    m = g.model([g.op("Sigmoid", [g.conv(p, 16, 8)])])
    m.graph.node[1].name = ""  # unnamed: reported as Relu_1
    return m, {"x": np.random.default_rng(0).random((1, 8, 32, 32), np.float32)}


def test_host_profile_maps_kernels_back_to_model_node_names():
    m, feeds = _small_model()
    host = measure_host_perf(m.SerializeToString(), feeds, runs=3, threads=1)
    assert host.total_us > 0 and len(host.runs_us) == 3
    assert set(host.per_node_us) <= set(node_names(m))
    first_conv = m.graph.node[0].name
    assert first_conv in host.per_node_us  # the first conv survives any onnxruntime fusion under some name
    assert sum(host.per_node_us.values()) + host.unmapped_us <= 3 * host.total_us
    with pytest.raises(InferenceInputError, match="feeds"):
        measure_host_perf(m.SerializeToString(), {"y": feeds["x"]}, runs=1)


def test_eval_perf_report_prints_totals_and_the_debug_table(capsys, tmp_path):
    m, feeds = _small_model()
    r = eval_perf_report(m, None, "rk1808", "asymmetric_quantized-u8", feeds, perf_debug=True, is_print=True,
                         runs=2, threads=1)
    out = capsys.readouterr().out
    assert "FPS" in out and "Layer" in out and "Top op types" in out
    assert r["npu_estimate"]["fps"] == pytest.approx(1e6 / r["npu_estimate"]["total_us"], rel=1e-3)
    assert r["host_measured"]["total_us"] > 0
    assert [x["name"] for x in r["layers"]] == node_names(m)
    assert len(r["top_op_types"]) <= 5 and r["top_op_types"][0]["time_us"] >= r["top_op_types"][-1]["time_us"]
    assert "Relu_1" in out and f"fused->{m.graph.node[0].name}" in out
    quiet = eval_perf_report(m, None, "rk3588", "w8a8", None, perf_debug=False, is_print=False)
    assert "layers" not in quiet and quiet["host_measured"] is None and capsys.readouterr().out == ""
    png, svg = perf_chart(r, tmp_path / "perf.png"), memory_chart(plan_memory(m, "w8a8"), tmp_path / "mem.svg")
    assert open(png, "rb").read(4) == b"\x89PNG" and b"<svg" in open(svg, "rb").read()
    with pytest.raises(NotSupportedError, match="png"):
        perf_chart(r, tmp_path / "perf.gif")


def test_eval_perf_on_yolox_nano(real_data):
    m = onnx.load(str(real_data("models/yolox_nano_coco.onnx")))
    feeds = {"images": np.random.default_rng(0).random((1, 3, 416, 416), np.float32) * 255}
    r = eval_perf_report(m, None, "rk1808", "asymmetric_quantized-u8", feeds, perf_debug=True, is_print=False,
                         runs=2, threads=1)
    est = r["npu_estimate"]
    assert est["gmacs"] == pytest.approx(0.52, abs=0.03)  # YOLOX-nano @416: ~1.08 GFLOPs
    assert 20 < est["fps"] < 400
    host_layers = sum(x["host_us"] for x in r["layers"])
    assert host_layers > 0.3 * r["host_measured"]["total_us"]  # most kernel time lands on named layers


def test_input_preprocessing_is_folded_into_the_first_conv():
    """The facade's graph: float NHWC raw pixels -> Transpose -> Sub(mean) -> Mul(1/std) -> Conv."""
    g = G(shape=(1, 32, 32, 3))
    t = g.op("Transpose", ["x"], name="to_nchw", perm=[0, 3, 1, 2])
    s = g.op("Sub", [t, g.const(np.full((1, 3, 1, 1), 127.5))], name="mean")
    n = g.op("Mul", [s, g.const(np.full((1, 3, 1, 1), 1 / 58.0))], name="std")
    c = g.conv(n, 3, 16)
    m = g.model([g.op("Relu", [c])])
    est = rows(estimate_perf(m, "rk1808", "asymmetric_quantized-u8"))
    for name in ("to_nchw", "mean", "std"):
        assert est[name].unit == "fused" and est[name].time_us == 0 and est[name].fused_into == c
    plan = plan_memory(m, "asymmetric_quantized-u8")
    assert plan.tensor_buffer[n] == "<input>" and plan.input_bytes == {"x": 32 * 32 * 3}
    assert plan.arena_bytes == 0  # conv + relu write straight into the output buffer


# --------------------------------------------------------------------------------------------------- built models
def _mobile_block(path):
    """NCHW float input -> conv 3x3 + ReLU6 -> depthwise 3x3 + SiLU -> conv 1x1 -> conv 1x1 + ReLU: the layer kinds
    whose QDQ form leaves the conv output float before its activation's quantization point."""
    g = G(shape=(1, 3, 32, 32), seed=1)
    c = g.conv("x", 3, 32)
    r6 = g.op("Clip", [c, g.const(0.0), g.const(6.0)])
    d = g.conv(r6, 32, 32, group=32)
    silu = g.op("Mul", [d, g.op("Sigmoid", [d])])
    p = g.conv(silu, 32, 16, k=1)
    out = g.op("Relu", [g.conv(p, 16, 32, k=1)])
    onnx.save(g.model([out]), str(path))
    return path


@pytest.mark.parametrize("target,dtype", [("rk1808", "asymmetric_quantized-u8"), ("rk3588", "w8a8")])
def test_a_built_int8_model_is_costed_at_the_int8_rate_on_every_path(tmp_path, target, dtype):
    """The user's path: config -> load_onnx -> build(int8) -> eval_perf, and load_rknn -> eval_perf, cost every conv
    as int8 (a DequantizeLinear-fed conv whose activation follows before the quantize step is an int8 conv) and
    agree with the direct estimate of the float ONNX when the build adds no ops."""
    from conftest import write_npy_dataset
    from openrknn.analysis.package_reports import model_facts
    from openrknn.api import RKNN

    src = _mobile_block(tmp_path / "block.onnx")
    dataset = write_npy_dataset(tmp_path, (32, 32, 3), n=4)
    rk = RKNN()
    assert rk.config(mean_values=[[127.5] * 3], std_values=[[64.0] * 3], target_platform=target,
                     range_split=False) == 0
    assert rk.load_onnx(str(src)) == 0 and rk.build(do_quantization=True, dataset=str(dataset)) == 0
    assert rk.init_runtime() == 0
    built = rk.eval_perf(is_print=False)
    model, _, qd = model_facts(rk._package)
    gi = analyze(model, qd)
    convs = [layer for layer in gi.layers if layer.op_type == "Conv"]
    assert len(convs) == 4 and {c.mac_mode for c in convs} == {"int8"}
    assert {gi.tensors[c.outputs[0]].dtype for c in convs} <= {"uint8", "int8"}
    direct = estimate_perf(onnx.load(str(src)), target, dtype)
    assert built["npu_estimate"]["total_us"] == pytest.approx(direct.total_us, rel=0.05)
    rk.export_rknn(str(tmp_path / "m.rknn"))
    back = RKNN()
    assert back.load_rknn(str(tmp_path / "m.rknn")) == 0 and back.init_runtime() == 0
    assert back.eval_perf(is_print=False)["npu_estimate"] == built["npu_estimate"]


def test_a_layer_kept_float_in_a_quantized_graph_stays_fp16():
    """Hybrid: a conv with float weights reading a dequantized tensor and feeding a float reader runs in fp16; a conv
    with quantized weights whose ReLU precedes the quantize step runs in int8."""
    n = helper.make_node
    f32 = TensorProto.FLOAT
    inits = [numpy_helper.from_array(np.asarray(v, dt), k) for k, v, dt in [
        ("s", 0.05, np.float32), ("z", 128, np.uint8), ("ws", 0.01, np.float32), ("wz", 0, np.int8),
        ("wq", np.ones((16, 16, 3, 3)), np.int8), ("wf", np.ones((16, 16, 3, 3)), np.float32),
        ("wf2", np.ones((16, 16, 1, 1)), np.float32)]]
    nodes = [n("QuantizeLinear", ["x", "s", "z"], ["xq"]), n("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             n("DequantizeLinear", ["wq", "ws", "wz"], ["wd"]),
             n("Conv", ["xd", "wd"], ["c_int8"], pads=[1] * 4, name="int8_conv"),
             n("Relu", ["c_int8"], ["r"]), n("QuantizeLinear", ["r", "s", "z"], ["rq"]),
             n("DequantizeLinear", ["rq", "s", "z"], ["rd"]),
             n("Conv", ["rd", "wf"], ["c_float"], pads=[1] * 4, name="float_conv"),
             n("Conv", ["c_float", "wf2"], ["y"], name="float_reader")]
    g = helper.make_graph(nodes, "hybrid", [helper.make_tensor_value_info("x", f32, [1, 16, 8, 8])],
                          [helper.make_tensor_value_info("y", f32, None)], inits)
    gi = analyze(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), None)
    mode = {layer.name: layer.mac_mode for layer in gi.layers}
    assert mode == {"int8_conv": "int8", "Relu_4": "int8", "float_conv": "float16", "float_reader": "float16"}
    assert gi.tensors["c_int8"].dtype == "uint8" and gi.tensors["c_float"].dtype == "float16"


def test_the_float_tail_is_the_boards_cpu_after_the_npu():
    """A quantized graph's layers after its last int8 tensor (an output Sigmoid computed on the host from int8
    logits, the layout ops after it) run on the board's CPU once the NPU is done: rows of unit 'tail', costed at the
    CPU's bandwidth in float32 (the logits read as int8), out of the NPU total. A float graph has no tail."""
    from openrknn.analysis.perf import format_perf_report

    n = helper.make_node
    inits = [numpy_helper.from_array(np.asarray(v, dt), k) for k, v, dt in [
        ("s", 0.05, np.float32), ("z", 128, np.uint8), ("ws", 0.01, np.float32), ("wz", 0, np.int8),
        ("wq", np.ones((16, 16, 3, 3)), np.int8), ("shape", [1, 16, 64], np.int64)]]
    nodes = [n("QuantizeLinear", ["x", "s", "z"], ["xq"]), n("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             n("DequantizeLinear", ["wq", "ws", "wz"], ["wd"]),
             n("Conv", ["xd", "wd"], ["logits"], pads=[1] * 4, name="head"),
             n("QuantizeLinear", ["logits", "s", "z"], ["lq"]), n("DequantizeLinear", ["lq", "s", "z"], ["ld"]),
             n("Sigmoid", ["ld"], ["p"], name="scores"), n("Reshape", ["p", "shape"], ["flat"], name="flat"),
             n("Transpose", ["flat"], ["y"], perm=[0, 2, 1], name="to_rows")]
    g = helper.make_graph(nodes, "tail", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    q = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    est = estimate_perf(q, "rk3588", None)
    by = rows(est)
    assert by["head"].unit == "NPU" and by["scores"].unit == by["to_rows"].unit == "tail"
    cpu = chip("rk3588").gen.cost.cpu_gbps * 1e9
    assert by["scores"].time_us == pytest.approx(1024 * (1 + 4) / cpu * 1e6)   # int8 logits in, float32 out
    assert by["to_rows"].time_us == pytest.approx(1024 * (4 + 4) / cpu * 1e6)
    assert est.tail_us == pytest.approx(by["scores"].time_us + by["to_rows"].time_us)
    assert est.total_us == pytest.approx(sum(r.time_us for r in est.rows if r.unit in ("NPU", "CPU")))
    assert dict(est.by_op_type()).keys() <= {"Conv", "Reshape"}
    # the same graph in float (the NPU's fp16) has no tail: every layer is the NPU's
    f = onnx.ModelProto()
    f.CopyFrom(q)
    keep = [x for x in f.graph.node if x.op_type not in ("QuantizeLinear", "DequantizeLinear")]
    rename = {"xd": "x", "wd": "wf", "ld": "logits"}
    for x in keep:
        x.input[:] = [rename.get(i, i) for i in x.input]
    del f.graph.node[:]
    f.graph.node.extend(keep)
    f.graph.initializer.append(numpy_helper.from_array(np.ones((16, 16, 3, 3), np.float32), "wf"))
    plain = estimate_perf(f, "rk3588", None)
    assert plain.tail_us == 0 and "tail" not in {r.unit for r in plain.rows}
    # eval_perf says it apart from the NPU time
    report = eval_perf_report(q, None, "rk3588", None, None, is_print=False)
    assert report["npu_estimate"]["tail_layers"] == 2
    assert "float tail after the last int8 outputs" in format_perf_report(report)


def test_a_split_part_of_few_channels_pays_for_whole_lanes():
    """Range split cuts a depthwise conv into parts of a few channels (a 1-channel part has group 1): each part
    occupies whole channel lanes, so its MACs run at 1/lane of the full conv's rate."""
    spec = chip("rk3588")
    lane = spec.cost.lane_depthwise
    g = G(shape=(1, lane, 16, 16))
    part = g.op("Slice", ["x", g.const([0], np.int64), g.const([3], np.int64), g.const([1], np.int64)])
    three = g.conv(part, 3, 3, group=3)
    one = g.conv(g.op("Slice", ["x", g.const([0], np.int64), g.const([1], np.int64), g.const([1], np.int64)]), 1, 1)
    full = g.conv("x", lane, lane, group=lane)
    gi = analyze(g.model([three, one, full]), "w8a8")
    u = {layer.outputs[0]: conv_utilisation(layer, gi, spec) for layer in gi.layers if layer.op_type == "Conv"}
    assert u[full] == pytest.approx(spec.cost.util_depthwise)
    assert u[three] == pytest.approx(u[full] * 3 / lane) and u[one] == pytest.approx(u[full] / lane)


@pytest.mark.slow
def test_mobilenet_v2_through_load_pytorch_is_costed_as_the_direct_export(real_data, tmp_path):
    """The issue's path: the real MobileNetV2 .pt -> load_pytorch -> build u8 for rk1808 -> eval_perf. Without the
    range split it must agree with the direct ONNX estimate; the split adds real NPU ops and is costed higher."""
    import io

    import torch

    from openrknn.api import RKNN

    pt = real_data("models/mobilenet_v2_imagenet.pt")
    images = sorted(real_data("images/imagenet").glob("*.*"))[:4]
    dataset = tmp_path / "ds.txt"
    dataset.write_text("".join(f"{p}\n" for p in images))
    buf = io.BytesIO()
    torch.onnx.export(torch.jit.load(str(pt)).eval(), (torch.zeros(1, 3, 224, 224),), buf, dynamo=False,
                      opset_version=17)
    direct = estimate_perf(onnx.load_from_string(buf.getvalue()), "rk1808", "asymmetric_quantized-u8").total_us
    totals = {}
    for split in (False, True):
        rk = RKNN()
        rk.config(mean_values=[[123.675, 116.28, 103.53]], std_values=[[58.395, 57.12, 57.375]],
                  target_platform="rk1808", range_split=split)
        assert rk.load_pytorch(str(pt), input_size_list=[[1, 3, 224, 224]]) == 0
        assert rk.build(do_quantization=True, dataset=str(dataset)) == 0 and rk.init_runtime() == 0
        gi = analyze(onnx.load_from_string(rk._package.model_bytes), None)
        assert {layer.mac_mode for layer in gi.layers if layer.op_type == "Conv"} == {"int8"}
        totals[split] = rk.eval_perf(is_print=False)["npu_estimate"]["total_us"]
    assert totals[False] == pytest.approx(direct, rel=0.05)
    assert totals[True] > totals[False]
