"""NonMaxSuppression -> one NON_MAX_SUPPRESSION_V5 per (batch, class), their kept indices joined into ONNX's
[K, 3] rows of (batch, class, box).

ONNX's output has the image's own length K; TFLite's NMS writes a fixed-size index list and a count of the valid
ones. A SLICE at that count gives a tensor whose length is known only when the model runs: the writer stores such
dims as -1 in the tensor's shape signature and the interpreter resizes the ops after it as they run. The selection
rule is the same (greedy, by descending score, boxes as any two opposite corners, a box suppressed by a kept one of
IoU above the threshold, scores above the score threshold); the order of the rows is ONNX's (batch, then class,
then score)."""

from __future__ import annotations

import numpy as np

from ....errors import NotSupportedError
from . import attr, layer_name, register

FLT_MAX = float(np.finfo(np.float32).max)


def _scalar(ctx, node, k: int, what: str, default):
    """Optional input k as a Python number: absent -> default, constant -> its value, computed -> refused."""
    if len(node.input) <= k or not node.input[k]:
        return default
    if not ctx.g.is_const(node.input[k]):
        raise NotSupportedError(f"export-tflite: {layer_name(node)} takes a computed {what}; TFLite's NMS is "
                                f"written here with a constant one")
    arr = np.asarray(ctx.g.const(node.input[k])).reshape(-1)
    if arr.size != 1:
        raise NotSupportedError(f"export-tflite: {layer_name(node)}'s {what} has {arr.size} values, ONNX allows one")
    return arr[0].item()


def _corners(ctx, boxes, n_boxes: int, name: str, layer: str):
    """[x_centre, y_centre, w, h] -> [x1, y1, x2, y2] as onnxruntime computes them (centre -/+ size / 2)."""
    def part(begin, tag):
        out = ctx.new_f(f"{name}/{tag}", (n_boxes, 2))
        consts = [ctx.m.add_const(ctx._tname(f"{name}/{tag}/{k}"), np.asarray(v, np.int32))
                  for k, v in (("begin", [0, begin]), ("end", [n_boxes, begin + 2]), ("strides", [1, 1]))]
        ctx.m.add_op("STRIDED_SLICE", [boxes] + consts, [out], ("StridedSliceOptions", {}), layer=layer)
        return out
    centre, size = part(0, "centre"), part(2, "size")
    half = ctx.float_binary("MUL", size, ctx.m.add_const(ctx._tname("half"), np.asarray(0.5, np.float32)),
                            f"{name}/half", layer)
    low = ctx.float_binary("SUB", centre, half, f"{name}/low", layer)
    high = ctx.float_binary("ADD", centre, half, f"{name}/high", layer)
    return ctx.float_op("CONCATENATION", [low, high], (n_boxes, 4), f"{name}/corners", layer,
                        ("ConcatenationOptions", {"Axis": 1, "FusedActivationFunction": 0}))


