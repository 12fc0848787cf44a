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
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import onnx

from ..ir import GraphInfo
from ..plan import Plan, WeightedOp
from ..qdq import WeightQuant

log = logging.getLogger("openrknn.quant.rounding")

MAX_K = 2304          # patch length above which a layer keeps round-to-nearest (G would be too large)
POSITIONS = 256       # patch positions sampled per image per layer
PATCH_INDEX, PATCHES = "openrknn_rounding_patch_index_", "openrknn_rounding_patches_"  # the in-graph gathers' names

def _conv_geometry(info: GraphInfo, i: int, w: np.ndarray):
    k = w.shape[2:]
    pads = list(info.attr(i, "pads", [0] * (2 * len(k))))
    strides = list(info.attr(i, "strides", [1] * len(k)))
    dil = list(info.attr(i, "dilations", [1] * len(k)))
    group = int(info.attr(i, "group", 1))
    return k, pads, strides, dil, group


def _positions(hw, k, pads, strides, dil, rng: np.random.Generator, n: int):
    """n random im2col patch positions in an input of height x width ``hw``, drawn from ``rng``: (flat indices into
    its H*W pixels [n, kk], clipped to the image; which taps fall inside it [n, kk], None when all do), or None for
    an empty output (nothing drawn)."""
    if len(k) != 2 or pads and any(p < 0 for p in pads):
        raise ValueError("2-D convs only")
    h, w = hw
    oh = (h + pads[0] + pads[2] - dil[0] * (k[0] - 1) - 1) // strides[0] + 1
    ow = (w + pads[1] + pads[3] - dil[1] * (k[1] - 1) - 1) // strides[1] + 1
    if oh <= 0 or ow <= 0:
        return None
    oy = rng.integers(0, oh, n) * strides[0] - pads[0]
    ox = rng.integers(0, ow, n) * strides[1] - pads[1]
    rows = oy[:, None] + (np.arange(k[0]) * dil[0]).repeat(k[1])[None, :]
    cols = ox[:, None] + np.tile(np.arange(k[1]) * dil[1], k[0])[None, :]
    inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    flat = np.clip(rows, 0, h - 1) * w + np.clip(cols, 0, w - 1)
    return flat, (None if inside.all() else inside)


def _gathered(taken: np.ndarray, inside: Optional[np.ndarray], n: int) -> np.ndarray:
    """[C, n * kk] pixels taken at _positions' indices -> patches [C, n, kk], zero where a tap is padding."""
    p = taken.reshape(taken.shape[0], n, -1)
    if inside is not None:
        p *= inside
    return p


def _patches(x: np.ndarray, k, pads, strides, dil, rng: np.random.Generator, n: int) -> np.ndarray:
    """n random im2col patches of a [1, C, H, W] input: [C, n, kk] (zero padding by masking, so the input is
    never copied whole)."""
    at = _positions(x.shape[2:], k, pads, strides, dil, rng, n)
    if at is None:
        return np.zeros((x.shape[1], 0, k[0] * k[1]), np.float32)
    flat, inside = at
    return _gathered(np.take(x[0].reshape(x.shape[1], -1), flat.reshape(-1), axis=1), inside, len(flat))


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
        """One sample's input (a conv's: its patches at positions drawn from ``rng``)."""
        if self.op == "Conv":
            k, pads, strides, dil, _ = self.geom
            self.add_patches(_patches(x.astype(np.float32, copy=False), k, pads, strides, dil, rng, POSITIONS))
        else:
            flat = x.reshape(-1, x.shape[-1]).astype(np.float32)
            self._accumulate(flat.T @ flat, flat.sum(axis=0), flat.shape[0])

    def add_patches(self, p: np.ndarray) -> None:
        """A conv's patches of one sample, [C, n, kk]."""
        if self.depthwise:
            g = np.matmul(p.transpose(0, 2, 1), p)                          # [C, kk, kk]
            s = np.matmul(np.ones((1, p.shape[1]), np.float32), p)[:, 0]    # [C, kk] (10x a strided sum)
        else:
            flat = p.transpose(1, 0, 2).reshape(p.shape[1], -1)            # [n, C*kk]
            g, s = flat.T @ flat, flat.sum(axis=0)
        self._accumulate(g, s, p.shape[1])

    def _accumulate(self, g: np.ndarray, s: np.ndarray, n: int) -> None:
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


def _in_graph_patches(info: GraphInfo, layers: List[_Layer]) -> Optional[Dict[int, Tuple[int, int, int]]]:
    """{index in ``layers``: (C, H, W)} of each conv's [1, C, H, W] input, where every conv's is known: their patches
    are then gathered in the graph and the pass fetches a few hundred pixels per layer instead of whole feature maps
    (which a large input makes far larger than everything else the pass holds). None: every input is fetched whole."""
    out = {}
    for j, la in enumerate(layers):
        if la.op != "Conv":
            continue
        shape = info.shape.get(la.w.x)
        if shape is None or len(shape) != 4 or shape[0] != 1 or not all(isinstance(d, int) and d > 0 for d in shape):
            return None
        out[j] = tuple(shape[1:])
    return out


