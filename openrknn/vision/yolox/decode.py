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
from typing import NamedTuple, Union

import numpy as np

from openrknn.errors import ConfigError
from openrknn.vision.detections import Detections
from openrknn.vision.letterbox import LetterboxTransform, SizeLike, normalize_size, unletterbox_boxes
from openrknn.vision.nms import opencv_nms

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
# column picks of an output row that line the box terms up with x1, y1, x2, y2
_XYXY, _WHWH = [0, 1, 0, 1], [2, 3, 2, 3]


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
    out = np.negative(x)
    with np.errstate(over="ignore"):  # exp(-x) overflows to inf for very negative logits; 1 / inf is the right 0
        np.exp(out, out=out)
    out += 1.0
    return np.reciprocal(out, out=out)


@lru_cache(maxsize=64)
def _anchor_grid(levels: tuple[tuple[int, int, int], ...]) -> np.ndarray:
    """[N, 9] float32 per anchor, for levels ((h, w, stride), ...): the cell origin in input pixels as x, y, x, y
    (gx * s, gy * s twice), the stride s, and -s/2, -s/2, s/2, s/2. With those, one gather of it and a few [K, 4]
    operations decode x1 y1 x2 y2 at once (see _boxes). Cached per shape and read-only."""
    parts = []
    for h, w, s in levels:
        gy, gx = np.mgrid[0:h, 0:w]
        part = np.empty((h * w, 9), np.float32)
        part[:, 0], part[:, 1] = gx.ravel() * s, gy.ravel() * s
        part[:, 2:4] = part[:, 0:2]
        part[:, 4] = s
        part[:, 5:] = (-s / 2, -s / 2, s / 2, s / 2)
        parts.append(part)
    grid = np.concatenate(parts)
    grid.setflags(write=False)  # shared by every call with these shapes
    return grid


def _as_list(outputs: Outputs) -> list[np.ndarray]:
    # float32 math throughout; float16 or int outputs (e.g. from a runtime) are converted once here
    if isinstance(outputs, np.ndarray):
        return [outputs.astype(np.float32, copy=False)]
    return [np.asarray(o, dtype=np.float32) for o in outputs]


Shapes = tuple[tuple[int, ...], ...]


def _resolve_layout(shapes: Shapes, layout: str) -> str:
    if layout not in YOLOX_LAYOUTS:
        raise ConfigError("layout", layout, YOLOX_LAYOUTS)
    if layout == "auto":
        if len(shapes) == 1 and len(shapes[0]) in (2, 3):
            return "flat"
        if shapes and all(len(sh) == 4 for sh in shapes):
            return "maps"
        raise ConfigError("outputs (shapes)", list(shapes), "one [1, N, 5+nc] array (layout 'flat') or one "
                          "[1, 5+nc, h, w] array per level (layout 'maps')")
    return layout


def _strides_for_maps(shapes: Shapes, in_w: int, in_h: int,
                      strides: tuple[int, ...] | None) -> tuple[tuple[int, int, int], ...]:
    if strides is not None and len(strides) != len(shapes):
        raise ConfigError("strides", list(strides), f"one stride per output map ({len(shapes)} maps)")
    levels = []
    for i, (_, _, h, w) in enumerate(shapes):
        s = int(strides[i]) if strides is not None else max(1, round(in_h / h))
        if math.ceil(in_h / s) != h or math.ceil(in_w / s) != w:
            raise ConfigError("outputs (shapes)", list(shapes),
                              f"maps whose h, w equal input size {in_w}x{in_h} divided by a stride",
                              f"Map {i} is {h}x{w}: check input_size (width, height), or pass strides=.")
        levels.append((h, w, s))
    return tuple(levels)


def _strides_for_flat(n: int, in_w: int, in_h: int,
                      strides: tuple[int, ...] | None) -> tuple[tuple[int, int, int], ...]:
    tried = [strides] if strides is not None else list(CANDIDATE_STRIDES)
    for cand in tried:
        levels = tuple((math.ceil(in_h / s), math.ceil(in_w / s), int(s)) for s in cand)
        if sum(h * w for h, w, _ in levels) == n:
            return levels
    raise ConfigError("outputs (shapes)", f"N={n} anchors",
                      f"N matching input size {in_w}x{in_h} at strides {tried}",
                      "Check input_size (width, height) or pass the model's strides=.")


