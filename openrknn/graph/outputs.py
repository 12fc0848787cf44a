"""Which of a model's outputs are intermediate results it exposes: tensors its own later layers also read.

Training code often leaves them in an export (a U-Net's decoder features beside its mask, deep-supervision taps). An
output must come out exactly as the float model computes it, so such a tensor constrains the int8 model around it:
cross-layer equalization cannot rescale its channels, and the default range choice judges it like a final result.
"""

from __future__ import annotations

from typing import Dict, List

import onnx

# ops that only copy a tensor (an fp16 export's output Cast): the tensor before them is what the output exposes
COPIES = ("Cast", "Identity")
# output types that are quantized; any other (an index, a length, a mask) constrains nothing. 0: not declared
QUANTIZED_TYPES = {0, onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                   onnx.TensorProto.BFLOAT16}


def exposed_intermediates(graph: onnx.GraphProto) -> List[str]:
    """The graph's floating-point outputs that its own nodes also read, directly or before a Cast / Identity copy
    (an integer output such as a decoder's lengths is never quantized, whatever reads it)."""
    producer: Dict[str, onnx.NodeProto] = {o: n for n in graph.node for o in n.output}
    readers: Dict[str, List[onnx.NodeProto]] = {}
    for n in graph.node:
        for x in n.input:
            readers.setdefault(x, []).append(n)
    found = []
    for out in graph.output:
        if out.type.tensor_type.elem_type not in QUANTIZED_TYPES:
            continue
        t, seen = out.name, set()
        while t not in seen:
            seen.add(t)
            if any(r.op_type not in COPIES for r in readers.get(t, [])):
                found.append(out.name)
                break
            node = producer.get(t)
            if node is None or node.op_type not in COPIES:
                break
            t = node.input[0]
    return found


__all__ = ["exposed_intermediates"]
