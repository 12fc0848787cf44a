"""A model with a boolean mask input beside its token ids (khmersm's Khmer word segmenter: a transformer whose
attention ignores the padded positions): calibration reads the mask as bool, inference takes a bool array or its
0/1 in any numeric type, and a mask with other values is refused with a clear error."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import built_rknn, write_samples
from openrknn.api import RKNN
from openrknn.errors import DatasetError
from openrknn.quant.dataset import InputSpec, read_dataset

L, VOCAB, D = 12, 20, 8


def masked_model() -> onnx.ModelProto:
    """ids [1, L] int64, mask [1, L] bool -> embedding Gather -> two heads' scores per position [1, 2, L] plus the
    padding's additive -inf (Not, Where, expanded over the heads, as a torch export spells masked_fill) -> softmax
    over the positions -> each head's attention-weighted mean of the embeddings [1, 2, D]."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 1, (VOCAB, D)).astype(np.float32), "emb"),
             numpy_helper.from_array(rng.normal(0, 1, (D, 2)).astype(np.float32), "query"),
             numpy_helper.from_array(np.array([1], np.int64), "heads_axis"),
             numpy_helper.from_array(np.array([1, 2, L], np.int64), "per_head"),
             numpy_helper.from_array(np.array(-np.inf, np.float32), "minus_inf"),
             numpy_helper.from_array(np.array(0.0, np.float32), "zero")]
    n = helper.make_node
    nodes = [n("Gather", ["emb", "ids"], ["e"]),                                       # [1, L, D]
             n("MatMul", ["e", "query"], ["s_t"]), n("Transpose", ["s_t"], ["s"], perm=[0, 2, 1]),  # [1, 2, L]
             n("Not", ["mask"], ["pad"]),
             n("Where", ["pad", "minus_inf", "zero"], ["additive"]),                   # [1, L]
             n("Unsqueeze", ["additive", "heads_axis"], ["additive3"]),
             n("Expand", ["additive3", "per_head"], ["additive_heads"]),
             n("Add", ["s", "additive_heads"], ["masked"]),
             n("Softmax", ["masked"], ["w"], axis=-1),
             n("MatMul", ["w", "e"], ["out"])]                                        # [1, 2, D]
    g = helper.make_graph(nodes, "masked",
                          [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, L]),
                           helper.make_tensor_value_info("mask", TensorProto.BOOL, [1, L])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 2, D])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def sample(rng):
    length = int(rng.integers(4, L))
    ids = np.zeros((1, L), np.int64)
    ids[0, :length] = rng.integers(1, VOCAB, length)
    mask = np.zeros((1, L), bool)
    mask[0, :length] = True
    return ids, mask


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("mask")
    onnx.save(masked_model(), d / "m.onnx")
    rng = np.random.default_rng(1)
    write_samples(d, [sample(rng) for _ in range(8)], prefixes=("ids", "mask"))
    return d


def test_calibration_reads_the_mask_as_bool(setup):
    data = read_dataset(setup / "dataset.txt", [InputSpec("ids", (1, L), "int64"), InputSpec("mask", (1, L), "bool")])
    feed = next(iter(data))
    assert feed["mask"].dtype == np.bool_ and np.array_equal(feed["mask"], np.load(setup / "mask0.npy"))


def test_calibration_refuses_a_mask_that_is_not_0_or_1(setup, tmp_path):
    np.save(tmp_path / "m.npy", np.full((1, L), 2, np.int64))
    (tmp_path / "ds.txt").write_text("m.npy\n")
    with pytest.raises(DatasetError, match="'mask' is a boolean mask"):
        next(iter(read_dataset(tmp_path / "ds.txt", [InputSpec("mask", (1, L), "bool")])))


@pytest.mark.parametrize("dtype", [None, "w8a8"])
def test_a_masked_model_builds_and_runs_through_the_api(setup, dtype, rknn_log, logged_errors):
    rk = RKNN(verbose=False)
    rk.config(target_platform="rk3588", **({"quantized_dtype": dtype} if dtype else {}))
    assert rk.load_onnx(str(setup / "m.onnx")) == 0, rk.last_error
    assert rk.build(do_quantization=dtype is not None, dataset=str(setup / "dataset.txt")) == 0, rk.last_error
    assert rk.init_runtime() == 0
    ref = ort.InferenceSession(str(setup / "m.onnx"), providers=["CPUExecutionProvider"])
    ids, mask = sample(np.random.default_rng(5))
    want = ref.run(None, {"ids": ids, "mask": mask})[0]
    for m in (mask, mask.astype(np.uint8), mask.astype(np.float32)):  # the mask as bool, or its 0/1
        got = rk.inference(inputs=[ids, m], data_format="nchw")
        assert got is not None, rk.last_error
        if dtype is None:
            np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-6)
        else:
            assert np.corrcoef(got[0].ravel(), want.ravel())[0, 1] > 0.99
    assert rk.inference(inputs=[ids, mask.astype(np.int64) * 2], data_format="nchw") is None
    assert "'mask' is a boolean mask" in logged_errors(rknn_log)[-1]
    rk.release()


def test_a_masked_model_exports_to_tflite_and_litert_computes_what_the_simulator_does(setup, tmp_path):
    """The embedding lookup (GATHER at int64 ids), the mask (a bool input, LOGICAL_NOT, SELECT_V2) and its broadcast
    over the heads (BROADCAST_TO) in the exported file; LiteRT on it against the simulator."""
    from openrknn.metrics import cosine
    from openrknn.runtime.tflite_runner import TfliteRunner

    rk = built_rknn(setup / "m.onnx", setup / "dataset.txt", target_platform="rk3588", quantized_dtype="w8a8")
    assert rk.export_tflite(str(tmp_path / "m.tflite")) == 0, rk.last_error
    runner = TfliteRunner(str(tmp_path / "m.tflite"), delegate=None)
    assert [np.dtype(d["dtype"]) for d in runner.inputs] == [np.int64, np.bool_]
    rng = np.random.default_rng(9)
    for _ in range(4):
        ids, mask = sample(rng)
        got, want = runner.run([ids, mask])[0], rk.inference(inputs=[ids, mask], data_format="nchw")[0]
        assert cosine(got, want) >= 0.999
    rk.release()
