"""Does rknn-toolkit2 requantize a conv's output before its activation? A probe of its simulator, per activation.

rknn-toolkit2's hybrid_quantization_step1 lists every conv output that feeds a SiLU / sigmoid / HardSwish as an
int8 tensor of its own (with the conv's full output range), which would mean two quantized steps where openrknn's
simulator has one (conv + activation fused, only the activation's output quantized). This bench asks the vendor's
simulator what it computes. A 1x1 conv makes four channels from four inputs: channel 0 spans [-60, 0], channel 1
[0, 6], channel 2 [-6, 6], channel 3 [-6, 0], so one int8 scale over the conv output ([-60, 6]) would be ~10x
coarser than the scale of the activation's output. Each activation's model is built and run by rknn-toolkit2 (w8a8,
rk3588, normal; its own virtualenv) on 8 inputs, and the RMS error per channel against float is compared with the
two candidate simulations: "fused" (input and activation output quantized, as openrknn does) and "requantized" (the
conv output quantized too, with the range the vendor's cfg lists). Two more rows add the conv's input back to its
output (a residual Add, then a ReLU or nothing): "fused" rounds once, at the sum, "requantized" rounds the conv
output first. (The diagonal weights sit exactly on a symmetric and on an asymmetric int8 grid alike.)

Usage: python bench/vendor_act_probe.py [--vendor-python /work/cache/vendor-venv/bin/python] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

C = 4
GAIN = np.array([60.0, 6.0, 6.0, -60.0])
ACTS = {
    "SiLU": (lambda y: y / (1 + np.exp(-y)), [("Sigmoid", ["y"], ["s"], {}), ("Mul", ["y", "s"], ["out"], {})]),
    "Sigmoid": (lambda y: 1 / (1 + np.exp(-y)), [("Sigmoid", ["y"], ["out"], {})]),
    "HardSwish": (lambda y: y * np.clip(y / 6 + 0.5, 0, 1), [("HardSwish", ["y"], ["out"], {})]),
    "Tanh": (np.tanh, [("Tanh", ["y"], ["out"], {})]),
    "LeakyRelu": (lambda y: np.where(y > 0, y, 0.1 * y), [("LeakyRelu", ["y"], ["out"], {"alpha": 0.1})]),
    "Relu": (lambda y: np.maximum(y, 0), [("Relu", ["y"], ["out"], {})]),
}
# conv output + the conv's input, then the function: a residual block's end
RESIDUAL = {
    "residual Add + Relu": (lambda v: np.maximum(v, 0), [("Add", ["y", "x"], ["a"], {}), ("Relu", ["a"], ["out"], {})]),
    "residual Add": (lambda v: v, [("Add", ["y", "x"], ["out"], {})]),
}

VENDOR_JOB = r'''
import json, os, sys
import numpy as np
from rknn.api import RKNN
job = json.load(open(sys.argv[1]))
os.chdir(job["dir"])
r = RKNN(verbose=False)
r.config(target_platform="rk3588", quantized_dtype="w8a8", quantized_algorithm="normal",
         mean_values=[[0] * 4], std_values=[[1] * 4])
assert r.load_onnx(job["model"]) == 0
assert r.build(do_quantization=True, dataset=job["dataset"]) == 0
assert r.init_runtime() == 0
outs = [r.inference(inputs=[np.load(f).transpose(0, 2, 3, 1)], data_format="nhwc")[0] for f in job["feeds"]]
np.save(job["out"], np.concatenate(outs))
r.release()
'''


def make_model(nodes, path: Path) -> None:
    w = np.zeros((C, C, 1, 1), np.float32)
    for c in range(C):
        w[c, c] = GAIN[c]
    graph_nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"])]
    graph_nodes += [helper.make_node(op, i, o, **a) for op, i, o, a in nodes]
    g = helper.make_graph(graph_nodes, "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, 16, 16])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, C, 16, 16])],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros(C, np.float32), "b")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])
    m.ir_version = 8
    onnx.save(m, str(path))


def fake_quant(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Asymmetric int8 over [lo, hi] (widened to hold 0), as both toolkits compute it."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    s = (hi - lo) / 255
    z = np.round(-128 - lo / s)
    return (np.clip(np.round(x / s) + z, -128, 127) - z) * s


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vendor-python", type=Path, default=Path("/work/cache/vendor-venv/bin/python"))
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args(argv)
    if not args.vendor_python.is_file():
        sys.exit(f"no rknn-toolkit2 interpreter at {args.vendor_python} (see docs/vendor.md: openrknn vendor-setup)")
    work = args.work or Path(tempfile.mkdtemp(prefix="vendor_act_probe_"))
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    feeds = []
    for i in range(8):
        x = np.empty((1, C, 16, 16), np.float32)
        x[:, 0] = rng.uniform(-1, 0, (16, 16))
        x[:, 1] = rng.uniform(0, 1, (16, 16))
        x[:, 2] = rng.uniform(-1, 1, (16, 16))
        x[:, 3] = rng.uniform(0, 0.1, (16, 16))
        np.save(work / f"x{i}.npy", x)
        feeds.append(x)
    (work / "dataset.txt").write_text("".join(f"x{i}.npy\n" for i in range(8)))
    (work / "job.py").write_text(VENDOR_JOB)
    xs = np.concatenate(feeds)
    xq = fake_quant(xs, float(xs.min()), float(xs.max()))
    y = xq * GAIN[None, :, None, None]
    print("| activation | rknn-toolkit2 simulator | fused (openrknn) | requantized before the activation | "
          "vendor is |")
    print("|---|---|---|---|---|")
    for name, (f, nodes) in {**ACTS, **RESIDUAL}.items():
        d = work / name
        d.mkdir(exist_ok=True)
        make_model(nodes, d / "model.onnx")
        job = {"dir": str(d), "model": str(d / "model.onnx"), "dataset": str(work / "dataset.txt"),
               "feeds": [str(work / f"x{i}.npy") for i in range(8)], "out": str(d / "vendor.npy")}
        (d / "job.json").write_text(json.dumps(job))
        p = subprocess.run([str(args.vendor_python), str(work / "job.py"), str(d / "job.json")], cwd=d,
                           capture_output=True, text=True)
        if p.returncode != 0:
            print(f"| {name} | fails: {p.stderr.strip().splitlines()[-1][:120]} | | | |")
            continue
        vendor = np.load(d / "vendor.npy").reshape(xs.shape)
        skip = (xs, xq) if name in RESIDUAL else (0.0, 0.0)  # the residual rows add the input back
        ref = f(xs * GAIN[None, :, None, None] + skip[0])
        out = f(y + skip[1])
        fused = fake_quant(out, float(out.min()), float(out.max()))
        requant = fake_quant(f(fake_quant(y, float(y.min()), float(y.max())) + skip[1]), float(out.min()),
                             float(out.max()))

        rv, rf, rr = (np.sqrt(np.mean((o - ref) ** 2, axis=(0, 2, 3))) for o in (vendor, fused, requant))
        verdict = "fused" if np.abs(rv - rf).sum() < np.abs(rv - rr).sum() else "requantized"
        fmt = lambda a: " / ".join(f"{v:.4f}" for v in a)  # noqa: E731
        print(f"| {name} | {fmt(rv)} | {fmt(rf)} | {fmt(rr)} | {verdict} |", flush=True)
    print(f"\n(RMS error per output channel 0 / 1 / 2 / 3 against float; files in {work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
