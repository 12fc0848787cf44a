"""Graph folding (graph/fold.py) and spelled-out activations (graph/activations.py): exact rewrites that leave the
ops the NPU fuses, and the quantizer's plan treating what is left as one fused step."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import ort_run
from openrknn.graph import fold
from openrknn.graph.activations import find_regions
from openrknn.graph.optimize import optimize
from openrknn.quant.ir import GraphInfo, normalize
from openrknn.quant.plan import build_plan

n = helper.make_node


def _model(nodes, inits, out_shape=(1, 4, 6, 6), opset=17, outputs=("y",), in_shape=(1, 3, 6, 6)):
    g = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
                          [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
                          [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _same(a: onnx.ModelProto, b: onnx.ModelProto, shape=(1, 3, 6, 6), atol=1e-5):
    x = np.random.default_rng(0).normal(0, 2, shape).astype(np.float32)
    for u, v in zip(ort_run(a, {"x": x}), ort_run(b, {"x": x})):
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=atol)


def _ops(m):
    return [node.op_type for node in m.graph.node]


def _copy(m):
    c = onnx.ModelProto()
    c.CopyFrom(m)
    return c


RNG = np.random.default_rng(1)
W = RNG.normal(0, 0.5, (4, 3, 3, 3))
B = RNG.normal(0, 0.1, 4)
PER_CH = RNG.uniform(0.5, 2.0, (1, 4, 1, 1))


@pytest.mark.parametrize("chain", [
    [("Mul", PER_CH), ("Add", -PER_CH)],         # batch norm written as a per-channel affine
    [("Mul", np.float32(0.7)), ("Add", np.float32(0.2))],  # a scalar "learnable affine"
    [("Div", PER_CH), ("Sub", PER_CH.reshape(4, 1, 1))],
])
def test_conv_followed_by_constant_scale_and_shift_folds_into_the_conv(chain):
    inits = {"w": W, "b": B}
    nodes = [n("Conv", ["x", "w", "b"], ["c0"], pads=[1, 1, 1, 1])]
    for k, (op, v) in enumerate(chain):
        inits[f"k{k}"] = v
        nodes.append(n(op, [f"c{k}", f"k{k}"], [f"c{k + 1}" if k < len(chain) - 1 else "y"]))
    m = _model(nodes, inits)
    out = _copy(m)
    assert fold.fold_conv_affine(out) == len(chain)
    assert _ops(out) == ["Conv"] and out.graph.node[0].output[0] == "y"
    _same(m, out)


@pytest.mark.parametrize("trans_b,bias,beta", [(1, True, 1.0), (0, True, 0.5), (1, False, 1.0)])
def test_batchnorm_after_a_gemm_folds_into_it(trans_b, bias, beta):
    """A landmark head's Linear -> BatchNorm1d: onnxslim leaves the BatchNorm, which the NPU would run as its own op
    (one more rounding of the head's output); it folds into the Gemm exactly."""
    w = RNG.normal(0, 0.5, (5, 8) if trans_b else (8, 5))
    inits = {"w": w, "g": RNG.uniform(0.05, 2, 5), "be": RNG.normal(0, 1, 5), "mu": RNG.normal(0, 1, 5),
             "var": RNG.uniform(0.1, 3, 5)}
    ins = ["x", "w"] + (["c"] if bias else [])
    if bias:
        inits["c"] = RNG.normal(0, 1, 5)
    m = _model([n("Gemm", ins, ["h"], transB=trans_b, beta=beta, alpha=0.7),
                n("BatchNormalization", ["h", "g", "be", "mu", "var"], ["y"], epsilon=1e-3)], inits, in_shape=(2, 8))
    out = _copy(m)
    assert fold.fold_gemm_batchnorm(out) == 1
    assert _ops(out) == ["Gemm"] and out.graph.node[0].output[0] == "y"
    _same(m, out, shape=(2, 8))
    read_twice = _model([n("Gemm", ["x", "w"], ["h"], transB=trans_b), n("Relu", ["h"], ["r"]),
                         n("BatchNormalization", ["h", "g", "be", "mu", "var"], ["y"])], inits, in_shape=(2, 8),
                        outputs=("y", "r"))
    assert fold.fold_gemm_batchnorm(_copy(read_twice)) == 0


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_bias_and_scale_fold_into_the_gemm(trans_b):
    """MatMul-as-Gemm then BiasAdd (how the TensorFlow loaders write a Dense), a scale and a shift after it: one Gemm
    with the same outputs; a per-row (not per-column) constant or a second reader keeps the ops."""
    w = RNG.normal(0, 0.5, (5, 8) if trans_b else (8, 5))
    inits = {"w": w, "c": RNG.normal(0, 1, (5,)), "b": RNG.normal(0, 1, (1, 5)), "s": RNG.uniform(0.5, 2, (5,)),
             "t": np.float32(0.3)}
    m = _model([n("Gemm", ["x", "w", "c"], ["g"], transB=trans_b, alpha=0.5, beta=2.0), n("Add", ["g", "b"], ["h"]),
                n("Mul", ["s", "h"], ["k"]), n("Sub", ["k", "t"], ["y"])], inits, in_shape=(2, 8))
    out = _copy(m)
    assert fold.fold_gemm_affine(out) == 3
    assert _ops(out) == ["Gemm"] and out.graph.node[0].output[0] == "y"
    _same(m, out, shape=(2, 8))
    per_row = _model([n("Gemm", ["x", "w"], ["g"], transB=trans_b), n("Add", ["g", "r"], ["y"])],
                     {"w": w, "r": RNG.normal(0, 1, (2, 1))}, in_shape=(2, 8))
    assert fold.fold_gemm_affine(_copy(per_row)) == 0
    read_twice = _model([n("Gemm", ["x", "w"], ["g"], transB=trans_b), n("Add", ["g", "c"], ["y"]),
                         n("Relu", ["g"], ["r"])], inits, in_shape=(2, 8), outputs=("y", "r"))
    assert fold.fold_gemm_affine(_copy(read_twice)) == 0
    subtracted_from = _model([n("Gemm", ["x", "w"], ["g"], transB=trans_b), n("Sub", ["c", "g"], ["y"])], inits,
                             in_shape=(2, 8))
    assert fold.fold_gemm_affine(_copy(subtracted_from)) == 0


def test_conv_affine_is_not_folded_where_the_conv_output_is_read_elsewhere_or_broadcast_wider():
    nodes = [n("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), n("Mul", ["c", "k"], ["y"]),
             n("Relu", ["c"], ["r"])]
    m = _model(nodes, {"w": W, "b": B, "k": PER_CH}, outputs=("y", "r"))
    assert fold.fold_conv_affine(_copy(m)) == 0
    spatial = _model([n("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), n("Mul", ["c", "k"], ["y"])],
                     {"w": W, "b": B, "k": RNG.normal(0, 1, (1, 1, 6, 6))})  # varies over space: not a channel scale
    assert fold.fold_conv_affine(_copy(spatial)) == 0


def test_per_channel_scale_before_convs_folds_and_a_shift_only_before_unpadded_ones():
    dw = RNG.normal(0, 0.5, (3, 1, 3, 3))
    pw = RNG.normal(0, 0.5, (4, 3, 1, 1))
    inits = {"s": RNG.uniform(0.5, 2, (1, 3, 1, 1)), "a": RNG.normal(0, 1, (1, 3, 1, 1)), "dw": dw, "pw": pw}
    scaled = _model([n("Mul", ["x", "s"], ["t"]), n("Conv", ["t", "dw"], ["c"], pads=[1, 1, 1, 1], group=3),
                     n("Conv", ["c", "pw"], ["y"])], inits)
    out = _copy(scaled)
    assert fold.fold_input_scale(out) == 1 and _ops(out) == ["Conv", "Conv"]
    _same(scaled, out)
    shifted_padded = _model([n("Add", ["x", "a"], ["t"]), n("Conv", ["t", "dw"], ["y"], pads=[1, 1, 1, 1], group=3)],
                            inits, out_shape=None)
    assert fold.fold_input_scale(_copy(shifted_padded)) == 0  # the padded border would see the shift
    shifted = _model([n("Add", ["x", "a"], ["t"]), n("Conv", ["t", "pw"], ["y"])], inits)
    out = _copy(shifted)
    assert fold.fold_input_scale(out) == 1 and _ops(out) == ["Conv"]
    _same(shifted, out)


def test_a_constant_that_broadcasts_its_input_bigger_is_not_folded():
    """Folding rewrites x * k as a conv reading x: only right where x * k has x's shape. A [1, 3, 1, 1] scale on a
    one-channel input (the product has 3 channels), and a size-1 constant of higher rank (the product gains a
    dimension), change the function if folded."""
    pw = RNG.normal(0, 0.5, (4, 3, 1, 1))
    widened = _model([n("Mul", ["x", "s"], ["t"]), n("Conv", ["t", "pw"], ["y"])],
                     {"s": RNG.uniform(0.5, 2, (1, 3, 1, 1)), "pw": pw}, in_shape=(1, 1, 6, 6))
    assert fold.fold_input_scale(_copy(widened)) == 0
    ranked = _model([n("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), n("Mul", ["c", "k"], ["y"])],
                    {"w": W, "b": B, "k": np.full((1, 1, 1, 1, 1), 0.5)})
    assert fold.fold_conv_affine(_copy(ranked)) == 0


def _hardswish_spellings():
    three, six, zero, sixth = "three", "six", "zero", "sixth"
    return {
        "clip_div": [n("Add", ["c", three], ["a"]), n("Clip", ["a", zero, six], ["cl"]), n("Mul", ["c", "cl"], ["m"]),
                     n("Div", ["m", six], ["y"])],
        "clip_mul_sixth": [n("Add", ["c", three], ["a"]), n("Clip", ["a", zero, six], ["cl"]),
                           n("Mul", ["cl", sixth], ["h"]), n("Mul", ["h", "c"], ["y"])],
        "hardsigmoid": [n("HardSigmoid", ["c"], ["h"], alpha=1 / 6, beta=0.5), n("Mul", ["c", "h"], ["y"])],
    }


@pytest.mark.parametrize("spelling", sorted(_hardswish_spellings()))
@pytest.mark.parametrize("opset", [13, 17])
def test_spelled_out_hardswish_becomes_one_op(spelling, opset):
    consts = {"three": np.float32(3), "six": np.float32(6), "zero": np.float32(0), "sixth": np.float32(1 / 6),
              "w": W, "b": B}
    m = _model([n("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1])] + _hardswish_spellings()[spelling], consts,
               opset=opset)
    out = _copy(m)
    changed = fold.canonical_activations(out)
    want = ["Conv", "HardSwish"] if opset >= 14 else ["Conv", "HardSigmoid", "Mul"]
    if spelling == "hardsigmoid" and opset < 14:
        assert changed == 0  # already the canonical form there
    assert _ops(out) == want
    _same(m, out)
    plan = build_plan(GraphInfo(normalize(out)))
    assert plan.points[-1] == "y" and "c" in plan.internal  # conv + activation: one quantization point


def _gelu(first_mul_half: bool):
    nodes = [n("Div", ["c", "sqrt2"], ["d"]), n("Erf", ["d"], ["e"]), n("Add", ["e", "one"], ["p"])]
    if first_mul_half:
        nodes += [n("Mul", ["c", "half"], ["h"]), n("Mul", ["h", "p"], ["y"])]
    else:
        nodes += [n("Mul", ["c", "p"], ["h"]), n("Mul", ["h", "half"], ["y"])]
    return nodes


@pytest.mark.parametrize("first_mul_half", [False, True])
def test_gelu_below_opset_20_stays_spelled_out_but_is_one_fused_step(first_mul_half):
    consts = {"sqrt2": np.float32(math.sqrt(2)), "one": np.float32(1), "half": np.float32(0.5), "w": W, "b": B}
    m = _model([n("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1])] + _gelu(first_mul_half), consts, opset=17)
    out = _copy(m)
    assert fold.canonical_activations(out) == 0  # no Gelu op before opset 20
    info = GraphInfo(normalize(out))
    regions = find_regions(info.nodes, {k: info.const(k) for k in info.inits if info.const(k).size == 1},
                           set(info.output_set))
    assert [(r.x, r.z, r.name) for r in regions] == [("c", "y", "Gelu")]
    plan = build_plan(info)
    assert plan.points == ["y"] or plan.points[-1] == "y"
    assert {"c", "d", "e", "p", "h"} <= plan.internal and plan.fused["y"] == "Gelu"


def test_jax2tf_tanh_gelu_in_nine_nodes_is_one_fused_step():
    """jax2tf writes the tanh GELU as k * x, x * (k x), x * (x k x) (three Muls for 0.044715 x^3), then x + ..., *
    sqrt(2 / pi), Tanh, 1 + ..., * 0.5, x * ...: nine nodes (magika's file-type model)."""
    consts = {"k": np.float32(0.044715), "c": np.float32(math.sqrt(2 / math.pi)), "one": np.float32(1),
              "half": np.float32(0.5), "w": W, "b": B}
    nodes = [n("Conv", ["x", "w", "b"], ["a"], pads=[1, 1, 1, 1]),
             n("Mul", ["k", "a"], ["m1"]), n("Mul", ["a", "m1"], ["m2"]), n("Mul", ["a", "m2"], ["m3"]),
             n("Add", ["a", "m3"], ["s"]), n("Mul", ["c", "s"], ["ti"]), n("Tanh", ["ti"], ["t"]),
             n("Add", ["one", "t"], ["u"]), n("Mul", ["half", "u"], ["v"]), n("Mul", ["a", "v"], ["y"])]
    info = GraphInfo(normalize(_model(nodes, consts, opset=17)))
    regions = find_regions(info.nodes, {k: info.const(k) for k in info.inits if info.const(k).size == 1},
                           set(info.output_set))
    assert [(r.x, r.z, r.name, len(r.nodes)) for r in regions] == [("a", "y", "GeluTanh", 9)]
    plan = build_plan(info)
    assert plan.points[-1] == "y" and {"a", "m1", "m3", "t", "v"} <= plan.internal


def test_unknown_elementwise_chains_and_visible_intermediates_are_left_alone():
    consts = {"two": np.float32(2), "one": np.float32(1), "w": W, "b": B}
    odd = _model([n("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), n("Mul", ["c", "two"], ["d"]),
                  n("Exp", ["d"], ["e"]), n("Add", ["e", "one"], ["y"])], consts)  # exp(2x) + 1: no NPU activation
    assert fold.canonical_activations(_copy(odd)) == 0
    swish_parts = {"three": np.float32(3), "six": np.float32(6), "zero": np.float32(0), "w": W, "b": B}
    visible = _model([n("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1])] +
                     _hardswish_spellings()["clip_div"], swish_parts, outputs=("y", "cl"))  # an inner tensor is output
    out = _copy(visible)
    assert fold.canonical_activations(out) == 0 and "Clip" in _ops(out)


def test_a_relu_then_a_small_scale_is_not_a_hard_sigmoid():
    """relu(x) / 127.5 (a quantized TFLite's input normalisation once its zero-based range is a ReLU again) is the
    line clip(x / 127.5, 0, 1) on the grid's [-12, 12], but not beyond 127.5: a HardSigmoid must show both clips.
    A HardSigmoid spelled out, clip(x / 5 + 0.5, 0, 1), still is one."""
    consts = {"k": np.float32(1 / 127.5), "fifth": np.float32(0.2), "half": np.float32(0.5), "zero": np.float32(0),
              "one": np.float32(1), "w": W, "b": B}
    conv = n("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1])
    scaled = _model([conv, n("Relu", ["c"], ["r"]), n("Mul", ["r", "k"], ["y"])], consts)
    out = _copy(scaled)
    fold.canonical_activations(out)
    assert "HardSigmoid" not in _ops(out)
    x = RNG.uniform(0, 255, (1, 3, 6, 6)).astype(np.float32)  # conv outputs well past 127.5
    want = ort_run(scaled, {"x": x})[0]
    assert want.max() > 1.5
    np.testing.assert_allclose(ort_run(out, {"x": x})[0], want, rtol=1e-5, atol=1e-5)
    spelled = _model([conv, n("Mul", ["c", "fifth"], ["m"]), n("Add", ["m", "half"], ["a"]),
                      n("Clip", ["a", "zero", "one"], ["y"])], consts)
    info = GraphInfo(normalize(spelled))
    regions = find_regions(info.nodes, {k: info.const(k) for k in info.inits if info.const(k).size == 1},
                           set(info.output_set))
    assert [(r.x, r.z, r.name) for r in regions] == [("c", "y", "HardSigmoid")]


def test_optimize_folds_a_pp_lcnet_style_block_to_conv_plus_hardswish():
    """Conv, per-channel Mul/Add (batch norm), spelled-out HardSwish, scalar affine, conv: the NPU's two fused ops."""
    pw = RNG.normal(0, 0.5, (4, 4, 1, 1))
    consts = {"w": W, "b": B, "bn_s": PER_CH, "bn_b": -PER_CH, "three": np.float32(3), "six": np.float32(6),
              "zero": np.float32(0), "ls": np.float32(0.9), "lb": np.float32(0.05), "pw": pw}
    nodes = [n("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), n("Mul", ["c", "bn_s"], ["c1"]),
             n("Add", ["c1", "bn_b"], ["c2"]), n("Add", ["c2", "three"], ["a"]),
             n("Clip", ["a", "zero", "six"], ["cl"]),
             n("Mul", ["c2", "cl"], ["m"]), n("Div", ["m", "six"], ["hs"]), n("Mul", ["hs", "ls"], ["l1"]),
             n("Add", ["l1", "lb"], ["l2"]), n("Conv", ["l2", "pw"], ["y"])]
    m = _model(nodes, consts)
    out = optimize(_copy(m), 2)
    assert _ops(out) == ["Conv", "HardSwish", "Conv"]
    _same(m, out)


def test_a_loop_body_reading_a_tensor_keeps_it():
    """A folded-away tensor must not be one a sub-graph reads by name."""
    body = helper.make_graph([n("Add", ["c1", "v"], ["v_out"]), n("Identity", ["cond"], ["cond_out"])], "body",
                             [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                              helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
                              helper.make_tensor_value_info("v", TensorProto.FLOAT, None)],
                             [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
                              helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None)])
    nodes = [n("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), n("Mul", ["c", "k"], ["c1"]),
             n("Add", ["c1", "k"], ["y0"]),
             n("Loop", ["trip", "", "y0"], ["y"], body=body)]
    m = _model(nodes, {"w": W, "b": B, "k": PER_CH})
    m.graph.initializer.append(numpy_helper.from_array(np.asarray(2, np.int64), "trip"))
    out = _copy(m)
    fold.fold_conv_affine(out)
    assert "c1" in {o for node in out.graph.node for o in node.output}  # the body reads c1
    _same(m, out)


def _keras_conv1d_chain(second_reader: bool = False):
    """tf2onnx's Keras Conv1D, twice: Conv on [1, C, 1, W] -> Squeeze(axis 2) -> bias Add ([C, 1]) -> Relu ->
    Unsqueeze(axis 2) -> Conv -> Squeeze -> bias Add -> y [1, 4, 6]. ``second_reader``: the first Squeeze's output
    is also a graph output (it must then stay where it is)."""
    w1, w2 = RNG.normal(0, 0.5, (4, 3, 1, 3)), RNG.normal(0, 0.5, (4, 4, 1, 3))
    consts = {"w1": w1, "w2": w2, "b1": RNG.normal(0, 1, (4, 1)), "b2": RNG.normal(0, 1, (4, 1)),
              "axis": np.array([2], np.int64)}
    nodes = [n("Conv", ["x", "w1"], ["c1"], pads=[0, 1, 0, 1]), n("Squeeze", ["c1", "axis"], ["s1"]),
             n("Add", ["s1", "b1"], ["a1"]), n("Relu", ["a1"], ["r1"]), n("Unsqueeze", ["r1", "axis"], ["u1"]),
             n("Conv", ["u1", "w2"], ["c2"], pads=[0, 1, 0, 1]), n("Squeeze", ["c2", "axis"], ["s2"]),
             n("Add", ["s2", "b2"], ["y"])]
    m = _model(nodes, consts, out_shape=(1, 4, 6), in_shape=(1, 3, 1, 6),
               outputs=("y", "s1") if second_reader else ("y",))
    axis = next(t for t in m.graph.initializer if t.name == "axis")
    axis.CopyFrom(numpy_helper.from_array(np.array([2], np.int64), "axis"))  # _model stores constants as float
    return m


def test_keras_conv1d_bias_and_activation_move_next_to_the_conv_and_fold():
    """The Squeeze moves after the bias and ReLU, the bias folds into the conv, and the Squeeze -> Unsqueeze pair
    between the two convs goes: two fused conv layers, one quantization point each (slovorez's morpheme segmenter:
    w8a8 per-character tags 972 -> 993 of 1032, rknn-toolkit2 990)."""
    m = _keras_conv1d_chain()
    out = optimize(_copy(m), 2)
    assert _ops(out) == ["Conv", "Relu", "Conv", "Squeeze"]
    _same(m, out, shape=(1, 3, 1, 6))
    plan = build_plan(GraphInfo(normalize(out)))
    # measured points: the input, the ReLU output, the second conv's output (the squeezed y shares its scale)
    assert len(plan.sources) == 3 and plan.derived == {"y"}
    without = _copy(m)
    before = build_plan(GraphInfo(normalize(without)))
    assert len(before.sources) == 6  # each conv output and its biased sum quantized on their own, and the ReLU


def test_a_squeeze_read_elsewhere_stays():
    m = _keras_conv1d_chain(second_reader=True)
    out = _copy(m)
    fold.sink_squeezes(out)
    assert _ops(out)[:3] == ["Conv", "Squeeze", "Add"]  # s1 is a graph output: nothing moves across it
    _same(m, out, shape=(1, 3, 1, 6))


@pytest.mark.parametrize("group, cin, cout, kernel, dil, pads", [
    (16, 16, 16, (3, 3), (5, 1), (10, 1, 10, 1)),  # GTCRN's dilated depthwise "deconv"
    (1, 4, 6, (3, 3), (1, 1), (1, 1, 1, 1)),
    (2, 4, 6, (3, 2), (2, 1), (2, 0, 1, 1)),        # asymmetric pads, a grouped one
])
def test_a_unit_stride_transposed_conv_becomes_the_conv_it_equals(group, cin, cout, kernel, dil, pads):
    rng = np.random.default_rng(4)
    inits = {"w": rng.normal(0, 0.5, (cin, cout // group) + kernel), "b": rng.normal(0, 0.1, cout)}
    m = _model([n("ConvTranspose", ["x", "w", "b"], ["y"], group=group, dilations=list(dil), pads=list(pads),
                  kernel_shape=list(kernel))], inits, in_shape=(1, cin, 12, 7))
    folded = _copy(m)
    assert fold.unit_stride_transposed_convs(folded) == 1
    assert _ops(folded) == ["Conv"] and {t.name for t in folded.graph.initializer} == {"w_as_conv", "b"}
    _same(m, folded, shape=(1, cin, 12, 7))


def test_a_strided_or_output_padded_transposed_conv_stays():
    rng = np.random.default_rng(5)
    inits = {"w": rng.normal(0, 0.5, (4, 2, 1, 5))}
    for attrs in ({"strides": [1, 2], "pads": [0, 2, 0, 2]}, {"pads": [0, 5, 0, 5]}):  # strided; pads > d(k-1)
        m = _model([n("ConvTranspose", ["x", "w"], ["y"], group=2, kernel_shape=[1, 5], **attrs)], inits,
                   in_shape=(1, 4, 3, 9))
        assert fold.unit_stride_transposed_convs(m) == 0 and _ops(m) == ["ConvTranspose"]
