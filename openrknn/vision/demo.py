"""The main job: the seed's whole deployment path on the built-in eye detector, with a report.

.pth -> traced .pt -> config as the seed (ImageNet mean/std, reorder '2 1 0', rk1808) -> int8 build calibrated on
generated images -> export .rknn -> load it back -> simulator inference on generated test images -> annotated images,
float-vs-int8 agreement, mAP against the generator's ground truth, speed and memory, one HTML report.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional

import cv2
import numpy as np

from ..atomic import write_text_atomic

log = logging.getLogger("openrknn.demo")

SEED_CONFIG = dict(reorder_channel="2 1 0", mean_values=[[123.675, 116.28, 103.53]],
                   std_values=[[58.395, 57.12, 57.375]], optimization_level=3, target_platform="rk1808",
                   # frames are fed as OpenCV reads them (BGR); calibration images must be decoded the same way
                   quant_img_RGB2BGR=True)
# test frames: the first of the model card's held-out stream (seed 12345), so the demo and the card measure the same set
CALIB_SEED, TEST_SEED = 1001, 12345
FRAME_SIZE = (640, 480)
# Deployment threshold (what is drawn and written) and the one mAP is computed at: mAP over detections already cut
# at 0.3 would stop the precision-recall curve early and understate it. Greedy NMS never lets a lower score suppress
# a higher one, so the deployment detections are exactly the evaluation ones with score >= SCORE_THR.
SCORE_THR, EVAL_SCORE_THR = 0.3, 0.01


@dataclass
class DemoResult:
    out_dir: Path
    report: Path
    rknn_path: Path
    map_float: float
    map_int8: float
    kept: float  # share of float detections the int8 model also finds (same class, IoU >= 0.5)
    timings: Dict[str, float] = field(default_factory=dict)


def _write_calibration(folder: Path, n: int, size: int, pad: int) -> Path:
    """Calibration images exactly as the deployed pipeline feeds them: letterboxed frames, BGR, size x size."""
    from .eyes import sample_at
    from .letterbox import letterbox

    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        frame, _, _ = sample_at(CALIB_SEED, i, FRAME_SIZE)
        boxed, _ = letterbox(frame, size, mode="center", pad_value=pad)
        name = f"calib_{i:04d}.png"
        cv2.imwrite(str(folder / name), boxed)
        lines.append(name)
    write_text_atomic(folder / "dataset.txt", "\n".join(lines) + "\n")
    return folder / "dataset.txt"


def _match_rate(ref, test, iou_thr: float = 0.5) -> tuple:
    """(matched, total): reference detections found again in `test` with the same class and IoU >= iou_thr."""
    from .nms import box_iou

    matched = total = 0
    for r, t in zip(ref, test):
        total += len(r)
        if not len(r) or not len(t):
            continue
        iou = box_iou(r.boxes, t.boxes)
        same = r.class_ids[:, None] == t.class_ids[None, :]
        used = set()
        for i in np.argsort(-r.scores):
            cand = np.where(same[i] & (iou[i] >= iou_thr))[0]
            cand = [c for c in cand[np.argsort(-iou[i, cand])] if c not in used]
            if cand:
                used.add(cand[0])
                matched += 1
    return matched, total


def run_demo(out_dir: str | Path, weights: Optional[str] = None, calib_images: int = 100, test_images: int = 120,
             size: int = 416, progress: Callable[[str], None] = print) -> DemoResult:
    from ..analysis.report import Section, key_values, model_report, table
    from ..api import RKNN
    from .detector import Detector, DetectorOptions
    from .draw import draw_detections
    from .eyes import CLASS_NAMES, DEFAULT_PAD_VALUE, default_weights, sample_at
    from .yolox.evaluate import evaluate_map
    from .yolox.export import export_torchscript

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    timings: Dict[str, float] = {}
    steps = 6

    t = time.perf_counter()
    weights = Path(weights) if weights else default_weights()
    pt = out / "eye_yolox_nano.pt"
    info = export_torchscript(weights, "nano", len(CLASS_NAMES), size, pt)
    timings["pth -> pt (trace + verify)"] = time.perf_counter() - t
    progress(f"[1/{steps}] traced {weights.name} -> {pt.name} (|traced - eager| = {info['max_abs_diff']:.1g})")

    t = time.perf_counter()
    dataset = _write_calibration(out / "calibration", calib_images, size, DEFAULT_PAD_VALUE)
    timings["generate calibration images"] = time.perf_counter() - t
    progress(f"[2/{steps}] generated {calib_images} calibration images (letterboxed like the deployed input)")

    rknn_path, float_path = out / "eye_yolox_nano.rknn", out / "eye_yolox_nano_float.rknn"
    for quantize, path in ((True, rknn_path), (False, float_path)):
        t = time.perf_counter()
        with RKNN() as rknn:
            ok = (rknn.config(**SEED_CONFIG) == 0
                  and rknn.load_pytorch(model=str(pt), input_size_list=[[3, size, size]]) == 0
                  and rknn.build(do_quantization=quantize, dataset=str(dataset)) == 0
                  and rknn.export_rknn(str(path)) == 0)
            if not ok:
                raise RuntimeError(f"conversion failed: {rknn.last_error}")
        timings["convert + build " + ("int8" if quantize else "float")] = time.perf_counter() - t
    progress(f"[3/{steps}] built {rknn_path.name} (int8, {rknn_path.stat().st_size / 1e6:.1f} MB) and a float "
             "reference")

    t = time.perf_counter()
    opts = DetectorOptions(score_thr=EVAL_SCORE_THR, nms_thr=0.45, letterbox_mode="center",
                           pad_value=DEFAULT_PAD_VALUE, class_names=list(CLASS_NAMES))
    detectors = {}
    for name, path in (("int8", rknn_path), ("float", float_path)):
        rk = RKNN()
        if rk.load_rknn(str(path)) != 0 or rk.init_runtime() != 0:
            raise RuntimeError(f"could not load {path} back: {rk.last_error}")
        detectors[name] = Detector(rk, opts)
    timings["load_rknn + init_runtime"] = time.perf_counter() - t
    progress(f"[4/{steps}] loaded both models back into the simulator")

    samples = [sample_at(TEST_SEED, i, FRAME_SIZE) for i in range(test_images)]
    ranked: Dict[str, list] = {"int8": [], "float": []}
    for frame, _, _ in samples:
        for name, det in detectors.items():
            ranked[name].append(det.detect(frame))
    gt = [(b, c) for _, b, c in samples]
    maps = {name: evaluate_map([(d.boxes, d.scores, d.class_ids) for d in dl], gt, len(CLASS_NAMES))
            for name, dl in ranked.items()}
    dets = {name: [d.select(d.scores >= SCORE_THR) for d in dl] for name, dl in ranked.items()}
    matched, total = _match_rate(dets["float"], dets["int8"])
    kept = matched / total if total else 1.0
    stage = detectors["int8"].times.summary()
    progress(f"[5/{steps}] {test_images} test images: mAP@0.5 int8 {maps['int8'].map:.3f} / float "
             f"{maps['float'].map:.3f}; int8 keeps {matched}/{total} float detections; "
             f"{stage['total_ms']:.1f} ms per frame")

    img_dir = out / "images"
    img_dir.mkdir(exist_ok=True)
    shown = []
    for i, ((frame, _, _), d) in enumerate(zip(samples, dets["int8"])):
        if i < 8:
            path = img_dir / f"test_{i:02d}.png"
            cv2.imwrite(str(path), draw_detections(frame, d, CLASS_NAMES, style="ellipse"))
            shown.append(path)
    results = [{"image": i, "detections": d.to_list(list(CLASS_NAMES))} for i, d in enumerate(dets["int8"])]
    write_text_atomic(out / "detections.json", json.dumps({"classes": list(CLASS_NAMES), "results": results},
                                                          indent=1))

    per_class = [(CLASS_NAMES[c], f"{maps['float'].ap[c]:.3f}", f"{maps['int8'].ap[c]:.3f}")
                 for c in range(len(CLASS_NAMES))]
    det_rows = [(i, d["class_name"], f"{d['score']:.2f}", ", ".join(f"{v:.0f}" for v in d["box"]))
                for r in results[:8] for i, d in [(r["image"], x) for x in r["detections"]]]
    sections = [
        Section("Float vs int8", key_values([
            ("mAP@0.5 vs generator ground truth", f"float {maps['float'].map:.3f}, int8 {maps['int8'].map:.3f}"),
            ("float detections kept by int8", f"{matched}/{total} ({kept * 100:.1f}%)"),
            ("test images", f"{test_images} generated {FRAME_SIZE[0]}x{FRAME_SIZE[1]} frames (seed {TEST_SEED})"),
            ("calibration", f"{calib_images} generated frames (seed {CALIB_SEED}), letterboxed, BGR as fed")])
            + table(["class", "AP float", "AP int8"], per_class, numeric=(1, 2))),
        Section("Per-stage timings (int8, simulator on this host)", key_values(
            [("pre-processing (letterbox)", f"{stage['pre_ms']:.2f} ms"),
             ("inference", f"{stage['inference_ms']:.2f} ms"), ("post-processing (decode + NMS)",
                                                                  f"{stage['post_ms']:.2f} ms"),
             ("per frame", f"{stage['total_ms']:.2f} ms ({stage['fps']:.1f} FPS)")]
            + [(k, f"{v:.2f} s") for k, v in timings.items()])),
        Section("Detections (first 8 test images, int8)",
                table(["image", "class", "score", "box x1, y1, x2, y2"], det_rows, numeric=(0, 2)),
                [str(p) for p in shown]),
    ]
    for d in detectors.values():
        d.release()
    t = time.perf_counter()
    from ..package import read_package

    report = model_report(read_package(rknn_path), out / "report.html", model_path=str(rknn_path), extra=sections,
                          title="openrknn demo: YOLOX-nano eye detector on RK1808", calib_count=calib_images)
    timings["report"] = time.perf_counter() - t
    progress(f"[6/{steps}] wrote the report")
    return DemoResult(out, report, rknn_path, maps["float"].map, maps["int8"].map, kept, timings)
