"""Loaders: load_pytorch (TorchScript only, shapes with or without batch, clear errors for torch.save files) and
load_onnx (opsets 7 and newer, initializers listed as inputs, dynamic dims, sub-graph cuts, shape checks)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from openrknn.api import RKNN
from openrknn.errors import ModelLoadError
from openrknn.frontends import OPSET, normalize_size_list
from openrknn.frontends.onnx import load_onnx


def _float_run(rknn: RKNN, x_nchw: np.ndarray):
    """Feed a float NCHW tensor to a model built without mean/std (so the graph sees it unchanged)."""
    return rknn.inference([x_nchw], data_type="float32", data_format="nchw")


def _built(model_path, loader="onnx", **load_kw) -> RKNN:
    rknn = RKNN()
    ret = rknn.load_onnx(str(model_path), **load_kw) if loader == "onnx" else rknn.load_pytorch(str(model_path),
                                                                                                **load_kw)
    assert ret == 0
    assert rknn.build(do_quantization=False) == 0
    assert rknn.init_runtime() == 0
    return rknn


# ---------------------------------------------------------------- input_size_list forms


@pytest.mark.parametrize("given, expected", [
    ([[3, 416, 416]], [[1, 3, 416, 416]]),
    ([[1, 3, 416, 416]], [[1, 3, 416, 416]]),
    ([3, 416, 416], [[1, 3, 416, 416]]),  # a single shape without the outer list
    ([[3, 8, 8], [1, 8, 8]], [[1, 3, 8, 8], [1, 1, 8, 8]]),
])
def test_normalize_size_list_with_and_without_batch(given, expected):
    assert normalize_size_list(given) == expected


def test_a_sequence_inputs_first_dim_is_taken_as_given():
    # time-major [T, F] features (madmom's RNNs): T is not a batch; an image's first dim still is
    assert normalize_size_list([[100, 80]], ranks=[2], first_dims=[None]) == [[100, 80]]
    assert normalize_size_list([[100, 1, 80]], ranks=[3], first_dims=[None]) == [[100, 1, 80]]
    with pytest.raises(ModelLoadError, match="batch 2"):
        normalize_size_list([[2, 3, 8, 8]], ranks=[4], first_dims=[None])


@pytest.mark.parametrize("bad, words", [
    ([[2, 3, 416, 416]], "batch 2"),
    ([[3, 0, 416]], "positive integers"),
    ([[3, 416.0, 416]], "positive integers"),
    ("3,416,416", "not a list of shapes"),
    ([], "not a list of shapes"),
])
def test_normalize_size_list_refuses_bad_shapes(bad, words):
    with pytest.raises(ModelLoadError, match=words):
        normalize_size_list(bad)


def test_load_pytorch_with_and_without_batch_dim_gives_the_same_model(tiny_torch_files, torch_mod):
    torch = torch_mod
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 20)).astype(np.float32)
    with torch.no_grad():
        ref = tiny_torch_files["net"](torch.from_numpy(x)).numpy()
    results = []
    for sizes in ([[3, 16, 20]], [[1, 3, 16, 20]]):
        rknn = _built(tiny_torch_files["pt"], loader="pytorch", input_size_list=sizes)
        meta = rknn._package.metadata["inputs"][0]
        assert meta["model_shape"] == [1, 3, 16, 20] and meta["shape"] == [1, 16, 20, 3]
        out = _float_run(rknn, x)
        assert out[0].shape == (1, 2, 16, 20)
        np.testing.assert_allclose(out[0], ref, atol=1e-4, rtol=0)
        results.append(out[0])
        rknn.release()
    np.testing.assert_array_equal(results[0], results[1])


@pytest.mark.parametrize("kind", ["state_dict", "pickled"])
def test_load_pytorch_refuses_torch_save_files_and_explains_trace(tiny_torch_files, kind, rknn_log, logged_errors):
    rknn = RKNN()
    assert rknn.load_pytorch(str(tiny_torch_files[kind]), input_size_list=[[3, 16, 20]]) == -1
    msg = logged_errors(rknn_log)[-1]
    assert "torch.jit.trace" in msg and "torch.save" in msg and str(tiny_torch_files[kind]) in msg
    assert isinstance(rknn.last_error, ModelLoadError)
    assert rknn.build(do_quantization=False) == -1  # nothing was loaded
    rknn.release()


def test_load_pytorch_needs_input_size_list(tiny_torch_files, rknn_log, logged_errors):
    rknn = RKNN()
    assert rknn.load_pytorch(str(tiny_torch_files["pt"])) == -1
    assert "input_size_list" in logged_errors(rknn_log)[-1]
    rknn.release()


def test_load_pytorch_with_a_wrong_channel_count_says_so(tiny_torch_files, rknn_log, logged_errors):
    rknn = RKNN()
    assert rknn.load_pytorch(str(tiny_torch_files["pt"]), input_size_list=[[4, 16, 20]]) == -1
    msg = logged_errors(rknn_log)[-1]
    assert "[[1, 4, 16, 20]]" in msg and "does not run" in msg
    rknn.release()


def test_load_pytorch_on_an_onnx_file_and_a_missing_file(conv_onnx, tmp_path, rknn_log, logged_errors, torch_mod):
    rknn = RKNN()
    assert rknn.load_pytorch(str(conv_onnx()), input_size_list=[[3, 8, 10]]) == -1
    assert "load_onnx" in logged_errors(rknn_log)[-1]
    missing = tmp_path / "nope.pt"
    assert rknn.load_pytorch(str(missing), input_size_list=[[3, 8, 10]]) == -1
    assert "not found" in logged_errors(rknn_log)[-1] and str(missing) in logged_errors(rknn_log)[-1]
    rknn.release()


# ---------------------------------------------------------------- ONNX: opsets, initializers, shapes


@pytest.mark.parametrize("opset", [9, 11, 13, 21])
def test_onnx_opsets_9_to_21_load_and_match_onnxruntime(conv_onnx, opset, ort_reference):
    path = conv_onnx(f"opset{opset}.onnx", opset=opset, batchnorm=True, pads=1)
    loaded = load_onnx(path)
    assert [i.version for i in loaded.model.opset_import if i.domain in ("", "ai.onnx")] == [OPSET]
    if opset != OPSET:
        assert any(f"from opset {opset}" in n for n in loaded.notes)
    x = np.random.default_rng(opset).standard_normal((1, 3, 8, 10)).astype(np.float32)
    rknn = _built(path)
    np.testing.assert_allclose(_float_run(rknn, x)[0], ort_reference(path, {"x": x})[0], atol=1e-4, rtol=0)
    rknn.release()


@pytest.mark.parametrize("opset", [7, 8, 22, 23])
def test_onnx_opsets_older_or_newer_than_ours_are_converted(conv_onnx, opset, ort_reference):
    path = conv_onnx(f"opset{opset}.onnx", opset=opset, batchnorm=True, pads=1)
    loaded = load_onnx(path)
    assert [i.version for i in loaded.model.opset_import if i.domain in ("", "ai.onnx")] == [OPSET]
    assert any(f"from opset {opset}" in n for n in loaded.notes)
    x = np.random.default_rng(opset).standard_normal((1, 3, 8, 10)).astype(np.float32)
    rknn = _built(path)
    np.testing.assert_allclose(_float_run(rknn, x)[0], ort_reference(path, {"x": x})[0], atol=1e-4, rtol=0)
    rknn.release()


def test_onnx_opset_older_than_onnxruntime_runs_is_refused(tmp_path):
    """Opset 6 and older: onnxruntime itself does not promise to run them."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 6)])
    model.ir_version = 3
    onnx.save(model, str(tmp_path / "opset6.onnx"))
    with pytest.raises(ModelLoadError, match=r"opset 6; supported are 7\.\.\d+.*opset_version=17"):
        load_onnx(tmp_path / "opset6.onnx")


