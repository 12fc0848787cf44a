"""The simulator's exact speed rewrites (runtime/speedups.py) and the wire-level model editor under them: every
output bit for bit as onnxruntime computes the stored graph, on hand-made QDQ graphs and on real builds."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from openrknn.runtime.graph_edit import WireModel, encode_node, encode_tensor
from openrknn.runtime.speedups import NO_QDQ_PROPAGATION, speed_up


def _run(model_bytes, feed, disabled=()):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    extra = {"disabled_optimizers": list(disabled)} if disabled else {}
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"], **extra).run(None, feed)


def _qdq_graph(channels=24, per_channel_zp=True, seed=0):
    """x -> Q/DQ -> depthwise conv (int8 weights, per-channel zero points) -> Q/DQ -> MaxPool 5x5 -> Q/DQ (same
    grid) -> Relu -> output; and a second MaxPool output that is itself a graph output (left alone)."""
    rng = np.random.default_rng(seed)
    init = [numpy_helper.from_array(np.asarray(v, dt), n) for n, v, dt in [
        ("s", 0.03, np.float32), ("z", 120, np.uint8), ("s2", 0.05, np.float32), ("z2", 7, np.uint8),
        ("s2b", 0.05, np.float32), ("z2b", 7, np.uint8),
        ("wq", rng.integers(-128, 128, (channels, 1, 3, 3)), np.int8),
        ("ws", rng.uniform(0.001, 0.01, channels), np.float32),
        ("wz", rng.integers(-30, 30, channels) if per_channel_zp else np.zeros(channels), np.int8)]]
    n = helper.make_node
    nodes = [n("QuantizeLinear", ["x", "s", "z"], ["xq"]), n("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             n("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0),
             n("Conv", ["xd", "wd"], ["c"], pads=[1] * 4, group=channels, name="dw"),
             n("QuantizeLinear", ["c", "s2", "z2"], ["cq"]), n("DequantizeLinear", ["cq", "s2", "z2"], ["cd"]),
             n("MaxPool", ["cd"], ["p"], kernel_shape=[5, 5], pads=[2] * 4, name="pool"),
             n("QuantizeLinear", ["p", "s2b", "z2b"], ["pq"]), n("DequantizeLinear", ["pq", "s2b", "z2b"], ["pd"]),
             n("Relu", ["pd"], ["y"]),
             n("MaxPool", ["cd"], ["y2"], kernel_shape=[3, 3], pads=[1] * 4, name="pool_out")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 20, 20])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, 20, 20]),
                           helper.make_tensor_value_info("y2", TensorProto.FLOAT, [1, channels, 20, 20])], init)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)])


def test_an_untouched_model_serializes_to_the_same_bytes():
    raw = _qdq_graph().SerializeToString()
    wm = WireModel(raw)
    assert not wm.changed and wm.serialize() == raw
    assert [n.op_type for n in wm.nodes][:4] == ["QuantizeLinear", "DequantizeLinear", "DequantizeLinear", "Conv"]
    assert wm.nodes[3].int_attrs == {"group": 24} and wm.array("wq").dtype == np.int8
    np.testing.assert_array_equal(wm.array("ws"), numpy_helper.to_array(_qdq_graph().graph.initializer[7]))


def test_encoded_tensors_and_nodes_read_back_with_onnx():
    arr = np.arange(-6, 6, dtype=np.int8).reshape(3, 4)
    t = onnx.TensorProto()
    t.ParseFromString(encode_tensor("w", arr))
    assert t.name == "w" and np.array_equal(numpy_helper.to_array(t), arr)
    node = WireModel(_qdq_graph().SerializeToString()).nodes[3]
    out = onnx.NodeProto()
    out.ParseFromString(encode_node(node, inputs=["a", "b"], outputs=["o"], int_attrs={"group": 3}))
    assert list(out.input) == ["a", "b"] and list(out.output) == ["o"] and out.name == "dw"
    assert {a.name: helper.get_attribute_value(a) for a in out.attribute}["group"] == 3
    assert {a.name: helper.get_attribute_value(a) for a in out.attribute}["pads"] == [1, 1, 1, 1]
    # int32_data storage (exporters that do not write raw_data) reads too
    legacy = helper.make_tensor("z", TensorProto.INT8, [3], [-1, 0, 5])
    m = _qdq_graph()
    m.graph.initializer.append(legacy)
    assert WireModel(m.SerializeToString()).array("z").tolist() == [-1, 0, 5]


@pytest.mark.parametrize("channels", [24, 7, 48])
def test_rewrites_keep_every_output_bit_for_bit(channels):
    model = _qdq_graph(channels)
    raw = model.SerializeToString()
    fast = speed_up(raw)
    assert fast.applied["float max pooling"] == 1  # the pool whose output is a graph output stays
    assert fast.applied.get("grouped depthwise (per-channel weight zero points)") == 1
    assert fast.disabled_optimizers == list(NO_QDQ_PROPAGATION)
    rewritten = onnx.load_from_string(fast.model_bytes)
    onnx.checker.check_model(rewritten)
    ops = [n.op_type for n in rewritten.graph.node]
    assert ops.count("QuantizeLinear") == 2 and ops.count("DequantizeLinear") == 3
    conv = next(n for n in rewritten.graph.node if n.name == "dw")
    group = {a.name: helper.get_attribute_value(a) for a in conv.attribute}["group"]
    assert 1 <= group < channels and channels % group == 0
    for seed in range(3):
        feed = {"x": np.random.default_rng(seed).normal(0, 2, (1, channels, 20, 20)).astype(np.float32)}
        for got, want in zip(_run(fast.model_bytes, feed, fast.disabled_optimizers), _run(raw, feed)):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("channels, zero", [(3, 0), (5, 0), (8, 0), (5, 9)])
def test_a_small_depthwise_conv_runs_as_one_dense_group_bit_for_bit(channels, zero):
    """Range split leaves depthwise parts of 1-8 channels, on which onnxruntime's depthwise kernel pays per pixel:
    one dense group (each channel's weights on its own input, a zero weight, its zero point, on the others) gives
    the same integer sums. A uniform nonzero weight zero point (u8 per-tensor weights) fills the others."""
    model = _qdq_graph(channels, per_channel_zp=False)
    wz = next(t for t in model.graph.initializer if t.name == "wz")
    wz.CopyFrom(numpy_helper.from_array(np.full(channels, zero, np.int8), "wz"))
    raw = model.SerializeToString()
    fast = speed_up(raw)
    assert fast.applied.get("small depthwise as a dense conv") == 1
    assert "grouped depthwise (per-channel weight zero points)" not in fast.applied
    conv = next(n for n in onnx.load_from_string(fast.model_bytes).graph.node if n.name == "dw")
    assert {a.name: helper.get_attribute_value(a) for a in conv.attribute}["group"] == 1
    for seed in range(3):
        feed = {"x": np.random.default_rng(seed).normal(0, 2, (1, channels, 20, 20)).astype(np.float32)}
        for got, want in zip(_run(fast.model_bytes, feed, fast.disabled_optimizers), _run(raw, feed)):
            np.testing.assert_array_equal(got, want)


def test_nothing_changes_where_no_rule_applies():
    plain = _qdq_graph(per_channel_zp=False)
    del plain.graph.node[6:10]  # no pooling chain, uniform weight zero points
    plain.graph.node.append(helper.make_node("Relu", ["cd"], ["y"]))
    plain.graph.node.append(helper.make_node("Relu", ["cd"], ["y2"]))
    raw = plain.SerializeToString()
    fast = speed_up(raw)
    assert fast.applied == {} and fast.model_bytes == raw and fast.disabled_optimizers == []
    assert speed_up(b"not a model").model_bytes == b"not a model"


@pytest.mark.parametrize("dtype,method", [("asymmetric_quantized-u8", "channel"), ("w8a8", "channel")])
def test_the_simulator_runs_a_built_model_as_the_stored_graph(tmp_path, dtype, method):
    from conftest import write_npy_dataset
    from openrknn.api import RKNN
    from openrknn.runtime.simulator import Simulator

    n = helper.make_node
    rng = np.random.default_rng(3)
    init = [numpy_helper.from_array(rng.normal(0, 0.3, (16, 3, 3, 3)).astype(np.float32), "w1"),
            numpy_helper.from_array(rng.normal(0, 0.5, (16, 1, 3, 3)).astype(np.float32), "w2"),
            numpy_helper.from_array(rng.normal(0, 0.2, (8, 16, 1, 1)).astype(np.float32), "w3")]
    nodes = [n("Conv", ["x", "w1"], ["a"], pads=[1] * 4), n("Relu", ["a"], ["r"]),
             n("Conv", ["r", "w2"], ["d"], pads=[1] * 4, group=16), n("Relu", ["d"], ["dr"]),
             n("MaxPool", ["dr"], ["p"], kernel_shape=[5, 5], pads=[2] * 4), n("Conv", ["p", "w3"], ["y"])]
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], init)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    rk = RKNN()
    assert rk.config(mean_values=[[123.675, 116.28, 103.53]], std_values=[[50.0] * 3], target_platform="rk1808"
                     if dtype.startswith("asym") else "rk3588", quantized_dtype=dtype, quantized_method=method) == 0
    assert rk.load_onnx(str(tmp_path / "m.onnx")) == 0
    assert rk.build(do_quantization=True, dataset=str(write_npy_dataset(tmp_path, (16, 16, 3), n=3))) == 0
    pkg = rk._package
    sim = Simulator(pkg.model_bytes, pkg.metadata, threads=1)
    assert "float max pooling" in sim.rewrites
    assert ("grouped depthwise (per-channel weight zero points)" in sim.rewrites) == dtype.startswith("asym")
    # the first conv pads, so the mean stays a subtraction of its own: run as a 1x1 conv
    assert sim.rewrites.get("mean subtraction as a 1x1 conv") == 1
    for seed in range(3):
        img = np.random.default_rng(seed).integers(0, 256, (1, 16, 16, 3), dtype=np.uint8)
        want = _run(pkg.model_bytes, {pkg.metadata["inputs"][0]["name"]: img.astype(np.float32)})
        np.testing.assert_array_equal(sim.run([img])[0], want[0])
    # fractional feeds too (inputs_pass_through and float data_type feed them)
    name = pkg.metadata["inputs"][0]["name"]
    fast = speed_up(pkg.model_bytes, {name: pkg.metadata["inputs"][0]["shape"]})
    for seed in range(3):
        feed = {name: np.random.default_rng(seed).uniform(-20, 280, (1, 16, 16, 3)).astype(np.float32)}
        np.testing.assert_array_equal(_run(fast.model_bytes, feed, fast.disabled_optimizers)[0],
                                      _run(pkg.model_bytes, feed)[0])
    # without the stated input shape, or with one that does not give the mean's channels, no rewrite
    assert "mean subtraction as a 1x1 conv" not in speed_up(pkg.model_bytes).applied
    assert "mean subtraction as a 1x1 conv" not in speed_up(pkg.model_bytes, {name: [1, 16, 16, 4]}).applied


def _conv_pair_graph(channels: int, per_tensor_weights: bool, seed: int = 0, shared: bool = False,
                     dw_zero_points: bool = False):
    """x -> Q/DQ -> dense conv (int8 weights, int32 bias) -> Relu -> Q/DQ -> depthwise conv of `channels` -> Relu
    -> Q/DQ -> output: range split's part of a MobileNetV2 block. per_tensor_weights: one weight scale and a
    nonzero weight zero point (u8 per-layer), with the bias scale stored per channel, as our quantizer writes it.
    shared: the dense conv's quantized output also feeds a second output (the rule must leave it).
    dw_zero_points: the depthwise conv's weights have a zero point per channel (u8 per-channel builds)."""
    rng = np.random.default_rng(seed)
    xs, s1, s2 = np.float32(0.02), np.float32(0.03), np.float32(0.05)

    def weights(prefix, shape, in_scale):
        c = shape[0]
        if per_tensor_weights:
            ws, wz = np.float32(0.01), np.int8(3)
            q = rng.integers(-128, 128, shape).astype(np.int8)
            bscale = np.full(c, np.float32(in_scale * ws), np.float32)
        else:
            ws, wz = rng.uniform(0.002, 0.02, c).astype(np.float32), np.zeros(c, np.int8)
            q = rng.integers(-127, 128, shape).astype(np.int8)
            bscale = (np.float32(in_scale) * ws).astype(np.float32)
        return [numpy_helper.from_array(np.asarray(v), f"{prefix}{k}") for k, v in
                (("q", q), ("s", ws), ("z", wz), ("bq", rng.integers(-500, 500, c).astype(np.int32)), ("bs", bscale),
                 ("bz", np.zeros(c, np.int32)))]

    init = [numpy_helper.from_array(np.asarray(v), n) for n, v in
            (("xs", xs), ("xz", np.uint8(128)), ("s1", s1), ("z1", np.uint8(0)), ("s2", s2), ("z2", np.uint8(0)))]
    init += weights("a", (channels, 6, 1, 1), xs) + weights("d", (channels, 1, 3, 3), s1)
    if dw_zero_points:
        dz = next(t for t in init if t.name == "dz")
        dz.CopyFrom(numpy_helper.from_array(rng.integers(-20, 20, channels).astype(np.int8), "dz"))
    n = helper.make_node
    axis = {} if per_tensor_weights else {"axis": 0}
    nodes = [n("QuantizeLinear", ["x", "xs", "xz"], ["xq"]), n("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             n("DequantizeLinear", ["aq", "as", "az"], ["aw"], **axis),
             n("DequantizeLinear", ["abq", "abs", "abz"], ["ab"], axis=0),
             n("Conv", ["xd", "aw", "ab"], ["a"], name="dense"), n("Relu", ["a"], ["ar"]),
             n("QuantizeLinear", ["ar", "s1", "z1"], ["aq8"]), n("DequantizeLinear", ["aq8", "s1", "z1"], ["ad"]),
             n("DequantizeLinear", ["dq", "ds", "dz"], ["dw"], **axis),
             n("DequantizeLinear", ["dbq", "dbs", "dbz"], ["db"], axis=0),
             n("Conv", ["ad", "dw", "db"], ["d"], pads=[1] * 4, group=channels, name="dw"), n("Relu", ["d"], ["dr"]),
             n("QuantizeLinear", ["dr", "s2", "z2"], ["dq8"]), n("DequantizeLinear", ["dq8", "s2", "z2"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, 14, 14])]
    if shared:
        nodes.append(n("DequantizeLinear", ["aq8", "s1", "z1"], ["y2"]))
        outputs.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, [1, channels, 14, 14]))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 14, 14])],
                          outputs, init)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)])


