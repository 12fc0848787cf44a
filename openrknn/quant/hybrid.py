"""Hybrid quantization helpers: which quantizer names make up a layer, the user-editable .quantization.cfg, and
per-layer sensitivity measured on a QDQ graph (one layer's quantization bypassed at a time).

A "layer" is a node of the float graph; its quantizer names are the quantization points it produces (for a conv
fused with its activation, the activation's output) and its weight. Edits name layers, tensors or weights.
"""

from __future__ import annotations

import logging
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import helper

from ..errors import ConfigError
from ..metrics import cosine
from .ir import GraphInfo, normalize
from .plan import build_plan

log = logging.getLogger("openrknn.quant.hybrid")

# custom_quantize_layers values -> QuantOptions.overrides values. float16 / float32 layers are left unquantized:
# the simulator runs them in float, the NPU in fp16.
DTYPE_ALIASES = {
    "float": "float", "float16": "float", "float32": "float", "fp16": "float",
    "int16": "int16", "dynamic_fixed_point-i16": "int16", "w16a16i": "int16",
    "int8": "int8", "dynamic_fixed_point-i8": "int8",
    "uint8": "uint8", "asymmetric_quantized-u8": "uint8",
}


def layer_map(float_model: onnx.ModelProto, requantized_pre_activations: bool = False) -> Dict[str, List[str]]:
    """Node name -> the quantizer's names for that layer (points and weight), for nodes that have any.
    requantized_pre_activations: the target's (plan.py); a conv then maps to its requantized output and its
    activation's, as the two are one layer on the chip."""
    m = normalize(float_model)
    info = GraphInfo(m)
    plan = build_plan(info, requantized_pre_activations=requantized_pre_activations)
    points = set(plan.points)
    weight_of = {w.node: w.w for w in plan.weighted}

    def forward(t: str, depth: int = 0) -> List[str]:
        """The quantization points a non-point output reaches through fused activations (conv -> act, SiLU)."""
        if t in points and t not in plan.pre_activations:
            return [t]
        if depth > 2 or (t not in plan.internal and t not in plan.pre_activations):
            return []
        out: List[str] = [t] if t in points else []
        for c in info.consumers.get(t, []):
            for o in info.nodes[c].output:
                out += [x for x in forward(o, depth + 1) if x not in out]
        return out

    def backward_weight(i: int, depth: int = 0) -> Optional[str]:
        """The weight of the conv fused into activation node i (its input is an internal tensor)."""
        if i in weight_of:
            return weight_of[i]
        if depth > 2:
            return None
        for t in info.nodes[i].input:
            p = info.producer.get(t)
            if t in plan.internal and p is not None:
                w = backward_weight(p, depth + 1)
                if w:
                    return w
        return None

    out: Dict[str, List[str]] = {}
    for i, node in enumerate(info.nodes):
        names: List[str] = []
        for t in node.output:
            names += [x for x in forward(t) if x not in names]
        w = weight_of.get(i)
        if w is None and any(t in plan.fused for t in node.output):
            w = backward_weight(i)
        if w:
            names.append(w)
        if names:
            out[node.name] = names
    return out


def scale_groups(float_model: onnx.ModelProto, requantized_pre_activations: bool = False
                 ) -> Tuple[Dict[str, int], set]:
    """(point -> scale group id, the derived points). The quantizer gives a whole group one format (the widest
    asked for), so the layers whose points share a group are promoted together whichever one is asked; a derived
    point (a reshape, transpose, max-pool, nearest resize or concat of its group's members) only moves data."""
    plan = build_plan(GraphInfo(normalize(float_model)), requantized_pre_activations=requantized_pre_activations)
    return plan.group_of, plan.derived


SPLIT_MARKS = ("__split", "__perm_")


def override_name(name: str) -> str:
    """A range-split part ('t__split0') or a permuted weight of a conv reading one ('w__perm_t') is overridden
    through its original name: the quantizer splits after checking names and applies it to every part."""
    cut = [name.index(mark) for mark in SPLIT_MARKS if mark in name]  # a permuted weight may be split again
    return name[:min(cut)] if cut else name


