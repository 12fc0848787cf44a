"""openrknn's ranges for the tensors the vendor quantizes and our package does not.

An RKNPU2 package already stores as int8 what the chip requantizes (a depthwise conv's output before its SiLU, an
activation's output before range split's remap: quant/plan.py). What is left: tensors of the vendor's own making,
the pre-activations its quantization file lists but the chip computes inside the fused op (a standard conv's before
its SiLU or a standalone Sigmoid), which route qdq must quantize, and
every such tensor of a package built for another target. Without a range from us the vendor would use its own
calibration; these ranges come from our calibration samples run through our own float graph (the package's graph
with its rewrites, Q/DQ removed), chosen by openrknn:

- a pre-activation (the input of a Sigmoid, or of the Sigmoid and Mul of a SiLU): the range that keeps the
  activation's output closest (squared error over the calibration histogram) to the unquantized one. With the
  package's 'normal' algorithm the upper end stays at the calibrated maximum (as minmax keeps it for every other
  tensor) and only the lower end is searched: below it the activation is flat, so levels spent there are wasted;
  with 'kl_divergence' / 'mmse' (whose packages clip) both ends are searched.
- any other tensor: the package's own algorithm (min/max, or the KL / MSE clipping searches) on its histogram.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import numpy as np
import onnx

log = logging.getLogger("openrknn.vendor")

Range = Tuple[float, float]
HIST_BINS = 4096


@dataclass
class ExtraRanges:
    ranges: Dict[str, Range] = field(default_factory=dict)  # every float tensor of the graph we have a range for
    preactivations: Dict[str, str] = field(default_factory=dict)  # tensor -> 'silu' | 'sigmoid'
    samples: int = 0
    seconds: float = 0.0


def _int8():
    from ..quant.schemes import TensorFormat

    return TensorFormat(8, True, False)


def preactivations(model: onnx.ModelProto) -> Dict[str, str]:
    """Inputs of the graph's Sigmoids: 'silu' when the same tensor is multiplied by the sigmoid (x * sigmoid(x)),
    else 'sigmoid'."""
    cons: Dict[str, List[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            cons.setdefault(i, []).append(n)
    out = {}
    for n in model.graph.node:
        if n.op_type != "Sigmoid":
            continue
        x = n.input[0]
        silu = any(c.op_type == "Mul" and n.output[0] in c.input and x in c.input for c in cons.get(x, []))
        out[x] = "silu" if silu else "sigmoid"
    return out


def float_graph(package) -> onnx.ModelProto:
    """The package's graph with its rewrites and its weights on our grid, Q/DQ removed (tensor names kept), in the
    package's own feed layout (so calibration samples feed it as they feed our simulator)."""
    from .prepare import strip_qdq

    model = onnx.load_from_string(package.model_bytes)
    return strip_qdq(model)


def compute(package, samples: Sequence[Tuple[str, List[np.ndarray]]], skip: Sequence[str] = (),
            progress: bool = False) -> ExtraRanges:
    """Ranges for every float tensor of the package's float graph not in `skip` (the tensors our package already
    quantizes), from `samples` ([(stem, [array per input])], NHWC as read_samples returns them)."""
    from ..quant.algorithms.activations import activation_range, kl_range, mmse_range
    from ..quant.calibrate import Stats, collect_histograms, collect_minmax

    t0 = time.perf_counter()
    model = float_graph(package)
    pre = preactivations(model)
    algorithm = (package.metadata.get("quantization") or {}).get("algorithm") or "normal"
    skip = set(skip)
    names = [o for n in model.graph.node for o in n.output if o and o not in skip]
    # by position: a graph input the package quantizes directly (an audio model's features) is named after its
    # dequantized value in the float graph (prepare.strip_qdq), not as the metadata names it
    inits = {t.name for t in model.graph.initializer}
    graph_inputs = [i.name for i in model.graph.input if i.name not in inits]
    feeds = [{name: a.astype(np.float32) for name, a in zip(graph_inputs, arrays)} for _stem, arrays in samples]
    stats = Stats()
    collect_minmax(model, names, feeds, {}, stats, progress=progress)
    wanted = [t for t in names if t in pre or algorithm != "normal"]
    wanted = [t for t in wanted if stats.minmax[t][1] > stats.minmax[t][0]]
    if wanted:
        collect_histograms(model, wanted, feeds, stats, bins=HIST_BINS, progress=progress)
    fmt = _int8()
    out = ExtraRanges(preactivations={t: k for t, k in pre.items() if t in stats.minmax}, samples=len(feeds))
    for t in names:
        lo, hi = stats.minmax[t]
        if t in stats.hist and t in pre:
            lo, hi = activation_range(stats.hist[t], lo, hi, pre[t], algorithm != "normal", fmt)
        elif t in stats.hist and algorithm == "kl_divergence":
            lo, hi = kl_range(stats.hist[t], lo, hi, fmt)
        elif t in stats.hist and algorithm == "mmse":
            lo, hi = mmse_range(stats.hist[t], lo, hi, fmt)
        out.ranges[t] = (float(lo), float(hi))
    out.seconds = time.perf_counter() - t0
    log.info("vendor: openrknn ranges for %d tensors the package leaves unquantized (%d pre-activations) from %d "
             "samples in %.1f s", len(out.ranges), len(out.preactivations), out.samples, out.seconds)
    return out
