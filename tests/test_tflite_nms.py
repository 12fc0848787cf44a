"""export_tflite of an ONNX NonMaxSuppression: TFLite's NMS per (batch, class), its kept rows sliced at the count it
returns (a tensor whose length is known only when the model runs), then the usual GatherND / Slice / Concat / Cast
tail, run on the LiteRT interpreter against openrknn's simulator (onnxruntime's NMS) row by row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import write_samples
from openrknn.api import RKNN


def _nms_model(batches: int, classes: int, boxes: int, center: int, score_threshold, limit: int,
               computed_limit: bool = False, tail_from_end: bool = False, split: bool = False,
               reduced: bool = False, scaled: bool = False) -> onnx.ModelProto:
    """boxes [B, N, 4] and scores [B, C, N] in; the kept rows out as [K, 6] = class, score, the four box values.
    ``split``: the columns of the kept rows taken by one Split (torch's unbind) instead of three Slices."""
    n = helper.make_node
    inits = [numpy_helper.from_array(np.asarray([limit], np.int64), "limit"),
             numpy_helper.from_array(np.asarray([0.5], np.float32), "iou")]
    ins = ["boxes", "scores", "limit_c" if computed_limit else "limit", "iou"]
    if score_threshold is not None:
        inits.append(numpy_helper.from_array(np.asarray([score_threshold], np.float32), "score_min"))
        ins.append("score_min")
    for name, v in (("s0", 0), ("s1", 1), ("s2", 2), ("s3", 3), ("ax1", 1), ("ax0", 0), ("m1", -1),
                    ("big", 2 ** 62)):
        inits.append(numpy_helper.from_array(np.asarray([v], np.int64), name))
    nodes = []
    if computed_limit:  # the limit from the scores: 1 + their largest value, rounded down
        inits.append(numpy_helper.from_array(np.asarray([1.0], np.float32), "one"))
        nodes += [n("ReduceMax", ["scores"], ["smax"], keepdims=0), n("Reshape", ["smax", "s1"], ["smax1"]),
                  n("Add", ["smax1", "one"], ["lim_f"]), n("Cast", ["lim_f"], ["limit_c"], to=TensorProto.INT64)]
    nodes += [n("NonMaxSuppression", ins, ["sel"], center_point_box=center),
              *([n("Split", ["sel"], ["sel_b", "sel_c", "sel_i"], axis=1)] if split else
                [n("Slice", ["sel", "s0", "s1", "ax1"], ["sel_b"]),
                 n("Slice", ["sel", "s1", "s2", "ax1"], ["sel_c"]),
                 n("Slice", ["sel", "s2", "big", "ax1"], ["sel_i"])]),     # to the end, as exporters write it
              n("Concat", ["sel_b", "sel_i"], ["sel_bi"], axis=1),
              n("GatherND", ["boxes", "sel_bi"], ["kept_boxes"]),
              n("GatherND", ["scores", "sel"], ["kept_scores"]),
              n("Unsqueeze", ["kept_scores", "ax1"], ["kept_scores2"]),
              n("Cast", ["sel_c"], ["kept_class"], to=TensorProto.FLOAT),
              n("Concat", ["kept_class", "kept_scores2", "kept_boxes"], ["rows"], axis=1)]
    out = "rows"
    if tail_from_end:  # every row but the last: a slice of the run-time length from its end
        nodes.append(n("Slice", ["rows", "s0", "m1", "ax0"], ["all_but_last"]))
        out = "all_but_last"
    if scaled:  # the rows scaled per column, shifted and turned into columns, as post-processing tails do
        inits += [numpy_helper.from_array(np.asarray([[1, 1, 2, 2, 3, 3]], np.float32), "per_column"),
                  numpy_helper.from_array(np.asarray(0.5, np.float32), "shift")]
        nodes += [n("Mul", ["rows", "per_column"], ["rows_scaled"]), n("Sub", ["rows_scaled", "shift"], ["shifted"]),
                  n("Transpose", ["shifted"], ["columns"], perm=[1, 0])]
        out = "columns"
    if reduced:  # the rows' largest values: an op whose export here needs a fixed length
        nodes.append(n("ReduceMax", ["rows"], ["largest"], axes=[0], keepdims=1))
        out = "largest"
    graph = helper.make_graph(nodes, "nms", [helper.make_tensor_value_info("boxes", TensorProto.FLOAT,
                                                                           [batches, boxes, 4]),
                                             helper.make_tensor_value_info("scores", TensorProto.FLOAT,
                                                                           [batches, classes, boxes])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, [6, "K"] if scaled else
                                                             ["K", 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def _sample(rng, batches: int, classes: int, boxes: int, center: int) -> list:
    """Random boxes in a 100-pixel square; each class's scores a permutation of evenly spaced values in [0, 1] (no two
    equal once quantized to 8 bits: on a tie the two NMS implementations may keep different boxes)."""
    xy = rng.uniform(0, 100, (batches, boxes, 2))
    wh = rng.uniform(5, 40, (batches, boxes, 2))
    b = np.concatenate([xy + wh / 2, wh], -1) if center else np.concatenate([xy, xy + wh], -1)
    s = np.stack([np.stack([rng.permutation(boxes) / (boxes - 1) for _ in range(classes)]) for _ in range(batches)])
    return [b.astype(np.float32), s.astype(np.float32)]


def _built(tmp_path: Path, model: onnx.ModelProto, shape: tuple, seed: int = 0):
    """The model built w8a8 for rk3588 from four random samples: (package path, rng for more samples)."""
    rng = np.random.default_rng(seed)
    onnx.save(model, str(tmp_path / "nms.onnx"))
    dataset = write_samples(tmp_path, [tuple(_sample(rng, *shape)) for _ in range(4)], ("b", "s"))
    rknn = RKNN()
    assert rknn.config(target_platform="rk3588") == 0
    assert rknn.load_onnx(str(tmp_path / "nms.onnx")) == 0, rknn.last_error
    # an NMS reading the graph inputs: nothing before it that the float model computes too (range choice skips)
    assert rknn.build(do_quantization=True, dataset=str(dataset)) == 0, rknn.last_error
    assert rknn.export_rknn(str(tmp_path / "nms.rknn")) == 0
    rknn.release()
    return tmp_path / "nms.rknn", rng


@pytest.mark.parametrize("shape, score_threshold, limit, tail", [
    ((1, 3, 40, 1), 0.3, 10, {}),                # centre boxes, a score threshold, at most 10 per class
    ((1, 3, 40, 1), 0.3, 10, {"split": True}),   # its rows' columns split apart (the last row once went missing)
    ((1, 3, 40, 1), 0.3, 10, {"scaled": True}),  # the rows transposed, scaled and shifted after the NMS
    ((2, 2, 30, 0), None, 100, {}),              # two images, corner boxes, no threshold, a limit above the box count
    ((1, 1, 25, 0), 0.9, 5, {}),                 # one class, a high threshold: a few kept
    ((1, 1, 25, 0), 1.0, 5, {}),                 # nothing above the threshold: no rows at all
])
def test_nms_exports_and_litert_keeps_the_simulators_rows(tmp_path, shape, score_threshold, limit, tail):
    from openrknn.export.tflite import export_tflite_bytes
    from openrknn.package import read_package
    from openrknn.runtime.simulator import Simulator
    from openrknn.runtime.tflite_runner import TfliteRunner

    path, rng = _built(tmp_path, _nms_model(*shape, score_threshold, limit, **tail), shape)
    pkg = read_package(path)
    data, report = export_tflite_bytes(pkg, input_dtype="float32")
    batches, classes = shape[:2]
    assert report.tflite_ops.count("NON_MAX_SUPPRESSION_V5") == batches * classes
    sim, runner = Simulator(pkg.model_bytes, pkg.metadata), TfliteRunner(data, delegate=None)
    counts = []
    for _ in range(6):
        x = _sample(rng, *shape)
        ours, theirs = sim.run(x)[0], runner.run(x)[0]
        assert ours.shape == theirs.shape
        np.testing.assert_array_equal(theirs, ours)     # the same rows in the same order, bit for bit
        counts.append(len(ours))
    assert max(counts) == 0 if score_threshold == 1.0 else min(counts) > 0


def test_the_kept_rows_have_a_run_time_length_in_the_file(tmp_path):
    """The writer stores the NMS's row count as -1 in the shape signature, the interpreter resizes it per image."""
    import tflite

    from openrknn.export.tflite import export_tflite_bytes
    from openrknn.package import read_package

    shape = (1, 2, 20, 0)
    path, _ = _built(tmp_path, _nms_model(*shape, 0.2, 8), shape)
    data, _ = export_tflite_bytes(read_package(path), input_dtype="float32")
    graph = tflite.Model.GetRootAsModel(data, 0).Subgraphs(0)
    out = graph.Tensors(graph.Outputs(0))
    assert list(out.ShapeSignatureAsNumpy()) == [-1, 6]
    assert list(out.ShapeAsNumpy()) == [1, 6]


@pytest.mark.parametrize("kwargs, said", [
    ({"computed_limit": True}, "takes a computed max_output_boxes_per_class"),
    ({"tail_from_end": True}, "whose length is known only when the model runs, from its end"),
    ({"reduced": True}, "(ReduceMax) computes on a tensor whose length is known only when the model runs"),
])
def test_what_the_nms_export_refuses_is_named(tmp_path, kwargs, said, rknn_log, logged_errors):
    shape = (1, 2, 20, 0)
    path, _ = _built(tmp_path, _nms_model(*shape, 0.2, 8, **kwargs), shape)
    rknn = RKNN()
    assert rknn.load_rknn(str(path)) == 0
    assert rknn.export_tflite(str(tmp_path / "nms.tflite"), input_dtype="float32") != 0
    assert any(said in e for e in logged_errors(rknn_log))
    assert not (tmp_path / "nms.tflite").exists()      # nothing half-written
    rknn.release()


def test_validation_compares_selected_rows_as_sets():
    from openrknn.export.tflite.validate import agreement, run_time_rows

    rows = np.array([[0, .9, 1, 2, 3, 4], [1, .8, 5, 6, 7, 8]], np.float32)
    assert run_time_rows({"shape": [0, 6]}) and not run_time_rows({"shape": [1, 6]})
    assert agreement(rows, rows[::-1], rows=True) == pytest.approx(1.0)   # a tie's order is the implementation's
    assert agreement(rows, rows[:1], rows=True) == 0.0                     # a different number kept
    assert agreement(np.zeros((0, 6)), np.zeros((0, 6)), rows=True) == 1.0
    assert agreement(rows, rows[::-1], rows=False) < 0.99                 # any other output: element by element
