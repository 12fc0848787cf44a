"""The int8 TFLite export on real models: LiteRT against the float model and against openrknn's int8 simulator.

Builds YOLOX-nano (COCO) and MobileNetV2 w8a8 for rk3588 through the RKNN API on bench/quant_accuracy.py's split
(calibrate on one half, evaluate on the other), exports each with export_tflite, and runs the .tflite on the LiteRT
interpreter (CPU, its default XNNPACK kernels). Columns: YOLOX-nano share of the float detections kept (score >= 0.3,
matched by class and IoU >= 0.5) / MobileNetV2 top-1 agreement with the float model, for the simulator and for
LiteRT; the per-output cosine between LiteRT and the simulator (mean and worst image), and the same between the
simulator and its own graph with onnxruntime's fusions off (the model's sensitivity to float rounding order, the
floor under LiteRT's agreement); export time against the
build time measured in the same run; the Teflon placement (TFLite ops on the NPU / all) for per-channel weights.

Usage: python bench/tflite_export.py [--models yolox,mobilenet] [--method channel|layer]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import quant_accuracy as qa  # noqa: E402  (the split, inputs, decode and matching of the quantization bench)
from corpus_tflite import unfused_outputs  # noqa: E402  (the floor: the simulator's graph, onnxruntime fusions off)

from openrknn.api import RKNN  # noqa: E402
from openrknn.export.teflon_support import CONV_OPS, teflon_placement  # noqa: E402
from openrknn.export.tflite import export_tflite_bytes  # noqa: E402
from openrknn.export.tflite.trace import trace  # noqa: E402
from openrknn.export.tflite.validate import cosine  # noqa: E402
from openrknn.package import read_package  # noqa: E402
from openrknn.runtime.simulator import Simulator  # noqa: E402
from openrknn.runtime.tflite_runner import TfliteRunner  # noqa: E402


def build(name: str, folder: Path, method: str = "channel", points: str = "chip") -> tuple:
    ds, rgb2bgr = qa.write_dataset(name, qa.split(name)[0], folder)
    rknn = RKNN()
    pre = ([[0, 0, 0]], [[1, 1, 1]]) if name == "yolox" else ([qa.IMAGENET_MEAN], [qa.IMAGENET_STD])
    rknn.config(mean_values=pre[0], std_values=pre[1], reorder_channel="0 1 2", target_platform="rk3588",
                quantized_dtype="w8a8", quantized_method=method, quant_img_RGB2BGR=rgb2bgr,
                pre_activation_points=points)
    rc = rknn.load_onnx(str(qa.DATA / "models" / "yolox_nano_coco.onnx")) if name == "yolox" else \
        rknn.load_pytorch(str(qa.DATA / "models" / "mobilenet_v2_imagenet.pt"), [[1, 3, qa.MNV2_SIZE, qa.MNV2_SIZE]])
    t = time.perf_counter()
    if rc != 0 or rknn.build(do_quantization=True, dataset=str(ds)) != 0:
        raise SystemExit(f"build of {name} failed")
    build_s = time.perf_counter() - t
    path = folder / f"{name}.rknn"
    rknn.export_rknn(str(path))
    rknn.release()
    return read_package(path), build_s


def accuracy(name: str, ref, outs) -> str:
    if name == "yolox":
        dets = [qa.decode_yolox(o, r, 0.3) for o, (_, r) in zip(outs, ref.inputs)]
        n_gt = sum(len(g) for g in ref.gts)
        kept = sum(int(qa.match(d, g).sum()) for g, d in zip(ref.gts, dets))
        return f"{kept / max(n_gt, 1) * 100:.1f}% ({kept}/{n_gt})"
    top1 = sum(int(np.argmax(a) == np.argmax(b)) for a, b in zip(ref.outputs, outs))
    return f"{top1}/{len(outs)}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="yolox,mobilenet")
    ap.add_argument("--method", default="channel", choices=("channel", "layer"),
                    help="weight quantization: per channel (the default build) or per tensor, which today's rocket "
                         "driver needs to run convolutions on the NPU")
    ap.add_argument("--points", default="chip", choices=("chip", "tflite"),
                    help="config(pre_activation_points=...): 'tflite' gives every conv before a SiLU / Sigmoid its "
                         "own int8 point, so the conv exports as an int8 op Teflon can offload")
    args = ap.parse_args()
    if not qa.DATA.is_dir():
        sys.exit(f"no data folder at {qa.DATA}")
    tmp = Path(tempfile.mkdtemp(prefix="tflite_bench_"))
    header = ["model", "simulator kept/top1", "LiteRT kept/top1", "cosine mean", "cosine min",
              "floor: fusions off, mean (min)", "build s",
              "export s (ratio)", "float layers", "Teflon NPU ops", "convs on NPU",
              "made otherwise: int8 / float layers"]
    rows = []
    for name in args.models.split(","):
        folder = tmp / name
        folder.mkdir()
        model, _ = qa.float_model(name)
        ref = qa.Reference(name, model)
        pkg, build_s = build(name, folder, args.method, args.points)
        t = time.perf_counter()
        data, report = export_tflite_bytes(pkg)
        export_s = time.perf_counter() - t
        sim = Simulator(pkg.model_bytes, pkg.metadata)
        runner = TfliteRunner(data, delegate=None, threads=2)
        feeds = [x.astype(np.uint8) for x, _ in ref.inputs]
        sim_outs = [sim.run([x])[0] for x in feeds]
        lite_outs = [runner.run([x])[0] for x in feeds]
        cos = [cosine(a, b) for a, b in zip(sim_outs, lite_outs)]
        floor = [cosine(a, b[0]) for a, b in zip(sim_outs, unfused_outputs(pkg, feeds))]
        places = teflon_placement(report.model)
        convs = [p for p in places if p.builtin in CONV_OPS]
        traced = trace(pkg, data, report, [feeds[int(np.argmin(cos))]])
        (_, n8, m8, _), (_, nf, mf, _) = traced.totals("int8"), traced.totals("float")
        rows.append([name, accuracy(name, ref, sim_outs), accuracy(name, ref, lite_outs), f"{np.mean(cos):.5f}",
                     f"{np.min(cos):.5f}", f"{np.mean(floor):.5f} ({np.min(floor):.5f})", f"{build_s:.1f}",
                     f"{export_s:.2f} ({export_s / build_s:.3f}x)",
                     f"{len(report.float_layers)}/{len(report.float_layers) + len(report.int8_layers)}",
                     f"{sum(p.unit == 'NPU' for p in places)}/{len(places)}",
                     f"{sum(p.unit == 'NPU' for p in convs)}/{len(convs)}", f"{m8:,}/{n8:,} / {mf:,}/{nf:,}"])
        print(f"# {name}: {len(report.changes)} rule changes; float layers by op: "
              f"{sorted({r.op_type for r in report.float_layers})}", flush=True)
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("-|-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(str(c).ljust(w) for c, w in zip(r, widths)))


if __name__ == "__main__":
    main()
