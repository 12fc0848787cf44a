"""Detections of one image: xyxy boxes in original-image pixels, scores and class ids, plus JSON / COCO export."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from openrknn.errors import ConfigError

# COCO category ids of the 80 detection classes, in the order detectors output them (ids run 1..90 with gaps).
COCO80_CATEGORY_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33, 34,
    35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63,
    64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
)


@dataclass(frozen=True)
class Detections:
    """N detections: boxes [N, 4] float32 xyxy (original-image pixels), scores [N] float32, class_ids [N] int64."""

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes, dtype=np.float32)
        if boxes.size == 0:
            boxes = boxes.reshape(0, 4)
        scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        class_ids = np.asarray(self.class_ids).reshape(-1)
        if class_ids.dtype.kind not in "iu":
            if class_ids.size and not np.all(np.mod(class_ids, 1) == 0):
                raise ConfigError("class_ids", class_ids.dtype, "integer class indices")
        class_ids = class_ids.astype(np.int64, copy=False)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ConfigError("boxes", boxes.shape, "an [N, 4] array of x1, y1, x2, y2")
        if scores.shape[0] != boxes.shape[0] or class_ids.shape[0] != boxes.shape[0]:
            raise ConfigError("scores/class_ids", (scores.shape, class_ids.shape),
                              f"one score and one class id per box ({boxes.shape[0]} boxes)")
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "class_ids", class_ids)

    @classmethod
    def _trusted(cls, boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray) -> Detections:
        """Wrap arrays that are already float32 [N, 4], float32 [N] and int64 [N] without re-checking them (the
        post-processing hot path, where they are made that way)."""
        det = object.__new__(cls)
        object.__setattr__(det, "boxes", boxes)
        object.__setattr__(det, "scores", scores)
        object.__setattr__(det, "class_ids", class_ids)
        return det

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def select(self, index: Any) -> Detections:
        """A new Detections holding the rows picked by an index array or a boolean mask."""
        index = np.asarray(index)
        if index.dtype != bool:
            index = index.reshape(-1).astype(np.int64)
        return Detections(self.boxes[index], self.scores[index], self.class_ids[index])

    def sorted(self) -> Detections:
        """Highest score first (stable for ties)."""
        return self.select(np.argsort(-self.scores, kind="stable"))

    def to_list(self, class_names: Sequence[str] | None = None, decimals: int = 2) -> list[dict[str, Any]]:
        """JSON-ready dicts: box [x1, y1, x2, y2], score, class_id and, with class_names, class_name."""
        out = []
        for box, score, cid in zip(self.boxes.tolist(), self.scores.tolist(), self.class_ids.tolist()):
            item: dict[str, Any] = {
                "box": [round(v, decimals) for v in box],
                "score": round(score, 4),
                "class_id": cid,
            }
            if class_names is not None:
                item["class_name"] = class_names[cid] if 0 <= cid < len(class_names) else str(cid)
            out.append(item)
        return out

    def to_json(self, class_names: Sequence[str] | None = None, indent: int | None = None) -> str:
        return json.dumps(self.to_list(class_names), indent=indent)

    def to_coco(self, image_id: int, category_ids: Sequence[int] | None = None,
                decimals: int = 2) -> list[dict[str, Any]]:
        """COCO results entries {image_id, category_id, bbox [x, y, w, h], score}.

        category_ids maps class id -> COCO category id (COCO80_CATEGORY_IDS for 80-class COCO models); None uses the
        class id itself.
        """
        out = []
        for box, score, cid in zip(self.boxes.tolist(), self.scores.tolist(), self.class_ids.tolist()):
            if category_ids is not None and not 0 <= cid < len(category_ids):
                raise ConfigError("category_ids", f"{len(category_ids)} entries", f"an entry for class id {cid}")
            x1, y1, x2, y2 = box
            out.append({
                "image_id": image_id,
                "category_id": int(category_ids[cid]) if category_ids is not None else cid,
                "bbox": [round(x1, decimals), round(y1, decimals), round(x2 - x1, decimals), round(y2 - y1, decimals)],
                "score": round(score, 4),
            })
        return out

    @classmethod
    def from_list(cls, items: Sequence[dict[str, Any]]) -> Detections:
        """Inverse of to_list (class names are ignored)."""
        if not items:
            return cls.empty()
        return cls(
            np.array([it["box"] for it in items], np.float32),
            np.array([it["score"] for it in items], np.float32),
            np.array([it["class_id"] for it in items], np.int64),
        )
