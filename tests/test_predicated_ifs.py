"""An If on data (openWakeWord's hey_jarvis: a second "verifier" network runs only when the first one's score
reaches 0.5) is loaded as both branches and a Where on the condition (graph/control_flow.predicate_ifs), so the
whole model is a static graph: quantized for the NPU and exportable to TFLite. A branch that cannot run on the
inputs it is not taken for keeps its If."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import built_rknn, write_samples
from openrknn.convert import load_onnx
from openrknn.graph.control_flow import predicate_ifs
from openrknn.metrics import cosine

D = 16
n = helper.make_node
F = TensorProto.FLOAT


def verifier_model(failing_branch: bool = False, other_shape: bool = False) -> onnx.ModelProto:
    """x [1, D] -> p1 = sigmoid(x W1 + b1) [1, 1]; p1 >= 0.5: p2 = sigmoid(relu(x W2) W3) (the verifier), else p1.
    ``failing_branch``: the verifier reshapes x to twice its elements, which fails whenever it runs (inputs never
    pass the threshold then: b1 is very negative). ``other_shape``: the else branch gives p1 as [1], not [1, 1]."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.normal(0, 0.4, (D, 1)).astype(np.float32), "w1"),
             numpy_helper.from_array(np.array([-40.0 if failing_branch else 0.0], np.float32), "b1"),
             numpy_helper.from_array(np.array(0.5, np.float32), "half")]
    then_inits = [numpy_helper.from_array(rng.normal(0, 0.4, (D, 8)).astype(np.float32), "w2"),
                  numpy_helper.from_array(rng.normal(0, 0.4, (8, 1)).astype(np.float32), "w3")]
    if failing_branch:
        then = helper.make_graph([n("Reshape", ["x", "twice"], ["p2"])], "then", [],
                                 [helper.make_tensor_value_info("p2", F, None)],
                                 [numpy_helper.from_array(np.array([1, 2 * D], np.int64), "twice")])
    else:
        then = helper.make_graph([n("MatMul", ["x", "w2"], ["h"]), n("Relu", ["h"], ["hr"]),
                                  n("MatMul", ["hr", "w3"], ["l2"]), n("Sigmoid", ["l2"], ["p2"])], "then", [],
                                 [helper.make_tensor_value_info("p2", F, [1, 1])], then_inits)
    if other_shape:
        other = helper.make_graph([n("Reshape", ["p1", "flat"], ["p1_out"])], "else", [],
                                  [helper.make_tensor_value_info("p1_out", F, [1])],
                                  [numpy_helper.from_array(np.array([1], np.int64), "flat")])
    else:
        other = helper.make_graph([n("Identity", ["p1"], ["p1_out"])], "else", [],
                                  [helper.make_tensor_value_info("p1_out", F, [1, 1])])
    nodes = [n("MatMul", ["x", "w1"], ["l1"]), n("Add", ["l1", "b1"], ["l1b"]), n("Sigmoid", ["l1b"], ["p1"]),
             n("GreaterOrEqual", ["p1", "half"], ["fire"]), n("Squeeze", ["fire"], ["fire1"]),
             n("If", ["fire1"], ["score"], then_branch=then, else_branch=other, name="verify")]
    g = helper.make_graph(nodes, "verifier", [helper.make_tensor_value_info("x", F, [1, D])],
                          [helper.make_tensor_value_info("score", F, None if other_shape else [1, 1])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _inputs(k: int, seed: int = 0):
    return [np.random.default_rng(seed + i).normal(0, 1.5, (1, D)).astype(np.float32) for i in range(k)]


def test_predicated_if_gives_the_same_outputs_on_both_branches():
    m = verifier_model()
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    w1 = numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == "w1"))
    assert predicate_ifs(m) == ["verify"]
    assert not [x for x in m.graph.node if x.op_type == "If"] and [x for x in m.graph.node if x.op_type == "Where"]
    got = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    xs = _inputs(40)
    fired = [float((x @ w1).ravel()[0]) >= 0.0 for x in xs]  # sigmoid(x W1) >= 0.5
    assert 5 < sum(fired) < 35  # both branches are taken among these inputs
    for x in xs:
        np.testing.assert_allclose(got.run(None, {"x": x})[0], ref.run(None, {"x": x})[0], rtol=1e-6)


def test_an_if_on_data_builds_as_one_static_quantized_graph_and_exports(tmp_path):
    path = tmp_path / "verifier.onnx"
    onnx.save(verifier_model(), path)
    loaded = load_onnx(path)
    assert any("1 If node(s) on data computed as both branches" in note and "verify" in note for note in loaded.notes)
    write_samples(tmp_path, _inputs(16, seed=100))
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    xs = _inputs(24, seed=500)
    refs = np.concatenate([ref.run(None, {"x": x})[0].ravel() for x in xs])
    rk = built_rknn(path, tmp_path / "dataset.txt", target_platform="rk3588", quantized_dtype="w8a8")
    ours = np.concatenate([rk.inference(inputs=[x])[0].ravel() for x in xs])
    assert cosine(ours, refs) > 0.99 and np.mean((ours >= 0.5) == (refs >= 0.5)) >= 0.9
    graph = onnx.load_from_string(rk._package.model_bytes).graph
    assert not [x for x in graph.node if x.op_type == "If"]
    # the verifier's weights are int8 too (renamed apart from the graph's names when inlined)
    assert [t for t in rk._package.metadata["quantization"]["tensors"] if t.startswith("w2")]
    from openrknn.runtime.tflite_runner import TfliteRunner

    out = tmp_path / "verifier.tflite"
    assert rk.export_tflite(str(out), input_dtype="float32") == 0, rk.last_error
    runner = TfliteRunner(str(out), delegate=None)
    lite = np.concatenate([runner.run([x])[0].ravel() for x in xs])
    assert cosine(lite, ours) > 0.999
    rk.release()


@pytest.mark.parametrize("variant", ["failing_branch", "other_shape"])
def test_a_branch_that_cannot_run_untaken_or_differs_in_shape_keeps_its_if(tmp_path, variant):
    """A Where would run the failing branch on inputs it was never meant for, and broadcast the [1] output of the
    other variant's else branch to [1, 1]."""
    path = tmp_path / "kept.onnx"
    onnx.save(verifier_model(**{variant: True}), path)
    loaded = load_onnx(path)
    assert [x for x in loaded.model.graph.node if x.op_type == "If"]
    assert not any("computed as both branches" in note for note in loaded.notes)
    rk = built_rknn(path)  # the other_shape file fails onnx's strict check; onnxruntime runs it, and so do we
    x = _inputs(1)[0]
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(rk.inference(inputs=[x])[0], ref, rtol=1e-5, atol=1e-7)
    rk.release()
