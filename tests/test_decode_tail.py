"""A detector exported with its box decode inside (YOLOv8: distribution softmax, constant projection, anchor
arithmetic, strides, sigmoid on concatenated class logits, one output): the float tail takes the decode in, so it is
computed in float from the head convs' int8 outputs, each with its own scale (quant/plan.py _extend_decode_tail)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import write_npy_dataset
from openrknn.quant import QuantOptions, quantize
from openrknn.quant.dataset import InputSpec, read_dataset
from openrknn.quant.ir import GraphInfo, normalize
from openrknn.quant.plan import build_plan

BINS, CLASSES, SIDE = 8, 2, 32
STRIDES = (4, 8)  # two levels: 8x8 and 4x4 cells


def _init(name, arr, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(arr, dtype), name)


def yolov8_like() -> onnx.ModelProto:
    """Input [1, 3, 32, 32] -> stem conv (ReLU) -> per level: box conv (4 x BINS logits) and class conv; boxes:
    reshape, concat levels, softmax over the bins, 1x1 projection with weights 0..BINS-1, anchor arithmetic
    (x1y1 = anchor - lt, x2y2 = anchor + rb, centre and size) times each cell's stride; classes: reshape, concat,
    sigmoid; output Concat(boxes, scores) [1, 4 + CLASSES, cells]."""
    rng = np.random.default_rng(3)
    cells = [(SIDE // s) ** 2 for s in STRIDES]
    n_all = sum(cells)
    anchors, strides = [], []
    for s in STRIDES:
        side = SIDE // s
        gy, gx = np.mgrid[:side, :side]
        anchors.append(np.stack([gx.ravel() + 0.5, gy.ravel() + 0.5]))
        strides.append(np.full(side * side, float(s)))
    inits = [
        _init("w_stem", rng.normal(0, 0.4, (8, 3, 3, 3))), _init("b_stem", rng.normal(0, 0.1, 8)),
        _init("anchors", np.concatenate(anchors, axis=1)[None]),
        _init("strides", np.concatenate(strides)[None, None]),
        _init("w_dfl", np.arange(BINS).reshape(1, BINS, 1, 1)),
        _init("two", 2.0),
        _init("dfl_shape", [1, 4, BINS, n_all], np.int64), _init("box_shape", [1, 4, n_all], np.int64),
        _init("lt_start", [0], np.int64), _init("lt_end", [2], np.int64), _init("rb_end", [4], np.int64),
        _init("axis1", [1], np.int64),
    ]
    n = helper.make_node
    nodes = [n("Conv", ["x", "w_stem", "b_stem"], ["stem_c"], pads=[1, 1, 1, 1], strides=[2, 2]),
             n("Relu", ["stem_c"], ["stem"])]
    boxes, scores = [], []
    feat = "stem"  # 16x16; each level pools it once more: 8x8 (stride 4), 4x4 (stride 8)
    for level, s in enumerate(STRIDES):
        nodes.append(n("MaxPool", [feat], [f"p{level}"], kernel_shape=[2, 2], strides=[2, 2]))
        feat = f"p{level}"
        inits += [_init(f"w_box{level}", rng.normal(0, 0.8, (4 * BINS, 8, 1, 1))),
                  _init(f"b_box{level}", rng.normal(0, 1.0, 4 * BINS)),
                  _init(f"w_cls{level}", rng.normal(0, 0.5, (CLASSES, 8, 1, 1))),
                  _init(f"b_cls{level}", np.full(CLASSES, -3.0 - 2 * level)),
                  _init(f"flat_box{level}", [1, 4 * BINS, cells[level]], np.int64),
                  _init(f"flat_cls{level}", [1, CLASSES, cells[level]], np.int64)]
        nodes += [n("Conv", [feat, f"w_box{level}", f"b_box{level}"], [f"box{level}"]),
                  n("Conv", [feat, f"w_cls{level}", f"b_cls{level}"], [f"cls{level}"]),
                  n("Reshape", [f"box{level}", f"flat_box{level}"], [f"box{level}_flat"]),
                  n("Reshape", [f"cls{level}", f"flat_cls{level}"], [f"cls{level}_flat"])]
        boxes.append(f"box{level}_flat")
        scores.append(f"cls{level}_flat")
    nodes += [
        n("Concat", boxes, ["box_all"], axis=2), n("Concat", scores, ["cls_all"], axis=2),
        n("Reshape", ["box_all", "dfl_shape"], ["dfl_in"]), n("Transpose", ["dfl_in"], ["dfl_t"], perm=[0, 2, 1, 3]),
        n("Softmax", ["dfl_t"], ["dfl_p"], axis=1), n("Conv", ["dfl_p", "w_dfl"], ["dfl_e"]),
        n("Reshape", ["dfl_e", "box_shape"], ["dist"]),
        n("Slice", ["dist", "lt_start", "lt_end", "axis1"], ["lt"]),
        n("Slice", ["dist", "lt_end", "rb_end", "axis1"], ["rb"]),
        n("Sub", ["anchors", "lt"], ["x1y1"]), n("Add", ["anchors", "rb"], ["x2y2"]),
        n("Add", ["x1y1", "x2y2"], ["sum"]), n("Div", ["sum", "two"], ["centre"]),
        n("Sub", ["x2y2", "x1y1"], ["size"]), n("Concat", ["centre", "size"], ["xywh"], axis=1),
        n("Mul", ["xywh", "strides"], ["boxes"]), n("Sigmoid", ["cls_all"], ["probs"]),
        n("Concat", ["boxes", "probs"], ["out"], axis=1),
    ]
    graph = helper.make_graph(nodes, "yolov8_like", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                    [1, 3, SIDE, SIDE])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4 + CLASSES, n_all])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    return read_dataset(write_npy_dataset(tmp_path_factory.mktemp("calib"), (1, 3, SIDE, SIDE), high=1.0),
                        [InputSpec("x", (1, 3, SIDE, SIDE))])


def test_the_decode_joins_the_float_tail_and_the_head_convs_keep_their_own_scales():
    info = GraphInfo(normalize(yolov8_like()))
    plan = build_plan(info)
    for t in ("dfl_t", "dfl_p", "dfl_e", "lt", "x1y1", "centre", "boxes", "probs", "cls_all", "box_all", "out"):
        assert t in plan.float_tail, t
    # the projection (a 1x1 conv with 8 constant weights) stays float: no quantized weight
    assert all(info.nodes[w.node].output[0] != "dfl_e" for w in plan.weighted)
    assert {info.nodes[w.node].output[0] for w in plan.weighted} == {"stem_c", "box0", "box1", "cls0", "cls1"}
    # each head conv is a quantization point of its own: no concat ties the levels' or the kinds' scales
    heads = ["box0", "box1", "cls0", "cls1"]
    assert all(h in plan.points for h in heads)
    assert len({plan.group_of[h] for h in heads}) == 4


def test_a_sigmoid_right_after_a_conv_stays_fused_and_int8():
    """YOLOX's head (Concat of box conv, Sigmoid(objectness conv), ...): the sigmoids stay in their convs."""
    from test_quant_schemes import tiny_model

    info = GraphInfo(normalize(tiny_model()))
    plan = build_plan(info)
    assert "cls" not in plan.float_tail and "cls" in plan.points
    assert plan.float_tail == {"head", "det"}


