"""eval_perf on the user's path against published board speeds, with held-out points.

Every published model (rknn_model_zoo, INT8, NPU time only, max clock; ../shared/FACTS.md) goes the way a user takes
it: `RKNN.config(mean/std, target_platform)` -> `load_onnx` (or `load_pytorch` for the real MobileNetV2) -> `build`
(int8, the default quantized_dtype of the chip's generation, a calibration set of real images) -> `init_runtime` ->
`eval_perf`; the package is also written with `export_rknn`, read back with `load_rknn` and estimated again. Beside
each user-path row: the direct estimate (`estimate_perf` on the exported float ONNX with the config's dtype), which
must agree within 5% when the build adds no ops. The published models were quantized by the vendor's toolkit, which
does not split tensors: the user rows build with config(range_split=False) so the graph is the one that was measured;
the "default" columns build with every default, where range split adds NPU ops on depthwise models (what they cost
on the chip is in bench/RESULTS.md). weight_rounding='nearest' in every build: GPTQ moves weight integers only
(same graph, same estimate) and takes most of a large model's build time.

One build per model and NPU generation: the quantizer reads the target platform only to check the dtype, so every
chip of a generation gets the same graph; the config's chip is estimated by `eval_perf`, the others by
`eval_perf(target=...)` on the same package (what `openrknn perf model.rknn --target CHIP` does).

The architectures are compact re-implementations with random weights (speed does not depend on the values; BN folds
into the convs); PP-OCRv4 det is the real model from the corpus (bench/corpus_fetch.py) when it is there.
Fitted points: the FACTS.md table minus the held-out ones; the per-chip cost parameters in targets/chips.py come from
`--fit` (a grid search on the direct estimates of the fitted points). Held out: yolov8n on every chip, resnet50-v2 on
RK3566, PP-OCRv4 det on RK3588, RV1106 yolov8n / yolov5s.

    python bench/perf_estimate.py [--cache-dir DIR] [--models a,b] [--calib 8] [--no-user] [--fit]

Target: every user-path ratio (estimated / published FPS) within 0.75-1.33; held-out error reported on its own.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import itertools
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CORPUS = Path(os.environ.get("OPENRKNN_CORPUS", "/work/cache/corpus")) / "models"
sys.path.insert(0, str(ROOT))

from openrknn.analysis.perf import estimate_perf  # noqa: E402
from openrknn.targets import generation  # noqa: E402

CHIPS = ("rk1808", "rv1109", "rv1126", "rk3566", "rk3562", "rk3588", "rk3576")
# FACTS.md "Published board speed" (frames per second; RK3588 = one core; the RK3566/68 column is rk3566 here)
PUBLISHED = {
    "mobilenetv2@224": dict(zip(CHIPS, (170.3, 212.9, 322.3, 180.7, 281.3, 450.7, 467.0))),
    "resnet50-v2@224": dict(zip(CHIPS, (37.1, 24.4, 36.2, 37.9, 54.9, 110.1, 99.0))),
    "yolov5s_relu@640": dict(zip(CHIPS, (37.2, 20.2, 29.2, 25.5, 33.2, 66.1, 65.0))),
    "yolov5s@640": dict(zip(CHIPS, (28.2, 13.6, 20.0, 19.3, 23.6, 48.4, 57.5))),
    "yolox_s@640": dict(zip(CHIPS, (23.0, 10.6, 15.7, 15.2, 18.3, 37.1, 41.5))),
    "yolov8n@640": dict(zip(CHIPS, (42.3, 24.0, 35.4, 34.0, 40.9, 73.5, 90.2))),
}
# rknn_model_zoo points outside FACTS.md's table (issue 22)
PUBLISHED["ppocrv4_det@480"] = {"rk3588": 50.7}
PUBLISHED["yolov8n@640"]["rv1106"] = 17.1
PUBLISHED["yolov5s@640"]["rv1106"] = 9.8
HELD_OUT = {(m, c) for m, c in itertools.product(["yolov8n@640"], CHIPS + ("rv1106",))} | {
    ("resnet50-v2@224", "rk3566"), ("ppocrv4_det@480", "rk3588"), ("yolov5s@640", "rv1106")}
INT8 = {"rknpu1": "asymmetric_quantized-u8", "rknpu2": "w8a8"}
# the pre-processing a user configures for each model family, and the images it calibrates on
IMAGENET = ([123.675, 116.28, 103.53], [58.395, 57.12, 57.375], "imagenet")
PIXELS_01 = ([0.0, 0.0, 0.0], [255.0, 255.0, 255.0], "coco")
PREPROCESS = {"mobilenetv2@224": IMAGENET, "resnet50-v2@224": IMAGENET, "ppocrv4_det@480": IMAGENET[:2] + ("text",)}
IN_RANGE = (0.75, 1.33)


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

    # --- YOLOv8n as rknn_model_zoo exports it: DFL and box decoding left to the CPU ------------------------------
    class C2f(nn.Module):
        def __init__(self, c1: int, c2: int, n: int, shortcut: bool):
            super().__init__()
            self.c = c2 // 2
            self.cv1, self.cv2 = cba(c1, 2 * self.c, 1, act=nn.SiLU), cba((2 + n) * self.c, c2, 1, act=nn.SiLU)
            self.m = nn.ModuleList(V8Bottleneck(self.c, shortcut) for _ in range(n))

        def forward(self, x):
            y = list(self.cv1(x).chunk(2, 1))
            y.extend(m(y[-1]) for m in self.m)
            return self.cv2(torch.cat(y, 1))

    class V8Bottleneck(nn.Module):
        def __init__(self, c: int, shortcut: bool):
            super().__init__()
            self.cv1, self.cv2, self.add = cba(c, c, 3, act=nn.SiLU), cba(c, c, 3, act=nn.SiLU), shortcut

        def forward(self, x):
            y = self.cv2(self.cv1(x))
            return x + y if self.add else y

    class YoloV8n(nn.Module):
        def __init__(self, nc: int = 80):
            super().__init__()
            s = nn.SiLU
            self.b1 = nn.Sequential(cba(3, 16, 3, 2, s), cba(16, 32, 3, 2, s), C2f(32, 32, 1, True),
                                    cba(32, 64, 3, 2, s), C2f(64, 64, 2, True))
            self.b2 = nn.Sequential(cba(64, 128, 3, 2, s), C2f(128, 128, 2, True))
            self.b3 = nn.Sequential(cba(128, 256, 3, 2, s), C2f(256, 256, 1, True), SPP(256, 256, (5, 5, 5), True, s))
            self.up = nn.Upsample(scale_factor=2, mode="nearest")
            self.n4, self.n3 = C2f(384, 128, 1, False), C2f(192, 64, 1, False)
            self.d3, self.m4 = cba(64, 64, 3, 2, s), C2f(192, 128, 1, False)
            self.d4, self.m5 = cba(128, 128, 3, 2, s), C2f(384, 256, 1, False)
            self.box = nn.ModuleList(nn.Sequential(cba(c, 64, 3, act=s), cba(64, 64, 3, act=s), nn.Conv2d(64, 64, 1))
                                     for c in (64, 128, 256))
            self.cls = nn.ModuleList(nn.Sequential(cba(c, 80, 3, act=s), cba(80, 80, 3, act=s), nn.Conv2d(80, nc, 1))
                                     for c in (64, 128, 256))

        def forward(self, x):
            p3 = self.b1(x)
            p4 = self.b2(p3)
            p5 = self.b3(p4)
            f4 = self.n4(torch.cat([self.up(p5), p4], 1))
            o3 = self.n3(torch.cat([self.up(f4), p3], 1))
            o4 = self.m4(torch.cat([self.d3(o3), f4], 1))
            o5 = self.m5(torch.cat([self.d4(o4), p5], 1))
            outs = []
            for box, cls, f in zip(self.box, self.cls, (o3, o4, o5)):
                score = cls(f).sigmoid()
                outs += [box(f), score, score.sum(1, keepdim=True).clamp(0, 1)]
            return tuple(outs)

    return {
        "yolov8n@640": (YoloV8n, 640),
        "mobilenetv2@224": (mobilenetv2, 224),
        "resnet50-v2@224": (resnet50_v2, 224),
        "yolov5s_relu@640": (YoloV5s, 640),
        "yolov5s@640": (lambda: YoloV5s(nn.SiLU), 640),
        "yolox_s@640": (YoloXs, 640),
    }


def build_onnx(name: str, cache_dir: str | None = None) -> Path:
    """The ONNX file of one model: a re-implemented architecture exported from torch (random weights, eval mode so
    BN folds into the convs), or the corpus's PP-OCRv4 det. Returns its path (cached in cache_dir)."""
    if name == "ppocrv4_det@480":
        path = CORPUS / "ppocr_v4_det.onnx"
        if not path.exists():
            raise FileNotFoundError(f"{path} (run bench/corpus_fetch.py)")
        return path
    folder = Path(cache_dir or tempfile.mkdtemp(prefix="openrknn_perf_"))
    path = folder / f"{name.replace('@', '_')}.onnx"
    if path.exists():
        return path
    import torch

    torch.manual_seed(0)
    factory, size = _torch_models()[name]
    net = factory().eval()
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(net, (torch.zeros(1, 3, size, size),), buf, opset_version=17, dynamo=False,
                          input_names=["images"], do_constant_folding=True)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)
    return path


