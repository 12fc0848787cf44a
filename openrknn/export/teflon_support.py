"""Which TFLite ops Mesa's Teflon delegate offloads to the RK3588 NPU through the mainline `rocket` driver.

Read from Mesa's source (there is no documented table): the Teflon frontend (src/gallium/frontends/teflon/
tfl_device.c, fill_operation) hands the driver CONV_2D, DEPTHWISE_CONV_2D, MAX/AVERAGE_POOL_2D, ADD,
CONCATENATION, SPLIT, PAD, FULLY_CONNECTED, RESHAPE, RELU, ABS, LOGISTIC, SUB, TRANSPOSE and STRIDED_SLICE (a conv's
fused activation must be NONE, RELU, or RELU6 whose quantized range stays within 6); the rocket driver
(src/gallium/drivers/rocket/rkt_ml.c, rkt_ml_operation_supported) then accepts convolutions whose input, weights,
bias and output are all per-tensor quantized with dilation 1, and ADDs of two computed tensors (it fuses them into
the conv before). Everything else runs on the board's CPU in the TFLite interpreter. Mesa main as read on
2026-12-03; when Mesa grows, this table is the one place to change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import numpy as np

TEFLON_FRONTEND_OPS = frozenset({
    "CONV_2D", "DEPTHWISE_CONV_2D", "MAX_POOL_2D", "AVERAGE_POOL_2D", "ADD", "CONCATENATION", "SPLIT", "PAD",
    "FULLY_CONNECTED", "RESHAPE", "RELU", "ABS", "LOGISTIC", "SUB", "TRANSPOSE", "STRIDED_SLICE"})
ROCKET_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "ADD"})
CONV_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D")
RELU6 = 3


@dataclass
class Placement:
    index: int           # operator index in the TFLite model
    builtin: str
    layer: str           # ONNX layer it came from
    unit: str            # NPU | CPU
    why: str = ""


def _per_tensor(t) -> bool:
    return t is not None and t.quant is not None and t.dtype in (np.int8, np.uint8) and t.quant.scale.size == 1


def _why_not(model, op) -> Optional[str]:
    """None when the op goes to the NPU, else the reason it stays on the CPU."""
    if op.builtin not in TEFLON_FRONTEND_OPS:
        return f"Teflon does not hand {op.builtin} to NPU drivers"
    if op.builtin not in ROCKET_OPS:
        return f"the rocket driver does not implement {op.builtin} yet"
    tensors = [model.tensors[i] if i >= 0 else None for i in op.inputs] + [model.tensors[i] for i in op.outputs]
    if op.builtin in CONV_OPS:
        x, w, b, y = tensors[0], tensors[1], tensors[2], tensors[3]
        if x.dtype == np.float32 or y.dtype == np.float32:
            return ("float convolution: our graph applies its activation (SiLU, HardSwish...) in full precision inside "
                    "the conv; build with config(pre_activation_points='tflite') to give the conv an int8 output")
        if not _per_tensor(w):
            return ("per-channel weights: the rocket driver takes per-tensor weights only (build with "
                    "config(quantized_method='layer') to put this conv on the NPU)")
        if not (_per_tensor(x) and _per_tensor(y) and (b is None or b.quant is None or b.quant.scale.size == 1)):
            return "a tensor is not per-tensor quantized"
        opts = op.options[1] if op.options else {}
        if opts.get("DilationWFactor", 1) != 1 or opts.get("DilationHFactor", 1) != 1:
            return "dilated convolution"
        act = opts.get("FusedActivationFunction", 0)
        if act not in (0, 1, RELU6):
            return "fused activation other than RELU/RELU6"
        if act == RELU6 and float(y.quant.scale[0]) * (127 - int(y.quant.zero_point[0])) > 6.0:
            return "RELU6 whose output range exceeds 6"
        return None
    # ADD
    if any(t is not None and t.data is not None for t in tensors[:2]):
        return "ADD with a constant operand (the driver fuses only the sum of two computed tensors)"
    if any(t.dtype == np.float32 for t in tensors):
        return "float ADD"
    return None


def teflon_placement(model) -> List[Placement]:
    """NPU or CPU for every operator of an exported TFLite model (export.tflite.writer.Model)."""
    out = []
    for i, op in enumerate(model.operators):
        why = _why_not(model, op)
        out.append(Placement(i, op.builtin, op.layer, "CPU" if why else "NPU", why or ""))
    return out


def placement_table(places: List[Placement], width: int = 118) -> str:
    npu = sum(p.unit == "NPU" for p in places)
    lines = [f"Mesa Teflon on the rocket driver: {npu} of {len(places)} TFLite ops on the NPU, "
             f"{len(places) - npu} on the CPU",
             f"{'#':>4} {'op':<22} {'unit':<4} {'layer':<40} why on the CPU", "-" * width]
    for p in places:
        lines.append(f"{p.index:>4} {p.builtin:<22} {p.unit:<4} {p.layer[:40]:<40} {p.why}")
    return "\n".join(lines)


def estimate_with_fallbacks(onnx_model, report, places: List[Placement], target: str = "rk3588") -> dict:
    """Per-layer estimated time when the layers Teflon leaves on the CPU run there; the NPU-only estimate beside it.

    NPU rows come from analysis.perf's cost model; a layer any of whose TFLite ops stays on the CPU costs
    max(MACs / CPU_MACS_PER_SECOND, bytes / CPU bandwidth) plus the chip's NPU<->CPU hand-over.
    """
    from ..analysis.perf import CPU_MACS_PER_SECOND, estimate_perf
    from ..targets.chips import chip

    est = estimate_perf(onnx_model, target, "w8a8")
    cm = chip(target).gen.cost
    cpu_layers = {p.layer for p in places if p.unit == "CPU"}
    npu_layers = {p.layer for p in places if p.unit == "NPU"}
    rows, total = [], 0.0
    for r in est.rows:
        t = r.time_us
        unit = r.unit
        if r.unit == "NPU" and r.name in cpu_layers:
            t = (max(r.macs / CPU_MACS_PER_SECOND, r.bytes / (cm.cpu_gbps * 1e9)) + cm.cpu_op_us * 1e-6) * 1e6
            unit = "CPU"
        rows.append({"layer": r.name, "op": r.op_type, "unit": unit, "time_us": t, "npu_only_us": r.time_us})
        total += t
    extra = [p for p in places if p.unit == "CPU" and p.layer not in {r.name for r in est.rows}]
    extra_us = len(extra) * cm.cpu_op_us  # conversions the export added (DEQUANTIZE/QUANTIZE, layout ops)
    return {"target": target, "rows": rows, "total_us": total + extra_us, "npu_only_us": est.total_us,
            "cpu_layers": len(cpu_layers - npu_layers), "extra_cpu_ops": len(extra)}
