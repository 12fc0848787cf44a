"""The inference panel: fit an uploaded image to the model input, run the simulator, summarise the outputs, and for
YOLOX-shaped outputs decode, NMS and draw the boxes on the original image."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InferenceInputError

RESIZE_MODES = ("auto", "stretch", "letterbox", "letterbox-topleft")
FEED_ORDERS = ("auto", "rgb", "bgr")
_YOLOX_STRIDES = (8, 16, 32)


def yolox_layout(inputs_meta: Sequence[dict], outputs_meta: Sequence[dict]) -> Optional[dict]:
    """{'layout': 'flat'|'maps', 'num_classes'} when the outputs have YOLOX's shapes for this input size."""
    if len(inputs_meta) != 1 or len(inputs_meta[0].get("shape") or []) != 4:
        return None
    _, h, w, _ = inputs_meta[0]["shape"]
    grids = [(math.ceil(h / s), math.ceil(w / s)) for s in _YOLOX_STRIDES]
    shapes = [list(o.get("shape") or []) for o in outputs_meta]
    if len(shapes) == 1 and len(shapes[0]) == 3 and shapes[0][0] == 1:
        n, c = shapes[0][1], shapes[0][2]
        if n == sum(a * b for a, b in grids) and c >= 6:
            return {"layout": "flat", "num_classes": c - 5}
    if len(shapes) == len(grids) and all(len(s) == 4 and s[0] == 1 for s in shapes):
        channels = {s[1] for s in shapes}
        if len(channels) == 1 and sorted((s[2], s[3]) for s in shapes) == sorted(grids) and shapes[0][1] >= 6:
            return {"layout": "maps", "num_classes": shapes[0][1] - 5}
    return None


@dataclass
class InferOptions:
    feed_order: str = "auto"  # auto: as calibrated (BGR when built with quant_img_RGB2BGR, else RGB)
    resize: str = "auto"  # auto: letterbox for YOLOX (top-left for the flat export), stretch otherwise
    score_thr: float = 0.3
    nms_thr: float = 0.45
    class_names: List[str] = field(default_factory=list)

    def check(self) -> None:
        if self.feed_order not in FEED_ORDERS:
            raise InferenceInputError(f"feed order {self.feed_order!r} is not valid; allowed: {', '.join(FEED_ORDERS)}")
        if self.resize not in RESIZE_MODES:
            raise InferenceInputError(f"resize mode {self.resize!r} is not valid; allowed: {', '.join(RESIZE_MODES)}")
        for name, v in (("score threshold", self.score_thr), ("NMS threshold", self.nms_thr)):
            if not 0.0 <= v <= 1.0:
                raise InferenceInputError(f"{name} {v} is not in [0, 1]")


def decode_image(data: bytes) -> np.ndarray:
    """The upload in OpenCV's BGR order (the picture the panel draws on)."""
    from ..quant.dataset import decode_image_bytes

    img = decode_image_bytes(data, 3, rgb2bgr=True)
    if img is None:
        raise InferenceInputError("the uploaded file could not be decoded as an image; use a JPEG, PNG, BMP or WebP")
    return img


def fit_image(image_bgr: np.ndarray, meta: dict, feed_bgr: bool, resize: str, data: Optional[bytes] = None):
    """The model's [1,H,W,C] uint8 feed from a BGR image, and the letterbox transform (None when stretched).
    ``data``: the uploaded file, which a 1-channel input decodes gray, as its calibration read it."""
    import cv2

    from ..quant.dataset import decode_image_bytes, resize_image
    from ..vision.letterbox import letterbox

    shape = meta.get("shape") or []
    if len(shape) != 4 or shape[3] not in (1, 3):
        raise InferenceInputError(f"input '{meta.get('name')}' has shape {shape}, not an image [1,H,W,C]; the panel "
                                  "feeds images only (use `openrknn run` with .npy files for other inputs)")
    _, h, w, c = shape
    img = image_bgr if feed_bgr else image_bgr[:, :, ::-1]
    if c == 1:
        gray = decode_image_bytes(data, 1) if data is not None else None
        img = gray if gray is not None else cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY)[:, :, None]
    transform = None
    if resize == "stretch":
        img = resize_image(img, h, w)
    else:
        img, transform = letterbox(img, (w, h), mode="topleft" if resize == "letterbox-topleft" else "center",
                                   pad_value=114)
    return np.ascontiguousarray(img)[None], transform