def input_size(name: str) -> int:
    return int(name.split("@")[1])


def load_direct(path: Path, name: str, raw: bool = False) -> onnx.ModelProto:
    """The float ONNX as the direct estimate reads it: dynamic input dims fixed to the published input size, then
    the graph optimisation every load applies (optimization_level 2: constant folding, Conv+BN, spelled-out
    HardSwish as one op, constant per-channel Mul/Add folded into the convs). The chip's compiler does the same
    (rknn-toolkit2's build log of PP-OCRv4 det: replace_torch_hardswish2, fuse_mul_into_conv), so an estimate of
    the raw export costs layers no compiled model has. ``raw``: skip the optimisation (the column beside it)."""
    from openrknn.graph.optimize import optimize

    model = onnx.load(str(path))
    size = input_size(name)
    for d, v in zip(model.graph.input[0].type.tensor_type.shape.dim, (1, 3, size, size)):
        if not d.HasField("dim_value") or d.dim_value <= 0:
            d.Clear()
            d.dim_value = v
    return model if raw else onnx.shape_inference.infer_shapes(optimize(model, 2))


def dataset_file(folder: Path, kind: str, n: int) -> str:
    images = sorted((DATA / "images" / kind).glob("*.*"))[:n]
    if not images:
        raise FileNotFoundError(f"no calibration images in {DATA / 'images' / kind}")
    path = folder / f"dataset_{kind}.txt"
    path.write_text("\n".join(str(p) for p in images) + "\n")
    return str(path)


