"""Calibration data: the dataset.txt reader.

Format (vendor compatible): one sample per line; a multi-input model lists one path per input on the same line,
space-separated, in the model's input order. Paths are relative to the folder holding the dataset file. Blank lines
and lines starting with '#' are ignored; a token starting with '#' ends the line (trailing comment).

Each entry is decoded exactly as the deployed model sees its input (the model itself applies mean/std/reorder):
- images (jpg, png, bmp, ...) are read with OpenCV, converted BGR -> RGB unless ``rgb2bgr=True`` (Toolkit2's
  ``quant_img_RGB2BGR``: keep OpenCV's BGR order), resized to the input's W x H with ``cv2.INTER_LINEAR`` when the
  size differs (one warning names the sizes seen), and handed over as float32 NHWC ``[1,H,W,C]`` raw pixel values
  0..255 (no mean/std);
- ``.npy`` files hold what a user would pass to ``inference()``: NHWC ``[H,W,C]`` or ``[1,H,W,C]`` (any shape equal
  to the input shape with or without its leading batch dim for non-image inputs), converted to float32; an input the
  graph takes as integers (token or byte ids) keeps them, in its own type, and refuses values that are not. An image
  input's array in NCHW ``[1,C,H,W]`` or ``[C,H,W]`` (rknn-toolkit2's layout for .npy calibration files of an NCHW
  model) is transposed to NHWC when NHWC cannot be what it holds, and the count is logged.

``batch_size`` / ``epochs`` follow the vendor's meaning: quantization runs ``epochs`` iterations of ``batch_size``
samples each. With ``epochs > 0`` exactly ``batch_size * epochs`` samples are used, cycling through the file when it
holds fewer lines (and stopping early is never done silently: the count is logged). With ``epochs <= 0`` (the default
-1) every line is used once and ``batch_size`` only sets how many samples make a batch.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import DatasetError

log = logging.getLogger("openrknn.quant.dataset")

# Decoded samples are kept in memory up to this many bytes so repeated passes (and repeated lines) do not decode
# the same file twice; beyond it, entries are decoded again on each pass.
CACHE_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class InputSpec:
    """One model input as deployed: its name, NHWC shape ``[1,H,W,C]`` (other ranks: .npy data only) and the element
    type the graph takes (an integer input, e.g. token or byte ids, gets its .npy values as integers)."""

    name: str
    shape: Tuple[int, ...]
    dtype: str = "float32"

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 4 and self.shape[0] == 1 and self.shape[3] in (1, 3, 4)


@dataclass(frozen=True)
class _Entry:
    """One dataset line: its number and one resolved path per input."""

    lineno: int
    paths: Tuple[Path, ...]


class CalibrationData:
    """Re-iterable calibration samples: each iteration yields ``{input name: array}`` feeds in file order (float32;
    an integer input's .npy values in its own type)."""

    def __init__(self, source: Path, inputs: Sequence[InputSpec], entries: Sequence[_Entry], order: Sequence[int],
                 rgb2bgr: bool, batch_size: int):
        self.source = source
        self.inputs = list(inputs)
        self.rgb2bgr = rgb2bgr
        self.batch_size = batch_size
        self._entries = list(entries)
        self._order = list(order)
        self._cache: Dict[Tuple[int, int], np.ndarray] = {}
        self._cache_bytes = 0
        self._resized: Dict[Tuple[int, int], int] = {}
        self._images = 0
        self._nchw = 0  # .npy files read as NCHW

    def __len__(self) -> int:
        return len(self._order)

    @property
    def paths(self) -> List[Tuple[Path, ...]]:
        """The path tuple of every sample in iteration order (repeats included when epochs cycle the file)."""
        return [self._entries[i].paths for i in self._order]

    @property
    def unique_samples(self) -> int:
        return len(set(self._order))

    def __iter__(self) -> Iterator[Dict[str, np.ndarray]]:
        for idx in self._order:
            yield self.sample(idx)

    def batches(self) -> Iterator[List[Dict[str, np.ndarray]]]:
        """Samples grouped by ``batch_size`` (the last batch may be shorter)."""
        batch: List[Dict[str, np.ndarray]] = []
        for feed in self:
            batch.append(feed)
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    def sample(self, entry_index: int) -> Dict[str, np.ndarray]:
        entry = self._entries[entry_index]
        return {spec.name: self._decode(entry, k, spec) for k, spec in enumerate(self.inputs)}

    def _decode(self, entry: _Entry, k: int, spec: InputSpec) -> np.ndarray:
        key = (entry.lineno, k)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        path = entry.paths[k]
        where = f"{self.source}:{entry.lineno}"
        if path.suffix.lower() == ".npy":
            arr, nchw = _load_npy(path, spec, where)
            self._nchw += nchw
        else:
            arr = self._load_image(path, spec, where)
        arr.setflags(write=False)  # cached arrays are shared between passes
        if self._cache_bytes + arr.nbytes <= CACHE_BYTES:
            self._cache[key] = arr
            self._cache_bytes += arr.nbytes
        return arr

    def _load_image(self, path: Path, spec: InputSpec, where: str) -> np.ndarray:
        if not spec.is_image:
            raise DatasetError(f"{where}: input {spec.name!r} has shape {list(spec.shape)}, which is not an NHWC "
                               f"image [1,H,W,C]; list a .npy file with that shape instead of {path.name!r}")
        _, h, w, c = spec.shape
        try:
            img = read_image(path, c, self.rgb2bgr)
        except ValueError as e:
            raise DatasetError(f"{where}: input {spec.name!r}: {e}") from None
        self._images += 1
        if img is None:
            raise DatasetError(f"{where}: cannot decode image {str(path)!r} (not an image OpenCV can read, or "
                               "damaged); replace it or remove the line")
        if img.shape[:2] != (h, w):
            size = (img.shape[1], img.shape[0])
            self._resized[size] = self._resized.get(size, 0) + 1
            img = resize_image(img, h, w)
        return np.ascontiguousarray(img.reshape(1, h, w, c), dtype=np.float32)


def read_image(path: Union[str, Path], channels: int, rgb2bgr: bool = False) -> Optional[np.ndarray]:
    """An image file as an image input of ``channels`` channels takes it, [H, W, C] uint8: gray for 1 channel, RGB
    for 3 and RGBA for 4 (OpenCV's BGR / BGRA order with ``rgb2bgr``, Toolkit2's quant_img_RGB2BGR). Calibration,
    inference from files, accuracy analysis, the TFLite validation and the GUI's panel all decode through here (or
    decode_image_bytes), so a model sees the same pixels in each. None when the file is missing or OpenCV cannot
    decode it; ValueError for an input no image file fits."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    return decode_image_bytes(data, channels, rgb2bgr, Path(path).name)


def decode_image_bytes(data: bytes, channels: int, rgb2bgr: bool = False, name: str = "the image"
                       ) -> Optional[np.ndarray]:
    """read_image for an image already in memory (an upload). A gray input reads the file's own gray decode:
    libjpeg's luma differs from a grayscale conversion of its colour decode by up to 10 levels on COCO photos."""
    import cv2

    if channels not in (1, 3, 4):
        raise ValueError(f"an image file has 1, 3 or 4 channels but the input takes {channels}; give a .npy file "
                         "holding the array instead")
    flag = cv2.IMREAD_GRAYSCALE if channels == 1 else (cv2.IMREAD_UNCHANGED if channels == 4 else cv2.IMREAD_COLOR)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flag) if len(data) else None
    if img is None:
        return None
    if channels == 4 and (img.ndim != 3 or img.shape[2] != 4):
        raise ValueError(f"the input takes 4 channels but {name!r} has "
                         f"{1 if img.ndim == 2 else img.shape[2]}; use a 4-channel PNG or a .npy file")
    if img.dtype != np.uint8:  # a 16-bit PNG read unchanged: its 8 high bits, as IMREAD_COLOR / GRAYSCALE give
        img = (img >> 8).astype(np.uint8)
    if channels == 3 and not rgb2bgr:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    elif channels == 4 and not rgb2bgr:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA)
    return img.reshape(img.shape[0], img.shape[1], channels)