def summarize(name: str, arr: np.ndarray) -> dict:
    a = np.asarray(arr)
    f = a.astype(np.float64, copy=False)
    out = {"name": name, "shape": list(a.shape), "dtype": str(a.dtype),
           "min": float(f.min()) if a.size else None, "max": float(f.max()) if a.size else None,
           "mean": float(f.mean()) if a.size else None, "first": [float(v) for v in f.reshape(-1)[:6]]}
    flat = f.reshape(-1)
    if a.ndim >= 1 and flat.size > 1 and flat.size == max(a.shape):  # a vector of scores: show the best five
        top = np.argsort(-flat)[:5]
        out["top"] = [{"index": int(i), "value": float(flat[i])} for i in top]
    return out


def run_image(sim, metadata: dict, image_bgr: np.ndarray, opts: InferOptions, data: Optional[bytes] = None
              ) -> Tuple[dict, Optional[np.ndarray], List[np.ndarray]]:
    """(report, drawn BGR image or None, the inputs fed). Only single-image-input models are fed from the panel.
    ``data``: the uploaded file, which a 1-channel input reads gray as its calibration did."""
    opts.check()
    inputs_meta, outputs_meta = metadata["inputs"], metadata["outputs"]
    if len(inputs_meta) != 1:
        raise InferenceInputError(f"the model has {len(inputs_meta)} inputs; the panel feeds one image (use "
                                  "`openrknn run` with one file per input)")
    yolox = yolox_layout(inputs_meta, outputs_meta)
    resize = opts.resize
    if resize == "auto":
        resize = ("letterbox-topleft" if yolox["layout"] == "flat" else "letterbox") if yolox else "stretch"
    feed_bgr = opts.feed_order == "bgr" or (
        opts.feed_order == "auto" and bool((metadata.get("build") or {}).get("quant_img_RGB2BGR")))
    feed, transform = fit_image(image_bgr, inputs_meta[0], feed_bgr, resize, data)
    outputs = sim.run([feed])
    names = [o["name"] for o in outputs_meta]
    report: dict = {"outputs": [summarize(n, o) for n, o in zip(names, outputs)], "feed_order": "bgr" if feed_bgr
                    else "rgb", "resize": resize, "input_shape": list(feed.shape), "yolox": yolox, "detections": None}
    drawn = None
    if yolox:
        from ..vision.detector import default_class_names
        from ..vision.draw import class_colors, draw_detections
        from ..vision.yolox.decode import postprocess_yolox

        h, w = inputs_meta[0]["shape"][1:3]
        dets = postprocess_yolox(outputs, transform, yolox["num_classes"], score_thr=opts.score_thr,
                                 nms_thr=opts.nms_thr, layout=yolox["layout"],
                                 input_size=(w, h) if transform is None else None)
        if transform is None:  # stretched: map input pixels back to the image by the two scale factors
            sy, sx = image_bgr.shape[0] / h, image_bgr.shape[1] / w
            boxes = dets.boxes * np.array([sx, sy, sx, sy], np.float32)
            dets = type(dets)(boxes, dets.scores, dets.class_ids)
        # no names given: the CLI's defaults (COCO for 80 classes), so both label the same model alike
        names_list = opts.class_names or default_class_names(yolox["num_classes"])
        report["class_names"] = "given" if opts.class_names else ("COCO" if yolox["num_classes"] == 80 else "default")
        drawn = draw_detections(image_bgr, dets, class_names=names_list)
        # the palette draw_detections uses for this many classes, so the table's swatches match the boxes
        palette = class_colors(int(dets.class_ids.max()) + 1 if len(dets) else 1)
        report["detections"] = [
            {"box": [round(float(v), 1) for v in b], "score": round(float(s), 4), "class_id": int(c),
             "label": names_list[int(c)] if names_list and int(c) < len(names_list) else str(int(c)),
             "color": "#%02x%02x%02x" % tuple(int(x) for x in palette[int(c) % len(palette)][::-1])}
            for b, s, c in zip(dets.boxes, dets.scores, dets.class_ids)]
    return report, drawn, [feed]


class SimulatorCache:
    """One simulator per session, rebuilt when the session's .rknn file changes."""

    def __init__(self):
        self._cache: Dict[str, tuple] = {}
        self._lock = threading.Lock()

    def get(self, key: str, path: Path):
        from ..package import read_package
        from ..runtime.simulator import Simulator

        stamp = (str(path), path.stat().st_mtime_ns)
        with self._lock:
            hit = self._cache.get(key)
            if hit and hit[0] == stamp:
                return hit[1], hit[2]
        pkg = read_package(path)
        sim = Simulator(pkg.model_bytes, pkg.metadata)
        with self._lock:
            self._cache[key] = (stamp, sim, pkg)
        return sim, pkg

    def drop(self, key: str) -> None:
        with self._lock:
            hit = self._cache.pop(key, None)
        if hit:
            hit[1].release()
