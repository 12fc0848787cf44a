"""Quantization accuracy and build speed on real models: openrknn.quant vs onnxruntime quantize_static.

Split (../shared/data/README.md): YOLOX-nano calibrates on the even-numbered COCO images (sorted order, 0-based
positions 0, 2, ...) and is evaluated on the odd ones plus misc/*.jpg; MobileNetV2 calibrates on the first 20 ImageNet
images (sorted) and is evaluated on the other 20. The float model's own outputs are the reference: YOLOX detections at
score >= 0.3 (class-agnostic NMS at IoU 0.45, top-left letterbox pad 114: 118 float detections, as in the
README) matched by class and IoU >= 0.5 ("kept" = share of float detections found again), mAP@0.5 with the float
detections as ground truth, MobileNetV2 top-1 / top-5 agreement, and the cosine of the raw outputs.
The build-speed section calibrates YOLOX-nano on 100 samples: the 15 calibration images cycled
(batch_size=100, epochs=1), each build in its own process so its peak RSS is measured alone.
"est. NPU ms": the cost model's NPU time (openrknn.analysis.perf) of our rows on their target: rk1808 for the RKNPU1
dtypes, rk3588 (one core) for the others.

Usage: python bench/quant_accuracy.py [--models yolox,mobilenet] [--no-ort] [--no-speed] [--only SUBSTR]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

import cv2
import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))

from openrknn.quant import QuantOptions, quantize  # noqa: E402
from openrknn.quant.dataset import InputSpec, read_dataset  # noqa: E402
from openrknn.targets import QUANTIZED_DTYPES  # noqa: E402

YOLOX_SIZE = 416
CLOSE_MARGIN = 0.05  # softmax probability gap between the float model's top-1 and top-2 classes
MNV2_SIZE = 224
IMAGENET_MEAN = [123.675, 116.28, 103.53]
IMAGENET_STD = [58.395, 57.12, 57.375]


# ---------------------------------------------------------------------------------------------------------------
# The float model as the facade's build() will hand it over: NHWC float32 raw-pixel input, pre-processing inside.
# This is the ONE place to swap for openrknn's own build() once it exists.
# ---------------------------------------------------------------------------------------------------------------
def _prepend_preprocess(model: onnx.ModelProto, input_name: str, hw: Tuple[int, int], mean, std) -> onnx.ModelProto:
    from onnx import helper, numpy_helper

    g = model.graph
    old = next(i for i in g.input if i.name == input_name)
    raw = "raw_" + input_name
    nodes = [helper.make_node("Transpose", [raw], ["pp_nchw"], perm=[0, 3, 1, 2], name="pp_transpose"),
             helper.make_node("Sub", ["pp_nchw", "pp_mean"], ["pp_centered"], name="pp_sub_mean"),
             helper.make_node("Mul", ["pp_centered", "pp_inv_std"], [input_name], name="pp_mul_inv_std")]
    g.initializer.extend([
        numpy_helper.from_array(np.asarray(mean, np.float32).reshape(1, 3, 1, 1), "pp_mean"),
        numpy_helper.from_array((1.0 / np.asarray(std, np.float32)).reshape(1, 3, 1, 1), "pp_inv_std")])
    for n in reversed(nodes):
        g.node.insert(0, n)
    g.input.remove(old)
    g.input.insert(0, helper.make_tensor_value_info(raw, onnx.TensorProto.FLOAT, [1, hw[0], hw[1], 3]))
    return model


def float_model(name: str, via_api: bool = False) -> Tuple[onnx.ModelProto, List[InputSpec]]:
    """'yolox' or 'mobilenet' as an opset-17 float model with NHWC 0..255 input and pre-processing inside.
    via_api=True takes it from openrknn's own RKNN.build(do_quantization=False) instead of the hand wrapping."""
    from onnx import version_converter

    if via_api:
        return _float_model_via_api(name)
    if name == "yolox":
        m = onnx.load(str(DATA / "models" / "yolox_nano_coco.onnx"))
        m = version_converter.convert_version(m, 17)
        m = _prepend_preprocess(m, "images", (YOLOX_SIZE, YOLOX_SIZE), [0, 0, 0], [1, 1, 1])
        return m, [InputSpec("raw_images", (1, YOLOX_SIZE, YOLOX_SIZE, 3))]
    if name == "mobilenet":
        import torch

        ts = torch.jit.load(str(DATA / "models" / "mobilenet_v2_imagenet.pt"), map_location="cpu")
        buf = io.BytesIO()
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(ts, torch.zeros(1, 3, MNV2_SIZE, MNV2_SIZE), buf, dynamo=False, opset_version=17,
                              input_names=["input"], output_names=["logits"])
        m = onnx.load_from_string(buf.getvalue())
        m = _prepend_preprocess(m, "input", (MNV2_SIZE, MNV2_SIZE), IMAGENET_MEAN, IMAGENET_STD)
        return m, [InputSpec("raw_input", (1, MNV2_SIZE, MNV2_SIZE, 3))]
    raise ValueError(name)


