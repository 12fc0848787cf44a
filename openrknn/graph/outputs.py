"""Which of a model's outputs are intermediate results it exposes: tensors its own later layers also read.

Training code often leaves them in an export (a U-Net's decoder features beside its mask, deep-supervision taps). An
output must come out exactly as the float model computes it, so such a tensor constrains the int8 model around it:
cross-layer equalization cannot rescale its channels, and the default range choice judges it like a final result.

And what of the outputs two versions of a model are compared on, where an output is a selection (an NMS inside the
export): comparable_outputs.
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



# ops whose output's length depends on the values (a detector's NMS inside the export): two builds of one model may
# give different lengths, so such an output is compared through what its selection reads
SELECTION_OPS = frozenset({"NonMaxSuppression", "NonZero", "Compress", "Unique"})


def comparable_outputs(graph: onnx.GraphProto) -> List[str]:
    """What to compare when two versions of the model (float and fake-quantized) are measured against each other:
    each graph output, except that an output computed after a selection (SELECTION_OPS: the detections an NMS keeps)
    is replaced by the tensors the selection's region reads from before it (the boxes and scores NMS ranks, the
    decoded predictions it gathers from). Their shapes are fixed; the selected rows are a function of them."""
    producer: Dict[str, onnx.NodeProto] = {o: n for n in graph.node for o in n.output}
    inits = {i.name for i in graph.initializer}
    after = set()  # outputs of the selection ops and of every node reading one (the value-shaped region)
    for n in graph.node:  # nodes are in topological order
        if n.op_type in SELECTION_OPS or any(i in after for i in n.input):
            after.update(o for o in n.output if o)
    if not after:
        return [o.name for o in graph.output]
    out: List[str] = []
    for o in graph.output:
        if o.name not in after:
            if o.name not in out:
                out.append(o.name)
            continue
        stack, seen = [o.name], set()
        while stack:
            t = stack.pop()
            if t in seen:
                continue
            seen.add(t)
            node = producer.get(t)
            if t in after and node is not None:
                stack.extend(i for i in node.input if i)
            elif t not in inits and node is not None and node.op_type != "Constant" and t not in out:
                out.append(t)
    return out


__all__ = ["SELECTION_OPS", "comparable_outputs", "exposed_intermediates"]
