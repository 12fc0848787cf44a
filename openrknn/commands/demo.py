"""`openrknn demo`: the seed's whole path on a YOLOX-nano built from our own model code.

.pth -> traced .pt -> config as the seed (ImageNet mean/std, reorder '2 1 0', rk1808) -> build -> export .rknn ->
load it back -> simulator inference on sample images; prints shapes, agreement with torch and per-stage timings.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

SEED_MEAN = [123.675, 116.28, 103.53]
SEED_STD = [58.395, 57.12, 57.375]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the whole pth -> pt -> rknn -> simulator path on a built-in YOLOX-nano")
    p.add_argument("--out", default="openrknn-demo", help="output folder (default: ./openrknn-demo)")
    p.add_argument("--images", default=None, help="folder of sample images (default: generated images)")
    p.add_argument("--size", type=int, default=416, help="input size (default 416)")
    p.set_defaults(func=run)


def _sample_images(folder, n: int = 4):
    import cv2

    if folder:
        paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp"))
        imgs = [(p.name, cv2.imread(str(p))) for p in paths[:n]]
        return [(name, im) for name, im in imgs if im is not None]
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):  # smooth random scenes with a few ellipses, 640x480 like a camera frame
        img = cv2.GaussianBlur(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8), (0, 0), 9)
        for _ in range(3):
            c = (int(rng.integers(80, 560)), int(rng.integers(80, 400)))
            cv2.ellipse(img, c, (int(rng.integers(20, 70)), int(rng.integers(10, 40))), 0, 0, 360,
                        tuple(int(v) for v in rng.integers(0, 255, 3)), -1)
        out.append((f"generated_{i}.png", img))
    return out


def run(args: argparse.Namespace) -> int:
    import torch

    from ..api import RKNN
    from ..vision.letterbox import letterbox
    from ..vision.yolox.export import build_random_yolox, export_torchscript

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    t = time.perf_counter()
    pth = out / "yolox_nano_3cls.pth"
    torch.save(build_random_yolox("nano", 3, seed=0).state_dict(), pth)
    pt = out / "yolox_nano_3cls.pt"
    info = export_torchscript(pth, "nano", 3, args.size, pt)
    timings["pth -> pt (trace + verify)"] = time.perf_counter() - t
    print(f"[1/4] traced {pt.name}: outputs {info['output_shapes']}, |traced - eager| = {info['max_abs_diff']:.2g}")

    rknn_path = out / "yolox_nano_3cls.rknn"
    with RKNN() as rknn:
        t = time.perf_counter()
        rknn.config(reorder_channel="2 1 0", mean_values=[SEED_MEAN], std_values=[SEED_STD],
                    optimization_level=3, target_platform="rk1808")
        if rknn.load_pytorch(model=str(pt), input_size_list=[[3, args.size, args.size]]) != 0:
            return 1
        if rknn.build(do_quantization=False) != 0 or rknn.export_rknn(str(rknn_path)) != 0:
            return 1
        timings["load + build + export"] = time.perf_counter() - t
    print(f"[2/4] built {rknn_path.name} ({rknn_path.stat().st_size / 1e6:.2f} MB)")

    traced = torch.jit.load(str(pt)).eval()
    with RKNN() as rknn:
        t = time.perf_counter()
        if rknn.load_rknn(str(rknn_path)) != 0 or rknn.init_runtime() != 0:
            return 1
        timings["load_rknn + init_runtime"] = time.perf_counter() - t
        print("[3/4] loaded it back into the simulator")
        print("[4/4] inference:")
        worst = 0.0
        inf_ms = []
        for name, img in _sample_images(args.images):
            boxed, _ = letterbox(img, args.size, mode="center", pad_value=128)
            t = time.perf_counter()
            outs = rknn.inference(inputs=[boxed])  # BGR frame; the model's reorder '2 1 0' makes it RGB
            inf_ms.append((time.perf_counter() - t) * 1e3)
            x = (boxed[:, :, ::-1].astype(np.float32) - np.float32(SEED_MEAN)) / np.float32(SEED_STD)
            with torch.no_grad():
                ref = traced(torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))[None]))
            diff = max(float(np.abs(o - r.numpy()).max()) for o, r in zip(outs, ref))
            worst = max(worst, diff)
            print(f"      {name:22s} outputs {[list(o.shape) for o in outs]}  {inf_ms[-1]:6.1f} ms  "
                  f"max |rknn - torch| = {diff:.2g}")
    timings["inference (median)"] = float(np.median(inf_ms)) / 1e3
    print("\nstage timings:")
    for k, v in timings.items():
        print(f"  {k:28s} {v * 1e3:9.1f} ms")
    print(f"\nworst difference to torch: {worst:.2g}; outputs in {out}")
    return 0 if worst < 1e-3 else 1
