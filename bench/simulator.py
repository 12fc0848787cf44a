"""Simulator overhead vs a bare onnxruntime session on the same float model, plus build and load times.

    python bench/simulator.py [--runs 200]

Both paths use the same onnxruntime settings (all optimisations, same thread count) and are timed interleaved in one
process so that machine noise hits both equally. Prints a table; exits 0 (numbers are reported, not asserted).
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def bare_session(model_bytes: bytes, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


def mobilenet_onnx() -> bytes:
    import torch

    m = torch.jit.load(str(DATA / "models/mobilenet_v2_imagenet.pt")).eval()
    buf = io.BytesIO()
    torch.onnx.export(m, (torch.rand(1, 3, 224, 224),), buf, dynamo=False, opset_version=17, input_names=["input"])
    return buf.getvalue()


def bench_model(name: str, load, original_bytes: bytes, size: int, mean, std, runs: int, threads: int) -> dict:
    from openrknn.api import RKNN

    rk = RKNN()
    rk.config(mean_values=[mean], std_values=[std], target_platform="rk1808")
    assert load(rk) == 0
    t = time.perf_counter()
    assert rk.build(do_quantization=False) == 0
    build_s = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as d:
        path = f"{d}/{name}.rknn"
        assert rk.export_rknn(path) == 0
        rk.release()
        rk2 = RKNN()
        t = time.perf_counter()
        assert rk2.load_rknn(path) == 0
        import os

        os.environ["OPENRKNN_THREADS"] = str(threads)
        assert rk2.init_runtime() == 0
        load_s = time.perf_counter() - t
    sim = rk2._runtime
    bare = bare_session(original_bytes, threads)
    bare_in = bare.get_inputs()[0].name
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    x = ((img.astype(np.float32) - np.float32(mean)) / np.float32(std)).transpose(2, 0, 1)[None].copy()
    for _ in range(10):  # warm both
        bare.run(None, {bare_in: x})
        rk2.inference(inputs=[img])
    t_bare, t_sim = [], []
    for _ in range(runs):
        t = time.perf_counter()
        bare.run(None, {bare_in: x})
        t_bare.append(time.perf_counter() - t)
        t = time.perf_counter()
        rk2.inference(inputs=[img])
        t_sim.append(time.perf_counter() - t)
    del sim
    rk2.release()
    mb, ms = statistics.median(t_bare) * 1e3, statistics.median(t_sim) * 1e3
    return {"model": name, "bare_ms": mb, "sim_ms": ms, "overhead_pct": (ms / mb - 1) * 100, "build_s": build_s,
            "load_init_s": load_s}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if not DATA.is_dir():
        print(f"skipped: {DATA} not found")
        return 0
    rows = []
    yolox = DATA / "models/yolox_nano_coco.onnx"
    rows.append(bench_model("yolox_nano_coco", lambda r: r.load_onnx(str(yolox)), yolox.read_bytes(), 416,
                            [0, 0, 0], [1, 1, 1], args.runs, args.threads))
    mb = DATA / "models/mobilenet_v2_imagenet.pt"
    rows.append(bench_model("mobilenet_v2", lambda r: r.load_pytorch(str(mb), input_size_list=[[3, 224, 224]]),
                            mobilenet_onnx(), 224, [123.675, 116.28, 103.53], [58.395, 57.12, 57.375], args.runs,
                            args.threads))
    print(f"\nsimulator vs bare onnxruntime, batch 1, {args.runs} interleaved runs, {args.threads} threads, median")
    print(f"{'model':18s} {'bare ORT ms':>12s} {'simulator ms':>13s} {'overhead':>9s} {'build s':>8s} "
          f"{'load+init s':>12s}")
    for r in rows:
        print(f"{r['model']:18s} {r['bare_ms']:12.2f} {r['sim_ms']:13.2f} {r['overhead_pct']:8.1f}% "
              f"{r['build_s']:8.2f} {r['load_init_s']:12.3f}")
    print("targets: overhead <= 5%; yolox_nano build < 3 s; load_rknn + init_runtime < 0.5 s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
