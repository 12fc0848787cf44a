"""A logical view of an ONNX graph for the analyses: one layer per compute node, shapes, dtypes, MACs, weights.

Q/DQ pairs are collapsed (the NPU fuses them): each tensor gets the dtype it is quantized to and each weight the
dtype it is stored in. Pre-processing at the graph input (Transpose/Sub/Mul... with constants) is marked `preprocess`:
the NPU folds it into the first conv, so it costs nothing there.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import ModelLoadError
from ..targets.chips import CONST_OPS, QDQ_OPS, VIEW_OPS
from ..targets.schemes import DTYPE_BYTES, Scheme, get_scheme, mac_class

log = logging.getLogger("openrknn.analysis")

_ONNX_DTYPE = {
    onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.BFLOAT16: "bfloat16",
    onnx.TensorProto.DOUBLE: "float64", onnx.TensorProto.INT8: "int8", onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.INT16: "int16", onnx.TensorProto.UINT16: "uint16", onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.UINT32: "uint32", onnx.TensorProto.INT64: "int64", onnx.TensorProto.UINT64: "uint64",
    onnx.TensorProto.BOOL: "bool", onnx.TensorProto.INT4: "int4", onnx.TensorProto.UINT4: "int4",
}
_PREPROCESS_OPS = frozenset({"Transpose", "Sub", "Mul", "Div", "Add", "Cast", "Gather", "Identity"})


@dataclass
class Layer:
    index: int
    name: str
    op_type: str
    nodes: list[str]                     # ONNX node names folded into this layer (itself, its Q/DQ nodes)
    inputs: list[str]                    # activation tensors (logical names)
    outputs: list[str]
    weights: list[str]                   # initializer names (logical)
    attrs: dict[str, object]
    role: str = "compute"                # compute | preprocess | view | const
    macs: int = 0
    act_dtype: str = "float16"
    weight_dtype: str = "float16"

    @property
    def mac_mode(self) -> str:
        a, w = mac_class(self.act_dtype), mac_class(self.weight_dtype)
        return a if DTYPE_BYTES[self.act_dtype] >= DTYPE_BYTES[self.weight_dtype] or not self.weights else w


@dataclass
class Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: str                           # dtype on the NPU
    producer: int | None = None       # layer index; None = graph input or initializer
    consumers: list[int] = field(default_factory=list)

    known: bool = True

    @property
    def numel(self) -> int:
        if not self.known:
            return 0
        return math.prod(self.shape) if self.shape else 1  # math.prod: this runs per layer per estimate

    @property
    def nbytes(self) -> int:
        return math.ceil(self.numel * DTYPE_BYTES[self.dtype])


@dataclass
class Weight:
    name: str
    shape: tuple[int, ...]
    dtype: str
    quant_params: int = 0                # scale + zero-point values stored with it (per tensor: 1, per channel: C)
    quant_param_bytes: int = 0

    @property
    def nbytes(self) -> int:
        return math.ceil(math.prod(self.shape) * DTYPE_BYTES[self.dtype])


@dataclass
class GraphInfo:
    layers: list[Layer]
    tensors: dict[str, Tensor]
    weights: dict[str, Weight]
    inputs: list[str]                    # logical graph inputs
    outputs: list[str]                   # logical graph outputs
    node_layer: dict[str, int]           # ONNX node name -> layer index
    quantized: bool                      # the graph carries Q/DQ nodes

    def consumers(self, tensor: str) -> list[Layer]:
        return [self.layers[i] for i in self.tensors[tensor].consumers] if tensor in self.tensors else []

    def producer(self, tensor: str) -> Layer | None:
        t = self.tensors.get(tensor)
        return None if t is None or t.producer is None else self.layers[t.producer]


def node_names(model: onnx.ModelProto) -> list[str]:
    """Unique node names: the model's own, or '<op>_<index>' where empty or repeated. Every analysis uses these."""
    seen: set = set()
    names = []
    for i, n in enumerate(model.graph.node):
        name = n.name or f"{n.op_type}_{i}"
        if name in seen:
            name = f"{name}_{i}"
        seen.add(name)
        names.append(name)
    return names


def with_node_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose nodes carry the names `node_names` gives (so profilers report the same names)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for n, name in zip(m.graph.node, node_names(model)):
        n.name = name
    return m


