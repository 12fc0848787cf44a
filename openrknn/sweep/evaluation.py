"""Evaluating a built model on a validation set, shard by shard: what to read, how images become inputs, and what
each shard returns for the metric (metrics.py merges the shards).

The `evaluation:` block of a sweep file (and the options of `openrknn eval`):
```
evaluation:
  images: val.txt         # a text file listing images or .npy files (one per line, relative to it), a folder of
                          # images, or one .npy holding [N, ...] inputs
  metric: cosine          # cosine (to the float model, default) | top1 (agreement with the float model's top-1) |
                          # accuracy (top-1 against labels) | map50 (detection mAP@0.5 against COCO-style labels)
  labels: coco.json       # accuracy: a text file '<image file name> <class index>' per line;
                          # map50: a COCO-style JSON (images by file_name, bbox x y w h) or 'float' = the float
                          # model's own detections with score >= gt_score_thr
  postprocess: yolox      # map50: yolox (built in) or 'package.module:function' (outputs, transform) -> Detections
  input: {resize: letterbox, letterbox: topleft, pad: 114, channel_order: bgr}  # how an image becomes the input
  score_thr: 0.01         # detections kept for mAP
  nms_thr: 0.45
  gt_score_thr: 0.3       # labels: float
  shard_size: 8           # images per evaluation work unit
  limit: null             # evaluate the first N images only
  confidence: 0.95        # confidence interval (bootstrap over images)
  resamples: 200         # 30 for map50 (each resample is one pycocotools evaluation)
  tolerance: null         # the recommendation: the fastest point of the Pareto front whose metric is within this
                          # of the best (default: 0.002 for cosine, 0.01 otherwise)
```
Images are decoded with OpenCV (BGR) and fed as uint8 NHWC in ``channel_order``: the deployed model applies
mean/std/reorder itself, exactly as inference() on a board does.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import ConfigError, DatasetError, NotSupportedError

METRICS = ("cosine", "top1", "accuracy", "map50")
RESIZES = ("letterbox", "stretch", "crop", "none")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
_EVAL_KEYS = {"images", "metric", "labels", "postprocess", "input", "score_thr", "nms_thr", "class_agnostic",
              "gt_score_thr", "shard_size", "limit", "confidence", "resamples", "tolerance"}
_INPUT_KEYS = {"resize", "letterbox", "pad", "channel_order", "crop_short"}


@dataclass(frozen=True)
class InputPrep:
    resize: str = "letterbox"
    letterbox: str = "topleft"
    pad: int = 114
    channel_order: str = "bgr"
    crop_short: int = 0  # crop: resize the short side to this (0 = input size x 256/224), then centre-crop


@dataclass(frozen=True)
class EvalSpec:
    images: Path
    metric: str = "cosine"
    labels: Optional[str] = None  # a path, or 'float'
    postprocess: Optional[str] = None
    input: InputPrep = field(default_factory=InputPrep)
    score_thr: float = 0.01
    nms_thr: float = 0.45
    class_agnostic: bool = False
    gt_score_thr: float = 0.3
    shard_size: int = 8
    limit: Optional[int] = None
    confidence: float = 0.95
    resamples: int = 200
    tolerance: Optional[float] = None

    @property
    def select_tolerance(self) -> float:
        if self.tolerance is not None:
            return float(self.tolerance)
        return 0.002 if self.metric == "cosine" else 0.01

    @property
    def needs_float(self) -> bool:
        return self.metric in ("cosine", "top1") or self.labels == "float"

    def fingerprint(self) -> str:
        d = asdict(self)
        d["images"] = _listing_digest(self.images)
        if self.labels and self.labels != "float":
            d["labels"] = hashlib.sha256(Path(self.labels).read_bytes()).hexdigest()
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


def _listing_digest(path: Path) -> str:
    h = hashlib.sha256()
    for name, src in read_items(path):
        h.update(name.encode())
        h.update(hashlib.sha256(item_bytes(src)).digest())  # one file in memory at a time
    return h.hexdigest()


def _number(key: str, value: Any, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= float(value) <= hi:
        raise ConfigError(f"evaluation.{key}", value, f"a number in [{lo:g}, {hi:g}]")
    return float(value)


def _count(key: str, value: Any, allow_none: bool = False) -> Optional[int]:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"evaluation.{key}", value, "an integer >= 1" + (" or null" if allow_none else ""))
    return int(value)


def parse_eval(data: Any, base: Path) -> EvalSpec:
    """Validate an `evaluation:` block; paths are relative to ``base``."""
    if isinstance(data, (str, Path)):
        data = {"images": str(data)}
    if not isinstance(data, dict):
        raise ConfigError("evaluation", data, hint="a mapping with at least 'images:'")
    unknown = sorted(set(data) - _EVAL_KEYS)
    if unknown:
        raise ConfigError(f"evaluation.{unknown[0]}", data[unknown[0]], sorted(_EVAL_KEYS))
    if not data.get("images"):
        raise ConfigError("evaluation.images", data.get("images"), hint="name the validation images: a text file "
                          "listing them, a folder, or a .npy file")
    images = Path(str(data["images"])).expanduser()
    images = images if images.is_absolute() else base / images
    metric = data.get("metric", "cosine")
    if metric not in METRICS:
        raise ConfigError("evaluation.metric", metric, METRICS)
    labels = data.get("labels")
    if labels is not None and labels != "float":
        p = Path(str(labels)).expanduser()
        labels = str(p if p.is_absolute() else base / p)
        if not Path(labels).is_file():
            raise ConfigError("evaluation.labels", data["labels"], hint=f"file not found ({labels})")
    if metric == "accuracy" and (labels is None or labels == "float"):
        raise ConfigError("evaluation.labels", labels, hint="metric 'accuracy' needs a labels file: '<image file "
                          "name> <class index>' per line (or use metric 'top1': agreement with the float model)")
    if metric == "map50" and labels is None:
        raise ConfigError("evaluation.labels", None, hint="metric 'map50' needs COCO-style labels (a JSON file) or "
                          "'float' (the float model's detections as ground truth)")
    post = data.get("postprocess")
    if metric == "map50":
        post = post or "yolox"
    if post is not None and post != "yolox" and ":" not in str(post):
        raise ConfigError("evaluation.postprocess", post, hint="'yolox' or 'package.module:function'")
    raw_input = data.get("input") or {}
    if not isinstance(raw_input, dict) or set(raw_input) - _INPUT_KEYS:
        bad = sorted(set(raw_input) - _INPUT_KEYS)[0] if isinstance(raw_input, dict) else "input"
        raise ConfigError(f"evaluation.input.{bad}", raw_input, sorted(_INPUT_KEYS))
    prep = InputPrep(**raw_input)
    if prep.resize not in RESIZES:
        raise ConfigError("evaluation.input.resize", prep.resize, RESIZES)
    if prep.letterbox not in ("topleft", "center"):
        raise ConfigError("evaluation.input.letterbox", prep.letterbox, ("topleft", "center"))
    if prep.channel_order not in ("bgr", "rgb"):
        raise ConfigError("evaluation.input.channel_order", prep.channel_order, ("bgr", "rgb"))
    if metric == "map50" and prep.resize == "crop":
        raise ConfigError("evaluation.input.resize", "crop", hint="a centre crop loses boxes: use letterbox or "
                          "stretch for detection")
    spec = EvalSpec(images=images, metric=metric, labels=labels, postprocess=post, input=prep,
                    score_thr=_number("score_thr", data.get("score_thr", 0.01), 0, 1),
                    nms_thr=_number("nms_thr", data.get("nms_thr", 0.45), 0, 1),
                    class_agnostic=bool(data.get("class_agnostic", False)),
                    gt_score_thr=_number("gt_score_thr", data.get("gt_score_thr", 0.3), 0, 1),
                    shard_size=_count("shard_size", data.get("shard_size", 8)),
                    limit=_count("limit", data.get("limit"), allow_none=True),
                    confidence=_number("confidence", data.get("confidence", 0.95), 0.5, 0.999),
                    resamples=int(_number("resamples", data.get("resamples", 30 if metric == "map50" else 200),
                                          0, 100000)),
                    tolerance=None if data.get("tolerance") is None else _number("tolerance", data["tolerance"], 0,
                                                                                 1))
    read_items(spec.images)  # fail now on a missing or empty set, not in a worker
    return spec


# ---------------------------------------------------------------- the validation set


Source = Union[Path, bytes]


def item_bytes(src: Source) -> bytes:
    return src if isinstance(src, bytes) else Path(src).read_bytes()


def read_items(path: Path, limit: Optional[int] = None) -> List[Tuple[str, Source]]:
    """(name, source) of every validation sample: a file path (an image or a .npy; read when evaluated, so the set
    streams) or, for the samples of one stacked .npy, their npy bytes."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"validation set {str(path)!r} not found; give a text file listing images, a folder of "
                           "images or a .npy file")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES + (".npy",))
    elif path.suffix.lower() == ".npy":
        arr = np.load(path, allow_pickle=False)
        if arr.ndim < 2:
            raise DatasetError(f"{path}: a validation .npy holds [N, ...] inputs (N samples); got shape "
                               f"{list(arr.shape)}")
        items = [(f"{path.stem}[{i}]", _npy_bytes(arr[i])) for i in range(arr.shape[0])]
        return items[:limit] if limit else items
    else:
        from .files import dataset_files

        files = dataset_files(path)
    if not files:
        raise DatasetError(f"validation set {str(path)!r} lists no images or .npy files")
    files = files[:limit] if limit else files
    return [(p.name, p) for p in files]


