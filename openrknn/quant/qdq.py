"""Write the quantized model as a QDQ ONNX graph that onnxruntime runs on its integer kernels.

Each quantization point t gets ``producer -> t__f -> QuantizeLinear -> DequantizeLinear -> t``: the dequantized
tensor keeps the original name, so consumers and graph outputs are untouched. Weights become integer initializers
behind a DequantizeLinear (per-channel with ``axis``); 8-bit biases become int32 with scale s_in * s_w, as the NPU
accumulates. Storage types follow schemes.py (uint8/uint16 activations, int8/int16 weights); 16-bit tensors use the
com.microsoft QuantizeLinear / DequantizeLinear, which onnxruntime's CPU provider runs at opset 17.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graph.names import subgraphs, unique_name, used_names
from .ir import GraphInfo
from .plan import Plan
from .schemes import TensorFormat

MS_DOMAIN = "com.microsoft"


@dataclass
class ActQuant:
    scale: float
    zero_point: int        # nominal
    fmt: TensorFormat


@dataclass
class WeightQuant:
    q: np.ndarray          # nominal integer values
    scale: np.ndarray      # per channel (1-D) or scalar (shape ())
    zero_point: np.ndarray
    axis: Optional[int]
    fmt: TensorFormat
    bias: Optional[np.ndarray] = None       # float bias after corrections (None: keep the model's)


def act_storage(fmt: TensorFormat) -> Tuple[type, int]:
    return (np.uint8 if fmt.bits == 8 else np.uint16), fmt.storage_shift


def _weight_storage(fmt: TensorFormat) -> Tuple[type, int]:
    dtype = np.int8 if fmt.bits == 8 else np.int16
    return dtype, (0 if fmt.signed else -(1 << (fmt.bits - 1)))


def storage_domain(bits: int) -> str:
    return "" if bits == 8 else MS_DOMAIN


class _Builder:
    def __init__(self, info: GraphInfo):
        self.info = info
        self.inits: List[onnx.TensorProto] = []
        self.names: set = set(info.inits) | set(info.producer) | set(info.inputs)

    def unique(self, base: str) -> str:
        return unique_name(base, self.names)

    def const(self, base: str, value: np.ndarray) -> str:
        name = self.unique(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name


def bias_integers(bias: np.ndarray, x_act: Optional[ActQuant], wq: WeightQuant) -> Tuple[np.ndarray, np.ndarray]:
    """A bias as int32 and its per-channel scale. With 8-bit input and weights the scale is s_in * s_w, as the NPU
    accumulates; otherwise (16-bit, or a float input) the finest per-channel scale that fits int32 (the NPU keeps
    wide accumulators there). Per-channel weights were already given a scale at which every bias fits (fit_bias);
    with one weight scale for the layer, a channel whose bias does not fit at s_in * s_w takes the finest scale
    alone: the other channels keep the chip's (and TFLite's) unit."""
    bias = bias.astype(np.float64).reshape(-1)
    finest = np.maximum(np.abs(bias), 1e-30) / (2 ** 30)
    if x_act is not None and x_act.fmt.bits == 8 and wq.fmt.bits == 8:
        scale = np.float64(x_act.scale) * np.broadcast_to(np.asarray(wq.scale, np.float64), bias.shape)
        scale = np.where(np.abs(bias) / scale < 2 ** 31 - 1, scale, finest)
    else:
        scale = finest
    scale = scale.astype(np.float32)
    return np.clip(np.round(bias / scale), -2 ** 31, 2 ** 31 - 1).astype(np.int32), scale


def fit_bias(wq: WeightQuant, bias: Optional[np.ndarray], x_act: Optional[ActQuant]) -> WeightQuant:
    """Per-channel 8-bit weights whose channel's bias would not fit int32 at s_in * s_w (a channel trained or stored
    to ~zero weights beside a bias of a few units: its s_w is ~1e-9) get that channel's weight scale raised until it
    fits, the channel's weights re-rounded on it (they are ~0 either way). The NPU, TFLite and onnxruntime's
    QLinearConv all read the bias at s_in * s_w; a bias kept at another scale would be read wrong by them."""
    if (bias is None or x_act is None or x_act.fmt.bits != 8 or wq.fmt.bits != 8 or wq.axis is None
            or np.ndim(wq.scale) != 1):
        return wq
    b = np.abs(np.asarray(bias, np.float64).reshape(-1))
    scale = np.asarray(wq.scale, np.float64)
    need = b / (np.float64(x_act.scale) * (2 ** 31 - 1)) * 2  # a factor of two below int32's edge
    short = need > scale
    if b.shape != scale.shape or not short.any():
        return wq
    scale = np.where(short, need, scale)
    zp = np.broadcast_to(np.asarray(wq.zero_point, np.int64), scale.shape).copy()
    q = np.array(wq.q, copy=True)
    moved = np.moveaxis(q, wq.axis, 0)
    w = (moved.astype(np.float64) - zp.reshape((-1,) + (1,) * (q.ndim - 1))) * np.asarray(
        wq.scale, np.float64).reshape((-1,) + (1,) * (q.ndim - 1))
    fmt = wq.fmt
    for c in np.flatnonzero(short):
        if not fmt.symmetric:  # the channel's zero point moves with its scale, 0 still exact
            zp[c] = np.clip(np.round(fmt.qmin - min(float(w[c].min()), 0.0) / scale[c]), fmt.qmin, fmt.qmax)
        moved[c] = np.clip(np.round(w[c] / scale[c]) + zp[c], fmt.qmin, fmt.qmax)
    return replace(wq, q=q, scale=scale.astype(np.float32), zero_point=zp)


def _bias_dq(b: "_Builder", nodes: List[onnx.NodeProto], tensors: Dict[str, dict], name: str, bias: np.ndarray,
             x_act: Optional[ActQuant], wq: WeightQuant) -> str:
    """Bias as int32 behind a DequantizeLinear (bias_integers). Never a float initializer: onnxruntime's
    WeightBiasQuantization pass would re-quantize a float bias (and weights) of a QDQ conv with its own, 8-bit,
    assumptions."""
    bq, scale = bias_integers(bias, x_act, wq)
    out = b.unique(name + "__dq")
    nodes.append(helper.make_node("DequantizeLinear", [b.const(name + "__q", bq), b.const(name + "__scale", scale),
                                                       b.const(name + "__zp", np.zeros(bq.shape, np.int32))],
                                  [out], axis=0, name=b.unique(name + "__DQ")))
    tensors[name] = {"dtype": "int32", "scale": scale.astype(float).tolist(), "zero_point": [0] * bq.size,
                     "axis": 0, "kind": "bias"}
    return out


def build_qdq(model: onnx.ModelProto, plan: Plan, acts: Dict[str, ActQuant], weights: Dict[int, WeightQuant],
              ) -> Tuple[onnx.ModelProto, Dict[str, dict]]:
    """Return the QDQ model and the per-tensor record {name: dtype, scale, zero_point, axis, kind}."""
    info = GraphInfo(model)
    b = _Builder(info)
    tensors: Dict[str, dict] = {}
    nodes: List[onnx.NodeProto] = []
    rename_in: Dict[str, str] = {}
    uses_ms = False

    def qdq_pair(src: str, dst: str, t: str) -> List[onnx.NodeProto]:
        nonlocal uses_ms
        a = acts[t]
        dtype, shift = act_storage(a.fmt)
        s = b.const(t + "__scale", np.float32(a.scale))
        z = b.const(t + "__zp", np.asarray(a.zero_point + shift, dtype))
        q = b.unique(t + "__q")
        dom = storage_domain(a.fmt.bits)
        uses_ms |= dom == MS_DOMAIN
        tensors[t] = {"dtype": a.fmt.nominal, "scale": [float(a.scale)], "zero_point": [int(a.zero_point)],
                      "axis": None, "kind": "activation"}
        return [helper.make_node("QuantizeLinear", [src, s, z], [q], name=b.unique(t + "__Q"), domain=dom),
                helper.make_node("DequantizeLinear", [q, s, z], [dst], name=b.unique(t + "__DQ"), domain=dom)]

    for t in info.inputs:
        if t in acts:
            dq = b.unique(t + "__dq")
            nodes.extend(qdq_pair(t, dq, t))
            rename_in[t] = dq

    by_node = {w.node: w for w in plan.weighted}
    for i, node in enumerate(info.nodes):
        new = onnx.NodeProto()
        new.CopyFrom(node)
        for k, name in enumerate(new.input):
            if name in rename_in:
                new.input[k] = rename_in[name]
        wop = by_node.get(i)
        if wop is not None and i in weights:
            wq = weights[i]
            bias = wq.bias if wq.bias is not None else (info.const(wop.bias) if wop.bias else None)
            wq = fit_bias(wq, bias, acts.get(wop.x))
            per_axis = wq.axis is not None and np.ndim(wq.scale) == 1
            dtype, shift = _weight_storage(wq.fmt)
            qname = b.const(wop.w + "__q", (wq.q + shift).astype(dtype))
            sname = b.const(wop.w + "__scale", np.asarray(wq.scale, np.float32))
            zname = b.const(wop.w + "__zp", (np.asarray(wq.zero_point) + shift).astype(dtype))
            dq_out = b.unique(wop.w + "__dq")
            attrs = {"axis": int(wq.axis)} if per_axis else {}
            dom = storage_domain(wq.fmt.bits)
            uses_ms |= dom == MS_DOMAIN
            nodes.append(helper.make_node("DequantizeLinear", [qname, sname, zname], [dq_out],
                                          name=b.unique(wop.w + "__DQ"), domain=dom, **attrs))
            new.input[1] = dq_out
            tensors[wop.w] = {"dtype": wq.fmt.nominal, "scale": np.atleast_1d(wq.scale).astype(float).tolist(),
                              "zero_point": np.atleast_1d(wq.zero_point).astype(int).tolist(),
                              "axis": int(wq.axis) if per_axis else None, "kind": "weight"}
            if bias is not None:
                bdq = _bias_dq(b, nodes, tensors, wop.bias or wop.w + "_bias", bias, acts.get(wop.x), wq)
                if len(new.input) > 2:
                    new.input[2] = bdq
                else:
                    new.input.append(bdq)
        posts: List[onnx.NodeProto] = []
        for k, t in enumerate(new.output):
            if t in acts and t not in info.inputs:
                f = b.unique(t + "__f")
                new.output[k] = f
                posts.extend(qdq_pair(f, t, t))
        nodes.append(new)
        nodes.extend(posts)

    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    del g.node[:]
    g.node.extend(nodes)
    used = {n for node in nodes for n in node.input} | {o.name for o in g.output}  # a constant output stays
    for node in nodes:  # a Loop / If body may read the outer graph's weights by name: keep those initializers
        for sub in subgraphs(node):
            used |= used_names(sub)
    kept = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    g.initializer.extend(b.inits)
    del g.value_info[:]
    if uses_ms and not any(o.domain == MS_DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return out, tensors


Q_OPS = {"QuantizeLinear"}
DQ_OPS = {"DequantizeLinear"}


def quant_points(qmodel: onnx.ModelProto) -> Dict[str, Tuple[onnx.NodeProto, onnx.NodeProto]]:
    """Activation quantization points of a QDQ model: dequantized name -> (Q node, DQ node)."""
    inits = {t.name for t in qmodel.graph.initializer}
    q_by_out = {n.output[0]: n for n in qmodel.graph.node if n.op_type in Q_OPS and n.input[0] not in inits}
    out = {}
    for n in qmodel.graph.node:
        if n.op_type in DQ_OPS and n.input[0] in q_by_out:
            out[n.output[0]] = (q_by_out[n.input[0]], n)
    return out


def node_outputs(model: onnx.ModelProto) -> Dict[str, str]:
    """tensor name -> producing op type, in topological order."""
    return {o: n.op_type for n in model.graph.node for o in n.output if o}


def with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for name in names:
        if name not in have:
            m.graph.output.append(onnx.ValueInfoProto(name=name))  # type left to inference
    return m


def single_layer_model(qmodel: onnx.ModelProto, points: Dict[str, Tuple[onnx.NodeProto, onnx.NodeProto]],
                  graph_inputs: Sequence[str]) -> Tuple[onnx.ModelProto, Dict[str, str], Dict[str, str]]:
    """Each point's consumers read Q/DQ(float feed); the layer's own Q/DQ output becomes '<name>__single'.
    Returns (model, {point: feed name}, {point: single output name})."""
    m = onnx.ModelProto()
    m.CopyFrom(qmodel)
    g = m.graph
    feeds, singles = {}, {}
    extra_nodes, extra_inputs = [], []
    for name, (qn, dqn) in points.items():
        if name in graph_inputs or qn.input[0] in graph_inputs:
            continue
        single = name + "__single"
        feed = name + "__float_in"
        for n in g.node:
            if n.name == dqn.name and n.output[0] == name:
                n.output[0] = single
        q2 = helper.make_node(qn.op_type, [feed] + list(qn.input[1:]), [feed + "__q"], domain=qn.domain,
                              name=feed + "_Q")
        q2.attribute.extend(qn.attribute)
        dq2 = helper.make_node(dqn.op_type, [feed + "__q"] + list(dqn.input[1:]), [name], domain=dqn.domain,
                               name=feed + "_DQ")
        dq2.attribute.extend(dqn.attribute)
        extra_nodes += [q2, dq2]
        extra_inputs.append(helper.make_tensor_value_info(feed, onnx.TensorProto.FLOAT, None))
        feeds[name], singles[name] = feed, single
    g.node.extend(extra_nodes)
    g.input.extend(extra_inputs)
    m = toposort(m)
    return m, feeds, singles


def toposort(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its nodes in graph order (graph/names.sort_nodes), in place."""
    from ..graph.names import sort_nodes

    try:
        sort_nodes(model.graph)
    except ValueError as e:
        raise RuntimeError(f"accuracy_analysis: cycle while re-wiring the quantized graph ({e})") from None
    return model



