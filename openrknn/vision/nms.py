"""Vectorised non-maximum suppression on numpy arrays (xyxy boxes, continuous pixel coordinates).

The result equals classic greedy NMS (highest score first, drop every later box whose IoU with a kept box exceeds the
threshold), computed without a Python loop per box:
1. all "i may suppress j" relations (i scores higher, IoU > threshold, same class when class-aware) come at once
   from the IoU matrix: whole for up to ~180 boxes, else in cache-sized row blocks kept as (i, j) pairs, so memory
   stays bounded for thousands of candidates;
2. greedy keep/drop is the fixed point of "j is kept iff no kept i suppresses it". Iterating that rule from
   "all kept" is exact after as many rounds as the longest suppression chain (Cluster-NMS, Zheng et al. 2021),
   typically 2-4 and never more than the number of boxes; each round is one vectorised pass.
Class-aware NMS masks out pairs of different classes; for many candidates it first sorts them by class (score order
kept within each class), so each class is a contiguous run and only same-class column ranges are computed. That gives
what the usual "offset boxes by class id" trick gives (no cross-class suppression) without its float32 precision
loss on large offsets, and with less work instead of more when there are many classes.

opencv_nms runs the same greedy rule in OpenCV's C++ for the per-frame detector path, where a few dozen candidates
make numpy's per-call overhead the whole cost.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from openrknn.errors import ConfigError

# IoU-matrix entries computed at once: temporaries of 128 KB stay in cache (measured faster than larger blocks for
# thousands of boxes) and memory stays bounded for any count.
_BLOCK_ELEMENTS = 1 << 15


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
    ax1, ay1, ax2, ay2 = np.ascontiguousarray(a.T)  # coordinate rows: broadcasting on them is the fast path
    bx1, by1, bx2, by2 = np.ascontiguousarray(b.T)
    w = np.minimum(ax2[:, None], bx2) - np.maximum(ax1[:, None], bx1)
    h = np.minimum(ay2[:, None], by2) - np.maximum(ay1[:, None], by1)
    np.maximum(w, 0, out=w)
    np.maximum(h, 0, out=h)
    return np.multiply(w, h, out=w)


def _corners_and_areas(boxes: np.ndarray, iou_thr: float) -> tuple[np.ndarray, np.ndarray]:
    """[4, K] coordinate rows (broadcasting then runs on contiguous rows) and t / (1 + t) * area per box, the
    per-box term of the IoU test in _hits."""
    corners = np.ascontiguousarray(boxes.T)
    sides = corners[2:] - corners[:2]
    np.maximum(sides, 0, out=sides)
    return corners, sides[0] * sides[1] * np.float32(iou_thr / (1.0 + iou_thr))


def _hits(a: np.ndarray, b: np.ndarray, w_area_a: np.ndarray, w_area_b: np.ndarray) -> np.ndarray:
    """IoU > t for corner rows a [4, R, 1] against b [4, 1, C], tested as
    inter > t * (area_a + area_b - inter)  <=>  inter > t / (1 + t) * area_a + t / (1 + t) * area_b
    (w_area = t / (1 + t) * area): no division, and never true when both boxes are empty."""
    overlap = np.minimum(a[2:], b[2:])
    overlap -= np.maximum(a[:2], b[:2])
    np.maximum(overlap, 0, out=overlap)  # [2, R, C]: overlap widths and heights
    return overlap[0] * overlap[1] > w_area_a[:, None] + w_area_b


@lru_cache(maxsize=32)
def _strict_upper(k: int) -> np.ndarray:
    mask = np.triu(np.ones((k, k), dtype=bool), 1)
    mask.setflags(write=False)
    return mask


def _dense_keep(boxes: np.ndarray, iou_thr: float, classes: np.ndarray | None) -> np.ndarray:
    """Greedy keep mask (or kept positions) for boxes in score order, from the whole [K, K] suppression matrix
    (small K)."""
    k = len(boxes)
    corners, w_area = _corners_and_areas(boxes, iou_thr)
    sup = _hits(corners[:, :, None], corners[:, None, :], w_area, w_area)  # sup[i, j]: i may suppress j
    if classes is not None:
        sup &= classes[:, None] == classes
    if k <= 64:
        return _greedy_bits(sup)
    sup &= _strict_upper(k)
    keep = ~sup.any(axis=0)  # round 1: every box still counts as kept
    for _ in range(k):  # bounded by the longest suppression chain; see the module docstring
        following = ~sup[keep].any(axis=0)
        if (following == keep).all():
            break
        keep = following
    return keep


def _greedy_bits(sup: np.ndarray) -> list[int]:
    """Kept positions by the classic greedy walk, for up to 64 boxes: each row of `sup` becomes one 64-bit Python
    int, so the walk is a few integer operations per box instead of numpy calls. Bits of rows at or before a box's
    own position are harmless: those boxes are already decided when it is reached."""
    k = len(sup)
    packed = np.zeros((k, 8), np.uint8)
    packed[:, : (k + 7) // 8] = np.packbits(sup, axis=1, bitorder="little")
    removed, kept = 0, []
    for i, row in enumerate(packed.view("<u8").ravel().tolist()):
        if not removed >> i & 1:
            kept.append(i)
            removed |= row
    return kept


def _suppression_pairs(boxes: np.ndarray, iou_thr: float, group_end: np.ndarray | None = None):
    """(src, dst) index pairs with src < dst and IoU(src, dst) > iou_thr, boxes in processing order, computed in
    cache-sized blocks of rows (large K).

    group_end[i] (boxes sorted into class runs): one past the last box of box i's class run; only same-class pairs
    count, and whole column ranges past a block's last run are skipped. None: class-agnostic.
    """
    k = len(boxes)
    corners, w_area = _corners_and_areas(boxes, iou_thr)
    rows = max(1, _BLOCK_ELEMENTS // max(k, 1))
    srcs, dsts = [], []
    for start in range(0, k, rows):  # a loop over blocks of rows, not over boxes
        stop = min(start + rows, k)
        # columns before `start` lie below the diagonal; columns past the last row's class run never match
        end = k if group_end is None else int(group_end[stop - 1])
        hit = _hits(corners[:, start:stop, None], corners[:, None, start:end], w_area[start:stop], w_area[start:end])
        if group_end is not None:  # same class <=> column inside the row's class run (column > row holds below)
            hit &= np.arange(start, end) < group_end[start:stop, None]
        r, c = np.nonzero(hit)  # block row r is box start + r, column c is box start + c
        upper = c > r
        srcs.append(r[upper] + start)
        dsts.append(c[upper] + start)
    return np.concatenate(srcs), np.concatenate(dsts)


def _greedy_keep(k: int, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Iterate "kept = not suppressed by a kept box" to its fixed point; see the module docstring."""
    keep = np.ones(k, dtype=bool)
    keep[dst] = False  # round 1: every box still counts as kept
    active = keep[src]
    if active.all():  # round 2 would see the same suppressors as round 1: already the fixed point
        return keep
    for _ in range(k):  # bounded by the longest suppression chain
        keep = np.ones(k, dtype=bool)
        keep[dst[active]] = False
        following = keep[src]
        if (following == active).all():  # the next round would repeat this one
            break
        active = following
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

    if score_thr is not None:
        candidates = np.flatnonzero(scores >= score_thr)
        if candidates.size < scores.size:
            kept = greedy_nms(boxes[candidates], scores[candidates], iou_thr, None if classes is None
                              else classes[candidates], max_det, pre_nms_topk)
            return candidates[kept]
    return greedy_nms(boxes, scores, iou_thr, classes, max_det, pre_nms_topk)


