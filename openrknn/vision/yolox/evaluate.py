"""Detection mAP@IoU (VOC style, all-point interpolated AP), numpy only.

For each class, detections of all images are ranked by score; a detection is a true positive when its best-IoU
ground-truth box of the same class in the same image reaches iou_thr and was not already claimed by a higher-scored
detection (duplicates are false positives). AP is the area under the precision envelope (VOC 2010+ / COCO-style
all-point interpolation, not the 11-point VOC 2007 variant).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from openrknn.errors import ConfigError
from openrknn.vision.nms import box_iou


@dataclass(frozen=True)
class MapResult:
    """mAP over the classes that have ground truth; per-class AP (NaN where a class has no ground truth)."""

    map: float
    ap: np.ndarray  # [num_classes]
    num_gt: np.ndarray  # [num_classes]
    num_det: np.ndarray  # [num_classes]
    iou_thr: float

    def as_dict(self, class_names: Sequence[str] | None = None) -> dict:
        names = list(class_names) if class_names is not None else [str(i) for i in range(len(self.ap))]
        return {"map": self.map, "iou_thr": self.iou_thr,
                "per_class": {n: {"ap": None if np.isnan(a) else float(a), "num_gt": int(g), "num_det": int(d)}
                              for n, a, g, d in zip(names, self.ap, self.num_gt, self.num_det)}}


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the monotone precision envelope of a ranked list (recall ascending)."""
    r = np.concatenate([[0.0], np.asarray(recall, np.float64), [1.0]])
    p = np.concatenate([[0.0], np.asarray(precision, np.float64), [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]  # precision envelope: best precision at any higher recall
    steps = np.flatnonzero(r[1:] != r[:-1])
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


def _check(name: str, boxes: np.ndarray, n: int | None = None) -> np.ndarray:
    arr = np.asarray(boxes, np.float64)
    if arr.size == 0:
        arr = arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ConfigError(name, arr.shape, "an [N, 4] xyxy box array per image")
    if n is not None and arr.shape[0] != n:
        raise ConfigError(name, arr.shape, f"{n} boxes, one per score / class id")
    return arr


def _class_matches(det_img: np.ndarray, det_scores: np.ndarray, det_boxes: list[np.ndarray],
                   gt_boxes: list[np.ndarray], iou_thr: float) -> np.ndarray:
    """True-positive flags of one class's detections in global score order."""
    order = np.argsort(-det_scores, kind="stable")
    tp = np.zeros(order.size, bool)
    claimed = [np.zeros(len(g), bool) for g in gt_boxes]
    for rank, k in enumerate(order):
        img = det_img[k]
        g = gt_boxes[img]
        if len(g) == 0:
            continue
        ious = box_iou(det_boxes[k][None].astype(np.float32), g.astype(np.float32))[0]
        j = int(np.argmax(ious))
        if ious[j] >= iou_thr and not claimed[img][j]:
            claimed[img][j] = True
            tp[rank] = True
    return tp


def evaluate_map(
    detections: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    ground_truth: Sequence[tuple[np.ndarray, np.ndarray]],
    num_classes: int,
    iou_thr: float = 0.5,
) -> MapResult:
    """mAP@iou_thr of per-image detections (boxes [N, 4] xyxy, scores [N], class_ids [N]) against per-image
    ground truth (boxes [M, 4] xyxy, class_ids [M]), both in the same pixel coordinates, images in the same order."""
    if len(detections) != len(ground_truth):
        raise ConfigError("detections", len(detections), f"one entry per ground-truth image ({len(ground_truth)})")
    if not 0.0 < float(iou_thr) <= 1.0:
        raise ConfigError("iou_thr", iou_thr, "a number in (0, 1]")
    dets = []
    for i, (b, s, c) in enumerate(detections):
        s = np.asarray(s, np.float64).reshape(-1)
        dets.append((_check(f"detections[{i}].boxes", b, s.size), s, np.asarray(c, np.int64).reshape(-1)))
    gts = []
    for i, (b, c) in enumerate(ground_truth):
        c = np.asarray(c, np.int64).reshape(-1)
        gts.append((_check(f"ground_truth[{i}].boxes", b, c.size), c))

    ap = np.full(num_classes, np.nan)
    num_gt = np.zeros(num_classes, np.int64)
    num_det = np.zeros(num_classes, np.int64)
    for cls in range(num_classes):
        gt_boxes = [b[c == cls] for b, c in gts]
        n_gt = sum(len(g) for g in gt_boxes)
        sel = [(i, b[c == cls], s[c == cls]) for i, (b, s, c) in enumerate(dets)]
        det_img = np.concatenate([np.full(len(s), i) for i, _, s in sel]) if sel else np.zeros(0, np.int64)
        det_scores = np.concatenate([s for _, _, s in sel]) if sel else np.zeros(0)
        det_boxes = [row for _, b, _ in sel for row in b]
        num_gt[cls], num_det[cls] = n_gt, det_scores.size
        if n_gt == 0:
            continue  # no ground truth: AP undefined, left out of the mean
        if det_scores.size == 0:
            ap[cls] = 0.0
            continue
        tp = _class_matches(det_img, det_scores, det_boxes, gt_boxes, float(iou_thr))
        ctp = np.cumsum(tp)
        recall = ctp / n_gt
        precision = ctp / np.arange(1, tp.size + 1)
        ap[cls] = average_precision(recall, precision)
    valid = ~np.isnan(ap)
    m = float(ap[valid].mean()) if valid.any() else float("nan")
    return MapResult(map=m, ap=ap, num_gt=num_gt, num_det=num_det, iou_thr=float(iou_thr))