def _split_parts(name: str, tensors: Iterable[str]) -> List[str]:
    return [t for t in tensors if any(t.startswith(name + mark) for mark in SPLIT_MARKS)]


def present(name: str, tensors: Iterable[str]) -> List[str]:
    """The names under which quantizer name ``name`` appears in a tensor record (itself, or its split parts)."""
    tensors = tensors if isinstance(tensors, (set, dict)) else set(tensors)
    return [name] if name in tensors else _split_parts(name, tensors)


def every_part(name: str, tensors: Iterable[str]) -> List[str]:
    """``name`` where a tensor record holds it, and every split part of it: an activation stored in 8 bits before
    a remap into parts (RKNPU2) has both, and each is a quantization step of its own."""
    tensors = tensors if isinstance(tensors, (set, dict)) else set(tensors)
    return ([name] if name in tensors else []) + _split_parts(name, tensors)


def resolve_layers(layers: Dict[str, str], float_model: onnx.ModelProto, known: "Iterable[str] | Dict[str, dict]",
                   where: str = "custom_quantize_layers", requantized_pre_activations: bool = False) -> Dict[str, str]:
    """{layer, tensor or weight name: dtype} -> QuantOptions.overrides; unknown names or dtypes raise ConfigError.
    ``known``: names, or QuantResult.tensors (then a tensor that follows another's parameters means that one)."""
    follows = {k: v["follows"] for k, v in known.items() if v.get("follows")} if isinstance(known, dict) else {}
    known = set(known)
    lmap = layer_map(float_model, requantized_pre_activations)
    out: Dict[str, str] = {}
    for name, dtype in (layers or {}).items():
        value = DTYPE_ALIASES.get(str(dtype).strip().lower())
        if value is None:
            raise ConfigError(f"{where}[{name!r}]", dtype, sorted(DTYPE_ALIASES))
        if name in follows:  # a layout op's copy of a host Sigmoid's logits: it takes the logits' format
            targets = [override_name(follows[name])]
        elif name in known:
            targets = [override_name(name)]
        elif name in lmap:
            targets = [t for t in lmap[name] if present(t, known)] or lmap[name]
        else:
            raise ConfigError(where, name, hint="not a layer, tensor or weight of this model; use a node name "
                              f"or a tensor listed under quantize_parameters (e.g. {', '.join(sorted(known)[:3])})")
        for t in targets:
            out[t] = value
    return out


# ---------------------------------------------------------------- the .quantization.cfg file


def cfg_document(tensors: Dict[str, dict], ranges: Dict[str, Tuple[float, float]], method: str,
                 custom: Optional[Dict[str, str]] = None) -> dict:
    """The YAML document: the editable custom_quantize_layers map first, then every quantized tensor."""
    params = {}
    for name, t in tensors.items():
        if t.get("kind") == "bias" or t.get("follows"):
            continue  # derived from input and weight scales, or a copy of another point's; not independent
        entry = {"kind": t["kind"], "dtype": t["dtype"],
                 "method": "channel" if t.get("axis") is not None else "layer",
                 "scale": [float(s) for s in t["scale"]], "zero_point": [int(z) for z in t["zero_point"]]}
        if name in ranges:
            entry["min_value"], entry["max_value"] = [float(ranges[name][0])], [float(ranges[name][1])]
        params[name] = entry
    return {"custom_quantize_layers": dict(custom or {}), "quantized_method": method, "quantize_parameters": params}


def qparam_ranges(tensors: Dict[str, dict]) -> Dict[str, Tuple[float, float]]:
    """Representable [min, max] of each per-tensor quantized tensor, from its scale, zero point and dtype."""
    out = {}
    for name, t in tensors.items():
        if t.get("kind") == "bias" or len(t["scale"]) != 1:
            continue
        bits = int("".join(c for c in t["dtype"] if c.isdigit()) or 8)
        signed = t["dtype"].startswith("int")
        qmin, qmax = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
        s, z = t["scale"][0], t["zero_point"][0]
        out[name] = ((qmin - z) * s, (qmax - z) * s)
    return out


