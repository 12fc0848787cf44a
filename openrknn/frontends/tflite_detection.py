"""TFLite's custom TFLite_Detection_PostProcess (every SSD / EfficientDet-Lite of TensorFlow's object detection API
and Model Maker ends in it) as ONNX ops: the anchor decode, the best class per box and NonMaxSuppression, the kept
boxes padded to the op's fixed number of detections.

The op's four outputs: boxes [1, D, 4] (ymin, xmin, ymax, xmax), classes [1, D] (0-based, background left out),
scores [1, D] and the number of detections [1], all float; slots past the number found are zero. Its settings come
in the custom options as a FlexBuffer map. The decode follows TFLite's kernel (detection_postprocess.cc):
centre = t / scale x anchor size + anchor centre, half size = 0.5 exp(t / scale) x anchor size. Its "fast" NMS
(use_regular_nms false, the converters' default) ranks each box by its best class and runs one NMS over them; the
"regular" one runs an NMS per class (at most detections_per_class each) and keeps the best D of all. Scores at
least nms_score_threshold count (TFLite's >=; ONNX's NonMaxSuppression keeps scores above its threshold, so it is
given the float just below)."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from ..errors import ModelLoadError


def _options(op, layer: str) -> dict:
    from flatbuffers import flexbuffers

    raw = op.CustomOptionsAsNumpy().tobytes() if op.CustomOptionsLength() else b""
    try:
        opts = flexbuffers.Loads(raw) if raw else {}
    except Exception as e:  # a damaged map: say which layer
        raise ModelLoadError(f"TFLite layer '{layer}' (TFLite_Detection_PostProcess) has options that are not a "
                             f"FlexBuffer map ({type(e).__name__}); the file is damaged") from None
    need = ("max_detections", "num_classes", "nms_score_threshold", "nms_iou_threshold", "y_scale", "x_scale",
            "h_scale", "w_scale")
    missing = [k for k in need if k not in opts]
    if missing:
        raise ModelLoadError(f"TFLite layer '{layer}' (TFLite_Detection_PostProcess) lacks the options "
                             f"{', '.join(missing)}; the file is damaged or not one TFLite's converter wrote")
    return opts


def detection_postprocess(r, op, ins, outs, layer: str) -> None:
    opts = _options(op, layer)
    b = r.b
    if len(ins) != 3 or len(outs) != 4:
        raise ModelLoadError(f"TFLite layer '{layer}' (TFLite_Detection_PostProcess) has {len(ins)} inputs and "
                             f"{len(outs)} outputs, not the 3 and 4 of TFLite's op")
    anchors = r.array(ins[2])
    if anchors is None:
        raise ModelLoadError(f"TFLite layer '{layer}' reads computed anchors; openrknn takes them as constants")
    n_boxes = int(anchors.shape[0])
    with_background = r.shape(ins[1])[2]
    classes = int(opts["num_classes"])
    offset = with_background - classes          # the background score(s) first, as the kernel's label offset
    per_box = int(opts.get("max_classes_per_detection", 1))
    if per_box != 1:
        raise ModelLoadError(f"TFLite layer '{layer}' reports {per_box} classes per detection; openrknn reads the "
                             "converters' default of 1")
    if offset < 0:
        raise ModelLoadError(f"TFLite layer '{layer}' has {with_background} class scores per box for "
                             f"num_classes {classes}; the file is damaged")
    most = int(opts["max_detections"])
    iou = float(opts["nms_iou_threshold"])
    at_least = float(np.nextafter(np.float32(opts["nms_score_threshold"]), np.float32(-np.inf)))
    f32 = lambda v, name: b.const(np.asarray(v, np.float32), f"{layer}/{name}")  # noqa: E731
    i64 = lambda v, name: b.const(np.asarray(v, np.int64), f"{layer}/{name}")  # noqa: E731
    node = lambda kind, inputs, name, **kw: b.node(kind, inputs, f"{layer}/{name}", **kw)  # noqa: E731

    # decode: t / scale, centre = t_yx x anchor_hw + anchor_yx, half = 0.5 exp(t_hw) x anchor_hw
    enc = r.value(ins[0]).name
    scaled = node("Div", [enc, f32([opts["y_scale"], opts["x_scale"], opts["h_scale"], opts["w_scale"]],
                                   "box_scales")], "scaled")
    part = lambda x, lo, hi, name: node("Slice", [x, i64([lo], f"{name}/start"), i64([hi], f"{name}/end"),  # noqa: E731
                                                  i64([2], f"{name}/axis")], name)
    centre = node("Add", [node("Mul", [part(scaled, 0, 2, "t_yx"), f32(anchors[None, :, 2:4], "anchor_hw")],
                               "offset"), f32(anchors[None, :, 0:2], "anchor_yx")], "centre")
    half = node("Mul", [node("Mul", [node("Exp", [part(scaled, 2, 4, "t_hw")], "size"), f32(0.5, "half")],
                             "half_size"), f32(anchors[None, :, 2:4], "anchor_hw2")], "half_box")
    boxes = node("Concat", [node("Sub", [centre, half], "low"), node("Add", [centre, half], "high")], "boxes",
                 axis=2)                                                            # [1, N, 4] ymin xmin ymax xmax
    scores = r.value(ins[1]).name
    if offset:
        scores = part(scores, offset, with_background, "class_scores")             # [1, N, C]
    if opts.get("use_regular_nms", False):
        rows, picked_scores, picked_classes, box_index = _regular(b, node, i64, f32, boxes, scores, opts, iou,
                                                                  at_least, most, classes)
    else:
        best = node("ReduceMax", [scores], "best", axes=[2], keepdims=1)           # [1, N, 1]
        cls = node("ArgMax", [scores], "best_class", axis=2, keepdims=0)           # [1, N]
        rows = node("NonMaxSuppression", [boxes, node("Transpose", [best], "by_box", perm=[0, 2, 1]),
                                          i64([most], "max_detections"), f32([iou], "iou"),
                                          f32([at_least], "score_threshold")], "nms")   # [K, 3]
        box_index = node("Gather", [rows, i64(2, "box_column")], "box_index", axis=1)    # [K]
        picked_scores = node("Gather", [node("Reshape", [best, i64([-1], "flat")], "best_flat"), box_index],
                             "picked_scores")
        picked_classes = node("Cast", [node("Gather", [node("Reshape", [cls, i64([-1], "flat2")], "class_flat"),
                                                       box_index], "picked_class_ids")], "picked_classes",
                              to=TensorProto.FLOAT)
    picked_boxes = node("Gather", [node("Reshape", [boxes, i64([-1, 4], "rows4")], "box_rows"), box_index],
                        "picked_boxes")                                              # [K, 4]

    def padded(x, width, name):  # [K(, 4)] -> [1, D(, 4)]: zeros after the K found, as the kernel leaves them
        zeros = f32(np.zeros((most, width) if width else (most,)), f"{name}/zeros")
        joined = node("Concat", [x, zeros], f"{name}/joined", axis=0)
        first = node("Slice", [joined, i64([0], f"{name}/s"), i64([most], f"{name}/e"), i64([0], f"{name}/a")],
                     f"{name}/first")
        return node("Unsqueeze", [first, i64([0], f"{name}/batch")], name)

    found = node("Cast", [node("Shape", [box_index], "found_shape")], "found", to=TensorProto.FLOAT)
    found = node("Min", [found, f32([most], "at_most")], "num_detections")
    for k, value in enumerate((padded(picked_boxes, 4, "detection_boxes"), padded(picked_classes, 0,
                                                                                   "detection_classes"),
                               padded(picked_scores, 0, "detection_scores"), found)):
        r.put(outs[k], value, "nhwc")
    r.notes.append(f"'{layer}' (TFLite_Detection_PostProcess: {n_boxes} anchors, {classes} classes, at most "
                   f"{most} detections, {'regular' if opts.get('use_regular_nms') else 'fast'} NMS) is read as "
                   "ONNX ops: the decode and NonMaxSuppression, which run on the CPU after the NPU's part")


def _regular(b, node, i64, f32, boxes, scores, opts, iou, at_least, most, classes):
    """An NMS per class (at most detections_per_class each), then the best ``most`` of all kept, by score:
    (rows, scores, classes as float, box index) of the kept ones, best first."""
    per_class = int(opts.get("detections_per_class", 100))
    by_class = node("Transpose", [scores], "by_class", perm=[0, 2, 1])             # [1, C, N]
    rows = node("NonMaxSuppression", [boxes, by_class, i64([per_class], "per_class"), f32([iou], "iou"),
                                      f32([at_least], "score_threshold")], "nms")    # [K, 3]
    kept = node("GatherND", [by_class, rows], "kept_scores")                       # [K]
    # the best `most`: pad with -1 (below any score) so TopK always has that many
    pads = f32(np.full(most, -1.0), "below_any")
    top, at = node("TopK", [node("Concat", [kept, pads], "kept_padded", axis=0), i64([most], "k")], "best",
                   n_out=2, largest=1, sorted=1)
    rows_padded = node("Concat", [rows, i64(np.zeros((most, 3)), "no_rows")], "rows_padded", axis=0)
    chosen = node("Gather", [rows_padded, at], "chosen")                          # [D, 3]
    found = node("Reshape", [node("ReduceSum", [node("Cast", [node("Greater", [top, f32(-0.5, "is_row")],
                                                                   "real"), ], "real_f", to=TensorProto.INT64)],
                                  "count", keepdims=1), i64([1], "one")], "found_rows")
    chosen = node("Slice", [chosen, i64([0], "c0"), found, i64([0], "c_axis")], "chosen_rows")   # [K', 3]
    box_index = node("Gather", [chosen, i64(2, "box_column")], "box_index", axis=1)
    picked_classes = node("Cast", [node("Gather", [chosen, i64(1, "class_column")], "class_ids", axis=1)],
                          "picked_classes", to=TensorProto.FLOAT)
    picked_scores = node("Slice", [top, i64([0], "t0"), found, i64([0], "t_axis")], "picked_scores")
    return chosen, picked_scores, picked_classes, box_index