def _nms(ctx, node) -> str:
    layer = layer_name(node)
    box_shape, score_shape = ctx.value(node.input[0]).shape, ctx.value(node.input[1]).shape
    if len(box_shape) != 3 or box_shape[2] != 4 or len(score_shape) != 3 or min(box_shape + score_shape) < 1:
        raise NotSupportedError(f"export-tflite: {layer} takes boxes {list(box_shape)} and scores "
                                f"{list(score_shape)}; ONNX NonMaxSuppression needs [B, N, 4] and [B, C, N] of "
                                "known sizes")
    batches, n_boxes = box_shape[0], box_shape[1]
    classes = score_shape[1]
    limit = int(_scalar(ctx, node, 2, "max_output_boxes_per_class", 0))
    iou = float(_scalar(ctx, node, 3, "iou_threshold", 0.0))
    score_min = _scalar(ctx, node, 4, "score_threshold", None)
    if limit <= 0:
        raise NotSupportedError(f"export-tflite: {layer} keeps at most {limit} boxes per class, so it selects "
                                "nothing; give max_output_boxes_per_class a positive value")
    if not 0.0 <= iou <= 1.0:
        raise NotSupportedError(f"export-tflite: {layer}'s iou_threshold {iou} is outside [0, 1]")
    size = min(limit, n_boxes)
    boxes_all = ctx.f_of(node.input[0], layer)
    scores_all = ctx.f_of(node.input[1], layer)
    i32 = lambda tag, v: ctx.m.add_const(ctx._tname(tag), np.asarray(v, np.int32))  # noqa: E731
    f32 = lambda tag, v: ctx.m.add_const(ctx._tname(tag), np.asarray(v, np.float32))  # noqa: E731
    max_out, iou_t = i32("max_output_size", size), f32("iou_threshold", iou)
    # onnxruntime keeps scores strictly above the threshold, as TFLite does; no threshold keeps every box
    score_t = f32("score_threshold", -FLT_MAX if score_min is None else float(score_min))
    sigma = f32("soft_nms_sigma", 0.0)    # 0: hard NMS, ONNX's only kind
    boxes_b = ctx.float_op("RESHAPE", [boxes_all, i32("shape", [batches * n_boxes, 4])], (batches * n_boxes, 4),
                           f"{node.output[0]}/boxes", layer, ("ReshapeOptions", {"NewShape": [batches * n_boxes, 4]}))
    scores_bc = ctx.float_op("RESHAPE", [scores_all, i32("shape", [batches * classes, n_boxes])],
                             (batches * classes, n_boxes), f"{node.output[0]}/scores", layer,
                             ("ReshapeOptions", {"NewShape": [batches * classes, n_boxes]}))
    per_class = [ctx.new_f(f"{node.output[0]}/scores{k}", (n_boxes,)) for k in range(batches * classes)]
    ctx.m.add_op("UNPACK", [scores_bc], per_class, ("UnpackOptions", {"Num": batches * classes, "Axis": 0}),
                 layer=layer)
    rows = []
    for b in range(batches):
        boxes = boxes_b
        if batches > 1:
            boxes = ctx.new_f(f"{node.output[0]}/boxes{b}", (n_boxes, 4))
            ctx.m.add_op("SLICE", [boxes_b, i32("begin", [b * n_boxes, 0]), i32("size", [n_boxes, 4])], [boxes],
                         layer=layer)
        if attr(node, "center_point_box", 0):
            boxes = _corners(ctx, boxes, n_boxes, f"{node.output[0]}/b{b}", layer)
        for c in range(classes):
            tag = f"{node.output[0]}/b{b}c{c}"
            picked = ctx.m.add_tensor(ctx._tname(f"{tag}/indices"), (size,), np.int32)
            picked_scores = ctx.new_f(f"{tag}/scores", (size,))
            count = ctx.m.add_tensor(ctx._tname(f"{tag}/count"), (), np.int32)
            ctx.m.add_op("NON_MAX_SUPPRESSION_V5", [boxes, per_class[b * classes + c], max_out, iou_t, score_t,
                                                    sigma], [picked, picked_scores, count],
                         ("NonMaxSuppressionV5Options", {}), layer=layer)
            count1 = ctx.m.add_tensor(ctx._tname(f"{tag}/count1"), (1,), np.int32)
            ctx.m.add_op("RESHAPE", [count, i32("shape", [1])], [count1], ("ReshapeOptions", {"NewShape": [1]}),
                         layer=layer)
            kept = ctx.m.add_tensor(ctx._tname(f"{tag}/kept"), (-1,), np.int32)   # the first `count` indices
            ctx.m.add_op("SLICE", [picked, i32("begin", [0]), count1], [kept], layer=layer)
            column = ctx.m.add_tensor(ctx._tname(f"{tag}/column"), (-1, 1), np.int32)
            ctx.m.add_op("RESHAPE", [kept, i32("shape", [-1, 1])], [column],
                         ("ReshapeOptions", {"NewShape": [-1, 1]}), layer=layer)
            # (batch, class, box) = box * [0, 0, 1] + [b, c, 0]
            spread = ctx.m.add_tensor(ctx._tname(f"{tag}/spread"), (-1, 3), np.int32)
            ctx.m.add_op("MUL", [column, i32("box_column", [[0, 0, 1]])], [spread],
                         ("MulOptions", {"FusedActivationFunction": 0}), layer=layer)
            row = ctx.m.add_tensor(ctx._tname(f"{tag}/rows"), (-1, 3), np.int32)
            ctx.m.add_op("ADD", [spread, i32("batch_class", [[b, c, 0]])], [row],
                         ("AddOptions", {"FusedActivationFunction": 0}), layer=layer)
            rows.append(row)
    joined = rows[0]
    if len(rows) > 1:
        joined = ctx.m.add_tensor(ctx._tname(f"{node.output[0]}/rows"), (-1, 3), np.int32)
        ctx.m.add_op("CONCATENATION", rows, [joined], ("ConcatenationOptions", {"Axis": 0,
                                                                                 "FusedActivationFunction": 0}),
                     layer=layer)
    out = ctx.m.add_tensor(ctx._tname(node.output[0]), (-1, 3), np.int64)   # ONNX's type
    ctx.m.add_op("CAST", [joined], [out], layer=layer)
    ctx.set_f(node.output[0], out)
    return (f"{batches * classes} TFLite NMS ops (one per batch and class, {size} boxes at most each); the number "
            "of rows is known when the model runs")


register("NonMaxSuppression", float=_nms)