CHANNEL_SCALES_KEY = "openrknn.channel_scales"
CHANNEL_ORDER_KEY = "openrknn.channel_order"
CHANNEL_OFFSETS_KEY = "openrknn.channel_offsets"


def _set_meta(model: onnx.ModelProto, key: str, value: Dict[str, np.ndarray], decimals: Optional[int]) -> None:
    import json

    entry = next((p for p in model.metadata_props if p.key == key), None)
    if entry is None:
        entry = model.metadata_props.add()
        entry.key = key
    conv = (lambda v: np.asarray(v, float).round(decimals).tolist()) if decimals else \
        (lambda v: np.asarray(v, int).tolist())
    entry.value = json.dumps({k: conv(v) for k, v in value.items()})


def _get_meta(model: onnx.ModelProto, key: str, dtype) -> Dict[str, np.ndarray]:
    import json

    entry = next((p for p in model.metadata_props if p.key == key), None)
    return {} if entry is None else {k: np.asarray(v, dtype) for k, v in json.loads(entry.value).items()}


def set_channel_scales(model: onnx.ModelProto, scales: Dict[str, np.ndarray]) -> None:
    """Record per-channel factors (axis 1) such that float tensor = quantized-model tensor * factor, for tensors
    that cross-layer equalization (or a rescaling rewrite) rescaled; accuracy analysis reads them back."""
    _set_meta(model, CHANNEL_SCALES_KEY, scales, 8)


