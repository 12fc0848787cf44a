"""auto_pad spelled out as explicit pads (Keras / TensorFlow exports write SAME_UPPER / VALID).

Every later pass (range split, the cost model, the TFLite exporter, the vendor bridge) reads `pads`; with the input's
spatial size known the two forms compute the same thing, so the graph carries one of them."""

from __future__ import annotations

import logging
from typing import Dict, List, Optional

import onnx
from onnx import helper

log = logging.getLogger("openrknn.graph")

OPS = ("Conv", "MaxPool", "AveragePool", "LpPool")  # ConvTranspose's auto_pad means output padding: left alone


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _spatial_shapes(model: onnx.ModelProto) -> Dict[str, List[Optional[int]]]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # a graph shape inference cannot read keeps its auto_pad
        return {}
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return shapes


def same_pads(size: int, kernel: int, stride: int, dilation: int, upper: bool) -> tuple:
    """(begin, end) padding of one axis under SAME_UPPER (extra pad at the end) or SAME_LOWER (at the start)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    small, big = total // 2, total - total // 2
    return (small, big) if upper else (big, small)


def explicit_pads(model: onnx.ModelProto) -> int:
    """Rewrite auto_pad as pads wherever the input's spatial size is known; returns how many nodes changed."""
    nodes = [n for n in model.graph.node if n.op_type in OPS
             and _attr(n, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")]
    if not nodes:
        return 0
    shapes = _spatial_shapes(model)
    inits = {t.name: t for t in model.graph.initializer}
    changed = 0
    for n in nodes:
        mode = _attr(n, "auto_pad")
        mode = mode.decode() if isinstance(mode, bytes) else str(mode)
        shape = shapes.get(n.input[0])
        if n.op_type == "Conv":
            w = inits.get(n.input[1])
            kernel = list(w.dims[2:]) if w is not None else _attr(n, "kernel_shape")
        else:
            kernel = _attr(n, "kernel_shape")
        if not kernel or not shape or len(shape) != len(kernel) + 2:
            continue
        spatial = shape[2:]
        rank = len(kernel)
        strides = _attr(n, "strides") or [1] * rank
        dilations = _attr(n, "dilations") or [1] * rank
        if mode == "VALID":
            begin, end = [0] * rank, [0] * rank
        elif mode in ("SAME_UPPER", "SAME_LOWER"):
            if any(s is None for s in spatial):
                continue
            pairs = [same_pads(s, k, st, d, mode == "SAME_UPPER")
                     for s, k, st, d in zip(spatial, kernel, strides, dilations)]
            begin, end = [p[0] for p in pairs], [p[1] for p in pairs]
        else:
            continue
        keep = [a for a in n.attribute if a.name not in ("auto_pad", "pads")]
        del n.attribute[:]
        n.attribute.extend(keep + [helper.make_attribute("pads", begin + end)])
        changed += 1
    if changed:
        log.info("auto_pad written as explicit pads on %d node(s)", changed)
    return changed


__all__ = ["explicit_pads", "same_pads"]
