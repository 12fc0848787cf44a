"""Simulator speed on the real YOLOX-nano and MobileNetV2: onnxruntime fp32 vs openrknn float vs openrknn int8.

    python bench/simulator.py [--runs 30] [--batch 16] [--calib 16] [--models yolox,mobilenet]

Per model, in one process: a bare onnxruntime session on the original fp32 model (fed the normalised NCHW tensor, and
again with the numpy pre-processing a user writes for it: uint8 HWC -> float, mean/std, NCHW); then `RKNN` builds
(float; int8 u8 per-layer and per-channel for rk1808; w8a8 normal / kl_divergence / mmse for rk3588; u8 and w8a8
normal again with config(range_split=False)) loaded in the
simulator (`Simulator`, what `init_runtime()` makes), fed uint8 NHWC images. Each int8 row also runs the stored QDQ
graph without the simulator's load-time rewrites ("stored graph"), so before/after is measured in the same run.

Timing: every variant is run in turn inside each round (interleaved, so machine noise hits all alike), median of
--runs rounds. Two clocks: wall time with the simulator's default threads (every core), and the CPU time of one
single-threaded run (time.thread_time: what the run costs, nearly immune to other jobs on a shared machine). Ratios
are against the openrknn float simulator of the same model. Batch: --batch frames as one k-frame array through
`inference()` (frames run concurrently, one per core) vs one frame at a time, in images/s.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))

MODELS = {
    "yolox": dict(label="YOLOX-nano COCO 416", size=416, mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0], images="coco"),
    "mobilenet": dict(label="MobileNetV2 224", size=224, mean=[123.675, 116.28, 103.53],
                      std=[58.395, 57.12, 57.375], images="imagenet"),
}
INT8_ROWS = [  # (label, target, quantized_dtype, algorithm, method, extra config)
    ("int8 u8 normal", "rk1808", "asymmetric_quantized-u8", "normal", "layer", {}),
    ("int8 u8 normal channel", "rk1808", "asymmetric_quantized-u8", "normal", "channel", {}),
    ("int8 w8a8 normal", "rk3588", "w8a8", "normal", "channel", {}),
    ("int8 w8a8 kl", "rk3588", "w8a8", "kl_divergence", "channel", {}),
    ("int8 w8a8 mmse", "rk3588", "w8a8", "mmse", "channel", {}),
    # range split adds convs and concats (on the chip too): the same builds without it
    ("int8 u8 normal, range_split=False", "rk1808", "asymmetric_quantized-u8", "normal", "layer",
     {"range_split": False}),
    ("int8 w8a8 normal, range_split=False", "rk3588", "w8a8", "normal", "channel", {"range_split": False}),
]


def _session(model_bytes: bytes, threads: int) -> ort.InferenceSession:
    from openrknn.runtime.ort_session import make_session

    return make_session(model_bytes, threads)


def original_onnx(name: str) -> bytes:
    if name == "yolox":
        return (DATA / "models" / "yolox_nano_coco.onnx").read_bytes()
    import torch

    m = torch.jit.load(str(DATA / "models" / "mobilenet_v2_imagenet.pt")).eval()
    buf = io.BytesIO()
    torch.onnx.export(m, (torch.zeros(1, 3, 224, 224),), buf, dynamo=False, opset_version=17, input_names=["input"])
    return buf.getvalue()


def build(name: str, work: Path, calib: int, **config):
    """One RKNN build as a user writes it; returns (package, build seconds)."""
    from openrknn.api import RKNN

    spec = MODELS[name]
    rk = RKNN()
    assert rk.config(mean_values=[spec["mean"]], std_values=[spec["std"]], **config) == 0
    if name == "yolox":
        assert rk.load_onnx(str(DATA / "models" / "yolox_nano_coco.onnx")) == 0
    else:
        assert rk.load_pytorch(str(DATA / "models" / "mobilenet_v2_imagenet.pt"),
                               input_size_list=[[1, 3, 224, 224]]) == 0
    dataset = work / f"{name}.txt"
    if not dataset.exists():
        images = sorted((DATA / "images" / spec["images"]).glob("*.*"))[:calib]
        dataset.write_text("".join(f"{p}\n" for p in images))
    t0 = time.perf_counter()
    quantize = "quantized_dtype" in config
    assert rk.build(do_quantization=quantize, dataset=str(dataset) if quantize else None) == 0
    return rk._package, time.perf_counter() - t0


class Variant:
    """Something to time: fn(single) runs one frame (single=True: on the single-threaded twin)."""

    def __init__(self, label: str, run_default, run_single, build_s: float | None = None,
                 load_s: float | None = None):
        self.label, self.run_default, self.run_single, self.build_s = label, run_default, run_single, build_s
        self.load_s = load_s
        self.wall: list = []
        self.cpu: list = []


def time_round_robin(variants: list, runs: int) -> None:
    for v in variants:  # warm up
        for _ in range(3):
            v.run_default()
            v.run_single()
    for _ in range(runs):
        for v in variants:
            t0 = time.perf_counter()
            v.run_default()
            v.wall.append((time.perf_counter() - t0) * 1e3)
            c0 = time.thread_time()
            v.run_single()
            v.cpu.append((time.thread_time() - c0) * 1e3)


def bench_model(name: str, runs: int, calib: int, batch: int, work: Path) -> list:
    from openrknn.runtime.simulator import Simulator

    spec = MODELS[name]
    size = spec["size"]
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    mean = np.asarray(spec["mean"], np.float32)
    std = np.asarray(spec["std"], np.float32)
    nchw = ((img[0].astype(np.float32) - mean) / std).transpose(2, 0, 1)[None].copy()
    raw = original_onnx(name)
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    bare, bare1 = _session(raw, threads), _session(raw, 1)
    bare_in = bare.get_inputs()[0].name

    def user_pre():  # what a user feeding the original model writes
        x = ((img[0].astype(np.float32) - mean) / std).transpose(2, 0, 1)[None]
        return {bare_in: np.ascontiguousarray(x)}

    variants = [Variant("onnxruntime fp32 (fed NCHW float)", lambda: bare.run(None, {bare_in: nchw}),
                        lambda: bare1.run(None, {bare_in: nchw})),
                Variant("onnxruntime fp32 + numpy pre-processing", lambda: bare.run(None, user_pre()),
                        lambda: bare1.run(None, user_pre()))]
    sims = {}
    rows = [("openrknn float", {"target_platform": "rk1808"})]
    rows += [(label, {"target_platform": t, "quantized_dtype": d, "quantized_algorithm": a, "quantized_method": m,
                      **extra}) for label, t, d, a, m, extra in INT8_ROWS]
    for label, config in rows:
        print(f"  building {name}: {label} ...", flush=True)
        pkg, build_s = build(name, work, calib, **config)
        t0 = time.perf_counter()
        sim = Simulator(pkg.model_bytes, pkg.metadata)  # what init_runtime() makes: rewrites + session
        load_s = time.perf_counter() - t0
        sim1 = Simulator(pkg.model_bytes, pkg.metadata, threads=1)
        sims[label] = sim
        variants.append(Variant(label, lambda s=sim: s.run([img]), lambda s=sim1: s.run([img]), build_s, load_s))
        if "quantized_dtype" in config:  # the stored QDQ graph as onnxruntime runs it, without the rewrites
            stored, stored1 = _session(pkg.model_bytes, threads), _session(pkg.model_bytes, 1)
            feeds = {pkg.metadata["inputs"][0]["name"]: img.astype(np.float32)}
            variants.append(Variant(f"  {label}, stored graph", lambda s=stored, f=feeds: s.run(None, f),
                                    lambda s=stored1, f=feeds: s.run(None, f)))
            np.testing.assert_array_equal(stored1.run(None, feeds)[0], sim1.run([img])[0])  # rewrites are exact
    print(f"  timing {len(variants)} variants x {runs} rounds ...", flush=True)
    time_round_robin(variants, runs)
    frames = np.repeat(img, batch, axis=0)
    throughput = {}
    for label in ("openrknn float", "int8 u8 normal", "int8 w8a8 normal"):
        sim = sims[label]
        sim.run([frames])  # warm the frame sessions
        t0 = time.perf_counter()
        for i in range(batch):
            sim.run([frames[i:i + 1]])
        one = batch / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        sim.run([frames])
        throughput[label] = (one, batch / (time.perf_counter() - t0), sim.workers)
    for s in sims.values():
        s.release()
    return [(name, variants, throughput)]


def report(results: list, runs: int, batch: int) -> None:
    print(f"\nmedian of {runs} interleaved rounds; wall: default threads; cpu: one single-threaded run "
          "(time.thread_time); ratio: / openrknn float of the same model")
    for name, variants, throughput in results:
        print(f"\n{MODELS[name]['label']}")
        ref = next(v for v in variants if v.label == "openrknn float")
        rw, rc = statistics.median(ref.wall), statistics.median(ref.cpu)
        print(f"{'variant':<44} {'wall ms':>8} {'ratio':>6} {'cpu ms':>8} {'ratio':>6} {'build s':>8} {'load s':>7}")
        for v in variants:
            w, c = statistics.median(v.wall), statistics.median(v.cpu)
            b = f"{v.build_s:8.1f}" if v.build_s is not None else f"{'':>8}"
            ld = f"{v.load_s:7.3f}" if v.load_s is not None else f"{'':>7}"
            print(f"{v.label:<44} {w:8.2f} {w / rw:6.2f} {c:8.2f} {c / rc:6.2f} {b} {ld}")
        bare = [v for v in variants if v.label.startswith("onnxruntime")]
        for v in bare:
            print(f"float simulator overhead vs {v.label}: wall {100 * (rw / statistics.median(v.wall) - 1):+.1f}%, "
                  f"cpu {100 * (rc / statistics.median(v.cpu) - 1):+.1f}%")
        print(f"batch of {batch} frames in one inference() call vs one frame per call (images/s):")
        for label, (one, many, workers) in throughput.items():
            print(f"  {label:<22} {one:8.1f} -> {many:8.1f} images/s  (x{many / one:.2f}, {workers} workers)")


def main(argv: list | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--calib", type=int, default=16, help="calibration images per build")
    ap.add_argument("--models", default="yolox,mobilenet")
    args = ap.parse_args(argv)
    if not DATA.is_dir():
        print(f"skipped: {DATA} not found")
        return 0
    import torch

    torch.set_num_threads(1)
    results = []
    with tempfile.TemporaryDirectory(prefix="openrknn_simbench_") as tmp:
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            results += bench_model(name, args.runs, args.calib, args.batch, Path(tmp))
    report(results, args.runs, args.batch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