def channel_scales(model: onnx.ModelProto) -> Dict[str, np.ndarray]:
    return _get_meta(model, CHANNEL_SCALES_KEY, np.float32)


def set_channel_offsets(model: onnx.ModelProto, offsets: Dict[str, np.ndarray]) -> None:
    """Record per-channel offsets (axis 1, original channel order) of tensors range split remapped: float tensor =
    quantized-model tensor * channel_scales factor + offset."""
    _set_meta(model, CHANNEL_OFFSETS_KEY, offsets, 8)


def channel_offsets(model: onnx.ModelProto) -> Dict[str, np.ndarray]:
    return _get_meta(model, CHANNEL_OFFSETS_KEY, np.float32)


def set_channel_orders(model: onnx.ModelProto, orders: Dict[str, np.ndarray]) -> None:
    """Record tensors whose channels range split left in group order: quantized[:, j] = float[:, order[j]]."""
    _set_meta(model, CHANNEL_ORDER_KEY, orders, None)


def channel_orders(model: onnx.ModelProto) -> Dict[str, np.ndarray]:
    return _get_meta(model, CHANNEL_ORDER_KEY, np.int64)


NODE_ORIGIN_KEY = "openrknn.node_origin"
CHANNEL_PARTS_KEY = "openrknn.channel_parts"


