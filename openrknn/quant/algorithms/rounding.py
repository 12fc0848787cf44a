"""Layer-wise weight rounding against each layer's own output error, in numpy.

Rounding each weight to nearest is not what minimises a layer's output error. For a layer y = W x, the expected
squared output error of quantized weights is tr(dW G dW^T) with dW = W_q - W and G = E[x x^T] over the layer's
input patches, so one pass over the calibration data that accumulates G (a K x K matrix per layer, per channel for
depthwise convs) is all the data a rounding method needs. Two methods use it: 'gptq' (second-order, one sweep per
layer: gptq.py) and 'adaround' (learned floor/ceil choices: adaround.py). Scales and zero points stay those of
the chosen weight range; only the integers change. With bias correction on (the default) the mean part of the
error, dW E[x], is removed afterwards, so G is the inputs' covariance instead: that matters where inputs have large
means (SiLU outputs, as in YOLOX) and barely changes models whose inputs are centred.
"""

from __future__ import annotations

import itertools
import logging
from typing import Callable, Dict, List, Optional

import numpy as np
import onnx

from ..ir import GraphInfo
from ..plan import Plan, WeightedOp
from ..qdq import WeightQuant

log = logging.getLogger("openrknn.quant.rounding")

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
    """n random im2col patches of a [1, C, H, W] input: [C, n, kh*kw] (zero padding by masking, so the input is
    never copied whole)."""
    if len(k) != 2 or pads and any(p < 0 for p in pads):
        raise ValueError("2-D convs only")
    _, h, w = x[0].shape
    oh = (h + pads[0] + pads[2] - dil[0] * (k[0] - 1) - 1) // strides[0] + 1
    ow = (w + pads[1] + pads[3] - dil[1] * (k[1] - 1) - 1) // strides[1] + 1
    if oh <= 0 or ow <= 0:
        return np.zeros((x.shape[1], 0, k[0] * k[1]), np.float32)
    oy = rng.integers(0, oh, n) * strides[0] - pads[0]
    ox = rng.integers(0, ow, n) * strides[1] - pads[1]
    flat_x = x[0].reshape(x.shape[1], -1)
    if k[0] == k[1] == 1:  # pointwise: one pixel per patch (padding rows of a 1x1 conv only add zeros)
        inside = (oy >= 0) & (oy < h) & (ox >= 0) & (ox < w)
        p = np.take(flat_x, np.clip(oy, 0, h - 1) * w + np.clip(ox, 0, w - 1), axis=1)[:, :, None]
        if not inside.all():
            p *= inside[:, None]
        return p
    rows = oy[:, None] + (np.arange(k[0]) * dil[0]).repeat(k[1])[None, :]
    cols = ox[:, None] + np.tile(np.arange(k[1]) * dil[1], k[0])[None, :]
    inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    flat = np.clip(rows, 0, h - 1) * w + np.clip(cols, 0, w - 1)
    p = np.take(flat_x, flat.reshape(-1), axis=1).reshape(x.shape[1], *flat.shape)
    if not inside.all():
        p *= inside
    return p  # [C, n, kk]


class _Layer:
    """Second moment and sum of one layer's input patches, in the layout its weight multiplies."""

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
        self.sum: Optional[np.ndarray] = None  # of the input patches: their mean, for the centred moment
        self.n = 0

    def add(self, x: np.ndarray, rng: np.random.Generator) -> None:
        if self.op == "Conv":
            k, pads, strides, dil, _ = self.geom
            p = _patches(x.astype(np.float32, copy=False), k, pads, strides, dil, rng, POSITIONS)  # [C, n, kk]
            if self.depthwise:
                g = np.matmul(p.transpose(0, 2, 1), p)                          # [C, kk, kk]
                s = np.matmul(np.ones((1, p.shape[1]), np.float32), p)[:, 0]    # [C, kk] (10x a strided sum)
            else:
                flat = p.transpose(1, 0, 2).reshape(p.shape[1], -1)            # [n, C*kk]
                g, s = flat.T @ flat, flat.sum(axis=0)
            n = p.shape[1]
        else:
            flat = x.reshape(-1, x.shape[-1]).astype(np.float32)
            g, s, n = flat.T @ flat, flat.sum(axis=0), flat.shape[0]
        self.G = g if self.G is None else self.G + g
        s = s.astype(np.float64)  # one image's sum in float32, the running sum in float64
        self.sum = s if self.sum is None else self.sum + s
        self.n += n

    def moment(self, centred: bool) -> np.ndarray:
        """E[x x^T] of the input patches, or their covariance E[(x - m)(x - m)^T] when ``centred``."""
        n = max(self.n, 1)
        G = self.G.astype(np.float64) / n
        if centred:
            m = self.sum / n
            G -= m[..., :, None] * m[..., None, :]
        return G


