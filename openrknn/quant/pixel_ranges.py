"""The range of an image input's first quantization point: every pixel value 0..255, whatever calibration saw.

Calibration sets an ordinary point's range from the values it saw. For the point that leaves an image input's
pre-processing that is wrong twice over: the values are known before any image is read (the pixels 0..255 through
mean/std), and a calibration set that misses either end (a few dim indoor frames, white documents, one image)
leaves the brighter or darker pixels of a real input clipped. Where the point is the raw pixel (mean/std folded
into the first conv, or none given), the whole range also puts every pixel exactly on a level: [0, 255] on 256
levels is scale 1, where a calibrated [0, 228] puts one pixel in 70 on a tie.

The pre-processing is evaluated on an all-0 and an all-255 image: each of its steps is affine per element (a
channel's mean and std, reorder, layout), so those two runs give every value the point can take, as lines (one per
distinct per-element map: a channel's mean and std) over the pixels 0..255.

The range is then the one, from their extent to one level wider, on which each line's pixels land on levels that are
an affine image of the pixels, as nearly as can be (within 5%); the least squared error breaks ties. An error that
is the same affine map for every pixel (all of a line's pixels half a level up, or 0.4% apart) is a brightness or
contrast change of under half a pixel value, which the next layer's bias correction takes back; an error that
differs from pixel to pixel is noise the network carries. So a mean of 127.5 with a std of 127.5 on the extent's
grid, which puts every pixel exactly between two levels, is the worst (round-half-even merges them in pairs, 7 bits
of input), and a grid whose levels are as far apart as the pixels, shifted by under half a level, is the best even
though each pixel is nearly half a level off (MoveNet's x / 127.5 - 1 inside the model: the least squared error took
the range one level wider, where one pixel in 256 merges with its neighbour and the rest drift across the levels,
and lost 0.003 of cosine over 29 images). A pixel within float error of a tie counts as rounding either way.

Only inputs whose calibration samples are 8-bit pixels (integers in 0..255: image files, uint8 arrays) take it: a
4-D float input calibrated on features or spectrograms keeps its calibrated range.
"""

from __future__ import annotations

import itertools
import logging
from typing import Dict, Iterable, List, Sequence, Set, Tuple

import numpy as np
import onnx
from onnx import helper

from .ir import GraphInfo
from .plan import PREFIX_OPS, Plan

log = logging.getLogger("openrknn")

CHECKED_SAMPLES = 4  # calibration samples looked at to tell pixels from other data
MAX_LINES = 1024     # distinct per-element maps kept (a channel's mean and std make one each)
TIE = 1e-3           # a pixel this close to a tie (in levels) may round either way in float32
SAME_RESIDUAL = 0.05  # residuals within 5% of the least are equally good grids
LAYOUT_OPS = {"Transpose", "Slice", "Gather", "Concat", "Reshape", "Split", "Squeeze", "Unsqueeze", "Identity",
              "Cast"}


def pixel_inputs(data: Iterable[Dict[str, np.ndarray]], names: Sequence[str]) -> Tuple[List[str], dict]:
    """Those of ``names`` whose first calibration samples hold only integers in 0..255, and the first sample."""
    samples = list(itertools.islice(iter(data), CHECKED_SAMPLES))
    keep = [n for n in names if samples and all(n in s and _is_pixels(np.asarray(s[n])) for s in samples)]
    return keep, samples[0] if samples else {}


def _is_pixels(x: np.ndarray) -> bool:
    if x.size == 0:
        return False
    if x.dtype == np.uint8:
        return True
    return bool(x.min() >= 0 and x.max() <= 255 and np.array_equal(x, np.round(x)))


def pixel_point_values(info: GraphInfo, plan: Plan, data: Iterable[Dict[str, np.ndarray]],
                       names: Sequence[str]) -> Dict[str, np.ndarray]:
    """{point: its possible values, [lines, 256]: each line's value at pixels 0..255} for the quantization points
    that leave the pre-processing of the pixel inputs among ``names`` (graph inputs). Empty where nothing
    qualifies."""
    names = [n for n in names if n in info.inputs and info.is_float(n)]
    if not names:
        return {}
    names, first = pixel_inputs(data, names)
    if not names:
        return {}
    reached: Set[str] = set(names)
    nodes: List[onnx.NodeProto] = []
    for node in info.nodes:
        dynamic = [t for t in node.input if t and not info.is_const(t)]
        if not dynamic or not all(t in reached for t in dynamic) or not _elementwise(node, info, len(dynamic)):
            continue
        nodes.append(node)
        reached.update(o for o in node.output if o)
    points = [t for t in plan.points if t in reached and t in plan.prefix]
    if not points:
        return {}
    values = _evaluate(info, {n: np.shape(first[n]) for n in names}, nodes, points)
    out = {t: v for t, v in zip(points, values) if v.size and np.isfinite(v).all()}
    if out:
        log.debug("image input points over pixels 0..255: %s",
                  ", ".join(f"{t} [{v.min():.4g}, {v.max():.4g}] ({len(v)} lines)" for t, v in out.items()))
    return out


