"""Resize an image to a network input size and map boxes back to the original image.

Coordinates are continuous pixels: pixel (i, j) covers [j, j+1) x [i, i+1), so a box edge maps by a plain scale and
offset (x_in = x_orig * scale_x + pad_left) with no half-pixel terms. This matches how cv2.resize maps pixel areas.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Union

import cv2
import numpy as np

from openrknn.errors import ConfigError

LETTERBOX_MODES = ("center", "topleft", "stretch")

_INTERPOLATIONS = {
    "nearest": cv2.INTER_NEAREST,
    "linear": cv2.INTER_LINEAR,
    "area": cv2.INTER_AREA,
    "cubic": cv2.INTER_CUBIC,
    "lanczos": cv2.INTER_LANCZOS4,
}

SizeLike = Union[int, Sequence[int]]
PadValue = Union[float, Sequence[float]]


@dataclass(frozen=True)
class LetterboxTransform:
    """How an original image was placed into the network input.

    input_x = orig_x * scale_x + pad_left;  input_y = orig_y * scale_y + pad_top.
    scale_x and scale_y are the resize ratios actually applied (resized size / original size), which differ from each
    other by rounding in the aspect-keeping modes and freely in "stretch".
    """

    scale_x: float
    scale_y: float
    pad_left: int
    pad_top: int
    orig_shape: tuple[int, int]  # (height, width) of the original image
    input_shape: tuple[int, int]  # (height, width) of the letterboxed image
    mode: str

    @property
    def input_size(self) -> tuple[int, int]:
        """(width, height) of the letterboxed image, the order cv2 and the network-size arguments use."""
        return self.input_shape[1], self.input_shape[0]

    @cached_property
    def _to_original(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(multiplier, offset, upper bound) per x1, y1, x2, y2 for mapping input boxes back; computed once."""
        inv = np.array([1 / self.scale_x, 1 / self.scale_y] * 2, np.float32)
        offset = -np.array([self.pad_left, self.pad_top] * 2, np.float32) * inv
        h, w = self.orig_shape
        arrays = inv, offset, np.array([w, h, w, h], np.float32)
        for a in arrays:
            a.setflags(write=False)
        return arrays

    @classmethod
    def identity(cls, height: int, width: int) -> LetterboxTransform:
        """The transform of an image fed at its own size (boxes stay as they are)."""
        return cls(1.0, 1.0, 0, 0, (int(height), int(width)), (int(height), int(width)), "stretch")