# ---------------------------------------------------------------------------------------------------------------------
# the user's path
@dataclasses.dataclass
class UserBuild:
    fps: dict            # chip -> eval_perf FPS on the built package
    rknn_fps: dict       # chip -> eval_perf FPS after export_rknn -> load_rknn
    npu_layers: int
    build_s: float


def user_path(load, name: str, chips: list, work: Path, calib: int, **extra_config) -> UserBuild:
    """config -> load -> build(int8, dataset) -> init_runtime -> eval_perf, then export/load_rknn -> eval_perf."""
    from openrknn.analysis.package_reports import eval_perf
    from openrknn.api import RKNN

    mean, std, kind = PREPROCESS.get(name, PIXELS_01)
    chip0 = chips[0]
    rk = RKNN()
    # weight_rounding='nearest': GPTQ only moves weight integers (same graph, same estimate) and takes most of a
    # build's time on the large models
    assert rk.config(mean_values=[mean], std_values=[std], target_platform=chip0, weight_rounding="nearest",
                     **extra_config) == 0
    assert load(rk) == 0, f"{name}: load failed"
    t0 = time.perf_counter()
    assert rk.build(do_quantization=True, dataset=dataset_file(work, kind, calib)) == 0, f"{name}: build failed"
    build_s = time.perf_counter() - t0
    assert rk.init_runtime() == 0
    report = rk.eval_perf(is_print=False, loop_cnt=1)
    fps = {chip0: report["npu_estimate"]["fps"]}
    pkg, sim = rk._package, rk._runtime
    for c in chips[1:]:
        fps[c] = eval_perf(pkg, sim, None, False, False, target=c, runs=1)["npu_estimate"]["fps"]
    rknn_path = work / f"{name.replace('@', '_')}.rknn"
    assert rk.export_rknn(str(rknn_path)) == 0
    rk.release()
    back = RKNN()
    assert back.load_rknn(str(rknn_path)) == 0 and back.init_runtime() == 0
    rknn_fps = {chip0: back.eval_perf(is_print=False, loop_cnt=1)["npu_estimate"]["fps"]}
    for c in chips[1:]:
        rknn_fps[c] = eval_perf(back._package, back._runtime, None, False, False, target=c, runs=1)[
            "npu_estimate"]["fps"]
    est = estimate_perf(onnx.load_from_string(back._package.model_bytes), chip0, INT8[generation(chip0)])
    back.release()
    return UserBuild(fps, rknn_fps, sum(r.unit == "NPU" for r in est.rows), build_s)


