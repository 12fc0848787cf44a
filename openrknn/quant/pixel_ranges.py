"""The range of an image input's first quantization point: every pixel value 0..255, whatever calibration saw.

Calibration sets an ordinary point's range from the values it saw. For the point that leaves an image input's
pre-processing that is wrong twice over: the values are known before any image is read (the pixels 0..255 through
mean/std), and a calibration set that misses either end (a few dim indoor frames, white documents, one image)
leaves the brighter or darker pixels of a real input clipped. Where the point is the raw pixel (mean/std folded
into the first conv, or none given), the whole range also puts every pixel exactly on a level: [0, 255] on 256
levels is scale 1, where a calibrated [0, 228] puts one pixel in 70 on a tie.

Only inputs whose calibration samples are 8-bit pixels (integers in 0..255: image files, uint8 arrays) take it: a
4-D float input calibrated on features or spectrograms keeps its calibrated range. The pre-processing is evaluated
on an all-0 and an all-255 image: each of its steps is per-element monotone (a channel's mean and std, reorder,
layout), so the extremes of every element are the images' values.
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
LAYOUT_OPS = {"Transpose", "Slice", "Gather", "Concat", "Reshape", "Split", "Squeeze", "Unsqueeze", "Identity",
              "Cast"}


def pixel_inputs(data: Iterable[Dict[str, np.ndarray]], names: Sequence[str]) -> Tuple[List[str], dict]:
    """Those of ``names`` whose first calibration samples hold only integers in 0..255, and the first sample."""
    keep, first = list(names), {}
    for k, sample in enumerate(itertools.islice(iter(data), CHECKED_SAMPLES)):
        first = sample if k == 0 else first
        keep = [n for n in keep if n in sample and _is_pixels(np.asarray(sample[n]))]
    return keep, first


def _is_pixels(x: np.ndarray) -> bool:
    if x.size == 0:
        return False
    if x.dtype == np.uint8:
        return True
    return bool(x.min() >= 0 and x.max() <= 255 and np.array_equal(x, np.round(x)))


def pixel_point_ranges(info: GraphInfo, plan: Plan, data: Iterable[Dict[str, np.ndarray]],
                       names: Sequence[str]) -> Dict[str, Tuple[float, float]]:
    """{point: (lo, hi)} for the quantization points that leave the pre-processing of the pixel inputs among
    ``names`` (graph inputs), their values over all pixel values. Empty where nothing qualifies."""
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
        if not dynamic or not all(t in reached for t in dynamic) or not _monotone(node, info, len(dynamic)):
            continue
        nodes.append(node)
        reached.update(o for o in node.output if o)
    points = [t for t in plan.points if t in reached and t in plan.prefix]
    if not points:
        return {}
    lows, highs = _evaluate(info, {n: np.shape(first[n]) for n in names}, nodes, points)
    out = {t: (float(lo), float(hi)) for t, lo, hi in zip(points, lows, highs) if np.isfinite([lo, hi]).all()}
    if out:
        log.debug("image input point ranges over pixels 0..255: %s",
                  ", ".join(f"{t} [{lo:.4g}, {hi:.4g}]" for t, (lo, hi) in out.items()))
    return out


def _monotone(node: onnx.NodeProto, info: GraphInfo, n_dynamic: int) -> bool:
    """A pre-processing step whose every output element moves one way with one pixel: layout, or arithmetic with
    constants (a Div only by a constant: a pixel divisor has a pole at 0)."""
    if node.op_type not in PREFIX_OPS or node.domain not in ("", "ai.onnx"):
        return False
    if node.op_type in LAYOUT_OPS:
        return node.op_type == "Concat" or n_dynamic == 1
    if n_dynamic != 1:
        return False
    return node.op_type != "Div" or info.is_const(node.input[1])


def _evaluate(info: GraphInfo, shapes: Dict[str, tuple], nodes: List[onnx.NodeProto],
              points: List[str]) -> Tuple[np.ndarray, np.ndarray]:
    """Per point, the min and max over an all-0 and an all-255 image (``shapes``: the calibration samples')."""
    names = list(shapes)
    if not nodes:  # the points are the inputs themselves
        return np.zeros(len(points)), np.full(len(points), 255.0)
    from .calibrate import make_session

    used = {t for node in nodes for t in node.input if t}
    graph = helper.make_graph(
        nodes, "pixel_ranges",
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names],
        [helper.make_tensor_value_info(t, info.elem_type.get(t, onnx.TensorProto.FLOAT), None) for t in points],
        [info.inits[t] for t in sorted(used) if t in info.inits])
    model = helper.make_model(graph, opset_imports=list(info.model.opset_import), ir_version=info.model.ir_version)
    session = make_session(model, 1)
    runs = [session.run(points, {n: np.full(shapes[n], v, np.float32) for n in names}) for v in (0.0, 255.0)]
    lows = np.array([min(float(np.min(r[k])) for r in runs) for k in range(len(points))])
    highs = np.array([max(float(np.max(r[k])) for r in runs) for k in range(len(points))])
    return lows, highs