# ---------------------------------------------------------------------------------------------------------------------
# shapes
def _static_shapes(model: onnx.ModelProto) -> dict[str, tuple[tuple[int, ...], str]]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as e:  # noqa: BLE001 - a model onnx cannot type is still worth analysing with runtime shapes
        log.debug("onnx shape inference failed (%s); using onnxruntime shapes", e)
        inferred = model
    out: dict[str, tuple[tuple[int, ...], str]] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            continue
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
        if -1 in dims:
            continue
        out[vi.name] = (dims, _ONNX_DTYPE.get(tt.elem_type, "float32"))
    return out


def _runtime_shapes(model: onnx.ModelProto, names: Sequence[str]) -> dict[str, tuple[tuple[int, ...], str]]:
    """Run the model once on zeros with every wanted tensor as an output: shapes where inference gave up."""
    from ..runtime.ort_session import make_session

    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have:
            m.graph.output.append(onnx.ValueInfoProto(name=n))
    feeds = {}
    inits = {i.name for i in m.graph.initializer}
    for vi in m.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in tt.shape.dim]
        np_type = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        feeds[vi.name] = np.zeros(shape, dtype=np_type)
    sess = make_session(m, optimize=False)
    outs = sess.run(None, feeds)
    return {o.name: (tuple(v.shape), str(v.dtype)) for o, v in zip(sess.get_outputs(), outs)}


