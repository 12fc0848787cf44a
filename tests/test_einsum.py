"""An Einsum that is a batched matrix product becomes Transposes around a MatMul (graph/fold.py einsum_as_matmul).

Diffusion UNets write their attention as einsum('bct,bcs->bts', q, k) and einsum('bts,bcs->bct', w, v). An Einsum
is no NPU op and had no TFLite form: such a model ran its attention on the board's CPU and did not export."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import built_rknn, write_samples
from openrknn.graph.fold import einsum_as_matmul
from openrknn.metrics import cosine

rng = np.random.default_rng(0)


def _einsum_model(equation: str, a_shape, b_shape, out_shape) -> onnx.ModelProto:
    g = helper.make_graph([helper.make_node("Einsum", ["a", "b"], ["y"], equation=equation)], "einsum",
                          [helper.make_tensor_value_info("a", TensorProto.FLOAT, a_shape),
                           helper.make_tensor_value_info("b", TensorProto.FLOAT, b_shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("equation,a,b,out", [
    ("bct,bcs->bts", [2, 4, 5], [2, 4, 6], [2, 5, 6]),          # q^T k
    ("bts,bcs->bct", [2, 5, 6], [2, 4, 6], [2, 4, 5]),          # v w^T, the output transposed
    ("bhqd,bhkd->bhqk", [1, 3, 5, 8], [1, 3, 7, 8], [1, 3, 5, 7]),
    ("ij,jk->ik", [3, 4], [4, 5], [3, 5]),
    ("b i d, b j d -> b i j", [2, 3, 4], [2, 5, 4], [2, 3, 5]),  # spaces, as einops writes them
    ("bij,bj->bi", [2, 3, 4], [2, 4], [2, 3]),                  # a matrix times a vector
    ("bj,bjk->kb", [2, 4], [2, 4, 5], [5, 2]),                  # a vector times a matrix, the output transposed
    ("bi,bi->b", [2, 4], [2, 4], [2]),                          # a dot product per batch
])
def test_products_become_matmuls_with_the_same_values(equation, a, b, out):
    m = _einsum_model(equation, a, b, out)
    x, y = rng.standard_normal(a).astype(np.float32), rng.standard_normal(b).astype(np.float32)
    want = np.einsum(equation.replace(" ", ""), x, y)
    assert einsum_as_matmul(m) == 1
    assert "Einsum" not in {n.op_type for n in m.graph.node} and "MatMul" in {n.op_type for n in m.graph.node}
    onnx.checker.check_model(m)
    got = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"a": x, "b": y})
    np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("equation,a,b,out", [
    ("ii,ij->ij", [3, 3], [3, 4], [3, 4]),            # a repeated letter (a diagonal)
    ("ij,kl->ijkl", [2, 3], [4, 5], [2, 3, 4, 5]),    # an outer product: nothing contracted
    ("...ij,...jk->...ik", [2, 3, 4], [2, 4, 5], [2, 3, 5]),
    ("bij,bjk->bk", [2, 3, 4], [2, 4, 5], [2, 5]),    # a letter summed away
])
def test_other_equations_stay_einsums(equation, a, b, out):
    m = _einsum_model(equation, a, b, out)
    assert einsum_as_matmul(m) == 0 and [n.op_type for n in m.graph.node] == ["Einsum"]


def attention_model() -> onnx.ModelProto:
    """x [1, C, H, W] -> 1x1 convs q, k, v -> [1, C, HW] -> softmax(einsum(q, k) / sqrt(C)) -> einsum with v ->
    [1, C, H, W] + x: a diffusion UNet's attention block in small."""
    C, H, W = 8, 6, 6
    inits = [numpy_helper.from_array((rng.standard_normal((C, C, 1, 1)) * 0.3).astype(np.float32), f"w{q}")
             for q in "qkv"]
    inits += [numpy_helper.from_array(np.array([1, C, H * W], np.int64), "flat"),
              numpy_helper.from_array(np.array([1, C, H, W], np.int64), "image"),
              numpy_helper.from_array(np.array(1 / np.sqrt(C), np.float32), "scale")]
    n = helper.make_node
    nodes = [n("Conv", ["x", f"w{q}"], [q]) for q in "qkv"]
    nodes += [n("Reshape", [q, "flat"], [q + "f"]) for q in "qkv"]
    nodes += [n("Einsum", ["qf", "kf"], ["scores"], equation="bct,bcs->bts"), n("Mul", ["scores", "scale"], ["sc"]),
              n("Softmax", ["sc"], ["attn"], axis=-1), n("Einsum", ["attn", "vf"], ["mixed"], equation="bts,bcs->bct"),
              n("Reshape", ["mixed", "image"], ["mixed4"]), n("Add", ["x", "mixed4"], ["y"])]
    g = helper.make_graph(nodes, "attention", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, H, W])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, C, H, W])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_einsum_attention_builds_int8_and_exports_to_tflite(tmp_path):
    from openrknn.runtime.tflite_runner import TfliteRunner

    path = tmp_path / "attention.onnx"
    onnx.save(attention_model(), path)
    samples = [rng.standard_normal((1, 8, 6, 6)).astype(np.float32) for _ in range(16)]
    ds = write_samples(tmp_path, [x.transpose(0, 2, 3, 1) for x in samples[:10]])  # NHWC, as inference() takes
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rk = built_rknn(path, ds, target_platform="rk3588", quantized_dtype="w8a8")
    ops = {n.op_type for n in onnx.load_from_string(rk._package.model_bytes).graph.node}
    assert "Einsum" not in ops and "MatMul" in ops
    out = tmp_path / "attention.tflite"
    assert rk.export_tflite(str(out), input_dtype="float32") == 0, rk.last_error
    runner = TfliteRunner(str(out), delegate=None)
    for x in samples[10:]:
        ours = rk.inference(inputs=[x], data_format="nchw")[0]
        assert cosine(ref.run(None, {"x": x})[0], ours) > 0.99
        theirs = runner.run([x.transpose(0, 2, 3, 1)])[0]
        assert theirs.shape == ours.shape  # the export gives the model's outputs in its own layout
        assert cosine(ours, theirs) > 0.999
    rk.release()


def test_check_speaks_of_the_matmul_the_build_makes(tmp_path, capsys):
    """`openrknn check` on the .onnx sees the graph as the build will: no 'Einsum falls back to the CPU' warning."""
    import json

    from openrknn.cli import main

    path = tmp_path / "attention.onnx"
    onnx.save(attention_model(), path)
    assert main(["check", str(path), "--target", "rk3588", "--json"]) == 0
    findings = json.loads(capsys.readouterr().out)
    assert not [f for f in findings if f["op_type"] == "Einsum"], findings