def edited_params(doc: dict, original: Dict[str, dict]) -> Dict[str, Tuple[list, list]]:
    """Scale / zero point entries the user changed -> QuantOptions.fixed; unknown tensors raise ConfigError."""
    params = doc.get("quantize_parameters") or {}
    if not isinstance(params, dict):
        raise ConfigError("quantize_parameters", type(params).__name__, hint="must be a map of tensor name -> entry")
    fixed = {}
    for name, entry in params.items():
        if name not in original:
            raise ConfigError("quantize_parameters", name, hint="not a quantized tensor of this model (step1 "
                              "wrote every tensor; only edit values, do not rename entries)")
        try:
            s = [float(v) for v in np.ravel(entry.get("scale", original[name]["scale"]))]
            z = [int(v) for v in np.ravel(entry.get("zero_point", original[name]["zero_point"]))]
        except (TypeError, ValueError, AttributeError):
            raise ConfigError(f"quantize_parameters[{name!r}]", entry, hint="scale and zero_point must be numbers "
                              "or lists of numbers") from None
        if s == list(original[name]["scale"]) and z == list(original[name]["zero_point"]):
            continue
        point = original[name].get("follows")
        if point:  # listed by an older step1; unedited it is harmless
            raise ConfigError("quantize_parameters", name, hint=f"a layout op's copy of '{point}' (host Sigmoid "
                              f"logits moved on their own grid): it has no parameters of its own; edit '{point}'")
        fixed[name] = (s, z)
    return fixed


# ---------------------------------------------------------------- sensitivity on a QDQ graph


def bypass(qmodel: onnx.ModelProto, names: Sequence[str],
           float_weights: Optional[Dict[str, np.ndarray]] = None) -> onnx.ModelProto:
    """A copy of the QDQ graph with the activation quantization of ``names`` removed (Q/DQ -> Identity), and the
    weights among ``names`` found in ``float_weights`` {weight name: float array} put back in float."""
    names = set(names)
    float_weights = {k: v for k, v in (float_weights or {}).items() if k in names}
    m = onnx.ModelProto()
    m.CopyFrom(qmodel)
    g = m.graph
    inits = {t.name for t in g.initializer}
    q_in = {n.output[0]: n.input[0] for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits}
    by_q = {w + "__q": w for w in float_weights}  # a weight's integer initializer, as qdq.build_qdq names it
    keep = []
    for n in g.node:
        if n.op_type == "DequantizeLinear" and n.output[0] in names and n.input[0] in q_in:
            keep.append(helper.make_node("Identity", [q_in[n.input[0]]], [n.output[0]], name=n.name + "__bypass"))
        elif n.op_type == "DequantizeLinear" and n.input[0] in by_q:
            w = by_q[n.input[0]]
            g.initializer.append(onnx.numpy_helper.from_array(np.asarray(float_weights[w], np.float32), w + "__float"))
            keep.append(helper.make_node("Identity", [w + "__float"], [n.output[0]], name=n.name + "__bypass"))
        else:
            keep.append(n)
    del g.node[:]
    g.node.extend(keep)
    return m


def float_weights(float_model: onnx.ModelProto, qmodel: onnx.ModelProto, names: Iterable[str]) -> Dict[str, np.ndarray]:
    """{weight: float array} for the weights among ``names`` that the QDQ graph holds as a rounding of the float
    model's own values (within one step for 99% of elements). A weight the quantizer rewrote first (equalized,
    permuted, split) is left out: putting its original values back would change the function."""
    finits = {t.name: t for t in float_model.graph.initializer}
    qinits = {t.name: t for t in qmodel.graph.initializer}
    axes = {}  # per-channel axis of each weight's DequantizeLinear (a MatMul's output channels are its last axis)
    for node in qmodel.graph.node:
        if node.op_type == "DequantizeLinear":
            axes[node.input[0]] = next((a.i for a in node.attribute if a.name == "axis"), 1)  # ONNX default: 1
    out = {}
    for w in names:
        parts = [qinits.get(w + suffix) for suffix in ("__q", "__scale", "__zp")]
        if w not in finits or any(p is None for p in parts):
            continue
        wf = onnx.numpy_helper.to_array(finits[w]).astype(np.float64)
        q, s, z = (onnx.numpy_helper.to_array(p).astype(np.float64) for p in parts)
        if q.shape != wf.shape:
            continue
        shape = [1] * q.ndim
        if s.ndim == 1 and s.size > 1:
            shape[axes.get(w + "__q", 1) % q.ndim] = -1
        s, z = s.reshape(shape) if s.ndim else s, z.reshape(shape) if z.ndim else z
        if np.mean(np.abs((q - z) * s - wf) <= 1.01 * s) >= 0.99:
            out[w] = wf.astype(np.float32)
    return out


