"""GPTQ's rounding of one layer the way quant/algorithms/gptq.py does it (one Cholesky factorisation of the damped
input moment, then the nearest-plane sweep over it) against the textbook route (a general inverse of the damped
moment, the upper Cholesky factor of that inverse, then the error-feedback sweep over it:
openrknn.testing.textbook_gptq), on the layer sizes real convolutions have (K = input channels x kernel area; build
rounds layers up to 2304 inputs) and 256 output channels.

G is the second moment of correlated Gaussian patches (as a conv layer's inputs are). Both run with numpy's default
BLAS threads, as build() runs them. Time: best of --rounds; "same integers": the share of weights both routes round
alike (the two are the same algorithm, so anything below 100% is a floating-point tie).

    python bench/gptq_factor.py [--rounds 3]
    git show REV:openrknn/quant/algorithms/gptq.py > /tmp/gptq_rev.py   # an earlier gptq.py, timed beside
    python bench/gptq_factor.py --against /tmp/gptq_rev.py
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from openrknn.quant.algorithms.gptq import gptq_rounding  # noqa: E402
from openrknn.quant.schemes import get_scheme  # noqa: E402
from openrknn.testing import textbook_gptq  # noqa: E402

SIZES = (144, 288, 576, 1152, 2304, 4608)  # 3x3 convs over 16..512 channels
ROWS = 256


def best_time(fn, rounds):
    best, out = float("inf"), None
    for _ in range(rounds):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--against", type=Path, help="another gptq.py (e.g. from git history), timed in its own column")
    args = ap.parse_args()
    other = None
    if args.against:
        spec = importlib.util.spec_from_file_location("gptq_against", args.against)
        other = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(other)
    fmt = get_scheme("w8a8").weight
    rng = np.random.default_rng(0)
    against = f" {args.against.name} | speed-up | same integers |" if other else ""
    print(f"| K | textbook (inverse, its Cholesky, error feedback) | gptq.py (one Cholesky, nearest plane) | speed-up "
          f"| same integers |{against}")
    print("|---|---|---|---|---|" + ("---|---|---|" if other else ""))
    total_old = total_new = total_other = 0.0
    for k in SIZES:
        mix = rng.normal(size=(k, k)) / np.sqrt(k) + np.eye(k)
        x = rng.normal(size=(2 * k, k)) @ mix
        G = x.T @ x / len(x)
        w = rng.normal(size=(ROWS, k)) / np.sqrt(k)
        s = np.abs(w).max(axis=1) / fmt.qmax
        z = np.zeros(ROWS, np.int64)
        t_old, q_old = best_time(lambda: textbook_gptq(w, s, z, fmt.qmin, fmt.qmax, G), args.rounds)
        t_new, q_new = best_time(lambda: gptq_rounding(w, s, z, fmt.qmin, fmt.qmax, G), args.rounds)
        total_old, total_new = total_old + t_old, total_new + t_new
        cells = ""
        if other:
            t_other, q_other = best_time(lambda: other.gptq_rounding(w, s, z, fmt.qmin, fmt.qmax, G), args.rounds)
            total_other += t_other
            cells = f" {t_other * 1e3:.1f} ms | {t_other / t_new:.2f}x | {np.mean(q_other == q_new):.4%} |"
        print(f"| {k} | {t_old * 1e3:.1f} ms | {t_new * 1e3:.1f} ms | {t_old / t_new:.2f}x | "
              f"{np.mean(q_old == q_new):.4%} |{cells}")
    cells = f" {total_other:.2f} s | {total_other / total_new:.2f}x | |" if other else ""
    print(f"| all | {total_old:.2f} s | {total_new:.2f} s | {total_old / total_new:.2f}x | |{cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