def test_initializers_listed_as_inputs_become_constants(conv_onnx, ort_reference):
    path = conv_onnx("old_exporter.onnx", weights_as_inputs=True, opset=9)
    assert [i.name for i in onnx.load(str(path)).graph.input] == ["x", "w1", "b1", "w2", "b2"]
    loaded = load_onnx(path)
    assert loaded.input_names == ["x"]
    assert any("4 weights listed as graph inputs" in n for n in loaded.notes)
    rknn = _built(path)
    assert [m["name"] for m in rknn._package.metadata["inputs"]] == ["x"]
    x = np.random.default_rng(3).standard_normal((1, 3, 8, 10)).astype(np.float32)
    np.testing.assert_allclose(_float_run(rknn, x)[0], ort_reference(path, {"x": x})[0], atol=1e-4, rtol=0)
    rknn.release()


def test_wrong_input_size_list_for_a_static_onnx_model_is_an_error(conv_onnx, rknn_log, logged_errors):
    rknn = RKNN()
    assert rknn.load_onnx(str(conv_onnx()), input_size_list=[[3, 9, 10]]) == -1
    msg = logged_errors(rknn_log)[-1]
    assert "[1, 3, 9, 10]" in msg and "[1, 3, 8, 10]" in msg
    assert rknn.load_onnx(str(conv_onnx()), input_size_list=[[3, 8, 10], [3, 8, 10]]) == -1
    assert "2 shapes" in logged_errors(rknn_log)[-1] and "1 inputs" in logged_errors(rknn_log)[-1]
    assert rknn.load_onnx(str(conv_onnx()), input_size_list=[[3, 8, 10]]) == 0  # the right one is fine
    rknn.release()