def _chips_of(name: str) -> list:
    return [c for c in CHIPS + ("rv1106",) if c in PUBLISHED[name]]


def _by_generation(chips: list) -> dict:
    out: dict = {}
    for c in chips:
        out.setdefault(generation(c), []).append(c)
    return out


def _err(ratio: float) -> float:
    return abs(math.log(ratio))


def _summary(label: str, ratios: list) -> str:
    if not ratios:
        return f"{label}: none"
    inside = sum(IN_RANGE[0] <= r <= IN_RANGE[1] for r in ratios)
    errs = sorted(_err(r) for r in ratios)
    return (f"{label}: {inside}/{len(ratios)} within {IN_RANGE[0]}-{IN_RANGE[1]}; worst {min(ratios):.2f} / "
            f"{max(ratios):.2f}; median |error| {100 * (math.exp(statistics.median(errs)) - 1):.0f}%, "
            f"worst {100 * (math.exp(errs[-1]) - 1):.0f}%")


def run_published(models: list, cache_dir: str | None, calib: int, user: bool) -> None:
    """The table against published speeds. 'user' builds with config(range_split=False): the vendor's quantizer,
    which made the published models, does not split tensors, so this is the same graph. 'default' is the build with
    every default (range split on): where the split adds NPU ops, it shows what they cost."""
    rows = []
    raw: dict = {}  # name -> chip -> FPS of the export as it is, before the load's graph optimisation
    with tempfile.TemporaryDirectory(prefix="openrknn_perf_") as tmp:
        work = Path(tmp)
        for name in models:
            try:
                path = build_onnx(name, cache_dir)
            except FileNotFoundError as e:
                print(f"{name}: skipped, {e}")
                continue
            direct_model = load_direct(path, name)
            chips = _chips_of(name)
            direct = {c: estimate_perf(direct_model, c, INT8[generation(c)]) for c in chips}
            raw_model = load_direct(path, name, raw=True)
            raw[name] = {c: estimate_perf(raw_model, c, INT8[generation(c)]).fps for c in chips}
            builds, defaults = {}, {}
            if user:
                size, inp = input_size(name), direct_model.graph.input[0].name

                def load(rk, p=path, i=inp, n=size):
                    return rk.load_onnx(str(p), inputs=[i], input_size_list=[[1, 3, n, n]])

                for gen, gchips in _by_generation(chips).items():
                    print(f"  building {name} for {gen} ({gchips[0]}) ...", flush=True)
                    defaults[gen] = user_path(load, name, gchips, work, calib)
                    same = defaults[gen].npu_layers == sum(r.unit == "NPU" for r in direct[gchips[0]].rows)
                    builds[gen] = defaults[gen] if same else user_path(load, name, gchips, work, calib,
                                                                       range_split=False)
            for c in chips:
                g = generation(c)
                rows.append((name, c, direct[c], builds.get(g), defaults.get(g), PUBLISHED[name][c],
                             (name, c) in HELD_OUT, sum(r.unit == "NPU" for r in direct[c].rows)))
    print(f"\n{'model':<17} {'chip':<7} {'GMAC':>5} {'direct':>7} {'user':>7} {'.rknn':>7} {'publ.':>6} {'ratio':>6} "
          f"{'user/dir':>8} {'ops':>4}  {'set':<8} {'in range':<8} {'default':>7} {'ratio':>6} {'ops':>4}")
    fitted, held, user_fit, user_held, agree, rknn_same = [], [], [], [], [], True
    for name, c, d, b, dflt, pub, is_held, dl in rows:
        (held if is_held else fitted).append(d.fps / pub)
        line = f"{name:<17} {c:<7} {d.macs / 1e9:5.2f} {d.fps:7.1f} "
        ratio = d.fps / pub
        if b is not None:
            ratio = b.fps[c] / pub
            (user_held if is_held else user_fit).append(ratio)
            agree.append(b.fps[c] / d.fps)
            rknn_same &= abs(b.rknn_fps[c] - b.fps[c]) < 1e-6 and abs(dflt.rknn_fps[c] - dflt.fps[c]) < 1e-6
            line += f"{b.fps[c]:7.1f} {b.rknn_fps[c]:7.1f} {pub:6.1f} {ratio:6.2f} {b.fps[c] / d.fps:8.3f} {dl:4d}  "
        else:
            line += f"{'-':>7} {'-':>7} {pub:6.1f} {ratio:6.2f} {'-':>8} {dl:4d}  "
        line += f"{'held out' if is_held else 'fitted':<8} {'yes' if IN_RANGE[0] <= ratio <= IN_RANGE[1] else 'NO':<8}"
        if dflt is not None:
            line += f" {dflt.fps[c]:7.1f} {dflt.fps[c] / pub:6.2f} {dflt.npu_layers:4d}"
        print(line)
    moved = [(n, c, raw[n][c], d.fps) for n, c, d, *_ in rows if abs(raw[n][c] / d.fps - 1) > 0.01]
    for n, c, r, d in moved:
        print(f"{n} {c}: the raw export (before the load's graph optimisation) is estimated at {r:.1f} FPS, "
              f"{d:.1f} after it ({r / PUBLISHED[n][c]:.2f} of published)")
    print("(FPS. direct: estimate_perf on the float ONNX after the load's graph optimisation; user: "
          "config(range_split=False) -> load_onnx -> build int8 -> eval_perf; .rknn: that package after "
          "export_rknn -> load_rknn -> eval_perf; ratio: user (or direct) / published; ops: NPU layers; default: "
          "the build with every default, range split on)")
    print(_summary("direct, fitted points", fitted))
    print(_summary("direct, held-out points", held))
    if user_fit or user_held:
        print(_summary("user path, fitted points", user_fit))
        print(_summary("user path, held-out points", user_held))
        print(f"user path / direct: {min(agree):.3f} .. {max(agree):.3f} (target: within 5%)")
        print(f".rknn read back gives the same estimate as the build: {'yes' if rknn_same else 'NO'}")


