"""AdaRound-style learned weight rounding (Nagel et al., 2020), layer by layer, in numpy.

Rounding each weight to nearest is not what minimises a layer's output error. For a layer y = W x, the expected
squared output error of quantized weights is tr(dW G dW^T) with dW = W_q - W and G = E[x x^T] over the layer's
input patches, so one pass over the calibration data that accumulates G (a K x K matrix per layer, per channel for
depthwise convs) is all the data the optimisation needs. Each weight chooses floor or ceil through a soft variable
h(V) in [0, 1]; Adam minimises tr(dW G dW^T) + lambda * sum(1 - |2h - 1|^beta) with beta annealed 20 -> 2, which
drives every h to 0 or 1. Scales and zero points stay those of the chosen weight range.
"""

from __future__ import annotations

import itertools
import logging
from typing import Dict, List, Optional

import numpy as np
import onnx

from ..ir import GraphInfo
from ..plan import Plan, WeightedOp
from ..qdq import WeightQuant

log = logging.getLogger("openrknn.quant.adaround")

ZETA, GAMMA = 1.1, -0.1
MAX_K = 2304          # patch length above which a layer keeps round-to-nearest (G would be too large)
POSITIONS = 256       # patch positions sampled per image per layer


def _conv_geometry(info: GraphInfo, i: int, w: np.ndarray):
    k = w.shape[2:]
    pads = list(info.attr(i, "pads", [0] * (2 * len(k))))
    strides = list(info.attr(i, "strides", [1] * len(k)))
    dil = list(info.attr(i, "dilations", [1] * len(k)))
    group = int(info.attr(i, "group", 1))
    return k, pads, strides, dil, group


def _patches(x: np.ndarray, k, pads, strides, dil, rng: np.random.Generator, n: int) -> np.ndarray:
    """n random im2col patches of a [1, C, H, W] input: [n, C, kh*kw]."""
    if len(k) != 2 or pads and any(p < 0 for p in pads):
        raise ValueError("2-D convs only")
    xp = np.pad(x[0], ((0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oh = (xp.shape[1] - dil[0] * (k[0] - 1) - 1) // strides[0] + 1
    ow = (xp.shape[2] - dil[1] * (k[1] - 1) - 1) // strides[1] + 1
    if oh <= 0 or ow <= 0:
        return np.zeros((0, x.shape[1], k[0] * k[1]), np.float32)
    oy = rng.integers(0, oh, n) * strides[0]
    ox = rng.integers(0, ow, n) * strides[1]
    ky, kx = np.meshgrid(np.arange(k[0]) * dil[0], np.arange(k[1]) * dil[1], indexing="ij")
    rows = oy[:, None] + ky.reshape(1, -1)
    cols = ox[:, None] + kx.reshape(1, -1)
    return np.transpose(xp[:, rows, cols], (1, 0, 2))  # [n, C, kk]


class _Layer:
    """Second-moment statistics of one layer's inputs, in the layout its weight multiplies."""

    def __init__(self, info: GraphInfo, w: WeightedOp):
        self.w = w
        self.op = info.nodes[w.node].op_type
        weight = info.const(w.w)
        self.depthwise = False
        if self.op == "Conv":
            self.geom = _conv_geometry(info, w.node, weight)
            group = self.geom[4]
            self.depthwise = group > 1 and weight.shape[1] == 1 and group == weight.shape[0]
            self.ok = weight.ndim == 4 and (group == 1 or self.depthwise) and \
                (self.depthwise or weight[0].size <= MAX_K)
        else:
            self.ok = weight.ndim == 2 and weight.shape[1 - w.axis] <= MAX_K
        self.G: Optional[np.ndarray] = None
        self.n = 0

    def add(self, x: np.ndarray, rng: np.random.Generator) -> None:
        if self.op == "Conv":
            k, pads, strides, dil, _ = self.geom
            p = _patches(x.astype(np.float32), k, pads, strides, dil, rng, POSITIONS)  # [n, C, kk]
            if self.depthwise:
                g = np.einsum("nci,ncj->cij", p, p)                              # [C, kk, kk]
            else:
                flat = p.reshape(p.shape[0], -1)
                g = flat.T @ flat
            n = p.shape[0]
        else:
            flat = x.reshape(-1, x.shape[-1]).astype(np.float32)
            g, n = flat.T @ flat, flat.shape[0]
        self.G = g if self.G is None else self.G + g
        self.n += n


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


def adaround_weights(model: onnx.ModelProto, info: GraphInfo, plan: Plan, weights: Dict[int, WeightQuant],
                     acts: Dict, data, options, progress: bool = True) -> Dict:
    """Replace round-to-nearest weights of every Conv/Gemm/MatMul by learned rounding (in place)."""
    from tqdm import tqdm

    from ..calibrate import augment, make_session

    layers = [_Layer(info, w) for w in plan.weighted if w.node in weights]
    layers = [la for la in layers if la.ok and la.w.x in info.elem_type]
    if not layers:
        return {"layers": 0}
    inputs = sorted({la.w.x for la in layers})
    sess = make_session(augment(model, {}, inputs), options.threads)
    rng = np.random.default_rng(0)
    total = min(options.adaround_samples, len(data))
    for feed in tqdm(itertools.islice(data, total), total=total, desc="adaround statistics", disable=not progress,
                     leave=False):
        vals = dict(zip(inputs, sess.run(inputs, feed)))
        for la in layers:
            la.add(vals[la.w.x], rng)
    done = 0
    for la in tqdm(layers, desc="adaround", disable=not progress, leave=False):
        wq = weights[la.w.node]
        w = info.const(la.w.w).astype(np.float64)
        fmt = wq.fmt
        G = la.G / max(la.n, 1)
        if la.op == "Conv":
            w2 = w.reshape(w.shape[0], -1)
            per_row = wq.axis is not None
            scale = np.asarray(wq.scale) if per_row else np.full(w.shape[0], float(wq.scale))
            zp = np.asarray(wq.zero_point) if per_row else np.full(w.shape[0], int(wq.zero_point))
            q = optimise_rounding(w2, scale, zp, fmt.qmin, fmt.qmax, G, options.adaround_iters)
            wq.q = q.reshape(w.shape)
        else:
            trans = la.w.axis == 0          # Gemm transB=1: [N, K] rows are outputs
            w2 = w if trans else w.T
            per_row = wq.axis is not None
            scale = np.asarray(wq.scale) if per_row else np.full(w2.shape[0], float(wq.scale))
            zp = np.asarray(wq.zero_point) if per_row else np.full(w2.shape[0], int(wq.zero_point))
            q = optimise_rounding(w2, scale, zp, fmt.qmin, fmt.qmax, G, options.adaround_iters)
            wq.q = q if trans else q.T
        done += 1
    return {"layers": done, "samples": total}


def output_error(w: np.ndarray, q: np.ndarray, scale, zp, G: np.ndarray) -> float:
    """tr(dW G dW^T) of a 2-D weight and its nominal integers (for tests and reports)."""
    s = np.asarray(scale, np.float64).reshape(-1, 1)
    z = np.asarray(zp, np.float64).reshape(-1, 1)
    dw = (q - z) * s - w
    return float(np.einsum("ck,kj,cj->", dw, G, dw) if G.ndim == 2 else np.einsum("ck,ckj,cj->", dw, G, dw))


__all__: List[str] = ["adaround_weights", "optimise_rounding", "output_error"]