def _float_model_via_api(name: str) -> Tuple[onnx.ModelProto, List[InputSpec]]:
    from openrknn.api import RKNN

    rknn = RKNN()
    if name == "yolox":
        rknn.config(mean_values=[[0, 0, 0]], std_values=[[1, 1, 1]], reorder_channel="0 1 2")
        rc = rknn.load_onnx(str(DATA / "models" / "yolox_nano_coco.onnx"))
    else:
        rknn.config(mean_values=[IMAGENET_MEAN], std_values=[IMAGENET_STD], reorder_channel="0 1 2")
        rc = rknn.load_pytorch(str(DATA / "models" / "mobilenet_v2_imagenet.pt"), [[1, 3, MNV2_SIZE, MNV2_SIZE]])
    if rc != 0 or rknn.build(do_quantization=False) != 0:
        raise RuntimeError(f"openrknn could not load/build {name}")
    model = rknn._build.float_model
    inp = model.graph.input[0]
    return model, [InputSpec(inp.name, tuple(d.dim_value for d in inp.type.tensor_type.shape.dim))]


# ---------------------------------------------------------------------------------------------------------------
# Images -> model inputs (what the deployed app does), and the split.
# ---------------------------------------------------------------------------------------------------------------
def letterbox(img: np.ndarray, size: int, pad: int = 114) -> Tuple[np.ndarray, float]:
    """Top-left letterbox (official YOLOX export): resize keeping aspect, pad right/bottom."""
    r = min(size / img.shape[0], size / img.shape[1])
    nh, nw = int(img.shape[0] * r), int(img.shape[1] * r)
    out = np.full((size, size, 3), pad, np.uint8)
    out[:nh, :nw] = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return out, r


def center_crop(img_bgr: np.ndarray, size: int = MNV2_SIZE, short: int = 256) -> np.ndarray:
    h, w = img_bgr.shape[:2]
    r = short / min(h, w)
    img = cv2.resize(img_bgr, (max(short, int(round(w * r))), max(short, int(round(h * r)))),
                     interpolation=cv2.INTER_LINEAR)
    y, x = (img.shape[0] - size) // 2, (img.shape[1] - size) // 2
    return img[y:y + size, x:x + size]


def split(name: str) -> Tuple[List[Path], List[Path]]:
    if name == "yolox":
        coco = sorted((DATA / "images" / "coco").glob("*.jpg"))
        return coco[0::2], coco[1::2] + sorted((DATA / "images" / "misc").glob("*.jpg"))
    imgs = sorted((DATA / "images" / "imagenet").glob("*.JPEG"))
    return imgs[:20], imgs[20:40]


