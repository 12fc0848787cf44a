"""load_onnx(input_initial_val=...) as rknn-toolkit2 takes it: an input fixed to a constant. A model that branches on
a setting (silero-vad: an If on its int64 sample-rate input, whose other branch cannot run at the chosen chunk
size) loads with the setting fixed, keeps only the branch taken (nested Ifs on shapes too), and quantizes the
network inside it."""

from __future__ import annotations

import inspect

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import write_samples
from openrknn.api import RKNN
from openrknn.convert import load_onnx
from openrknn.errors import ModelLoadError
from openrknn.package_info import quant_counts

C, T = 4, 16
n = helper.make_node
F = TensorProto.FLOAT


def branchy() -> onnx.ModelProto:
    """x [1, C, T], sr (int64 scalar), state [2, 1, C] -> out, state_n. sr == 16000: a Conv + Relu, then an If on
    the Relu output's length (a Shape, which is static once the input size is fixed) scaling by 2 or 3. Otherwise:
    a Reshape to twice the elements, which fails at every input size (silero's 8 kHz branch at a 16 kHz chunk)."""
    rng = np.random.default_rng(7)
    inits = [numpy_helper.from_array(np.array(16000, np.int64), "rate"),
             numpy_helper.from_array(rng.normal(0, 0.5, (C, C, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array(0.5, np.float32), "half")]
    inner_then = helper.make_graph([n("Mul", ["r", "two"], ["y2"])], "times2", [],
                                   [helper.make_tensor_value_info("y2", F, None)],
                                   [numpy_helper.from_array(np.array(2.0, np.float32), "two")])
    inner_else = helper.make_graph([n("Mul", ["r", "three"], ["y3"])], "times3", [],
                                   [helper.make_tensor_value_info("y3", F, None)],
                                   [numpy_helper.from_array(np.array(3.0, np.float32), "three")])
    then = helper.make_graph(
        [n("Conv", ["x", "w"], ["c"], pads=[1, 1]), n("Relu", ["c"], ["r"]),
         n("Shape", ["r"], ["rs"]), n("Gather", ["rs", "axis2"], ["len"]), n("Equal", ["len", "t"], ["full"]),
         n("If", ["full"], ["y_then"], then_branch=inner_then, else_branch=inner_else)],
        "then", [], [helper.make_tensor_value_info("y_then", F, None)],
        [numpy_helper.from_array(np.array(2, np.int64), "axis2"), numpy_helper.from_array(np.array(T, np.int64), "t")])
    other = helper.make_graph([n("Reshape", ["x", "twice"], ["y_else"])], "else", [],
                              [helper.make_tensor_value_info("y_else", F, None)],
                              [numpy_helper.from_array(np.array([1, 2 * C, T], np.int64), "twice")])
    nodes = [n("Equal", ["sr", "rate"], ["is16k"]),
             n("If", ["is16k"], ["out"], then_branch=then, else_branch=other, name="by_rate"),
             n("Mul", ["state", "half"], ["state_n"])]
    g = helper.make_graph(nodes, "branchy",
                          [helper.make_tensor_value_info("x", F, [1, C, "T"]),
                           helper.make_tensor_value_info("sr", TensorProto.INT64, []),
                           helper.make_tensor_value_info("state", F, [2, 1, C])],
                          [helper.make_tensor_value_info("out", F, None),
                           helper.make_tensor_value_info("state_n", F, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("branchy")
    onnx.save(branchy(), d / "m.onnx")
    rng = np.random.default_rng(0)
    write_samples(d, [(rng.normal(0, 1, (1, C, T)).astype(np.float32), rng.normal(0, 1, (2, 1, C)).astype(np.float32))
                      for _ in range(4)], prefixes=("x", "s"), name="ds.txt")
    return d


SIZES = [[1, C, T], [], [2, 1, C]]
FIXED = [None, np.array(16000), None]


def test_without_the_setting_the_load_says_which_input_to_fix(model_dir, rknn_log, logged_errors):
    rk = RKNN(verbose=False)
    assert rk.load_onnx(str(model_dir / "m.onnx"), input_size_list=SIZES) == -1
    msg = logged_errors(rknn_log)[-1]
    assert "'sr'" in msg and "input_initial_val=[None, np.array(VALUE), None]" in msg


def test_the_fixed_setting_keeps_only_the_branch_taken_nested_ifs_included(model_dir):
    loaded = load_onnx(model_dir / "m.onnx", input_size_list=SIZES, input_initial_val=FIXED)
    graph = loaded.model.graph
    assert [i.name for i in graph.input] == ["x", "state"]
    assert not [nd for nd in graph.node if nd.op_type == "If"]
    assert [nd.op_type for nd in graph.node if nd.op_type in ("Conv", "Relu", "Reshape")] == ["Conv", "Relu"]
    assert any("2 If node(s)" in note and "by_rate (then branch)" in note for note in loaded.notes)
    assert any("'sr' fixed to the constant [16000]" in note for note in loaded.notes)


@pytest.mark.parametrize("dtype", [None, "w8a8"])
def test_the_model_runs_as_onnxruntime_runs_it_with_the_setting(model_dir, dtype):
    rk = RKNN(verbose=False)
    assert rk.config(target_platform="rk3588", **({"quantized_dtype": dtype} if dtype else {})) == 0
    # rknn-toolkit2's positional order: model, inputs, input_size_list, input_initial_val, outputs
    assert rk.load_onnx(str(model_dir / "m.onnx"), None, SIZES, FIXED) == 0, rk.last_error
    assert rk.build(do_quantization=dtype is not None, dataset=str(model_dir / "ds.txt")) == 0, rk.last_error
    assert rk.init_runtime() == 0, rk.last_error
    ref = ort.InferenceSession(str(model_dir / "m.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    x, state = rng.normal(0, 1, (1, C, T)).astype(np.float32), rng.normal(0, 1, (2, 1, C)).astype(np.float32)
    want = ref.run(None, {"x": x, "sr": np.array(16000, np.int64), "state": state})
    got = rk.inference(inputs=[x, state], data_format="nchw")
    if dtype is None:
        for w, g in zip(want, got):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
    else:
        # the network inside the branch is quantized: its conv weight (the quantizer does not enter If bodies)
        assert np.corrcoef(want[0].ravel(), np.asarray(got[0]).ravel())[0, 1] > 0.995
        counts = quant_counts(rk._package.metadata["quantization"]["tensors"])
        assert counts["weights"] == 1 and counts["activations"] >= 2, counts
    rk.release()


def test_the_signature_is_rknn_toolkit2s():
    assert list(inspect.signature(RKNN.load_onnx).parameters) == ["self", "model", "inputs", "input_size_list",
                                                                   "input_initial_val", "outputs"]


@pytest.mark.parametrize("values,words", [
    ([None, np.array(16000)], "input_initial_val has 2 entries but the model has 3 inputs"),
    ([None, np.array([16000, 8000]), None], "has shape [2] but the input's shape is []"),
    ([None, 16000.5, None], "give whole numbers"),
    ([None, "fast", None], "is not a int64 array"),
    ([np.zeros((1, C, T)), np.array(16000), np.zeros((2, 1, C))], "leaves the model nothing to feed"),
    (np.array(16000), "give one entry per input"),
])
def test_a_bad_initial_value_is_named(model_dir, values, words):
    with pytest.raises(ModelLoadError, match=None) as e:
        load_onnx(model_dir / "m.onnx", input_size_list=SIZES, input_initial_val=values)
    assert words in str(e.value)


def test_a_one_element_input_takes_a_plain_number(tmp_path):
    g = helper.make_graph([n("Mul", ["x", "gain"], ["y"])], "gain",
                          [helper.make_tensor_value_info("x", F, [1, 4]),
                           helper.make_tensor_value_info("gain", F, [1])],
                          [helper.make_tensor_value_info("y", F, [1, 4])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "g.onnx")
    rk = RKNN(verbose=False)
    assert rk.load_onnx(str(tmp_path / "g.onnx"), input_initial_val=[None, 2.5]) == 0, rk.last_error
    assert rk.build(do_quantization=False) == 0 and rk.init_runtime() == 0
    x = np.arange(4, dtype=np.float32)[None]
    np.testing.assert_allclose(rk.inference(inputs=[x], data_format="nchw")[0], x * 2.5)


def test_a_dynamic_dim_error_shows_this_models_size_list(model_dir, rknn_log, logged_errors):
    rk = RKNN(verbose=False)
    assert rk.load_onnx(str(model_dir / "m.onnx")) == -1
    assert "input_size_list=[[1, 4, T], [], [2, 1, 4]]" in logged_errors(rknn_log)[-1]


def test_input_initial_val_is_for_onnx_only(tmp_path):
    from openrknn.convert import load_model

    (tmp_path / "m.tflite").write_bytes(b"\0" * 16)
    with pytest.raises(ModelLoadError, match="ONNX models only"):
        load_model(tmp_path / "m.tflite", input_initial_val=[np.array(1)])


def test_openrknn_convert_takes_input_initial_val_from_its_yaml(model_dir, tmp_path, capsys):
    import yaml

    from openrknn.cli import main
    from openrknn.package import read_package

    cfg = tmp_path / "c.yml"
    cfg.write_text(yaml.safe_dump({"model": str(model_dir / "m.onnx"), "output": str(tmp_path / "m.rknn"),
                                   "input_size_list": SIZES, "input_initial_val": [None, 16000, None],
                                   "config": {"target_platform": "rk3588"}}))
    assert main(["convert", str(cfg)]) == 0
    pkg = read_package(tmp_path / "m.rknn")
    assert [i["name"] for i in pkg.metadata["inputs"]] == ["x", "state"]
    capsys.readouterr()
    assert main(["info", str(tmp_path / "m.rknn")]) == 0  # the file says what its load fixed
    assert "input 'sr' fixed to the constant [16000]" in capsys.readouterr().out


def test_a_scalar_shape_for_an_input_with_dimensions_names_its_position(model_dir):
    """silero-vad's op18 file orders its inputs (input, sr, state); [] given third is for the 3-D state."""
    with pytest.raises(ModelLoadError, match=r"entry 3 is \[\] \(a scalar\), but input 3 of the model has 3 dim"):
        load_onnx(model_dir / "m.onnx", input_size_list=[[1, C, T], [2, 1, C], []])


def test_a_float_scale_that_sizes_the_output_is_named_and_fixing_it_builds(tmp_path, rknn_log, logged_errors):
    """onnx-cv-graph's resize: a [1] float input is the Resize's scale factor, so the output's size is the input's
    value. The check's zeros make the Resize fail; the message names the input and input_initial_val fixes it."""
    g = helper.make_graph([n("Concat", ["one", "one", "scale", "scale"], ["scales"], axis=0),
                           n("Resize", ["x", "", "scales"], ["y"], mode="linear", name="resize")], "resize",
                          [helper.make_tensor_value_info("x", F, [1, 3, 8, 12]),
                           helper.make_tensor_value_info("scale", F, [1])],
                          [helper.make_tensor_value_info("y", F, None)],
                          [numpy_helper.from_array(np.ones(1, np.float32), "one")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "r.onnx")
    rk = RKNN(verbose=False)
    assert rk.load_onnx(str(tmp_path / "r.onnx")) == -1
    msg = logged_errors(rknn_log)[-1]
    assert "node 'resize' (Resize)" in msg and "'scale'" in msg and "input_initial_val=[None, np.array(VALUE)]" in msg
    assert rk.load_onnx(str(tmp_path / "r.onnx"), input_initial_val=[None, np.array([0.5], np.float32)]) == 0
    assert rk.build(do_quantization=False) == 0 and rk.init_runtime() == 0
    x = np.random.default_rng(1).random((1, 3, 8, 12), np.float32)
    want = ort.InferenceSession(str(tmp_path / "r.onnx")).run(None, {"x": x, "scale": np.array([0.5], np.float32)})[0]
    got = rk.inference(inputs=[x], data_format="nchw")[0]
    assert got.shape == (1, 3, 4, 6)
    np.testing.assert_allclose(got, want, atol=1e-6)
