"""Which layers the NPU fuses into the conv before them, per generation. Shared by the cost model and the checker.

A fused layer costs no separate pass over memory: its work happens in the conv's output stage.
Rules (FACTS.md, seed): RKNPU1 fuses conv + ReLU, and conv + max-pool when the pool is 2x2 or 3x3 with stride 2
(2x2: even input, no padding; 3x3: odd input other than 1, no padding, width < 64 for 8-bit / < 32 for 16-bit).
RKNPU2 fuses the activations in its table and a residual Add. x * sigmoid(x) (SiLU) costs one elementwise pass of its
own (its Sigmoid folded into the Mul) on both generations. rknn-toolkit2 2.5.0 does compile conv + sigmoid + multiply
into one 'ConvExSwish' layer, but the published speeds of yolov5s with SiLU and with ReLU (same network otherwise)
differ by about a third on every chip: the fused activation is not free, and the pass models what it costs (fitting
it as a free fused activation made every RKNPU2 chip's fit worse; bench/RESULTS.md). A multiply or add by a scalar
constant joins the layer before it on RKNPU1 (a different output scale or zero point; not measured); rknn-toolkit2
compiles it as a layer of its own for RKNPU2 (measured on PP-OCRv4 det's scalar affines and range split's remaps).
x * hardsigmoid(x) is a HardSwish (opset < 14 exports spell it so) and fuses wherever the HardSwish op does.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Callable, Optional

import numpy as np

from ..targets.chips import Generation
from ..targets.schemes import DTYPE_BYTES
from .graph_info import GraphInfo, Layer


def _pair(v: object, default: int) -> list[int]:
    if v is None:
        return [default, default]
    vals = list(v) if isinstance(v, (list, tuple)) else [int(v)]
    return vals if len(vals) >= 2 else vals * 2


def maxpool_fusion_problems(pool: Layer, gi: GraphInfo) -> list[str]:
    """Why an RKNPU1 conv cannot absorb this MaxPool (empty list = it can). Sizes are of the pool's input, NCHW."""
    kernel = _pair(pool.attrs.get("kernel_shape"), 1)[:2]
    strides = _pair(pool.attrs.get("strides"), 1)[:2]
    pads = list(pool.attrs.get("pads") or [0, 0, 0, 0])
    auto_pad = pool.attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    shape = gi.tensors[pool.inputs[0]].shape if pool.inputs else ()
    h, w = (shape[2], shape[3]) if len(shape) == 4 else (0, 0)
    bits = 8 * DTYPE_BYTES.get(gi.tensors[pool.inputs[0]].dtype, 2) if pool.inputs else 16
    problems = []
    if kernel not in ([2, 2], [3, 3]) or strides != [2, 2]:
        problems.append(f"pool {kernel[0]}x{kernel[1]} stride {strides[0]}x{strides[1]}; fusion needs 2x2 or 3x3 "
                        f"with stride 2")
        return problems
    if any(pads) or auto_pad not in ("NOTSET", "VALID"):
        problems.append(f"pool has padding {pads if any(pads) else auto_pad}; fusion needs none")
    if kernel == [2, 2] and (h % 2 or w % 2):
        problems.append(f"2x2 pool input {h}x{w} is not even")
    if kernel == [3, 3]:
        if h % 2 == 0 or w % 2 == 0 or h == 1 or w == 1:
            problems.append(f"3x3 pool input {h}x{w} must be odd and not 1")
        limit = 64 if bits <= 8 else 32
        if w >= limit:
            problems.append(f"3x3 pool input width {w} must be < {limit} for {int(bits)}-bit")
    return problems


def _single_consumer_host(layer: Layer, gi: GraphInfo, fused: dict[int, int], hosts: Collection[str]) -> int | None:
    """The group that `layer` can join: its input comes from a host op (or its group) and nobody else reads it."""
    if not layer.inputs:
        return None
    prod = gi.producer(layer.inputs[0])
    if prod is None or len(gi.tensors[layer.inputs[0]].consumers) != 1 or layer.inputs[0] in gi.outputs:
        return None
    host = fused.get(prod.index, prod.index)
    return host if gi.layers[host].op_type in hosts else None


FusionRule = Callable[[Layer, GraphInfo, Generation, dict[int, int]], Optional[int]]
FUSION_RULES: dict[str, FusionRule] = {}


def fusion_rule(*ops: str) -> Callable[[FusionRule], FusionRule]:
    def deco(fn: FusionRule) -> FusionRule:
        for op in ops:
            FUSION_RULES[op] = fn
        return fn
    return deco


@fusion_rule("Relu", "Clip", "PRelu", "LeakyRelu", "Sigmoid", "HardSwish", "HardSigmoid", "Tanh")
def _activation(layer: Layer, gi: GraphInfo, gen: Generation, fused: dict[int, int]) -> int | None:
    # a hard gate only where the HardSwish op runs in a conv's output stage (RKNPU1 runs it on the CPU)
    if (layer.op_type == "Sigmoid" or "HardSwish" in gen.fused_activations) and _gate_mul(layer, gi) is not None:
        return _gate_mul(layer, gi)
    if layer.op_type not in gen.fused_activations:
        return None
    return _single_consumer_host(layer, gi, fused, gen.activation_hosts)


