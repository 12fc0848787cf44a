"""load_onnx never refuses a model that onnxruntime runs. Each test rebuilds, in miniature, a failure seen on a real
model of the corpus (bench/corpus_fetch.py): PaddleOCR exports with -1 stored shapes, an opset-7 export, a table
recognizer whose Loop body reads constants of the main graph, weights in external data, exporters that leave node
names empty or repeat them; and when a model cannot run, the error names the node and what to do."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import write_samples
from openrknn.api import RKNN
from openrknn.errors import ModelLoadError
from openrknn.frontends.onnx import load_onnx

RNG = np.random.default_rng(7)


def _w(*shape):
    return RNG.standard_normal(shape).astype(np.float32) * 0.5


def _save(model: onnx.ModelProto, path, check=True):
    if check:
        onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _float_outputs(path, x_nchw, **load_kw):
    rknn = RKNN()
    assert rknn.load_onnx(str(path), **load_kw) == 0
    assert rknn.build(do_quantization=False) == 0
    assert rknn.init_runtime() == 0
    out = rknn.inference([x_nchw], data_type="float32", data_format="nchw")
    meta = rknn._package.metadata
    rknn.release()
    return out, meta


def _paddle_style(path):
    """As paddle2onnx writes them (PP-OCR direction classifier, PP-OCRv3 det/rec): input [-1, 3, ?, ?], and stored
    shapes with -1 for every dynamic dim, on the graph output and in value_info."""
    inits = [numpy_helper.from_array(_w(2, 3, 3, 3), "w"), numpy_helper.from_array(_w(2), "b")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
             helper.make_node("Identity", ["f"], ["f2"], name="Identity@0"),
             helper.make_node("Softmax", ["f2"], ["y"], name="softmax", axis=1)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, "?", "?"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 2])
    g = helper.make_graph(nodes, "paddle", [x], [y], inits,
                          value_info=[helper.make_tensor_value_info("f2", TensorProto.FLOAT, [-1, 2]),
                                      helper.make_tensor_value_info("c", TensorProto.FLOAT, [-1, 2, -1, -1])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 11)])
    m.ir_version = 7
    return _save(m, path, check=False)


def test_minus_one_stored_shapes_of_paddle_exports_load_and_match_onnxruntime(tmp_path, ort_reference):
    path = _paddle_style(tmp_path / "cls.onnx")
    x = RNG.standard_normal((1, 3, 12, 20)).astype(np.float32)
    out, meta = _float_outputs(path, x, input_size_list=[[1, 3, 12, 20]])
    assert meta["outputs"][0]["shape"] == [1, 2]
    np.testing.assert_allclose(out[0], ort_reference(path, {"x": x})[0], atol=1e-5, rtol=0)


def test_stored_shapes_from_the_export_size_are_replaced_after_input_size_list(tmp_path, ort_reference):
    """Exported at 8x10 with dynamic axes: the stored output and intermediate shapes are 8x10's; loaded at 16x24."""
    inits = [numpy_helper.from_array(_w(2, 3, 3, 3), "w")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    g = helper.make_graph(nodes, "stale", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 6, 8])], inits,
                          value_info=[helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 2, 6, 8])])
    path = _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "stale.onnx")
    x = RNG.standard_normal((1, 3, 16, 24)).astype(np.float32)
    out, meta = _float_outputs(path, x, input_size_list=[[3, 16, 24]])
    assert meta["outputs"][0]["shape"] == [1, 2, 14, 22]
    np.testing.assert_allclose(out[0], ort_reference(path, {"x": x})[0], atol=1e-5, rtol=0)


def test_an_opset_7_export_with_attribute_forms_is_converted(tmp_path, ort_reference):
    """As the PP-OCRv5 recognizer in one package: opset 7, so Slice, Squeeze and ReduceMean take attributes, and the
    LayerNorm is spelled out (ReduceMean, Sub, Pow, Sqrt, Div)."""
    inits = [numpy_helper.from_array(_w(4, 3, 3, 3), "w"), numpy_helper.from_array(np.array(2.0, np.float32), "two"),
             numpy_helper.from_array(np.array(1e-5, np.float32), "eps")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Slice", ["c"], ["s"], name="slice", axes=[2], starts=[0], ends=[1]),
             helper.make_node("Squeeze", ["s"], ["q"], name="squeeze", axes=[2]),  # [1, 4, W]
             helper.make_node("ReduceMean", ["q"], ["mu"], name="mean", axes=[1]),
             helper.make_node("Sub", ["q", "mu"], ["d"], name="sub"),
             helper.make_node("Pow", ["d", "two"], ["d2"], name="pow"),
             helper.make_node("ReduceMean", ["d2"], ["var"], name="var", axes=[1]),
             helper.make_node("Add", ["var", "eps"], ["ve"], name="add_eps"),
             helper.make_node("Sqrt", ["ve"], ["sd"], name="sqrt"),
             helper.make_node("Div", ["d", "sd"], ["y"], name="norm")]
    g = helper.make_graph(nodes, "op7", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 7)])
    m.ir_version = 10  # as in that file: a new IR stamped with an old opset
    path = _save(m, tmp_path / "op7.onnx")
    assert any("from opset 7" in n for n in load_onnx(path).notes)
    x = RNG.standard_normal((1, 3, 4, 16)).astype(np.float32)
    out, _ = _float_outputs(path, x)
    np.testing.assert_allclose(out[0], ort_reference(path, {"x": x})[0], atol=1e-4, rtol=0)


