"""Outputs that the model's own later layers also read (graph/outputs.py): IS-Net's background-removal export keeps
six decoder feature maps beside its masks, and its int8 mask lost to rknn-toolkit2's until the load said so and the
model was cut to the masks. load_onnx names such outputs and the load_onnx(outputs=...) that drops them."""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from openrknn.frontends.onnx import load_onnx
from openrknn.graph.outputs import exposed_intermediates


def decoder(outputs, cast_feature: bool = False) -> onnx.ModelProto:
    """x -> conv1 -> relu (feature) -> conv2 -> sigmoid (mask); ``outputs`` names which of them the graph returns.
    ``cast_feature``: the feature leaves through a Cast copy (as a float16 export's outputs do)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32), "w1"),
             numpy_helper.from_array((rng.standard_normal((1, 8, 1, 1)) * 0.3).astype(np.float32), "w2")]
    n = helper.make_node
    nodes = [n("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             n("Relu", ["c1"], ["feature"], name="relu"),
             n("Conv", ["feature", "w2"], ["logits"], name="conv2"),
             n("Sigmoid", ["logits"], ["mask"], name="sigmoid")]
    shapes = {"feature": [1, 8, 16, 16], "mask": [1, 1, 16, 16], "mask_copy": [1, 1, 16, 16], "logits": [1, 1, 16, 16]}
    if cast_feature:
        nodes.append(n("Cast", ["feature"], ["feature_out"], name="to_float", to=TensorProto.FLOAT))
        shapes["feature_out"] = shapes["feature"]
    g = helper.make_graph(nodes, "decoder", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                          [helper.make_tensor_value_info(o, TensorProto.FLOAT, shapes[o]) for o in outputs], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_an_output_that_later_layers_read_is_found():
    assert exposed_intermediates(decoder(["mask", "feature"]).graph) == ["feature"]
    assert exposed_intermediates(decoder(["mask", "feature_out"], cast_feature=True).graph) == ["feature_out"]
    assert exposed_intermediates(decoder(["mask"]).graph) == []
    # two final outputs, one a copy of the other: nothing else reads them
    m = decoder(["mask", "mask_copy"])
    m.graph.node.append(helper.make_node("Identity", ["mask"], ["mask_copy"], name="copy"))
    assert exposed_intermediates(m.graph) == []


def test_load_names_them_and_the_cut_that_drops_them(tmp_path, caplog):
    path = tmp_path / "decoder.onnx"
    onnx.save(decoder(["mask", "feature_out"], cast_feature=True), path)
    with caplog.at_level(logging.WARNING, logger="openrknn"):
        notes = load_onnx(path).notes
    said = [n for n in notes if "also feeds the model's later layers" in n]
    assert len(said) == 1 and "'feature_out'" in said[0] and "outputs=['mask']" in said[0], notes
    assert any("'feature_out'" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    # the advice works: the cut model has the mask only, and nothing more to say
    cut = load_onnx(path, outputs=["mask"])
    assert [o.name for o in cut.model.graph.output] == ["mask"]
    assert not [n for n in cut.notes if "later layers" in n]
    # outputs the user names are what the user wants: no advice about them
    assert not [n for n in load_onnx(path, outputs=["mask", "feature"]).notes if "later layers" in n]


def test_a_model_of_final_outputs_only_gets_no_note(tmp_path):
    path = tmp_path / "plain.onnx"
    onnx.save(decoder(["mask"]), path)
    assert not [n for n in load_onnx(path).notes if "later layers" in n]


def test_several_are_named_in_one_note(tmp_path):
    m = decoder(["mask", "feature"])
    m.graph.output.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1, 16, 16]))
    onnx.save(m, tmp_path / "taps.onnx")
    said = [n for n in load_onnx(tmp_path / "taps.onnx").notes if "later layers" in n]
    assert len(said) == 1 and said[0].startswith("outputs 'feature', 'logits' also feed "), said
    assert "outputs=['mask']" in said[0]


def test_an_integer_output_that_later_layers_read_is_not_named(tmp_path):
    """trueocr's recognizer returns its decoded lengths (int64) and reads them further: an integer is never quantized,
    so it constrains nothing, and the user needs it."""
    m = decoder(["mask"])
    m.graph.node.extend([
        helper.make_node("ArgMax", ["logits"], ["index"], name="argmax", axis=1),
        helper.make_node("Cast", ["index"], ["index_f"], name="to_float", to=TensorProto.FLOAT),
        helper.make_node("Add", ["index_f", "mask"], ["mixed"], name="add")])
    m.graph.output.extend([helper.make_tensor_value_info("index", TensorProto.INT64, [1, 1, 16, 16]),
                           helper.make_tensor_value_info("mixed", TensorProto.FLOAT, [1, 1, 16, 16])])
    assert exposed_intermediates(m.graph) == ["mask"]
    onnx.save(m, tmp_path / "lengths.onnx")
    said = [n for n in load_onnx(tmp_path / "lengths.onnx").notes if "later layers" in n]
    assert len(said) == 1 and said[0].startswith("output 'mask' also feeds"), said
    assert "outputs=['index', 'mixed']" in said[0]  # the integer output is one the cut keeps