def _unfused_convs(model_bytes: bytes, disabled=()) -> int:
    """Convs onnxruntime did not turn into integer QLinearConvs (a float conv would sum in another order)."""
    import os
    import tempfile

    so = ort.SessionOptions()
    so.log_severity_level = 3
    with tempfile.TemporaryDirectory() as d:
        so.optimized_model_filepath = os.path.join(d, "opt.onnx")
        ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"], disabled_optimizers=list(disabled))
        return sum(node.op_type == "Conv" for node in onnx.load(so.optimized_model_filepath).graph.node)


@pytest.mark.parametrize("channels, per_tensor", [(12, False), (28, False), (91, False), (28, True)])
def test_a_depthwise_conv_gets_channels_up_to_a_multiple_of_8_bit_for_bit(channels, per_tensor):
    """onnxruntime's integer depthwise kernel is slow on channel counts that are not multiples of 8 (range split's
    parts): both convs get zero-weight channels and a Slice drops them; the integer convs stay integer convs."""
    raw = _conv_pair_graph(channels, per_tensor).SerializeToString()
    fast = speed_up(raw)
    assert fast.applied.get("depthwise channels padded to a multiple of 8") == 1
    rewritten = onnx.load_from_string(fast.model_bytes)
    onnx.checker.check_model(rewritten, full_check=True)
    conv = next(n for n in rewritten.graph.node if n.name == "dw")
    assert {a.name: helper.get_attribute_value(a) for a in conv.attribute}["group"] == channels + (-channels % 8)
    assert [n.op_type for n in rewritten.graph.node].count("Slice") == 1
    assert _unfused_convs(raw) == _unfused_convs(fast.model_bytes) == 0
    for seed in range(3):
        feed = {"x": np.random.default_rng(seed).normal(0, 2, (1, 6, 14, 14)).astype(np.float32)}
        got, want = _run(fast.model_bytes, feed, fast.disabled_optimizers), _run(raw, feed)
        assert got[0].shape == (1, channels, 14, 14)
        np.testing.assert_array_equal(got[0], want[0])