def image_input(path: Union[str, Path], shape: Sequence[int], rgb2bgr: bool = False, sizes=()) -> Optional[np.ndarray]:
    """The image at ``path`` as the NHWC input of ``shape`` ([1, H, W, C]) takes it: read_image by its channels,
    stretched to H x W unless it already has one of ``sizes`` (a dynamic_input model's other sets). None and
    ValueError as read_image."""
    img = read_image(path, shape[3] if len(shape) == 4 else 0, rgb2bgr)
    h, w = shape[1:3]
    if img is not None and img.shape[:2] != (h, w) and tuple(img.shape[:2]) not in sizes:
        img = resize_image(img, h, w)
    return img


def resize_image(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """``img`` ([H, W, C]) stretched to h x w with cv2.INTER_LINEAR, keeping its channel dim (OpenCV drops a single
    one)."""
    import cv2

    return cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w, img.shape[2])


def nhwc_from_nchw(arr: np.ndarray, shape: Sequence[int]) -> Optional[np.ndarray]:
    """``arr`` as the NHWC image input of ``shape`` ([1, H, W, C]) takes it when it holds that image NCHW
    ([1, C, H, W] or [C, H, W]: rknn-toolkit2's layout for an NCHW model's .npy files) and NHWC cannot be what it
    holds; else None."""
    shape = tuple(shape)
    if len(shape) != 4 or shape[0] != 1 or arr.shape in (shape, shape[1:]):
        return None
    nchw = (1, shape[3], shape[1], shape[2])
    return arr.reshape(nchw).transpose(0, 2, 3, 1) if arr.shape in (nchw, nchw[1:]) else None