def _set_json(model: onnx.ModelProto, key: str, value: dict) -> None:
    entry = next((p for p in model.metadata_props if p.key == key), None) or model.metadata_props.add(key=key)
    entry.value = json.dumps(value)


def _get_json(model: onnx.ModelProto, key: str) -> dict:
    entry = next((p for p in model.metadata_props if p.key == key), None)
    return {} if entry is None else json.loads(entry.value)


def set_node_origins(model: onnx.ModelProto, origins: Dict[str, str]) -> None:
    """Record the nodes graph rewrites made (range split's parts, joins, remaps): {node: the float-model node it was
    made from}, so every per-layer view can name the user's layer."""
    _set_json(model, NODE_ORIGIN_KEY, dict(origins))


def node_origins(model: onnx.ModelProto) -> Dict[str, str]:
    return {str(k): str(v) for k, v in _get_json(model, NODE_ORIGIN_KEY).items()}


def set_channel_parts(model: onnx.ModelProto, parts: Dict[str, Tuple[str, np.ndarray]]) -> None:
    """Record tensors that hold some channels (axis 1) of a float-model tensor unchanged: {part: (tensor, channels)}."""
    _set_json(model, CHANNEL_PARTS_KEY, {k: [t, np.asarray(c, int).tolist()] for k, (t, c) in parts.items()})


def channel_parts(model: onnx.ModelProto) -> Dict[str, Tuple[str, np.ndarray]]:
    return {k: (str(t), np.asarray(c, np.int64)) for k, (t, c) in _get_json(model, CHANNEL_PARTS_KEY).items()}


def to_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """fp16 weights and activations, float32 inputs/outputs; onnxruntime computes each fp16 node (casting where
    its CPU kernels are float32 only), so every tensor is rounded to fp16 as on the NPU."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
