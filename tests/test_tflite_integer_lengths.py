"""A recognizer that turns its input width into a sequence length inside the graph (trueocr's line recognizer:
torch's floor division exported as an int64 Div, a Mod, a Less, an Xor and a Where; the length clipped to the number
of time steps and turned into a mask over them). export_tflite writes that integer arithmetic as TFLite ops on the
ids' own types, and LiteRT computes exactly what onnxruntime does, for negative widths too, where a truncating
division and a floor division differ."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import built_rknn, write_samples

C, T, STRIDE = 4, 8, 4


def lengths_model() -> onnx.ModelProto:
    """x [1, C, 1, T] float and width [1] int64 -> a 1x1 conv over x, masked past the width's length in steps;
    outputs: the masked features, the truncating quotient and floor remainder of (width + 3) by 4, the floor
    quotient torch spells with them, that length clipped to [0, T], and the width clipped below at 10 (no max)."""
    rng = np.random.default_rng(0)
    i64 = lambda v, name: numpy_helper.from_array(np.array(v, np.int64), name)  # noqa: E731
    inits = [numpy_helper.from_array(rng.normal(0, 1, (C, C, 1, 1)).astype(np.float32), "w"),
             i64([STRIDE - 1], "pad"), i64([STRIDE], "stride"), i64([0], "zero"), i64([1], "one"),
             i64([T], "steps"), i64([10], "ten"), i64(np.arange(T)[None], "positions"),
             numpy_helper.from_array(np.array([False]), "no"), i64([1, 1, 1, T], "mask_shape")]
    n = helper.make_node
    nodes = [n("Conv", ["x", "w"], ["f"]),
             n("Add", ["width", "pad"], ["a"]),
             n("Div", ["a", "stride"], ["quot"]),
             n("Mod", ["a", "stride"], ["rem"], fmod=0),
             n("Less", ["a", "zero"], ["neg"]),
             n("Xor", ["neg", "no"], ["neg2"]),
             n("Equal", ["rem", "zero"], ["exact"]),
             n("Not", ["exact"], ["inexact"]),
             n("And", ["neg2", "inexact"], ["fix"]),
             n("Sub", ["quot", "one"], ["quot1"]),
             n("Where", ["fix", "quot1", "quot"], ["floor"]),
             n("Clip", ["floor", "zero", "steps"], ["lengths"]),
             n("Clip", ["width", "ten"], ["at_least_ten"]),
             n("Unsqueeze", ["lengths", "one"], ["len2"]),
             n("Less", ["positions", "len2"], ["valid"]),
             n("Cast", ["valid"], ["valid_f"], to=TensorProto.FLOAT),
             n("Reshape", ["valid_f", "mask_shape"], ["mask"]),
             n("Mul", ["f", "mask"], ["y"])]
    outs = [("y", TensorProto.FLOAT, [1, C, 1, T])] + [(k, TensorProto.INT64, [1]) for k in
                                                      ("quot", "rem", "floor", "lengths", "at_least_ten")]
    g = helper.make_graph(nodes, "lengths",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, 1, T]),
                           helper.make_tensor_value_info("width", TensorProto.INT64, [1])],
                          [helper.make_tensor_value_info(*o) for o in outs], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


WIDTHS = [-9, -5, -4, -1, 0, 1, 4, 5, 13, 28, 29, 40]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from openrknn.runtime.tflite_runner import TfliteRunner

    d = tmp_path_factory.mktemp("lengths")
    onnx.save(lengths_model(), d / "m.onnx")
    rng = np.random.default_rng(1)
    samples = [(rng.normal(0, 1, (1, 1, T, C)).astype(np.float32), np.array([w], np.int64)) for w in (3, 17, 30)]
    write_samples(d, samples, prefixes=("x", "width"))
    rk = built_rknn(d / "m.onnx", d / "dataset.txt", target_platform="rk3588", quantized_dtype="w8a8")
    assert rk.export_tflite(str(d / "m.tflite"), input_dtype="float32") == 0, rk.last_error
    assert rk.export_rknn(str(d / "m.rknn")) == 0
    yield rk, TfliteRunner(str(d / "m.tflite"), delegate=None), d
    rk.release()


def test_litert_computes_the_integer_arithmetic_exactly_as_onnxruntime(exported):
    rk, runner, d = exported
    ref = ort.InferenceSession(str(d / "m.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(2).normal(0, 1, (1, C, 1, T)).astype(np.float32)
    for w in WIDTHS:
        width = np.array([w], np.int64)
        want = ref.run(None, {"x": x, "width": width})
        got = runner.run([x.transpose(0, 2, 3, 1), width])
        for k, name in enumerate(("quot", "rem", "floor", "lengths", "at_least_ten"), start=1):
            assert got[k].dtype == np.int64 and np.array_equal(got[k], want[k]), (w, name, got[k], want[k])
        sim = rk.inference(inputs=[x, width], data_format="nchw")
        for k in range(1, 6):  # the simulator computes the same integers
            assert np.array_equal(sim[k], want[k]), (w, k)
        # the mask: the time steps past the length are zero in LiteRT's features as in the simulator's
        valid = np.arange(T) < want[4][0]
        assert np.all(got[0][..., ~valid] == 0) and np.all(sim[0][..., ~valid] == 0)
        assert np.allclose(got[0], sim[0], atol=0.05)


def test_the_report_names_the_integer_forms(exported):
    from openrknn.export.tflite import export_tflite_bytes
    from openrknn.package import read_package

    _, _, d = exported
    _, report = export_tflite_bytes(read_package(str(d / "m.rknn")), "float32")
    assert {"FLOOR_MOD", "NOT_EQUAL", "DIV", "CAST", "MAXIMUM", "MINIMUM", "SELECT_V2"} <= set(report.tflite_ops)
    notes = {r.op_type: r.note for r in report.layers}
    assert "int64 divided as int32" in notes["Div"] and "fmod=0" in notes["Mod"]


def test_a_mod_with_fmod_1_is_refused_with_the_reason(tmp_path, rknn_log, logged_errors):
    """C's fmod (the remainder takes the dividend's sign) has no TFLite op; the export says so instead of writing
    FLOOR_MOD, which differs on negative values."""
    model = lengths_model()
    for node in model.graph.node:
        if node.op_type == "Mod":
            node.attribute[0].i = 1
    onnx.save(model, tmp_path / "m.onnx")
    rng = np.random.default_rng(1)
    samples = [(rng.normal(0, 1, (1, 1, T, C)).astype(np.float32), np.array([w], np.int64)) for w in (3, 17)]
    write_samples(tmp_path, samples, prefixes=("x", "width"))
    rk = built_rknn(tmp_path / "m.onnx", tmp_path / "dataset.txt", target_platform="rk3588", quantized_dtype="w8a8")
    assert rk.export_tflite(str(tmp_path / "m.tflite"), input_dtype="float32") == -1
    assert "fmod=1" in logged_errors(rknn_log)[-1] and "FLOOR_MOD computes fmod=0 only" in logged_errors(rknn_log)[-1]
    assert not (tmp_path / "m.tflite").exists()
    rk.release()
