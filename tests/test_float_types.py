"""Mixed-precision ONNX exports (a float16 body between Casts, float16 weights, inputs or outputs; a float64 part)
load as float32 (graph/float_types.py): slovorez's Keras mixed_float16 morpheme segmenter failed in the int8 build
before ("Type (tensor(float)) ... does not match expected type (tensor(float16))"), and so did a float64 part."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import built_rknn, write_samples
from openrknn.frontends.onnx import load_onnx
from openrknn.graph.float_types import to_float32
from openrknn.metrics import cosine


def half_model(float16_io: bool) -> onnx.ModelProto:
    """x [1, 3, 12, 12] -> (Cast to float16) -> Conv (float16 weights) -> Relu -> Conv -> (Cast to float32) -> y.
    ``float16_io``: the input and output are float16 themselves, with no Casts."""
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float16)
    w2 = (rng.standard_normal((4, 8, 1, 1)) * 0.3).astype(np.float16)
    b1 = rng.standard_normal(8).astype(np.float16)
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"), numpy_helper.from_array(w2, "w2")]
    n = helper.make_node
    body = [n("Conv", ["h", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
            n("Relu", ["c1"], ["r1"], name="relu"),
            n("Conv", ["r1", "w2"], ["c2" if not float16_io else "y"], name="conv2")]
    io = TensorProto.FLOAT16 if float16_io else TensorProto.FLOAT
    if float16_io:
        body[0].input[0] = "x"
        nodes = body
    else:
        nodes = [n("Cast", ["x"], ["h"], name="to_half", to=TensorProto.FLOAT16)] + body + \
                [n("Cast", ["c2"], ["y"], name="to_float", to=TensorProto.FLOAT)]
    g = helper.make_graph(nodes, "half", [helper.make_tensor_value_info("x", io, [1, 3, 12, 12])],
                          [helper.make_tensor_value_info("y", io, [1, 4, 12, 12])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_every_float16_becomes_float32_and_the_function_stays():
    m = half_model(float16_io=False)
    x = np.random.default_rng(1).standard_normal((1, 3, 12, 12)).astype(np.float32)
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert to_float32(m) == 4  # three weights and the Cast to float16 (the Cast to float32 stays)
    assert not [t for t in m.graph.initializer if t.data_type == TensorProto.FLOAT16]
    assert [a.i for nd in m.graph.node for a in nd.attribute if a.name == "to"] == [TensorProto.FLOAT] * 2
    wide = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert wide.dtype == np.float32 and cosine(ref, wide) > 0.9999  # float32 arithmetic on the same weights
    assert to_float32(m) == 0  # nothing left to widen


@pytest.mark.parametrize("float16_io", [False, True])
def test_float16_models_build_float_and_int8(tmp_path, float16_io):
    path = tmp_path / "half.onnx"
    onnx.save(half_model(float16_io), path)
    loaded = load_onnx(path)
    assert any("float16 / float64 parts made float32" in note for note in loaded.notes)
    assert loaded.model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    rng = np.random.default_rng(2)
    samples = [rng.uniform(-2, 2, (1, 12, 12, 3)).astype(np.float32) for _ in range(8)]  # NHWC, as inference takes
    write_samples(tmp_path, samples)
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    dtype = np.float16 if float16_io else np.float32
    held = [rng.uniform(-2, 2, (1, 3, 12, 12)).astype(np.float32) for _ in range(4)]
    refs = [ref.run(None, {"x": x.astype(dtype)})[0].astype(np.float32) for x in held]
    for quantized, bar in ((False, 0.9999), (True, 0.99)):
        rk = built_rknn(path, tmp_path / "dataset.txt" if quantized else None, target_platform="rk3588",
                        quantized_dtype="w8a8")
        outs = [rk.inference(inputs=[x], data_format="nchw")[0] for x in held]
        assert all(o.dtype == np.float32 for o in outs)
        assert min(cosine(r, o) for r, o in zip(refs, outs)) > bar
        rk.release()


def test_a_float64_part_builds_in_int8(tmp_path):
    """x -> Cast to double -> MatMul (float64 weights) -> Relu -> Cast to float -> y."""
    rng = np.random.default_rng(5)
    n = helper.make_node
    g = helper.make_graph([n("Cast", ["x"], ["xd"], to=TensorProto.DOUBLE), n("MatMul", ["xd", "w"], ["yd"]),
                           n("Relu", ["yd"], ["rd"]), n("Cast", ["rd"], ["y"], to=TensorProto.FLOAT)], "double",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                          [numpy_helper.from_array(rng.normal(0, 1, (8, 4)), "w")])
    path = tmp_path / "double.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    write_samples(tmp_path, [rng.normal(0, 1, (1, 8)).astype(np.float32) for _ in range(8)])
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    held = [rng.normal(0, 1, (1, 8)).astype(np.float32) for _ in range(6)]
    rk = built_rknn(path, tmp_path / "dataset.txt", target_platform="rk3588", quantized_dtype="w8a8")
    assert min(cosine(ref.run(None, {"x": x})[0], rk.inference(inputs=[x])[0]) for x in held) > 0.99
    rk.release()
