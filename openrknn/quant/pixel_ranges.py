"""The range of an image input's first quantization point: every pixel value 0..255, whatever calibration saw.

Calibration sets an ordinary point's range from the values it saw. For the point that leaves an image input's
pre-processing that is wrong twice over: the values are known before any image is read (the pixels 0..255 through
mean/std), and a calibration set that misses either end (a few dim indoor frames, white documents, one image)
leaves the brighter or darker pixels of a real input clipped. Where the point is the raw pixel (mean/std folded
into the first conv, or none given), the whole range also puts every pixel exactly on a level: [0, 255] on 256
levels is scale 1, where a calibrated [0, 228] puts one pixel in 70 on a tie.

The pre-processing is evaluated on an all-0 and an all-255 image: each of its steps is affine per element (a
channel's mean and std, reorder, layout), so those two runs give every value the point can take.
The range is then the one on which those values quantize with the least squared error, from their extent to one
level wider: a mean of 127.5 with a std of 127.5 puts every pixel of the extent's grid exactly between two levels,
and round-half-even resolves them to the even levels only (pixels merged in pairs, 7 bits of input); one level
wider, all 255 levels are in use and no pixel is on a tie.

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
    """{point: its possible values, sorted} for the quantization points that leave the pre-processing of the pixel
    inputs among ``names`` (graph inputs). Empty where nothing qualifies."""
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
                  ", ".join(f"{t} [{v[0]:.4g}, {v[-1]:.4g}] ({v.size} values)" for t, v in out.items()))
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
    """Per point, the sorted distinct values it takes over all pixel values (``shapes``: the calibration samples').
    Each step being affine per element, an element that reads b at pixel 0 and c at pixel 255 reads
    b + (c - b) * p / 255 at pixel p: two runs, an all-0 and an all-255 image, give every element's line."""
    names = list(shapes)
    pixels = np.arange(256, dtype=np.float64)
    if not nodes:  # the points are the inputs themselves
        return [pixels.copy() for _ in points]
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
        out.append(np.unique(lines.real[:, None] + (lines.imag - lines.real)[:, None] * pixels / 255.0))
    return out


def grid_range(values: np.ndarray, lo: float, hi: float, fmt) -> Tuple[float, float]:
    """The range from [lo, hi] (which holds ``values``) to one level wider on which ``values`` quantize with the
    least squared error (``fmt``: the point's TensorFormat)."""
    from .schemes import qparams

    best, best_err = (lo, hi), np.inf
    for k in range(9):
        top = hi + k * (hi - lo) / fmt.levels / 8
        scale, zp = (float(v) for v in qparams(lo, top, fmt))
        q = np.clip(np.round(values / scale) + zp, fmt.qmin, fmt.qmax)
        err = float(np.mean(((q - zp) * scale - values) ** 2))
        if err < best_err * (1 - 1e-9):
            best, best_err = (lo, top), err
    return best
