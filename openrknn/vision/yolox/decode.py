"""YOLOX output decoding and post-processing, for both output layouts in use.

- "maps": one raw map per level, [1, 5 + nc, h, w] (yolox-pytorch YoloBody, the seed's model, our model.py); channels
  are reg x, reg y, log w, log h, objectness logit, class logits; no sigmoid applied.
- "flat": one [1, N, 5 + nc] array (official YOLOX ONNX export); same box terms, but objectness and class scores have
  already been through a sigmoid. N runs over the levels in order, each level row-major.
For an anchor point at grid cell (gx, gy) of a level with stride s: cx = (x + gx) * s, cy = (y + gy) * s,
w = exp(log w) * s, h = exp(log h) * s, in input (letterboxed) pixels; score = objectness * class score.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Union

import numpy as np

from openrknn.errors import ConfigError
from openrknn.vision.detections import Detections
from openrknn.vision.letterbox import LetterboxTransform, SizeLike, normalize_size, unletterbox_boxes
from openrknn.vision.nms import nms

YOLOX_LAYOUTS = ("auto", "maps", "flat")
# Stride sets tried, in order, when a flat output does not say its strides (P3-P5 is standard, P3-P6 the large-input
# variant).
CANDIDATE_STRIDES = ((8, 16, 32), (8, 16, 32, 64))
# exp() of a log-size above this is > 4.8e8 pixels: any such value is garbage (e.g. a badly quantized model), and
# clipping keeps it finite so IoU arithmetic never sees inf or NaN.
_MAX_LOG_WH = 20.0
# Activated scores outside this range mean the output was not through a sigmoid (raw logits of background anchors
# are far below -0.5); the slack tolerates int8 rounding.
_ACTIVATED_RANGE = (-0.5, 1.5)

Outputs = Union[np.ndarray, Sequence[np.ndarray]]


@dataclass(frozen=True)
class YoloxDecoded:
    """Decoded candidates: boxes [K, 4] float32 xyxy in input pixels, objectness [K] and class_scores [K, nc] in 0..1,
    anchor_index [K] (position among all num_anchors candidates, level after level)."""

    boxes: np.ndarray
    objectness: np.ndarray
    class_scores: np.ndarray
    anchor_index: np.ndarray
    num_anchors: int

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def scores(self) -> np.ndarray:
        """[K, nc] final per-class scores, objectness * class score."""
        return self.objectness[:, None] * self.class_scores


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # exp(-x) overflows to inf for very negative logits; 1 / inf is the right 0
        return 1.0 / (1.0 + np.exp(-x))


@lru_cache(maxsize=64)
def _anchor_grid(levels: tuple[tuple[int, int, int], ...]) -> tuple[np.ndarray, np.ndarray]:
    """(grid [N, 2] float32 of cell x, y; stride [N] float32) for levels ((h, w, stride), ...), cached per shape."""
    grids, strides = [], []
    for h, w, s in levels:
        gy, gx = np.mgrid[0:h, 0:w]
        grids.append(np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32))
        strides.append(np.full(h * w, s, dtype=np.float32))
    grid, stride = np.concatenate(grids), np.concatenate(strides)
    grid.setflags(write=False)  # shared by every call with these shapes
    stride.setflags(write=False)
    return grid, stride


def _as_list(outputs: Outputs) -> list[np.ndarray]:
    # float32 math throughout; float16 or int outputs (e.g. from a runtime) are converted once here
    if isinstance(outputs, np.ndarray):
        return [outputs.astype(np.float32, copy=False)]
    return [np.asarray(o, dtype=np.float32) for o in outputs]


def _resolve_layout(arrays: list[np.ndarray], layout: str) -> str:
    if layout not in YOLOX_LAYOUTS:
        raise ConfigError("layout", layout, YOLOX_LAYOUTS)
    shapes = [a.shape for a in arrays]
    if layout == "auto":
        if len(arrays) == 1 and arrays[0].ndim in (2, 3):
            return "flat"
        if arrays and all(a.ndim == 4 for a in arrays):
            return "maps"
        raise ConfigError("outputs (shapes)", shapes, "one [1, N, 5+nc] array (layout 'flat') or one "
                          "[1, 5+nc, h, w] array per level (layout 'maps')")
    return layout


def _strides_for_maps(arrays: list[np.ndarray], in_w: int, in_h: int,
                      strides: Sequence[int] | None) -> tuple[tuple[int, int, int], ...]:
    if strides is not None and len(strides) != len(arrays):
        raise ConfigError("strides", list(strides), f"one stride per output map ({len(arrays)} maps)")
    levels = []
    for i, a in enumerate(arrays):
        h, w = a.shape[2], a.shape[3]
        s = int(strides[i]) if strides is not None else max(1, round(in_h / h))
        if math.ceil(in_h / s) != h or math.ceil(in_w / s) != w:
            raise ConfigError("outputs (shapes)", [x.shape for x in arrays],
                              f"maps whose h, w equal input size {in_w}x{in_h} divided by a stride",
                              f"Map {i} is {h}x{w}: check input_size (width, height), or pass strides=.")
        levels.append((h, w, s))
    return tuple(levels)


def _strides_for_flat(n: int, in_w: int, in_h: int,
                      strides: Sequence[int] | None) -> tuple[tuple[int, int, int], ...]:
    tried = [tuple(strides)] if strides is not None else list(CANDIDATE_STRIDES)
    for cand in tried:
        levels = tuple((math.ceil(in_h / s), math.ceil(in_w / s), int(s)) for s in cand)
        if sum(h * w for h, w, _ in levels) == n:
            return levels
    raise ConfigError("outputs (shapes)", f"N={n} anchors",
                      f"N matching input size {in_w}x{in_h} at strides {tried}",
                      "Check input_size (width, height) or pass the model's strides=.")


def _check_classes(channels: int, num_classes: int | None, shapes) -> int:
    nc = channels - 5
    if nc < 1 or (num_classes is not None and nc != int(num_classes)):
        want = "5 + num_classes" if num_classes is None else f"5 + {int(num_classes)} = {5 + int(num_classes)}"
        raise ConfigError("outputs (shapes)", shapes, f"{want} channels (x, y, log w, log h, obj, classes)",
                          "Check num_classes; maps must be NCHW [1, C, h, w] and flat outputs [1, N, C].")
    return nc


def decode_yolox(
    outputs: Outputs,
    input_size: SizeLike,
    num_classes: int | None = None,
    layout: str = "auto",
    scores_activated: bool | None = None,
    strides: Sequence[int] | None = None,
    score_thr: float = 0.0,
) -> YoloxDecoded:
    """Decode one image's YOLOX outputs into candidate boxes in input pixels.

    outputs: a list of per-level maps [1, 5+nc, h, w] ("maps") or one [1, N, 5+nc] array ("flat"); batch must be 1.
    input_size: the network input (width, height) or an int. num_classes: checked against the channels when given.
    scores_activated: whether objectness/class scores already went through a sigmoid; None = the layout's convention
    (maps raw, flat activated). strides: per level; None infers them from the map sizes (maps) or N (flat).
    score_thr: candidates whose best score (objectness * best class) is below it are dropped before the boxes are
    decoded, which is where the speed comes from; 0 keeps all N.
    """
    in_w, in_h = normalize_size(input_size, "input_size")
    arrays = _as_list(outputs)
    layout = _resolve_layout(arrays, layout)
    shapes = [a.shape for a in arrays]

    if layout == "flat":
        if len(arrays) != 1 or arrays[0].ndim not in (2, 3) or (arrays[0].ndim == 3 and arrays[0].shape[0] != 1):
            raise ConfigError("outputs (shapes)", shapes, "one [1, N, 5+nc] or [N, 5+nc] array for layout 'flat'",
                              "Decode a batch one image at a time.")
        rows = arrays[0].reshape(arrays[0].shape[-2], arrays[0].shape[-1])
        nc = _check_classes(rows.shape[1], num_classes, shapes)
        levels = _strides_for_flat(rows.shape[0], in_w, in_h, strides)
        obj, cls = rows[:, 4], rows[:, 5:]
        best_cls = cls.max(axis=1)
        activated = True if scores_activated is None else bool(scores_activated)
    else:
        if not arrays or any(a.ndim != 4 or a.shape[0] != 1 for a in arrays):
            raise ConfigError("outputs (shapes)", shapes, "[1, 5+nc, h, w] arrays for layout 'maps'",
                              "Decode a batch one image at a time.")
        channels = {a.shape[1] for a in arrays}
        if len(channels) != 1:
            raise ConfigError("outputs (shapes)", shapes, "maps with the same channel count 5 + nc")
        nc = _check_classes(arrays[0].shape[1], num_classes, shapes)
        levels = _strides_for_maps(arrays, in_w, in_h, strides)
        # channel-first [C, N]: the per-channel rows are contiguous, so the class max is a fast row reduction
        planes = np.concatenate([a.reshape(a.shape[1], -1) for a in arrays], axis=1)
        obj, cls = planes[4], planes[5:]
        best_cls = cls.max(axis=0)
        activated = False if scores_activated is None else bool(scores_activated)

    if activated:
        lo, hi = float(obj.min()), float(obj.max())
        if lo < _ACTIVATED_RANGE[0] or hi > _ACTIVATED_RANGE[1]:
            raise ConfigError("scores_activated", True, hint=(
                f"objectness spans [{lo:.3g}, {hi:.3g}], which is not a sigmoid output; these look like raw logits: "
                "pass scores_activated=False (or the right layout)"))
        best_score = obj * best_cls
    else:
        best_score = _sigmoid(obj) * _sigmoid(best_cls)  # sigmoid is monotonic: max of logits gives the best class

    n = best_score.shape[0]
    keep = np.flatnonzero(best_score >= score_thr) if score_thr > 0 else np.arange(n)
    sel = rows[keep] if layout == "flat" else planes[:, keep].T
    sel = sel.astype(np.float32, copy=False)

    grid, stride = _anchor_grid(levels)
    g, s = grid[keep], stride[keep]
    cx = (sel[:, 0] + g[:, 0]) * s
    cy = (sel[:, 1] + g[:, 1]) * s
    half_w = np.exp(np.minimum(sel[:, 2], _MAX_LOG_WH)) * s * 0.5
    half_h = np.exp(np.minimum(sel[:, 3], _MAX_LOG_WH)) * s * 0.5
    boxes = np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=1)

    objectness = sel[:, 4]
    class_scores = sel[:, 5:5 + nc]
    if not activated:
        objectness, class_scores = _sigmoid(objectness), _sigmoid(class_scores)
    return YoloxDecoded(
        boxes=boxes.astype(np.float32, copy=False),
        objectness=np.ascontiguousarray(objectness, dtype=np.float32),
        class_scores=np.ascontiguousarray(class_scores, dtype=np.float32),
        anchor_index=keep.astype(np.int64),
        num_anchors=n,
    )


def postprocess_yolox(
    outputs: Outputs,
    transform: LetterboxTransform | None = None,
    num_classes: int | None = None,
    score_thr: float = 0.3,
    nms_thr: float = 0.45,
    class_agnostic: bool = False,
    layout: str = "auto",
    *,
    input_size: SizeLike | None = None,
    scores_activated: bool | None = None,
    strides: Sequence[int] | None = None,
    multi_label: bool = False,
    max_det: int | None = 300,
) -> Detections:
    """Decode, threshold, NMS and map back: the Detections of one image, in original-image pixels.

    transform: the LetterboxTransform of the input (boxes come back in original-image pixels, clipped to the image);
    None keeps input pixels and then input_size is required. score = objectness * class score, kept when
    >= score_thr. multi_label=False gives each anchor its best class (YOLOX's own post-processing); True keeps every
    class that passes. class_agnostic=True lets boxes of different classes suppress each other.
    """
    if transform is None and input_size is None:
        raise ConfigError("input_size", None, "the network input (width, height) when no transform is given")
    size = normalize_size(input_size, "input_size") if input_size is not None else transform.input_size
    if transform is not None and size != transform.input_size:
        raise ConfigError("input_size", size, f"{transform.input_size}, the size the transform letterboxed to")
    score_thr = float(score_thr)
    if not 0.0 <= score_thr <= 1.0:
        raise ConfigError("score_thr", score_thr, "a number in [0, 1]")

    dec = decode_yolox(outputs, size, num_classes, layout, scores_activated, strides, score_thr)
    if multi_label:
        per_class = dec.scores
        anchor, class_ids = np.nonzero(per_class >= score_thr)
        boxes, scores = dec.boxes[anchor], per_class[anchor, class_ids]
    else:
        class_ids = dec.class_scores.argmax(axis=1) if len(dec) else np.zeros(0, np.int64)
        scores = dec.objectness * dec.class_scores[np.arange(len(dec)), class_ids]
        boxes = dec.boxes
    keep = nms(boxes, scores, nms_thr, None if class_agnostic else class_ids, score_thr=score_thr, max_det=max_det)
    boxes, scores, class_ids = boxes[keep], scores[keep], class_ids[keep]
    if transform is not None:
        boxes = unletterbox_boxes(boxes, transform, clip=True)
        # a box that lay entirely in the padding has no area left in the image
        visible = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, scores, class_ids = boxes[visible], scores[visible], class_ids[visible]
    return Detections(boxes, scores, class_ids)
