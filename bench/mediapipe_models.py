"""MediaPipe's own TFLite models (the 14 that mediapipe 0.10.14's wheel ships under mediapipe/modules), through the
public API as a user would run them: load_tflite, a float and a w8a8 build against LiteRT on the original file, and
the w8a8 build's export_tflite on LiteRT against our simulator.

    python bench/mediapipe_models.py [--cache DIR] [--only NAME,NAME]

The wheel comes from PyPI (`pip download --no-deps mediapipe==0.10.14`, once, into <cache>/dl); only its .tflite
files are read, nothing is installed. Inputs: the shared COCO and misc photos resized to each model's input, as
[0, 1] floats (what these models take; config mean 0, std 255 on the uint8 feed), calibration on 10, evaluation on
6 others. Most of these models have several outputs, some of them one number per image (a presence score, a
handedness): every output is compared as one series over the evaluation images, and the table gives each output's
cosine in the file's output order.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import zipfile
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
SHARED = ROOT.parent / "shared" / "data" / "images"
SPEC = "mediapipe==0.10.14"

from corpus_fetch import _download  # noqa: E402  (pip download --no-deps, once per package)


def fetch(cache: Path) -> list:
    out = cache / "mediapipe_0.10.14"
    if not (out / ".complete").is_file():
        with zipfile.ZipFile(_download(SPEC, cache / "dl")) as z:
            for name in z.namelist():
                if name.startswith("mediapipe/modules/") and name.endswith(".tflite"):
                    (out / Path(name).name).parent.mkdir(parents=True, exist_ok=True)
                    (out / Path(name).name).write_bytes(z.read(name))
        (out / ".complete").write_text("")
    return sorted(out.glob("*.tflite"))


def series_cosines(ours: list, theirs: list) -> list:
    """Per output: the cosine of that output over all images, as one vector."""
    out = []
    for k in range(len(theirs[0])):
        a = np.concatenate([np.ravel(o[k]) for o in ours]).astype(np.float64)
        b = np.concatenate([np.ravel(t[k]) for t in theirs]).astype(np.float64)
        out.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30)))
    return out


def run(path: Path, work: Path) -> list:
    from ai_edge_litert.interpreter import Interpreter

    from openrknn.api import RKNN
    from openrknn.runtime.tflite_runner import TfliteRunner

    lite = Interpreter(str(path))
    lite.allocate_tensors()
    ins, outs = lite.get_input_details(), lite.get_output_details()
    h, w = int(ins[0]["shape"][1]), int(ins[0]["shape"][2])
    files = sorted(p for f in ("coco", "misc") for p in (SHARED / f).iterdir() if p.suffix.lower() in (".jpg", ".png"))
    pics = [cv2.resize(cv2.imread(str(p))[:, :, ::-1], (w, h)) for p in files[:24]]
    calib, held = pics[0::2][:10], pics[1::2][:6]
    for k, c in enumerate(calib):
        cv2.imwrite(str(work / f"{k}.png"), c[:, :, ::-1])
    (work / "ds.txt").write_text("".join(f"{k}.png\n" for k in range(len(calib))))

    def reference(img):
        lite.set_tensor(ins[0]["index"], img[None].astype(np.float32) / 255.0)
        lite.invoke()
        return [lite.get_tensor(o["index"]).copy() for o in outs]

    refs = [reference(x) for x in held]
    cells = [f"{w}x{h}, {len(outs)} output(s)"]
    for dtype in (None, "w8a8"):
        r = RKNN(verbose=False)
        r.config(target_platform="rk3588", mean_values=[[0, 0, 0]], std_values=[[255, 255, 255]],
                 **({"quantized_dtype": dtype} if dtype else {}))
        if r.load_tflite(str(path)) != 0 or r.build(do_quantization=dtype is not None,
                                                    dataset=str(work / "ds.txt")) != 0 or r.init_runtime() != 0:
            return cells + [f"FAIL: {str(r.last_error)[:140]}", "", ""]
        got = [r.inference(inputs=[x]) for x in held]
        cells.append(", ".join(f"{c:.4f}" for c in series_cosines(got, refs)))
        if dtype:
            if r.export_tflite(str(work / "m.tflite")) != 0:
                cells.append(f"export refused: {str(r.last_error)[:120]}")
            else:
                runner = TfliteRunner(str(work / "m.tflite"), delegate=None)
                cells.append(", ".join(f"{c:.5f}" for c in series_cosines([runner.run([x[None]]) for x in held],
                                                                          got)))
        r.release()
    return cells


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=Path("/work/cache/corpus"))
    ap.add_argument("--only", default="", help="comma-separated model names (file stems)")
    args = ap.parse_args()
    print("| model | input | float vs LiteRT, per output | w8a8 vs LiteRT, per output | its export_tflite on LiteRT vs "
          "the simulator, per output |")
    print("|---|---|---|---|---|")
    for path in fetch(args.cache):
        if args.only and path.stem not in args.only.split(","):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            try:
                cells = run(path, Path(tmp))
            except Exception as e:  # one model's failure is a row, not the end of the bench
                cells = ["", "FAIL: " + " ".join(str(e).split())[:140], "", ""]
        print("| " + " | ".join([path.stem] + cells) + " |", flush=True)


if __name__ == "__main__":
    main()