def run_real(calib: int) -> None:
    """The issue's path on the real models: the MobileNetV2 .pt and YOLOX-nano, default build and range_split off."""
    mb, yx = DATA / "models" / "mobilenet_v2_imagenet.pt", DATA / "models" / "yolox_nano_coco.onnx"
    if not mb.exists():
        print(f"real models: skipped, {mb} not found")
        return
    print("\nreal weights, the issue's path (load_pytorch / load_onnx -> build int8 -> eval_perf)")
    print(f"{'model':<22} {'chip':<7} {'config':<18} {'user FPS':>8} {'.rknn':>7} {'direct':>7} {'publ.':>6} "
          f"{'ratio':>6} {'NPU ops':>7} {'build s':>7}")
    with tempfile.TemporaryDirectory(prefix="openrknn_perf_") as tmp:
        work = Path(tmp)
        direct_mb = _mobilenet_onnx(mb)
        cases = [("mobilenetv2@224", lambda rk: rk.load_pytorch(str(mb), input_size_list=[[1, 3, 224, 224]]),
                  direct_mb, PUBLISHED["mobilenetv2@224"])]
        if yx.exists():
            cases.append(("yolox_nano@416", lambda rk: rk.load_onnx(str(yx)), onnx.load(str(yx)), {}))
        for name, load, direct, pub in cases:
            PREPROCESS.setdefault(name, PIXELS_01)
            if name.startswith("yolox"):
                PREPROCESS[name] = ([0.0, 0.0, 0.0], [1.0, 1.0, 1.0], "coco")
            for chip0 in ("rk1808", "rk3588"):
                for extra in ({}, {"range_split": False}):
                    b = user_path(load, name, [chip0], work, calib, **extra)
                    dfps = estimate_perf(direct, chip0, INT8[generation(chip0)]).fps
                    p = pub.get(chip0)
                    label = "default" if not extra else "range_split=False"
                    print(f"{name + ' (real)':<22} {chip0:<7} {label:<18} {b.fps[chip0]:8.1f} {b.rknn_fps[chip0]:7.1f} "
                          f"{dfps:7.1f} {p or float('nan'):6.1f} {b.fps[chip0] / p if p else float('nan'):6.2f} "
                          f"{b.npu_layers:7d} {b.build_s:7.1f}")


