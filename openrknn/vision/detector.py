"""The YOLOX detection app, built on the public RKNN API: frame in, Detections and per-stage timings out.

A Detector owns an RKNN object (a loaded .rknn, or a .pt/.onnx converted on the fly) and the pre/post-processing
contract of the model: letterbox mode and pad value, which channel order frames are fed in, thresholds, class names.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import ConfigError, ModelLoadError, RuntimeStateError
from .detections import Detections
from .letterbox import letterbox
from .yolox.decode import postprocess_yolox

log = logging.getLogger("openrknn.vision")

EYE_CLASSES = ("iris", "pupil", "shut-eye")


@dataclass
class DetectorOptions:
    score_thr: float = 0.3
    nms_thr: float = 0.45
    class_agnostic: bool = False
    letterbox_mode: str = "center"  # center | topleft | stretch
    pad_value: int = 114
    feed_rgb: bool = False  # False: feed frames as OpenCV gives them (BGR)
    layout: str = "auto"  # auto | maps | flat
    max_det: int = 300
    class_names: Optional[List[str]] = None


@dataclass
class StageTimes:
    """Per-frame milliseconds: letterbox, inference (the simulator's run of one frame, as openrknn.timing defines
    it: the detector is warmed up first), decode + NMS."""

    pre_ms: List[float] = field(default_factory=list)
    infer_ms: List[float] = field(default_factory=list)
    post_ms: List[float] = field(default_factory=list)

    def add(self, pre: float, infer: float, post: float) -> None:
        self.pre_ms.append(pre)
        self.infer_ms.append(infer)
        self.post_ms.append(post)

    def summary(self) -> Dict[str, float]:
        from ..timing import median_ms as med

        total = [a + b + c for a, b, c in zip(self.pre_ms, self.infer_ms, self.post_ms)]
        return {"frames": len(total), "pre_ms": med(self.pre_ms), "inference_ms": med(self.infer_ms),
                "post_ms": med(self.post_ms), "total_ms": med(total),
                "fps": 1000.0 / med(total) if total and med(total) > 0 else 0.0}


def default_class_names(num_classes: int) -> List[str]:
    if num_classes == 80:
        from .labels import COCO80

        return list(COCO80)
    if num_classes == 3:
        return list(EYE_CLASSES)
    return [f"class{i}" for i in range(num_classes)]


def _num_classes_from_outputs(shapes: Sequence[Sequence[int]]) -> int:
    if len(shapes) == 1 and len(shapes[0]) == 3:  # flat [1, N, 5+nc]
        return int(shapes[0][2]) - 5
    if len(shapes) >= 1 and all(len(s) == 4 for s in shapes):  # per-level maps [1, 5+nc, h, w]
        return int(shapes[0][1]) - 5
    raise ModelLoadError(f"the model's outputs {list(map(list, shapes))} do not look like YOLOX (three [1, 5+nc, h, w] "
                         "maps or one [1, N, 5+nc] tensor)")


class Detector:
    """YOLOX on the RKNN API. Use open_detector() to build one from a file."""

    def __init__(self, rknn, options: DetectorOptions):
        self.rknn = rknn
        self.options = options
        meta = rknn._package.metadata
        if len(meta["inputs"]) != 1 or meta["inputs"][0]["layout"] != "nhwc":
            raise ModelLoadError("a detector needs a model with one image input")
        _, h, w, _ = meta["inputs"][0]["shape"]
        self.input_size = (int(w), int(h))
        self.num_classes = _num_classes_from_outputs([o["shape"] for o in meta["outputs"]])
        names = options.class_names or default_class_names(self.num_classes)
        if len(names) != self.num_classes:
            raise ConfigError("class_names", names, hint=f"the model predicts {self.num_classes} classes; give "
                              f"{self.num_classes} names")
        self.class_names = list(names)
        self.times = StageTimes()

    def warm_up(self) -> None:
        """Untimed inference on a blank frame (openrknn.timing.WARMUP_RUNS times), so the first frame's inference
        time is the steady one, as `openrknn perf` measures it."""
        from ..timing import WARMUP_RUNS

        w, h = self.input_size
        for _ in range(WARMUP_RUNS):
            if self.rknn.inference(inputs=[np.zeros((h, w, 3), np.uint8)]) is None:
                raise RuntimeStateError(f"inference failed: {self.rknn.last_error}")

    def detect(self, frame_bgr: np.ndarray) -> Detections:
        if frame_bgr is None or not isinstance(frame_bgr, np.ndarray) or frame_bgr.ndim != 3:
            raise ConfigError("frame", type(frame_bgr).__name__, hint="a decoded HxWx3 uint8 image")
        o = self.options
        t0 = time.perf_counter()
        boxed, transform = letterbox(frame_bgr, self.input_size, mode=o.letterbox_mode, pad_value=o.pad_value)
        if o.feed_rgb:
            boxed = boxed[:, :, ::-1]
        t1 = time.perf_counter()
        outputs = self.rknn.inference(inputs=[np.ascontiguousarray(boxed)])
        if outputs is None:
            raise RuntimeStateError(f"inference failed: {self.rknn.last_error}")
        t2 = time.perf_counter()
        dets = postprocess_yolox(outputs, transform, self.num_classes, o.score_thr, o.nms_thr, o.class_agnostic,
                                 o.layout, max_det=o.max_det)
        t3 = time.perf_counter()
        self.times.add((t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3)
        return dets

    def release(self) -> None:
        self.rknn.release()


def open_detector(model: str | Path, options: DetectorOptions, convert_config: Optional[dict] = None,
                  input_size: Optional[Tuple[int, int]] = None, dataset: Optional[str] = None) -> Detector:
    """.rknn: load it. .pt/.onnx: convert in memory with `convert_config` (config() keys) and build (int8 when a
    dataset is given, else float)."""
    from ..api import RKNN
    from ..convert import model_kind

    model = Path(model)
    kind = model_kind(model)
    rknn = RKNN()
    if kind == "rknn":
        ok = rknn.load_rknn(str(model)) == 0
    else:
        ok = rknn.config(**dict(convert_config or {})) == 0
        if ok and kind == "pytorch":
            if input_size is None:
                rknn.release()
                raise ConfigError("size", None, hint="a TorchScript model needs the input size (e.g. --size 416)")
            ok = rknn.load_pytorch(str(model), input_size_list=[[3, input_size[1], input_size[0]]]) == 0
        elif ok:
            ok = rknn.load_onnx(str(model)) == 0
        ok = ok and rknn.build(do_quantization=dataset is not None, dataset=dataset) == 0
    ok = ok and rknn.init_runtime() == 0
    if not ok:
        err = rknn.last_error
        rknn.release()
        raise ModelLoadError(f"could not open '{model}': {err}")
    detector = Detector(rknn, options)
    detector.warm_up()
    return detector
