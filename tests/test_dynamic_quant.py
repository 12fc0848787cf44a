"""Models quantized by onnxruntime's quantize_dynamic (integer weights; activations quantized per call on the CPU:
DynamicQuantizeLinear, MatMulInteger, ConvInteger, com.microsoft's DynamicQuantizeLSTM) load as the float model
their weights describe, with no integer op left, and build for the NPU."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import built_rknn, write_samples
from openrknn.api import RKNN
from openrknn.graph.dynamic_quant import float_from_dynamic_quant
from openrknn.metrics import cosine

T, F, H = 12, 8, 16
n = helper.make_node


def _float_model() -> onnx.ModelProto:
    """frames [T, 1, F] -> LSTM -> [T, H] -> MatMul -> [T, 6]; and a conv branch on the same frames as a [1, 1, T, F]
    map -> Conv 3x3 -> flattened beside it."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((1, 4 * H, F)) * .3).astype(np.float32), "W"),
             numpy_helper.from_array((rng.standard_normal((1, 4 * H, H)) * .3).astype(np.float32), "R"),
             numpy_helper.from_array((rng.standard_normal((1, 8 * H)) * .1).astype(np.float32), "B"),
             numpy_helper.from_array((rng.standard_normal((H, 6)) * .3).astype(np.float32), "fc"),
             numpy_helper.from_array((rng.standard_normal((2, 1, 3, 3)) * .3).astype(np.float32), "k"),
             numpy_helper.from_array(np.array([0.1, -0.1], np.float32), "kb"),
             numpy_helper.from_array(np.array([T, H], np.int64), "seq"),
             numpy_helper.from_array(np.array([1, 1, T, F], np.int64), "map"),
             numpy_helper.from_array(np.array([T, 2 * F], np.int64), "rows")]
    nodes = [n("LSTM", ["x", "W", "R", "B"], ["y", "yh", "yc"], hidden_size=H),
             n("Reshape", ["y", "seq"], ["y2"]), n("MatMul", ["y2", "fc"], ["out"]),
             n("Reshape", ["x", "map"], ["m"]), n("Conv", ["m", "k", "kb"], ["c"], pads=[1, 1, 1, 1]),
             n("Reshape", ["c", "rows"], ["conv_out"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [T, 1, F])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [T, 6]),
                           helper.make_tensor_value_info("conv_out", TensorProto.FLOAT, [T, 2 * F])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    d = tmp_path_factory.mktemp("dyn")
    onnx.save(_float_model(), d / "float.onnx")
    quantize_dynamic(str(d / "float.onnx"), str(d / "dynamic.onnx"), weight_type=QuantType.QInt8,
                     op_types_to_quantize=["LSTM", "MatMul", "Conv"])
    return d


def _run(model, x):
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x})


def test_the_rewrite_is_the_float_model_its_weights_describe(models):
    dynamic = onnx.load(str(models / "dynamic.onnx"))
    kinds = {nd.op_type for nd in dynamic.graph.node}
    assert {"DynamicQuantizeLSTM", "MatMulInteger", "ConvInteger", "DynamicQuantizeLinear"} <= kinds
    assert float_from_dynamic_quant(dynamic) == 3
    # the conv's bias stays the Add quantize_dynamic put after it
    assert {nd.op_type for nd in dynamic.graph.node} == {"Add", "Conv", "LSTM", "MatMul", "Reshape"}
    assert not any(t.data_type in (TensorProto.INT8, TensorProto.UINT8) for t in dynamic.graph.initializer)
    x = np.random.default_rng(1).standard_normal((T, 1, F)).astype(np.float32)
    original = _run(onnx.load(str(models / "float.onnx")), x)
    rewritten = _run(dynamic, x)
    # the dequantized weights are the float weights to one int8 step: outputs within rounding of the original
    for o, r in zip(original, rewritten):
        assert cosine(o, r) > 0.999
    # and the rewrite is exactly those weights in the float ops: the float model with them put in gives the same
    ref = _float_model()
    deq = {t.name: numpy_helper.to_array(t) for t in dynamic.graph.initializer}
    for t in ref.graph.initializer:
        match = [v for k, v in deq.items() if k.startswith(t.name) and k.endswith("_float")]
        if match:
            t.CopyFrom(numpy_helper.from_array(match[0], t.name))
    for a, b in zip(_run(ref, x), rewritten):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [None, "w8a8"])
