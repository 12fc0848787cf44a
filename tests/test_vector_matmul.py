"""A MatMul of a matrix and a constant vector (a YOLO head's bin distribution times its bins written with @): the
simulator computes it as the product it is. onnxruntime 1.32 fuses a Transpose of the matrix's last two axes into
such a MatMul and then computes it wrongly; the build says so, since a reference run of the file is off there."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import write_samples
from openrknn.api import RKNN

BINS = np.arange(16, dtype=np.float32)


def bins_model(transposed: bool) -> onnx.ModelProto:
    """x [1, 4, 16, 64] (or [1, 4, 64, 16]) -> softmax over the 16 bins -> [1, 4, 64, 16] @ bins -> [1, 4, 64]."""
    n = helper.make_node
    nodes = [n("Softmax", ["x"], ["p"], axis=2 if transposed else 3)]
    if transposed:
        nodes.append(n("Transpose", ["p"], ["pt"], perm=[0, 1, 3, 2]))
    nodes.append(n("MatMul", ["pt" if transposed else "p", "bins"], ["y"], name="expect"))
    shape = [1, 4, 16, 64] if transposed else [1, 4, 64, 16]
    g = helper.make_graph(nodes, "dfl", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(BINS, "bins")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _expected(x: np.ndarray, transposed: bool) -> np.ndarray:
    e = np.exp(x - x.max(axis=2 if transposed else 3, keepdims=True))
    p = e / e.sum(axis=2 if transposed else 3, keepdims=True)
    return (p.transpose(0, 1, 3, 2) if transposed else p) @ BINS


@pytest.mark.parametrize("transposed", [True, False])
@pytest.mark.parametrize("dtype", [None, "w8a8"])
def test_a_vector_product_is_computed_as_the_product_it_is(tmp_path, transposed, dtype):
    onnx.save(bins_model(transposed), tmp_path / "dfl.onnx")
    rng = np.random.default_rng(0)
    shape = (1, 4, 16, 64) if transposed else (1, 4, 64, 16)
    write_samples(tmp_path, [rng.normal(0, 2, shape).astype(np.float32) for _ in range(4)], name="ds.txt")
    rk = RKNN(verbose=False)
    rk.config(target_platform="rk3588", **({"quantized_dtype": dtype} if dtype else {}))
    assert rk.load_onnx(str(tmp_path / "dfl.onnx")) == 0, rk.last_error
    assert rk.build(do_quantization=dtype is not None, dataset=str(tmp_path / "ds.txt")) == 0, rk.last_error
    assert rk.init_runtime() == 0
    x = rng.normal(0, 2, shape).astype(np.float32)
    got = rk.inference(inputs=[x], data_format="nchw")[0]
    want = _expected(x, transposed)
    if dtype is None:
        np.testing.assert_allclose(got, want, atol=1e-4)
    else:  # the probabilities on an 8-bit grid: within one bin everywhere
        assert np.abs(got - want).max() < 1.0
        assert float(got.ravel() @ want.ravel() / (np.linalg.norm(got) * np.linalg.norm(want))) > 0.999
    said = any("MatMul(s) of a transposed matrix and a vector" in note for note in rk._build.notes)
    assert said == transposed, rk._build.notes
