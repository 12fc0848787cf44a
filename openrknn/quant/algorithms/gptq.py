"""GPTQ-style second-order weight rounding (Frantar et al., 2022; Optimal Brain Quantization) of one layer.

The columns of a layer's weight [rows, K] are rounded one at a time, and each rounding error is pushed onto the
columns not rounded yet, along the directions the layer's inputs make cheap. One sweep per layer, no iterations:
several times faster than learned rounding, with a lower output error tr(dW G dW^T) on the layers we measured.
Columns go in order of decreasing input energy (diag G), so the columns that matter most are rounded while the most
freedom is left. The grid (scale, zero point) is fixed; integers stay inside it.

The sweep is written in its nearest-plane form (Babai's algorithm, which GPTQ is; Chen et al., 2025): with H = G +
damping = M^T M, M lower triangular, the error d = w - dequant(q) costs |M d|^2, and column i is rounded to cancel
row i of M d given the columns before it: q_i = round(w_i + sum_{j<i} M_ij / M_ii * d_j). The same integers as the
textbook sweep over the upper Cholesky factor of H^-1, but from one Cholesky factorisation and no inverse.
"""

from __future__ import annotations

import numpy as np

DAMP = 0.1    # damping, as a share of the mean input energy: G from a few thousand patches is noisy
BLOCK = 128   # columns rounded between two products that bring in the earlier columns' errors (lazy batches)


def _lower_factor(G: np.ndarray) -> np.ndarray:
    """M lower triangular with M^T M = G + damping, for G [B, K, K]. With J the reversal of rows and columns,
    J H J = L L^T (numpy's Cholesky), so M = J L^T J (a view of L)."""
    k = G.shape[-1]
    diag = np.einsum("bii->bi", G)
    scale = np.maximum(diag.mean(axis=1, keepdims=True), 1e-30)
    H = G[:, ::-1, ::-1].copy()
    idx = np.arange(k)
    # a dead input gets a unit of energy: nothing to move
    H[:, idx, idx] += (DAMP * scale + (diag <= 0) * scale)[:, ::-1]
    return np.linalg.cholesky(H)[:, ::-1, ::-1].transpose(0, 2, 1)


def gptq_rounding(w: np.ndarray, scale: np.ndarray, zp: np.ndarray, qmin: int, qmax: int,
                  G: np.ndarray) -> np.ndarray:
    """Nominal integers for a 2-D weight [rows, K] with per-row scale/zero point, against G [K, K] (shared by
    all rows) or [rows, K, K] (one per row: depthwise convs). Raises LinAlgError for a degenerate G."""
    s = np.asarray(scale, np.float64).reshape(-1, 1)
    z = np.asarray(zp, np.float64).reshape(-1, 1)
    W = np.array(w, np.float64)
    rows, k = W.shape

    if G.ndim == 3:  # one G per row: rows are independent, sweep all of them at once
        M = _lower_factor(np.asarray(G, np.float64))
        C = M / np.einsum("bii->bi", M)[:, :, None]  # C_ij = M_ij / M_ii
        Q, D = np.empty_like(W), np.empty_like(W)
        for i in range(k):
            t = W[:, i] + np.einsum("rj,rj->r", C[:, i, :i], D[:, :i])
            Q[:, i] = np.clip(np.round(t / s[:, 0]) + z[:, 0], qmin, qmax)
            D[:, i] = W[:, i] - (Q[:, i] - z[:, 0]) * s[:, 0]
        return Q.astype(np.int64)

    order = np.argsort(-np.diag(G), kind="stable")
    M = _lower_factor(np.asarray(G, np.float64)[np.ix_(order, order)][None])[0]
    C = M / np.diag(M)[:, None]
    Wt = np.ascontiguousarray(W[:, order].T)  # [K, rows]: column i is a contiguous row (the loop's hot access)
    Qt, Dt = np.empty_like(Wt), np.empty_like(Wt)
    s1, z1, inv_s = s[:, 0], z[:, 0], 1.0 / s[:, 0]
    for b0 in range(0, k, BLOCK):
        b1 = min(b0 + BLOCK, k)
        T = Wt[b0:b1] + C[b0:b1, :b0] @ Dt[:b0] if b0 else Wt[b0:b1].copy()  # the earlier blocks' errors
        for i in range(b0, b1):
            q = np.rint(T[i - b0] * inv_s)
            q += z1
            np.clip(q, qmin, qmax, out=q)
            Qt[i] = q
            d = Dt[i]
            np.subtract(Wt[i], (q - z1) * s1, out=d)
            if i + 1 < b1:
                T[i + 1 - b0:] += C[i + 1:b1, i, None] * d
    out = np.empty((rows, k))
    out[:, order] = Qt.T
    return out.astype(np.int64)


__all__ = ["gptq_rounding"]