def model_input(name: str, path: Path) -> Tuple[np.ndarray, float]:
    """Deployed input: NHWC float32 0..255 (YOLOX: BGR letterbox; MobileNetV2: RGB centre crop)."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if name == "yolox":
        lb, r = letterbox(img, YOLOX_SIZE)
        return lb[None].astype(np.float32), r
    return cv2.cvtColor(center_crop(img), cv2.COLOR_BGR2RGB)[None].astype(np.float32), 1.0


def write_dataset(name: str, paths: List[Path], folder: Path) -> Tuple[Path, bool]:
    """Pre-processed calibration images as PNG + dataset.txt; returns (file, rgb2bgr flag for read_dataset)."""
    lines = []
    for p in paths:
        x, _ = model_input(name, p)
        img = x[0].astype(np.uint8)
        if name != "yolox":
            img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)  # PNG holds BGR as cv2 writes it; the reader converts back
        out = folder / (p.stem + ".png")
        cv2.imwrite(str(out), img)
        lines.append(out.name)
    ds = folder / "dataset.txt"
    ds.write_text("\n".join(lines) + "\n")
    return ds, name == "yolox"  # YOLOX is BGR: keep OpenCV's order (quant_img_RGB2BGR=True)


# ---------------------------------------------------------------------------------------------------------------
# YOLOX decode / NMS / matching (bench-local on purpose: the product's vision code is someone else's).
# ---------------------------------------------------------------------------------------------------------------
def _grids(size: int, strides=(8, 16, 32)) -> Tuple[np.ndarray, np.ndarray]:
    gs, ss = [], []
    for s in strides:
        n = size // s
        yv, xv = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        gs.append(np.stack([xv, yv], -1).reshape(-1, 2))
        ss.append(np.full((n * n, 1), s))
    return np.concatenate(gs).astype(np.float32), np.concatenate(ss).astype(np.float32)


GRID, STRIDE = _grids(YOLOX_SIZE)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(br - tl, 0, None), axis=2)
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], axis=1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter + 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, thr: float = 0.45) -> np.ndarray:
    """Class-agnostic greedy NMS (the README's reference count of 118 float detections uses it)."""
    order = np.argsort(-scores)
    boxes = boxes[order]
    keep = np.ones(len(order), bool)
    ious = iou(boxes, boxes)
    for i in range(len(order)):
        if keep[i]:
            keep[i + 1:] &= ious[i, i + 1:] <= thr
    return order[keep]


def decode_yolox(out: np.ndarray, ratio: float, conf: float) -> np.ndarray:
    """[N, 6] rows x1, y1, x2, y2, score, class in original-image pixels."""
    p = out.reshape(-1, 85)
    xy = (p[:, :2] + GRID) * STRIDE
    wh = np.exp(np.minimum(p[:, 2:4], 20)) * STRIDE
    cls = p[:, 5:].argmax(1)
    score = p[:, 4] * p[np.arange(len(p)), 5 + cls]
    m = score >= conf
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], 1)[m] / ratio
    score, cls = score[m], cls[m]
    k = nms(boxes, score)
    return np.concatenate([boxes[k], score[k, None], cls[k, None].astype(np.float32)], 1)


def match(gt: np.ndarray, det: np.ndarray, thr: float = 0.5) -> np.ndarray:
    """Greedy by score: for each detection, whether it matches a still-unmatched gt of its class."""
    tp = np.zeros(len(det), bool)
    if len(gt) == 0 or len(det) == 0:
        return tp
    used = np.zeros(len(gt), bool)
    ious = iou(det[:, :4], gt[:, :4])
    for i in np.argsort(-det[:, 4]):
        cand = np.where((gt[:, 5] == det[i, 5]) & ~used & (ious[i] >= thr))[0]
        if len(cand):
            j = cand[np.argmax(ious[i, cand])]
            used[j] = tp[i] = True
    return tp


def map50(gts: List[np.ndarray], dets: List[np.ndarray]) -> float:
    aps = []
    for c in np.unique(np.concatenate([g[:, 5] for g in gts if len(g)] or [np.zeros(0)])):
        n_gt = sum(int((g[:, 5] == c).sum()) for g in gts)
        rows = []
        for g, d in zip(gts, dets):
            dc = d[d[:, 5] == c]
            tp = match(g[g[:, 5] == c], dc)
            rows += list(zip(dc[:, 4], tp))
        if not rows:
            aps.append(0.0)
            continue
        rows.sort(key=lambda r: -r[0])
        tp = np.cumsum([r[1] for r in rows])
        prec, rec = tp / np.arange(1, len(rows) + 1), tp / n_gt
        mprec = np.maximum.accumulate(np.concatenate([prec, [0]])[::-1])[::-1]
        rec = np.concatenate([[0], rec])
        aps.append(float(np.sum((rec[1:] - rec[:-1]) * mprec[:-1])))
    return float(np.mean(aps)) if aps else 0.0


# ---------------------------------------------------------------------------------------------------------------
# Evaluation of one model against the float reference.
# ---------------------------------------------------------------------------------------------------------------
def session(model: onnx.ModelProto, threads: int = 2):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


