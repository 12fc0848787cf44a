"""GPTQ-style second-order weight rounding (Frantar et al., 2022; Optimal Brain Quantization) of one layer.

The columns of a layer's weight [rows, K] are rounded one at a time, and each rounding error is pushed onto the
columns not rounded yet, along the directions the layer's inputs make cheap: with H = G + damping and the upper
Cholesky factor U of H^-1, column j's error e_j = (w_j - q_j) / U_jj moves the rest by -e_j U_j,j+1:. One sweep
per layer, no iterations: several times faster than learned rounding, with a lower output error tr(dW G dW^T) on
the layers we measured. Columns go in order of decreasing input energy (diag G), so the columns that matter most
are rounded while the most freedom is left. The grid (scale, zero point) is fixed; integers stay inside it.
"""

from __future__ import annotations

import numpy as np

DAMP = 0.1    # damping, as a share of the mean input energy: G from a few thousand patches is noisy
BLOCK = 128   # columns rounded between two full updates of the rest (lazy batch updates)


def _inverse_upper(V: np.ndarray) -> np.ndarray:
    """V^-1 for upper-triangular V [B, K, K], by halves: [[A, B], [0, C]]^-1 = [[A^-1, -A^-1 B C^-1], [0, C^-1]].
    Matrix products only, a third of a general inverse's work (numpy has no triangular inverse)."""
    k = V.shape[-1]
    if k <= 64:
        return np.linalg.inv(V)
    h = k // 2
    a_inv, c_inv = _inverse_upper(V[:, :h, :h]), _inverse_upper(V[:, h:, h:])
    out = np.zeros_like(V)
    out[:, :h, :h] = a_inv
    out[:, h:, h:] = c_inv
    out[:, :h, h:] = -(a_inv @ V[:, :h, h:]) @ c_inv
    return out


def _upper_inverse_factor(G: np.ndarray) -> np.ndarray:
    """U with U^T U = (G + damping)^-1, for G [B, K, K]: with H = V V^T (V upper: the Cholesky factor of H with
    rows and columns reversed), U = V^-1. One Cholesky and one triangular inverse, no general inverse."""
    k = G.shape[-1]
    diag = np.einsum("bii->bi", G)
    H = G.copy()
    scale = np.maximum(diag.mean(axis=1, keepdims=True), 1e-30)
    idx = np.arange(k)
    H[:, idx, idx] += DAMP * scale + (diag <= 0) * scale  # a dead input gets a unit of energy: nothing to move
    V = np.linalg.cholesky(H[:, ::-1, ::-1])[:, ::-1, ::-1]
    return _inverse_upper(np.ascontiguousarray(V))


def gptq_rounding(w: np.ndarray, scale: np.ndarray, zp: np.ndarray, qmin: int, qmax: int,
                  G: np.ndarray) -> np.ndarray:
    """Nominal integers for a 2-D weight [rows, K] with per-row scale/zero point, against G [K, K] (shared by
    all rows) or [rows, K, K] (one per row: depthwise convs). Raises LinAlgError for a degenerate G."""
    s = np.asarray(scale, np.float64).reshape(-1, 1)
    z = np.asarray(zp, np.float64).reshape(-1, 1)
    W = np.array(w, np.float64)
    rows, k = W.shape
    Q = np.empty_like(W)

    def round_col(col: np.ndarray, s_: np.ndarray, z_: np.ndarray) -> np.ndarray:
        return np.clip(np.round(col / s_) + z_, qmin, qmax)

    if G.ndim == 3:  # one G per row: rows are independent, sweep all of them at once
        U = _upper_inverse_factor(np.asarray(G, np.float64))
        for j in range(k):
            q = round_col(W[:, j:j + 1], s, z)
            Q[:, j:j + 1] = q
            err = (W[:, j:j + 1] - (q - z) * s) / U[:, j, j][:, None]
            W[:, j + 1:] -= err * U[:, j, j + 1:]
        return Q.astype(np.int64)

    order = np.argsort(-np.diag(G), kind="stable")
    U = _upper_inverse_factor(np.asarray(G, np.float64)[order][:, order][None])[0]
    Wt = np.ascontiguousarray(W[:, order].T)  # [K, rows]: column j is a contiguous row (the loop's hot access)
    Qt = np.empty_like(Wt)
    s1, z1, inv_s = s[:, 0], z[:, 0], 1.0 / s[:, 0]
    for b0 in range(0, k, BLOCK):
        b1 = min(b0 + BLOCK, k)
        errs = np.empty((b1 - b0, rows))
        for j in range(b0, b1):
            wj = Wt[j]
            q = np.clip(np.rint(wj * inv_s) + z1, qmin, qmax)
            Qt[j] = q
            e = errs[j - b0]
            np.subtract(wj, (q - z1) * s1, out=e)
            e /= U[j, j]
            if j + 1 < b1:
                Wt[j + 1:b1] -= U[j, j + 1:b1, None] * e
        if b1 < k:
            Wt[b1:] -= U[b0:b1, b1:].T @ errs
    out = np.empty((rows, k))
    out[:, order] = Qt.T
    return out.astype(np.int64)


__all__ = ["gptq_rounding"]