def biases_by_weight(qmodel: onnx.ModelProto) -> Dict[str, str]:
    """{weight: bias} of the QDQ graph's weighted nodes (a bias is quantized on its weight's scale and stands or
    falls with it), read from the dequantize steps that feed one node's weight and bias inputs."""
    dq_of = {n.output[0]: n.input[0][:-len("__q")] for n in qmodel.graph.node
             if n.op_type == "DequantizeLinear" and n.input[0].endswith("__q")}
    return {dq_of[n.input[1]]: dq_of[n.input[2]] for n in qmodel.graph.node
            if len(n.input) > 2 and n.input[1] in dq_of and n.input[2] in dq_of}


INDEX_OPS = ("ArgMax", "ArgMin")
_LAYOUT_OPS = ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Cast", "Identity")


def scored_outputs(model: onnx.ModelProto) -> Optional[List[str]]:
    """What to measure for "every output" when an output is an index (ArgMax/ArgMin, through layout-only ops): the
    scores it is picked from. The cosine of two index vectors says nothing about how close they are (class 5 for 6
    weighs as little as for 500) and jumps as single indices flip. Likewise an output a TopK's indices pick or
    compute (a DETR's labels and boxes, in score order): the TopK's sorted values, since a swap of two near-equal
    scores moves whole rows without changing a detection. None when no output changes."""
    producer = {o: n for n in model.graph.node for o in n.output}
    sorted_values = {}  # TopK output name -> the graph output that is its values (through Q/DQ and layout ops)
    for o in model.graph.output:
        t, n = o.name, producer.get(o.name)
        while n is not None and n.op_type in _LAYOUT_OPS + ("QuantizeLinear", "DequantizeLinear"):
            t = n.input[0]
            n = producer.get(t)
        if n is not None and n.op_type == "TopK" and t == n.output[0]:
            sorted_values[n.output[0]] = o.name
    out, changed = [], False
    for o in model.graph.output:
        t, n = o.name, producer.get(o.name)
        while n is not None and n.op_type in _LAYOUT_OPS:
            t = n.input[0]
            n = producer.get(t)
        top = _nearest_topk(o.name, producer)
        if n is not None and n.op_type in INDEX_OPS:
            out.append(n.input[0])
            changed = True
        elif top is not None and sorted_values.get(top.output[0], o.name) != o.name:
            out.append(sorted_values[top.output[0]])
            changed = True
        else:
            out.append(o.name)
    return list(dict.fromkeys(out)) if changed else None


def _nearest_topk(name: str, producer: Dict[str, onnx.NodeProto], depth: int = 8) -> Optional[onnx.NodeProto]:
    """The TopK closest above ``name`` (breadth first, up to ``depth`` ops); None when there is none that near."""
    level, seen = [name], {name}
    for _ in range(depth):
        above = []
        for t in level:
            n = producer.get(t)
            if n is None:
                continue
            if n.op_type == "TopK":
                return n
            above += [i for i in n.input if i and i not in seen]
            seen.update(n.input)
        level = above
    return None


