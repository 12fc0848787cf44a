"""The built-in eye detector through the deployment pipeline: float vs int8 .rknn on the held-out synthetic set.

    python bench/eye_int8.py [--images 200] [--calib 100] [--dtype asymmetric_quantized-u8] [--algorithm normal]

Same protocol as the model card: 200 frames 640x480 (seed 12345), centred letterbox pad 128 at 416, BGR frames with
reorder '2 1 0', ImageNet mean/std, score threshold 0.01, NMS 0.45, mAP@0.5. Calibration: generated frames of another
seed, letterboxed as deployed. Prints a table (float row, int8 row, difference).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--calib", type=int, default=100)
    ap.add_argument("--dtype", default="asymmetric_quantized-u8")
    ap.add_argument("--algorithm", default="normal")
    args = ap.parse_args()

    from openrknn.api import RKNN
    from openrknn.vision.demo import SEED_CONFIG, _write_calibration
    from openrknn.vision.detector import Detector, DetectorOptions
    from openrknn.vision.eyes import CLASS_NAMES, DEFAULT_PAD_VALUE, default_weights, sample_at
    from openrknn.vision.yolox.evaluate import evaluate_map
    from openrknn.vision.yolox.export import export_torchscript

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pt = tmp / "eye.pt"
        export_torchscript(default_weights(), "nano", 3, 416, pt)
        dataset = _write_calibration(tmp / "calib", args.calib, 416, DEFAULT_PAD_VALUE)
        frames = [sample_at(12345, i, (640, 480)) for i in range(args.images)]
        gt = [(b, c) for _, b, c in frames]
        target = "rk1808" if args.dtype in ("asymmetric_quantized-u8", "dynamic_fixed_point-i8",
                                            "dynamic_fixed_point-i16") else "rk3588"
        for label, quant in (("float", False), (f"{args.dtype} / {args.algorithm}", True)):
            rk = RKNN()
            cfg = dict(SEED_CONFIG, target_platform=target)
            if quant:
                cfg.update(quantized_dtype=args.dtype, quantized_algorithm=args.algorithm)
            assert rk.config(**cfg) == 0
            assert rk.load_pytorch(str(pt), input_size_list=[[3, 416, 416]]) == 0
            t = time.perf_counter()
            assert rk.build(do_quantization=quant, dataset=str(dataset)) == 0
            build_s = time.perf_counter() - t
            assert rk.init_runtime() == 0
            det = Detector(rk, DetectorOptions(score_thr=0.01, nms_thr=0.45, pad_value=DEFAULT_PAD_VALUE,
                                               class_names=list(CLASS_NAMES)))
            dets = [det.detect(f) for f, _, _ in frames]
            m = evaluate_map([(d.boxes, d.scores, d.class_ids) for d in dets], gt, 3)
            rows.append((label, m.map, m.ap, build_s, det.times.summary()["inference_ms"]))
            det.release()
    print(f"\n{'model':36s} {'mAP@0.5':>8s} {'iris':>6s} {'pupil':>6s} {'shut':>6s} {'build s':>8s} {'infer ms':>9s}")
    for label, mp, apc, bs, ms in rows:
        print(f"{label:36s} {mp:8.3f} {apc[0]:6.3f} {apc[1]:6.3f} {apc[2]:6.3f} {bs:8.2f} {ms:9.1f}")
    print(f"{'int8 - float (points)':36s} {(rows[1][1] - rows[0][1]) * 100:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
