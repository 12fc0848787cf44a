"""TensorFlow.js layers models (Keras topologies) as npm packages ship them, through load_tfjs as a user would run
them: the float build against TensorFlow.js itself, w8a8 against the float model, beside rknn-toolkit2 and LiteRT.

    python bench/tfjs_layers_models.py [--cache DIR] [--only NAMES]
    python bench/tfjs_layers_models.py --folder DIR [--mean 127.5 --std 127.5]   # your own: each DIR/*/model.json

--folder runs every classifier found below DIR (a model.json with its weights, such as Teachable Machine's image
exports, which take pixels / 127.5 - 1: the default --mean / --std) the same way, at its own input size.

Models: UpscalerJS's super-resolution nets (@upscalerjs/default-model, esrgan-slim and esrgan-medium at x2, x3, x4,
x8: residual dense blocks, Concatenate, UpSampling2D; esrgan-thick uses two layer classes its own JavaScript defines
and is expected to be refused by name), and nsfwjs's three classifiers (Keras MobileNetV2 and InceptionV3 as layers
models: ZeroPadding2D, DepthwiseConv2D, BatchNormalization, ReLU(6), Flatten, Dense; its 'mid' MobileNetV2 is a
graph model), which the package bundles as JavaScript modules: node unwraps them into the model.json and .bin files
a user would save.

Inputs: the shared COCO and misc photos. Super-resolution: each photo's centre square scaled down to 64x64 (INTER_AREA)
is the low-resolution input, pixels 0..255 as UpscalerJS feeds them; the output is the image at 2-8x. Classifiers:
the photo scaled to the model's side, / 255 as nsfwjs feeds it. Calibration on the even ten of the first twenty,
evaluation on the odd ten. Reference: TensorFlow.js 4.22 (tfjs-core, its CPU backend and tfjs-layers from npm, run by
node: bench/tfjs_reference.js). Columns: the float build's worst-output cosine to TensorFlow.js; w8a8 against the
float model (super-resolution: PSNR of the 8-bit images, as the app would show them, and cosine; bicubic upscaling of
the same input against the float model for scale: int8 should stay far closer to the network than bicubic is;
classifiers: cosine, top-1 kept), rknn-toolkit2 2.5.0's w8a8 on the float graph load_tfjs wrote (as ONNX with an
NCHW input: it has no TensorFlow.js loader), and the w8a8 build's export_tflite on LiteRT against our simulator.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from arrivals import build, cosine, fetch_npm, images, litert, vendor_on_graph  # noqa: E402
from tfjs_models import model_bench_args, reference_runtime, run_tfjs  # noqa: E402

LR_SIDE = 64
# name: (npm package, model.json inside it (or the nsfwjs bundle's folder), kind, side, what it is)
MODELS = {
    "upscaler_default": ("@upscalerjs/default-model@1.0.0", "models/model.json", "sr", 2,
                         "UpscalerJS's default model (ESRGAN-slim x2)"),
    **{f"esrgan_slim_x{s}": ("@upscalerjs/esrgan-slim@1.0.0", f"models/x{s}/model.json", "sr", s,
                             f"ESRGAN-slim x{s} (RDN: 2 dense blocks, 64 channels)") for s in (2, 3, 4, 8)},
    **{f"esrgan_medium_x{s}": ("@upscalerjs/esrgan-medium@1.0.0", f"models/x{s}/model.json", "sr", s,
                               f"ESRGAN-medium x{s} (RDN: 10 dense blocks)") for s in (2, 4)},
    "esrgan_thick_x4": ("@upscalerjs/esrgan-thick@1.0.0", "models/x4/model.json", "sr", 4,
                        "ESRGAN-thick x4 (RRDB with the package's own MultiplyBeta and PixelShuffle layers)"),
    "nsfw_mobilenet_v2": ("nsfwjs@4.3.0", "dist/models/mobilenet_v2", "cls", 224,
                          "nsfwjs MobileNetV2 (5 classes), uint8-quantized weights"),
    "nsfw_mobilenet_v2_mid": ("nsfwjs@4.3.0", "dist/models/mobilenet_v2_mid", "cls", 224,
                              "nsfwjs MobileNetV2 'mid' (5 classes; a graph model, for contrast)"),
    "nsfw_inception_v3": ("nsfwjs@4.3.0", "dist/models/inception_v3", "cls", 299, "nsfwjs InceptionV3 (5 classes)"),
}


def unbundled(folder: Path, out: Path) -> Path:
    """nsfwjs's model.min.js / group1-shard*.min.js (JavaScript modules exporting the model.json object and each
    shard as base64) as the model.json and shard files they hold, written by node."""
    if (out / "model.json").is_file():
        return out / "model.json"
    out.mkdir(parents=True, exist_ok=True)
    script = ("const fs=require('fs'),path=require('path');const [src,dst]=process.argv.slice(1);"
              "fs.writeFileSync(path.join(dst,'model.json'),JSON.stringify(require(path.join(src,'model.min.js'))));"
              "for(const f of fs.readdirSync(src)){if(f.startsWith('group')){fs.writeFileSync(path.join(dst,"
              "f.replace('.min.js','')),Buffer.from(require(path.join(src,f)),'base64'));}}")
    subprocess.run(["node", "-e", script, str(folder.resolve()), str(out.resolve())], check=True, capture_output=True)
    return out / "model.json"


def model_file(cache: Path, name: str) -> Path:
    spec, member, _, _, _ = MODELS[name]
    package = fetch_npm(cache, spec)
    if member.endswith(".json"):
        return package / member
    return unbundled(package / member, cache / "arrivals" / "nsfwjs_unbundled" / Path(member).name)


def inputs(kind: str, side: int) -> list:
    import cv2

    pics = images(["coco", "misc"], None)[:20]
    if kind == "cls":
        return [cv2.resize(p, (side, side), interpolation=cv2.INTER_AREA) for p in pics]
    out = []
    for p in pics:
        h, w = p.shape[:2]
        s = min(h, w)
        square = p[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        out.append(cv2.resize(square, (LR_SIDE, LR_SIDE), interpolation=cv2.INTER_AREA))
    return out


def psnr(a, b) -> float:
    """Of two images as 8-bit pixels (each clipped and rounded as an app would show it)."""
    a8 = np.clip(np.rint(np.asarray(a, np.float64)), 0, 255)
    b8 = np.clip(np.rint(np.asarray(b, np.float64)), 0, 255)
    mse = float(np.mean((a8 - b8) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def evaluate(model: Path, kind: str, size: int, mean: float, std: float, modules: Path, work: Path) -> dict:
    """A row: ``kind`` 'sr' (an upscaler at ``LR_SIDE``) or 'cls' (a classifier at its own input size), fed
    (pixels - mean) / std."""
    import cv2

    from openrknn.frontends.tfjs import load_tfjs

    shape = [1, LR_SIDE, LR_SIDE, 3] if kind == "sr" else None
    loaded = load_tfjs(model, input_size_list=[shape] if shape else None)
    if kind == "cls":
        size = loaded.input_shapes[0][1]
    pics = inputs(kind, size)
    calib, held = pics[0:20:2], pics[1:20:2]
    in_name = loaded.input_names[0]
    ref = run_tfjs(model, {in_name: [(p[None].astype(np.float32) - mean) / std for p in held]}, loaded.output_names,
                   [in_name], work, modules)
    row = {"layers": len(loaded.model.graph.node)}

    def built(dtype):
        return build(model, [shape] if shape else None, dtype, [[p[None]] for p in calib],
                     dict(mean_values=[[mean] * 3], std_values=[[std] * 3]), work, timings=row)

    r = built(None)
    floats = [r.inference(inputs=[p[None]], data_format="nhwc")[0] for p in held]
    r.release()
    row["float"] = float(np.mean([cosine(np.ravel(a), np.ravel(t[0])) for a, t in zip(floats, ref)]))
    r = built("w8a8")
    ours = [r.inference(inputs=[p[None]], data_format="nhwc")[0] for p in held]
    row["litert"] = litert(r, [[p[None]] for p in held], work)
    r.release()

    def against_float(outs) -> str:
        outs = [np.asarray(o).reshape(f.shape) for o, f in zip(outs, floats)]
        cos = float(np.mean([cosine(np.ravel(o), np.ravel(f)) for o, f in zip(outs, floats)]))
        if kind == "sr":
            return f"{np.mean([psnr(o, f) for o, f in zip(outs, floats)]):.2f} dB, {cos:.4f}"
        top1 = sum(int(np.argmax(o) == np.argmax(f)) for o, f in zip(outs, floats))
        return f"{cos:.4f}, top-1 {top1}/{len(held)}"

    row["w8a8"] = against_float(ours)
    if kind == "sr":
        out_hw = floats[0].shape[1:3]
        bicubic = [cv2.resize(p.astype(np.float32), (out_hw[1], out_hw[0]), interpolation=cv2.INTER_CUBIC)[None]
                   for p in held]
        row["bicubic"] = f"{np.mean([psnr(b, f) for b, f in zip(bicubic, floats)]):.2f} dB"
    side_hw = shape[1:3] if shape else [size, size]
    nchw = load_tfjs(model, [in_name], [[1, 3, *side_hw]], loaded.output_names, input_is_nchw=True)
    said, outs, row["vendor_s"] = vendor_on_graph(nchw, [mean] * 3, [std] * 3, calib, held, work)
    row["vendor"] = said if outs is None else against_float([o[0] for o in outs])
    return row


def main() -> int:
    ap = model_bench_args(__doc__)
    ap.add_argument("--folder", type=Path, help="run the classifiers below this folder instead (DIR/*/model.json)")
    ap.add_argument("--mean", type=float, default=127.5, help="--folder models' input mean (default 127.5)")
    ap.add_argument("--std", type=float, default=127.5, help="--folder models' input std (default 127.5)")
    args = ap.parse_args()
    if shutil.which("node") is None or shutil.which("npm") is None:
        print("node and npm are needed (the packages and the TensorFlow.js reference come from npm)")
        return 2
    modules = reference_runtime(args.cache)
    if args.folder:  # name: (model.json, kind, size, mean, std, what)
        jobs = {p.parent.name: (p, "cls", 0, args.mean, args.std, "classifier from " + str(args.folder))
                for p in sorted(args.folder.glob("*/model.json"))}
    else:
        jobs = {n: (None, kind, size, 0.0, 1.0 if kind == "sr" else 255.0, what)
                for n, (_, _, kind, size, what) in MODELS.items() if not args.only or n in args.only.split(",")}
    print("| model | what | ONNX nodes | float vs TensorFlow.js | w8a8 openrknn vs float | bicubic vs float | "
          "rknn-toolkit2 w8a8 vs float (same float graph) | export_tflite on LiteRT vs the simulator | build s "
          "(float / w8a8; vendor's whole run) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, (model, kind, size, mean, std, what) in jobs.items():
        with tempfile.TemporaryDirectory() as tmp:
            try:
                row = evaluate(model or model_file(args.cache, name), kind, size, mean, std, modules, Path(tmp))
            except Exception as e:  # one model's failure (or refusal) is a row, not the end of the table
                print(f"| {name} | {what} | | refused: {type(e).__name__}: {str(e)[:160]} | | | | | |", flush=True)
                continue
        print(f"| {name} | {what} | {row['layers']} | {row['float']:.6f} | {row['w8a8']} | "
              f"{row.get('bicubic', '')} | {row['vendor']} | {row['litert']} | {row['build_float']:.1f} / "
              f"{row['build_w8a8']:.1f}; {row['vendor_s']:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
