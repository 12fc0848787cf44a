"""Speed: the estimated per-layer time on a target NPU (a roofline cost model) and the measured time on this host.

Estimate, per layer group (a conv and what the NPU fuses into it):
    compute = MACs / (MACs per cycle for the dtype x clock x utilisation)       (conv, gemm)
            = bytes / (elementwise bytes per cycle x clock)                      (everything else on the NPU)
    memory  = (weights + activations read + written) / modelled DDR bandwidth
    time    = max(compute, memory) + per-layer overhead;  CPU-fallback ops use the board CPU's modelled speed.
A quantized graph's float tail (host_tail: what follows its last quantized tensors, as output Sigmoids computed
from int8 logits) runs on the board's CPU after the NPU: its rows (unit "tail") are costed there, in float32, and
kept out of the NPU total (published board figures time the NPU graph alone).
Utilisation rules live in the `COST_RULES` registry keyed by op type; their parameters in targets/chips.py.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import onnx

from ..errors import InferenceInputError, ModelLoadError
from ..targets.chips import ChipSpec, chip, placement
from .fusion import fuse, logical_op
from .graph_info import GraphInfo, Layer, analyze, recurrent_steps, with_node_names

log = logging.getLogger("openrknn.analysis.perf")

# Board CPU speed for layers that fall back or follow the NPU (RK3588's Cortex-A76 cluster). A modelling assumption,
# not a measurement: no primary source gives it, so read CPU rows as an order of magnitude.
CPU_MACS_PER_SECOND = 20e9
_QUANTIZED = ("int", "uint")  # tensor dtypes the NPU stores (int8, uint8, int16...), against float16 / float32


@dataclass
class PerfRow:
    layer_id: int
    name: str
    op_type: str
    time_us: float
    unit: str              # NPU | CPU | tail (the float tail, on the board's CPU after the NPU) | fused (into the
                           # layer named in `fused_into`) | free
    bound: str = ""        # compute | memory | overhead
    macs: int = 0
    bytes: int = 0
    dtype: str = ""
    fused_into: str = ""


@dataclass
class PerfEstimate:
    target: str
    quant_dtype: str | None
    rows: list[PerfRow]
    total_us: float        # the NPU and the CPU fallbacks inside the graph; not the float tail
    macs: int
    cores: int = 1
    tail_us: float = 0.0   # the float tail on the board's CPU after the NPU (rows with unit "tail")

    @property
    def fps(self) -> float:
        return 1e6 / self.total_us if self.total_us > 0 else float("inf")

    def by_op_type(self) -> list[tuple[str, float]]:
        acc: dict[str, float] = defaultdict(float)
        for r in self.rows:
            if r.unit == "tail":
                continue
            acc[r.op_type] += r.time_us
        return sorted(acc.items(), key=lambda kv: -kv[1])


@dataclass
class HostPerf:
    total_us: float                     # median wall time of one run
    per_node_us: dict[str, float]       # model node name -> median kernel time
    unmapped_us: float                  # kernel time the profiler reported under names not in the model
    runs: int
    threads: int | None
    runs_us: list[float] = field(default_factory=list)

    @property
    def fps(self) -> float:
        return 1e6 / self.total_us if self.total_us > 0 else float("inf")


# ---------------------------------------------------------------------------------------------------------------------
# cost rules: op type -> (compute seconds, bytes moved), given a layer group
@dataclass
class Group:
    host: Layer
    members: list[Layer]
    op: str                 # logical op (SiLU, Conv, ...)
    in_bytes: int
    out_bytes: int
    weight_bytes: int
    macs: int


CostRule = Callable[[Group, GraphInfo, ChipSpec], float]
COST_RULES: dict[str, CostRule] = {}


def cost_rule(*ops: str) -> Callable[[CostRule], CostRule]:
    def deco(fn: CostRule) -> CostRule:
        for op in ops:
            COST_RULES[op] = fn
        return fn
    return deco


def _align(n: int, lane: int) -> int:
    return int(math.ceil(n / lane) * lane) if n > 0 else lane


def conv_utilisation(layer: Layer, gi: GraphInfo, spec: ChipSpec) -> float:
    """Share of peak MACs a conv achieves: kernel family (3x3 best) x channel-lane alignment; depthwise is poor."""
    cm = spec.cost
    w = gi.weights[layer.weights[0]].shape if layer.weights else ()
    if len(w) < 3:
        return cm.util_1x1
    cout, cin_g, kernel = w[0], w[1], tuple(w[2:])
    group = int(layer.attrs.get("group", 1))
    if layer.op_type == "ConvTranspose":
        cout, cin_g = w[1] * group, w[0] // max(group, 1)
    if cin_g == 1 and group == cout:  # depthwise (a 1-channel part of a split depthwise conv has group 1)
        return cm.util_depthwise * group / _align(group, cm.lane_depthwise)
    family = cm.util_3x3 if kernel == (3, 3) else cm.util_1x1 if all(k == 1 for k in kernel) else cm.util_other
    # the array reduces over Cin x kh x kw and pays for whole lane blocks of it and of Cout
    k = cin_g * math.prod(kernel)
    cout_g = cout // max(group, 1)
    return family * (k / _align(k, cm.lane_in)) * (cout_g / _align(cout_g, cm.lane_out))


@cost_rule("Conv", "ConvTranspose")
def _conv_cost(g: Group, gi: GraphInfo, spec: ChipSpec) -> float:
    util = conv_utilisation(g.host, gi, spec)
    return g.macs / (spec.macs_per_second(_mac_mode(g.host, spec)) * util)


@cost_rule("Gemm", "MatMul")
def _gemm_cost(g: Group, gi: GraphInfo, spec: ChipSpec) -> float:
    return g.macs / (spec.macs_per_second(_mac_mode(g.host, spec)) * spec.cost.util_gemm)


@cost_rule("LSTM")
def _recurrent_cost(g: Group, gi: GraphInfo, spec: ChipSpec) -> float:
    """A recurrent layer is as many dependent NPU tasks as time steps, each a matrix-vector product per direction
    that reads all gate weights again (megabytes of them do not stay in the NPU's buffer): per step the larger of
    its MACs at the gemm utilisation and its weights at DDR speed, plus a task's overhead (MODELLED; no board
    timing of an LSTM of known size is published)."""
    steps = max(1, recurrent_steps(g.host, gi.tensors))
    compute = g.macs / steps / (spec.macs_per_second(_mac_mode(g.host, spec)) * spec.cost.util_gemm)
    memory = g.weight_bytes / spec.ddr_bytes_per_second
    return steps * (max(compute, memory) + spec.cost.layer_overhead_us * 1e-6)


def _elementwise_cost(g: Group, gi: GraphInfo, spec: ChipSpec) -> float:
    # vector unit: streams the larger of what it reads and writes
    return max(g.in_bytes, g.out_bytes) / (spec.cost.elementwise_bytes_per_cycle * spec.npu_clock_mhz * 1e6)


@cost_rule("MaxPool", "AveragePool")
def _pool_cost(g: Group, gi: GraphInfo, spec: ChipSpec) -> float:
    k = g.host.attrs.get("kernel_shape") or [1, 1]
    return _elementwise_cost(g, gi, spec) * max(1.0, float(np.prod(k)) / 4.0)


def concat_in_place(layer: Layer, gi: GraphInfo, spec: ChipSpec) -> bool:
    """A channel Concat whose parts are whole channel blocks of the NPU layout (NC1HWC2, C2 = the output lane width)
    costs nothing: the producers write straight into their slice of the output."""
    shapes = [gi.tensors[t].shape for t in layer.inputs]
    rank = len(shapes[0]) if shapes else 0
    axis = int(layer.attrs.get("axis", 1))
    axis = axis + rank if axis < 0 else axis
    lane = spec.cost.lane_out
    return rank == 4 and axis == 1 and all(len(s) == 4 and s[1] % lane == 0 for s in shapes) \
        and all(gi.producer(t) is not None for t in layer.inputs)


def _mac_mode(layer: Layer, spec: ChipSpec) -> str:
    mode = layer.mac_mode
    return mode if mode in spec.macs_per_cycle else "float16"


def _groups(gi: GraphInfo, fused: Mapping[int, int]) -> dict[int, list[Layer]]:
    members: dict[int, list[Layer]] = defaultdict(list)
    for layer in gi.layers:
        members[fused.get(layer.index, layer.index)].append(layer)
    return members


def _group(host: Layer, members: list[Layer], gi: GraphInfo, fused: Mapping[int, int]) -> Group:
    produced = {t for m in members for t in m.outputs}
    ins = {t for m in members for t in m.inputs if t not in produced}
    outs = set()
    for m in members:
        for t in m.outputs:
            if t in gi.outputs or any(fused.get(c, c) != host.index for c in gi.tensors[t].consumers):
                outs.add(t)
    wts = {w for m in members for w in m.weights}
    return Group(
        host=host, members=members, op=logical_op(host, gi, fused),
        in_bytes=sum(gi.tensors[t].nbytes for t in ins),
        out_bytes=sum(gi.tensors[t].nbytes for t in outs),
        weight_bytes=sum(gi.weights[w].nbytes + gi.weights[w].quant_param_bytes for w in wts),
        macs=sum(m.macs for m in members),
    )


def estimate_perf(model: onnx.ModelProto, target: str | ChipSpec, quant_dtype: str | None, cores: int = 1,
                  info: GraphInfo | None = None) -> PerfEstimate:
    """Estimated per-layer NPU time of `model` on `target` (one NPU core unless `cores` says more).

    target: a chip name, or a ChipSpec (fitting the cost parameters: bench/perf_estimate.py --fit).
    quant_dtype: the config's quantized_dtype (None = float, which the NPU runs in fp16). A QDQ graph's own types
    win layer by layer.
    """
    spec = target if isinstance(target, ChipSpec) else chip(target)
    gi = info if info is not None else analyze(model, quant_dtype)
    fused = fuse(gi, spec.gen)
    groups = _groups(gi, fused)
    cm = spec.cost
    bw = spec.ddr_bytes_per_second  # cores share the board's DDR, so more cores do not add bandwidth
    tail, head = host_tail(gi), host_head(gi)
    rows: list[PerfRow] = []
    for layer in gi.layers:
        if layer.index in tail:
            rows.append(_host_row(layer, gi, cm))
            continue
        if layer.index in head:
            rows.append(_host_row(layer, gi, cm, "CPU"))
            continue
        host_idx = fused.get(layer.index)
        if host_idx is not None:
            rows.append(PerfRow(layer.index, layer.name, layer.op_type, 0.0, "fused", macs=layer.macs,
                                dtype=layer.act_dtype, fused_into=gi.layers[host_idx].name))
            continue
        if layer.role in ("preprocess", "view", "const"):
            unit = "fused" if layer.role == "preprocess" else "free"
            into = _first_consumer_name(layer, gi) if layer.role == "preprocess" else ""
            rows.append(PerfRow(layer.index, layer.name, layer.op_type, 0.0, unit, dtype=layer.act_dtype,
                                fused_into=into))
            continue
        if layer.op_type == "Concat" and concat_in_place(layer, gi, spec):
            rows.append(PerfRow(layer.index, layer.name, layer.op_type, 0.0, "free", dtype=layer.act_dtype))
            continue
        g = _group(layer, groups[layer.index], gi, fused)
        moved = g.in_bytes + g.out_bytes + g.weight_bytes
        where = placement(layer.op_type, spec.generation)
        if where in ("cpu", "unsupported"):
            # board CPU: streams the data or computes its MACs (a GRU's steps), plus the NPU -> CPU -> NPU hand-over
            compute, memory = g.macs / CPU_MACS_PER_SECOND, moved / (cm.cpu_gbps * 1e9)
            t = max(compute, memory) + cm.cpu_op_us * 1e-6
            rows.append(PerfRow(layer.index, layer.name, g.op, t * 1e6, "CPU",
                                "compute" if compute > memory else "memory", g.macs, moved, layer.act_dtype))
            continue
        compute = COST_RULES.get(g.op, _elementwise_cost)(g, gi, spec) / max(1, min(cores, spec.cores))
        memory = moved / bw
        t = max(compute, memory) + cm.layer_overhead_us * 1e-6
        bound = "compute" if compute >= memory else "memory"
        if cm.layer_overhead_us * 1e-6 > max(compute, memory):
            bound = "overhead"
        rows.append(PerfRow(layer.index, layer.name, g.op, t * 1e6, "NPU", bound, g.macs, moved, layer.act_dtype))
    total = sum(r.time_us for r in rows if r.unit != "tail")
    return PerfEstimate(spec.name, quant_dtype, rows, total, sum(layer.macs for layer in gi.layers),
                        min(cores, spec.cores), sum(r.time_us for r in rows if r.unit == "tail"))


def host_tail(gi: GraphInfo) -> set[int]:
    """The compute layers of a quantized graph that follow its last quantized tensors on the way to the outputs
    (output Sigmoids computed from int8 logits, a detector's float Concat of boxes and scores, a last layer kept
    float by hybrid quantization): the float tail the board's CPU runs after the NPU, as the vendor bridge's
    .post.onnx and the runtime server do. Empty for a float graph."""
    if not gi.quantized:
        return set()
    tail: set[int] = set()
    seen: set[int] = set()
    stack = list(gi.outputs)
    while stack:
        t = gi.tensors.get(stack.pop())
        if t is None or t.producer is None or t.dtype.startswith(_QUANTIZED) or t.producer in seen:
            continue
        layer = gi.layers[t.producer]
        seen.add(layer.index)
        if layer.role in ("preprocess", "const"):
            continue
        if layer.role == "compute":
            tail.add(layer.index)
        stack.extend(layer.inputs)  # through views (a Reshape costs nothing on either side)
    return tail


def host_head(gi: GraphInfo) -> set[int]:
    """The compute layers of a quantized graph fed only from small float or integer graph inputs through tensors not
    quantized, whose outputs are small too (a diffusion model's noise-level embedding: quant/plan.host_conditioning):
    the board's CPU computes them in float before the NPU runs, and a quantized output of one is what it hands the
    NPU. Empty for a float graph."""
    from ..quant.plan import CONDITION_BRANCH_MAX, CONDITION_MAX

    if not gi.quantized:
        return set()
    stored = ("int8", "uint8", "int16", "uint16")  # the NPU's quantized storage; an int64 timestep is no such thing
    host = {t for t in gi.inputs if t in gi.tensors and gi.tensors[t].dtype not in stored
            and gi.tensors[t].known and gi.tensors[t].numel <= CONDITION_MAX}
    head: set[int] = set()
    for layer in gi.layers:
        # a Cast or a scaling of the input there reads as pre-processing (free on the NPU's input stage): it carries
        # the branch on, costing nothing either way
        if layer.role not in ("compute", "view", "preprocess") or not layer.inputs or \
                not all(t in host for t in layer.inputs):
            continue
        outs = [gi.tensors[t] for t in layer.outputs if t in gi.tensors]
        if any(not t.known or t.numel > CONDITION_BRANCH_MAX for t in outs):
            continue
        if not any(t.dtype in stored for t in outs):
            host.update(layer.outputs)  # not quantized yet: the branch goes on
        if layer.role == "compute":
            head.add(layer.index)
    return head


def _host_row(layer: Layer, gi: GraphInfo, cm, unit: str = "tail") -> PerfRow:
    """A layer on the board's CPU in float32 (``unit`` "tail": after the NPU; "CPU": before it): its int8 inputs
    read as stored, everything else 4 bytes an element. The data crosses between CPU and NPU once, as every
    model's inputs and outputs do: no per-op hand-over."""
    moved = sum(gi.tensors[t].numel * (1 if gi.tensors[t].dtype.startswith(_QUANTIZED) else 4)
                for t in layer.inputs + layer.outputs if t in gi.tensors)
    moved += sum(gi.weights[w].nbytes for w in layer.weights if w in gi.weights)
    compute, memory = layer.macs / CPU_MACS_PER_SECOND, moved / (cm.cpu_gbps * 1e9)
    return PerfRow(layer.index, layer.name, layer.op_type, max(compute, memory) * 1e6, unit,
                   "compute" if compute >= memory else "memory", layer.macs, moved, "float32")


def _first_consumer_name(layer: Layer, gi: GraphInfo) -> str:
    """The compute layer that a pre-processing chain (Transpose -> Sub -> Mul) feeds: where the NPU folds it."""
    frontier = list(layer.outputs)
    while frontier:
        for c in gi.consumers(frontier.pop(0)):
            if c.role == "compute":
                return c.name
            frontier.extend(c.outputs)
    return ""


# ---------------------------------------------------------------------------------------------------------------------
# measured on this host
def measure_host_perf(model_bytes: bytes, feeds: Mapping[str, np.ndarray], runs: int = 10,
                      threads: int | None = None, warmup: int = 1) -> HostPerf:
    """Profile the model with onnxruntime on this host: median wall time and median per-node kernel time.

    Node names are those of `graph_info.node_names` (unnamed nodes get '<op>_<index>'). Kernels that onnxruntime
    fused or rewrote are mapped back to the model node whose output they produce (or the nearest one downstream).
    """
    from ..runtime.ort_session import make_session

    if runs < 1:
        raise InferenceInputError(f"runs={runs}: need at least one run to measure")
    try:
        model = onnx.load_from_string(model_bytes)
    except Exception as e:
        raise ModelLoadError(f"measure_host_perf: model bytes are not an ONNX model ({e})") from e
    from ..runtime.speedups import speed_up

    model = with_node_names(model)
    # what the simulator runs (same outputs, faster kernels)
    fast = speed_up(model.SerializeToString(), {k: np.shape(v) for k, v in feeds.items()})
    with tempfile.TemporaryDirectory(prefix="openrknn_prof_") as tmp:
        optimized_path = os.path.join(tmp, "optimized.onnx")
        sess = make_session(fast.model_bytes, threads or None, profile_prefix=os.path.join(tmp, "prof"),
                            optimized_path=optimized_path, disabled_optimizers=fast.disabled_optimizers)
        wanted = {i.name for i in sess.get_inputs()}
        if set(feeds) != wanted:
            raise InferenceInputError(f"feeds {sorted(feeds)} do not match the model inputs {sorted(wanted)}")
        for _ in range(warmup):
            sess.run(None, dict(feeds))
        start_marks = []
        for _ in range(runs):
            t0 = time.perf_counter()
            sess.run(None, dict(feeds))
            start_marks.append((time.perf_counter() - t0) * 1e6)
        prof_path = sess.end_profiling()
        with open(prof_path) as f:
            events = json.load(f)
        optimized = onnx.load(optimized_path, load_external_data=False)
    mapping = _map_optimized_nodes(model, optimized)
    per_run: dict[str, list[float]] = defaultdict(list)
    unmapped: list[float] = []
    # one profiler event per kernel per run; the first `warmup` runs are left out
    seen: dict[str, int] = defaultdict(int)
    per_kernel: dict[str, list[float]] = defaultdict(list)
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        kname = e["name"][: -len("_kernel_time")]
        seen[kname] += 1
        if seen[kname] <= warmup:
            continue
        per_kernel[kname].append(float(e["dur"]))
    for kname, durs in per_kernel.items():
        target = mapping.get(kname)
        med = statistics.median(durs)
        if target is None:
            unmapped.append(med)
        else:
            per_run[target].append(med)
    per_node = {k: float(sum(v)) for k, v in per_run.items()}
    return HostPerf(statistics.median(start_marks), per_node, float(sum(unmapped)), runs, threads, start_marks)


_ORT_SUFFIX = re.compile(r"(_token_\d+|_nchwc)+$")  # layout-transformed copies of a node or tensor


def _map_optimized_nodes(model: onnx.ModelProto, optimized: onnx.ModelProto) -> dict[str, str]:
    """onnxruntime kernel name -> model node name, through the names the two graphs share.

    onnxruntime names a rewritten node after the original node ('Mul_43/QuickGeluFusion/', 'conv1_token_1') or
    after the original output tensor ('conv_out_nchwc'); failing both, the first tensor downstream that the model
    knows. A fused kernel (Conv+Relu named after the Relu's output) goes to the upstream node of its own kind.
    """
    names = {n.name for n in model.graph.node}
    producer = {t: n.name for n in model.graph.node for t in n.output}
    orig_inputs = {n.name: list(n.input) for n in model.graph.node}
    orig_op = {n.name: n.op_type for n in model.graph.node}
    opt_consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in optimized.graph.node:
        for t in n.input:
            opt_consumers[t].append(n)

    def same_kind_upstream(hit: str, op_type: str) -> str:
        base = op_type.replace("QLinear", "").replace("Fused", "").replace("Integer", "")
        cand = hit
        for _ in range(4):
            if orig_op.get(cand) == base:
                return cand
            ups = [producer[t] for t in orig_inputs.get(cand, []) if t in producer]
            if not ups:
                break
            cand = ups[0]
        return hit

    out: dict[str, str] = {}
    for n in optimized.graph.node:
        stem = _ORT_SUFFIX.sub("", n.name.split("/")[0])
        stem_t = stem
        if n.name in names or stem in names:
            out[n.name] = n.name if n.name in names else stem
            continue
        hit = producer.get(stem_t)
        frontier, seen = list(n.output), set()
        while hit is None and frontier:
            t = frontier.pop(0)
            if t in seen:
                continue
            seen.add(t)
            if t in producer:
                hit = producer[t]
                break
            for c in opt_consumers.get(t, []):
                frontier.extend(c.output)
        if hit is not None:
            out[n.name] = same_kind_upstream(hit, n.op_type)
    return out


# ---------------------------------------------------------------------------------------------------------------------
def eval_perf_report(model: onnx.ModelProto, model_bytes: bytes | None, target: str, quant_dtype: str | None,
                     feeds: Mapping[str, np.ndarray] | None, perf_debug: bool = False, is_print: bool = True,
                     runs: int = 5, threads: int | None = None) -> dict:
    """What RKNN.eval_perf prints and returns: the NPU estimate, and the host measurement when feeds are given.

    model_bytes: what the simulator runs (default: `model` serialized); its node names must be `model`'s.
    Returns {"target", "quantized_dtype", "cores", "npu_estimate": {total_us, fps, gmacs, tail_us, tail_layers},
    "host_measured": {total_us, fps, runs, unmapped_us} | None, "top_op_types": [...5], "layers": [...]
    (perf_debug only)}; tail_us: the float tail on the board's CPU after the NPU, not in total_us.
    """
    gi = analyze(model, quant_dtype)
    est = estimate_perf(model, target, quant_dtype, info=gi)
    host = None
    if feeds is not None:
        host = measure_host_perf(model_bytes or model.SerializeToString(), feeds, runs=runs, threads=threads)
    # host kernel times per layer: a layer owns its node and the Q/DQ nodes folded into it
    host_layer_us: dict[int, float] = defaultdict(float)
    if host is not None:
        for node, us in host.per_node_us.items():
            if node in gi.node_layer:
                host_layer_us[gi.node_layer[node]] += us
    report: dict = {
        "target": est.target, "quantized_dtype": quant_dtype, "cores": est.cores,
        "npu_estimate": {"total_us": round(est.total_us, 1), "fps": round(est.fps, 2),
                         "gmacs": round(est.macs / 1e9, 3), "tail_us": round(est.tail_us, 1),
                         "tail_layers": sum(r.unit == "tail" for r in est.rows)},
        "host_measured": None if host is None else {"total_us": round(host.total_us, 1), "fps": round(host.fps, 2),
                                                     "runs": host.runs, "unmapped_us": round(host.unmapped_us, 1)},
        "top_op_types": [{"op_type": op, "time_us": round(t, 1), "share": round(t / est.total_us, 4)
                          if est.total_us else 0.0} for op, t in est.by_op_type()[:5]],
    }
    if perf_debug:
        report["layers"] = [
            {"id": r.layer_id, "name": r.name, "op_type": r.op_type, "npu_us": round(r.time_us, 1),
             "host_us": None if host is None else round(host_layer_us.get(r.layer_id, 0.0), 1),
             "unit": r.unit, "bound": r.bound, "macs": r.macs, "fused_into": r.fused_into}
            for r in est.rows]
    if is_print:
        print(format_perf_report(report))
    return report


def user_layer_rows(layers: list[dict], of: Callable[[str], str],
                    op_types: Mapping[str, str] | None = None) -> list[dict]:
    """The per-layer rows of a report folded into the user's layers (`of`: built node -> user layer, from
    analysis.layer_names): the parts the quantizer cut one layer into add up into that layer's row, which lists them
    under "parts". A layer is "fused" only when all its parts are; its unit is where its time goes."""
    order: list[str] = []
    members: dict[str, list[dict]] = defaultdict(list)
    for r in layers:
        name = of(r["name"])
        if name not in members:
            order.append(name)
        members[name].append(r)
    out = []
    for name in order:
        parts = members[name]
        units = [p["unit"] for p in parts]
        timed = [p for p in parts if p["unit"] in ("NPU", "CPU", "tail")]
        if timed:
            unit = "CPU" if "CPU" in units else "NPU" if "NPU" in units else "tail"
        else:  # no part costs time: "fused" only when every part is (else what its parts share, or "free")
            unit = units[0] if len(set(units)) == 1 else "free"
        hosts = [p["host_us"] for p in parts if p.get("host_us") is not None]
        fused = {of(p["fused_into"]) for p in parts if p["unit"] == "fused" and p.get("fused_into")}
        slowest = max(timed, key=lambda p: p["npu_us"]) if timed else parts[0]
        folded = len(parts) > 1 or parts[0]["name"] != name
        out.append({"id": parts[0]["id"], "name": name, "op_type": (op_types or {}).get(name, parts[0]["op_type"]),
                    "npu_us": round(sum(p["npu_us"] for p in parts), 1),
                    "host_us": round(sum(hosts), 1) if hosts else None, "unit": unit, "bound": slowest["bound"],
                    "macs": sum(p["macs"] for p in parts),
                    "fused_into": fused.pop() if unit == "fused" and len(fused) == 1 else "",
                    "parts": [p["name"] for p in parts] if folded else []})
    return out


def format_perf_report(report: dict, show_parts: bool = False) -> str:
    """The eval_perf text. The per-layer table lists the user's layers ("user_layers") when the report has them
    (show_parts: each layer's parts in the built graph under it), else the built graph's nodes ("layers")."""
    lines = []
    w = 110
    lines.append("=" * w)
    est = report["npu_estimate"]
    lines.append(f"Performance  target {report['target']} ({report['cores']} core), "
                 f"dtype {report['quantized_dtype'] or 'float (fp16 on the NPU)'}")
    table = report.get("user_layers") or report.get("layers")
    if table:
        by_name = {r["name"]: r for r in report.get("layers") or []}
        lines.append(f"{'ID':>5}  {'Layer':<44} {'Op type':<18} {'NPU est (us)':>12} {'Host (us)':>10}  Unit")
        for r in table:
            if r["unit"] == "free" and not show_parts:
                continue
            lines.append(_perf_line(r, r["name"]))
            for part in r.get("parts") or [] if show_parts else []:
                if part in by_name:
                    lines.append(_perf_line(by_name[part], "  - " + part))
        lines.append("-" * w)
        lines.append("Top op types (NPU estimate):")
        for t in report["top_op_types"]:
            lines.append(f"  {t['op_type']:<20} {t['time_us']:>12.1f} us  {100 * t['share']:5.1f}%")
    lines.append(f"Total NPU time (estimated, board-free): {est['total_us'] / 1e3:.2f} ms   FPS: {est['fps']:.2f}   "
                 f"({est['gmacs']} GMAC)")
    if est.get("tail_layers"):
        lines.append(f"Then on the board's CPU, the float tail after the last int8 outputs (estimated): "
                     f"{est['tail_us'] / 1e3:.3f} ms over {est['tail_layers']} layer(s), not in the NPU time")
    host = report.get("host_measured")
    if host:
        what = f"after {host['warmup']} warm-up run, " if host.get("warmup") else ""
        lines.append(f"Inference on this host (simulator, measured, {what}median of {host['runs']}): "
                     f"{host['total_us'] / 1e3:.2f} ms   FPS: {host['fps']:.2f}")
    lines.append("=" * w)
    return "\n".join(lines)


def _perf_line(r: dict, label: str) -> str:
    host = "" if r.get("host_us") is None else f"{r['host_us']:.1f}"
    unit = r["unit"] if r["unit"] != "fused" else f"fused->{r['fused_into']}" if r.get("fused_into") else "fused"
    return (f"{r['id']:>5}  {label[:44]:<44} {r['op_type'][:18]:<18} {r['npu_us']:>12.1f} "
            f"{host:>10}  {unit}")


def estimate_to_dict(est: PerfEstimate) -> dict:
    d = asdict(est)
    d["fps"] = est.fps
    return d