def greedy_nms(boxes: np.ndarray, scores: np.ndarray, iou_thr: float, classes: np.ndarray | None = None,
               max_det: int | None = None, pre_nms_topk: int | None = None,
               score_thr: float | None = None) -> np.ndarray:
    """nms() without its argument checks, for callers that made the arrays themselves: float32 boxes [N, 4],
    float32 scores [N], classes [N] or None, iou_thr in [0, 1]. score_thr here only cuts the sorted order (one
    count, no copies of the inputs)."""
    order = np.argsort(-scores, kind="stable")  # ties: lower index first; NaN sorts last
    if score_thr is not None:  # NaN compares false: the count stops before them too
        order = order[: np.count_nonzero(scores >= score_thr)]
    elif order.size and np.isnan(scores[order[-1]]):
        order = order[~np.isnan(scores[order])]
    if pre_nms_topk is not None:
        order = order[: int(pre_nms_topk)]
    if order.size <= 1:
        return order.astype(np.int64)
    with np.errstate(invalid="ignore"):  # inf - inf of a broken box is NaN: it then suppresses nothing, silently
        if order.size ** 2 <= _BLOCK_ELEMENTS:  # small: the whole matrix at once, fewest numpy calls
            kept = order[_dense_keep(boxes[order], iou_thr, None if classes is None else classes[order])]
        elif classes is None:
            src, dst = _suppression_pairs(boxes[order], iou_thr)
            kept = order[_greedy_keep(order.size, src, dst)]
        else:
            by_class = np.argsort(classes[order], kind="stable")  # class runs, score order inside each
            run_classes = classes[order[by_class]]
            group_end = np.searchsorted(run_classes, run_classes, side="right")
            src, dst = _suppression_pairs(boxes[order[by_class]], iou_thr, group_end=group_end)
            kept = order[np.sort(by_class[_greedy_keep(order.size, src, dst)])]  # back to score order
    if max_det is not None:
        kept = kept[: int(max_det)]
    return kept.astype(np.int64)


