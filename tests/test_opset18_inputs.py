"""A model of opset 18 with what silero-vad's export holds: a scalar input (the sample rate), an RNN state whose
first dim is not a batch, an If whose branch reads a main-graph initializer, and opset 18's Pad, Split
(num_outputs) and ReduceMean (axes as an input). It loads (also with inputs= naming every input), builds and runs
as onnxruntime runs the original."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import write_samples
from openrknn.api import RKNN

C, T = 4, 8
n = helper.make_node


def vad_like() -> onnx.ModelProto:
    f = TensorProto.FLOAT
    inits = [numpy_helper.from_array(np.array([-1], np.int64), "last"),  # read only inside the If branch
             numpy_helper.from_array(np.array(16000, np.int64), "rate"),
             numpy_helper.from_array(np.array([0, 0, 1, 0, 0, 1], np.int64), "pads"),
             numpy_helper.from_array(np.array(0.5, np.float32), "half")]
    inits.append(numpy_helper.from_array(np.array([1, C, T], np.int64), "shape3"))
    # each branch ends in a Reshape by a main-graph initializer: shape inference loses the If's output dims there
    then = helper.make_graph([n("ReduceMean", ["x", "last"], ["m"], keepdims=1), n("Sub", ["x", "m"], ["d"]),
                              n("Reshape", ["d", "shape3"], ["y_then"])],
                             "then", [], [helper.make_tensor_value_info("y_then", f, None)])
    other = helper.make_graph([n("Mul", ["x", "half"], ["h"]), n("Reshape", ["h", "shape3"], ["y_else"])], "else", [],
                              [helper.make_tensor_value_info("y_else", f, None)])
    nodes = [n("Equal", ["sr", "rate"], ["is16k"]),
             n("If", ["is16k"], ["y"], then_branch=then, else_branch=other),
             n("Pad", ["y", "pads"], ["p"]),                          # [N, C, T + 2]
             n("Split", ["p"], ["a", "b"], axis=2, num_outputs=2),    # two halves of T / 2 + 1
             n("Add", ["a", "b"], ["out"]),
             n("Mul", ["state", "half"], ["state_n"])]
    g = helper.make_graph(nodes, "vad_like",
                          [helper.make_tensor_value_info("x", f, ["N", C, T]),
                           helper.make_tensor_value_info("sr", TensorProto.INT64, []),
                           helper.make_tensor_value_info("state", f, [2, "N", C])],
                          [helper.make_tensor_value_info("out", f, None),
                           helper.make_tensor_value_info("state_n", f, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    d = tmp_path_factory.mktemp("op18")
    onnx.save(vad_like(), d / "vad.onnx")
    rng = np.random.default_rng(0)
    write_samples(d, [(rng.normal(0, 1, (1, C, T)).astype(np.float32),
                       np.array(16000 if k % 2 else 8000, np.int64),  # both branches calibrated
                       rng.normal(0, 1, (2, 1, C)).astype(np.float32)) for k in range(4)],
                  prefixes=("x", "sr", "s"), name="ds.txt")
    return d


@pytest.mark.parametrize("named_inputs", [False, True])
@pytest.mark.parametrize("dtype", [None, "w8a8"])
def test_a_vad_like_opset18_model_loads_builds_and_runs(model_path, named_inputs, dtype):
    rk = RKNN(verbose=False)
    rk.config(target_platform="rk3588", **({"quantized_dtype": dtype} if dtype else {}))
    kw = {"inputs": ["x", "sr", "state"]} if named_inputs else {}
    assert rk.load_onnx(str(model_path / "vad.onnx"), input_size_list=[[1, C, T], [], [2, 1, C]], **kw) == 0, \
        rk.last_error
    assert rk.build(do_quantization=dtype is not None, dataset=str(model_path / "ds.txt")) == 0, rk.last_error
    assert rk.init_runtime() == 0, rk.last_error
    ref = ort.InferenceSession(str(model_path / "vad.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    for rate in (16000, 8000):  # both branches of the If
        x, state = rng.normal(0, 1, (1, C, T)).astype(np.float32), rng.normal(0, 1, (2, 1, C)).astype(np.float32)
        want = ref.run(None, {"x": x, "sr": np.array(rate, np.int64), "state": state})
        got = rk.inference(inputs=[x, np.array(rate), state], data_format="nchw")
        assert got is not None, rk.last_error
        for w, g in zip(want, got):
            if dtype is None:
                np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
            else:  # 20 values a step of 0.02 apart: one step of rounding each is what int8 costs here
                assert np.dot(w.ravel(), g.ravel()) / np.linalg.norm(w) / np.linalg.norm(g) > 0.95
    rk.release()


def test_a_scalar_input_takes_one_value(model_path):
    rk = RKNN(verbose=False)
    rk.config(target_platform="rk3588")
    rk.load_onnx(str(model_path / "vad.onnx"), input_size_list=[[1, C, T], [], [2, 1, C]])
    rk.build(do_quantization=False)
    rk.init_runtime()
    x, state = np.zeros((1, C, T), np.float32), np.zeros((2, 1, C), np.float32)
    assert rk.inference(inputs=[x, np.array([16000, 8000]), state], data_format="nchw") is None
    assert "'sr' is a scalar" in str(rk.last_error)
    assert rk.load_onnx(str(model_path / "vad.onnx"), input_size_list=[[1, C, T], [], [3, 1, C]]) == -1
    # the state's fixed first dim is 2: 3 cannot run (below 4-D a first dim is not read as a batch)
    assert "gives [3, 1, 4] for input 'state'" in str(rk.last_error) and "[2, 'N', 4]" in str(rk.last_error)


def test_a_cut_keeps_the_initializers_an_if_branch_reads(model_path):
    """onnx's extractor keeps only the initializers the kept nodes name; the If's branch reads 'last' by itself."""
    rk = RKNN(verbose=False)
    rk.config(target_platform="rk3588")
    assert rk.load_onnx(str(model_path / "vad.onnx"), inputs=["x", "sr"], outputs=["out"],
                        input_size_list=[[1, C, T], []]) == 0, rk.last_error
    assert rk.build(do_quantization=False) == 0 and rk.init_runtime() == 0
    x = np.random.default_rng(2).normal(0, 1, (1, C, T)).astype(np.float32)
    want = ort.InferenceSession(str(model_path / "vad.onnx"), providers=["CPUExecutionProvider"]).run(
        ["out"], {"x": x, "sr": np.array(16000, np.int64), "state": np.zeros((2, 1, C), np.float32)})[0]
    np.testing.assert_allclose(rk.inference(inputs=[x, np.array(16000)])[0], want, rtol=1e-5, atol=1e-6)


def test_the_written_file_records_output_shapes_inference_cannot_follow(model_path, tmp_path):
    """Shape inference stops at the If: the build runs the graph once for its outputs' shapes, so export_rknn's
    file passes the package checks and `openrknn run` reads it."""
    from openrknn.cli import main

    rk = RKNN(verbose=False)
    rk.config(target_platform="rk3588")
    rk.load_onnx(str(model_path / "vad.onnx"), input_size_list=[[1, C, T], [], [2, 1, C]])
    assert rk.build(do_quantization=False) == 0
    assert rk.export_rknn(str(tmp_path / "vad.rknn")) == 0, rk.last_error
    rk2 = RKNN(verbose=False)
    assert rk2.load_rknn(str(tmp_path / "vad.rknn")) == 0
    assert [o["shape"] for o in rk2._package.metadata["outputs"]] == [[1, C, T // 2 + 1], [2, 1, C]]
    args = ",".join(str(model_path / f) for f in ("x0.npy", "sr0.npy", "s0.npy"))
    assert main(["run", str(tmp_path / "vad.rknn"), args, "--out", str(tmp_path / "o")]) == 0
    assert np.load(tmp_path / "o" / "x0+sr0+s0_out0.npy").shape == (1, C, T // 2 + 1)


@pytest.mark.parametrize("pad, words", [
    ({"inputs": ["x", "pads6", "", "ax"]}, "pads only some axes"),
    ({"inputs": ["x", "pads6"], "mode": "wrap"}, "mode 'wrap'"),
])
def test_a_pad_with_no_opset17_form_is_named(tmp_path, pad, words):
    f = TensorProto.FLOAT
    inits = [numpy_helper.from_array(np.array([0, 0, 1, 0, 0, 1], np.int64), "pads6"),
             numpy_helper.from_array(np.array([2], np.int64), "ax")]
    if words.startswith("pads only"):
        inits[0] = numpy_helper.from_array(np.array([1, 1], np.int64), "pads6")
    node = n("Pad", pad["inputs"], ["y"], **({"mode": pad["mode"]} if "mode" in pad else {}))
    g = helper.make_graph([node], "pad", [helper.make_tensor_value_info("x", f, [1, C, T])],
                          [helper.make_tensor_value_info("y", f, None)], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)]), tmp_path / "pad.onnx")
    rk = RKNN(verbose=False)
    assert rk.load_onnx(str(tmp_path / "pad.onnx")) == -1
    assert words in str(rk.last_error) and "'Pad" in str(rk.last_error)


@pytest.mark.parametrize("reduction", ["max", "min"])
def test_a_scatter_max_is_named_with_what_to_do(tmp_path, reduction):
    """minimol's graph network pools node features with ScatterElements reduction='max' (opset 18): no opset-17 form
    exists for onnx's converter to step down to (its assertion was the whole message), so the load names the node
    and says to cut before it."""
    f = TensorProto.FLOAT
    inits = [numpy_helper.from_array(np.array([[0, 1, 0, 1]], np.int64), "slots")]
    node = n("ScatterElements", ["base", "slots", "x"], ["y"], name="pool", axis=1, reduction=reduction)
    g = helper.make_graph([node], "scatter", [helper.make_tensor_value_info("base", f, [1, 2]),
                                               helper.make_tensor_value_info("x", f, [1, 4])],
                          [helper.make_tensor_value_info("y", f, [1, 2])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "scatter.onnx")
    ort.InferenceSession(str(tmp_path / "scatter.onnx"), providers=["CPUExecutionProvider"])  # onnxruntime runs it
    rk = RKNN(verbose=False)
    assert rk.load_onnx(str(tmp_path / "scatter.onnx")) == -1
    assert "ScatterElements node 'pool'" in str(rk.last_error) and "outputs=[...]" in str(rk.last_error)


def _lens_model() -> onnx.ModelProto:
    """A front end's pattern (whisper's in onnx-asr): a lengths input read only by a Shape, and an output that is
    constant once the shapes are fixed."""
    f = TensorProto.FLOAT
    inits = [numpy_helper.from_array(np.full((1, 1, 3), 0.5, np.float32), "w")]
    nodes = [n("Unsqueeze", ["x", "one"], ["x3"]), n("Conv", ["x3", "w"], ["c"], pads=[1, 1]),
             n("Shape", ["lens"], ["sh"]), n("Cast", ["sh"], ["count"], to=TensorProto.FLOAT)]
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "one"))
    g = helper.make_graph(nodes, "lens", [helper.make_tensor_value_info("x", f, ["N", 16]),
                                          helper.make_tensor_value_info("lens", TensorProto.INT64, ["N"])],
                          [helper.make_tensor_value_info("c", f, None),
                           helper.make_tensor_value_info("count", f, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("dtype", [None, "w8a8"])
def test_an_input_only_shapes_read_stays_and_a_constant_output_survives_int8(tmp_path, dtype):
    onnx.save(_lens_model(), tmp_path / "lens.onnx")
    rng = np.random.default_rng(3)
    write_samples(tmp_path, [(rng.normal(0, 1, (1, 16)).astype(np.float32), np.array([16], np.int64))
                             for _ in range(4)], prefixes=("x", "l"), name="ds.txt")
    rk = RKNN(verbose=False)
    rk.config(target_platform="rk3588", **({"quantized_dtype": dtype} if dtype else {}))
    assert rk.load_onnx(str(tmp_path / "lens.onnx"), input_size_list=[[1, 16], [1]]) == 0, rk.last_error
    assert rk.build(do_quantization=dtype is not None, dataset=str(tmp_path / "ds.txt")) == 0, rk.last_error
    assert [m["name"] for m in rk._package.metadata["inputs"]] == ["x", "lens"]  # lens kept, though unread
    assert rk.init_runtime() == 0
    x = rng.normal(0, 1, (1, 16)).astype(np.float32)
    want = ort.InferenceSession(str(tmp_path / "lens.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"x": x, "lens": np.array([16], np.int64)})
    got = rk.inference(inputs=[x, np.array([16])])
    assert got is not None, rk.last_error
    np.testing.assert_array_equal(got[1], want[1])  # the constant output, exactly
    tol = 1e-5 if dtype is None else 0.05
    np.testing.assert_allclose(got[0], want[0], atol=tol)


def _yolo26_like(value_type=TensorProto.FLOAT) -> onnx.ModelProto:
    """What an Ultralytics YOLO26 export of opset 20 holds around its head: a ConstantOfShape of opset 20 (its
    anchors' offsets), a Split of opset 18 into given sizes, a Sigmoid score branch."""
    f = TensorProto.FLOAT
    inits = [numpy_helper.from_array(np.array([1, 2, 6], np.int64), "zshape"),
             numpy_helper.from_array(np.array([2, 4], np.int64), "sizes")]
    value = helper.make_tensor("v", value_type, [1], [0.5] if value_type == TensorProto.FLOAT else [0])
    nodes = [n("Split", ["x", "sizes"], ["box", "cls"], axis=1),
             n("ConstantOfShape", ["zshape"], ["half"], value=value),
             n("Add", ["box", "half"], ["box_c"]),
             n("Sigmoid", ["cls"], ["score"]),
             n("Concat", ["box_c", "score"], ["out"], axis=1)]
    g = helper.make_graph(nodes, "yolo26_like", [helper.make_tensor_value_info("x", f, ["N", 6, 6])],
                          [helper.make_tensor_value_info("out", f, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)])


def test_an_opset20_constant_of_shape_loads_and_runs_as_onnxruntime_runs_it(tmp_path):
    path = tmp_path / "y26.onnx"
    onnx.save(_yolo26_like(), path)
    rk = RKNN(verbose=False)
    rk.config(target_platform="rk3588")
    assert rk.load_onnx(str(path), input_size_list=[[1, 6, 6]]) == 0, rk.last_error
    assert rk.build(do_quantization=False) == 0, rk.last_error
    assert rk.init_runtime() == 0
    x = np.random.default_rng(2).normal(0, 1, (1, 6, 6)).astype(np.float32)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = rk.inference(inputs=[x], data_format="nchw")[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_an_opset20_constant_of_shape_of_a_new_type_is_named(tmp_path):
    path = tmp_path / "y26_bf16.onnx"
    onnx.save(_yolo26_like(TensorProto.BFLOAT16), path)
    rk = RKNN(verbose=False)
    assert rk.load_onnx(str(path), input_size_list=[[1, 6, 6]]) != 0
    assert "ConstantOfShape node" in str(rk.last_error) and "BFLOAT16" in str(rk.last_error)


def _time_major_gru(T_name="input_dim_0") -> onnx.ModelProto:
    """madmom's exports (opset 18): [T, F] spectrogram frames, time first, into a GRU over T, a dense layer and a
    sigmoid per frame."""
    f, F, Hd = TensorProto.FLOAT, 6, 5
    rng = np.random.default_rng(9)
    inits = [numpy_helper.from_array(np.array([1], np.int64), "ax1"),
             numpy_helper.from_array((rng.standard_normal((1, 3 * Hd, F)) * .4).astype(np.float32), "W"),
             numpy_helper.from_array((rng.standard_normal((1, 3 * Hd, Hd)) * .4).astype(np.float32), "R"),
             numpy_helper.from_array((rng.standard_normal((Hd, 1)) * .5).astype(np.float32), "dense")]
    nodes = [n("Unsqueeze", ["x", "ax1"], ["x3"]),                        # [T, 1, F]
             n("GRU", ["x3", "W", "R"], ["y"], hidden_size=Hd),          # [T, 1, 1, Hd]
             n("Squeeze", ["y", "ax1"], ["y2"]),                          # [T, 1, Hd]
             n("Squeeze", ["y2", "ax1"], ["y3"]),                         # [T, Hd]
             n("MatMul", ["y3", "dense"], ["logit"]), n("Sigmoid", ["logit"], ["out"])]
    g = helper.make_graph(nodes, "madmom_like", [helper.make_tensor_value_info("x", f, [T_name, F])],
                          [helper.make_tensor_value_info("out", f, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("dtype", [None, "w8a8"])
def test_time_major_features_take_their_length_as_the_first_dim(tmp_path, dtype):
    T, F = 20, 6
    path = tmp_path / "gru.onnx"
    onnx.save(_time_major_gru(), path)
    rng = np.random.default_rng(3)
    frames = [np.abs(rng.normal(0, 1, (T, F))).astype(np.float32) for _ in range(5)]
    write_samples(tmp_path, [(x,) for x in frames[:4]], prefixes=("x",), name="ds.txt")
    rk = RKNN(verbose=False)
    rk.config(target_platform="rk3588", **({"quantized_dtype": dtype} if dtype else {}))
    assert rk.load_onnx(str(path), input_size_list=[[T, F]]) == 0, rk.last_error
    assert rk.build(do_quantization=dtype is not None, dataset=str(tmp_path / "ds.txt")) == 0, rk.last_error
    assert rk.init_runtime() == 0
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": frames[4]})[0]
    got = rk.inference(inputs=[frames[4]], data_format="nchw")[0]
    assert got.shape == want.shape == (T, 1)
    if dtype is None:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    else:
        assert np.abs(got - want).max() < 0.05