def measured_tensors(qmodel: onnx.ModelProto, float_model: onnx.ModelProto) -> List[str]:
    """What "every output" means for the threshold: each graph output, or where an output is assembled in float
    from several quantized tensors (a detector head's boxes / objectness / classes concatenated), each of those; an
    output an NMS selects is measured through what the selection reads (graph.outputs.comparable_outputs)."""
    from ..graph.outputs import comparable_outputs

    producer = {o: n for n in qmodel.graph.node for o in n.output}
    in_float = {o for n in float_model.graph.node for o in n.output} | {i.name for i in float_model.graph.input}
    out: List[str] = []
    for name in comparable_outputs(qmodel.graph):  # an NMS's detections: the boxes and scores it selects from
        stack, seen, found = [name], set(), []
        while stack:
            t = stack.pop()
            n = producer.get(t)
            if t in seen or n is None:
                continue
            seen.add(t)
            if n.op_type == "DequantizeLinear":
                found.append(t)
            else:
                stack.extend(n.input)
        found = [t for t in found if t in in_float and not t.startswith(name + "__")]
        if not found and name not in in_float:  # the quantized copy of a graph input (an NMS reading the inputs)
            continue
        out += [name] if (not found or name in found) else [t for t in found if t not in out]
    return out


def run_outputs(model: onnx.ModelProto, feeds: Sequence[Dict[str, np.ndarray]], threads: int = 1,
                names: Optional[Sequence[str]] = None, workers: int = 1) -> List[list]:
    """Outputs (or the named tensors) of ``model`` for each feed; ``workers`` feeds at a time on the session."""
    if names:
        from .qdq import with_outputs

        model = with_outputs(model, names)
    from ..runtime.ort_session import make_session

    sess = make_session(model, threads)
    fetch = list(names) if names else None
    return side_by_side(lambda f: sess.run(fetch, f), feeds, workers)


def side_by_side(run, feeds: Sequence[Dict[str, np.ndarray]], workers: int) -> List[list]:
    """[run(f) for f in feeds], ``workers`` feeds at a time (onnxruntime runs concurrent calls on one session; each
    run single-threaded is the same as run alone, so the outputs do not depend on ``workers``)."""
    if workers <= 1 or len(feeds) <= 1:
        return [run(f) for f in feeds]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(workers, len(feeds)), thread_name_prefix="openrknn-runs") as pool:
        return list(pool.map(run, feeds))


def output_cosines(reference: List[list], outputs: List[list]) -> List[float]:
    """Per graph output: mean over samples of the cosine float vs quantized."""
    n_out = len(reference[0])
    return [float(np.mean([cosine(r[k], o[k]) for r, o in zip(reference, outputs)])) for k in range(n_out)]


MASK_INPUT = "openrknn_hybrid_mask"
# runs side by side on one session: each holds its own activations (hundreds of MB on a large detector), so a
# many-core machine does not get one per core
MAX_PARALLEL_RUNS = 8


def run_workers() -> int:
    """How many runs to make side by side: the idle cores, at most MAX_PARALLEL_RUNS."""
    from .calibrate import auto_threads

    return max(1, min(auto_threads(), MAX_PARALLEL_RUNS))


