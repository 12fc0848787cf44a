"""Build time of YOLOX-nano through the public API, with and without range choice, rounds interleaved.

Each build runs in a fresh process (`RKNN().config(...)`, `load_onnx`, `build(dataset=...)`), w8a8 rk3588 and u8
rk1808, 15 calibration images (the even-numbered COCO images, as bench/quant_accuracy.py); median of the rounds.
Ratio: the default build (range choice on) against `config(range_choice=False)`, the build before it existed.
CPU s: the build process's CPU time (all its threads), steadier than wall time on a shared machine.

    python bench/build_time.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MODEL = DATA / "models" / "yolox_nano_coco.onnx"

CHILD = r"""
import json, sys, time
from openrknn.api import RKNN
dtype, target, choice, ds = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4]
r = RKNN()
r.config(mean_values=[[0, 0, 0]], std_values=[[1, 1, 1]], target_platform=target, quantized_dtype=dtype,
         quant_img_RGB2BGR=True, range_choice=choice)
assert r.load_onnx(sys.argv[5]) == 0
t, c = time.perf_counter(), time.process_time()
assert r.build(do_quantization=True, dataset=ds) == 0
print(json.dumps({"build_s": time.perf_counter() - t, "cpu_s": time.process_time() - c}))
"""

CONFIGS = [("w8a8", "rk3588"), ("asymmetric_quantized-u8", "rk1808")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if not MODEL.exists():
        sys.exit(f"model not found: {MODEL}")
    tmp = Path(tempfile.mkdtemp(prefix="build_time_"))
    ds = tmp / "dataset.txt"
    ds.write_text("".join(f"{p}\n" for p in sorted((DATA / "images" / "coco").glob("*.jpg"))[0::2]))
    times = {(d, t, c): [] for d, t in CONFIGS for c in (0, 1)}
    cpu = {k: [] for k in times}
    for k in range(args.rounds):
        order = list(times)
        order = order[k % len(order):] + order[:k % len(order)]  # rotate: no configuration always runs first
        for d, t, c in order:
            out = subprocess.run([sys.executable, "-c", CHILD, d, t, str(c), str(ds), str(MODEL)],
                                 capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"{d} {t} range_choice={c}: {out.stderr[-2000:]}")
            res = json.loads(out.stdout.strip().splitlines()[-1])
            times[(d, t, c)].append(res["build_s"])
            cpu[(d, t, c)].append(res["cpu_s"])
    print(f"{'dtype':26s} {'chip':7s} {'range_choice=False s':>21s} {'default s':>10s} {'ratio':>6s} "
          f"{'CPU s off / default':>20s}  rounds (wall)")
    for d, t in CONFIGS:
        off, on = statistics.median(times[(d, t, 0)]), statistics.median(times[(d, t, 1)])
        c_off, c_on = statistics.median(cpu[(d, t, 0)]), statistics.median(cpu[(d, t, 1)])
        print(f"{d:26s} {t:7s} {off:21.2f} {on:10.2f} {on / off:6.2f} {c_off:9.2f} / {c_on:8.2f}  "
              f"{[round(x, 1) for x in times[(d, t, 0)]]} / {[round(x, 1) for x in times[(d, t, 1)]]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
