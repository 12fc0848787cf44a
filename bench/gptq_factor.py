"""GPTQ's per-layer factor U (U^T U = (G + damping)^-1) the way quant/algorithms/gptq.py computes it (one Cholesky of
the reversed matrix and a triangular inverse by halves) against the direct route it replaced (a general inverse,
then a Cholesky of it), on the layer sizes real convolutions have (K = input channels x kernel area).

G is the second moment of correlated Gaussian patches (as a conv layer's inputs are). Both routes run on one BLAS
thread, as build() runs them. Time: best of --rounds; max rel. diff: largest |U_new - U_direct| / max |U_direct|.

    python bench/gptq_factor.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from openrknn.quant.algorithms import gptq  # noqa: E402

SIZES = (144, 288, 576, 1152, 2304, 4608)  # 3x3 convs over 16..512 channels


def direct(G: np.ndarray) -> np.ndarray:
    """The route before: H^-1 by a general inverse, symmetrised, then its upper Cholesky factor."""
    k = G.shape[-1]
    diag = np.einsum("bii->bi", G)
    H = G.copy()
    scale = np.maximum(diag.mean(axis=1, keepdims=True), 1e-30)
    H[:, np.arange(k), np.arange(k)] += gptq.DAMP * scale + (diag <= 0) * scale
    hinv = np.linalg.inv(H)
    hinv = (hinv + np.swapaxes(hinv, 1, 2)) / 2
    return np.swapaxes(np.linalg.cholesky(hinv), 1, 2)


def best_time(fn, G, rounds):
    best, out = float("inf"), None
    for _ in range(rounds):
        t = time.perf_counter()
        out = fn(G)
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    print("| K | direct (inverse + Cholesky) | gptq.py (Cholesky + triangular inverse) | speed-up | max rel. diff |")
    print("|---|---|---|---|---|")
    total_old = total_new = 0.0
    with threadpool_limits(limits=1, user_api="blas"):
        for k in SIZES:
            mix = rng.normal(size=(k, k)) / np.sqrt(k) + np.eye(k)
            x = rng.normal(size=(2 * k, k)) @ mix
            G = (x.T @ x / len(x))[None]
            t_old, u_old = best_time(direct, G, args.rounds)
            t_new, u_new = best_time(gptq._upper_inverse_factor, G, args.rounds)
            total_old, total_new = total_old + t_old, total_new + t_new
            diff = np.abs(u_new - u_old).max() / np.abs(u_old).max()
            print(f"| {k} | {t_old * 1e3:.1f} ms | {t_new * 1e3:.1f} ms | {t_old / t_new:.2f}x | {diff:.1e} |")
    print(f"| all | {total_old:.2f} s | {total_new:.2f} s | {total_old / total_new:.2f}x | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