def _npy_bytes(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def shard(items: Sequence[Tuple[str, Source]], size: int) -> List[List[Tuple[int, str, Source]]]:
    """Consecutive shards of ``size`` items, each item with its position in the whole set."""
    indexed = [(i, n, b) for i, (n, b) in enumerate(items)]
    return [indexed[k:k + size] for k in range(0, len(indexed), size)]


def with_bytes(items: Sequence[Tuple[int, str, Source]]) -> List[Tuple[int, str, bytes]]:
    """A shard with file contents instead of paths (for workers on other machines)."""
    return [(i, n, item_bytes(src)) for i, n, src in items]


# ---------------------------------------------------------------- one sample -> model input


def prepare(name: str, src: Source, meta: dict, prep: InputPrep):
    """(uint8 or float NHWC [1,H,W,C] input, LetterboxTransform or None, original (h, w))."""
    import cv2

    from ..vision.letterbox import LetterboxTransform, letterbox

    data = item_bytes(src)
    if name.endswith(".npy") or name.endswith("]"):
        import io

        arr = np.load(io.BytesIO(data), allow_pickle=False)
        shape = list(meta["shape"])
        if list(arr.shape) == shape[1:]:
            arr = arr[None]
        if list(arr.shape) != shape:
            raise DatasetError(f"{name}: array of shape {list(arr.shape)}, the model takes {shape} (NHWC)")
        return arr, None, None
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise DatasetError(f"{name}: cannot decode this image (not an image OpenCV can read, or damaged)")
    _, h, w, c = meta["shape"]
    if c != 3:
        raise NotSupportedError(f"{name}: image evaluation feeds 3-channel images; the model takes {c} channels "
                                "(list .npy inputs instead)")
    oh, ow = img.shape[:2]
    transform = None
    if prep.resize == "letterbox":
        img, transform = letterbox(img, (w, h), "center" if prep.letterbox == "center" else "topleft", prep.pad)
    elif prep.resize == "stretch":
        img, transform = letterbox(img, (w, h), "stretch")
    elif prep.resize == "crop":
        short = prep.crop_short or int(round(min(h, w) * 256 / 224))
        r = short / min(oh, ow)
        img = cv2.resize(img, (max(w, int(round(ow * r))), max(h, int(round(oh * r)))), interpolation=cv2.INTER_LINEAR)
        y, x = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
        img = img[y:y + h, x:x + w]
    elif (oh, ow) != (h, w):
        raise DatasetError(f"{name}: image is {ow}x{oh} but the model takes {w}x{h}; set evaluation.input.resize")
    else:
        transform = LetterboxTransform.identity(h, w)
    if prep.channel_order == "rgb":
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(img[None]), transform, (oh, ow)


def load_postprocess(name: Optional[str]) -> Optional[Callable]:
    if name is None:
        return None
    if name == "yolox":
        return _yolox
    module, _, attr = name.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError("evaluation.postprocess", name, hint=f"cannot import it ({e}); the module must be "
                          "importable by every worker (on PYTHONPATH)") from None


def _yolox(outputs: List[np.ndarray], transform, spec: EvalSpec):
    from ..vision.yolox.decode import postprocess_yolox

    outs = outputs[0] if len(outputs) == 1 else outputs
    return postprocess_yolox(outs, transform, score_thr=spec.score_thr, nms_thr=spec.nms_thr,
                             class_agnostic=spec.class_agnostic)


def _detections(det) -> List[list]:
    """Detections -> [[x1, y1, x2, y2, score, class], ...] (JSON-friendly, float32 values exactly)."""
    return [[*map(float, b), float(s), int(c)] for b, s, c in zip(det.boxes, det.scores, det.class_ids)]


# ---------------------------------------------------------------- one shard


class ShardEvaluator:
    """Runs one package (and its float reference when the metric needs it) over shards."""

    def __init__(self, package_bytes: bytes, spec: EvalSpec, threads: int = 1):
        from ..package import read_package_bytes
        from ..runtime.simulator import Simulator

        self.spec = spec
        pkg = read_package_bytes(package_bytes, "<sweep model>")
        meta = pkg.metadata
        if len(meta["inputs"]) != 1:
            raise NotSupportedError(f"evaluation runs single-input models; this one has {len(meta['inputs'])} "
                                    "inputs")
        self.meta = meta["inputs"][0]
        self.sim = Simulator(pkg.model_bytes, meta, threads=threads)
        self.ref = None
        if spec.needs_float:
            self.ref = Simulator(pkg.float_model_bytes, meta, threads=threads) if pkg.float_model_bytes else self.sim
        self.post = load_postprocess(spec.postprocess)

    def run(self, items: Sequence[Tuple[int, str, Source]]) -> Dict[str, list]:
        from ..metrics import cosine

        out: Dict[str, list] = {"index": [], "name": [], "value": [], "dets": [], "ref": [], "size": []}
        for index, name, data in items:  # streamed: one sample in memory at a time
            x, transform, size = prepare(name, data, self.meta, self.spec.input)
            outs = self.sim.run([x])
            ref = self.ref.run([x]) if self.ref is not None else None
            out["index"].append(index)
            out["name"].append(name)
            out["size"].append(list(size) if size else None)
            m = self.spec.metric
            if m == "cosine":
                out["value"].append(float(np.mean([cosine(a, b) for a, b in zip(ref, outs)])))
            elif m in ("top1", "accuracy"):
                logits = self._logits(outs, transform)
                out["value"].append(int(np.argmax(logits)))
                if m == "top1":
                    out["ref"].append(int(np.argmax(self._logits(ref, transform))))
            else:
                out["dets"].append(_detections(self.post(outs, transform, self.spec)))
                if self.spec.labels == "float":
                    ref_det = self.post(ref, transform, self.spec)
                    keep = ref_det.scores >= self.spec.gt_score_thr
                    out["ref"].append([d for d, k in zip(_detections(ref_det), keep) if k])
        return out

    def _logits(self, outs: List[np.ndarray], transform) -> np.ndarray:
        if self.post is not None:
            return np.ravel(self.post(outs, transform, self.spec))
        return np.ravel(outs[0])


def merge_shards(parts: Sequence[Dict[str, list]]) -> Dict[str, list]:
    """Shard results in set order, whatever order they finished in."""
    merged: Dict[str, list] = {}
    for p in sorted(parts, key=lambda p: p["index"][0] if p["index"] else -1):
        for k, v in p.items():
            merged.setdefault(k, []).extend(v)
    return merged
