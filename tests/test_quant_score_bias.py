"""Score bias correction: a sigmoid head's probabilities come out of int8 without a systematic shift."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import write_npy_dataset
from openrknn.quant import QuantOptions, quantize
from openrknn.quant.algorithms.score_bias import channel_delta, sigmoid_heads
from openrknn.quant.dataset import InputSpec, read_dataset
from openrknn.quant.ir import GraphInfo, normalize
from openrknn.quant.plan import build_plan

SPEC = [InputSpec("raw", (1, 8, 8, 3))]


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def test_channel_delta_zeroes_the_mean_probability_error():
    rng = np.random.default_rng(0)
    f = rng.normal(-2.0, 3.0, (4, 2, 16, 16))
    # a constant shift comes back exactly
    num, den = channel_delta(f, f - 0.3)
    np.testing.assert_allclose(num / den, [0.3, 0.3])
    # strong responses flattened (what upstream noise does to a detector's logits): after the shift the mean
    # probability error of each channel is near zero where it was clearly negative
    q = f * 0.9
    num, den = channel_delta(f, q)
    delta = (num / den)[None, :, None, None]
    before = (_sigmoid(q) - _sigmoid(f)).mean((0, 2, 3))
    after = (_sigmoid(q + delta) - _sigmoid(f)).mean((0, 2, 3))
    assert np.all(np.abs(after) < 0.2 * np.abs(before))


def _heads_model() -> onnx.ModelProto:
    """NHWC input -> conv + SiLU ("feat") -> five 1x1 convs: a score head (Sigmoid -> Concat -> output), a gate
    (Sigmoid -> Mul), a raw output, a score head whose probabilities are scaled (not a plain probability), and a
    head whose channels a Split cuts into scores (Sigmoid) and boxes (raw), as NanoDet and PicoDet do."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.normal(0, 0.05, (8, 3, 3, 3)).astype(np.float32), "w0")]
    for k, cout in enumerate((2, 8, 2, 2, 5)):  # the gate has one channel per feature channel
        inits.append(numpy_helper.from_array(rng.normal(0, 0.3, (cout, 8, 1, 1)).astype(np.float32), f"w{k + 1}"))
        inits.append(numpy_helper.from_array(np.zeros(cout, np.float32), f"b{k + 1}"))
    inits.append(numpy_helper.from_array(np.full((1, 2, 1, 1), 2.0, np.float32), "two"))
    inits.append(numpy_helper.from_array(np.array([4, 1], np.int64), "sizes"))
    n = helper.make_node
    nodes = [n("Transpose", ["raw"], ["x"], perm=[0, 3, 1, 2]), n("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1]),
             n("Sigmoid", ["c0"], ["g0"]), n("Mul", ["c0", "g0"], ["feat"])]
    nodes += [n("Conv", ["feat", f"w{k + 1}", f"b{k + 1}"], [f"h{k + 1}"]) for k in range(5)]
    nodes += [n("Sigmoid", ["h1"], ["p1"]), n("Concat", ["p1", "h3"], ["scores"], axis=1),
              n("Sigmoid", ["h2"], ["p2"]), n("Mul", ["p2", "feat"], ["gated"]),
              n("Sigmoid", ["h4"], ["p4"]), n("Mul", ["p4", "two"], ["scaled"]),
              n("Split", ["h5", "sizes"], ["boxes5", "logit5"], axis=1), n("Sigmoid", ["logit5"], ["p5"]),
              n("Reshape", ["p5", "flat"], ["scores5"])]
    inits.append(numpy_helper.from_array(np.array([1, -1], np.int64), "flat"))
    outputs = [helper.make_tensor_value_info(t, TensorProto.FLOAT, None)
               for t in ("scores", "gated", "scaled", "boxes5", "scores5")]
    g = helper.make_graph(nodes, "heads", [helper.make_tensor_value_info("raw", TensorProto.FLOAT, [1, 8, 8, 3])],
                          outputs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_only_convs_whose_probabilities_reach_the_outputs_are_heads():
    model = normalize(_heads_model())
    info = GraphInfo(model)
    plan = build_plan(info)
    everything = {w.node: object() for w in plan.weighted}
    heads = sigmoid_heads(info, plan, everything)
    # the SiLU's conv, the gate, the raw output and the scaled probabilities are not score heads; of the split
    # head only the scores are (its fifth channel, after four box channels)
    assert sorted(heads.values()) == [[("h1", 0, None)], [("logit5", 4, None)]]
    assert sigmoid_heads(info, plan, {}) == {}  # a head left float (hybrid) is not corrected


def _detector(clip: float, moved: bool = False) -> onnx.ModelProto:
    """A score map read from features through a ReLU; the strong responses live in a few wide channels. moved: two
    anchors' scores per cell, carried to the Sigmoid by a Transpose and a Reshape into one [1, cells x 2, 1] output,
    as SCRFD exports its face scores."""
    rng = np.random.default_rng(2)
    w0 = rng.normal(0, 0.02, (8, 3, 3, 3)) * np.array([8, 6, 1, 1, 1, 1, 1, 1])[:, None, None, None]
    heads = 2 if moved else 1
    w1 = np.abs(rng.normal(0, 0.4, (heads, 8, 1, 1)))
    inits = [numpy_helper.from_array(w0.astype(np.float32), "w0"), numpy_helper.from_array(w1.astype(np.float32), "w1"),
             numpy_helper.from_array(np.full(heads, -clip, np.float32), "b1"),
             numpy_helper.from_array(np.array([1, -1, 1], np.int64), "per_anchor")]
    n = helper.make_node
    nodes = [n("Transpose", ["raw"], ["x"], perm=[0, 3, 1, 2]), n("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1]),
             n("Relu", ["c0"], ["feat"]), n("Conv", ["feat", "w1", "b1"], ["logit"])]
    if moved:
        nodes += [n("Transpose", ["logit"], ["logit_hwc"], perm=[0, 2, 3, 1]),
                  n("Reshape", ["logit_hwc", "per_anchor"], ["logit_flat"]), n("Sigmoid", ["logit_flat"], ["p"])]
    else:
        nodes.append(n("Sigmoid", ["logit"], ["p"]))
    out = [1, 128, 1] if moved else [1, 1, 8, 8]
    g = helper.make_graph(nodes, "det", [helper.make_tensor_value_info("raw", TensorProto.FLOAT, [1, 8, 8, 3])],
                          [helper.make_tensor_value_info("p", TensorProto.FLOAT, out)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_a_head_moved_to_its_sigmoid_by_layout_ops_is_a_head():
    """conv -> Transpose -> Reshape -> Sigmoid -> output: the head is the Sigmoid's input, and each of its elements
    is traced back to the conv channel (anchor) it came from."""
    model = normalize(_detector(3.0, moved=True))
    info = GraphInfo(model)
    plan = build_plan(info)
    heads = sigmoid_heads(info, plan, {w.node: object() for w in plan.weighted})
    [(tensor, first, channel_of)] = [parts[0] for parts in heads.values()]
    assert first == 0 and channel_of.shape == (1, 128, 1)
    assert np.array_equal(channel_of.ravel(), np.tile([0, 1], 64))  # cell by cell, anchor 0 then anchor 1
    f = np.random.default_rng(3).normal(0, 2, (1, 128, 1))
    num, den = channel_delta(f, f - np.tile([0.5, -0.25], 64).reshape(1, 128, 1), channel_of)
    assert np.allclose(num / den, [0.5, -0.25])


@pytest.mark.parametrize("dtype,target,moved", [("w8a8", "rk3588", False), ("asymmetric_quantized-u8", "rk1808", False),
                                                ("w8a8", "rk3588", True)])
def test_a_score_map_loses_its_systematic_shift(tmp_path, dtype, target, moved):
    """The feature tensor's range is fixed at a third of what it reaches (as a clipping range choice would): the
    strong responses, which decide the scores, come out low, and bias correction, fitted to the mean logit over
    all positions, moves every position instead. With the correction the mean probability error on held-out
    inputs shrinks; without it, it stays."""
    import onnxruntime as ort

    model = _detector(clip=3.0, moved=moved)
    calib = read_dataset(write_npy_dataset(tmp_path, (1, 8, 8, 3), n=8), SPEC)
    held = [np.random.default_rng(100 + k).uniform(0, 255, (1, 8, 8, 3)).astype(np.float32) for k in range(8)]
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    top = max(float(sess.run(["p"], {"raw": x})[0].max()) for x in held)
    assert top > 0.5  # the map has real detections, not only background

    def feat_max():
        m = onnx.ModelProto()
        m.CopyFrom(model)
        m.graph.output.append(onnx.ValueInfoProto(name="feat"))
        s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        return max(float(s.run(["feat"], f)[0].max()) for f in calib)

    hi = feat_max() / 3.0
    fixed = {"feat": ([hi / 255.0], [0 if dtype != "w8a8" else -128])}

    def error(correct: bool):
        res = quantize(model, calib, QuantOptions(dtype=dtype, target=target, fixed=fixed, range_choice=False,
                                                  score_bias_correction=correct), progress=False)
        q = ort.InferenceSession(res.model.SerializeToString(), providers=["CPUExecutionProvider"])
        err = np.mean([float((q.run(["p"], {"raw": x})[0] - sess.run(["p"], {"raw": x})[0]).mean()) for x in held])
        return err, res.report

    plain, report = error(False)
    corrected, report_on = error(True)
    assert "score_bias_correction" not in report
    assert list(report_on["score_bias_correction"]["layers"]) and report_on["score_bias_correction"]["samples"] == 8
    assert abs(plain) > 0.01  # clipped strong responses: the probabilities are off on average
    assert abs(corrected) < 0.3 * abs(plain)


def _text_detector() -> onnx.ModelProto:
    """A DB text detector's end: features through a ReLU, then a stride-2 ConvTranspose that upsamples the score
    map, then a Sigmoid. About half of the map is text (p > 0.5) on the test inputs."""
    rng = np.random.default_rng(2)
    w0 = rng.normal(0, 0.001, (8, 3, 3, 3)) * np.array([8, 6, 1, 1, 1, 1, 1, 1])[:, None, None, None]
    w1 = np.tile(np.abs(rng.normal(0, 0.4, (8, 1, 1, 1))), (1, 1, 2, 2))
    inits = [numpy_helper.from_array(w0.astype(np.float32), "w0"), numpy_helper.from_array(w1.astype(np.float32), "w1"),
             numpy_helper.from_array(np.array([-2.0], np.float32), "b1")]
    n = helper.make_node
    nodes = [n("Transpose", ["raw"], ["x"], perm=[0, 3, 1, 2]), n("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1]),
             n("Relu", ["c0"], ["feat"]), n("ConvTranspose", ["feat", "w1", "b1"], ["logit"], strides=[2, 2]),
             n("Sigmoid", ["logit"], ["p"])]
    g = helper.make_graph(nodes, "db", [helper.make_tensor_value_info("raw", TensorProto.FLOAT, [1, 8, 8, 3])],
                          [helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, 1, 16, 16])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("dtype,target,zero", [("w8a8", "rk3588", -128), ("asymmetric_quantized-u8", "rk1808", 0)])
def test_a_transposed_conv_head_loses_its_systematic_shift(tmp_path, dtype, target, zero):
    """The features clipped at a third of their range flatten the strong responses: the text probabilities come
    out low on held-out inputs. The ConvTranspose that makes the map is a head like a conv: its bias takes the
    shift, and the mean probability error shrinks."""
    import onnxruntime as ort

    model = _text_detector()
    calib = read_dataset(write_npy_dataset(tmp_path, (1, 8, 8, 3), n=8), SPEC)
    held = [np.random.default_rng(100 + k).uniform(0, 255, (1, 8, 8, 3)).astype(np.float32) for k in range(8)]
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(onnx.ValueInfoProto(name="feat"))
    feat = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    hi = max(float(feat.run(["feat"], f)[0].max()) for f in calib) / 3.0
    assert 0.3 < np.mean([float((sess.run(["p"], {"raw": x})[0] > 0.5).mean()) for x in held]) < 0.7

    def error(correct: bool):
        res = quantize(model, calib, QuantOptions(dtype=dtype, target=target, fixed={"feat": ([hi / 255.0], [zero])},
                                                  range_choice=False, score_bias_correction=correct), progress=False)
        q = ort.InferenceSession(res.model.SerializeToString(), providers=["CPUExecutionProvider"])
        err = np.mean([float((q.run(["p"], {"raw": x})[0] - sess.run(["p"], {"raw": x})[0]).mean()) for x in held])
        return err, res.report.get("score_bias_correction")

    plain, off = error(False)
    corrected, on = error(True)
    assert off is None and list(on["layers"]) == ["ConvTranspose_3"]
    assert plain < -0.01  # systematically low
    assert abs(corrected) < 0.3 * abs(plain)


def test_only_the_score_channels_of_a_head_move(tmp_path):
    """Through a real build: both score heads are measured; the split head's four box channels keep their biases
    whatever the score channel's shift (on these random inputs the samples disagree and it is mostly dropped)."""
    calib = read_dataset(write_npy_dataset(tmp_path, (1, 8, 8, 3)), SPEC)

    def biases(correct: bool):
        res = quantize(_heads_model(), calib, QuantOptions(dtype="w8a8", target="rk3588",
                                                           score_bias_correction=correct), progress=False)
        inits = {t.name: numpy_helper.to_array(t) for t in res.model.graph.initializer}
        return inits["b1__q"], inits["b5__q"], res.report.get("score_bias_correction")

    b1, b5, off = biases(False)
    c1, c5, on = biases(True)
    assert off is None and len(on["layers"]) == 2
    np.testing.assert_array_equal(c5[:4], b5[:4])
    assert set(on["layers"]) == {"Conv_4", "Conv_8"}


def test_a_shift_the_samples_disagree_on_is_shrunk():
    """shift(): what every sample shows is kept; a mean that one sample makes alone is mostly dropped."""
    from openrknn.quant.algorithms.score_bias import shift

    agree = [np.array([[0.2 * w, -0.1 * w], [w, w]]) for w in (1.0, 2.0, 1.5, 1.0)]
    np.testing.assert_allclose(shift(agree), [0.2, -0.1], rtol=1e-9)
    one = [np.array([[0.0], [1.0]])] * 3 + [np.array([[2.0], [1.0]])]  # mean 0.5, from one sample of four
    assert 0.0 <= shift(one)[0] < 0.5 * 0.5
