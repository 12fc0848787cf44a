"""Draw detections on a copy of a BGR image: boxes or ellipses, per-class colours, "name score" labels."""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence

import cv2
import numpy as np

from openrknn.errors import ConfigError
from openrknn.vision.detections import Detections

DRAW_STYLES = ("box", "ellipse")
Color = tuple[int, int, int]


def class_colors(num_classes: int) -> list[Color]:
    """num_classes distinct, deterministic BGR colours (hues spaced by the golden ratio, so neighbours differ)."""
    colors = []
    for i in range(max(0, int(num_classes))):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.85, 0.95)
        colors.append((int(b * 255), int(g * 255), int(r * 255)))
    return colors


def _resolve_colors(colors: None | Color | Sequence[Color], num_classes: int) -> list[Color]:
    if colors is None:
        return class_colors(max(num_classes, 1))
    if len(colors) == 3 and all(isinstance(c, (int, np.integer)) for c in colors):  # one colour for every class
        return [tuple(int(c) for c in colors)]  # type: ignore[list-item]
    out = [tuple(int(v) for v in c) for c in colors]
    if not out or any(len(c) != 3 for c in out):
        raise ConfigError("colors", colors, "None, one (b, g, r) tuple, or a list of (b, g, r) tuples per class")
    return out  # type: ignore[return-value]


def _label_text(class_id: int, score: float, class_names: Sequence[str] | None, show_score: bool) -> str:
    name = class_names[class_id] if class_names is not None and 0 <= class_id < len(class_names) else str(class_id)
    return f"{name} {score:.2f}" if show_score else name


def _draw_label(img: np.ndarray, text: str, left: int, top: int, color: Color,
                font_scale: float, thickness: int) -> None:
    h, w = img.shape[:2]
    font = cv2.FONT_HERSHEY_SIMPLEX
    (tw, th), base = cv2.getTextSize(text, font, font_scale, thickness)
    box_h = th + base + 2
    # above the box when there is room, otherwise just inside its top edge; always inside the image
    y0 = top - box_h if top - box_h >= 0 else min(top, max(h - box_h, 0))
    x0 = min(max(left, 0), max(w - tw - 2, 0))
    cv2.rectangle(img, (x0, y0), (x0 + tw + 2, y0 + box_h), color, thickness=-1)
    luminance = 0.114 * color[0] + 0.587 * color[1] + 0.299 * color[2]
    text_color = (0, 0, 0) if luminance > 140 else (255, 255, 255)
    cv2.putText(img, text, (x0 + 1, y0 + th + 1), font, font_scale, text_color, thickness, cv2.LINE_AA)


def draw_detections(
    image: np.ndarray,
    detections: Detections,
    class_names: Sequence[str] | None = None,
    style: str = "box",
    colors: None | Color | Sequence[Color] = None,
    thickness: int = 2,
    font_scale: float = 0.5,
    show_score: bool = True,
    show_label: bool = True,
) -> np.ndarray:
    """Return a new BGR uint8 image with the detections drawn; `image` (H x W x 3 BGR or H x W gray) is not modified.

    style "box" draws rectangles, "ellipse" the ellipse inscribed in each box (the seed's eye display). Boxes are
    clipped to the image first; boxes fully outside it or with non-finite coordinates are skipped. colors: None for
    a built-in palette, one (b, g, r) for all classes, or one per class id (cycled when shorter). Labels read
    "name score" (class_names[class_id], or the id), above the box when there is room; show_label=False omits them.
    """
    if style not in DRAW_STYLES:
        raise ConfigError("style", style, DRAW_STYLES)
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or not (
            image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3))):
        desc = (getattr(image, "shape", None), getattr(image, "dtype", type(image).__name__))
        raise ConfigError("image", desc, "an H x W x 3 BGR or H x W gray uint8 array")
    img = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 or image.shape[2] == 1 else image.copy()
    h, w = img.shape[:2]
    n_classes = int(detections.class_ids.max()) + 1 if len(detections) else 1
    palette = _resolve_colors(colors, n_classes)
    thickness = max(1, int(thickness))

    for (x1, y1, x2, y2), score, cid in zip(detections.boxes.tolist(), detections.scores.tolist(),
                                           detections.class_ids.tolist()):
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
            continue
        # continuous [x1, x2) -> inclusive pixel columns, clipped to the image (x is left/right, y is top/bottom)
        left, top = max(math.floor(x1), 0), max(math.floor(y1), 0)
        right, bottom = min(math.ceil(x2) - 1, w - 1), min(math.ceil(y2) - 1, h - 1)
        if right < left or bottom < top:
            continue
        color = palette[cid % len(palette)]
        if style == "box":
            cv2.rectangle(img, (left, top), (right, bottom), color, thickness)
        else:
            # 4 fractional bits (coordinates x16) so odd-sized boxes get the centre and axes exactly right
            center = ((left + right) * 8, (top + bottom) * 8)
            axes = (max((right - left) * 8, 8), max((bottom - top) * 8, 8))
            cv2.ellipse(img, center, axes, 0, 0, 360, color, thickness, cv2.LINE_8, 4)
        text = _label_text(cid, score, class_names, show_score) if show_label else ""
        if text:
            _draw_label(img, text, left, top, color, font_scale, max(1, thickness // 2))
    return img
