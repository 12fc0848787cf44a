"""Estimated INT8 FPS of four published rknn_model_zoo models vs the published board numbers (FACTS.md).

Builds the architectures in torch (random weights: speed does not depend on them), exports them to ONNX
(opset 17, BN folded), runs `openrknn.analysis.perf.estimate_perf` on RK1808 (asymmetric_quantized-u8) and one RK3588
core (w8a8) and prints estimate / published. Target: every ratio within 0.75-1.33. yolov5s (SiLU) is a fifth,
held-out check of the SiLU cost.

    python bench/perf_estimate.py [--cache-dir /tmp/openrknn_bench] [--chips rk1808,rk3588]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from openrknn.analysis.perf import estimate_perf  # noqa: E402

# FACTS.md "Published board speed" (rknn_model_zoo, INT8, NPU time only, RK3588 = one core), frames per second
PUBLISHED = {
    "mobilenetv2@224": {"rk1808": 170.3, "rv1109": 212.9, "rv1126": 322.3, "rk3566": 180.7, "rk3568": 180.7,
                        "rk3562": 281.3, "rk3588": 450.7, "rk3576": 467.0},
    "resnet50-v2@224": {"rk1808": 37.1, "rv1109": 24.4, "rv1126": 36.2, "rk3566": 37.9, "rk3568": 37.9,
                        "rk3562": 54.9, "rk3588": 110.1, "rk3576": 99.0},
    "yolov5s_relu@640": {"rk1808": 37.2, "rv1109": 20.2, "rv1126": 29.2, "rk3566": 25.5, "rk3568": 25.5,
                         "rk3562": 33.2, "rk3588": 66.1, "rk3576": 65.0},
    "yolov5s@640": {"rk1808": 28.2, "rv1109": 13.6, "rv1126": 20.0, "rk3566": 19.3, "rk3568": 19.3,
                    "rk3562": 23.6, "rk3588": 48.4, "rk3576": 57.5},
    "yolox_s@640": {"rk1808": 23.0, "rv1109": 10.6, "rv1126": 15.7, "rk3566": 15.2, "rk3568": 15.2,
                    "rk3562": 18.3, "rk3588": 37.1, "rk3576": 41.5},
}
INT8 = {"rknpu1": "asymmetric_quantized-u8", "rknpu2": "w8a8"}


def _torch_models() -> dict:
    """name -> (module, input size). Compact re-implementations of the published architectures."""
    import torch
    from torch import nn

    def cba(c1: int, c2: int, k: int = 1, s: int = 1, act: type = nn.ReLU, g: int = 1) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(c1, c2, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(c2), act())

    # --- MobileNetV2 (ONNX model zoo mobilenetv2-12: ReLU6) ----------------------------------------------------
    class InvertedResidual(nn.Module):
        def __init__(self, c1: int, c2: int, s: int, t: int):
            super().__init__()
            hid = c1 * t
            layers = [] if t == 1 else [cba(c1, hid, 1, act=nn.ReLU6)]
            layers += [cba(hid, hid, 3, s, nn.ReLU6, g=hid), nn.Conv2d(hid, c2, 1, bias=False), nn.BatchNorm2d(c2)]
            self.body, self.res = nn.Sequential(*layers), s == 1 and c1 == c2

        def forward(self, x):
            return x + self.body(x) if self.res else self.body(x)

    def mobilenetv2() -> nn.Module:
        cfg = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
               (6, 320, 1, 1)]
        layers, c = [cba(3, 32, 3, 2, nn.ReLU6)], 32
        for t, c2, n, s in cfg:
            for i in range(n):
                layers.append(InvertedResidual(c, c2, s if i == 0 else 1, t))
                c = c2
        layers += [cba(c, 1280, 1, act=nn.ReLU6), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1280, 1000)]
        return nn.Sequential(*layers)

    # --- ResNet50 v2 (pre-activation, as the ONNX model zoo resnet50-v2) ----------------------------------------
    class PreActBottleneck(nn.Module):
        def __init__(self, c1: int, c2: int, s: int):
            super().__init__()
            mid = c2 // 4
            self.pre = nn.Sequential(nn.BatchNorm2d(c1), nn.ReLU())
            self.body = nn.Sequential(cba(c1, mid, 1), cba(mid, mid, 3, s), nn.Conv2d(mid, c2, 1, bias=False))
            self.down = nn.Conv2d(c1, c2, 1, s, bias=False) if s != 1 or c1 != c2 else None

        def forward(self, x):
            p = self.pre(x)
            return self.body(p) + (self.down(p) if self.down is not None else x)

    def resnet50_v2() -> nn.Module:
        layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
        c = 64
        for c2, n, s in [(256, 3, 1), (512, 4, 2), (1024, 6, 2), (2048, 3, 2)]:
            for i in range(n):
                layers.append(PreActBottleneck(c, c2, s if i == 0 else 1))
                c = c2
        layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 1000)]
        return nn.Sequential(*layers)

    # --- CSP blocks shared by YOLOv5 (C3) and YOLOX (CSPLayer) ----------------------------------------------------
    class Bottleneck(nn.Module):
        def __init__(self, c: int, shortcut: bool, act: type):
            super().__init__()
            self.cv1, self.cv2, self.add = cba(c, c, 1, act=act), cba(c, c, 3, act=act), shortcut

        def forward(self, x):
            y = self.cv2(self.cv1(x))
            return x + y if self.add else y

    class CSP(nn.Module):
        def __init__(self, c1: int, c2: int, n: int, shortcut: bool, act: type):
            super().__init__()
            h = c2 // 2
            self.cv1, self.cv2, self.cv3 = cba(c1, h, 1, act=act), cba(c1, h, 1, act=act), cba(2 * h, c2, 1, act=act)
            self.m = nn.Sequential(*[Bottleneck(h, shortcut, act) for _ in range(n)])

        def forward(self, x):
            return self.cv3(torch.cat([self.m(self.cv1(x)), self.cv2(x)], 1))

    class SPP(nn.Module):
        def __init__(self, c1: int, c2: int, ks: tuple, chained: bool, act: type):
            super().__init__()
            h = c1 // 2
            self.cv1, self.cv2 = cba(c1, h, 1, act=act), cba(h * (len(ks) + 1), c2, 1, act=act)
            self.pools = nn.ModuleList(nn.MaxPool2d(k, 1, k // 2) for k in ks)
            self.chained = chained  # SPPF (YOLOv5) pools the previous pool's output

        def forward(self, x):
            ys = [self.cv1(x)]
            for p in self.pools:
                ys.append(p(ys[-1] if self.chained else ys[0]))
            return self.cv2(torch.cat(ys, 1))

    class PAN(nn.Module):
        """YOLOv5/YOLOX neck: top-down then bottom-up over (P3, P4, P5) of widths (128, 256, 512)."""

        def __init__(self, act: type):
            super().__init__()
            self.lat0, self.c3_p4 = cba(512, 256, 1, act=act), CSP(512, 256, 1, False, act)
            self.red1, self.c3_p3 = cba(256, 128, 1, act=act), CSP(256, 128, 1, False, act)
            self.bu2, self.c3_n3 = cba(128, 128, 3, 2, act), CSP(256, 256, 1, False, act)
            self.bu1, self.c3_n4 = cba(256, 256, 3, 2, act), CSP(512, 512, 1, False, act)
            self.up = nn.Upsample(scale_factor=2, mode="nearest")

        def forward(self, p3, p4, p5):
            f0 = self.lat0(p5)
            f1 = self.red1(self.c3_p4(torch.cat([self.up(f0), p4], 1)))
            o2 = self.c3_p3(torch.cat([self.up(f1), p3], 1))
            o1 = self.c3_n3(torch.cat([self.bu2(o2), f1], 1))
            o0 = self.c3_n4(torch.cat([self.bu1(o1), f0], 1))
            return o2, o1, o0

    class Backbone(nn.Module):
        def __init__(self, act: type, focus: bool, n: tuple, sppf: bool):
            super().__init__()
            self.focus = focus
            self.stem = cba(12, 32, 3, act=act) if focus else cba(3, 32, 6, 2, act)
            self.stem[0].padding = (1, 1) if focus else (2, 2)
            last_shortcut = not focus  # YOLOX's dark5 CSP has no shortcut, YOLOv5's has
            self.d2 = nn.Sequential(cba(32, 64, 3, 2, act), CSP(64, 64, n[0], True, act))
            self.d3 = nn.Sequential(cba(64, 128, 3, 2, act), CSP(128, 128, n[1], True, act))
            self.d4 = nn.Sequential(cba(128, 256, 3, 2, act), CSP(256, 256, n[2], True, act))
            spp = SPP(512, 512, (5, 5, 5) if sppf else (5, 9, 13), sppf, act)
            d5 = [cba(256, 512, 3, 2, act)]
            d5 += [CSP(512, 512, n[3], last_shortcut, act), spp] if sppf else [spp, CSP(512, 512, n[3], False, act)]
            self.d5 = nn.Sequential(*d5)

        def forward(self, x):
            if self.focus:
                x = torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1)
            p3 = self.d3(self.d2(self.stem(x)))
            p4 = self.d4(p3)
            return p3, p4, self.d5(p4)

    class YoloV5s(nn.Module):
        def __init__(self, act: type = nn.ReLU):
            super().__init__()
            self.backbone, self.neck = Backbone(act, False, (1, 2, 3, 1), True), PAN(act)
            self.heads = nn.ModuleList(nn.Conv2d(c, 255, 1) for c in (128, 256, 512))

        def forward(self, x):
            return tuple(h(f) for h, f in zip(self.heads, self.neck(*self.backbone(x))))

    class YoloXHead(nn.Module):
        def __init__(self, c: int, act: type, nc: int = 80, hid: int = 128):
            super().__init__()
            self.stem = cba(c, hid, 1, act=act)
            self.cls = nn.Sequential(cba(hid, hid, 3, act=act), cba(hid, hid, 3, act=act))
            self.reg = nn.Sequential(cba(hid, hid, 3, act=act), cba(hid, hid, 3, act=act))
            self.cls_pred, self.reg_pred, self.obj_pred = nn.Conv2d(hid, nc, 1), nn.Conv2d(hid, 4, 1), \
                nn.Conv2d(hid, 1, 1)

        def forward(self, x):
            x = self.stem(x)
            r = self.reg(x)
            # rknn_model_zoo layout: [1, 85, h, w] with sigmoid inside
            return torch.cat([self.reg_pred(r), self.obj_pred(r).sigmoid(), self.cls_pred(self.cls(x)).sigmoid()], 1)

    class YoloXs(nn.Module):
        def __init__(self, act: type = nn.SiLU):
            super().__init__()
            self.backbone, self.neck = Backbone(act, True, (1, 3, 3, 1), False), PAN(act)
            self.heads = nn.ModuleList(YoloXHead(c, act) for c in (128, 256, 512))

        def forward(self, x):
            return tuple(h(f) for h, f in zip(self.heads, self.neck(*self.backbone(x))))

    return {
        "mobilenetv2@224": (mobilenetv2, 224),
        "resnet50-v2@224": (resnet50_v2, 224),
        "yolov5s_relu@640": (YoloV5s, 640),
        "yolov5s@640": (lambda: YoloV5s(nn.SiLU), 640),
        "yolox_s@640": (YoloXs, 640),
    }


def build_onnx(name: str, cache_dir: str | None = None) -> onnx.ModelProto:
    """Export one architecture to ONNX (random weights, eval mode so BN folds into the convs)."""
    if cache_dir:
        path = Path(cache_dir) / f"{name.replace('@', '_')}.onnx"
        if path.exists():
            return onnx.load(str(path))
    import torch

    torch.manual_seed(0)
    factory, size = _torch_models()[name]
    net = factory().eval()
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(net, (torch.zeros(1, 3, size, size),), buf, opset_version=17, dynamo=False,
                          input_names=["images"], do_constant_folding=True)
    model = onnx.load_from_string(buf.getvalue())
    if cache_dir:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, path)
    return model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache-dir", default=None, help="keep the exported ONNX files here between runs")
    ap.add_argument("--chips", default="rk1808,rk3588", help="comma-separated chips (default: rk1808,rk3588)")
    args = ap.parse_args(argv)
    import torch
    from openrknn.progress import progress_bar as tqdm  # drawn on a terminal only

    from openrknn.targets import generation

    torch.set_num_threads(1)
    chips = [c.strip() for c in args.chips.split(",") if c.strip()]
    rows, ratios = [], []
    for name in tqdm(PUBLISHED, desc="export + estimate", leave=False):
        t0 = time.perf_counter()
        model = build_onnx(name, args.cache_dir)
        t_build = time.perf_counter() - t0
        for c in chips:
            t1 = time.perf_counter()
            est = estimate_perf(model, c, INT8[generation(c)])
            pub = PUBLISHED[name].get(c)
            ratio = est.fps / pub if pub else float("nan")
            if pub:
                ratios.append(ratio)
            rows.append((name, c, est.macs / 1e9, est.total_us / 1e3, est.fps, pub, ratio,
                         time.perf_counter() - t1, t_build))
    print(f"{'model':<18} {'chip':<7} {'GMAC':>6} {'est ms':>8} {'est FPS':>8} {'published':>9} {'ratio':>6}  "
          f"{'in range':<8} {'est s':>5}")
    for name, c, gmac, ms, fps, pub, ratio, t_est, _ in rows:
        ok = "yes" if 0.75 <= ratio <= 1.33 else "NO"
        print(f"{name:<18} {c:<7} {gmac:>6.2f} {ms:>8.2f} {fps:>8.1f} {pub or float('nan'):>9.1f} {ratio:>6.2f}  "
              f"{ok:<8} {t_est:>5.2f}")
    inside = sum(0.75 <= r <= 1.33 for r in ratios)
    print(f"{inside}/{len(ratios)} ratios within 0.75-1.33; worst {min(ratios):.2f} / {max(ratios):.2f}")
    _time_eval_perf_yolox_nano()
    return 0


def _time_eval_perf_yolox_nano() -> None:
    """Wall time of a full eval_perf (estimate + host profile, perf_debug table) on the shared YOLOX-nano."""
    import numpy as np

    from openrknn.analysis.perf import eval_perf_report

    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "models" / "yolox_nano_coco.onnx"
    if not path.exists():
        print(f"eval_perf(yolox_nano): skipped, {path} not found")
        return
    model = onnx.load(str(path))
    feeds = {"images": np.random.default_rng(0).random((1, 3, 416, 416), np.float32) * 255}
    t0 = time.perf_counter()
    r = eval_perf_report(model, None, "rk1808", "asymmetric_quantized-u8", feeds, perf_debug=True, is_print=False,
                         threads=1)
    wall = time.perf_counter() - t0
    print(f"eval_perf(yolox_nano @416, rk1808, perf_debug, {r['host_measured']['runs']} host runs, 1 thread): "
          f"{wall:.2f} s wall (target < 2 s); NPU estimate {r['npu_estimate']['fps']:.1f} FPS, "
          f"host {r['host_measured']['fps']:.1f} FPS")


if __name__ == "__main__":
    raise SystemExit(main())