class Reference:
    """Float outputs and eval inputs of one model, computed once."""

    def __init__(self, name: str, model: onnx.ModelProto):
        self.name = name
        _, evals = split(name)
        self.inputs = [model_input(name, p) for p in evals]
        s = session(model)
        self.in_name = s.get_inputs()[0].name
        self.outputs = [s.run(None, {self.in_name: x})[0] for x, _ in self.inputs]
        if name == "yolox":
            self.gts = [decode_yolox(o, r, 0.3) for o, (_, r) in zip(self.outputs, self.inputs)]
        else:
            # images whose float top-1 and top-2 softmax probabilities are within CLOSE_MARGIN: a coin flip for any
            # 8-bit model, so agreement is also reported without them
            probs = [np.exp(o.ravel() - o.max()) / np.exp(o.ravel() - o.max()).sum() for o in self.outputs]
            self.margins = [float(np.diff(np.sort(p)[-2:])[0]) for p in probs]

    def evaluate(self, model: onnx.ModelProto) -> Dict[str, float]:
        s = session(model)
        in_name = s.get_inputs()[0].name
        outs = [s.run(None, {in_name: x})[0] for x, _ in self.inputs]
        cos = float(np.mean([np.dot(a.ravel(), b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12)
                             for a, b in zip(self.outputs, outs)]))
        t = time.perf_counter()
        for _ in range(3):
            s.run(None, {in_name: self.inputs[0][0]})
        ms = (time.perf_counter() - t) / 3 * 1000
        res = {"cosine": cos, "infer_ms": ms}
        if self.name == "yolox":
            dets = [decode_yolox(o, r, 0.3) for o, (_, r) in zip(outs, self.inputs)]
            low = [decode_yolox(o, r, 0.05) for o, (_, r) in zip(outs, self.inputs)]
            n_gt = sum(len(g) for g in self.gts)
            tp_gt = sum(int(match(d, g).sum()) for g, d in zip(self.gts, dets))  # gts found again
            n_det = sum(len(d) for d in dets)
            tp_det = sum(int(match(g, d).sum()) for g, d in zip(self.gts, dets))
            res.update(kept=tp_gt / max(n_gt, 1), precision=tp_det / max(n_det, 1), map50=map50(self.gts, low),
                       n_gt=n_gt)
        else:
            top1 = sum(int(np.argmax(a) == np.argmax(b)) for a, b in zip(self.outputs, outs))
            top5 = sum(int(np.argmax(a) in np.argsort(-b.ravel())[:5]) for a, b in zip(self.outputs, outs))
            clear = [i for i, m in enumerate(self.margins) if m >= CLOSE_MARGIN]
            top1_clear = sum(int(np.argmax(self.outputs[i]) == np.argmax(outs[i])) for i in clear)
            res.update(top1=top1, top5=top5, n=len(outs), top1_clear=top1_clear, n_clear=len(clear))
        return res


# ---------------------------------------------------------------------------------------------------------------
# Builders: ours and onnxruntime's. Each runs in a child process (fresh peak RSS).
# ---------------------------------------------------------------------------------------------------------------
OUR_ROWS = [  # (dtype, algorithm, method, extra QuantOptions fields)
    ("asymmetric_quantized-u8", "normal", "layer", {}),
    ("asymmetric_quantized-u8", "kl_divergence", "layer", {}),
    ("asymmetric_quantized-u8", "mmse", "layer", {}),
    ("asymmetric_quantized-u8", "normal", "channel", {}),
    ("dynamic_fixed_point-i8", "normal", "layer", {}),
    ("dynamic_fixed_point-i16", "normal", "layer", {}),
    ("w8a8", "normal", "channel", {}),
    ("w8a8", "kl_divergence", "channel", {}),
    ("w8a8", "mmse", "channel", {}),
    ("w8a8", "normal", "layer", {}),
    ("w8a8", "normal", "channel", {"range_split": False, "bias_correction": False}),
    ("dynamic_fixed_point-i8", "normal", "layer", {"pow2_fit": False}),
    # range split's part remap (default on) left out: what it buys, and its estimated NPU time
    ("asymmetric_quantized-u8", "normal", "layer", {"range_remap": False}),
    ("w8a8", "normal", "channel", {"range_remap": False}),
    ("w8a8", "kl_divergence", "channel", {"range_remap": False}),
    # layer-wise weight rounding: every row above uses GPTQ (the default); the rows below show round-to-nearest,
    # and the slower learned rounding (adaround) GPTQ replaced
    ("asymmetric_quantized-u8", "normal", "layer", {"weight_rounding": "nearest"}),
    ("asymmetric_quantized-u8", "mmse", "layer", {"weight_rounding": "nearest"}),
    ("w8a8", "normal", "channel", {"weight_rounding": "nearest"}),
    ("w8a8", "kl_divergence", "channel", {"weight_rounding": "nearest"}),
    ("w8a8", "mmse", "channel", {"weight_rounding": "nearest"}),
    ("asymmetric_quantized-u8", "mmse", "layer", {"weight_rounding": "adaround"}),
    ("w8a8", "mmse", "channel", {"weight_rounding": "adaround"}),
    # output-aware range search (opt-in)
    ("w8a8", "normal", "channel", {"range_search": True}),
    ("w8a8", "kl_divergence", "channel", {"range_search": True}),
    ("w8a16", "normal", "channel", {}),
    ("w16a16i", "normal", "channel", {}),
    ("float16", "normal", "layer", {}),
]
# One tensor in 16 bits (hybrid quantization's custom_quantize_layers): before the part remap, YOLOX-nano's first
# depthwise conv output carried most of its w8a8 error (see README); this row shows what that one edit still buys.
MODEL_ROWS = {"yolox": [("w8a8", a, "channel", {"overrides": {"input.15": "int16"}})
                        for a in ("normal", "kl_divergence")]}
