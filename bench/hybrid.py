"""Hybrid quantization bench: YOLOX-nano (COCO) with asymmetric_quantized-u8, plain int8 vs auto hybrid.

Split (../shared/data/README.md): calibrate on the even-numbered COCO images (sorted, 0-based positions 0, 2, ...),
evaluate on the odd ones plus misc/*.jpg. Reference: float detections at score >= 0.3; a detection is kept when the
quantized model has one of the same class with IoU >= 0.5 (one-to-one). Columns: detections kept, layers promoted
(count and % of the quantized layers), worst output cosine on the calibration samples, estimated NPU latency.

    python bench/hybrid.py [--thresh 0.98 0.995 ...] [--promote int16|float] [--dtype w8a8] [--algorithm mmse]

--dtype w8a8 runs the same comparison for RKNPU2 (rk3588, per-channel int8 weights); --algorithm picks
quantized_algorithm for every build (all use GPTQ weight rounding, the default).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import List

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
SIZE = 416
TARGETS = {"asymmetric_quantized-u8": "rk1808", "w8a8": "rk3588"}  # dtype -> the chip it is benched for

from openrknn.convert import BuildOptions, build, load_model  # noqa: E402
from openrknn.convert import hybrid as hb  # noqa: E402
from openrknn.config import make_config  # noqa: E402
from openrknn.quant import hybrid as hq  # noqa: E402
from openrknn.vision.letterbox import letterbox  # noqa: E402
from openrknn.vision.yolox.decode import postprocess_yolox  # noqa: E402


def split():
    coco = sorted((DATA / "images" / "coco").glob("*.jpg"))
    return coco[0::2], coco[1::2] + sorted((DATA / "images" / "misc").glob("*.jpg"))


def prepared(path: Path):
    """BGR letterbox (top-left, pad 114) as the deployed model is fed: NHWC 0..255, and its transform."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    lb, tf = letterbox(img, SIZE, mode="topleft", pad_value=114)
    return lb.astype(np.float32), tf


def write_dataset(paths: List[Path], folder: Path) -> Path:
    for k, p in enumerate(paths):
        np.save(folder / f"{k}.npy", prepared(p)[0])
    ds = folder / "dataset.txt"
    ds.write_text("".join(f"{k}.npy\n" for k in range(len(paths))))
    return ds


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], axis=1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter + 1e-9)


def kept(ref, det) -> int:
    """Float detections matched (same class, IoU >= 0.5, each quantized detection used once)."""
    if len(ref.boxes) == 0 or len(det.boxes) == 0:
        return 0
    m = iou(ref.boxes, det.boxes) * (ref.class_ids[:, None] == det.class_ids[None, :])
    used, n = set(), 0
    for i in np.argsort(-ref.scores):
        for j in np.argsort(-m[i]):
            if m[i, j] >= 0.5 and j not in used:
                used.add(j)
                n += 1
                break
    return n


def detections(model, evals):
    outs = hq.run_outputs(model, [{"images": x[None]} for x, _ in evals], threads=2)
    return [postprocess_yolox(o, tf, score_thr=0.3) for o, (_, tf) in zip(outs, evals)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--thresh", type=float, nargs="+", default=[0.98, 0.995, 0.999])
    ap.add_argument("--promote", default="int16", choices=("int16", "float"))
    ap.add_argument("--dtype", default="asymmetric_quantized-u8", choices=tuple(TARGETS))
    ap.add_argument("--algorithm", default="normal", choices=("normal", "kl_divergence", "mmse"))
    args = ap.parse_args()
    if not (DATA / "models" / "yolox_nano_coco.onnx").exists():
        sys.exit(f"needs {DATA}/models/yolox_nano_coco.onnx")
    logging.basicConfig(level=logging.WARNING)
    calib, held = split()
    evals = [prepared(p) for p in held]
    with tempfile.TemporaryDirectory() as tmp:
        ds = str(write_dataset(calib, Path(tmp)))
        loaded = load_model(DATA / "models" / "yolox_nano_coco.onnx")
        cfg = make_config(mean_values=[[0, 0, 0]], std_values=[[1, 1, 1]], quantized_dtype=args.dtype,
                          quantized_algorithm=args.algorithm, target_platform=TARGETS[args.dtype])
        t = time.perf_counter()
        plain = build(loaded, cfg, BuildOptions(dataset=ds))
        plain_s = time.perf_counter() - t
        # the input name after pre-processing is the model's own
        ref = detections(plain.float_model, evals)
        total = sum(len(r.boxes) for r in ref)
        units = sum(len(m) for m in hb._unit_table(plain.float_model,
                                                   plain.package.metadata["quantization"]["tensors"])[1].values())
        rows = []
        calib_feeds = [{"images": prepared(p)[0][None]} for p in calib[:8]]
        cos_plain = min(hq.output_cosines(hq.run_outputs(plain.float_model, calib_feeds),
                                          hq.run_outputs(plain.model, calib_feeds)))
        lat0 = hb._cost(plain.model, cfg)["latency_us"]
        k = sum(kept(r, d) for r, d in zip(ref, detections(plain.model, evals)))
        rows.append(("plain int8", k, 0, cos_plain, lat0, plain_s))
        for th in args.thresh:
            t = time.perf_counter()
            res = hb.auto_hybrid(loaded, cfg, BuildOptions(dataset=ds), cos_thresh=th, promote=args.promote,
                                 eval_feeds=calib_feeds, sensitivity_samples=4, progress=False)
            rep = res.hybrid_report
            secs = time.perf_counter() - t
            k = sum(kept(r, d) for r, d in zip(ref, detections(res.model, evals)))
            rows.append((f"auto hybrid cos>={th} ({args.promote})", k, len(rep["layers"]), min(rep["cosine_after"]),
                         rep["cost_after"]["latency_us"], secs))
            print(f"  {th}: promoted {rep['layers']}", flush=True)
    print(f"\nYOLOX-nano COCO, {args.dtype} ({TARGETS[args.dtype]}, {args.algorithm}): {len(calib)} calibration "
          f"images, {len(held)} held-out images, {total} float detections (score >= 0.3); {units} quantized layers")
    hdr = f"{'setting':34s} {'kept':>12s} {'promoted':>14s} {'worst cos':>10s} {'latency us':>14s} {'build s':>8s}"
    print(hdr + "\n" + "-" * len(hdr))
    for name, k, n, cos, lat, secs in rows:
        cost = f"{lat:8.0f} ({(lat / lat0 - 1) * 100:+.1f}%)" if lat and lat0 else "-"
        print(f"{name:34s} {k:4d} ({k / total * 100:5.1f}%) {n:4d} ({n / units * 100:5.1f}%) {cos:10.5f} "
              f"{cost:>14s} {secs:8.1f}")


if __name__ == "__main__":
    main()