def _light_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph without bulky weight data (weights become typed graph inputs) and with symbolic input dims set to 1:
    shape inference then costs milliseconds instead of serializing megabytes."""
    small, big = [], []
    for t in model.graph.initializer:
        # int64 shape/axes tensors stay: shape inference reads their values
        keep = t.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32) or np.prod(t.dims) <= 64
        (small if keep else big).append(t)
    inputs = []
    for vi in model.graph.input:
        v = onnx.ValueInfoProto()
        v.CopyFrom(vi)
        for d in v.type.tensor_type.shape.dim:
            if not d.HasField("dim_value") or d.dim_value <= 0:
                d.Clear()
                d.dim_value = 1
        inputs.append(v)
    have = {vi.name for vi in inputs}
    inputs += [onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in big if t.name not in have]
    g = onnx.helper.make_graph(model.graph.node, model.graph.name or "g", inputs, model.graph.output, small)
    m = onnx.helper.make_model(g, opset_imports=model.opset_import, ir_version=model.ir_version)
    m.functions.extend(model.functions)
    return m


# ---------------------------------------------------------------------------------------------------------------------
# MACs per op type (registry: one small function per op family)
MacRule = Callable[[Layer, dict[str, Tensor], dict[str, Weight]], int]
MAC_RULES: dict[str, MacRule] = {}


def mac_rule(*ops: str) -> Callable[[MacRule], MacRule]:
    def deco(fn: MacRule) -> MacRule:
        for op in ops:
            MAC_RULES[op] = fn
        return fn
    return deco


def _wshape(layer: Layer, weights: dict[str, Weight]) -> tuple[int, ...]:
    return weights[layer.weights[0]].shape if layer.weights else ()


@mac_rule("Conv")
def _conv_macs(layer: Layer, tensors: dict[str, Tensor], weights: dict[str, Weight]) -> int:
    # the kernel is an initializer, or (rarely) a computed tensor
    w = _wshape(layer, weights) or (tensors[layer.inputs[1]].shape if len(layer.inputs) > 1 else ())
    if not w:
        return 0
    out = tensors[layer.outputs[0]].shape
    # out: N, Cout, *spatial; w: Cout, Cin/group, *kernel
    return int(np.prod(out, dtype=np.int64) * np.prod(w[1:], dtype=np.int64))


@mac_rule("ConvTranspose")
def _convt_macs(layer: Layer, tensors: dict[str, Tensor], weights: dict[str, Weight]) -> int:
    w = _wshape(layer, weights)
    if not w:
        return 0
    x = tensors[layer.inputs[0]].shape
    # every input pixel scatters a Cout/group x kernel patch
    return int(np.prod(x, dtype=np.int64) * np.prod(w[1:], dtype=np.int64))


@mac_rule("MatMul", "Gemm")
def _matmul_macs(layer: Layer, tensors: dict[str, Tensor], weights: dict[str, Weight]) -> int:
    shapes = [tensors[n].shape for n in layer.inputs] + [weights[n].shape for n in layer.weights]
    if len(shapes) < 2:
        return 0
    a = shapes[0]
    out = tensors[layer.outputs[0]].shape
    k = a[-1] if not layer.attrs.get("transA") else a[-2]
    return int(np.prod(out, dtype=np.int64) * k)


@mac_rule("LSTM", "GRU", "RNN")
def _recurrent_macs(layer: Layer, tensors: dict[str, Tensor], weights: dict[str, Weight]) -> int:
    # every step multiplies the input and the state by each direction's gate weights: W [dirs, gates x hidden,
    # input], R [dirs, gates x hidden, hidden]; X [steps, batch, input] (layout 1: [batch, steps, input])
    steps, batch = recurrent_steps(layer, tensors), tensors[layer.inputs[0]].shape[1]
    if layer.attrs.get("layout", 0):
        batch = tensors[layer.inputs[0]].shape[0]
    gates = [weights[n].shape for n in layer.weights if len(weights[n].shape) == 3]  # W and R (B is 2-D)
    return int(steps * batch * sum(np.prod(s, dtype=np.int64) for s in gates))


def recurrent_steps(layer: Layer, tensors: dict[str, Tensor]) -> int:
    """The time steps of an LSTM / GRU / RNN layer (its input's first dim, or second with layout 1)."""
    return int(tensors[layer.inputs[0]].shape[1 if layer.attrs.get("layout", 0) else 0])


# ---------------------------------------------------------------------------------------------------------------------
def _attrs(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _qdq_dtype(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto], consts: dict[str, onnx.TensorProto],
               shapes: dict[str, tuple[tuple[int, ...], str]]) -> str:
    """The integer dtype a QuantizeLinear produces (from its zero point, its output_dtype or the inferred type)."""
    if len(node.input) > 2 and node.input[2]:
        zp = inits.get(node.input[2]) or consts.get(node.input[2])
        if zp is not None:
            return _ONNX_DTYPE.get(zp.data_type, "uint8")
    if node.output[0] in shapes:
        return shapes[node.output[0]][1]
    od = _attrs(node).get("output_dtype")
    return _ONNX_DTYPE.get(int(od), "uint8") if od else "uint8"


def analyze(model: onnx.ModelProto, quant_dtype: str | None = None) -> GraphInfo:
    """Build the logical layer list of `model` with shapes, NPU dtypes, MACs and weights.

    quant_dtype sets the dtypes of a float graph (e.g. estimating int8 speed before quantizing); a QDQ graph's
    own Q/DQ types win over it, tensor by tensor.
    """
    if not isinstance(model, onnx.ModelProto):
        raise ModelLoadError(f"analysis needs an onnx.ModelProto, got {type(model).__name__}; load the model first")
    sch: Scheme = get_scheme(quant_dtype)
    g = model.graph
    names = node_names(model)
    inits: dict[str, onnx.TensorProto] = {i.name: i for i in g.initializer}
    consts: dict[str, onnx.TensorProto] = {}
    for n in g.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = n.attribute[0].t
    shapes = _static_shapes(_light_model(model))

    # --- collapse Q/DQ: logical name of each tensor, dtype of quantized activations/weights -------------------------
    alias: dict[str, str] = {}
    act_qdtype: dict[str, str] = {}
    weight_qdtype: dict[str, str] = {}
    qparams: dict[str, tuple[int, int]] = {}
    quantized = any(n.op_type in QDQ_OPS for n in g.node)

    def canon(t: str) -> str:
        while t in alias:
            t = alias[t]
        return t

    for n in g.node:
        if n.op_type in ("Identity", "Dropout") and n.input and (canon(n.input[0]) in inits
                                                                or canon(n.input[0]) in consts):
            alias[n.output[0]] = canon(n.input[0])  # exporters share one weight between layers this way
            continue
        if n.op_type not in QDQ_OPS:
            continue
        src = canon(n.input[0])
        alias[n.output[0]] = src
        pcount = sum(int(np.prod(inits[p].dims, dtype=np.int64)) for p in n.input[1:3] if p in inits)
        pbytes = sum(int(np.prod(inits[p].dims, dtype=np.int64)) * DTYPE_BYTES[_ONNX_DTYPE[inits[p].data_type]]
                     for p in n.input[1:3] if p in inits)
        if n.op_type == "QuantizeLinear":
            act_qdtype[src] = _qdq_dtype(n, inits, consts, shapes)
        elif src in inits or src in consts:
            t = inits.get(src) or consts[src]
            weight_qdtype[src] = _ONNX_DTYPE.get(t.data_type, "int8")
            qparams[src] = (pcount, int(pbytes))

    const_names = set(inits) | set(consts)
    graph_inputs = [canon(i.name) for i in g.input if i.name not in inits]
    graph_outputs = [canon(o.name) for o in g.output]

    # --- layers --------------------------------------------------------------------------------------------------
    layers: list[Layer] = []
    node_layer: dict[str, int] = {}
    tensor_producer: dict[str, int] = {}
    pending_qdq: list[tuple[str, onnx.NodeProto]] = []
    for n, name in zip(g.node, names):
        if n.op_type in QDQ_OPS or n.op_type == "Constant" or (n.output and n.output[0] in alias):
            pending_qdq.append((name, n))
            continue
        ins = [canon(t) for t in n.input if t]
        acts = [t for t in ins if t not in const_names]
        wts = [t for t in ins if t in const_names and _is_weight(t, inits, consts)]
        role = "compute"
        if n.op_type in CONST_OPS or not acts:
            role = "const"  # computed from constants only: folded at build time
            const_names.update(t for t in n.output if t)
        elif n.op_type in VIEW_OPS:
            role = "view"
        layer = Layer(index=len(layers), name=name, op_type=n.op_type, nodes=[name], inputs=acts,
                      outputs=[t for t in n.output if t], weights=wts, attrs=_attrs(n), role=role)
        layers.append(layer)
        node_layer[name] = layer.index
        for t in layer.outputs:
            tensor_producer[t] = layer.index

    # Q/DQ and Constant nodes belong to the layer that produces their (logical) input, or the first consumer
    consumers_of: dict[str, list[int]] = {}
    for layer in layers:
        for t in layer.inputs + layer.weights:
            consumers_of.setdefault(t, []).append(layer.index)
    for name, n in pending_qdq:
        src = canon(n.input[0]) if n.input else canon(n.output[0])
        owner = tensor_producer.get(src)
        if owner is None:
            cons = consumers_of.get(src) or consumers_of.get(canon(n.output[0]))
            owner = cons[0] if cons else None
        if owner is not None:
            layers[owner].nodes.append(name)
            node_layer[name] = owner

    _mark_preprocess(layers, graph_inputs, const_names)

    # --- tensors and weights with NPU dtypes -----------------------------------------------------------------------
    need = {t for layer in layers for t in layer.inputs + layer.outputs} | set(graph_inputs) | set(graph_outputs)
    missing = [t for t in need if t not in shapes]
    if missing:
        try:
            shapes.update(_runtime_shapes(model, missing))
        except Exception as e:  # noqa: BLE001 - custom ops etc.: analyse what is known rather than fail
            log.warning("shapes of %d tensors are unknown (%s...): onnx could not infer them and onnxruntime could "
                        "not run the model (%s); their sizes count as 0", len(missing), missing[0],
                        str(e).splitlines()[0][:200])
    internal = _internal_dtypes(layers, act_qdtype, set(graph_outputs), shapes) if quantized else {}
    tensors: dict[str, Tensor] = {}
    for t in need:
        shp, onnx_dt = shapes.get(t, ((), "float32"))
        known = t in shapes
        if t in act_qdtype:
            dt = act_qdtype[t]
        elif t in internal:
            dt = internal[t]
        elif quantized:  # left float inside a quantized graph (hybrid): the NPU runs it in fp16
            dt = "float16" if onnx_dt.startswith("float") else onnx_dt
        else:
            dt = sch.act_dtype if onnx_dt.startswith("float") else onnx_dt
        tensors[t] = Tensor(t, tuple(int(d) for d in shp), dt, tensor_producer.get(t), known=known)
    for layer in layers:
        for t in layer.inputs:
            tensors[t].consumers.append(layer.index)

    weights: dict[str, Weight] = {}
    for layer in layers:
        for w in layer.weights:
            if w in weights:
                continue
            tp = inits.get(w) or consts[w]
            shp = tuple(int(d) for d in tp.dims)
            if w in weight_qdtype:
                dt = weight_qdtype[w]
                count, pbytes = qparams.get(w, (0, 0))
            else:
                dt, count, pbytes = _float_weight_dtype(layer, w, shp, sch, quantized)
            weights[w] = Weight(w, shp, dt, count, int(pbytes))

    for layer in layers:
        ins = [tensors[t] for t in layer.inputs]
        outs = [tensors[t] for t in layer.outputs]
        layer.act_dtype = (outs or ins)[0].dtype if (outs or ins) else sch.act_dtype
        if ins and ins[0].dtype in DTYPE_BYTES and DTYPE_BYTES[ins[0].dtype] > DTYPE_BYTES.get(layer.act_dtype, 0):
            layer.act_dtype = ins[0].dtype
        main_w = [weights[w] for w in layer.weights if len(weights[w].shape) > 1]
        layer.weight_dtype = main_w[0].dtype if main_w else layer.act_dtype
        rule = MAC_RULES.get(layer.op_type)
        if rule is not None and layer.role == "compute":
            try:
                layer.macs = rule(layer, tensors, weights)
            except (IndexError, KeyError) as e:
                log.debug("no MAC count for %s (%s): %s", layer.name, layer.op_type, e)
    return GraphInfo(layers, tensors, weights, graph_inputs, graph_outputs, node_layer, quantized)


_WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


def _internal_dtypes(layers: Sequence[Layer], act_qdtype: dict[str, str], graph_outputs: set,
                     shapes: dict[str, tuple[tuple[int, ...], str]]) -> dict[str, str]:
    """Float tensors of a QDQ graph that never reach memory on the NPU, with the dtype of the layer computing them.

    The quantizer leaves a conv's output float when its activation (Clip, SiLU's sigmoid and multiply, a scalar
    remap) follows before the quantization point: the NPU applies those in the conv's output stage and writes only
    the quantized result. Such a tensor is internal when every reader is a weightless op whose outputs are quantized
    or internal in turn; it takes the dtype of the point it leads to. A float tensor read by a conv/matmul or
    reaching a graph output stays float (a layer kept float by hybrid quantization).
    """
    consumers: dict[str, list[Layer]] = {}
    for layer in layers:
        for t in layer.inputs:
            consumers.setdefault(t, []).append(layer)
    out: dict[str, str] = {}
    for layer in reversed(layers):  # readers come after their producers: resolve from the outputs backwards
        for t in layer.outputs:
            if t in act_qdtype or t in graph_outputs or not shapes.get(t, ((), "float32"))[1].startswith("float"):
                continue
            readers = consumers.get(t, [])
            if not readers or any(r.op_type in _WEIGHTED_OPS or r.role != "compute" for r in readers):
                continue
            ends = [act_qdtype.get(o) or out.get(o) for r in readers for o in r.outputs]
            if ends and all(ends):
                out[t] = max(ends, key=lambda d: DTYPE_BYTES[d])
    return out


def _is_weight(name: str, inits: dict[str, onnx.TensorProto], consts: dict[str, onnx.TensorProto]) -> bool:
    """Float tensors are stored weights; int64 shapes/axes/indices are compile-time parameters."""
    t = inits.get(name) or consts.get(name)
    return t is not None and _ONNX_DTYPE.get(t.data_type, "") not in ("int64", "int32", "bool", "uint64")


def _float_weight_dtype(layer: Layer, name: str, shape: tuple[int, ...], sch: Scheme,
                        quantized: bool) -> tuple[str, int, int]:
    """NPU storage dtype of a float initializer: the scheme's weight type for conv/gemm kernels, int32 biases."""
    is_kernel = layer.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and len(shape) >= 2
    if layer.op_type == "LSTM" and len(shape) == 3 and sch.weight_dtype != "float16":
        # rknn-toolkit2's exLSTM stores the gate weights W and R as integers (its weight table, in a w8a8 build),
        # though it computes the cell about as in float: so does our simulator, which keeps them float
        count = shape[0] * shape[1] if sch.per_channel else 1
        return sch.weight_dtype, 2 * count, count * 8
    if quantized or sch.weight_dtype == "float16":
        # a float model, or a layer left float in a quantized (hybrid) graph: the NPU stores it in fp16
        return "float16", 0, 0
    if is_kernel:
        channels = shape[0] if layer.op_type != "ConvTranspose" else shape[1]
        count = channels if sch.per_channel else 1
        return sch.weight_dtype, 2 * count, count * 8  # float32 scale + int32 zero point per scale
    if layer.op_type in ("Conv", "ConvTranspose", "Gemm") and len(shape) == 1:
        return "int32", 0, 0  # biases accumulate in 32 bits
    return sch.act_dtype, 0, 0


def _mark_preprocess(layers: list[Layer], graph_inputs: Sequence[str], const_names: set) -> None:
    """Input-side Transpose/Sub/Mul/... with constant operands: mean/std/layout the NPU folds into the first conv."""
    derived = set(graph_inputs)
    for layer in layers:
        if layer.role not in ("compute", "view"):
            continue
        if layer.op_type in _PREPROCESS_OPS and layer.inputs and all(t in derived for t in layer.inputs) \
                and len(layer.inputs) == 1:
            layer.role = "preprocess"
            derived.update(layer.outputs)
        elif layer.op_type in VIEW_OPS and layer.inputs and all(t in derived for t in layer.inputs):
            derived.update(layer.outputs)


def initializer_array(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    for i in model.graph.initializer:
        if i.name == name:
            return numpy_helper.to_array(i)
    return None