def test_dynamic_dims_are_fixed_from_input_size_list(conv_onnx, ort_reference):
    path = conv_onnx("dynamic.onnx", dynamic=["N", 3, "H", "W"])
    rknn = _built(path, input_size_list=[[3, 12, 14]])
    meta = rknn._package.metadata
    assert meta["inputs"][0]["model_shape"] == [1, 3, 12, 14]
    assert meta["outputs"][0]["shape"] == [1, 2, 10, 12]
    x = np.random.default_rng(4).standard_normal((1, 3, 12, 14)).astype(np.float32)
    out = _float_run(rknn, x)
    assert out[0].shape == (1, 2, 10, 12)
    np.testing.assert_allclose(out[0], ort_reference(path, {"x": x})[0], atol=1e-4, rtol=0)
    rknn.release()


def test_dynamic_spatial_dims_without_input_size_list_are_an_error(conv_onnx):
    with pytest.raises(ModelLoadError, match=r"dynamic dimension 2 \('H'\).*input_size_list"):
        load_onnx(conv_onnx("dynamic.onnx", dynamic=["N", 3, "H", "W"]))


def test_dynamic_batch_alone_is_fixed_to_one(conv_onnx):
    loaded = load_onnx(conv_onnx("dyn_batch.onnx", dynamic=["batch", 3, 8, 10]))
    assert loaded.input_shapes == [[1, 3, 8, 10]]
    assert any("dynamic batch fixed to 1" in n for n in loaded.notes)


def _matmul_model(path):
    w = numpy_helper.from_array(np.arange(40, dtype=np.float32).reshape(10, 4) / 10, "w")
    g = helper.make_graph([helper.make_node("MatMul", ["feat", "w"], ["y"])], "mm",
                          [helper.make_tensor_value_info("feat", TensorProto.FLOAT, ["N", 10])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def test_rank2_input_without_batch_in_input_size_list(tmp_path):
    loaded = load_onnx(_matmul_model(tmp_path / "mm.onnx"), input_size_list=[[10]])
    assert loaded.input_shapes == [[1, 10]]


def test_rank2_input_with_batch_in_input_size_list(tmp_path):
    loaded = load_onnx(_matmul_model(tmp_path / "mm.onnx"), input_size_list=[[1, 10]])
    assert loaded.input_shapes == [[1, 10]]


# ---------------------------------------------------------------- sub-graph cuts


def test_outputs_cut_returns_the_intermediate_tensor(conv_onnx, ort_reference):
    path = conv_onnx()
    full = onnx.load(str(path))
    full.graph.output.append(helper.make_tensor_value_info("relu_out", TensorProto.FLOAT, [1, 4, 6, 8]))
    x = np.random.default_rng(5).standard_normal((1, 3, 8, 10)).astype(np.float32)
    ref_relu = ort_reference(full, {"x": x})[1]
    rknn = _built(path, outputs=["relu_out"])
    assert [o["name"] for o in rknn._package.metadata["outputs"]] == ["relu_out"]
    ops = [n.op_type for n in onnx.load_from_string(rknn._package.model_bytes).graph.node]
    assert ops.count("Conv") == 1  # conv2 was cut away
    np.testing.assert_allclose(_float_run(rknn, x)[0], ref_relu, atol=1e-5, rtol=0)
    rknn.release()


def test_inputs_and_outputs_cut_a_middle_sub_graph(conv_onnx, ort_reference):
    path = conv_onnx()
    rknn = _built(path, inputs=["relu_out"], outputs=["y"])
    meta = rknn._package.metadata
    assert [i["name"] for i in meta["inputs"]] == ["relu_out"] and meta["inputs"][0]["model_shape"] == [1, 4, 6, 8]
    r = np.abs(np.random.default_rng(6).standard_normal((1, 4, 6, 8))).astype(np.float32)
    # the reference: conv2 alone, taken from the original model
    sub = onnx.utils.Extractor(onnx.shape_inference.infer_shapes(onnx.load(str(path)))).extract_model(["relu_out"],
                                                                                                      ["y"])
    np.testing.assert_allclose(_float_run(rknn, r)[0], ort_reference(sub, {"relu_out": r})[0], atol=1e-5, rtol=0)
    rknn.release()


def test_cut_with_an_unknown_tensor_name_lists_real_names(conv_onnx, rknn_log, logged_errors):
    rknn = RKNN()
    assert rknn.load_onnx(str(conv_onnx()), outputs=["concat_1"]) == -1
    msg = logged_errors(rknn_log)[-1]
    assert "'concat_1'" in msg and "relu_out" in msg
    rknn.release()


# ---------------------------------------------------------------- not-ONNX files


def test_load_onnx_on_wrong_files(tmp_path, tiny_torch_files, rknn_log, logged_errors):
    rknn = RKNN()
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01 this is not a protobuf model" * 10)
    assert rknn.load_onnx(str(junk)) == -1
    assert "not a readable ONNX model" in logged_errors(rknn_log)[-1]
    assert rknn.load_onnx(str(tiny_torch_files["pt"])) == -1
    assert "load_pytorch" in logged_errors(rknn_log)[-1]
    assert rknn.load_onnx(str(tmp_path / "missing.onnx")) == -1
    assert "not found" in logged_errors(rknn_log)[-1]
    rknn.release()
