"""Turn an openrknn package into what rknn-toolkit2 compiles: an ONNX graph that carries our decisions.

Graph surgery shared by both routes (see docs/vendor.md for what each keeps, measured):
- the board-side pre-processing at the head of the graph (NHWC->NCHW Transpose, mean Sub, 1/std Mul/Div) moves into
  the vendor's config(mean_values, std_values): the vendor refuses channel-last ONNX inputs and applies mean/std in its
  input stage;
- the float tail after the last quantized tensors (e.g. a detector's Concat of box and score parts that keep their own
  scales) is cut off: those tensors become the vendor model's outputs and the tail runs on the host as a small ONNX
  graph (`post` model), so one vendor int8 scale never has to cover both pixel-scale boxes and 0..1 scores;
- activations stored as uint8 (onnxruntime's fast kernels) become int8 with the zero point shifted by 128, the same
  grid in the vendor's storage type.
Route "qdq" hands the vendor the QDQ graph itself (do_quantization=False); route "ranges" hands it the float graph
with our rewrites and our weight integers (dequantized, so its per-channel max-abs rounding lands on them) plus
every activation range, which its hybrid_quantization_step2 takes from the edited .quantization.cfg.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import NotSupportedError

MS_DOMAIN = "com.microsoft"
QDQ = ("QuantizeLinear", "DequantizeLinear")


@dataclass
class VendorModel:
    """What the vendor gets, and what our side needs to turn its outputs back into the package's outputs."""

    onnx_model: onnx.ModelProto
    mean_values: List[List[float]]  # one list per input, the vendor's (fed) channel order
    std_values: List[List[float]]
    input_names: List[str]  # inputs of onnx_model, in the package's input order
    input_shapes: List[List[int]]  # NCHW
    outputs: List[str]  # vendor outputs, in the order its runtime returns them
    post: Optional[onnx.ModelProto] = None  # float tail: vendor outputs -> package outputs (None: identical)
    ranges: Dict[str, Tuple[float, float]] = field(default_factory=dict)  # route "ranges": tensor -> (min, max)
    # tensors our hybrid kept out of int8 -> the vendor dtype of their layer: 'int16' (our 16-bit tensors) or
    # 'float16' (what our hybrid left float); route "ranges" writes them into the cfg's custom_quantize_layers
    wide_tensors: Dict[str, str] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)
    # route "ranges": weight tensor -> our per-output-channel scales (symmetric integers), pinned in the vendor's table
    weight_scales: Dict[str, List[float]] = field(default_factory=dict)
    ours: int = 0  # how many of `ranges` are the package's own quantized tensors (the rest: openrknn's extra ranges)
    preactivations: int = 0  # route "qdq": pre-activation tensors given an int8 quantizer with openrknn's range
    unranged: int = 0  # route "qdq": SiLU inputs left float for lack of calibration samples (the vendor may fail)


def _inits(g: onnx.GraphProto) -> Dict[str, onnx.TensorProto]:
    return {t.name: t for t in g.initializer}


def _const(inits: Dict[str, onnx.TensorProto], name: str) -> Optional[np.ndarray]:
    t = inits.get(name)
    return None if t is None else numpy_helper.to_array(t)