ORT_ROWS = [(m, pc) for pc in (False, True) for m in ("MinMax", "Entropy", "Percentile")]


def _peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: on Linux ru_maxrss survives exec and would report the
    bench parent's size at fork time."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def build_child(spec: dict) -> dict:
    """Run in a fresh process: build one quantized model, save it, report seconds and peak RSS."""
    name, out_path = spec["model"], spec["out"]
    model, inputs = float_model(name, spec.get("via_api", False))
    import onnxruntime  # noqa: F401  (import cost is not build time)

    base_rss = _peak_rss_mb()
    cpu0 = time.process_time()
    if spec["kind"] == "ours":
        t = time.perf_counter()
        data = read_dataset(spec["dataset"], inputs, rgb2bgr=spec["rgb2bgr"], batch_size=spec.get("batch", 100),
                            epochs=spec.get("epochs", -1))
        target = "rk1808" if spec["dtype"] in QUANTIZED_DTYPES["rknpu1"] else "rk3588"
        opts = QuantOptions(dtype=spec["dtype"], algorithm=spec["algorithm"], method=spec["method"], target=target,
                            **spec.get("extra", {}))
        res = quantize(model, data, opts, progress=False)
        secs = time.perf_counter() - t
        onnx.save(res.model, out_path)
        from openrknn.analysis.perf import estimate_perf

        npu_ms = estimate_perf(res.model, target, spec["dtype"]).total_us / 1000.0
        return {"seconds": secs, "cpu_s": time.process_time() - cpu0, "peak_rss_mb": _peak_rss_mb(),
                "base_rss_mb": base_rss, "samples": len(data), "npu_ms": npu_ms, "target": target,
                "report": {k: res.report[k] for k in ("stages", "plan") if k in res.report}}
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, \
        quantize_static

    feeds = [{inputs[0].name: model_input(name, p)[0]} for p in split(name)[0]]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as tmp:
        fpath = os.path.join(tmp, "float.onnx")
        onnx.save(model, fpath)
        t = time.perf_counter()
        quantize_static(fpath, out_path, Reader(), quant_format=QuantFormat.QDQ, per_channel=spec["per_channel"],
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=getattr(CalibrationMethod, spec["method"]))
        secs = time.perf_counter() - t
    return {"seconds": secs, "peak_rss_mb": _peak_rss_mb(), "base_rss_mb": base_rss, "samples": len(feeds)}