def _elementwise(node: onnx.NodeProto, info: GraphInfo, n_dynamic: int) -> bool:
    """A pre-processing step that maps each element on its own: layout, or arithmetic with constants (a Div only
    by a constant: a pixel divisor has a pole at 0)."""
    if node.op_type not in PREFIX_OPS or node.domain not in ("", "ai.onnx"):
        return False
    if node.op_type in LAYOUT_OPS:
        return node.op_type == "Concat" or n_dynamic == 1
    if n_dynamic != 1:
        return False
    return node.op_type != "Div" or info.is_const(node.input[1])


def _evaluate(info: GraphInfo, shapes: Dict[str, tuple], nodes: List[onnx.NodeProto],
              points: List[str]) -> List[np.ndarray]:
    """Per point, its distinct lines, [lines, 256]: the values an element takes over pixels 0..255 (``shapes``: the
    calibration samples'). Each step being affine per element, an element that reads b at pixel 0 and c at pixel
    255 reads b + (c - b) * p / 255 at pixel p: two runs, an all-0 and an all-255 image, give every element's
    line."""
    names = list(shapes)
    pixels = np.arange(256, dtype=np.float64)
    if not nodes:  # the points are the inputs themselves
        return [pixels[None].copy() for _ in points]
    from .calibrate import make_session

    used = {t for node in nodes for t in node.input if t}
    graph = helper.make_graph(
        nodes, "pixel_values",
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names],
        [helper.make_tensor_value_info(t, info.elem_type.get(t, onnx.TensorProto.FLOAT), None) for t in points],
        [info.inits[t] for t in sorted(used) if t in info.inits])
    model = helper.make_model(graph, opset_imports=list(info.model.opset_import), ir_version=info.model.ir_version)
    session = make_session(model, 1)
    dark, bright = (session.run(points, {n: np.full(shapes[n], v, np.float32) for n in names}) for v in (0.0, 255.0))
    out = []
    for b, c in zip(dark, bright):
        # distinct (b, c) pairs as complex numbers: a 1-D unique, 20x faster than unique rows on 640x640 images
        lines = np.unique(np.ravel(b).astype(np.float64) + 1j * np.ravel(c).astype(np.float64))[:MAX_LINES]
        out.append(lines.real[:, None] + (lines.imag - lines.real)[:, None] * pixels / 255.0)
    return out


def grid_range(lines: np.ndarray, lo: float, hi: float, fmt) -> Tuple[float, float]:
    """The range from [lo, hi] (which holds ``lines``, [lines, pixels] or one line) to one level wider on which
    each line's pixels quantize most nearly as an affine image of them, then with the least squared error
    (``fmt``: the point's TensorFormat)."""
    from .schemes import qparams

    lines = np.atleast_2d(np.asarray(lines, np.float64))
    tops = [hi + k * (hi - lo) / fmt.levels / 8 for k in range(9)]
    unit = float(qparams(lo, hi, fmt)[0])  # errors in levels of the extent's grid: a wider grid's levels are coarser
    keys = []
    for top in tops:
        scale, zp = (float(v) for v in qparams(lo, top, fmt))
        x = lines / scale  # in levels
        worst = max(_level_errors(x, zp, fmt, nudge) for nudge in (-TIE, 0.0, TIE))
        keys.append(tuple(e * (scale / unit) ** 2 for e in worst))
    # residuals this close are the same grid quality (ImageNet's three channels: 0.083 on every candidate, where the
    # pixels outnumber the levels); the least squared error decides among them
    floor = min(k[0] for k in keys) * (1 + SAME_RESIDUAL) + 1e-6
    best = min((k[1], i) for i, k in enumerate(keys) if k[0] <= floor)[1]
    return lo, tops[best]


def _level_errors(x: np.ndarray, zp: float, fmt, nudge: float) -> Tuple[float, float]:
    """(mean over lines of the squared error left after each line's best affine fit, mean squared error), in
    levels, of rounding ``x`` (+ ``nudge``: a tie's either way) to the levels of zero point ``zp``."""
    err = np.clip(np.round(x + nudge) + zp, fmt.qmin, fmt.qmax) - zp - x
    xc = x - x.mean(axis=1, keepdims=True)
    ec = err - err.mean(axis=1, keepdims=True)
    denom = np.sum(xc * xc, axis=1, keepdims=True)
    slope = np.divide(np.sum(xc * ec, axis=1, keepdims=True), denom, out=np.zeros_like(denom), where=denom > 0)
    return float(np.mean((ec - slope * xc) ** 2)), float(np.mean(err * err))
