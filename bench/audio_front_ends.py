"""Log-mel audio front ends from onnx-asr 0.12.0 (whisper, Kaldi, GigaAM, NeMo, WeSpeaker; each as exported with
ONNX's STFT op and as a Conv), through the public API: float, and int8 with and without the ranges into the Log cut
(`config(log_ranges=...)`, quant/algorithms/log_ranges.py), in the same run.

    python bench/audio_front_ends.py [--cache DIR] [--only whisper80,kaldi,...]

The package comes from PyPI (`pip download --no-deps`, once, into <cache>/dl). Speech: the corpus's espeak-ng clips
(bench/corpus.py), 16000 samples each; calibration on the even-numbered clips, evaluation on the odd-numbered ones
(the two halves are spoken by different voices, which a calibration set does not always match either). Each front
end takes (waveforms [1, 16000], waveforms_lens [1]) and gives (features, lengths). Columns: mean held-out cosine of
the features to onnxruntime on the original file; lengths must be equal.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from corpus import _speech  # noqa: E402  (the corpus's speech clips)
from corpus_fetch import DEFAULT_CACHE, _download  # noqa: E402

PACKAGE = "onnx-asr==0.12.0"
FRONT_ENDS = ["whisper80", "whisper128", "kaldi", "wespeaker", "gigaam_v3", "gigaam_v2", "nemo80", "nemo128",
              "whisper80_conv", "kaldi_conv", "gigaam_v3_conv", "nemo80_conv"]
N = 16000
ROWS = [("float", None, None, True), ("w8a8, ranges as calibrated", "w8a8", "rk3588", False),
        ("w8a8, ranges into the Log cut", "w8a8", "rk3588", True),
        ("u8, ranges as calibrated", "asymmetric_quantized-u8", "rk1808", False),
        ("u8, ranges into the Log cut", "asymmetric_quantized-u8", "rk1808", True)]


def front_end_files(cache: Path) -> Path:
    folder = cache / "onnx_asr_front_ends"
    if not folder.is_dir():
        wheel = _download(PACKAGE, cache / "dl")
        tmp = Path(tempfile.mkdtemp(dir=cache))
        with zipfile.ZipFile(wheel) as z:
            for name in z.namelist():
                if name.startswith("onnx_asr/preprocessors/data/") and name.endswith(".onnx"):
                    z.extract(name, tmp)
        (tmp / "onnx_asr" / "preprocessors" / "data").rename(folder)
    return folder


def clips(cache: Path) -> List[np.ndarray]:
    out = []
    for a in _speech(cache):
        a = np.pad(a, (0, max(0, N - len(a))))[:N] / 32768.0  # onnx-asr takes [-1, 1] samples
        out.append(a[None].astype(np.float32))
    return out


def run(model: Path, audio: List[np.ndarray], work: Path) -> Dict[str, Optional[float]]:
    import onnxruntime as ort

    from openrknn.api import RKNN
    from openrknn.metrics import cosine

    lens = np.array([N], np.int64)
    lines = []
    for i in range(0, len(audio), 2):
        np.save(work / f"w{i}.npy", audio[i])
        np.save(work / f"l{i}.npy", lens)
        lines.append(f"w{i}.npy l{i}.npy")
    (work / "dataset.txt").write_text("\n".join(lines) + "\n")
    ref = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    result: Dict[str, Optional[float]] = {}
    for label, dtype, target, log_ranges in ROWS:
        rk = RKNN(verbose=False)
        rk.config(target_platform=target or "rk3588", log_ranges=log_ranges,
                  **({"quantized_dtype": dtype} if dtype else {}))
        ok = rk.load_onnx(str(model), inputs=["waveforms", "waveforms_lens"], input_size_list=[[1, N], [1]]) == 0 \
            and rk.build(do_quantization=dtype is not None, dataset=str(work / "dataset.txt")) == 0 \
            and rk.init_runtime() == 0
        cos = []
        for x in audio[1::2] if ok else []:
            want = ref.run(None, {"waveforms": x, "waveforms_lens": lens})
            got = rk.inference(inputs=[x, lens])
            if got is None or not np.array_equal(want[1], got[1]):
                ok = False
                break
            cos.append(cosine(want[0], got[0]))
        result[label] = float(np.mean(cos)) if ok else None
        if not ok:
            result[label + " error"] = str(rk.last_error)[:200]
        rk.release()
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", default=str(DEFAULT_CACHE))
    ap.add_argument("--only", default="", help="comma-separated front ends (default: all)")
    args = ap.parse_args(argv)
    cache = Path(args.cache)
    folder = front_end_files(cache)
    audio = clips(cache)
    names = [n for n in args.only.split(",") if n] or FRONT_ENDS
    print("| front end | " + " | ".join(r[0] for r in ROWS) + " |")
    print("|---" * (len(ROWS) + 1) + "|")
    for name in names:
        with tempfile.TemporaryDirectory() as work:
            res = run(folder / f"{name}.onnx", audio, Path(work))
        cells = ["FAIL" if res[r[0]] is None else f"{res[r[0]]:.4f}" for r in ROWS]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
        for r in ROWS:
            if res.get(r[0] + " error"):
                print(f"  {name} {r[0]}: {res[r[0] + ' error']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
