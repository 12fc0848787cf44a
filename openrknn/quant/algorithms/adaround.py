"""AdaRound-style learned weight rounding (Nagel et al., 2020) of one layer, in numpy.

Each weight chooses floor or ceil through a soft variable h(V) in [0, 1]; Adam minimises the layer's output error
tr(dW G dW^T) + lambda * sum(1 - |2h - 1|^beta) with beta annealed 20 -> 2, which drives every h to 0 or 1.
The statistics G and the per-layer driver live in rounding.py.
"""

from __future__ import annotations

import numpy as np

ZETA, GAMMA = 1.1, -0.1


def _h(v: np.ndarray) -> np.ndarray:
    return np.clip(1.0 / (1.0 + np.exp(-v)) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


LOW_RANK = 96  # a shared G with K above this is applied as its top eigenpairs + an isotropic rest


def _gram_product(G: np.ndarray, rows: int):
    """d -> d @ G (per-row G: einsum). A large shared G is replaced by U_r L_r U_r^T + s^2 (I - U_r U_r^T) with
    the r largest eigenpairs, so each step costs O(rows K r) instead of O(rows K^2)."""
    if G.ndim == 3:
        return lambda d: np.einsum("ck,ckj->cj", d, G)
    k = G.shape[0]
    if k <= 4 * LOW_RANK or rows * k * k < 1e8:  # dense is cheaper than an eigendecomposition here
        return lambda d: d @ G
    vals, vecs = np.linalg.eigh(G)
    u, lam = vecs[:, -LOW_RANK:], vals[-LOW_RANK:]
    rest = float(max(vals[:-LOW_RANK].mean(), 0.0))
    return lambda d: ((d @ u) * (lam - rest)) @ u.T + rest * d


def optimise_rounding(w: np.ndarray, scale: np.ndarray, zp: np.ndarray, qmin: int, qmax: int, G: np.ndarray,
                      iters: int = 300, lam: float = 0.3, lr: float = 0.05) -> np.ndarray:
    """Learned rounding of a 2-D weight [C_out, K] (per-row scale/zp) against G [K, K] (shared) or [C_out, K, K]
    (per row); returns the nominal integer weights. Rows are independent, so the error is measured in units of
    each row's step and G is normalised by its mean diagonal (the loss is O(1) per weight like the regulariser)."""
    s = np.asarray(scale, np.float64).reshape(-1, 1)
    z = np.asarray(zp, np.float64).reshape(-1, 1)
    x = w / s
    base = np.floor(x)
    lo, hi = np.maximum((qmin - z) - base, 0.0), np.minimum((qmax - z) - base, 1.0)  # stay on the integer grid
    if G.ndim == 2:
        Gn = G / max(float(np.trace(G)) / G.shape[0], 1e-30)
    else:
        Gn = G / np.maximum(np.einsum("cii->c", G) / G.shape[1], 1e-30)[:, None, None]
    times_g = _gram_product(Gn, w.shape[0])
    # start where h(V) equals the float remainder: round-to-nearest is the h >= 0.5 cut of this point
    p = np.clip((x - base - GAMMA) / (ZETA - GAMMA), 1e-4, 1 - 1e-4)
    v = np.log(p / (1 - p))
    m1 = np.zeros_like(v)
    m2 = np.zeros_like(v)
    for t in range(1, iters + 1):
        beta = 20 - (20 - 2) * min(1.0, t / (0.8 * iters))
        sig = 1.0 / (1.0 + np.exp(-v))
        h_raw = sig * (ZETA - GAMMA) + GAMMA
        h = np.clip(h_raw, lo, hi)
        d = base + h - x                                           # rounding error in steps
        grad_h = 2 * times_g(d)
        hb = 2 * h - 1
        grad_h += -lam * beta * np.sign(hb) * np.abs(hb) ** (beta - 1) * 2
        gv = grad_h * ((h_raw > lo) & (h_raw < hi)) * sig * (1 - sig) * (ZETA - GAMMA)
        m1 = 0.9 * m1 + 0.1 * gv
        m2 = 0.999 * m2 + 0.001 * gv * gv
        v -= lr * (m1 / (1 - 0.9 ** t)) / (np.sqrt(m2 / (1 - 0.999 ** t)) + 1e-8)
    q = base + (np.clip(_h(v), lo, hi) >= 0.5) + z
    return np.clip(q, qmin, qmax).astype(np.int64)
