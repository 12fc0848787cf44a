"""onnx's shape inference, checked against onnxruntime where the two disagree.

onnx's inference is right for nearly every op, and the passes here store what it infers. Where it is wrong, the
stored shape is worse than none: onnxruntime trusts it over its own and then refuses the next op (onnx 1.x infers an
STFT's output without the onesided halving, [1, 100, 512, 2] for [1, 100, 257, 2], and the mel MatMul after it fails
in every whisper / Kaldi / GigaAM front end that uses the op). When strict inference objects, one run of the graph
at its fixed input shapes gives the shapes it disputes; later inference keeps a stored shape and derives the rest
from it.
"""

from __future__ import annotations

import logging
from typing import List, Sequence, Tuple

import numpy as np
import onnx

log = logging.getLogger("openrknn.graph")


def infer_shapes(model: onnx.ModelProto, data_prop: bool = False) -> onnx.ModelProto:
    """onnx.shape_inference.infer_shapes, with any stored shape onnxruntime computes differently replaced by
    onnxruntime's (only looked for when strict inference objects to the result)."""
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=data_prop)
    try:
        onnx.shape_inference.infer_shapes(inferred, strict_mode=True)
        return inferred
    except Exception:
        pass
    try:
        fixed = runtime_shapes(inferred)
    except Exception as e:  # the graph does not run: the caller's own checks say why
        log.debug("shapes not checked against onnxruntime: %s", e)
        return inferred
    if not fixed:
        return inferred
    log.info("shapes onnx inferred wrong, set as onnxruntime computes them: %s", ", ".join(fixed[:8]))
    return onnx.shape_inference.infer_shapes(inferred, data_prop=data_prop)  # what follows them, outputs included


def run_shapes(model: onnx.ModelProto, names: Sequence[str]) -> List[Tuple[int, ...]]:
    """The shapes of the tensors ``names`` in one run of the graph on zeros at its fixed input shapes (the inputs'
    values do not change a static graph's shapes; a dim that is not fixed runs as 1). The stored shapes are left
    out of the run: they may be what is in question."""
    from ..runtime.ort_session import make_session

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.value_info[:]
    have = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in have)
    inits = {t.name for t in model.graph.initializer}
    feeds = {i.name: np.zeros([d.dim_value if d.dim_value > 0 else 1 for d in i.type.tensor_type.shape.dim],
                              onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type))
             for i in model.graph.input if i.name not in inits}
    return [tuple(np.shape(v)) for v in make_session(probe, 1).run(list(names), feeds)]


def runtime_shapes(model: onnx.ModelProto) -> List[str]:
    """Set every fully static stored shape of a node output that a run at the fixed input shapes contradicts to the
    run's, in place; returns the names corrected."""
    stored = {v.name: v for v in model.graph.value_info
              if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape")
              and all(d.HasField("dim_value") for d in v.type.tensor_type.shape.dim)}
    names = [o for n in model.graph.node for o in n.output if o in stored]
    if not names:
        return []
    fixed = []
    for name, shape in zip(names, run_shapes(model, names)):
        dims = stored[name].type.tensor_type.shape.dim
        if [d.dim_value for d in dims] != list(shape):
            del dims[:]
            for d in shape:
                dims.add().dim_value = int(d)
            fixed.append(name)
    return fixed
