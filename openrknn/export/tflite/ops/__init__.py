"""Per-ONNX-op TFLite lowerings, one module per op family; each registers an OpRule under its ONNX op type.

int8(ctx, node, fused_activation_node) emits the quantized form (ctx.out_q gives the output tensor with our
scale and zero point); float(ctx, node) the float form. Either may return a note for the per-layer report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional

import onnx


@dataclass
class OpRule:
    int8: Optional[Callable] = None
    float: Optional[Callable] = None
    fuses_activation: bool = False          # a following Relu/Clip becomes TFLite's fused activation
    int8_ok: Optional[Callable] = None      # extra condition for the int8 form (attributes, constants)


RULES: Dict[str, OpRule] = {}


def register(*op_types: str, **kwargs) -> Callable[[OpRule], OpRule]:
    rule = OpRule(**kwargs)
    for op in op_types:
        RULES[op] = rule
    return rule


def attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def layer_name(node: onnx.NodeProto) -> str:
    return node.name or node.output[0]


from . import activations, conv, elementwise, ids, math, nms, norm, pool, rnn, shape, warp  # noqa: E402,F401  (registration)