def _gate_mul(gate: Layer, gi: GraphInfo) -> int | None:
    """x * sigmoid(x) or x * hardsigmoid(x): the gate joins its Mul, which becomes one SiLU / HardSwish layer."""
    if not gate.inputs or not gate.outputs:
        return None
    cons = gi.consumers(gate.outputs[0])
    if len(cons) == 1 and cons[0].op_type == "Mul" and set(cons[0].inputs) == {gate.inputs[0], gate.outputs[0]}:
        return cons[0].index
    return None


def _gated_hardswish_host(mul: Layer, gi: GraphInfo, gen: Generation, fused: dict[int, int]) -> int | None:
    """x * hardsigmoid(x), the HardSwish of exports before opset 14: the conv that computes x takes it as its
    activation where the generation fuses HardSwish, as it takes a HardSwish op (rknn-toolkit2 compiles both as
    ConvHardSwish), so the estimate does not depend on how the export spelled it. x must feed nothing else."""
    gates = [gi.layers[i] for i, h in fused.items() if h == mul.index and gi.layers[i].op_type == "HardSigmoid"]
    if not gates or "HardSwish" not in gen.fused_activations:
        return None
    x = gates[0].inputs[0]
    prod = gi.producer(x)
    if prod is None or x in gi.outputs or {c.index for c in gi.consumers(x)} != {gates[0].index, mul.index}:
        return None
    host = fused.get(prod.index, prod.index)
    return host if gi.layers[host].op_type in gen.activation_hosts else None


def _scalar_affine(layer: Layer, gi: GraphInfo, fused: dict[int, int]) -> int | None:
    """x * c or x + c with c a one-element constant, after a layer that requantizes its output: the output stage
    absorbs it (a scale and a zero-point shift, or a different lookup table), as the quantizer plans it."""
    if len(layer.inputs) != 1 or len(layer.weights) != 1 or int(np.prod(gi.weights[layer.weights[0]].shape)) != 1:
        return None
    prod = gi.producer(layer.inputs[0])
    if prod is None or prod.role != "compute" or len(gi.tensors[layer.inputs[0]].consumers) != 1 \
            or layer.inputs[0] in gi.outputs:
        return None
    return fused.get(prod.index, prod.index)


@fusion_rule("Mul")
def _scaled(layer: Layer, gi: GraphInfo, gen: Generation, fused: dict[int, int]) -> int | None:
    gated = _gated_hardswish_host(layer, gi, gen, fused)
    if gated is not None or not gen.fuses_scalar_affine:
        return gated
    return _scalar_affine(layer, gi, fused)


@fusion_rule("Add")
def _residual_add(layer: Layer, gi: GraphInfo, gen: Generation, fused: dict[int, int]) -> int | None:
    shifted = _scalar_affine(layer, gi, fused) if gen.fuses_scalar_affine else None
    if shifted is not None:
        return shifted
    if not gen.fuses_residual_add or len(layer.inputs) != 2:
        return None
    shapes = {gi.tensors[t].shape for t in layer.inputs}
    if len(shapes) != 1:  # broadcasting adds are not residuals
        return None
    for t in layer.inputs:
        prod = gi.producer(t)
        if prod is None or len(gi.tensors[t].consumers) != 1:
            continue
        host = fused.get(prod.index, prod.index)
        if gi.layers[host].op_type == "Conv":
            return host
    return None


@fusion_rule("MaxPool")
def _maxpool(layer: Layer, gi: GraphInfo, gen: Generation, fused: dict[int, int]) -> int | None:
    if not gen.fuses_max_pool or maxpool_fusion_problems(layer, gi):
        return None
    return _single_consumer_host(layer, gi, fused, ("Conv",))


def fuse(gi: GraphInfo, gen: Generation) -> dict[int, int]:
    """Map fused layer index -> index of the layer that absorbs it (a conv, or the Mul of a SiLU / HardSwish)."""
    fused: dict[int, int] = {}
    for layer in gi.layers:
        if layer.role != "compute":
            continue
        rule = FUSION_RULES.get(layer.op_type)
        host = rule(layer, gi, gen, fused) if rule else None
        if host is not None and host != layer.index:
            fused[layer.index] = fused.get(host, host)
    for i, h in fused.items():  # a gate joined its Mul, and the Mul a conv later: the gate belongs to the conv
        while h in fused:
            h = fused[h]
        fused[i] = h
    return fused


def logical_op(layer: Layer, gi: GraphInfo, fused: dict[int, int]) -> str:
    """The op a layer runs as: a Mul that absorbed its Sigmoid is a SiLU; a conv with groups == channels is
    depthwise."""
    gates = {gi.layers[i].op_type for i, h in fused.items() if h == layer.index}
    if layer.op_type == "Mul" and "Sigmoid" in gates:
        return "SiLU"
    if layer.op_type == "Mul" and "HardSigmoid" in gates:
        return "HardSwish"
    return layer.op_type