def _mobilenet_onnx(pt: Path) -> onnx.ModelProto:
    import torch

    m = torch.jit.load(str(pt)).eval()
    buf = io.BytesIO()
    torch.onnx.export(m, (torch.zeros(1, 3, 224, 224),), buf, dynamo=False, opset_version=17, input_names=["input"])
    return onnx.load_from_string(buf.getvalue())


# ---------------------------------------------------------------------------------------------------------------------
# fitting the per-chip cost parameters
def fit(models: list, cache_dir: str | None, chips: tuple = CHIPS) -> None:
    """Grid search, per chip, of the conv utilisation scale, the depthwise utilisation and the per-layer overhead
    (round values) minimising the worst |log(estimate / published)| over the chip's fitted points (ties: the sum of
    squares). Prints the CostModel lines for targets/chips.py."""
    from openrknn.analysis.graph_info import analyze
    from openrknn.targets.chips import GENERATIONS, chip

    graphs = {}
    for name in models:
        if name == "ppocrv4_det@480" or not any((name, c) not in HELD_OUT for c in PUBLISHED[name]):
            continue
        m = load_direct(build_onnx(name, cache_dir), name)
        graphs[name] = (m, {g: analyze(m, dt) for g, dt in INT8.items()})
    scales = [0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2, 1.4, 1.7, 2.0]
    dw = [0.5, 0.7, 1.0, 1.4, 2.0, 3.0]
    overheads = [1.0, 2.0, 3.0, 5.0, 7.0, 10.0, 15.0, 20.0, 30.0, 40.0]
    ddr = [0.4, 0.6, 0.8, 0.95]
    for c in chips:
        spec = chip(c)
        base = GENERATIONS[spec.generation].cost
        points = [(n, PUBLISHED[n][c]) for n in graphs if c in PUBLISHED[n] and (n, c) not in HELD_OUT]
        best = None
        for s, d, o, e in itertools.product(scales, dw, overheads, ddr):
            cm = dataclasses.replace(base, util_3x3=base.util_3x3 * s, util_1x1=base.util_1x1 * s,
                                     util_other=base.util_other * s, util_gemm=base.util_gemm * s,
                                     util_depthwise=base.util_depthwise * d, layer_overhead_us=o,
                                     ddr_efficiency=e)
            trial = dataclasses.replace(spec, cost_override=cm)
            errs = [math.log(estimate_perf(graphs[n][0], trial, INT8[spec.generation],
                                           info=graphs[n][1][spec.generation]).fps / p) for n, p in points]
            key = (round(max(abs(e) for e in errs), 4), sum(e * e for e in errs))
            if best is None or key < best[0]:
                best = (key, (s, d, o, e), errs)
        (worst, _), (s, d, o, e), errs = best
        each = ", ".join(f"{n.split('@')[0]} {math.exp(x):.2f}" for (n, _), x in zip(points, errs))
        print(f"{c}: util scale {s}, depthwise x{d}, overhead {o} us, DDR efficiency {e} -> worst |log ratio| "
              f"{worst:.3f} ({each})")
        print(f"    cost_override=_fitted('{spec.generation}', util_scale={s}, depthwise_scale={d}, "
              f"layer_overhead_us={o}, ddr_efficiency={e}),")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache-dir", default=None, help="keep the exported ONNX files here between runs")
    ap.add_argument("--models", default=",".join(PUBLISHED), help="comma-separated models (default: all)")
    ap.add_argument("--calib", type=int, default=8, help="calibration images per build (default 8)")
    ap.add_argument("--no-user", action="store_true", help="direct estimates only (no builds)")
    ap.add_argument("--no-real", action="store_true", help="skip the real MobileNetV2 / YOLOX-nano rows")
    ap.add_argument("--fit", action="store_true", help="fit the per-chip cost parameters and exit")
    ap.add_argument("--fit-chips", default=",".join(CHIPS), help="chips to fit (default: every published chip)")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in PUBLISHED]
    if unknown:
        ap.error(f"unknown models {unknown}; known: {', '.join(PUBLISHED)}")
    if args.fit:
        fit(models, args.cache_dir, tuple(c.strip() for c in args.fit_chips.split(",") if c.strip()))
        return 0
    t0 = time.perf_counter()
    run_published(models, args.cache_dir, args.calib, not args.no_user)
    if not args.no_user and not args.no_real:
        run_real(args.calib)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
