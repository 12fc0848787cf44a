"""Ops added after opset 17 (what torch.onnx.export's default exporter writes since torch 2.9: Gelu, Mish,
GroupNormalization, RMSNormalization, Attention, Col2Im, GridSample's renamed modes) load, build and run as
onnxruntime runs the file; int8 builds treat a Gelu op as the spelled-out GELU an opset-17 exporter writes; the
forms with no opset-17 spelling are refused naming their node and what to do."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import write_samples
from openrknn.api import RKNN

F = TensorProto.FLOAT
n = helper.make_node
rng = np.random.default_rng(0)


def _const(name, value):
    return numpy_helper.from_array(np.asarray(value), name)


def _model(nodes, inputs, inits, opset, out="y"):
    g = helper.make_graph(nodes, "m", [helper.make_tensor_value_info(k, F, s) for k, s in inputs],
                          [helper.make_tensor_value_info(out, F, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _conv(name, cin, cout, x, y, k=3, draw=None):
    draw = draw or rng
    w = _const(name + "_w", draw.normal(0, 0.4, (cout, cin, k, k)).astype(np.float32))
    b = _const(name + "_b", draw.normal(0, 0.2, cout).astype(np.float32))
    return n("Conv", [x, w.name, b.name], [y], name=name, pads=[k // 2] * 4), [w, b]


def activations(opset: int, native: bool) -> onnx.ModelProto:
    """conv -> GELU -> conv -> tanh GELU -> conv -> Mish: as opset-20 ops, or spelled out as opset 17 writes them."""
    nodes, inits, draw = [], [], np.random.default_rng(7)  # the same weights either way
    for k, (cin, cout) in enumerate([(3, 8), (8, 8), (8, 4)]):
        node, ws = _conv(f"conv{k}", cin, cout, "x" if k == 0 else f"a{k - 1}", f"c{k}", draw=draw)
        nodes.append(node)
        inits += ws
    if native:
        nodes += [n("Gelu", ["c0"], ["a0"], name="gelu"), n("Gelu", ["c1"], ["a1"], name="gelu_tanh",
                                                               approximate="tanh"),
                  n("Mish", ["c2"], ["y"], name="mish")]
    else:
        inits += [_const("r2", np.float32(math.sqrt(2.0))), _const("one", np.float32(1.0)),
                  _const("half", np.float32(0.5)), _const("c", np.float32(0.044715)),
                  _const("k", np.float32(math.sqrt(2.0 / math.pi)))]
        nodes += [n("Div", ["c0", "r2"], ["g0"]), n("Erf", ["g0"], ["g1"]), n("Add", ["g1", "one"], ["g2"]),
                  n("Mul", ["c0", "g2"], ["g3"]), n("Mul", ["g3", "half"], ["a0"]),
                  n("Mul", ["c1", "c1"], ["t0"]), n("Mul", ["t0", "c1"], ["t1"]), n("Mul", ["t1", "c"], ["t2"]),
                  n("Add", ["c1", "t2"], ["t3"]), n("Mul", ["t3", "k"], ["t4"]), n("Tanh", ["t4"], ["t5"]),
                  n("Mul", ["c1", "half"], ["t6"]), n("Add", ["t5", "one"], ["t7"]), n("Mul", ["t6", "t7"], ["a1"]),
                  n("Softplus", ["c2"], ["m0"]), n("Tanh", ["m0"], ["m1"]), n("Mul", ["c2", "m1"], ["y"])]
    return _model(nodes, [("x", [1, 3, 16, 16])], inits, opset)


def _float_matches_onnxruntime(path, x, shape=None, rtol=1e-5, atol=1e-5, fmt="nchw"):
    """fmt: how ``x`` is laid out for inference (a 4-D input that is not an image is fed in the model's layout)."""
    rk = RKNN(verbose=False)
    rk.config(target_platform="rk3588")
    assert rk.load_onnx(str(path), input_size_list=[shape or list(x.shape)]) == 0, rk.last_error
    assert rk.build(do_quantization=False) == 0, rk.last_error
    assert rk.init_runtime() == 0, rk.last_error
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = rk.inference(inputs=[x], data_format=fmt)
    assert got is not None, rk.last_error
    np.testing.assert_allclose(got[0], want, rtol=rtol, atol=atol)
    return rk


@pytest.mark.parametrize("opset", [20, 21, 23])
def test_gelu_and_mish_ops_load_and_run_as_onnxruntime_runs_them(tmp_path, opset):
    path = tmp_path / "act.onnx"
    onnx.save(activations(opset, native=True), path)
    rk = _float_matches_onnxruntime(path, rng.normal(0, 1, (1, 3, 16, 16)).astype(np.float32))
    assert any("Gelu x2, Mish x1" in note for note in rk._loaded.notes), rk._loaded.notes


def test_an_int8_build_of_gelu_ops_is_the_build_of_the_spelled_out_model(tmp_path):
    """The quantizer sees the Gelu op as what an opset-17 exporter writes: one activation, the same integers."""
    onnx.save(activations(20, native=True), tmp_path / "native.onnx")
    onnx.save(activations(17, native=False), tmp_path / "spelled.onnx")
    write_samples(tmp_path, [rng.normal(0, 1, (1, 3, 16, 16)).astype(np.float32) for _ in range(4)], name="ds.txt")
    x = rng.normal(0, 1, (1, 3, 16, 16)).astype(np.float32)
    outs = []
    for name in ("native", "spelled"):
        rk = RKNN(verbose=False)
        rk.config(target_platform="rk3588", quantized_dtype="w8a8")
        assert rk.load_onnx(str(tmp_path / f"{name}.onnx")) == 0, rk.last_error
        assert rk.build(do_quantization=True, dataset=str(tmp_path / "ds.txt")) == 0, rk.last_error
        assert rk.init_runtime() == 0
        outs.append(rk.inference(inputs=[x], data_format="nchw")[0])
    np.testing.assert_array_equal(outs[0], outs[1])


@pytest.mark.parametrize("opset", [18, 21])
def test_group_normalization_of_either_form_runs_as_onnxruntime_runs_it(tmp_path, opset):
    """Opset 18 scales each group, opset 21 each channel."""
    scale = rng.normal(1, 0.3, 3 if opset < 21 else 12).astype(np.float32)
    bias = rng.normal(0, 0.3, scale.shape).astype(np.float32)
    conv, ws = _conv("conv", 3, 12, "x", "c")
    nodes = [conv, n("GroupNormalization", ["c", "scale", "bias"], ["y"], name="gn", num_groups=3, epsilon=1e-3)]
    path = tmp_path / "gn.onnx"
    onnx.save(_model(nodes, [("x", [1, 3, 8, 8])], ws + [_const("scale", scale), _const("bias", bias)], opset), path)
    _float_matches_onnxruntime(path, rng.normal(0, 1, (1, 3, 8, 8)).astype(np.float32))


@pytest.mark.parametrize("axis", [-1, 1])
def test_rms_normalization_runs_as_onnxruntime_runs_it(tmp_path, axis):
    scale = rng.normal(1, 0.3, 6 if axis == -1 else (5, 6)).astype(np.float32)
    nodes = [n("RMSNormalization", ["x", "scale"], ["y"], name="rms", axis=axis, epsilon=1e-4)]
    path = tmp_path / "rms.onnx"
    onnx.save(_model(nodes, [("x", [1, 5, 6])], [_const("scale", scale)], 23), path)
    _float_matches_onnxruntime(path, rng.normal(0, 2, (1, 5, 6)).astype(np.float32))


def _attention_model(three_d: bool, causal: int = 0, mask=None, extra=None, heads=(2, 2)) -> onnx.ModelProto:
    """q, k, v made from x by three constant products; x is [1, 5, 8] (3-D) or [1, 2, 5, 4]."""
    shape = [1, 5, 8] if three_d else [1, 2, 5, 4]
    inits, nodes = [], []
    for t in "qkv":
        inits.append(_const(f"w{t}", rng.normal(0, 1, shape[-1]).astype(np.float32)))
        nodes.append(n("Mul", ["x", f"w{t}"], [t]))
    ins = ["q", "k", "v"]
    if mask is not None:
        inits.append(_const("mask", mask))
        ins.append("mask")
    attrs = {"is_causal": causal}
    if three_d:
        attrs.update(q_num_heads=heads[0], kv_num_heads=heads[1], scale=0.3)
    nodes.append(n("Attention", ins + (extra or []), ["y"], name="attn", **attrs))
    return _model(nodes, [("x", shape)], inits, 23)


@pytest.mark.parametrize("three_d, causal, mask", [
    (False, 0, None), (False, 1, None), (True, 0, None), (True, 1, None),
    (False, 0, np.tril(np.ones((5, 5), bool))),
    (True, 0, np.triu(np.full((5, 5), -2.0, np.float32), 1)),
])
def test_attention_runs_as_onnxruntime_runs_it(tmp_path, three_d, causal, mask):
    path = tmp_path / "attn.onnx"
    onnx.save(_attention_model(three_d, causal, mask), path)
    x = rng.normal(0, 1, (1, 5, 8) if three_d else (1, 2, 5, 4)).astype(np.float32)
    _float_matches_onnxruntime(path, x, fmt="nchw" if three_d else "nhwc")


@pytest.mark.parametrize("pads, strides", [([0, 0, 0, 0], [2, 2]), ([1, 1, 1, 1], [1, 1])])
def test_col2im_runs_as_onnxruntime_runs_it(tmp_path, pads, strides):
    """A 9 x 9 image from 2 x 2 blocks at stride 2 leaves its last row and column to no block (zeros)."""
    hw, block = [9, 9], [2, 2]
    nblocks = [(hw[a] + pads[a] + pads[a + 2] - block[a]) // strides[a] + 1 for a in range(2)]
    conv, ws = _conv("conv", 3, 12, "x", "c", k=1)
    nodes = [conv, n("Reshape", ["c", "flat"], ["cols"]),
             n("Col2Im", ["cols", "image", "block"], ["y"], name="fold", pads=pads, strides=strides)]
    inits = ws + [_const("flat", np.array([1, 12, -1], np.int64)), _const("image", np.array(hw, np.int64)),
                  _const("block", np.array(block, np.int64))]
    path = tmp_path / "fold.onnx"
    onnx.save(_model(nodes, [("x", [1, 3] + nblocks)], inits, 18), path)
    _float_matches_onnxruntime(path, rng.normal(0, 1, (1, 3, *nblocks)).astype(np.float32))


@pytest.mark.parametrize("mode", ["linear", "nearest", "cubic"])
def test_an_opset20_grid_sample_runs_as_onnxruntime_runs_it(tmp_path, mode):
    conv, ws = _conv("conv", 3, 2, "x", "c")
    nodes = [conv, n("Tanh", ["c"], ["t"]), n("Transpose", ["t"], ["grid"], perm=[0, 2, 3, 1]),
             n("GridSample", ["x", "grid"], ["y"], name="sample", mode=mode, align_corners=0)]
    path = tmp_path / "grid.onnx"
    onnx.save(_model(nodes, [("x", [1, 3, 8, 8])], ws, 20), path)
    _float_matches_onnxruntime(path, rng.normal(0, 1, (1, 3, 8, 8)).astype(np.float32), atol=1e-4)


def _refused(tmp_path, model, shape):
    onnx.save(model, tmp_path / "m.onnx")
    rk = RKNN(verbose=False)
    assert rk.load_onnx(str(tmp_path / "m.onnx"), input_size_list=[shape]) != 0
    return str(rk.last_error)


def test_an_attention_with_a_cache_is_named_with_what_to_do(tmp_path):
    model = _attention_model(False, extra=["", "past_k", "past_v"])
    model.graph.initializer.extend([_const("past_k", np.zeros((1, 2, 3, 4), np.float32)),
                                    _const("past_v", np.zeros((1, 2, 3, 4), np.float32))])
    words = _refused(tmp_path, model, [1, 2, 5, 4])
    assert "Attention node 'attn'" in words and "cache" in words and "dynamo=False" in words


@pytest.mark.parametrize("causal", [0, 1])
def test_a_grouped_query_attention_runs_as_onnxruntime_runs_it(tmp_path, causal):
    """4 query heads sharing 2 key / value heads (3-D inputs: q [1, 5, 8], k and v [1, 5, 4])."""
    inits = [_const("wq", rng.normal(0, 1, 8).astype(np.float32)),
             _const("wkv", rng.normal(0, 1, (8, 4)).astype(np.float32))]
    nodes = [n("Mul", ["x", "wq"], ["q"]), n("MatMul", ["x", "wkv"], ["k"]), n("Neg", ["k"], ["v"]),
             n("Attention", ["q", "k", "v"], ["y"], name="attn", q_num_heads=4, kv_num_heads=2, is_causal=causal)]
    path = tmp_path / "gqa.onnx"
    onnx.save(_model(nodes, [("x", [1, 5, 8])], inits, 23), path)
    _float_matches_onnxruntime(path, rng.normal(0, 1, (1, 5, 8)).astype(np.float32))


def test_an_attention_whose_heads_do_not_divide_is_named(tmp_path):
    words = _refused(tmp_path, _attention_model(True, heads=(2, 3)), [1, 5, 8])
    assert "Attention node 'attn'" in words and "3 key / value heads among 2 query heads" in words


@pytest.mark.parametrize("mode, given, value", [
    ("linear", "scales", [1, 1, 0.5, 0.5]),      # torch's F.interpolate(scale_factor=0.5, antialias=True)
    ("linear", "sizes", [1, 3, 5, 11]),           # uneven factors, both axes
    ("cubic", "scales", [1, 1, 1, 0.375]),        # one axis
    ("linear", "sizes", [1, 3, 16, 4]),           # one axis grows (the filter only widens where it shrinks)
])
def test_an_antialiased_resize_runs_as_onnxruntime_runs_it(tmp_path, mode, given, value):
    dtype = np.float32 if given == "scales" else np.int64
    ins = ["x", "", "r"] if given == "scales" else ["x", "", "", "r"]
    nodes = [n("Resize", ins, ["y"], name="shrink", mode=mode, antialias=1)]
    path = tmp_path / "aa.onnx"
    onnx.save(_model(nodes, [("x", [1, 3, 8, 8])], [_const("r", np.array(value, dtype))], 18), path)
    rk = _float_matches_onnxruntime(path, rng.normal(0, 1, (1, 3, 8, 8)).astype(np.float32))
    assert any("Resize x1" in note for note in rk._loaded.notes), rk._loaded.notes


def test_an_antialiased_resize_over_chosen_axes_is_named_with_what_to_do(tmp_path):
    nodes = [n("Resize", ["x", "", "scales"], ["y"], name="shrink", mode="linear", antialias=1, axes=[2, 3])]
    model = _model(nodes, [("x", [1, 3, 8, 8])], [_const("scales", np.array([0.5, 0.5], np.float32))], 18)
    words = _refused(tmp_path, model, [1, 3, 8, 8])
    assert "Resize node 'shrink'" in words and "antialias" in words and "cut it before this node" in words


def test_an_op_with_no_way_down_is_named_not_the_converter_assertion(tmp_path):
    """An op of opset 18+ with no spelling here (a bitwise And) names its node, and says how to export instead."""
    nodes = [n("Cast", ["x"], ["i"], to=TensorProto.INT32), n("BitwiseAnd", ["i", "i"], ["b"], name="mask_bits"),
             n("Cast", ["b"], ["y"], to=TensorProto.FLOAT)]
    words = _refused(tmp_path, _model(nodes, [("x", [1, 4])], [], 18), [1, 4])
    assert "BitwiseAnd node 'mask_bits'" in words and "opset_version=17" in words


def test_an_attention_op_is_the_chain_the_quantizer_keeps_whole(tmp_path):
    from openrknn.graph.attention import find_attention_regions
    from openrknn.quant.ir import GraphInfo, normalize
    from openrknn.quant.plan import _dynamic_tensors

    onnx.save(_attention_model(True, causal=1), tmp_path / "attn.onnx")
    rk = RKNN(verbose=False)
    assert rk.load_onnx(str(tmp_path / "attn.onnx"), input_size_list=[[1, 5, 8]]) == 0, rk.last_error
    info = GraphInfo(normalize(rk._loaded.model))
    assert len(find_attention_regions(info.nodes, _dynamic_tensors(info), set(info.output_set), info.const)) == 1


def test_a_reduction_whose_axes_are_a_computation_on_constants_loads(tmp_path):
    """torch.onnx.export(..., optimize=False) leaves a ReduceMean's axes as a Reshape of two Constants (one of them an
    int list attribute): the load evaluates it."""
    nodes = [n("Constant", [], ["axes_flat"], value_ints=[2, 3]), n("Constant", [], ["shape"], value_ints=[2]),
             n("Reshape", ["axes_flat", "shape"], ["axes"]),
             n("ReduceMean", ["x", "axes"], ["y"], name="pool", keepdims=0)]
    path = tmp_path / "pool.onnx"
    onnx.save(_model(nodes, [("x", [1, 3, 8, 8])], [], 18), path)
    _float_matches_onnxruntime(path, rng.normal(0, 1, (1, 3, 8, 8)).astype(np.float32))


def test_a_gelu_inside_an_if_branch_is_written_out_there(tmp_path):
    """The newer ops are found in nested bodies too (an If on an input kept as a graph input, both branches run)."""
    branch = {name: helper.make_graph([n("Gelu", ["x"], [f"y_{name}"], approximate=mode)], name, [],
                                      [helper.make_tensor_value_info(f"y_{name}", F, None)])
              for name, mode in (("then", "none"), ("else", "tanh"))}
    nodes = [n("ReduceMax", ["x"], ["peak"], keepdims=0), n("Greater", ["peak", "zero"], ["positive"]),
             n("If", ["positive"], ["y"], name="choose", then_branch=branch["then"], else_branch=branch["else"])]
    path = tmp_path / "if_gelu.onnx"
    onnx.save(_model(nodes, [("x", [1, 3, 4, 4])], [_const("zero", np.float32(0))], 20), path)
    _float_matches_onnxruntime(path, rng.normal(0, 1, (1, 3, 4, 4)).astype(np.float32))
    _float_matches_onnxruntime(path, -np.abs(rng.normal(0, 1, (1, 3, 4, 4))).astype(np.float32))


def _int4_weights_model(block_size: int = 0) -> onnx.ModelProto:
    """x [1, 16] @ W [16, 8], W dequantized from 4-bit integers: per output column, or in blocks of 8 rows."""
    q = rng.integers(-8, 8, (16, 8))
    scale = rng.uniform(0.05, 0.2, (2, 8) if block_size else (8,)).astype(np.float32)
    w = helper.make_tensor("w_q", TensorProto.INT4, [16, 8], q.ravel().tolist())
    zero = helper.make_tensor("w_zero", TensorProto.INT4, list(scale.shape), np.zeros(scale.size, int).tolist())
    attrs = {"axis": 0, "block_size": block_size} if block_size else {"axis": 1}
    nodes = [n("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"], name="weights", **attrs),
             n("MatMul", ["x", "w"], ["y"])]
    return _model(nodes, [("x", [1, 16])], [w, zero, _const("w_scale", scale)], 21)


def test_block_quantized_four_bit_weights_load_as_the_float_weights_they_make(tmp_path):
    path = tmp_path / "int4_blocks.onnx"
    onnx.save(_int4_weights_model(block_size=8), path)
    rk = _float_matches_onnxruntime(path, rng.normal(0, 1, (1, 16)).astype(np.float32), rtol=1e-6, atol=1e-6)
    assert any("blocked or float-8 weights as float x1" in note for note in rk._loaded.notes), rk._loaded.notes


def test_a_model_onnxruntime_quantized_with_four_bit_weights_keeps_its_integers(tmp_path):
    """quantize_static(weight_type=QInt4) writes opset 21's 4-bit DequantizeLinear: read as the same integers in
    8 bits with the same scales, the build that keeps the file's quantization computes what onnxruntime does."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    draw = np.random.default_rng(3)
    conv, ws = _conv("conv", 3, 8, "x", "c", draw=draw)
    float_path, path = tmp_path / "float.onnx", tmp_path / "int4.onnx"
    model = _model([conv, n("Relu", ["c"], ["y"])], [("x", [1, 3, 8, 8])], ws, 21)
    model.ir_version = 10
    onnx.save(model, float_path)

    class Samples(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": draw.normal(0, 1, (1, 3, 8, 8)).astype(np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(float_path), str(path), Samples(), quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt4, activation_type=QuantType.QUInt8)
    assert any(t.data_type == TensorProto.INT4 for t in onnx.load(str(path)).graph.initializer)
    rk = _float_matches_onnxruntime(path, draw.normal(0, 1, (1, 3, 8, 8)).astype(np.float32), rtol=0, atol=1e-5)
    assert any("4-bit weights as 8-bit integers x1" in note for note in rk._loaded.notes), rk._loaded.notes


def test_activations_on_a_four_bit_grid_are_named_with_what_to_do(tmp_path):
    zero = helper.make_tensor("zero", TensorProto.INT4, [], [0])
    nodes = [n("QuantizeLinear", ["x", "scale", "zero"], ["q"], name="to_int4"),
             n("DequantizeLinear", ["q", "scale", "zero"], ["y"])]
    words = _refused(tmp_path, _model(nodes, [("x", [1, 16])], [zero, _const("scale", np.float32(0.1))], 21), [1, 16])
    assert "QuantizeLinear node 'to_int4'" in words and "QuantType.QInt8" in words
