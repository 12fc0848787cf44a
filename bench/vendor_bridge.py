"""openrknn's quantization compiled by rknn-toolkit2 (the bridge) against the vendor's own quantizer.

Same split as bench/quant_accuracy.py: YOLOX-nano calibrates on the even-numbered COCO images and is scored on the
odd ones plus misc/*.jpg (float detections at score >= 0.3 as reference); MobileNetV2 calibrates on the first 20
ImageNet images and is scored on the other 20 (top-1 agreement with the float model). Rows:
- vendor normal / kl_divergence / mmse: rknn-toolkit2 quantizes the float model itself (w8a8, per-channel), scored on
  its own simulator right after build() (mmse only with --mmse: it takes tens of minutes on YOLOX-nano);
- openrknn simulator: our w8a8 build on our simulator;
- bridge qdq / ranges: our build compiled by the vendor through `export_vendor`, scored on the vendor simulator's
  --validate outputs; "vs openrknn" is the cosine against our simulator (mean over images, and the worst image;
  on the simulator's row, the floor: our simulator against its own graph with onnxruntime's fusions off);
  "carried" says what reached the vendor (cfg tensors with our ranges, weights on our integers, pre-activations
  given our int8 range, compiled layer dtypes) and, for route ranges, the layer-by-layer comparison of the first
  image (export_vendor(layers=True): values a step or more apart, and how many of them at rounding ties);
- bridge ranges, hybrid (MobileNetV2): our build with build(auto_hybrid=True) promoting layers to 16 bits, compiled
  through route ranges; "carried" lists each 16-bit tensor with the dtype of the vendor layer that produces it.
Rows print as they finish; the table is printed again at the end. Needs the vendor venv (openrknn vendor-setup, or
OPENRKNN_VENDOR_PYTHON).

Usage: python bench/vendor_bridge.py [--models yolox,mobilenet] [--mmse] [--no-own]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import quant_accuracy as qa  # noqa: E402
from corpus_tflite import unfused_outputs  # noqa: E402  (the floor: our graph with onnxruntime's fusions off)

from openrknn.api import RKNN  # noqa: E402
from openrknn.metrics import cosine  # noqa: E402
from openrknn.package import read_package  # noqa: E402
from openrknn.runtime.simulator import Simulator  # noqa: E402
from openrknn.vendor import export_vendor, find_vendor_python  # noqa: E402

# the vendor's own quantizer, run in its Python: build from the float ONNX, then its simulator on the eval inputs
VENDOR_OWN = textwrap.dedent('''
    import json, sys, time, os, numpy as np
    from rknn.api import RKNN
    spec = json.load(open(sys.argv[1]))
    r = RKNN()
    r.config(mean_values=spec["mean"], std_values=spec["std"], target_platform="rk3588",
             quantized_algorithm=spec["algorithm"], quant_img_RGB2BGR=spec["bgr"])
    assert r.load_onnx(model=spec["model"]) == 0
    t = time.time()
    assert r.build(do_quantization=True, dataset=spec["dataset"]) == 0
    secs = time.time() - t
    assert r.init_runtime() == 0
    for k, f in enumerate(spec["inputs"]):
        out = r.inference(inputs=[np.load(f)], data_format="nhwc")
        np.save(os.path.join(spec["out"], "%d.npy" % k), out[0])
    print(json.dumps({"seconds": secs}))
''')
HEAD = ["model", "row", "kept / top-1", "cos float", "vs openrknn mean (min)", "build s", "carried"]
WIDTHS = [9, 26, 16, 9, 22, 8, 0]


def build_ours(name: str, folder: Path, ds: Path, hybrid: bool = False):
    r = RKNN()
    if name == "yolox":
        r.config(mean_values=[[0, 0, 0]], std_values=[[1, 1, 1]], target_platform="rk3588", quantized_dtype="w8a8",
                 quant_img_RGB2BGR=True)
        assert r.load_onnx(str(qa.DATA / "models" / "yolox_nano_coco.onnx")) == 0
    else:
        extra = {"auto_hybrid_cos_thresh": 0.999} if hybrid else {}
        r.config(mean_values=[qa.IMAGENET_MEAN], std_values=[qa.IMAGENET_STD], target_platform="rk3588",
                 quantized_dtype="w8a8", **extra)
        assert r.load_pytorch(str(qa.DATA / "models" / "mobilenet_v2_imagenet.pt"), [[1, 3, 224, 224]]) == 0
    t = time.time()
    assert r.build(do_quantization=True, dataset=str(ds), auto_hybrid=hybrid) == 0
    secs = time.time() - t
    path = folder / f"{name}_w8a8{'_hybrid' if hybrid else ''}.rknn"
    assert r.export_rknn(str(path)) == 0
    r.release()
    return path, secs


def score(name: str, ref, outs):
    """(kept / top-1 text, mean cosine to float)."""
    cos = float(np.mean([cosine(a, b) for a, b in zip(ref.outputs, outs)]))
    if name == "yolox":
        dets = [qa.decode_yolox(o.reshape(ref.outputs[0].shape), r, 0.3) for o, (_, r) in zip(outs, ref.inputs)]
        n_gt = sum(len(g) for g in ref.gts)
        kept = sum(int(qa.match(d, g).sum()) for g, d in zip(ref.gts, dets))
        return f"{kept / n_gt * 100:.1f}% ({kept}/{n_gt})", cos
    top1 = sum(int(np.argmax(a) == np.argmax(b)) for a, b in zip(ref.outputs, outs))
    return f"{top1}/{len(outs)}", cos


def carried_text(c: dict) -> str:
    parts = []
    if "cfg_tensors" in c:
        parts.append(f"cfg {c['cfg_ours']}/{c['cfg_tensors']} ours ({c['openrknn_extra_ranges']} extra)")
    if c.get("weights"):
        parts.append(f"weights {c['weights_pinned']}/{c['weights']} pinned")
    if c.get("preactivations_quantized"):
        parts.append(f"{c['preactivations_quantized']} pre-act Q/DQ")
    if c.get("wide_layers"):
        kinds = {}
        for d in c["wide_layers"].values():
            kinds[d or "?"] = kinds.get(d or "?", 0) + 1
        parts.append("16-bit: " + ", ".join(f"{n} {d}" for d, n in kinds.items()))
    if c.get("layer_dtypes"):
        parts.append("layers " + " ".join(f"{k}:{v}" for k, v in sorted(c["layer_dtypes"].items())))
    return "; ".join(parts)


def show(row) -> None:
    print(" | ".join(str(c).ljust(w) for c, w in zip(row, WIDTHS)), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="yolox,mobilenet")
    ap.add_argument("--mmse", action="store_true", help="also the vendor's mmse (very slow on YOLOX-nano)")
    ap.add_argument("--no-own", action="store_true", help="skip the vendor's own quantizer rows")
    args = ap.parse_args()
    vp = find_vendor_python()
    tmp = Path(tempfile.mkdtemp(prefix="vendor_bench_"))
    rows = []

    def add(row):
        rows.append(row)
        show(row)

    print(f"vendor: {vp.toolkit} {vp.version} (Python {vp.python_version}, {vp.python}); machine shared, timings "
          f"noisy; work folder {tmp}", flush=True)
    show(HEAD)
    for name in args.models.split(","):
        folder = tmp / name
        folder.mkdir()
        float_model, _ = qa.float_model(name)
        ref = qa.Reference(name, float_model)
        ds, bgr = qa.write_dataset(name, qa.split(name)[0], folder)
        evals = []
        for k, (x, _) in enumerate(ref.inputs):
            p = folder / f"eval_{k}.npy"
            np.save(p, x.astype(np.uint8))
            evals.append(p)
        algos = [] if args.no_own else ["normal", "kl_divergence"] + (["mmse"] if args.mmse else [])
        fpath = qa.DATA / "models" / "yolox_nano_coco.onnx"
        if name == "mobilenet" and algos:
            import onnx

            from openrknn.frontends.pytorch import load_pytorch

            fpath = folder / "float_nchw.onnx"
            onnx.save(load_pytorch(str(qa.DATA / "models" / "mobilenet_v2_imagenet.pt"), [[1, 3, 224, 224]]).model,
                      str(fpath))
        for alg in algos:
            out = folder / f"own_{alg}"
            out.mkdir()
            spec = {"model": str(fpath), "dataset": str(ds), "algorithm": alg, "bgr": bgr, "out": str(out),
                    "inputs": [str(p) for p in evals],
                    "mean": [[0, 0, 0]] if name == "yolox" else [qa.IMAGENET_MEAN],
                    "std": [[1, 1, 1]] if name == "yolox" else [qa.IMAGENET_STD]}
            (folder / "spec.json").write_text(json.dumps(spec))
            (folder / "own.py").write_text(VENDOR_OWN)
            env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
            proc = subprocess.run([vp.python, str(folder / "own.py"), str(folder / "spec.json")], capture_output=True,
                                  text=True, env=env)
            if proc.returncode != 0:
                add((name, f"vendor {alg}", "ERROR", "", "", "", (proc.stderr.strip().splitlines() or ["?"])[-1]))
                continue
            secs = json.loads(proc.stdout.strip().splitlines()[-1])["seconds"]
            outs = [np.load(out / f"{k}.npy") for k in range(len(evals))]
            acc, cos = score(name, ref, outs)
            add((name, f"vendor {alg}", acc, f"{cos:.4f}", "", f"{secs:.1f}", "its own calibration and weights"))
        builds = [("", False)] + ([("hybrid", True)] if name == "mobilenet" else [])
        for tag, hybrid in builds:
            pkg_path, secs = build_ours(name, folder, ds, hybrid)
            pkg = read_package(pkg_path)
            sim = Simulator(pkg.model_bytes, pkg.metadata)
            ours = [sim.run([np.load(p)])[0] for p in evals]
            sim.release()
            acc, cos = score(name, ref, ours)
            # the floor: our simulator against its own graph with onnxruntime's fusions off (same integers, another
            # summation order: only rounding ties differ), as far as any other arithmetic could agree
            floor = [cosine(a[0], b) for a, b in zip(unfused_outputs(pkg, [np.load(p) for p in evals]), ours)]
            add((name, f"openrknn simulator{', ' + tag if tag else ''}", acc, f"{cos:.4f}",
                 f"1; floor {np.mean(floor):.4f} ({np.min(floor):.4f})", f"{secs:.1f}",
                 f"{len(pkg.metadata['quantization'].get('overrides') or {})} 16-bit overrides" if hybrid else ""))
            for route in (("ranges",) if hybrid else ("qdq", "ranges")):
                label = f"bridge {route}{', ' + tag if tag else ''}"
                out = folder / f"bridge_{route}{tag}.rknn"
                t = time.time()
                try:
                    res = export_vendor(pkg, out, validate=evals, validate_out=folder / f"val_{route}{tag}",
                                        route=route, dataset=ds, vendor=vp, keep_work=folder / f"work_{route}{tag}",
                                        layers=route == "ranges" and not hybrid)
                except Exception as e:  # a route the vendor cannot compile is a row, not the end of the bench
                    add((name, label, "FAILED", "", "", "", str(e).splitlines()[0][:160]))
                    continue
                outs = [np.load(folder / f"val_{route}{tag}" / f"eval_{k}_0.npy") for k in range(len(evals))]
                acc, cos = score(name, ref, outs)
                vs = min(o["cosine_min"] for o in res.validation["outputs"])
                vs_mean = min(o["cosine_mean"] for o in res.validation["outputs"])
                lay = res.validation.get("layers")
                lay = (f"; layer by layer (first image): {lay['differing']} of {lay['values']} values a step or "
                       f"more apart, {lay['at_ties']} at rounding ties, on {lay['points']} points") if lay else ""
                add((name, label, acc, f"{cos:.4f}", f"{vs_mean:.4f} ({vs:.4f})", f"{time.time() - t:.1f}",
                     carried_text(res.carried) + lay))
                if res.carried.get("wide_layers"):
                    print("    16-bit tensors -> vendor layer dtype: " + json.dumps(res.carried["wide_layers"]),
                          flush=True)
    print("\n| " + " | ".join(HEAD) + " |")
    print("|" + "---|" * len(HEAD))
    for r in rows:
        print("| " + " | ".join(str(c) for c in r) + " |")


if __name__ == "__main__":
    main()
