"""Scaled dot-product attention written out as nodes, found by its structure.

Exporters write attention as MatMul(q, k) -> [Add bias or mask] -> [Mul / Div by the scale] -> Softmax ->
[Transpose / Reshape] -> MatMul with v (either side); a Softmax of an opset below 13 arrives here between a Flatten
and a Reshape (the opset upgrade's form of its flattening axis). rknn-toolkit2 2.5.0 compiles that chain for RKNPU2
as one op, exSDPAttention (its rule `_p_fuse_exmatmul_add_mul_exsoftmax13_exmatmul_to_sdpa`; its accuracy_analysis
lists one layer per attention of YOLO11's C2PSA block, ViT-S and PP-OCRv4's SVTR recognizer): the scores and the
probabilities are never stored as integers, only q, k, v and the result. Rounded to 8 bits, the probabilities
over a few hundred positions would keep a level or two each.

An *attention region* is the nodes from the scores MatMul to the one that reads the probabilities, whose
tensors nothing else reads; ``inner`` are the tensors between them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Set

import numpy as np
import onnx

LAYOUT = {"Transpose", "Reshape", "Flatten", "Identity"}  # scores or probabilities moved into place
SCORE_STEPS = {"Mul", "Div", "Add", "Sub"} | LAYOUT  # the scale, and a bias or mask added to the scores
MAX_STEPS = 4


@dataclass
class AttentionRegion:
    scores: int       # the MatMul of q and k (node index)
    softmax: int
    output: int       # the MatMul that reads the probabilities
    inner: Set[str]   # the scores, the probabilities and what lies between: tensors the fused op never stores


def _static(t: str, dynamic: Set[str], const: Callable[[str], Optional[np.ndarray]]) -> bool:
    return t not in dynamic or const(t) is not None


def find_attention_regions(nodes: Sequence[onnx.NodeProto], dynamic: Set[str], keep: Set[str],
                           const: Callable[[str], Optional[np.ndarray]]) -> List[AttentionRegion]:
    """Attention regions of the graph. ``dynamic``: tensors that depend on the input data; ``keep``: tensors that
    must stay visible (graph outputs, what sub-graphs read); ``const``: a constant's value by name. A step between
    the MatMuls has one data input (the other a constant: the scale, a bias table); the scores MatMul reads two
    data tensors (q and k), the output MatMul the probabilities and one more (v)."""
    producer: Dict[str, int] = {}
    consumers: Dict[str, List[int]] = {}
    for i, n in enumerate(nodes):
        for t in n.output:
            producer[t] = i
        for t in n.input:
            if t:
                consumers.setdefault(t, []).append(i)

    def only_reader(t: str) -> Optional[int]:
        readers = consumers.get(t, [])
        return readers[0] if len(readers) == 1 and t not in keep else None

    def plain(n: onnx.NodeProto) -> bool:
        return n.domain in ("", "ai.onnx") and len(n.output) == 1

    found: List[AttentionRegion] = []
    for s, node in enumerate(nodes):
        if node.op_type != "Softmax" or not plain(node) or node.input[0] not in dynamic:
            continue
        inner = {node.output[0]}
        t, steps = node.input[0], 0
        while steps <= MAX_STEPS and t in producer and only_reader(t) is not None:
            n = nodes[producer[t]]
            if n.op_type == "MatMul" and plain(n):
                break
            data = [x for x in n.input if x and not _static(x, dynamic, const)]
            if n.op_type not in SCORE_STEPS or not plain(n) or len(data) != 1:
                t = ""
                break
            inner.add(t)
            t, steps = data[0], steps + 1
        if not t or t not in producer or only_reader(t) is None:
            continue
        scores = producer[t]
        if nodes[scores].op_type != "MatMul" or not all(x in dynamic and const(x) is None
                                                        for x in nodes[scores].input):
            continue
        inner.add(t)
        t, reader = node.output[0], only_reader(node.output[0])
        while reader is not None and nodes[reader].op_type in LAYOUT and plain(nodes[reader]) and \
                nodes[reader].input[0] == t:
            t = nodes[reader].output[0]
            inner.add(t)
            reader = only_reader(t)
        if reader is None or nodes[reader].op_type != "MatMul" or not plain(nodes[reader]):
            continue
        other = [x for x in nodes[reader].input if x != t]
        if len(other) != 1 or other[0] not in dynamic or const(other[0]) is not None:
            continue
        found.append(AttentionRegion(scores, s, reader, inner))
    return found


__all__ = ["AttentionRegion", "find_attention_regions"]