def test_a_dynamically_quantized_model_builds_for_the_npu(models, tmp_path, dtype):
    rng = np.random.default_rng(2)
    write_samples(tmp_path, [rng.standard_normal((T, 1, F)).astype(np.float32) for _ in range(6)], name="ds.txt")
    r = RKNN(verbose=False)
    r.config(target_platform="rk3588", **({"quantized_dtype": dtype} if dtype else {}))
    assert r.load_onnx(str(models / "dynamic.onnx"), input_size_list=[[T, 1, F]]) == 0, r.last_error
    assert r.build(do_quantization=dtype is not None, dataset=str(tmp_path / "ds.txt")) == 0, r.last_error
    deployed = onnx.load_from_string(r._package.model_bytes)
    assert not {"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "DynamicQuantizeLSTM"} & \
        {nd.op_type for nd in deployed.graph.node}
    assert r.init_runtime() == 0
    x = rng.standard_normal((T, 1, F)).astype(np.float32)
    want = _run(onnx.load(str(models / "float.onnx")), x)
    got = r.inference(inputs=[x], data_format="nchw")
    for w, g in zip(want, got):
        assert cosine(w, g) > (0.99 if dtype else 0.999)
    r.release()


V = 30


def _embedding_model() -> onnx.ModelProto:
    """ids [1, T] int64 -> embedding Gather [1, T, F] -> time-major Transpose -> LSTM -> [T, H] -> MatMul -> [T, 6]:
    a character tagger as text2tashkeel's ships (its table quantized too)."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array((rng.standard_normal((V, F))).astype(np.float32), "table"),
             numpy_helper.from_array((rng.standard_normal((1, 4 * H, F)) * .3).astype(np.float32), "W"),
             numpy_helper.from_array((rng.standard_normal((1, 4 * H, H)) * .3).astype(np.float32), "R"),
             numpy_helper.from_array((rng.standard_normal((H, 6)) * .3).astype(np.float32), "fc"),
             numpy_helper.from_array(np.array([T, H], np.int64), "seq")]
    nodes = [n("Gather", ["table", "ids"], ["e"]), n("Transpose", ["e"], ["t"], perm=[1, 0, 2]),
             n("LSTM", ["t", "W", "R"], ["y"], hidden_size=H), n("Reshape", ["y", "seq"], ["y2"]),
             n("MatMul", ["y2", "fc"], ["out"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, T])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [T, 6])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_a_quantized_embedding_table_loads_as_its_float_rows_and_exports(tmp_path):
    """quantize_dynamic stores the table as uint8: Gather picks integer rows, a Transpose moves them, a
    DequantizeLinear makes them real. Loaded, the table is float and no DequantizeLinear is left; the w8a8 build
    exports, and LiteRT computes what the simulator does (the integer rows passing through as values were 0.29
    cosine before)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from openrknn.convert import load_onnx
    from openrknn.runtime.tflite_runner import TfliteRunner

    onnx.save(_embedding_model(), tmp_path / "float.onnx")
    quantize_dynamic(str(tmp_path / "float.onnx"), str(tmp_path / "dynamic.onnx"), weight_type=QuantType.QUInt8,
                     op_types_to_quantize=["Gather", "Transpose", "LSTM", "MatMul"])
    dynamic = onnx.load(str(tmp_path / "dynamic.onnx"))
    assert "DequantizeLinear" in {nd.op_type for nd in dynamic.graph.node}
    loaded = load_onnx(tmp_path / "dynamic.onnx").model
    assert "DequantizeLinear" not in {nd.op_type for nd in loaded.graph.node}
    assert not any(t.data_type in (TensorProto.INT8, TensorProto.UINT8) for t in loaded.graph.initializer)
    rng = np.random.default_rng(4)
    write_samples(tmp_path, [rng.integers(0, V, (1, T)) for _ in range(6)], name="ds.txt")
    r = built_rknn(tmp_path / "dynamic.onnx", tmp_path / "ds.txt", target_platform="rk3588", quantized_dtype="w8a8")
    assert r.export_tflite(str(tmp_path / "m.tflite")) == 0, r.last_error
    runner = TfliteRunner(str(tmp_path / "m.tflite"), delegate=None)
    ref = ort.InferenceSession(str(tmp_path / "dynamic.onnx"), providers=["CPUExecutionProvider"])
    for _ in range(3):
        ids = rng.integers(0, V, (1, T))
        ours = r.inference(inputs=[ids], data_format="nchw")[0]
        assert cosine(ours, ref.run(None, {"ids": ids})[0]) > 0.99
        assert cosine(runner.run([ids])[0], ours) >= 0.999
    r.release()