def _check_classes(channels: int, num_classes: int | None, shapes: Shapes) -> int:
    nc = channels - 5
    if nc < 1 or (num_classes is not None and nc != int(num_classes)):
        want = "5 + num_classes" if num_classes is None else f"5 + {int(num_classes)} = {5 + int(num_classes)}"
        raise ConfigError("outputs (shapes)", list(shapes), f"{want} channels (x, y, log w, log h, obj, classes)",
                          "Check num_classes; maps must be NCHW [1, C, h, w] and flat outputs [1, N, C].")
    return nc


@lru_cache(maxsize=64)
def _plan(shapes: Shapes, in_w: int, in_h: int, layout: str, num_classes: int | None,
          strides: tuple[int, ...] | None) -> tuple[str, int, tuple[tuple[int, int, int], ...]]:
    """(layout, num_classes, levels) for outputs of these shapes; validated once per shape (a video reuses it)."""
    layout = _resolve_layout(shapes, layout)
    if layout == "flat":
        if len(shapes) != 1 or len(shapes[0]) not in (2, 3) or (len(shapes[0]) == 3 and shapes[0][0] != 1):
            raise ConfigError("outputs (shapes)", list(shapes), "one [1, N, 5+nc] or [N, 5+nc] array for layout "
                              "'flat'", "Decode a batch one image at a time.")
        n, channels = shapes[0][-2], shapes[0][-1]
        return layout, _check_classes(channels, num_classes, shapes), _strides_for_flat(n, in_w, in_h, strides)
    if not shapes or any(len(sh) != 4 or sh[0] != 1 for sh in shapes):
        raise ConfigError("outputs (shapes)", list(shapes), "[1, 5+nc, h, w] arrays for layout 'maps'",
                          "Decode a batch one image at a time.")
    if len({sh[1] for sh in shapes}) != 1:
        raise ConfigError("outputs (shapes)", list(shapes), "maps with the same channel count 5 + nc")
    return layout, _check_classes(shapes[0][1], num_classes, shapes), _strides_for_maps(shapes, in_w, in_h, strides)


class _Candidates(NamedTuple):  # a NamedTuple: made on every call of the hot path, and cheaper than a dataclass
    """Anchors that survived the objectness pre-test: their raw output rows [K, 5 + nc] (box terms, objectness and
    class scores as the model gave them) and anchor indices [K]; what decode_yolox and postprocess_yolox share."""

    rows: np.ndarray
    anchor_index: np.ndarray
    activated: bool
    num_classes: int
    num_anchors: int
    levels: tuple[tuple[int, int, int], ...]


def _candidates(outputs: Outputs, input_size: SizeLike, num_classes: int | None, layout: str,
                scores_activated: bool | None, strides: Sequence[int] | None, score_thr: float) -> _Candidates:
    in_w, in_h = normalize_size(input_size, "input_size")
    arrays = _as_list(outputs)
    shapes = tuple(a.shape for a in arrays)
    layout, nc, levels = _plan(shapes, in_w, in_h, layout, None if num_classes is None else int(num_classes),
                               None if strides is None else tuple(int(x) for x in strides))
    if layout == "flat":
        rows = arrays[0].reshape(shapes[0][-2], shapes[0][-1])
        obj_planes = [rows[:, 4].copy()]  # one strided pass; the tests below then run on contiguous memory
        activated = True if scores_activated is None else bool(scores_activated)
    else:
        planes = [a.reshape(a.shape[1], -1) for a in arrays]  # [C, h*w] views, no copy
        obj_planes = [p[4] for p in planes]
        activated = False if scores_activated is None else bool(scores_activated)

    if activated:
        lo, hi = min(float(o.min()) for o in obj_planes), max(float(o.max()) for o in obj_planes)
        if lo < _ACTIVATED_RANGE[0] or hi > _ACTIVATED_RANGE[1]:
            raise ConfigError("scores_activated", True, hint=(
                f"objectness spans [{lo:.3g}, {hi:.3g}], which is not a sigmoid output; these look like raw logits: "
                "pass scores_activated=False (or the right layout)"))

    # Objectness first: score = obj * class score <= obj because class scores are probabilities (activated ones are
    # clipped to [0, 1]), so anchors with obj < score_thr cannot pass. Only the few survivors get their class scores
    # read; that skips ~99% of the [N, nc] work on a trained model.
    if score_thr <= 0:
        obj_thr = -math.inf
    elif activated:
        obj_thr = score_thr * (1 - 1e-6)  # the slack keeps anchors that float rounding puts exactly on the threshold
    else:
        obj_thr = math.log(score_thr / (1.0 - score_thr)) - 1e-5 if score_thr < 1 else math.inf
    if layout == "flat":
        n = rows.shape[0]
        keep = np.flatnonzero(obj_planes[0] >= obj_thr)
        sel = rows[keep]
    else:
        n = sum(p.shape[1] for p in planes)
        picks, parts, offset = [], [], 0
        for p in planes:
            idx = np.flatnonzero(p[4] >= obj_thr)
            if idx.size:  # most levels of most images have no object: skip their gather
                parts.append(p.T[idx])  # [k, C] rows straight from the [C, h*w] view
                picks.append(idx + offset if offset else idx)
            offset += p.shape[1]
        if len(parts) == 1:
            keep, sel = picks[0], parts[0]
        elif parts:
            keep, sel = np.concatenate(picks), np.concatenate(parts)
        else:
            keep, sel = np.zeros(0, np.intp), np.zeros((0, planes[0].shape[0]), np.float32)
    return _Candidates(sel, keep, activated, nc, n, levels)