@pytest.mark.parametrize("channels", [28, 37, 191])
def test_a_depthwise_with_per_channel_zero_points_is_padded_to_16_then_grouped_bit_for_bit(channels):
    """Per-channel weight zero points take the grouped form, whose groups must divide the channel count and run
    fastest at 16: a count that is not a multiple of 16 (28; a prime like range split's part of 191 channels, which
    no group size divides) is padded to one first, then grouped in 16s."""
    raw = _conv_pair_graph(channels, False, dw_zero_points=True).SerializeToString()
    fast = speed_up(raw)
    assert fast.applied.get("depthwise channels padded to a multiple of 8") == 1
    assert fast.applied.get("grouped depthwise (per-channel weight zero points)") == 1
    conv = next(n for n in onnx.load_from_string(fast.model_bytes).graph.node if n.name == "dw")
    assert {a.name: helper.get_attribute_value(a) for a in conv.attribute}["group"] == (channels + 15) // 16
    assert _unfused_convs(fast.model_bytes) == 0
    for seed in range(3):
        feed = {"x": np.random.default_rng(seed).normal(0, 2, (1, 6, 14, 14)).astype(np.float32)}
        np.testing.assert_array_equal(_run(fast.model_bytes, feed, fast.disabled_optimizers)[0], _run(raw, feed)[0])


