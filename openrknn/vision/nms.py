"""Vectorised non-maximum suppression on numpy arrays (xyxy boxes, continuous pixel coordinates).

The result equals classic greedy NMS (highest score first, drop every later box whose IoU with a kept box exceeds the
threshold), computed without a Python loop per box:
1. all "j may suppress i" pairs (j scores higher, IoU > threshold, same class when class-aware) are found at once from
   the IoU matrix, built in row blocks so memory stays bounded for thousands of candidates;
2. greedy keep/drop is the fixed point of "i is kept iff no kept j suppresses it". Iterating that rule from
   "all kept" is exact after as many rounds as the longest suppression chain (Cluster-NMS, Zheng et al. 2021),
   typically 2-4 and never more than the number of boxes; each round is one vectorised pass over the pairs.
Class-aware NMS masks pairs of different classes, which is what the usual "offset boxes by class id" trick achieves,
without the float32 precision loss of adding large offsets to coordinates.
"""

from __future__ import annotations

import numpy as np

from openrknn.errors import ConfigError

# Upper bound on IoU-matrix entries computed at once (4 MB of float32 per temporary).
_BLOCK_ELEMENTS = 1 << 20


def box_area(boxes: np.ndarray) -> np.ndarray:
    """Areas of [N, 4] xyxy boxes; inverted boxes count as empty."""
    b = np.asarray(boxes, dtype=np.float32)
    return np.maximum(b[:, 2] - b[:, 0], 0) * np.maximum(b[:, 3] - b[:, 1], 0)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix [N, M] of xyxy boxes a [N, 4] and b [M, 4]; 0 where the union is empty."""
    a = np.asarray(a, dtype=np.float32).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float32).reshape(-1, 4)
    inter = _intersection(a, b)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    np.maximum(w, 0, out=w)
    np.maximum(h, 0, out=h)
    return w * h


def _suppression_pairs(boxes: np.ndarray, iou_thr: float, classes: np.ndarray | None):
    """(src, dst) index pairs with src < dst (boxes sorted by score) and IoU(src, dst) > iou_thr."""
    k = len(boxes)
    areas = box_area(boxes)
    rows = max(1, _BLOCK_ELEMENTS // max(k, 1))
    srcs, dsts = [], []
    for start in range(0, k, rows):  # a loop over memory blocks, not over boxes
        stop = min(start + rows, k)
        a, b = boxes[start:stop], boxes[start:]  # only columns >= start can lie above the diagonal
        inter = _intersection(a, b)
        union = areas[start:stop, None] + areas[None, start:] - inter
        # inter > thr * union  <=>  IoU > thr, without a division (and never true for empty unions)
        hit = inter > iou_thr * union
        hit &= np.arange(b.shape[0])[None, :] > np.arange(a.shape[0])[:, None]
        if classes is not None:
            hit &= classes[start:stop, None] == classes[None, start:]
        r, c = np.nonzero(hit)
        srcs.append(r + start)
        dsts.append(c + start)
    return np.concatenate(srcs), np.concatenate(dsts)


def _greedy_keep(k: int, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    keep = np.ones(k, dtype=bool)
    if src.size == 0:
        return keep
    for _ in range(k):  # bounded by the longest suppression chain; see the module docstring
        new = np.ones(k, dtype=bool)
        new[dst[keep[src]]] = False
        if np.array_equal(new, keep):
            break
        keep = new
    return keep


def _check_threshold(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ConfigError(name, value, "a number in [0, 1]")
    return value


def nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    iou_thr: float = 0.45,
    class_ids: np.ndarray | None = None,
    score_thr: float | None = None,
    max_det: int | None = None,
    pre_nms_topk: int | None = None,
) -> np.ndarray:
    """Greedy NMS; returns int64 indices into `boxes`, highest score first.

    boxes: [N, 4] xyxy; scores: [N]. class_ids: [N] ints for class-aware NMS (boxes of different classes never
    suppress each other), None for class-agnostic. score_thr drops boxes scoring below it first; NaN scores are always
    dropped. pre_nms_topk keeps only that many best candidates before NMS (bounds the cost), max_det that many after.
    A box suppresses a later one when their IoU is strictly greater than iou_thr.
    """
    boxes = np.asarray(boxes, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float32)
    if boxes.size == 0 and boxes.ndim <= 2:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ConfigError("boxes", boxes.shape, "an [N, 4] array of x1, y1, x2, y2")
    if scores.shape != (boxes.shape[0],):
        raise ConfigError("scores", scores.shape, f"shape ({boxes.shape[0]},), one score per box")
    classes = None
    if class_ids is not None:
        classes = np.asarray(class_ids)
        if classes.shape != scores.shape:
            raise ConfigError("class_ids", classes.shape, f"shape {scores.shape}, one class id per box")
    iou_thr = _check_threshold("iou_thr", iou_thr)
    for name, value in (("max_det", max_det), ("pre_nms_topk", pre_nms_topk)):
        if value is not None and int(value) < 0:
            raise ConfigError(name, value, "None or an int >= 0")

    valid = scores >= score_thr if score_thr is not None else ~np.isnan(scores)
    candidates = np.flatnonzero(valid)
    order = candidates[np.argsort(-scores[candidates], kind="stable")]
    if pre_nms_topk is not None:
        order = order[: int(pre_nms_topk)]
    if order.size == 0:
        return order.astype(np.int64)
    src, dst = _suppression_pairs(boxes[order], iou_thr, None if classes is None else classes[order])
    kept = order[_greedy_keep(order.size, src, dst)]
    if max_det is not None:
        kept = kept[: int(max_det)]
    return kept.astype(np.int64)