class SwitchableModel:
    """The QDQ graph with each unit's quantization switchable at run time: one onnxruntime session answers "what if
    these units stayed float" for any set of units, with no rebuild and no new session.

    Each unit's activation points become x_f + m (DQ(Q(x_f)) - x_f) and its float-restorable weights
    W_f + m (DQ(W_q) - W_f), with m = 1 (quantized) or 0 (float) read from one vector input, one entry per unit.
    With every m = 1 it computes exactly the QDQ graph."""

    def __init__(self, qmodel: onnx.ModelProto, units: Dict[str, List[str]],
                 float_weights: Optional[Dict[str, np.ndarray]] = None, names: Optional[Sequence[str]] = None,
                 threads: int = 1):
        from ..runtime.ort_session import make_session
        from .qdq import with_outputs

        self.units = list(units)
        self.members = {u: list(v) for u, v in units.items()}
        self.index = index = {u: k for k, u in enumerate(self.units)}
        owners: Dict[str, List[int]] = {}
        for u, members in units.items():
            for t in members:
                owners.setdefault(t, []).append(index[u])
        float_weights = {k: v for k, v in (float_weights or {}).items() if k in owners}
        m = onnx.ModelProto()
        m.CopyFrom(with_outputs(qmodel, names) if names else qmodel)
        g = m.graph
        inits = {t.name for t in g.initializer}
        q_in = {n.output[0]: n.input[0] for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits}
        by_q = {w + "__q": w for w in float_weights}
        g.input.append(helper.make_tensor_value_info(MASK_INPUT, onnx.TensorProto.FLOAT, [len(self.units)]))
        nodes: List[onnx.NodeProto] = []
        for n in g.node:
            target, exact = None, None
            if n.op_type == "DequantizeLinear" and n.output[0] in owners and n.input[0] in q_in:
                target, exact = n.output[0], q_in[n.input[0]]
            elif n.op_type == "DequantizeLinear" and n.input[0] in by_q:
                w = by_q[n.input[0]]
                target, exact = n.output[0], w + "__float"
                g.initializer.append(onnx.numpy_helper.from_array(np.asarray(float_weights[w], np.float32), exact))
            if target is None:
                nodes.append(n)
                continue
            owner = owners[target] if target in owners else owners[by_q[n.input[0]]]
            quantized = target + "__sw_q"
            n.output[0] = quantized
            nodes.append(n)
            idx = target + "__sw_idx"
            g.initializer.append(onnx.numpy_helper.from_array(np.asarray(owner, np.int64), idx))
            nodes += [helper.make_node("Gather", [MASK_INPUT, idx], [target + "__sw_g"], axis=0),
                      helper.make_node("ReduceMin", [target + "__sw_g"], [target + "__sw_m"], keepdims=0),
                      helper.make_node("Sub", [quantized, exact], [target + "__sw_d"]),
                      helper.make_node("Mul", [target + "__sw_d", target + "__sw_m"], [target + "__sw_md"]),
                      helper.make_node("Add", [exact, target + "__sw_md"], [target])]
        del g.node[:]
        g.node.extend(nodes)
        self.names = list(names) if names else None
        self.sess = make_session(m, threads)

    def run(self, feeds: Sequence[Dict[str, np.ndarray]], float_units: Iterable[str] = (),
            workers: int = 1) -> List[list]:
        """Outputs for each feed with ``float_units`` left float, ``workers`` feeds at a time (side_by_side)."""
        mask = np.ones(len(self.units), np.float32)
        for u in float_units:
            mask[self.index[u]] = 0.0
        return side_by_side(lambda f: self.sess.run(self.names, {**f, MASK_INPUT: mask}), feeds, workers)


def damage(model: SwitchableModel, reference: List[list], feeds: Sequence[Dict[str, np.ndarray]],
           progress: bool = True) -> Dict[str, float]:
    """Per unit: how much the worst output cosine falls when that unit alone is quantized and every other stays
    float (its activations, and its weights and bias where the model restores them), on ``feeds``.

    Measured against the float model rather than as the gain of leaving one unit float in the quantized one: there
    the other units' errors mask a unit's own, and bias correction, fitted to the errors of the layers before,
    makes single-unit gains cancel (PP-OCRv5 det: ranked by gain, 94 of 103 units to reach 0.99; by damage, 4)."""
    from concurrent.futures import ThreadPoolExecutor

    from ..progress import progress_bar

    units = model.units
    base = min(output_cosines(reference, model.run(feeds, units)))

    def fall(name: str) -> float:
        return base - min(output_cosines(reference, model.run(feeds, [u for u in units if u != name])))

    # one unit per idle core at a time, on the one session (onnxruntime runs concurrent calls; each run is
    # single-threaded and the same as run alone, so the ranking does not depend on the thread count)
    with ThreadPoolExecutor(run_workers(), thread_name_prefix="openrknn-sensitivity") as pool:
        falls = progress_bar(pool.map(fall, units), total=len(units), desc="layer sensitivity",
                             enabled=progress, leave=False)
        return dict(zip(units, falls))