def _cut(model: onnx.ModelProto, outputs) -> onnx.ModelProto:
    """The model with ``outputs`` as its outputs and what only fed the old ones removed (onnx.utils.Extractor)."""
    from onnx.utils import Extractor

    return Extractor(onnx.shape_inference.infer_shapes(model)).extract_model(["x"], list(outputs))


def _decode(box0, box1, cls0, cls1) -> np.ndarray:
    """The decode inside yolov8_like, in numpy: what a user writes after cutting the model at the head convs."""
    cols = []
    for (box, cls), s in zip(((box0, cls0), (box1, cls1)), STRIDES):
        side = SIDE // s
        d = box.reshape(4, BINS, side * side).astype(np.float64)
        e = np.exp(d - d.max(axis=1, keepdims=True))
        dist = (e / e.sum(axis=1, keepdims=True) * np.arange(BINS)[None, :, None]).sum(axis=1)
        gy, gx = np.mgrid[:side, :side]
        cx, cy = gx.ravel() + 0.5, gy.ravel() + 0.5
        x1, y1, x2, y2 = cx - dist[0], cy - dist[1], cx + dist[2], cy + dist[3]
        xywh = np.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]) * s
        cols.append(np.concatenate([xywh, 1 / (1 + np.exp(-cls.reshape(CLASSES, -1)))]))
    return np.concatenate(cols, axis=1)[None]


def test_the_shipped_model_in_int8_decodes_like_the_model_cut_at_its_head(calib):
    """rknn_model_zoo's YOLOv8 recipe (cut at the head convs, decode on the CPU) is what the shipped file now gets
    by itself: the same head integers, and the same boxes and scores after the decode."""
    model = yolov8_like()
    heads = ["box0", "box1", "cls0", "cls1"]
    opts = QuantOptions(dtype="w8a8", range_choice=False)  # the judged outputs differ between the two models
    shipped = quantize(model, calib, opts, progress=False)
    cut = quantize(_cut(model, heads), calib, opts, progress=False)
    for h in heads:
        assert shipped.tensors[h]["scale"] == cut.tensors[h]["scale"], h
        assert shipped.tensors[h]["zero_point"] == cut.tensors[h]["zero_point"], h

    def run(m, feed):
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)

    for feed in calib:
        got = run(shipped.model, feed)[0]
        decoded = _decode(*run(cut.model, feed))
        np.testing.assert_allclose(got, decoded, atol=1e-3)
        ref = run(model, feed)[0]
        assert np.abs(got[:, 4:] - ref[:, 4:]).max() < 0.03  # scores


def test_the_float_decode_exports_to_tflite_and_matches_the_simulator(tmp_path):
    """The projection stays a float CONV_2D with float weights, the rest float TFLite ops after DEQUANTIZE."""
    from conftest import built_rknn
    from openrknn.metrics import cosine
    from openrknn.runtime.tflite_runner import TfliteRunner

    path = tmp_path / "m.onnx"
    onnx.save(yolov8_like(), path)
    rk = built_rknn(path, write_npy_dataset(tmp_path, (1, SIDE, SIDE, 3), high=1.0), target_platform="rk3588",
                    quantized_dtype="w8a8")
    out = tmp_path / "m.tflite"
    assert rk.export_tflite(str(out), input_dtype="float32") == 0, rk.last_error
    runner = TfliteRunner(str(out), delegate=None)
    rng = np.random.default_rng(9)
    for _ in range(3):
        x = rng.uniform(0, 1, (1, SIDE, SIDE, 3)).astype(np.float32)
        ours, theirs = rk.inference(inputs=[x]), runner.run([x])
        assert cosine(ours[0], theirs[0]) > 0.999
        assert np.abs(ours[0][:, :4] - theirs[0][:, :4]).max() < 0.5  # pixels
    rk.release()
