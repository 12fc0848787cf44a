"""config(dynamic_input=...) on real models through the public API: one int8 build (w8a8, rk3588) that takes several
input sizes, against a separate build at each size, and rknn-toolkit2 2.5.0 both ways, in the same run.

    python bench/dynamic_input.py [--cache DIR]

The models, each at three shape sets (the largest is where one build calibrates; calibration on the even-numbered
images at that size, evaluation on the odd-numbered ones at every size):
- ESPCN x2 super-resolution, the webcam upscaler of SCUMBAG0LEE/ESPCN-Realtime-Webcam-Upscaler (pinned commit,
  sha256-checked): its quality model as the ONNX file ships (opset 20, dynamic H and W), and its performance model
  from the .pth checkpoint, rebuilt and traced to TorchScript as a user of the PyTorch path would (load_pytorch
  then needs no input_size_list either); frames of 180x320, 240x320 and 360x640 made from the shared COCO photos by
  PIL's bicubic downscale, RGB, x / 255. Metric: PSNR of the 8-bit picture against the float model's.
- PP-OCRv4 recognizer (the corpus file): text strips of the shared text photos at widths 160, 320 and 640 (the
  widths a recognizer meets); metric: the worst output's cosine to onnxruntime and the CTC time steps whose class
  agrees.
- PP-OCRv4 detector (the corpus file): the text photos at 320x480, 480x640 and 640x640; metric: the worst output's
  cosine and the IoU of the text maps (> 0.3).
rknn-toolkit2 needs opset <= 19: the ESPCN file goes to it through onnx's version converter, as its error leads a
user to do; the traced .pt goes to its load_pytorch (torch 2.13 in its virtualenv) at the largest set.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from arrivals import _vendor, cosine, images  # noqa: E402  (also puts the repository root on sys.path)
from corpus import BY_NAME, _image_feed, _image_paths, agreement, reference_input  # noqa: E402
from corpus_fetch import fetch  # noqa: E402
from github_models import _picture_psnr, fetch_github, model, sr_picture  # noqa: E402

SR_SETS = [[[1, 3, 180, 320]], [[1, 3, 240, 320]], [[1, 3, 360, 640]]]
REC_SETS = [[[1, 3, 48, 160]], [[1, 3, 48, 320]], [[1, 3, 48, 640]]]
DET_SETS = [[[1, 3, 320, 480]], [[1, 3, 480, 640]], [[1, 3, 640, 640]]]


def _largest(sets):
    """The set a dynamic_input build calibrates at (config's own choice)."""
    from openrknn.config import make_config

    return make_config(dynamic_input=sets).dynamic_base


def _write_dataset(work: Path, feeds: list) -> Path:
    lines = []
    for k, f in enumerate(feeds):
        np.save(work / f"cal{k}.npy", f)
        lines.append(f"cal{k}.npy")
    (work / "dataset.txt").write_text("\n".join(lines) + "\n")
    return work / "dataset.txt"


def _openrknn(path: Path, loader: str, sets, cfg: dict, calib: list, work: Path):
    """One w8a8 build: with sets of several shapes (dynamic_input), or one set loaded at that size. Returns
    (RKNN ready to run, build seconds, .rknn bytes)."""
    from openrknn.api import RKNN

    dataset = _write_dataset(work, calib)
    r = RKNN(verbose=False)
    dynamic = {"dynamic_input": sets} if len(sets) > 1 else {}
    assert r.config(target_platform="rk3588", quantized_dtype="w8a8", **cfg, **dynamic) == 0, r.last_error
    sizes = None if dynamic else sets[0]
    t = time.perf_counter()
    ok = r.load_pytorch(str(path), input_size_list=sizes) if loader == "pytorch" else \
        r.load_onnx(str(path), input_size_list=sizes)
    assert ok == 0, r.last_error
    assert r.build(do_quantization=True, dataset=str(dataset)) == 0, r.last_error
    seconds = time.perf_counter() - t
    assert r.export_rknn(str(work / "m.rknn")) == 0
    assert r.init_runtime() == 0
    return r, seconds, (work / "m.rknn").stat().st_size


def compare(name: str, path: Path, loader: str, sets, cfg: dict, feeds_at, refs_at, metric, job, work: Path) -> list:
    """Rows (one per set) of one model: the dynamic build, a build per set, the vendor's dynamic build; then the
    build time and file size of one build against the separate ones."""
    base = _largest(sets)
    held = {str(s): feeds_at(s)[1] for s in sets}
    refs = {str(s): refs_at(s, held[str(s)]) for s in sets}
    one, one_s, one_bytes = _openrknn(path, loader, sets, cfg, feeds_at(base)[0], work)
    shared = {str(s): metric([one.inference(inputs=[x])[0] for x in held[str(s)]], refs[str(s)]) for s in sets}
    one.release()
    own, own_s, own_bytes = {}, 0.0, 0
    for s in sets:
        r, sec, size = _openrknn(path, loader, [s], cfg, feeds_at(s)[0], work)
        own[str(s)] = metric([r.inference(inputs=[x])[0] for x in held[str(s)]], refs[str(s)])
        own_s, own_bytes = own_s + sec, own_bytes + size
        r.release()
    vendor = {str(s): "" for s in sets}
    vendor_own = dict(vendor)
    if job is not None:
        path_v = job.pop("model")
        feeds = [x for s in sets for x in held[str(s)]]
        said, outs = _vendor(path_v, {**job, "dynamic_input": sets},
                             [x.transpose(0, 3, 1, 2) for x in feeds_at(base)[0]], feeds, work)
        k = 0
        for s in sets:
            n = len(held[str(s)])
            vendor[str(s)] = said if outs is None else metric([o[0] for o in outs[k:k + n]], refs[str(s)])
            k += n
            said_own, outs_own = _vendor(path_v, {**job, "shape": s[0]},
                                         [x.transpose(0, 3, 1, 2) for x in feeds_at(s)[0]], held[str(s)], work)
            vendor_own[str(s)] = said_own if outs_own is None else metric([o[0] for o in outs_own], refs[str(s)])
    rows = [[name if k == 0 else "", "x".join(map(str, s[0])) + (" (base)" if s == base else ""), shared[str(s)],
             own[str(s)], vendor[str(s)], vendor_own[str(s)]] for k, s in enumerate(sets)]
    rows.append(["", "one file for all sets", f"build {one_s:.1f} s, {one_bytes / 1e3:.0f} kB",
                 f"{len(sets)} builds {own_s:.1f} s, {len(sets)} files {own_bytes / 1e3:.0f} kB", "", ""])
    return rows


def _sr_feeds(photos: list):
    from PIL import Image

    def at(shapes):
        _, _, h, w = shapes[0]
        frames = []
        for p in photos:
            p = np.ascontiguousarray(p.transpose(1, 0, 2)) if p.shape[0] > p.shape[1] else p
            frames.append(np.asarray(Image.fromarray(p).resize((w, h), Image.BICUBIC))[None])
        return frames[0::2][:10], frames[1::2][:8]
    return at


def _sr_metric(outs, refs) -> str:
    return f"PSNR {np.mean([_picture_psnr(sr_picture(o), sr_picture(r)) for o, r in zip(outs, refs)]):.1f} dB"


def _onnx_refs(path: Path, mean, std, layout="nchw"):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def refs(shapes, held):
        return [sess.run(None, {name: ((x.astype(np.float32) - np.float32(mean)) / np.float32(std))
                                .transpose(0, 3, 1, 2)})[0] for x in held]
    return refs


def espcn_rows(cache: Path, work: Path) -> list:
    import onnx
    from onnx import version_converter

    path = model(cache, "espcn_quality")
    opset19 = work / "espcn_opset19.onnx"
    onnx.save(version_converter.convert_version(onnx.load(str(path)), 19), str(opset19))
    cfg = {"mean_values": [[0] * 3], "std_values": [[255] * 3]}
    job = {"model": opset19, "input_name": "input", "mean": [0] * 3, "std": [255] * 3}
    feeds = _sr_feeds(images(["coco"], None))
    return compare("ESPCN x2 quality (ONNX, opset 20)", path, "onnx", SR_SETS, cfg, feeds,
                   _onnx_refs(path, 0, 255), _sr_metric, job, work)


def espcn_pytorch_rows(cache: Path, work: Path) -> list:
    """The performance model's checkpoint as a PyTorch user has it: rebuilt (conv 5x5 -> 32, 3x3 -> 16, 3x3 -> 12,
    PixelShuffle 2), traced at one size, loaded at every set."""
    import torch

    state = torch.load(str(fetch_github(cache, "espcn", "Models/performance_espcn_x2.pth", "2b7425f98a1aa683")),
                       map_location="cpu", weights_only=False)["model_state_dict"]

    class ESPCN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = torch.nn.Conv2d(3, 32, 5, padding=2)
            self.conv2 = torch.nn.Conv2d(32, 16, 3, padding=1)
            self.conv3 = torch.nn.Conv2d(16, 12, 3, padding=1)
            self.shuffle = torch.nn.PixelShuffle(2)

        def forward(self, x):
            return self.shuffle(self.conv3(torch.relu(self.conv2(torch.relu(self.conv1(x))))))

    net = ESPCN().eval()
    net.load_state_dict(state)
    pt = work / "espcn_performance.pt"
    torch.jit.trace(net, torch.rand(1, 3, 240, 320)).save(str(pt))

    def refs(shapes, held):
        with torch.no_grad():
            return [net(torch.from_numpy(x.astype(np.float32) / 255).permute(0, 3, 1, 2)).numpy() for x in held]

    cfg = {"mean_values": [[0] * 3], "std_values": [[255] * 3]}
    job = {"model": pt, "loader": "pytorch", "shape": _largest(SR_SETS)[0], "mean": [0] * 3, "std": [255] * 3}
    return compare("ESPCN x2 performance (.pth -> traced .pt)", pt, "pytorch", SR_SETS, cfg,
                   _sr_feeds(images(["coco"], None)), refs, _sr_metric, job, work)


def _corpus_rows(cache: Path, work: Path, name: str, sets, kind_metric: str) -> list:
    entry = BY_NAME[name]
    path = fetch(entry, cache)
    paths = _image_paths(entry["images"])

    def feeds_at(shapes):
        e = {**entry, "shape": shapes[0]}
        feeds = [_image_feed(p, e) for p in paths]
        return feeds[0::2][:10], feeds[1::2][:8]

    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    iname = sess.get_inputs()[0].name

    def refs_at(shapes, held):
        e = {**entry, "shape": shapes[0]}
        return [sess.run(None, {iname: reference_input(e, x)})[0] for x in held]

    def metric(outs, refs) -> str:
        outs = [np.asarray(o).reshape(r.shape) for o, r in zip(outs, refs)]
        agree = np.mean([agreement(kind_metric, [r], [o]) for o, r in zip(outs, refs)])
        return f"cosine {np.mean([cosine(o, r) for o, r in zip(outs, refs)]):.4f}, {kind_metric} agreement {agree:.3f}"

    cfg = {"mean_values": [entry["mean"]], "std_values": [entry["std"]]}
    job = {"model": path, "input_name": iname, "mean": entry["mean"], "std": entry["std"]}
    return compare(f"{name} (corpus)", path, "onnx", sets, cfg, feeds_at, refs_at, metric, job, work)


def ppocr_rec_rows(cache: Path, work: Path) -> list:
    return _corpus_rows(cache, work, "ppocr_v4_rec", REC_SETS, "ocr-rec")


def ppocr_det_rows(cache: Path, work: Path) -> list:
    return _corpus_rows(cache, work, "ppocr_v4_det", DET_SETS, "ocr-det")


RUNS = (espcn_rows, espcn_pytorch_rows, ppocr_rec_rows, ppocr_det_rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=Path("/work/cache/corpus"))
    ap.add_argument("--only", default="", help="comma-separated runs, e.g. espcn_rows")
    args = ap.parse_args()
    print("w8a8 on rk3588; every cell against the float model at that set")
    print("| model | shape set | openrknn: one build, dynamic_input | openrknn: a build per set | "
          "rknn-toolkit2 2.5.0: dynamic_input | rknn-toolkit2 2.5.0: a build per set |")
    print("|---|---|---|---|---|---|")
    for run in RUNS:
        if args.only and run.__name__ not in args.only.split(","):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            try:
                rows = run(args.cache, Path(tmp))
            except Exception as e:
                rows = [[run.__name__, f"FAIL: {str(e)[:200]}", "", "", "", ""]]
        for row in rows:
            print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