def _consumers(g: onnx.GraphProto) -> Dict[str, List[onnx.NodeProto]]:
    out: Dict[str, List[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def _per_channel(value: np.ndarray, channels: int) -> Optional[List[float]]:
    """A constant that broadcasts per channel over NCHW (shape (C,1,1), (1,C,1,1), scalar...) as C floats."""
    v = np.asarray(value, np.float64)
    if v.size == 1:
        return [float(v.reshape(-1)[0])] * channels
    if v.size == channels and (v.ndim <= 1 or v.shape[-3 if v.ndim >= 3 else 0] == channels):
        return [float(x) for x in v.reshape(-1)]
    return None


def cut_input_preprocess(model: onnx.ModelProto, metadata: dict) -> Tuple[List[List[float]], List[List[float]],
                                                                           List[str], List[List[int]], List[str]]:
    """Remove the NHWC->NCHW Transpose and a leading mean Sub / std Mul-or-Div of each image input (in place).

    Returns (mean per input, std per input, new input names, NCHW shapes, notes). A reorder Gather that was not folded
    into the first conv stays in the graph (the vendor's Toolkit2 has no reorder option)."""
    g = model.graph
    inits = _inits(g)
    means, stds, names, shapes, notes = [], [], [], [], []
    metas = {m["name"]: m for m in metadata.get("inputs") or []}
    for inp in list(g.input):
        dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        meta = metas.get(inp.name, {})
        cons = _consumers(g).get(inp.name, [])
        tr = cons[0] if len(cons) == 1 else None
        nhwc = (meta.get("layout") == "nhwc" and len(dims) == 4 and tr is not None and tr.op_type == "Transpose"
                and list(helper.get_attribute_value(tr.attribute[0])) == [0, 3, 1, 2])
        if not nhwc:
            if len(dims) == 4 and dims[1] not in (1, 3, 4) and dims[3] in (1, 3, 4):
                raise NotSupportedError(
                    f"input {inp.name!r} {dims} is channel-last without openrknn's NHWC transpose; rknn-toolkit2 "
                    "reads dim 1 as channels. Rebuild the model with openrknn (its packages feed NHWC through a "
                    "Transpose the bridge can remove)")
            c = dims[1] if len(dims) == 4 else 1
            means.append([0.0] * c)
            stds.append([1.0] * c)
            names.append(inp.name)
            shapes.append(dims)
            continue
        n, h, w, c = dims
        cur = tr.output[0]
        g.node.remove(tr)
        mean, std = [0.0] * c, [1.0] * c
        while True:
            nxt = _consumers(g).get(cur, [])
            if len(nxt) != 1 or nxt[0].op_type not in ("Sub", "Mul", "Div") or nxt[0].input[0] != cur:
                break
            node = nxt[0]
            value = _const(inits, node.input[1])
            vals = None if value is None else _per_channel(value, c)
            if vals is None:
                break
            if node.op_type == "Sub":
                if any(s != 1.0 for s in std):  # a Sub after a scale would need the mean rescaled: keep it simple
                    break
                mean = vals
            elif node.op_type == "Mul":
                std = [s / v if v else s for s, v in zip(std, vals)]
            else:
                std = [s * v for s, v in zip(std, vals)]
            g.node.remove(node)
            cur = node.output[0]
        g.input.remove(inp)
        g.input.append(helper.make_tensor_value_info(cur, TensorProto.FLOAT, [n, c, h, w]))
        means.append(mean)
        stds.append(std)
        names.append(cur)
        shapes.append([n, c, h, w])
        notes.append(f"input {inp.name!r}: NHWC transpose removed, mean {_short(mean)} / std {_short(std)} handed "
                     "to the vendor's config")
    # graph inputs must stay in the package's order: the loop appended the rewritten ones at the end
    order = {nm: k for k, nm in enumerate(names)}
    ins = sorted(g.input, key=lambda vi: order.get(vi.name, len(order)))
    del g.input[:]
    g.input.extend(ins)
    return means, stds, names, shapes, notes


def _short(values: List[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def split_float_tail(model: onnx.ModelProto) -> Tuple[List[str], Optional[onnx.ModelProto]]:
    """Cut the nodes after the last quantized tensors (in place). Returns (new outputs, tail model or None).

    Walking back from each graph output, every node reached before a DequantizeLinear of an activation belongs to
    the tail; the DequantizeLinear outputs where the walk stops become the graph's outputs."""
    g = model.graph
    inits = _inits(g)
    prod = {o: n for n in g.node for o in n.output}
    frontier: List[str] = []
    tail_ids = set()
    stack = [o.name for o in g.output]
    seen = set()
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        n = prod.get(t)
        if n is None:
            continue
        if n.op_type == "DequantizeLinear" and n.input[0] not in inits:
            if t not in frontier:
                frontier.append(t)
            continue
        tail_ids.add(id(n))
        stack.extend(i for i in n.input if i and i not in inits)
    if not tail_ids:
        return [o.name for o in g.output], None
    tail = [n for n in g.node if id(n) in tail_ids]
    frontier.sort(key=lambda t: [i for i, n in enumerate(g.node) if t in n.output][0])
    used = {i for n in tail for i in n.input}
    tail_graph = helper.make_graph(
        tail, "openrknn_post", [helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in frontier],
        list(g.output), [inits[i] for i in used if i in inits])
    post = helper.make_model(tail_graph, opset_imports=[o for o in model.opset_import if o.domain in ("", "ai.onnx")])
    post.ir_version = model.ir_version
    for n in tail:
        g.node.remove(n)
    del g.output[:]
    g.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in frontier)
    _drop_unused_inits(g)
    return frontier, post


def _drop_unused_inits(g: onnx.GraphProto) -> None:
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)


def int8_storage(model: onnx.ModelProto) -> int:
    """uint8 activation Q/DQ -> int8 with zero point - 128 (the same grid). Returns how many zero points moved."""
    g = model.graph
    inits = _inits(g)
    moved = set()
    for n in g.node:
        if n.op_type in QDQ and len(n.input) > 2 and n.input[2] in inits and n.input[2] not in moved:
            z = numpy_helper.to_array(inits[n.input[2]])
            if z.dtype == np.uint8:
                inits[n.input[2]].CopyFrom(numpy_helper.from_array((z.astype(np.int16) - 128).astype(np.int8),
                                                                   n.input[2]))
                moved.add(n.input[2])
    return len(moved)


def _axis(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 1)


def _wide(node: onnx.NodeProto) -> bool:
    return node.domain == MS_DOMAIN


def activation_ranges(model: onnx.ModelProto) -> Tuple[Dict[str, Tuple[float, float, float, int]], List[str]]:
    """tensor -> (min, max, scale, nominal int zero point) of each quantized activation; and the 16-bit ones."""
    g = model.graph
    inits = _inits(g)
    out, wide = {}, []
    for n in g.node:
        if n.op_type != "DequantizeLinear" or n.input[0] in inits:
            continue
        s = float(numpy_helper.to_array(inits[n.input[1]]))
        z_arr = numpy_helper.to_array(inits[n.input[2]])
        bits = 16 if z_arr.dtype in (np.uint16, np.int16) else 8
        lo_q = 0 if z_arr.dtype in (np.uint8, np.uint16) else -(1 << (bits - 1))
        hi_q = lo_q + (1 << bits) - 1
        z = int(z_arr)
        out[n.output[0]] = (s * (lo_q - z), s * (hi_q - z), s, z)
        if bits == 16:
            wide.append(n.output[0])
    return out, wide


def strip_qdq(model: onnx.ModelProto) -> onnx.ModelProto:
    """The float graph our quantizer produced: rewrites kept, weights dequantized from our integers (so a per-channel
    max-abs re-quantization lands on them again), activation Q/DQ pairs removed with tensor names kept."""
    g = model.graph
    inits = _inits(g)
    q_of = {n.output[0]: n for n in g.node if n.op_type == "QuantizeLinear"}
    drop, rename = [], {}
    new_inits = []
    for n in g.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in inits:
            q = numpy_helper.to_array(inits[n.input[0]]).astype(np.float64)
            s = numpy_helper.to_array(inits[n.input[1]]).astype(np.float64)
            z = numpy_helper.to_array(inits[n.input[2]]).astype(np.float64)
            if s.ndim == 1 and s.size > 1:
                shape = [1] * q.ndim
                shape[_axis(n) % q.ndim] = -1
                s, z = s.reshape(shape), z.reshape(shape)
            new_inits.append(numpy_helper.from_array(((q - z) * s).astype(np.float32), n.output[0]))
            drop.append(n)
        elif n.op_type == "DequantizeLinear" and n.input[0] in q_of:
            rename[q_of[n.input[0]].input[0]] = n.output[0]  # producer's t__f becomes t again
            drop.extend([n, q_of[n.input[0]]])
    for n in drop:
        g.node.remove(n)
    for n in g.node:
        for k, o in enumerate(n.output):
            if o in rename:
                n.output[k] = rename[o]
    for vi in g.input:
        if vi.name in rename:  # a quantized graph input keeps its own name
            vi.name = rename[vi.name]
    g.initializer.extend(new_inits)
    _drop_unused_inits(g)
    del g.value_info[:]
    keep = [o for o in model.opset_import if o.domain != MS_DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    return model


def _insert_qdq(g: onnx.GraphProto, producer: onnx.NodeProto, tensor: str, scale: float, zp: int) -> None:
    """tensor (an output of producer) becomes the int8 Q/DQ of the producer's float output, names kept."""
    f = tensor + "__vendor_f"
    producer.output[list(producer.output).index(tensor)] = f
    sn, zn = tensor + "__vendor_scale", tensor + "__vendor_zp"
    g.initializer.extend([numpy_helper.from_array(np.float32(scale), sn), numpy_helper.from_array(np.int8(zp), zn)])
    at = list(g.node).index(producer) + 1
    g.node.insert(at, helper.make_node("QuantizeLinear", [f, sn, zn], [tensor + "__vendor_q"],
                                       name=tensor + "__vendor_Q"))
    g.node.insert(at + 1, helper.make_node("DequantizeLinear", [tensor + "__vendor_q", sn, zn], [tensor],
                                           name=tensor + "__vendor_DQ"))


def _logit_range(inits: Dict[str, onnx.TensorProto], q: onnx.NodeProto) -> Tuple[float, float]:
    """The pre-activation range a sigmoid's output quantizer can tell apart: the logit of its quantized range
    (half a step inside each end)."""
    s = float(numpy_helper.to_array(inits[q.input[1]]))
    z_arr = numpy_helper.to_array(inits[q.input[2]])
    lo_q = 0 if z_arr.dtype == np.uint8 else -128
    lo = max(s * (lo_q - int(z_arr)) + s / 2, 1e-6)
    hi = min(s * (lo_q + 255 - int(z_arr)) - s / 2, 1 - 1e-6)
    return float(np.log(lo / (1 - lo))), float(np.log(hi / (1 - hi)))


def quantize_preactivations(model: onnx.ModelProto, ranges: Optional[Dict[str, Tuple[float, float]]] = None
                            ) -> Tuple[List[str], List[str]]:
    """Route "qdq": give every unquantized input of a Sigmoid (a conv output before its SiLU or sigmoid, which
    openrknn's simulator evaluates in one fused step) an int8 quantizer with openrknn's range for it (in place).

    rknn-toolkit2 quantizes these tensors anyway (its depthwise ConvExSwish takes an int8 pre-activation; it runs a
    standalone sigmoid as its own int8 op); left float, it turns them into float16 "hybrid" layers, refuses a
    standalone sigmoid ("Invalid w_par['dtype'] = float16") and crashes on a residual Add reading a SiLU output that a
    conv also reads. ranges: openrknn's extra ranges (extra_ranges.compute); without one, a standalone sigmoid gets
    the logit of its output quantizer's range. Returns (tensors quantized, SiLU inputs left float for lack of a
    range)."""
    from ..quant.schemes import qparams
    from .extra_ranges import _int8, preactivations

    g = model.graph
    inits = _inits(g)
    prod = {o: n for n in g.node for o in n.output}
    cons = _consumers(g)
    ranges = ranges or {}
    added, missing = [], []
    for x, kind in preactivations(model).items():
        producer = prod.get(x)
        if producer is None or producer.op_type in QDQ:
            continue  # a graph input or already quantized
        if x in ranges:
            lo, hi = ranges[x]
        elif kind == "sigmoid":
            sig = next(c for c in cons[x] if c.op_type == "Sigmoid")
            q = [c for c in cons.get(sig.output[0], []) if c.op_type == "QuantizeLinear"]
            if not q:
                missing.append(x)
                continue
            lo, hi = _logit_range(inits, q[0])
        else:
            missing.append(x)
            continue
        scale, zp = qparams(np.float64(lo), np.float64(hi), _int8())
        _insert_qdq(g, producer, x, float(scale), int(zp))
        added.append(x)
    return added, missing


def weight_scales(model: onnx.ModelProto) -> Dict[str, List[float]]:
    """Our weight scales per output channel, keyed by the dequantized weight's name (the name route "ranges" keeps
    for the float weight). Only symmetric integer weights (zero point 0), which the vendor's grid can be made to
    hold exactly."""
    g = model.graph
    inits = _inits(g)
    out = {}
    for n in g.node:
        if n.op_type != "DequantizeLinear" or n.input[0] not in inits:
            continue
        q = numpy_helper.to_array(inits[n.input[0]])
        if q.ndim < 2 or q.dtype.itemsize != 1:
            continue  # biases (int32) follow from the input and weight scales
        z = numpy_helper.to_array(inits[n.input[2]]) if len(n.input) > 2 else np.zeros(1)
        if np.any(z != 0):
            continue
        s = numpy_helper.to_array(inits[n.input[1]]).astype(np.float64).ravel()
        out[n.output[0]] = [float(v) for v in (s if s.size > 1 else np.full(q.shape[0], s[0]))]
    return out


def name_nodes(model: onnx.ModelProto) -> None:
    """Give every unnamed node a unique name (in place): the vendor's layer table names each compiled layer after the
    node it came from, which is how openrknn finds the layer of a tensor."""
    used = {n.name for n in model.graph.node if n.name}
    for k, n in enumerate(model.graph.node):
        if not n.name:
            name = f"{n.op_type}_{k}"
            while name in used:
                name += "_"
            n.name = name
            used.add(name)


def recurrent_layouts(model: onnx.ModelProto) -> int:
    """Drop the ``layout`` attribute of LSTM / GRU / RNN nodes where it is 0, its default (in place; how many).
    rknn-toolkit2 2.5.0 rebuilds such a node in an older opset for its simulator, which refuses the attribute
    (opset 14's): "Unrecognized attribute: layout for operator LSTM". A batch-first layout it cannot run at all."""
    dropped = 0
    for node in model.graph.node:
        if node.op_type not in ("LSTM", "GRU", "RNN"):
            continue
        for a in list(node.attribute):
            if a.name != "layout":
                continue
            if a.i != 0:
                raise NotSupportedError(f"{node.op_type} {node.name!r} is batch-first (layout=1), which rknn-toolkit2 "
                                        "2.5.0 does not read; export it sequence-first (PyTorch: batch_first=False)")
            node.attribute.remove(a)
            dropped += 1
    return dropped


def _layer_outputs(model: onnx.ModelProto, wide: Dict[str, str], notes: List[str]) -> Dict[str, str]:
    """custom_quantize_layers names layers by the tensor they make, and the vendor converts a 16-bit tensor back to
    int8 in front of an int8 reader; openrknn's readers of a 16-bit tensor read all 16 bits. So each such tensor's
    readers are named too (with the same dtype), and a 16-bit graph input, which no layer makes, is carried by its
    readers alone."""
    inputs = {vi.name for vi in model.graph.input}
    out: Dict[str, str] = {}
    readers_added = 0
    for t, dtype in wide.items():
        if t not in inputs:
            out.setdefault(t, dtype)
        for n in model.graph.node:
            if t in n.input:
                for o in n.output:
                    if o and o not in out and o not in wide:
                        out[o] = dtype
                        readers_added += 1
    if readers_added:
        notes.append(f"{readers_added} layer(s) reading a tensor our hybrid kept out of int8 are 16-bit too (the "
                     "vendor would read it in 8 bits otherwise)")
    return out


def hybrid_layers(model: onnx.ModelProto, metadata: dict, wide: List[str]) -> Dict[str, str]:
    """Our hybrid's decisions in the vendor's terms: every 16-bit tensor -> 'int16', every tensor our hybrid left
    float (a 'float' override, or its range-split parts) -> 'float16'."""
    out = {t: "int16" for t in wide}
    overrides = (metadata.get("quantization") or {}).get("overrides") or {}
    floats = [name for name, v in overrides.items() if v in ("float", "float16", "float32")]
    if floats:
        produced = [o for n in model.graph.node for o in n.output if o]
        for name in floats:
            for t in produced:
                if t == name or t.startswith(name + "__split"):
                    out.setdefault(t, "float16")
    return out


def prepare(package, route: str, extra: Optional[Dict[str, Tuple[float, float]]] = None) -> VendorModel:
    """The vendor-ready model of an openrknn package for route 'qdq' or 'ranges'.

    extra: openrknn's ranges for tensors the package leaves unquantized (extra_ranges.compute); route 'qdq' puts the
    pre-activation ones into the graph as Q/DQ, route 'ranges' writes them into the vendor's cfg next to ours."""
    model = onnx.load_from_string(package.model_bytes)
    name_nodes(model)
    recurrent_layouts(model)
    quantized = any(n.op_type in QDQ for n in model.graph.node)
    means, stds, names, shapes, notes = cut_input_preprocess(model, package.metadata)
    if not quantized:
        outputs = [o.name for o in model.graph.output]
        return VendorModel(model, means, stds, names, shapes, outputs, notes=notes + ["float model: the vendor "
                           "builds it without quantization (float16 on the NPU)"])
    outputs, post = split_float_tail(model)
    if post is not None:
        notes.append(f"float tail ({len(post.graph.node)} nodes) cut off: the vendor model outputs the "
                     f"{len(outputs)} quantized tensors before it, the host runs the tail")
    ranges, wide_list = activation_ranges(model)
    ours = {k: v[:2] for k, v in ranges.items()}
    wide = hybrid_layers(model, package.metadata, wide_list)
    if route == "qdq":
        if wide:
            shown = ", ".join(list(wide)[:3]) + ("..." if len(wide) > 3 else "")
            raise NotSupportedError(
                f"route 'qdq' cannot carry the {len(wide)} tensor(s) our hybrid kept out of int8 ({shown}): "
                "rknn-toolkit2 reads only 8-bit standard QDQ. Use route "
                "'ranges' (the default 'auto' picks it)")
        moved = int8_storage(model)
        added, missing = quantize_preactivations(model, extra)
        notes.append(f"{moved} activation zero points moved to int8 storage")
        if added:
            notes.append(f"{len(added)} pre-activation tensor(s) (conv outputs before a SiLU or sigmoid) got an int8 "
                         "quantizer with openrknn's range (the vendor requantizes them)")
        if missing:
            notes.append(f"{len(missing)} SiLU input(s) left float (no calibration samples): the vendor makes them "
                         "float16 layers")
        return VendorModel(model, means, stds, names, shapes, outputs, post, ours, wide, notes, ours=len(ours),
                           preactivations=len(added), unranged=len(missing))
    if route != "ranges":
        raise ValueError(route)
    scales = weight_scales(model)
    strip_qdq(model)
    names = [vi.name for vi in model.graph.input]  # a quantized input got its dequantized name back
    wide = _layer_outputs(model, wide, notes)
    merged = dict(extra or {})
    merged.update(ours)  # the package's own ranges win
    return VendorModel(model, means, stds, names, shapes, outputs, post, merged, wide, notes, scales, len(ours))
