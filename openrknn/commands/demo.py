"""`openrknn demo`: the seed's whole path on the built-in YOLOX-nano eye detector, ending in an HTML report."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="pth -> pt -> int8 rknn -> simulator -> boxes and a report, on the built-in "
                       "eye detector")
    p.add_argument("-o", "--out", default="openrknn-demo", help="output folder (default: ./openrknn-demo)")
    p.add_argument("--weights", default=None, help="yolox-pytorch nano 3-class .pth (default: the built-in model)")
    p.add_argument("--calib-images", type=int, default=100, help="generated calibration images (default 100)")
    p.add_argument("--test-images", type=int, default=120,
                   help="generated test images (default 120: fewer make the mAP of the small pupil boxes noisy)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..vision.demo import run_demo

    res = run_demo(args.out, weights=args.weights, calib_images=args.calib_images, test_images=args.test_images)
    print(f"\nmAP@0.5 on generated test images: float {res.map_float:.3f}, int8 {res.map_int8:.3f}; int8 keeps "
          f"{res.kept * 100:.1f}% of the float detections")
    print(f"model:  {res.rknn_path}")
    print(f"report: {res.report}")
    print(f"output folder: {res.out_dir}")
    return 0