def run_child(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fmt_row(cols: List[str], widths: List[int]) -> str:
    return " | ".join(c.ljust(w) for c, w in zip(cols, widths))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="yolox,mobilenet")
    ap.add_argument("--no-ort", action="store_true")
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--only", default="", help="run only our rows whose label contains this")
    ap.add_argument("--extra", default="{}", help="JSON of extra QuantOptions fields for our rows")
    ap.add_argument("--via-api", action="store_true", help="float models from openrknn's RKNN.build()")
    ap.add_argument("--child", default="")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(build_child(json.loads(args.child))))
        return
    if not DATA.is_dir():
        sys.exit(f"no data folder at {DATA}")
    tmp = Path(tempfile.mkdtemp(prefix="quant_bench_"))
    header = ["model", "builder", "dtype / method", "algorithm", "kept / top1", "mAP50 / top5", "cosine",
              "build s", "peak RSS MB", "infer ms", "est. NPU ms"]
    widths = [9, 11, 33, 13, 14, 12, 7, 7, 11, 8, 16]
    print(fmt_row(header, widths))
    print("-+-".join("-" * w for w in widths))
    for name in args.models.split(","):
        model, _ = float_model(name, args.via_api)
        ref = Reference(name, model)
        folder = tmp / name
        folder.mkdir()
        ds, rgb2bgr = write_dataset(name, split(name)[0], folder)
        specs = [dict(kind="ours", model=name, dataset=str(ds), rgb2bgr=rgb2bgr, dtype=d, algorithm=a, method=m,
                      extra={**x, **json.loads(args.extra)}) for d, a, m, x in OUR_ROWS + MODEL_ROWS.get(name, [])
                 if args.only in f"{d} {a} {m}"]
        if not args.no_ort:
            specs += [dict(kind="ort", model=name, method=m, per_channel=pc) for m, pc in ORT_ROWS]
        for spec in specs:
            spec["via_api"] = args.via_api
        for k, spec in enumerate(specs):
            spec["out"] = str(folder / f"q{k}.onnx")
            res = run_child(spec)
            if "error" in res:
                label = spec.get("dtype", "ort")
                print(fmt_row([name, spec["kind"], label, "", "ERROR", res["error"][:80]], widths))
                continue
            ev = ref.evaluate(onnx.load(spec["out"]))
            if name == "yolox":
                acc, acc2 = f"{ev['kept'] * 100:.1f}%", f"{ev['map50'] * 100:.1f}"
            else:
                acc = f"{ev['top1']}/{ev['n']} ({ev['top1_clear']}/{ev['n_clear']})"
                acc2 = f"{ev['top5']}/{ev['n']}"
            if spec["kind"] == "ours":
                builder, what, alg = "openrknn", f"{spec['dtype']} / {spec['method']}", spec["algorithm"]
                if spec["extra"]:
                    alg += " (" + ",".join(f"{k}={v}" for k, v in spec["extra"].items()) + ")"
            else:
                builder = "onnxruntime"
                what, alg = f"U8S8 / {'channel' if spec['per_channel'] else 'tensor'}", spec["method"]
            npu = f"{res['npu_ms']:.2f} ({res['target']})" if "npu_ms" in res else ""
            print(fmt_row([name, builder, what, alg, acc, acc2, f"{ev['cosine']:.4f}", f"{res['seconds']:.1f}",
                           f"{res['peak_rss_mb']:.0f}", f"{ev['infer_ms']:.1f}", npu], widths), flush=True)
        if name == "mobilenet":
            close = [f"{i} ({m:.3f})" for i, m in enumerate(ref.margins) if m < CLOSE_MARGIN]
            print(f"# mobilenet: top1 as all / (images whose float top-1 leads top-2 by >= {CLOSE_MARGIN} in "
                  f"probability); close calls: {', '.join(close) or 'none'}")
        if name == "yolox":
            print(f"# yolox: {ref.gts and sum(len(g) for g in ref.gts)} float detections (score >= 0.3) on "
                  f"{len(ref.inputs)} eval images; {len(split(name)[0])} calibration images")
    if not args.no_speed and "yolox" in args.models:
        print("\n# build speed, yolox_nano, 100 calibration samples = the 15 calibration images cycled "
              "(batch_size=100, epochs=1); each build in a fresh process")
        ds = tmp / "yolox" / "dataset.txt"
        # the default (GPTQ weight rounding) for each algorithm, and normal with round-to-nearest: what GPTQ costs
        for alg, extra in (("normal", {}), ("kl_divergence", {}), ("mmse", {}),
                           ("normal", {"weight_rounding": "nearest"})):
            for dtype, method in (("asymmetric_quantized-u8", "layer"), ("w8a8", "channel")):
                spec = dict(kind="ours", model="yolox", dataset=str(ds), rgb2bgr=True, dtype=dtype, algorithm=alg,
                            method=method, batch=100, epochs=1, out=str(tmp / "speed.onnx"), extra=extra)
                res = run_child(spec)
                label = alg + (" (nearest)" if extra else "")
                if "error" in res:
                    print(f"{dtype} {label}: ERROR {res['error']}")
                    continue
                print(f"{dtype:24s} {label:24s} samples {res['samples']:4d}  build {res['seconds']:5.2f} s "
                      f"(CPU {res['cpu_s']:5.2f} s, load avg {os.getloadavg()[0]:.1f})  "
                      f"peak RSS {res['peak_rss_mb']:.0f} MB (after imports + model load {res['base_rss_mb']:.0f})"
                      f"  stages {res['report'].get('stages')}", flush=True)


if __name__ == "__main__":
    main()
