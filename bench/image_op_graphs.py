"""Kazuhito00/onnx-cv-graph's 140 image-processing graphs (ONNX operators only: colour spaces, filters as Conv,
morphology as MaxPool, thresholds as Where / Greater, warps as GridSample, normalisations, blends; settings as
[1]-shaped float inputs), through the public API as a user deploying pre- or post-processing to the NPU would run
them: float and w8a8 builds against onnxruntime on the file, beside rknn-toolkit2 2.5.0 where bench/corpus.py's
vendor virtualenv exists, and the w8a8 build's export_tflite on LiteRT.

    python bench/image_op_graphs.py [--cache DIR] [--only NAME,NAME] [--no-vendor] [--no-tflite]

Feed, as the repository's demos feed them: RGB / 255, NCHW, at 120x160 (the files take any size); every setting at
the default its models_meta.json gives; a second image input gets another photo, a mask input that photo's gray
level. Calibration: the odd-numbered of the repository's sample photo and eight shared COCO photos; evaluation: the
even-numbered ones (five). The files come from GitHub at a pinned commit into <cache>/github/Kazuhito00/onnx-cv-graph
(where GitHub is not reachable, put them there: the error names the path); the set is checked by one digest.

Metric per model: the worst output's cosine over the evaluation photos and the share of output values off by more
than 2% of the float output's range (a visible error in an image; a flipped pixel in a threshold's mask). A model
whose output size is a setting's value (a resize to a given scale) fails openrknn's load check on zeros; it is then
loaded as the error says, with that setting fixed by input_initial_val, and the row says so.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np

from arrivals import _vendor, cosine, images, litert  # also puts the repository root on sys.path
from github_models import fetch_github

REPO = ("Kazuhito00/onnx-cv-graph", "fed6f8b451ab8a89b8ce210cd5d56c5c2ac5d3f6")
META = ("models/models_meta.json", "770377ae2707bdf3")
SAMPLE = ("assets/sample.jpg", "2a6433f46f5103cf")
MODELS_DIGEST = "44811a01ba51395f"  # sha256 over the 140 files' sha256 digests, in (category, name) order
H, W = 120, 160
OFF = 0.02  # an error over 2% of the output's range counts as a visible one


def fetch_all(cache: Path):
    """(models_meta.json's params, [(category, name, path)], the sample photo's path)."""
    import github_models

    github_models.REPOS.setdefault("cvgraph", REPO)
    meta = json.loads(fetch_github(cache, "cvgraph", *META).read_text())
    files = sorted((c["id"], m) for c in meta["categories"] for m in c["models"])
    paths = [fetch_github(cache, "cvgraph", f"models/{cat}/{m}.onnx") for cat, m in files]
    digest = hashlib.sha256(b"".join(hashlib.sha256(p.read_bytes()).digest() for p in paths)).hexdigest()
    if not digest.startswith(MODELS_DIGEST):
        raise RuntimeError(f"the model files under {paths[0].parents[1]} do not match the pinned commit's "
                           f"(digest {digest[:16]}, expected {MODELS_DIGEST})")
    return meta["params"], [(c, m, p) for (c, m), p in zip(files, paths)], fetch_github(cache, "cvgraph", *SAMPLE)


class Feeds:
    """One model's inputs: how onnxruntime gets them (float, NCHW) and how the RKNN takes them (pixels NHWC uint8
    where the input is a 4-D float image, else the array as onnxruntime gets it)."""

    def __init__(self, path: Path, params: dict):
        import onnx

        self.inputs = []
        for i in onnx.load(str(path), load_external_data=False).graph.input:
            t = i.type.tensor_type
            dims = [d.dim_value or d.dim_param for d in t.shape.dim]
            self.inputs.append((i.name, dims, onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)))
        self.settings = {n: np.array([params.get(n, [0, 1, 0.5])[2]], np.float32)
                         for n, dims, _ in self.inputs if len(dims) <= 1}

    def is_image(self, name) -> bool:
        return any(n == name and len(d) == 4 and t.kind == "f" for n, d, t in self.inputs)

    def shapes(self) -> list:
        out = []
        for name, dims, _ in self.inputs:
            if name in self.settings:
                out.append([1])
            elif len(dims) == 4:
                c = 1 if name == "mask" else 3
                out.append([1, H, W, c] if dims[-1] in (1, 3) and dims[1] not in (1, 3) else [1, c, H, W])
            else:
                out.append([H, W, 3] if dims[-1] == 3 else [3, H, W])
        return out

    def pair(self, photo: np.ndarray, other: np.ndarray):
        """(onnxruntime's feed dict, the RKNN's input list) for one photo (and the second image input's photo)."""
        ort_feed, ours = {}, []
        for (name, dims, dtype), shape in zip(self.inputs, self.shapes()):
            if name in self.settings:
                ort_feed[name] = self.settings[name]
                ours.append(self.settings[name])
                continue
            pix = other if name == "input2" else photo
            if name == "mask":
                pix = np.round(pix.mean(-1, keepdims=True)).astype(np.uint8)
            nhwc = len(shape) in (3, 4) and shape[-1] in (1, 3)
            x = pix if nhwc else pix.transpose(2, 0, 1)
            x = x[None] if len(shape) == 4 else x
            if dtype.kind != "f":
                ort_feed[name] = x.astype(dtype)
                ours.append(ort_feed[name])
            else:
                ort_feed[name] = x.astype(np.float32) / np.float32(255)
                ours.append(pix if self.is_image(name) else ort_feed[name])
        return ort_feed, ours

    def config(self) -> dict:
        if not any(self.is_image(n) for n, _, _ in self.inputs):
            return {}  # nothing is pixels: no mean / std (config refuses them)
        means = [[0] * (1 if n == "mask" else 3) if self.is_image(n) else [0] for n, _, _ in self.inputs]
        stds = [[255] * (1 if n == "mask" else 3) if self.is_image(n) else [1] for n, _, _ in self.inputs]
        return {"mean_values": means, "std_values": stds}


def batched(feeds: Feeds, arrays: list, fixed: bool) -> list:
    """The RKNN's inputs with the pixels batched ([1, H, W, C]), as LiteRT and the vendor's inference take them."""
    names = [n for n, _, _ in feeds.inputs if not (fixed and n in feeds.settings)]
    return [x[None] if feeds.is_image(n) and x.ndim == 3 else x for n, x in zip(names, arrays)]


def judge(outs: list, refs: list) -> tuple:
    """(worst cosine, share of values off by more than OFF of the reference output's range) over the photos."""
    worst, off, total = 1.0, 0, 0
    for got, want in zip(outs, refs):
        for a, b in zip(got, want):
            a = np.asarray(a, np.float64).reshape(np.shape(b))
            b = np.asarray(b, np.float64)
            worst = min(worst, cosine(a, b))
            span = max(float(b.max() - b.min()), 1e-12)
            off += int((np.abs(a - b) > OFF * span).sum())
            total += b.size
    return worst, off / max(total, 1)


def cell(outs, refs) -> str:
    worst, off = judge(outs, refs)
    return f"{worst:.5f} ({100 * off:.2f}% off)"


def build(path: Path, feeds: Feeds, dtype, calib: list, work: Path, fixed):
    """The RKNN as a user builds it: config(mean/std per input), load_onnx(input_size_list, input_initial_val),
    build(dataset) with the calibration photos' inputs as .npy files."""
    from openrknn.api import RKNN

    if fixed:  # the fixed settings are no longer inputs: neither fed nor calibrated
        calib = [[x for (n, _, _), x in zip(feeds.inputs, arrays) if n not in feeds.settings] for arrays in calib]
    lines = []
    for k, arrays in enumerate(calib):
        for j, a in enumerate(arrays):
            np.save(work / f"c{k}_{j}.npy", a)
        lines.append(" ".join(f"c{k}_{j}.npy" for j in range(len(arrays))))
    (work / "ds.txt").write_text("\n".join(lines) + "\n")
    cfg = feeds.config()
    if fixed:  # the fixed settings are no longer inputs
        keep = [k for k, (n, _, _) in enumerate(feeds.inputs) if n not in feeds.settings]
        cfg = {key: [v[k] for k in keep] for key, v in cfg.items()}
    r = RKNN(verbose=False)
    r.config(target_platform="rk3588", **cfg, **({"quantized_dtype": dtype} if dtype else {}))
    shapes = feeds.shapes()
    if r.load_onnx(str(path), input_size_list=shapes,
                   input_initial_val=[feeds.settings.get(n) for n, _, _ in feeds.inputs] if fixed else None) != 0:
        raise RuntimeError(f"load_onnx: {r.last_error}")
    if r.build(do_quantization=dtype is not None, dataset=str(work / "ds.txt")) != 0:
        raise RuntimeError(f"build: {r.last_error}")
    r.init_runtime()
    return r


def row(name: str, path: Path, params: dict, photos: list, work: Path, vendor: bool, tflite: bool) -> list:
    import onnxruntime as ort

    feeds = Feeds(path, params)
    pairs = [feeds.pair(p, photos[(k + 3) % len(photos)]) for k, p in enumerate(photos)]
    held, calib = pairs[0::2], pairs[1::2]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    refs = [sess.run(None, f) for f, _ in held]
    what = ", ".join(f"{n} {list(s)}" for (n, _, _), s in zip(feeds.inputs, feeds.shapes()) if n not in feeds.settings)
    if feeds.settings:
        what += f"; settings {', '.join(feeds.settings)}"
    cells, fixed = [f"{name} ({what})"], False
    for dtype in (None, "w8a8"):
        try:
            r = build(path, feeds, dtype, [ours for _, ours in calib], work, fixed)
        except RuntimeError as e:
            if fixed or not feeds.settings or "input_initial_val" not in str(e):
                cells += [f"FAIL: {str(e)[:200]}"] + [""] * (3 if dtype is None else 2)
                return cells
            fixed = True  # as the error says: the settings fixed with input_initial_val
            cells[0] += f"; its load refused the zeros fed to {', '.join(feeds.settings)}, loaded with them fixed"
            r = build(path, feeds, dtype, [ours for _, ours in calib], work, fixed)
        kept = [[x for (n, _, _), x in zip(feeds.inputs, ours) if not (fixed and n in feeds.settings)]
                for _, ours in held]
        cells.append(cell([r.inference(inputs=k) for k in kept], refs))
        if dtype:
            cells.append(vendor_cell(path, feeds, calib, held, refs, work, fixed) if vendor else "not run")
            cells.append(litert(r, [batched(feeds, k, fixed) for k in kept[:2]], work) if tflite else "not run")
        r.release()
    return cells


def vendor_cell(path: Path, feeds: Feeds, calib: list, held: list, refs: list, work: Path, fixed: bool) -> str:
    """rknn-toolkit2 2.5.0 on the same files and photos (calibration NCHW as it takes it, evaluation NHWC)."""
    names = [n for n, _, _ in feeds.inputs]
    cfg = feeds.config()
    keep = [k for k, n in enumerate(names) if not (fixed and n in feeds.settings)]
    job = {"input_names": names, "shapes": feeds.shapes()}
    if cfg:
        job.update(means=[cfg["mean_values"][k] for k in keep], stds=[cfg["std_values"][k] for k in keep])
    if fixed:
        job["input_initial_val"] = [feeds.settings[n].tolist() if n in feeds.settings else None for n in names]

    def nchw(ours):
        return [x.transpose(2, 0, 1)[None] if feeds.is_image(n) and s[1] in (1, 3) else x[None]
                if feeds.is_image(n) else x for (n, _, _), s, x in zip(kept, feeds.shapes(), ours)]
    kept = [i for i in feeds.inputs if not (fixed and i[0] in feeds.settings)]
    unfixed = [[x for (n, _, _), x in zip(feeds.inputs, o) if not (fixed and n in feeds.settings)] for _, o in calib]
    said, outs = _vendor(path, job, [nchw(o) for o in unfixed],
                         [batched(feeds, [x for (n, _, _), x in zip(feeds.inputs, o)
                                          if not (fixed and n in feeds.settings)], fixed) for _, o in held], work)
    if outs is None:
        return said
    return f"{cell([[o[k] for k in sorted(o)] for o in outs], refs)} ({said.split(' (')[0]})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=Path("/work/cache/corpus"))
    ap.add_argument("--only", default="", help="comma-separated model names, e.g. sobel,hsv_h")
    ap.add_argument("--no-vendor", action="store_true", help="skip rknn-toolkit2 (one process per model)")
    ap.add_argument("--no-tflite", action="store_true", help="skip the export_tflite column")
    args = ap.parse_args()
    import cv2

    params, files, sample = fetch_all(args.cache)
    photos = [cv2.resize(cv2.imread(str(sample))[:, :, ::-1], (W, H), interpolation=cv2.INTER_AREA)]
    photos += images(["coco"], None)[:8]
    photos = [np.ascontiguousarray(cv2.resize(p, (W, H), interpolation=cv2.INTER_AREA)) for p in photos]
    only = set(filter(None, args.only.split(",")))
    print("| model (inputs) | float vs onnxruntime | openrknn w8a8 vs onnxruntime | rknn-toolkit2 w8a8 vs "
          "onnxruntime | export_tflite on LiteRT vs the simulator |")
    print("|---|---|---|---|---|")
    rows = []
    for cat, name, path in files:
        if only and name not in only:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            try:
                cells = row(f"{cat}/{name}", path, params.get(name, {}), photos, Path(tmp), not args.no_vendor,
                            not args.no_tflite)
            except Exception as e:  # one model's failure is a row, not the end of the bench
                cells = [f"{cat}/{name}", f"FAIL: {type(e).__name__}: {str(e)[:160]}", "", "", ""]
        rows.append(cells)
        print("| " + " | ".join(cells) + " |", flush=True)
    summary(rows)


def summary(rows: list) -> None:
    def cos(c: str):
        try:
            return float(c.split(" ")[0])
        except (ValueError, IndexError):
            return None
    fl, ours, theirs = ([cos(r[k]) for r in rows] for k in (1, 2, 3))
    print(f"\n{len(rows)} models. Float: {sum(c is not None for c in fl)} built, "
          f"{sum(c is not None and c >= 0.9999 for c in fl)} at cosine >= 0.9999.")
    for who, cs in (("openrknn w8a8", ours), ("rknn-toolkit2 w8a8", theirs)):
        ok = [c for c in cs if c is not None]
        if ok:
            print(f"{who}: {len(ok)} built; cosine >= 0.999: {sum(c >= 0.999 for c in ok)}, >= 0.99: "
                  f"{sum(c >= 0.99 for c in ok)}; mean {np.mean(ok):.5f}")
    both = [(a, b) for a, b in zip(ours, theirs) if a is not None and b is not None]
    if both:
        print(f"Side by side on the {len(both)} both built: openrknn ahead on {sum(a > b + 1e-5 for a, b in both)}, "
              f"within 1e-5 on {sum(abs(a - b) <= 1e-5 for a, b in both)}, behind on "
              f"{sum(a < b - 1e-5 for a, b in both)}.")


if __name__ == "__main__":
    main()