def opencv_nms(boxes: np.ndarray, scores: np.ndarray, iou_thr: float, classes: np.ndarray | None = None,
               max_det: int | None = None, score_thr: float | None = None) -> np.ndarray:
    """The same greedy NMS through OpenCV's C++ implementation (cv2.dnn.NMSBoxes / NMSBoxesBatched), for the
    per-frame detector path where numpy's per-call overhead dominates a few dozen boxes. Unchecked arguments, as
    greedy_nms. Same rule and tie order (stable, lower index first; checked against the reference in the tests); unlike
    greedy_nms, two empty boxes at one spot count as overlapping, which decoded boxes (exp() sizes) never are.

    OpenCV separates classes by offsetting each class's boxes past the largest coordinate; that only holds when no
    coordinate is negative, so the boxes are first shifted to start at 0 (IoU does not change under a shift).
    """
    # OpenCV keeps scores strictly above its threshold, which must be >= 0; ours keeps those >= score_thr: the next
    # float below it. Thresholds at or below 0 (keep every score) go to greedy_nms instead.
    thr = None if score_thr is None else float(np.nextafter(np.float32(score_thr), np.float32(-np.inf)))
    # non-finite coordinates (a broken model's output) would poison the shift below for every box
    if thr is None or thr < 0 or not np.isfinite(boxes).all():
        return greedy_nms(boxes, scores, iou_thr, classes, max_det, score_thr=score_thr)
    xywh = boxes.astype(np.float64)  # Rect2d: exact for float32 inputs, and the class offsets stay exact
    if len(xywh):
        xywh -= xywh[:, :2].min()
    xywh[:, 2:] -= xywh[:, :2]
    if classes is None:
        kept = cv2.dnn.NMSBoxes(xywh, scores, thr, float(iou_thr))
    else:
        kept = cv2.dnn.NMSBoxesBatched(xywh, scores, classes.astype(np.int32, copy=False), thr, float(iou_thr))
    kept = np.asarray(kept, dtype=np.int64).reshape(-1)
    return kept if max_det is None else kept[: int(max_det)]