def _solver(method: str, options) -> Callable[..., np.ndarray]:
    if method == "gptq":
        from .gptq import gptq_rounding

        return lambda w, s, z, qmin, qmax, G: gptq_rounding(w, s, z, qmin, qmax, G)
    from .adaround import optimise_rounding

    return lambda w, s, z, qmin, qmax, G: optimise_rounding(w, s, z, qmin, qmax, G, options.adaround_iters)


def round_weights(model: onnx.ModelProto, info: GraphInfo, plan: Plan, weights: Dict[int, WeightQuant], data,
                  options, method: str, progress: bool = True, passenger=None) -> Dict:
    """Replace round-to-nearest integers of every Conv/Gemm/MatMul weight by ``method``'s ('gptq' | 'adaround'),
    in place. G comes from the float model's layer inputs. ``passenger``: another float-model probe that rides
    the same pass (``augment(model)``, ``outputs``, ``add(values)``, ``max_samples``; bias correction's means),
    so the two need one session and one inference per sample instead of two."""
    from ...progress import progress_bar

    from ..calibrate import augment, auto_threads, make_session, run_ahead

    layers = [_Layer(info, w) for w in plan.weighted if w.node in weights]
    layers = [la for la in layers if la.ok and la.w.x in info.elem_type]
    inputs = sorted({la.w.x for la in layers})
    total = min(options.rounding_samples, len(data)) if layers else 0
    rides = min(passenger.max_samples, len(data)) if passenger is not None else 0
    if total or rides:
        m = augment(model, {}, inputs)
        if passenger is not None:
            passenger.augment(m)
        # one core fewer than idle: the statistics are numpy work that runs beside the next sample's inference
        # (run_ahead), and onnxruntime's spinning threads would take the core it needs
        sess = make_session(m, options.threads or max(1, auto_threads() - 1))
        rng = np.random.default_rng(0)
        desc = f"{method} statistics" + (" + bias means" if rides else "")

        def fetch(i: int, feed):
            names = (inputs if i < total else []) + (passenger.outputs if i < rides else [])
            return dict(zip(names, sess.run(names, feed)))

        steps = run_ahead(itertools.islice(data, max(total, rides)), fetch)
        for i, (_, vals) in enumerate(progress_bar(steps, total=max(total, rides), desc=desc, enabled=progress,
                                                   leave=False)):
            if i < total:
                for la in layers:
                    la.add(vals[la.w.x], rng)
            if i < rides:
                passenger.add(vals)
    if not layers:
        return {"method": method, "layers": 0}
    solve = _solver(method, options)
    # bias correction removes the mean of each output's error, dW . E[x]: what is left is dW (x - E[x]), so the
    # rounding should weigh the inputs' covariance, not their raw second moment (which a large input mean, e.g.
    # after SiLU, would dominate: the rounding would spend itself on what the bias fixes anyway)
    centred = options.bias_correction not in (False, None)
    done = 0
    for la in progress_bar(layers, desc=method, enabled=progress, leave=False):
        wq = weights[la.w.node]
        w = info.const(la.w.w).astype(np.float64)
        trans = la.op != "Conv" and la.w.axis == 0  # Gemm transB=1: [N, K] rows are outputs
        w2 = w.reshape(w.shape[0], -1) if la.op == "Conv" else (w if trans else w.T)
        per_row = wq.axis is not None
        scale = np.asarray(wq.scale) if per_row else np.full(w2.shape[0], float(wq.scale))
        zp = np.asarray(wq.zero_point) if per_row else np.full(w2.shape[0], int(wq.zero_point))
        try:
            q = solve(w2, scale, zp, wq.fmt.qmin, wq.fmt.qmax, la.moment(centred))
        except np.linalg.LinAlgError:  # a degenerate G (e.g. constant inputs): nearest is as good as any
            log.debug("%s keeps round-to-nearest: singular input statistics", la.w.w)
            continue
        wq.q = q.reshape(w.shape) if la.op == "Conv" else (q if trans else q.T)
        done += 1
    return {"method": method, "layers": done, "samples": total}


def output_error(w: np.ndarray, q: np.ndarray, scale, zp, G: np.ndarray) -> float:
    """tr(dW G dW^T) of a 2-D weight and its nominal integers (for tests and reports)."""
    s = np.asarray(scale, np.float64).reshape(-1, 1)
    z = np.asarray(zp, np.float64).reshape(-1, 1)
    dw = (q - z) * s - w
    return float(np.einsum("ck,kj,cj->", dw, G, dw) if G.ndim == 2 else np.einsum("ck,ckj,cj->", dw, G, dw))


__all__: List[str] = ["round_weights", "output_error"]
