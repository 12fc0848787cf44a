"""Merged shard results -> the metric, with a bootstrap confidence interval over images.

cosine: mean over images of the mean output cosine to the float model. top1: share of images whose top-1 class is
the float model's. accuracy: share whose top-1 is the label. map50: COCO mAP at IoU 0.5 (pycocotools' COCOeval,
all areas, 100 detections per image) against COCO-style labels or the float model's detections.
The interval resamples images with replacement (``resamples`` times, a fixed seed: the same data give the same
interval) and takes the percentiles of the metric.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import ConfigError, NotSupportedError
from .evaluation import EvalSpec


@dataclass(frozen=True)
class MetricResult:
    name: str
    value: float
    low: float
    high: float
    samples: int

    def as_dict(self) -> dict:
        return {"metric": self.name, "value": self.value, "ci_low": self.low, "ci_high": self.high,
                "samples": self.samples}


def score(merged: Dict[str, list], spec: EvalSpec, labels: Optional["Labels"] = None) -> MetricResult:
    n = len(merged["index"])
    if spec.metric == "map50":
        gts = merged["ref"] if spec.labels == "float" else labels.for_names(merged["name"])
        dets = merged["dets"]

        def stat(idx: np.ndarray) -> float:
            return coco_map50([gts[i] for i in idx], [dets[i] for i in idx])
    else:
        if spec.metric == "cosine":
            per = np.asarray(merged["value"], np.float64)
        elif spec.metric == "top1":
            per = (np.asarray(merged["value"]) == np.asarray(merged["ref"])).astype(np.float64)
        else:
            truth = labels.classes_for(merged["name"])
            per = (np.asarray(merged["value"]) == np.asarray(truth)).astype(np.float64)

        def stat(idx: np.ndarray) -> float:
            return float(per[idx].mean())
    value = stat(np.arange(n))
    low = high = value
    if spec.resamples and n > 1:
        rng = np.random.default_rng(0)
        boots = np.sort([stat(rng.integers(0, n, n)) for _ in range(spec.resamples)])
        a = (1 - spec.confidence) / 2
        low, high = float(np.quantile(boots, a)), float(np.quantile(boots, 1 - a))
    return MetricResult(spec.metric, float(value), low, high, n)


def coco_map50(gts: Sequence[List[list]], dets: Sequence[List[list]]) -> float:
    """mAP@0.5 of per-image detections [[x1, y1, x2, y2, score, class], ...] against per-image ground truth
    [[x1, y1, x2, y2, (score,) class], ...] (class = the detector's class index), with pycocotools."""
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise NotSupportedError("metric map50 needs pycocotools: pip install 'openrknn[sweep]' (or pycocotools)") \
            from None
    images, anns, results, classes = [], [], [], set()
    for i, (g, d) in enumerate(zip(gts, dets)):
        images.append({"id": i + 1})
        for row in g:
            x1, y1, x2, y2, c = row[0], row[1], row[2], row[3], int(row[-1])
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": c + 1, "iscrowd": 0,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)})
            classes.add(c)
        for x1, y1, x2, y2, s, c in d:
            results.append({"image_id": i + 1, "category_id": int(c) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "score": s})
            classes.add(int(c))
    if not anns:
        return float("nan")
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": c + 1} for c in sorted(classes)]}
        gt.createIndex()
        dt = gt.loadRes(results) if results else COCO()
        if not results:
            return 0.0
        ev = COCOeval(gt, dt, "bbox")
        ev.params.iouThrs = np.array([0.5])
        ev.evaluate()
        ev.accumulate()
    prec = ev.eval["precision"][0, :, :, 0, -1]  # [recall, class] at IoU 0.5, all areas, 100 detections
    per_class = [p[p > -1].mean() for p in prec.T if (p > -1).any()]
    return float(np.mean(per_class)) if per_class else float("nan")


class Labels:
    """Ground truth by image file name: class indices (a text file) or boxes (a COCO JSON)."""

    def __init__(self, path: str, metric: str):
        self.path = Path(path)
        if metric == "accuracy":
            self.classes: Dict[str, int] = {}
            for lineno, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
                parts = line.split()
                if not parts or parts[0].startswith("#"):
                    continue
                if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                    raise ConfigError("evaluation.labels", f"{self.path}:{lineno}: {line!r}",
                                      hint="each line: '<image file name> <class index>'")
                self.classes[Path(parts[0]).name] = int(parts[1])
        else:
            self.boxes = _coco_boxes(self.path)

    def classes_for(self, names: Sequence[str]) -> List[int]:
        missing = [n for n in names if n not in self.classes]
        if missing:
            raise ConfigError("evaluation.labels", str(self.path), hint=f"no label for {missing[:3]} "
                              f"({len(missing)} image(s)); list every validation image")
        return [self.classes[n] for n in names]

    def for_names(self, names: Sequence[str]) -> List[List[list]]:
        missing = [n for n in names if n not in self.boxes]
        if missing:
            raise ConfigError("evaluation.labels", str(self.path), hint=f"no COCO 'images' entry with file_name "
                              f"{missing[:3]} ({len(missing)} image(s))")
        return [self.boxes[n] for n in names]


def _coco_boxes(path: Path) -> Dict[str, List[list]]:
    """{file name: [[x1, y1, x2, y2, class index], ...]}; class index = position of the category among the 80 COCO
    detection categories when the file uses those ids, else among its categories sorted by id."""
    from ..vision.detections import COCO80_CATEGORY_IDS

    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        images = {im["id"]: Path(im["file_name"]).name for im in doc["images"]}
        cats = sorted(c["id"] for c in doc.get("categories", []))
        anns = doc.get("annotations", [])
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError("evaluation.labels", str(path), hint=f"not a COCO-style JSON (images with id and "
                          f"file_name, annotations with image_id, category_id, bbox): {e}") from None
    index = ({c: i for i, c in enumerate(COCO80_CATEGORY_IDS)} if set(cats) <= set(COCO80_CATEGORY_IDS)
             else {c: i for i, c in enumerate(cats)})
    out: Dict[str, List[list]] = {name: [] for name in images.values()}
    for a in anns:
        if a.get("iscrowd"):
            continue
        x, y, w, h = a["bbox"]
        out[images[a["image_id"]]].append([x, y, x + w, y + h, index[a["category_id"]]])
    return out


def write_coco_labels(path: Path, names: Sequence[str], sizes: Sequence[Optional[Tuple[int, int]]],
                      boxes: Sequence[List[list]]) -> None:
    """Ground truth [[x1, y1, x2, y2, ..., class], ...] per image as a COCO-style JSON (80-class ids when the
    classes fit), e.g. the float model's detections used as labels."""
    from ..atomic import write_text_atomic
    from ..vision.detections import COCO80_CATEGORY_IDS

    n_cls = 1 + max((int(r[-1]) for b in boxes for r in b), default=0)
    ids = COCO80_CATEGORY_IDS if n_cls <= 80 else tuple(range(1, n_cls + 1))
    images, anns = [], []
    for i, (name, size, rows) in enumerate(zip(names, sizes, boxes)):
        im = {"id": i + 1, "file_name": name}
        if size:
            im.update(height=int(size[0]), width=int(size[1]))
        images.append(im)
        for r in rows:
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": ids[int(r[-1])], "iscrowd": 0,
                         "bbox": [r[0], r[1], r[2] - r[0], r[3] - r[1]], "area": (r[2] - r[0]) * (r[3] - r[1])})
    doc = {"images": images, "annotations": anns, "categories": [{"id": c} for c in ids]}
    write_text_atomic(path, json.dumps(doc))