def _load_npy(path: Path, spec: InputSpec, where: str) -> Tuple[np.ndarray, bool]:
    """The array as the input takes it, and whether it was NCHW (transposed here)."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{where}: cannot load {str(path)!r} as a .npy array ({exc}); save it with numpy.save") \
            from exc
    shape = tuple(spec.shape)
    nhwc = nhwc_from_nchw(arr, shape) if spec.is_image else None
    transposed = nhwc is not None
    if arr.shape == shape:
        pass
    elif shape and shape[0] == 1 and arr.shape == shape[1:]:
        arr = arr.reshape(shape)
    elif transposed:
        arr = nhwc
    else:
        hint = f"[{', '.join(map(str, shape[1:]))}] or " if shape and shape[0] == 1 else ""
        raise DatasetError(f"{where}: {path.name!r} holds an array of shape {list(arr.shape)} but input "
                           f"{spec.name!r} expects {hint}{list(shape)} (NHWC, what inference() takes)")
    if not np.issubdtype(arr.dtype, np.number) and arr.dtype != np.bool_:
        raise DatasetError(f"{where}: {path.name!r} has dtype {arr.dtype}, not numeric; save numbers with numpy.save")
    target = np.dtype(spec.dtype)
    if target == np.bool_:  # a mask: True/False, or 0/1 in any numeric type
        if arr.dtype != np.bool_ and arr.size and not np.isin(arr, (0, 1)).all():
            raise DatasetError(f"{where}: input {spec.name!r} is a boolean mask but {path.name!r} holds values other "
                               f"than 0 and 1 ({arr.min()} .. {arr.max()}); save the mask as a bool array")
        return np.ascontiguousarray(arr, dtype=np.bool_), transposed
    if np.issubdtype(target, np.integer):
        info = np.iinfo(target)
        if arr.size and (not np.array_equal(arr, np.rint(arr)) or arr.min() < info.min or arr.max() > info.max):
            raise DatasetError(f"{where}: input {spec.name!r} takes {target} values (ids, not a signal) but "
                               f"{path.name!r} holds values that are not {target} ({arr.min()} .. {arr.max()}, "
                               f"dtype {arr.dtype}); save the integers the model reads")
        return np.ascontiguousarray(arr, dtype=target), transposed
    return np.ascontiguousarray(arr, dtype=np.float32), transposed


def _parse(path: Path, n_inputs: int, names: List[str]) -> List[_Entry]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"dataset file {str(path)!r} is not UTF-8 text ({exc}); it must list one sample per "
                           "line") from exc
    entries = []
    base = path.parent
    for lineno, raw in enumerate(text.splitlines(), start=1):
        tokens = []
        for tok in raw.split():
            if tok.startswith("#"):
                break
            tokens.append(tok)
        if not tokens:
            continue
        if len(tokens) != n_inputs:
            raise DatasetError(f"{path}:{lineno}: found {len(tokens)} path(s) but the model has {n_inputs} input(s) "
                               f"({', '.join(names)}); list one path per input, space-separated, in that order")
        resolved = []
        for tok in tokens:
            p = Path(tok).expanduser()
            p = p if p.is_absolute() else base / p
            if not p.is_file():
                raise DatasetError(f"{path}:{lineno}: file {tok!r} not found (looked for {str(p)!r}); paths are "
                                   "relative to the dataset file's folder")
            resolved.append(p)
        entries.append(_Entry(lineno, tuple(resolved)))
    return entries


def read_dataset(path: Union[str, os.PathLike], inputs: List[InputSpec], rgb2bgr: bool = False,
                 batch_size: int = 100, epochs: int = -1) -> CalibrationData:
    """Read a dataset.txt and decode every entry once (so any bad entry fails here, naming its line).

    Samples used: ``batch_size * epochs`` (cycling through the file) when ``epochs > 0``, else every line once.
    Raises DatasetError for a missing file, an empty dataset, a wrong path count, a missing or undecodable file, or
    a .npy of the wrong shape.
    """
    path = Path(path)
    if not inputs:
        raise DatasetError("read_dataset: the model has no inputs to calibrate")
    if not path.is_file():
        raise DatasetError(f"dataset file {str(path)!r} not found; pass build(dataset=...) a text file listing one "
                           "calibration image or .npy per line")
    if batch_size < 1:
        raise DatasetError(f"batch_size={batch_size} is not valid; use a positive number of samples per batch")
    names = [s.name for s in inputs]
    entries = _parse(path, len(inputs), names)
    if not entries:
        raise DatasetError(f"dataset file {str(path)!r} lists no samples (only blank or '#' lines); add one image "
                           "or .npy path per line")
    if epochs > 0:
        order = [i % len(entries) for i in range(batch_size * epochs)]
        if len(order) > len(entries):
            log.info("calibration: %d samples (batch_size %d x epochs %d) cycle through the %d lines of %s",
                     len(order), batch_size, epochs, len(entries), path.name)
    else:
        order = list(range(len(entries)))
    data = CalibrationData(path, inputs, entries, order, rgb2bgr, min(batch_size, len(order)))
    for i in sorted(set(order)):  # decode every used entry now: errors surface before the slow part
        data.sample(i)
    if data._resized:
        sizes = ", ".join(f"{w}x{h} ({n})" for (w, h), n in sorted(data._resized.items(), key=lambda kv: -kv[1])[:5])
        more = "" if len(data._resized) <= 5 else f" and {len(data._resized) - 5} other sizes"
        targets = ", ".join(f"{s.name} {s.shape[2]}x{s.shape[1]}" for s in inputs if s.is_image)
        log.warning("calibration images resized (cv2.INTER_LINEAR, no letterbox) to the input size %s from %s%s; "
                    "resize them the way the deployed pipeline does if that differs", targets, sizes, more)
    if data._nchw:
        log.info("calibration: %d .npy file(s) hold NCHW [1,C,H,W] arrays (rknn-toolkit2's layout for them); read "
                 "as such and transposed to NHWC", data._nchw)
    if data._images and any(s.is_image and s.shape[3] >= 3 for s in inputs):
        order_name = "BGR (quant_img_RGB2BGR=True)" if rgb2bgr else "RGB (OpenCV BGR converted; set " \
            "quant_img_RGB2BGR=True to keep BGR)"
        log.info("calibration images decoded as %s, raw 0..255, mean/std applied inside the model", order_name)
    return data
