"""A detector exported with its decode and NMS inside (YOLOX "with post", as PINTO-style tools append it: grid
arithmetic, scores = objectness x class, NonMaxSuppression, the kept rows gathered into one [K, 6] output whose
length depends on the image). The real COCO YOLOX-nano with that tail appended here:
- the w8a8 build works, with calibration images on which nothing is detected (range split's output check divided
  by the power of an empty output, and compared outputs of different lengths);
- the whole tail after the head's concat stays float (quant/plan.py selection_tail): in int8 the decoded boxes
  (pixels) and the scores shared one scale and every score rounded to zero;
- the int8 detections are the float model's."""

from __future__ import annotations

import glob

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from openrknn.testing import yolov7_end2end, yolox_cells
from openrknn.vision.letterbox import letterbox
from openrknn.vision.nms import box_iou

SIZE, CLASSES = 416, 80
pytestmark = pytest.mark.slow  # YOLOX-nano builds, LiteRT runs


def with_post(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` (one output [1, N, 5 + CLASSES]: box logits, objectness, class scores) with the decode and NMS
    appended: output [K, 6] = class, score, x1, y1, x2, y2 in input pixels."""
    cells, strides = yolox_cells(SIZE)
    f32 = lambda a, name: numpy_helper.from_array(np.asarray(a, np.float32), name)  # noqa: E731
    i64 = lambda a, name: numpy_helper.from_array(np.asarray(a, np.int64), name)  # noqa: E731
    g = model.graph
    raw = g.output[0].name
    g.initializer.extend([f32(cells, "post_grid"), f32(strides, "post_stride"),
                          f32(0.5, "post_half"), i64([0], "s0"), i64([2], "s2"), i64([4], "s4"), i64([5], "s5"),
                          i64([5 + CLASSES], "s_end"), i64([2], "axis2"), i64([1], "s1"), i64([3], "s3"),
                          i64([1], "axis1"), i64([100], "max_out"), f32([0.45], "iou"), f32([0.3], "score_thr"),
                          i64([-1], "flat")])
    n = helper.make_node
    g.node.extend([
        n("Slice", [raw, "s0", "s2", "axis2"], ["p_xy"]), n("Slice", [raw, "s2", "s4", "axis2"], ["p_wh"]),
        n("Slice", [raw, "s4", "s5", "axis2"], ["p_obj"]), n("Slice", [raw, "s5", "s_end", "axis2"], ["p_cls"]),
        n("Add", ["p_xy", "post_grid"], ["xy_g"]), n("Mul", ["xy_g", "post_stride"], ["xy"]),
        n("Exp", ["p_wh"], ["wh_e"]), n("Mul", ["wh_e", "post_stride"], ["wh"]),
        n("Mul", ["wh", "post_half"], ["half"]), n("Sub", ["xy", "half"], ["x1y1"]), n("Add", ["xy", "half"], ["x2y2"]),
        n("Concat", ["x1y1", "x2y2"], ["xyxy"], axis=2), n("Concat", ["xy", "wh"], ["cxcywh"], axis=2),
        n("Mul", ["p_obj", "p_cls"], ["scores_nc"]), n("Transpose", ["scores_nc"], ["scores"], perm=[0, 2, 1]),
        n("NonMaxSuppression", ["cxcywh", "scores", "max_out", "iou", "score_thr"], ["sel"], center_point_box=1),
        n("Slice", ["sel", "s0", "s1", "axis1"], ["sel_b"]), n("Slice", ["sel", "s1", "s2", "axis1"], ["sel_c"]),
        n("Slice", ["sel", "s2", "s3", "axis1"], ["sel_i"]),
        n("Concat", ["sel_b", "sel_i"], ["sel_bi"], axis=1),
        n("GatherND", ["xyxy", "sel_bi"], ["kept_boxes"]),          # [K, 4]
        n("GatherND", ["scores", "sel"], ["kept_scores"]),           # [K]
        n("Unsqueeze", ["kept_scores", "axis1"], ["kept_scores2"]),
        n("Cast", ["sel_c"], ["kept_class"], to=TensorProto.FLOAT),
        n("Concat", ["kept_class", "kept_scores2", "kept_boxes"], ["detections"], axis=1)])
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("detections", TensorProto.FLOAT, ["K", 6]))
    return model


@pytest.fixture(scope="module")
def setup(real_data, tmp_path_factory):
    d = tmp_path_factory.mktemp("nms_inside")
    model = onnx.load(str(real_data("models/yolox_nano_coco.onnx")))
    raw = model.graph.output[0].name
    onnx.save(with_post(model), d / "post.onnx")
    files = sorted(glob.glob(str(real_data("images/coco") / "*.jpg")))
    boxed = [letterbox(cv2.imread(f), (SIZE, SIZE), mode="topleft", pad_value=114)[0] for f in files]
    calib = boxed[0::2][:8] + [np.full((SIZE, SIZE, 3), 114, np.uint8)]  # a blank frame: no detection at all
    for k, x in enumerate(calib):
        np.save(d / f"c{k}.npy", x)
    (d / "dataset.txt").write_text("".join(f"c{k}.npy\n" for k in range(len(calib))))
    return d, boxed[1::2], raw


def _kept(ref, got, iou_thr=0.5):
    """(float detections found again with the same class and IoU >= iou_thr, all float detections, extra ones)."""
    kept = total = extra = 0
    for r, t in zip(ref, got):
        total += len(r)
        used = set()
        if len(r) and len(t):
            iou = box_iou(r[:, 2:], t[:, 2:])
            for i in np.argsort(-r[:, 1]):
                cand = [j for j in np.argsort(-iou[i]) if j not in used and iou[i, j] >= iou_thr and t[j, 0] == r[i, 0]]
                if cand:
                    used.add(cand[0])
                    kept += 1
        extra += len(t) - len(used)
    return kept, total, extra


@pytest.fixture(scope="module")
def builds(setup):
    """The float and w8a8 builds' outputs on the held-out images; the w8a8 build kept as d / 'post.rknn'."""
    from openrknn.api import RKNN

    d, held, raw = setup
    results = {}
    for dtype in (None, "w8a8"):
        rk = RKNN(verbose=False)
        assert rk.config(target_platform="rk3588", mean_values=[[0] * 3], std_values=[[1] * 3],
                         **({"quantized_dtype": dtype} if dtype else {})) == 0
        assert rk.load_onnx(str(d / "post.onnx")) == 0, rk.last_error
        assert rk.build(do_quantization=dtype is not None, dataset=str(d / "dataset.txt")) == 0, rk.last_error
        assert rk.init_runtime() == 0
        results[dtype] = [rk.inference(inputs=[x])[0] for x in held]
        if dtype:  # the head's output and everything after it float: nothing quantized from there on
            assert rk.export_rknn(str(d / "post.rknn")) == 0
            qmodel = rk._build.model
            producer = {o: node for node in qmodel.graph.node for o in node.output}
            assert producer[raw].op_type != "DequantizeLinear"
            tail = False
            for node in qmodel.graph.node:
                tail = tail or raw in node.input
                assert not (tail and node.op_type == "QuantizeLinear"), node.name
        rk.release()
    return results


def test_a_detector_with_nms_inside_builds_int8_and_keeps_the_float_detections(builds):
    kept, total, extra = _kept(builds[None], builds["w8a8"])
    assert total >= 20                        # the float model finds things on these images
    assert kept >= 0.9 * total and extra <= 0.15 * total, (kept, total, extra)


def test_the_nms_inside_exports_to_tflite_and_litert_keeps_the_simulators_detections(setup, builds):
    """The open path: the whole detector, NMS included, on the LiteRT interpreter (one TFLite NMS per class, the
    rows' number known when it runs) finds the int8 simulator's detections."""
    from openrknn.api import RKNN
    from openrknn.runtime.tflite_runner import TfliteRunner

    d, held, _ = setup
    rk = RKNN(verbose=False)
    assert rk.load_rknn(str(d / "post.rknn")) == 0
    assert rk.export_tflite(str(d / "post.tflite")) == 0, rk.last_error
    rk.release()
    runner = TfliteRunner(str(d / "post.tflite"), delegate=None)
    got = [runner.run([x])[0] for x in held]
    assert all(g.ndim == 2 and g.shape[1] == 6 for g in got)
    kept, total, extra = _kept(builds["w8a8"], got)
    assert total >= 20
    # what differs is the head's int8 arithmetic near the score threshold, not the selection
    assert kept >= 0.9 * total and extra <= 0.1 * total, (kept, total, extra)


def test_the_outputs_compared_are_what_the_nms_reads(setup):
    """Float and fake-quantized versions are compared (range split's check, range choice, auto hybrid) on fixed-shape
    tensors: the boxes and scores the NMS ranks and the boxes it gathers from, not the detections."""
    from openrknn.graph.outputs import comparable_outputs

    d, _, raw = setup
    graph = onnx.load(str(d / "post.onnx")).graph
    assert sorted(comparable_outputs(graph)) == ["cxcywh", "scores", "xyxy"]
    del graph.node[[n.op_type for n in graph.node].index("NonMaxSuppression"):]
    graph.output[0].name = "scores"
    assert comparable_outputs(graph) == ["scores"]  # no selection: the outputs themselves


def test_a_yolov7_style_end2end_detector_builds_int8_and_exports_whole(real_data, setup):
    """Its class offsets put the NMS's boxes at up to 51,200 pixels: quantized, one step was 200 pixels and the
    int8 build kept 52 of 119 float detections with 529 extra. The whole tail after the head stays float, as with
    any NMS inside (its constant 4x4 MatMul counts as a decode step). LiteRT runs the export, NMS and the Gathers at
    computed indices included."""
    import onnxruntime as ort

    from openrknn.api import RKNN
    from openrknn.runtime.tflite_runner import TfliteRunner

    d, held, _ = setup
    path = yolov7_end2end(real_data("models/yolox_nano_coco.onnx"), d / "end2end.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    as_rows = lambda o: np.concatenate([o[:, 5:7], o[:, 1:5]], 1)  # noqa: E731  (class, score, box) as _kept reads
    ref = [as_rows(sess.run(None, {"images": x.transpose(2, 0, 1)[None].astype(np.float32)})[0]) for x in held]
    rk = RKNN(verbose=False)
    assert rk.config(target_platform="rk3588", mean_values=[[0] * 3], std_values=[[1] * 3]) == 0
    assert rk.load_onnx(str(path)) == 0, rk.last_error
    assert rk.build(do_quantization=True, dataset=str(d / "dataset.txt")) == 0, rk.last_error
    assert rk.init_runtime() == 0
    ours = [as_rows(rk.inference(inputs=[x])[0]) for x in held]
    assert rk.export_tflite(str(d / "end2end.tflite")) == 0, rk.last_error
    rk.release()
    kept, total, extra = _kept(ref, ours)
    assert total >= 20
    assert kept >= 0.9 * total and extra <= 0.1 * total, (kept, total, extra)
    runner = TfliteRunner(str(d / "end2end.tflite"), delegate=None)
    kept, total, extra = _kept(ours, [as_rows(runner.run([x])[0]) for x in held])
    assert kept >= 0.9 * total and extra <= 0.1 * total, (kept, total, extra)
