"""Memory: a real activation plan (liveness + best-fit offsets, in-place ops) and the eval_memory report.

Internal memory is the size of the arena the plan needs: every intermediate activation gets an offset, and two
activations that are alive at the same step never overlap. Views (Reshape, Flatten...) share their input's buffer;
elementwise ops write over an input that dies at that op. Graph inputs and outputs are the caller's buffers and are
reported apart; pre-processing the NPU folds into the first conv reads the input buffer directly.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import onnx

from ..targets.chips import VIEW_OPS, chip
from ..units import format_bytes
from .graph_info import GraphInfo, Layer, analyze

log = logging.getLogger("openrknn.analysis.memory")


@dataclass
class Buffer:
    name: str            # the first tensor that lives in it
    size: int            # bytes
    start: int           # first step (layer index) it is alive at
    end: int             # last step it is read at
    tensors: list[str] = field(default_factory=list)
    offset: int = -1

    def overlaps_in_time(self, other: Buffer) -> bool:
        return self.start <= other.end and other.start <= self.end


@dataclass
class MemoryPlan:
    buffers: list[Buffer]
    arena_bytes: int                 # internal memory: max(offset + size) over the plan
    peak_live_bytes: int             # max over steps of the bytes alive: no plan can use less than this
    peak_step: int
    peak_layer: str
    live_bytes: list[int]            # bytes alive at each step (layer index), for charts
    input_bytes: dict[str, int]
    output_bytes: dict[str, int]
    tensor_buffer: dict[str, str]    # activation tensor -> buffer name ("<input>"/"<output>" for external ones)
    strategy: str = ""

    @property
    def fragmentation(self) -> float:
        return self.arena_bytes / self.peak_live_bytes - 1.0 if self.peak_live_bytes else 0.0


# ---------------------------------------------------------------------------------------------------------------------
# in-place rules: op type -> which input's buffer the output may take over (registry, one entry per op family)
InPlaceRule = Callable[[Layer, GraphInfo], list[str]]
IN_PLACE_RULES: dict[str, InPlaceRule] = {}

_UNARY = ("Relu", "Clip", "Sigmoid", "Tanh", "LeakyRelu", "PRelu", "HardSwish", "HardSigmoid", "Elu", "Abs", "Neg",
          "Sqrt", "Exp", "Log", "Reciprocal", "Erf", "Gelu", "Mish", "Softplus", "BatchNormalization", "Floor", "Ceil",
          "Round", "Sign", "Swish")
_BINARY = ("Add", "Sub", "Mul", "Div", "Max", "Min", "Pow")


def in_place(*ops: str) -> Callable[[InPlaceRule], InPlaceRule]:
    def deco(fn: InPlaceRule) -> InPlaceRule:
        for op in ops:
            IN_PLACE_RULES[op] = fn
        return fn
    return deco


@in_place(*_UNARY, *_BINARY)
def _elementwise(layer: Layer, gi: GraphInfo) -> list[str]:
    # candidates: inputs with exactly the output's shape and dtype (a broadcast operand cannot hold the result)
    out = gi.tensors[layer.outputs[0]]
    return [t for t in layer.inputs if gi.tensors[t].shape == out.shape and gi.tensors[t].nbytes == out.nbytes]


class _Groups:
    """Union-find over tensor names: tensors that share one buffer, with the last step any of them is read at."""

    def __init__(self, last: dict[str, int], external: set) -> None:
        self.parent: dict[str, str] = {}
        self.end: dict[str, int] = dict(last)
        self.external = set(external)

    def find(self, t: str) -> str:
        self.parent.setdefault(t, t)
        while self.parent[t] != t:
            self.parent[t] = self.parent[self.parent[t]]
            t = self.parent[t]
        return t

    def union(self, keep: str, other: str) -> None:
        a, b = self.find(keep), self.find(other)
        if a == b:
            return
        self.parent[b] = a
        self.end[a] = max(self.end.get(a, -1), self.end.get(b, -1))
        if b in self.external:
            self.external.add(a)


def _last_use(gi: GraphInfo) -> dict[str, int]:
    last: dict[str, int] = {}
    for layer in gi.layers:
        for t in layer.inputs:
            last[t] = max(last.get(t, -1), layer.index)
    return last


def build_buffers(gi: GraphInfo, in_place_ops: bool = True) -> tuple[list[Buffer], dict[str, str], set, set]:
    """Group tensors into buffers with lifetimes. Returns (internal buffers, tensor -> group root, external input
    roots, external output roots)."""
    last = _last_use(gi)
    inputs, outputs = set(gi.inputs), set(gi.outputs)
    groups = _Groups(last, inputs)
    for layer in gi.layers:
        if not layer.outputs or layer.outputs[0] not in gi.tensors:
            continue
        out = layer.outputs[0]
        if layer.role == "preprocess" or (layer.role == "view" and layer.op_type in VIEW_OPS):
            if layer.inputs:
                groups.union(layer.inputs[0], out)  # same bytes under another name, or folded into the first conv
            continue
        if not in_place_ops or layer.role != "compute":
            continue
        rule = IN_PLACE_RULES.get(layer.op_type)
        for cand in rule(layer, gi) if rule else []:
            root = groups.find(cand)
            # take over a buffer only when nobody reads it (under any name) later and it is not the caller's input
            if root not in groups.external and groups.end.get(root, -1) <= layer.index:
                groups.union(cand, out)
                break
    ext_in = {groups.find(t) for t in inputs if t in gi.tensors}
    ext_out = {groups.find(t) for t in outputs if t in gi.tensors}
    by_root: dict[str, Buffer] = {}
    for name, t in gi.tensors.items():
        prod = t.producer
        if prod is None and name not in inputs:
            continue  # constants folded at build time
        if prod is not None and gi.layers[prod].role == "const":
            continue
        root = groups.find(name)
        start = prod if prod is not None else 0
        end = max(last.get(name, start), start)
        b = by_root.get(root)
        if b is None:
            by_root[root] = Buffer(root, t.nbytes, start, end, [name])
        else:
            b.size, b.start, b.end = max(b.size, t.nbytes), min(b.start, start), max(b.end, end)
            b.tensors.append(name)
    internal = [b for r, b in by_root.items() if r not in ext_in and r not in ext_out]
    tensor_root = {n: groups.find(n) for n in gi.tensors}
    return internal, tensor_root, ext_in, ext_out


# ---------------------------------------------------------------------------------------------------------------------
# offsets
def _place(order: list[Buffer], best_fit: bool) -> int:
    """Each buffer goes into a gap left by the already placed buffers it meets in time: the smallest gap that holds it
    (best fit) or the lowest (first fit); above them all when no gap does. Returns the arena size."""
    placed: list[Buffer] = []
    top = 0
    for b in order:
        busy = sorted((p for p in placed if p.overlaps_in_time(b)), key=lambda p: p.offset)
        best_off, best_gap, cursor = None, None, 0
        for p in busy:
            gap = p.offset - cursor
            if gap >= b.size and (best_gap is None or (best_fit and gap < best_gap)):
                best_off, best_gap = cursor, gap
            cursor = max(cursor, p.offset + p.size)
        b.offset = best_off if best_off is not None else cursor
        placed.append(b)
        top = max(top, b.offset + b.size)
    return top


_ORDERS: dict[str, Callable[[Buffer], tuple]] = {
    "size": lambda b: (-b.size, b.start, b.name),                       # greedy by size (TFLite's planner)
    "lifetime": lambda b: (-(b.end - b.start), -b.size, b.start, b.name),
    "area": lambda b: (-b.size * (b.end - b.start + 1), b.start, b.name),
    "start": lambda b: (b.start, -b.size, b.name),                      # allocation order
}


def assign_offsets(buffers: list[Buffer], lower_bound: int = 0, restarts: Optional[int] = None,
                   seed: int = 0) -> tuple[int, str]:
    """Place the buffers with a few orderings and both fit policies, then seeded random perturbations of the size
    order, keeping the smallest arena; stops as soon as the arena reaches `lower_bound` (the liveness peak, which no
    plan can beat). Deterministic for a given graph. Returns (arena bytes, strategy)."""
    if not buffers:
        return 0, ""
    best: Optional[tuple[int, str, dict[str, int]]] = None

    def attempt(order: list[Buffer], name: str) -> bool:
        nonlocal best
        for best_fit in (True, False):
            top = _place(order, best_fit)
            if best is None or top < best[0]:
                best = (top, f"{name}/{'best' if best_fit else 'first'} fit", {b.name: b.offset for b in buffers})
            if best[0] <= lower_bound:
                return True
        return False

    done = any(attempt(sorted(buffers, key=key), name) for name, key in _ORDERS.items())
    if not done:
        rng = random.Random(seed)
        n = restarts if restarts is not None else max(4, min(64, 8000 // len(buffers)))
        for i in range(n):
            jitter = {b.name: rng.uniform(0.5, 1.5) for b in buffers}
            if attempt(sorted(buffers, key=lambda b: (-b.size * jitter[b.name], b.name)), f"random #{i}"):
                break
    assert best is not None
    for b in buffers:
        b.offset = best[2][b.name]
    return best[0], best[1]


def live_profile(buffers: list[Buffer], steps: int) -> list[int]:
    live = [0] * max(steps, 1)
    for b in buffers:
        for s in range(b.start, min(b.end, steps - 1) + 1):
            live[s] += b.size
    return live


def plan_memory(model: onnx.ModelProto, quant_dtype: Optional[str], in_place_ops: bool = True,
                info: Optional[GraphInfo] = None) -> MemoryPlan:
    """Plan the internal activation memory of `model` as the NPU stores it (dtypes from quant_dtype or the QDQ graph).
    """
    gi = info if info is not None else analyze(model, quant_dtype)
    buffers, tensor_root, ext_in, ext_out = build_buffers(gi, in_place_ops)
    live = live_profile(buffers, len(gi.layers))
    peak = max(live) if live else 0
    arena, strategy = assign_offsets(buffers, lower_bound=peak)
    step = live.index(peak) if live else 0
    roots = {b.name for b in buffers}
    tensor_buffer = {t: (r if r in roots else "<input>" if r in ext_in else "<output>" if r in ext_out else "")
                     for t, r in tensor_root.items()}
    return MemoryPlan(
        buffers=buffers, arena_bytes=arena, peak_live_bytes=peak, peak_step=step,
        peak_layer=gi.layers[step].name if gi.layers else "", live_bytes=live,
        input_bytes={t: gi.tensors[t].nbytes for t in gi.inputs if t in gi.tensors},
        output_bytes={t: gi.tensors[t].nbytes for t in gi.outputs if t in gi.tensors},
        tensor_buffer=tensor_buffer, strategy=strategy,
    )


# ---------------------------------------------------------------------------------------------------------------------
def weight_memory(gi: GraphInfo) -> dict:
    """Stored weights by dtype, and the quantization parameters (scales, zero points) stored with them."""
    by_dtype: dict[str, int] = {}
    params = param_bytes = per_channel = 0
    for w in gi.weights.values():
        by_dtype[w.dtype] = by_dtype.get(w.dtype, 0) + w.nbytes
        params += w.quant_params
        param_bytes += w.quant_param_bytes
        per_channel += int(w.quant_params > 2)
    return {"by_dtype": dict(sorted(by_dtype.items())), "total": sum(by_dtype.values()),
            "quant_params": params, "quant_param_bytes": param_bytes, "per_channel_tensors": per_channel}


def io_bytes(metas: list[dict]) -> dict[str, int]:
    """Bytes of each caller's buffer, from the package's input/output records (deployed shape and dtype)."""
    return {m["name"]: int(np.prod(m["shape"], dtype=np.int64)) * np.dtype(m["dtype"]).itemsize for m in metas}


def eval_memory_report(model: onnx.ModelProto, target: str, quant_dtype: Optional[str], is_print: bool = True,
                       host_rss_bytes: Optional[int] = None, input_metas: Optional[list[dict]] = None) -> dict:
    """What RKNN.eval_memory prints and returns: weights, internal (plan arena), inputs/outputs, total vs the chip.

    host_rss_bytes: the measured resident memory of the process running the model (not part of the NPU figures),
    printed apart. input_metas: the package's input records: the NPU reads what the application feeds, in its
    deployed shape and dtype (a uint8 NHWC frame, not the float tensor the graph's pre-processing starts from).
    Outputs are counted as the NPU stores them (the graph's dtypes).
    """
    spec = chip(target)
    gi = analyze(model, quant_dtype)
    plan = plan_memory(model, quant_dtype, info=gi)
    weights = weight_memory(gi)
    if input_metas is not None:
        plan.input_bytes = io_bytes(input_metas)
    io_in, io_out = sum(plan.input_bytes.values()), sum(plan.output_bytes.values())
    total = weights["total"] + weights["quant_param_bytes"] + plan.arena_bytes + io_in + io_out
    dram = spec.typical_dram_mb * 2**20
    report = {
        "target": spec.name, "quantized_dtype": quant_dtype,
        "weight": weights,
        "internal": {"total": plan.arena_bytes, "peak_live": plan.peak_live_bytes, "peak_layer": plan.peak_layer,
                     "buffers": len(plan.buffers), "strategy": plan.strategy},
        "input": {"total": io_in, "per_input": plan.input_bytes},
        "output": {"total": io_out, "per_output": plan.output_bytes},
        "total": total,
        "chip": {"typical_dram_bytes": dram, "share_of_dram": total / dram if dram else None,
                 "npu_buffer_bytes": spec.onchip_buffer_kb * 1024,
                 "largest_activation": max((b.size for b in plan.buffers), default=0)},
        "host_rss": host_rss_bytes,
    }
    if is_print:
        print(format_memory_report(report))
    return report


def _size(n: Optional[float]) -> str:
    return f"{format_bytes(n):>10}"


def format_memory_report(r: dict) -> str:
    w = r["weight"]
    lines = ["=" * 78, f"Memory  target {r['target']}, dtype {r['quantized_dtype'] or 'float (fp16 on the NPU)'}"]
    # the parts below add up to it, as the HTML report's 'weights' and the total count it
    lines.append(f"  Weight memory            {_size(w['total'] + w['quant_param_bytes'])}")
    for dt, n in w["by_dtype"].items():
        lines.append(f"    {dt:<22} {_size(n)}")
    lines.append(f"    quantization params    {_size(w['quant_param_bytes'])}  ({w['quant_params']} values, "
                 f"{w['per_channel_tensors']} per-channel tensors)")
    i = r["internal"]
    lines.append(f"  Internal memory          {_size(i['total'])}  (peak live {format_bytes(i['peak_live'])} at "
                 f"{i['peak_layer']}; {i['buffers']} buffers)")
    lines.append(f"  Input buffers            {_size(r['input']['total'])}")
    lines.append(f"  Output buffers           {_size(r['output']['total'])}")
    lines.append(f"  Total memory             {_size(r['total'])}")
    c = r["chip"]
    lines.append(f"  vs a typical {r['target']} board: {100 * (c['share_of_dram'] or 0):.2f}% of "
                 f"{format_bytes(c['typical_dram_bytes'])} DRAM; largest activation "
                 f"{format_bytes(c['largest_activation'])} vs a {format_bytes(c['npu_buffer_bytes'])} NPU buffer")
    lines.append("=" * 78)
    if r.get("host_rss") is not None:  # this machine's process, not the board: outside the NPU figures
        lines.append(f"Measured on this host (not part of the board estimate): the process running the model uses "
                     f"{format_bytes(r['host_rss'])} (resident set)")
    return "\n".join(lines)
