"""auto_pad (Keras / TensorFlow exports) becomes explicit pads with the same outputs."""

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from openrknn.graph.pads import explicit_pads, same_pads


def _run(model, x):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})


def _model():
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((4, 4, 4, 4)).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32), "w3")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], auto_pad="SAME_UPPER", strides=[2, 2], name="c1"),
             helper.make_node("Conv", ["a", "w2"], ["b"], auto_pad="SAME_LOWER", name="c2"),
             helper.make_node("MaxPool", ["b"], ["c"], kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER",
                              name="p"),
             helper.make_node("Conv", ["c", "w3"], ["y"], auto_pad="VALID", name="c3")]
    g = helper.make_graph(nodes, "pads", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 17, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_auto_pad_becomes_explicit_pads_with_the_same_outputs():
    m = _model()
    x = np.random.default_rng(1).standard_normal((1, 3, 17, 16)).astype(np.float32)
    want = _run(m, x)[0]
    assert explicit_pads(m) == 4
    assert not any(a.name == "auto_pad" for n in m.graph.node for a in n.attribute)
    pads = {n.name: [a.ints for a in n.attribute if a.name == "pads"][0] for n in m.graph.node}
    assert list(pads["c1"]) == [1, 0, 1, 1] and list(pads["c3"]) == [0, 0, 0, 0]
    assert list(pads["c2"]) == [2, 2, 1, 1]  # SAME_LOWER: the odd pad goes first
    np.testing.assert_array_equal(_run(m, x)[0], want)


def test_unknown_spatial_size_keeps_auto_pad():
    m = _model()
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "h"
    assert explicit_pads(m) == 1  # VALID needs no size; the SAME ones stay as they are
    assert sum(any(a.name == "auto_pad" for a in n.attribute) for n in m.graph.node) == 3


def test_same_pads_per_axis():
    assert same_pads(16, 3, 2, 1, True) == (0, 1)
    assert same_pads(17, 3, 2, 1, True) == (1, 1)
    assert same_pads(5, 4, 1, 1, False) == (2, 1)
    assert same_pads(8, 1, 1, 1, True) == (0, 0)