def _gather_patches(m: onnx.ModelProto, layers: List[_Layer], gathers: Dict[int, Tuple[int, int, int]]) -> None:
    """Per conv layer j: input PATCH_INDEX + j (the sample's pixel indices) and output PATCHES + j, its input's
    [C, H*W] rows gathered at them, in place."""
    from onnx import TensorProto, helper

    g = m.graph
    rows: Dict[str, str] = {}
    for j, (c, h, w) in gathers.items():
        x = layers[j].w.x
        if x not in rows:
            rows[x] = f"{PATCHES}rows_{len(rows)}"
            shape = rows[x] + "_shape"
            g.initializer.append(onnx.numpy_helper.from_array(np.array([c, h * w], np.int64), shape))
            g.node.append(helper.make_node("Reshape", [x, shape], [rows[x]]))
        g.input.append(helper.make_tensor_value_info(f"{PATCH_INDEX}{j}", TensorProto.INT64, [None]))
        g.node.append(helper.make_node("Gather", [rows[x], f"{PATCH_INDEX}{j}"], [f"{PATCHES}{j}"], axis=1))
        g.output.append(helper.make_tensor_value_info(f"{PATCHES}{j}", TensorProto.FLOAT, None))


def _statistics_pass(model: onnx.ModelProto, layers: List[_Layer], data, options, total: int, rides: int,
                     passenger, gathers: Optional[Dict[int, Tuple[int, int, int]]], method: str,
                     progress: bool) -> None:
    """One float run per sample: each layer's input statistics from the first ``total`` samples, the passenger's
    from the first ``rides``. The patch positions come from one generator in the same order either way (sample
    after sample, layer after layer), so gathering them in the graph (``gathers``) or from whole inputs gives the
    same statistics."""
    from ...progress import progress_bar

    from ..calibrate import augment, auto_threads, make_session, run_ahead

    whole = sorted({la.w.x for j, la in enumerate(layers) if gathers is None or j not in gathers})
    m = augment(model, {}, whole)
    if gathers:
        _gather_patches(m, layers, gathers)
    if passenger is not None:
        passenger.augment(m)
    # one core fewer than idle: the statistics are numpy work that runs beside the next sample's inference
    # (run_ahead), and onnxruntime's spinning threads would take the core it needs
    sess = make_session(m, options.threads or max(1, auto_threads() - 1))
    rng = np.random.default_rng(0)
    desc = f"{method} statistics" + (" + bias means" if rides else "")

    def fetch(i: int, feed):
        names = (whole if i < total else []) + (passenger.outputs if i < rides else [])
        at: Dict[int, Optional[tuple]] = {}
        if gathers and i < total:  # this sample's positions, drawn before its run (the worker draws in order)
            feed = dict(feed)
            for j, (c, h, w) in gathers.items():
                k, pads, strides, dil, _ = layers[j].geom
                at[j] = _positions((h, w), k, pads, strides, dil, rng, POSITIONS)
                feed[f"{PATCH_INDEX}{j}"] = at[j][0].reshape(-1) if at[j] is not None else np.zeros(0, np.int64)
                names.append(f"{PATCHES}{j}")
        return dict(zip(names, sess.run(names, feed))), at

    steps = run_ahead(itertools.islice(data, max(total, rides)), fetch)
    for i, (_, (vals, at)) in enumerate(progress_bar(steps, total=max(total, rides), desc=desc, enabled=progress,
                                                     leave=False)):
        if i < total:
            for j, la in enumerate(layers):
                if j not in at:
                    la.add(vals[la.w.x], rng)
                elif at[j] is None:  # an empty output: no patches
                    la.add_patches(np.zeros((gathers[j][0], 0, la.geom[0][0] * la.geom[0][1]), np.float32))
                else:
                    taken = vals[f"{PATCHES}{j}"].astype(np.float32, copy=False)
                    la.add_patches(_gathered(taken, at[j][1], len(at[j][0])))
        if i < rides:
            passenger.add(vals)


def _collect(model: onnx.ModelProto, info: GraphInfo, layers: List[_Layer], data, options, total: int, rides: int,
             passenger, method: str, progress: bool) -> None:
    """_statistics_pass with the convs' patches gathered in the graph where their inputs' shapes are known; from
    whole inputs where the first run shows a stored shape is not the one the graph computes."""
    gathers = _in_graph_patches(info, layers) if total else None
    try:
        _statistics_pass(model, layers, data, options, total, rides, passenger, gathers, method, progress)
    except Exception as e:  # only at the first run, before any statistics were taken
        if gathers is None or any(la.n for la in layers):
            raise
        log.debug("rounding statistics: patches taken from whole inputs (%s)", str(e)[:200])
        _statistics_pass(model, layers, data, options, total, rides, passenger, None, method, progress)


def round_weights(model: onnx.ModelProto, info: GraphInfo, plan: Plan, weights: Dict[int, WeightQuant], data,
                  options, method: str, progress: bool = True, passenger=None) -> Dict:
    """Replace round-to-nearest integers of every Conv/Gemm/MatMul weight by ``method``'s ('gptq' | 'adaround'),
    in place. G comes from the float model's layer inputs. ``passenger``: another float-model probe that rides
    the same pass (``augment(model)``, ``outputs``, ``add(values)``, ``max_samples``; bias correction's means),
    so the two need one session and one inference per sample instead of two."""
    from ...progress import progress_bar

    layers = [_Layer(info, w) for w in plan.weighted if w.node in weights]
    layers = [la for la in layers if la.ok and la.w.x in info.elem_type]
    total = min(options.rounding_samples, len(data)) if layers else 0
    rides = min(passenger.max_samples, len(data)) if passenger is not None else 0
    if total or rides:
        _collect(model, info, layers, data, options, total, rides, passenger, method, progress)
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