def normalize_size(size: SizeLike, name: str = "size") -> tuple[int, int]:
    """Return (width, height) from an int or a (width, height) pair; raise ConfigError on anything else."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        w = h = int(size)
    else:
        try:
            w, h = (int(v) for v in size)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            raise ConfigError(name, size, "an int or a (width, height) pair of positive ints") from None
    if w <= 0 or h <= 0:
        raise ConfigError(name, size, "positive sizes", "Give the network input size, e.g. 416 or (640, 480).")
    return w, h


def _interpolation_flag(interpolation: int | str) -> int:
    if isinstance(interpolation, str):
        if interpolation not in _INTERPOLATIONS:
            raise ConfigError("interpolation", interpolation, list(_INTERPOLATIONS) + ["a cv2.INTER_* flag"])
        return _INTERPOLATIONS[interpolation]
    return int(interpolation)


def _fill_value(pad_value: PadValue, channels: int, dtype: np.dtype) -> np.ndarray:
    value = np.atleast_1d(np.asarray(pad_value, dtype=np.float64))
    if value.size == 1:
        value = np.repeat(value, channels)
    if value.size != channels:
        raise ConfigError("pad_value", pad_value, f"one number or {channels} (one per image channel)")
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        if value.min() < info.min or value.max() > info.max:  # astype would wrap around silently
            raise ConfigError("pad_value", pad_value, f"values in [{info.min}, {info.max}] for a {dtype} image")
    return value.astype(dtype)


def letterbox(
    image: np.ndarray,
    size: SizeLike,
    mode: str = "center",
    pad_value: PadValue = 114,
    interpolation: int | str = cv2.INTER_LINEAR,
) -> tuple[np.ndarray, LetterboxTransform]:
    """Resize `image` (H x W or H x W x C) into `size` ((width, height) or an int) and return it with its transform.

    mode "center" keeps the aspect ratio and pads evenly (the odd pixel goes right/bottom), "topleft" keeps the aspect
    ratio and pads right/bottom only (official YOLOX), "stretch" resizes to the size without padding.
    The output has the dtype and channel count of the input; the input is never modified.
    """
    if mode not in LETTERBOX_MODES:
        raise ConfigError("mode", mode, LETTERBOX_MODES)
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3) or image.shape[0] == 0 or image.shape[1] == 0:
        shape = getattr(image, "shape", type(image).__name__)
        raise ConfigError("image", shape, "a non-empty H x W or H x W x C numpy array",
                          "Check that the image file was read (cv2.imread returns None on failure).")
    out_w, out_h = normalize_size(size)
    flag = _interpolation_flag(interpolation)
    ih, iw = image.shape[:2]

    if mode == "stretch":
        nw, nh, left, top = out_w, out_h, 0, 0
    else:
        ratio = min(out_w / iw, out_h / ih)
        # round, not floor: floor can leave a 1-pixel gap when ratio * size lands just under an integer.
        nw = min(out_w, max(1, round(iw * ratio)))
        nh = min(out_h, max(1, round(ih * ratio)))
        left, top = ((out_w - nw) // 2, (out_h - nh) // 2) if mode == "center" else (0, 0)

    resized = image if (nw, nh) == (iw, ih) else cv2.resize(image, (nw, nh), interpolation=flag)
    if resized.ndim == 2 and image.ndim == 3:  # cv2 drops a trailing channel axis of size 1
        resized = resized[:, :, None]

    if (nw, nh) == (out_w, out_h):
        out = np.array(resized, copy=True)
    else:
        channels = 1 if image.ndim == 2 else image.shape[2]
        fill = _fill_value(pad_value, channels, image.dtype)
        out = np.empty((out_h, out_w) + image.shape[2:], dtype=image.dtype)
        out[...] = fill if image.ndim == 3 else fill[0]
        out[top:top + nh, left:left + nw] = resized

    transform = LetterboxTransform(
        scale_x=nw / iw, scale_y=nh / ih, pad_left=left, pad_top=top,
        orig_shape=(ih, iw), input_shape=(out_h, out_w), mode=mode,
    )
    return out, transform


def _as_boxes(boxes: np.ndarray) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float32)
    if arr.ndim == 1 and arr.size == 0:
        arr = arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ConfigError("boxes", arr.shape, "an [N, 4] array of x1, y1, x2, y2")
    return arr


def unletterbox_boxes(boxes: np.ndarray, transform: LetterboxTransform, clip: bool = True) -> np.ndarray:
    """Map [N, 4] xyxy boxes from letterboxed-input pixels back to original-image pixels (float32, new array).

    clip=True limits them to the original image, which also drops the parts that lay in the padding.
    """
    inv, offset, bound = transform._to_original
    out = _as_boxes(boxes) * inv
    out += offset
    if clip:
        np.maximum(out, 0, out=out)
        np.minimum(out, bound, out=out)
    return out


def letterbox_boxes(boxes: np.ndarray, transform: LetterboxTransform) -> np.ndarray:
    """Map [N, 4] xyxy boxes from original-image pixels into letterboxed-input pixels (e.g. training labels)."""
    out = _as_boxes(boxes).copy()
    out[:, 0::2] = out[:, 0::2] * transform.scale_x + transform.pad_left
    out[:, 1::2] = out[:, 1::2] * transform.scale_y + transform.pad_top
    return out