def _opset_11_unsqueeze(path, opsets):
    """A conv and an opset-11 Unsqueeze (axes as an attribute, an input from opset 13 on) declared with ``opsets``."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("ReduceMean", ["c"], ["m"], name="mean", axes=[1, 2, 3], keepdims=0),
             helper.make_node("Unsqueeze", ["m"], ["y"], name="unsqueeze", axes=[1])]
    g = helper.make_graph(nodes, "merged", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])],
                          [numpy_helper.from_array(_w(2, 3, 3, 3), "w")])
    m = helper.make_model(g, opset_imports=opsets)
    m.ir_version = 7
    return _save(m, path, check=False)


def test_the_default_domain_listed_twice_as_onnx_compose_writes_it_loads(tmp_path, ort_reference):
    """onnx.compose.merge_models lists the default domain twice (domain '' and unset); onnxruntime reads it as one,
    onnx's version converter upgraded only one of them, and the upgraded Unsqueeze failed in the loader's check."""
    twice = [helper.make_opsetid("", 11), onnx.OperatorSetIdProto(version=11)]
    path = _opset_11_unsqueeze(tmp_path / "merged.onnx", twice)
    loaded = load_onnx(path)
    assert [(o.domain, o.version) for o in loaded.model.opset_import if o.domain == ""] != [] and \
        len([o for o in loaded.model.opset_import if o.domain == ""]) == 1
    assert any("domain twice" in n for n in loaded.notes)
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    out, _ = _float_outputs(path, x)
    np.testing.assert_allclose(out[0], ort_reference(path, {"x": x})[0], atol=1e-5, rtol=0)


def test_a_domain_declared_at_two_opsets_is_refused_by_name(tmp_path):
    path = _opset_11_unsqueeze(tmp_path / "two.onnx", [helper.make_opsetid("", 11), helper.make_opsetid("", 13)])
    with pytest.raises(ModelLoadError, match="declares the opset of domain 'ai.onnx' twice, as 11 and 13"):
        load_onnx(path)


def _loop_model(path):
    """As the SLANet table recognizer: a Loop whose body reads tensors of the main graph (a constant and an Identity's
    output) that nothing else in the main graph reads; the image input goes through a padded conv first."""
    body_nodes = [helper.make_node("Add", ["acc_in", "step_const"], ["acc_sum"], name="body_add"),
                  helper.make_node("Mul", ["acc_sum", "scale_id"], ["acc_out"], name="body_mul"),
                  helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body_cond")]
    body = helper.make_graph(
        body_nodes, "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [1, 2])])
    inits = [numpy_helper.from_array(_w(2, 3, 3, 3), "w"), numpy_helper.from_array(np.array(3, np.int64), "trips"),
             numpy_helper.from_array(np.array(True), "cond"),
             numpy_helper.from_array(np.array([[0.25, -0.5]], np.float32), "step_const"),
             numpy_helper.from_array(np.array([[0.9, 1.1]], np.float32), "scale")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
             helper.make_node("Identity", ["scale"], ["scale_id"], name="scale_identity"),
             helper.make_node("Loop", ["trips", "cond", "f"], ["y"], name="loop", body=body)]
    g = helper.make_graph(nodes, "loop", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], inits)
    return _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)


@pytest.mark.parametrize("level", [0, 1, 3])
def test_loop_bodies_keep_the_main_graph_tensors_they_read(tmp_path, level, ort_reference):
    path = _loop_model(tmp_path / "loop.onnx")
    mean, std = [10.0, 20.0, 30.0], [2.0, 4.0, 8.0]
    rknn = RKNN()
    assert rknn.config(mean_values=[mean], std_values=[std], optimization_level=level) == 0
    assert rknn.load_onnx(str(path)) == 0
    assert rknn.build(do_quantization=False) == 0
    assert rknn.init_runtime() == 0
    pixels = RNG.integers(0, 256, (1, 8, 8, 3)).astype(np.uint8)
    out = rknn.inference([pixels])
    rknn.release()
    x = ((pixels.astype(np.float32) - np.float32(mean)) / np.float32(std)).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(out[0], ort_reference(path, {"x": np.ascontiguousarray(x)})[0], atol=1e-4, rtol=0)


@pytest.mark.parametrize("level", [0, 3])
def test_nodes_listed_before_their_inputs_producers_are_put_in_graph_order(tmp_path, level, ort_reference):
    """As @imgly's IS-Net file lists its input casts after their readers: onnxruntime sorts the graph itself, onnx's
    checker does not (it objected, shape inference left those tensors untyped) and neither does a pass that reads
    nodes in order. Here the Loop (whose body reads an Identity's output by name) and the conv come before the
    nodes they read from."""
    path = _loop_model(tmp_path / "sorted.onnx")
    m = onnx.load(str(path))
    nodes = list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend(reversed(nodes))  # loop, scale_identity, flatten, gap, conv
    shuffled = _save(m, tmp_path / "shuffled.onnx", check=False)
    loaded = load_onnx(shuffled)
    # ready nodes go in the order they were listed: the Identity reads a weight only
    assert [n.name for n in loaded.model.graph.node] == ["scale_identity", "conv", "gap", "flatten", "loop"]
    assert any("nodes put in graph order: 3 were listed before" in n for n in loaded.notes)
    assert not any("strict shape inference" in n for n in loaded.notes)
    rknn = RKNN()
    assert rknn.config(optimization_level=level) == 0
    assert rknn.load_onnx(str(shuffled)) == 0
    assert rknn.build(do_quantization=False) == 0
    assert rknn.init_runtime() == 0
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    out = rknn.inference([x], data_type="float32", data_format="nchw")
    rknn.release()
    np.testing.assert_allclose(out[0], ort_reference(path, {"x": x})[0], atol=1e-5, rtol=0)


def test_a_sorted_graph_is_left_as_it_is_and_a_cycle_is_named(tmp_path):
    from openrknn.graph.names import sort_nodes

    m = onnx.load(str(_loop_model(tmp_path / "loop.onnx")))
    before = [n.name for n in m.graph.node]
    assert sort_nodes(m.graph) == 0 and [n.name for n in m.graph.node] == before
    # relu -> add -> relu: two nodes waiting on each other, and a Sigmoid after them that waits on the cycle only
    nodes = [helper.make_node("Sigmoid", ["r"], ["y"], name="after"),
             helper.make_node("Add", ["x", "r"], ["a"], name="add"),
             helper.make_node("Relu", ["a"], ["r"], name="relu")]
    g = helper.make_graph(nodes, "cycle", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])])
    path = _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "cycle.onnx",
                 check=False)
    with pytest.raises(ModelLoadError, match=r"cycle.onnx' cannot run: node '(add|relu)' \((Add|Relu)\) is on a "
                                             r"cycle.*Re-export the model"):
        load_onnx(path)


def _external(tmp_path):
    inits = [numpy_helper.from_array(_w(8, 3, 3, 3), "w"), numpy_helper.from_array(_w(8), "b")]
    g = helper.make_graph([helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv")], "ext",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 4, 4])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    folder = tmp_path / "export"
    folder.mkdir()
    onnx.save(m, str(folder / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="m.weights", size_threshold=0)
    return folder / "m.onnx"


def test_weights_in_external_data_are_read_from_the_models_folder(tmp_path, ort_reference, monkeypatch):
    path = _external(tmp_path)
    monkeypatch.chdir(tmp_path)  # not the model's folder: the data file is found relative to the model
    x = RNG.standard_normal((1, 3, 6, 6)).astype(np.float32)
    out, _ = _float_outputs(path, x)
    np.testing.assert_allclose(out[0], ort_reference(path, {"x": x})[0], atol=1e-5, rtol=0)


def test_a_missing_external_data_file_is_named(tmp_path):
    path = _external(tmp_path)
    (path.parent / "m.weights").unlink()
    with pytest.raises(ModelLoadError, match=r"weight 'w'.*external data file 'm.weights'.*copy that file"):
        load_onnx(path)


def test_empty_and_repeated_node_names_are_made_unique(tmp_path, ort_reference):
    """onnxruntime itself refuses a repeated node name; the loader names the nodes so the model runs and every layer
    can be addressed (per-layer analysis, hybrid quantization)."""
    inits = [numpy_helper.from_array(_w(4, 3, 1, 1), "w1"), numpy_helper.from_array(_w(2, 4, 1, 1), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="layer"),
             helper.make_node("Relu", ["a"], ["b"], name="layer"),
             helper.make_node("Conv", ["b", "w2"], ["c"]),
             helper.make_node("Sigmoid", ["c"], ["y"], name="")]
    g = helper.make_graph(nodes, "names", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])], inits)
    path = _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "names.onnx")
    loaded = load_onnx(path)
    names = [n.name for n in loaded.model.graph.node]
    assert len(set(names)) == len(names) and all(names) and names[0] == "layer"
    assert any("3 nodes without a unique name" in n for n in loaded.notes)
    x = RNG.standard_normal((1, 3, 4, 4)).astype(np.float32)
    out, _ = _float_outputs(path, x)
    g.node[1].name = "layer_relu"  # the reference: the same graph with names onnxruntime accepts
    ref = _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "ref.onnx")
    np.testing.assert_allclose(out[0], ort_reference(ref, {"x": x})[0], atol=1e-5, rtol=0)


def test_a_model_that_cannot_run_at_the_given_size_names_the_node_and_what_to_do(tmp_path):
    """A Reshape to a size baked in at export (8x8): loading it at 12x12 cannot work, and the error says where."""
    inits = [numpy_helper.from_array(_w(2, 3, 1, 1), "w"), numpy_helper.from_array(np.array([1, 128], np.int64), "s")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Reshape", ["c", "s"], ["y"], name="head_reshape")]
    g = helper.make_graph(nodes, "fixed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "h", "w"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 128])], inits)
    path = _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "fixed.onnx")
    assert load_onnx(path, input_size_list=[[3, 8, 8]]).input_shapes == [[1, 3, 8, 8]]
    with pytest.raises(ModelLoadError, match=r"input shapes \{'x': \[1, 3, 12, 12\]\}.*node 'head_reshape' "
                                             r"\(Reshape\).*input_size_list"):
        load_onnx(path, input_size_list=[[3, 12, 12]])


def _stft_front_end(path, output_shape=("batch", "frames", 12)):
    """audio [batch, samples] -> STFT (onesided, as whisper / Kaldi / GigaAM front ends export it) -> power ->
    mel MatMul -> Log. onnx infers the STFT's output with the full window (256 bins for 129 here), which the MatMul then
    refuses; onnxruntime computes it right."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.array(128, np.int64), "hop"),
             numpy_helper.from_array(np.hanning(256).astype(np.float32), "window"),
             numpy_helper.from_array(rng.uniform(0, 1, (129, 12)).astype(np.float32), "mel"),
             numpy_helper.from_array(np.float32(1e-10), "floor")]
    nodes = [helper.make_node("STFT", ["audio", "hop", "window"], ["spec"], name="stft"),
             helper.make_node("ReduceSumSquare", ["spec"], ["power"], name="power", axes=[-1], keepdims=0),
             helper.make_node("MatMul", ["power", "mel"], ["energies"], name="mel_filter"),
             helper.make_node("Clip", ["energies", "floor"], ["floored"], name="floor"),
             helper.make_node("Log", ["floored"], ["log_mel"], name="log")]
    graph = helper.make_graph(nodes, "stft", [helper.make_tensor_value_info("audio", TensorProto.FLOAT,
                                                                            ["batch", "samples"])],
                              [helper.make_tensor_value_info("log_mel", TensorProto.FLOAT,
                                                             None if output_shape is None else list(output_shape))],
                              inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize("dtype,output_shape", [(None, ("batch", "frames", 12)), ("w8a8", ("batch", "frames", 12)),
                                                (None, None)])
def test_shapes_onnx_infers_wrong_are_taken_from_onnxruntime(tmp_path, dtype, output_shape):
    """The float build and the int8 build of an STFT front end run and match onnxruntime on the original file, also
    when the file's output has no shape (which onnx's inference, stopped at the MatMul, could not give it)."""
    import onnxruntime as ort

    from openrknn.metrics import cosine

    path = _stft_front_end(tmp_path / "stft.onnx", output_shape)
    rng = np.random.default_rng(1)
    clips = [(rng.standard_normal((1, 2048)) * 10 ** rng.uniform(-2, 0)).astype(np.float32) for _ in range(6)]
    write_samples(tmp_path, clips[:4], name="ds.txt")
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rk = RKNN(verbose=False)
    rk.config(target_platform="rk3588", **({"quantized_dtype": dtype} if dtype else {}))
    assert rk.load_onnx(str(path), input_size_list=[[1, 2048]]) == 0
    assert rk.build(do_quantization=dtype is not None, dataset=str(tmp_path / "ds.txt")) == 0, rk.last_error
    assert rk.init_runtime() == 0
    for c in clips[4:]:
        want, got = ref.run(None, {"audio": c})[0], rk.inference(inputs=[c])[0]
        assert got.shape == want.shape == (1, 15, 12)
        if dtype is None:
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        else:
            assert cosine(want, got) > 0.9
    rk.release()
