"""optimization_level 0-3 mapped onto onnxslim's passes (constant folding, dead nodes, fusions)."""

from __future__ import annotations

import logging
from collections import Counter

import onnx

from .names import rename_uses

log = logging.getLogger("openrknn.graph")

# What each level adds (the pre-processing fold into the first conv happens at level 3, in preprocess.py).
LEVELS = {
    0: "no graph changes",
    1: "constant folding, identity/dropout/dead-node removal, common sub-expressions, auto_pad as explicit pads",
    2: "level 1 + fusions (Conv+BatchNorm, Gemm+BatchNorm, Conv+Add/Mul, Gemm, Pad+Conv, reshape/transpose chains), "
       "constant per-channel scales and shifts folded into the convs next to them, spelled-out activations as one op, "
       "the pieces of Concats that BatchNorms read standardised where they are made",
    3: "level 2 + mean/std/channel-reorder folded into the first convolution where exact",
}


def _drop_inference_noops(model: onnx.ModelProto) -> int:
    """Dropout (inference) and Identity are pure pass-throughs; rewire their consumers (inside Loop/If bodies too)."""
    graph_outputs = {o.name for o in model.graph.output}
    rename = {}
    keep = []
    for node in model.graph.node:
        if node.op_type in ("Identity", "Dropout") and node.output[0] not in graph_outputs:
            src = node.input[0]
            rename[node.output[0]] = rename.get(src, src)
            continue
        keep.append(node)
    removed = len(model.graph.node) - len(keep)
    if removed:
        del model.graph.node[:]
        model.graph.node.extend(keep)
        for old, new in rename.items():
            rename_uses(model.graph, old, new)
    return removed


def _fold(model: onnx.ModelProto) -> None:
    """graph/fold.py's exact rewrites, until none applies (a folded scale can expose an activation and back)."""
    from . import fold

    total: Counter = Counter({"Concat pieces rescaled": fold.normalize_concat_pieces(model)})  # once: see there
    for _ in range(4):
        step = Counter({"activations": fold.canonical_activations(model),
                        "squeezes sunk": fold.sink_squeezes(model),
                        "channel sums": fold.channel_sums_as_convs(model),
                        "logits of sigmoids": fold.logit_of_sigmoid(model),
                        "unit-stride deconvs": fold.unit_stride_transposed_convs(model),
                        "conv affine": fold.fold_conv_affine(model),
                        "batch norms after a Gemm": fold.fold_gemm_batchnorm(model),
                        "Gemm affine": fold.fold_gemm_affine(model),
                        "input scales": fold.fold_input_scale(model)})
        total.update(step)
        if not sum(step.values()):
            break
    if sum(total.values()):
        log.info("folded: %s", ", ".join(f"{k} {v}" for k, v in total.items() if v))


def _keep_inputs(model: onnx.ModelProto, declared) -> None:
    """An input that only fed shape arithmetic is unused once the shapes are fixed, and onnxslim drops it; the
    application still passes it (whisper's front end reads waveforms_lens only for its Shape), so it stays, in its
    place, unread."""
    have = {i.name for i in model.graph.input}
    if all(d.name in have for d in declared):
        return
    kept = {i.name: i for i in model.graph.input}
    ordered = [kept.get(d.name, d) for d in declared] + [i for i in model.graph.input
                                                         if i.name not in {d.name for d in declared}]
    del model.graph.input[:]
    model.graph.input.extend(ordered)


def optimize(model: onnx.ModelProto, level: int) -> onnx.ModelProto:
    if level <= 0:
        return model
    import onnxslim

    from .pads import explicit_pads

    before = Counter(n.op_type for n in model.graph.node)
    declared = [onnx.ValueInfoProto.FromString(i.SerializeToString()) for i in model.graph.input]
    _drop_inference_noops(model)
    explicit_pads(model)  # before onnxslim: its Pad+Conv fusion reads explicit pads only
    skip = [] if level >= 2 else ["graph_fusion"]
    out = onnxslim.slim(model, skip_optimizations=skip or None)
    if out is None:  # onnxslim returns None only when it failed internally; keep the input graph
        log.warning("onnxslim could not optimise the graph; continuing with the unoptimised graph")
        return model
    if level >= 2:
        _fold(out)
    _keep_inputs(out, declared)
    after = Counter(n.op_type for n in out.graph.node)
    log.info("optimization_level %d: %d -> %d nodes (%s)", level, sum(before.values()), sum(after.values()),
             LEVELS[level])
    return out