def test_channels_are_not_padded_where_the_padded_tensor_is_read_elsewhere():
    raw = _conv_pair_graph(28, False, shared=True).SerializeToString()
    assert "depthwise channels padded to a multiple of 8" not in speed_up(raw).applied
    raw = _conv_pair_graph(32, False).SerializeToString()  # already a multiple of 8
    assert speed_up(raw).applied == {}


@pytest.mark.parametrize("dtype", ["w8a8", "asymmetric_quantized-u8"])
def test_a_built_model_with_odd_depthwise_channels_runs_as_the_stored_graph(tmp_path, dtype):
    """Through the API: a conv of 20 channels into a depthwise conv, as a user's model has it; the simulator pads
    the pair (or range split's wide part of it) and gives the stored graph's outputs."""
    from conftest import write_npy_dataset
    from openrknn.api import RKNN
    from openrknn.runtime.simulator import Simulator

    n = helper.make_node
    rng = np.random.default_rng(5)
    init = [numpy_helper.from_array(rng.normal(0, 0.3, (20, 3, 3, 3)).astype(np.float32), "w1"),
            numpy_helper.from_array(rng.normal(0, 0.1, 20).astype(np.float32), "b1"),
            numpy_helper.from_array(rng.normal(0, 0.5, (20, 1, 3, 3)).astype(np.float32), "w2"),
            numpy_helper.from_array(rng.normal(0, 0.2, (8, 20, 1, 1)).astype(np.float32), "w3")]
    nodes = [n("Conv", ["x", "w1", "b1"], ["a"], pads=[1] * 4), n("Relu", ["a"], ["r"]),
             n("Conv", ["r", "w2"], ["d"], pads=[1] * 4, group=20), n("Relu", ["d"], ["dr"]),
             n("Conv", ["dr", "w3"], ["y"])]
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], init)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    rk = RKNN()
    assert rk.config(mean_values=[[127.5] * 3], std_values=[[64.0] * 3], quantized_dtype=dtype,
                     target_platform="rk3588" if dtype == "w8a8" else "rk1808", range_split=False) == 0
    assert rk.load_onnx(str(tmp_path / "m.onnx")) == 0
    assert rk.build(do_quantization=True, dataset=str(write_npy_dataset(tmp_path, (16, 16, 3), n=3))) == 0
    pkg = rk._package
    sim = Simulator(pkg.model_bytes, pkg.metadata, threads=1)
    assert sim.rewrites.get("depthwise channels padded to a multiple of 8") == 1
    for seed in range(3):
        img = np.random.default_rng(seed).integers(0, 256, (1, 16, 16, 3), dtype=np.uint8)
        want = _run(pkg.model_bytes, {pkg.metadata["inputs"][0]["name"]: img.astype(np.float32)})
        np.testing.assert_array_equal(sim.run([img])[0], want[0])