def _boxes(rows: np.ndarray, anchor_index: np.ndarray, levels: tuple[tuple[int, int, int], ...]) -> np.ndarray:
    """[K, 4] xyxy boxes in input pixels from the raw box terms of the rows."""
    grid = _anchor_grid(levels)[anchor_index]
    boxes = rows[:, _XYXY] * grid[:, 4:5]  # cx, cy, cx, cy = (x + gx) * s, ...
    boxes += grid[:, :4]
    half = np.minimum(rows[:, _WHWH], _MAX_LOG_WH)
    np.exp(half, out=half)
    half *= grid[:, 5:]  # -w/2, -h/2, w/2, h/2
    boxes += half
    return boxes


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
    decoded, which is where the speed comes from; 0 keeps all N (except anchors whose objectness is NaN).
    """
    c = _candidates(outputs, input_size, num_classes, layout, scores_activated, strides, score_thr)
    sel, keep = c.rows, c.anchor_index
    probs = np.clip(sel[:, 4:5 + c.num_classes], 0, 1) if c.activated else _sigmoid(sel[:, 4:5 + c.num_classes])
    if score_thr > 0:  # the exact test, now on the candidates only
        passed = probs[:, 0] * probs[:, 1:].max(axis=1, initial=0) >= score_thr
        if not passed.all():
            keep, sel, probs = keep[passed], sel[passed], probs[passed]
    return YoloxDecoded(boxes=_boxes(sel, keep, c.levels), objectness=probs[:, 0], class_scores=probs[:, 1:],
                        anchor_index=keep.astype(np.int64, copy=False), num_anchors=c.num_anchors)


def _best_class(c: _Candidates) -> tuple[np.ndarray, np.ndarray]:
    """(class id, score = objectness * best class score) per candidate, reading the best class only: a sigmoid is
    monotonic (and clipping keeps order), so the best raw value is the best probability."""
    rows = c.rows
    logits = rows[:, 5:5 + c.num_classes]
    class_ids = logits.argmax(axis=1)
    pair = np.empty((len(rows), 2), np.float32)
    pair[:, 0] = rows[:, 4]
    pair[:, 1] = logits.max(axis=1)
    probs = np.clip(pair, 0, 1, out=pair) if c.activated else _sigmoid(pair)
    return class_ids, probs[:, 0] * probs[:, 1]


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

    if multi_label:
        dec = decode_yolox(outputs, size, num_classes, layout, scores_activated, strides, score_thr)
        per_class = dec.scores
        anchor, class_ids = np.nonzero(per_class >= score_thr)
        boxes, scores = dec.boxes[anchor], per_class[anchor, class_ids]
    else:  # one class per anchor: only [K] arrays from here on, no [K, nc] probabilities
        c = _candidates(outputs, size, num_classes, layout, scores_activated, strides, score_thr)
        class_ids, scores = _best_class(c)
        boxes = _boxes(c.rows, c.anchor_index, c.levels)
    # the arrays are made here: the unchecked NMS entry point, which also applies the exact score test
    keep = opencv_nms(boxes, scores, nms_thr, None if class_agnostic else class_ids, max_det, score_thr=score_thr)
    boxes, scores, class_ids = boxes[keep], scores[keep], class_ids[keep]
    if transform is not None:
        boxes = unletterbox_boxes(boxes, transform, clip=True)
        # a box that lay entirely in the padding has no area left in the image
        visible = (boxes[:, 2:] > boxes[:, :2]).all(axis=1)
        if not visible.all():
            boxes, scores, class_ids = boxes[visible], scores[visible], class_ids[visible]
    return Detections._trusted(boxes, scores.astype(np.float32, copy=False), class_ids.astype(np.int64, copy=False))
