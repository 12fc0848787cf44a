"""Where the NPU holds integers: the quantization plan of a float graph.

Per-op behaviour lives in the small registries below, keyed by op type. The plan decides, for every float
activation tensor, whether it is
- a *quantization point* (stored as an integer tensor with its own or its group's scale),
- *internal* to a fused op (a conv output feeding its fused activation; the sigmoid inside SiLU; an activation
  output followed by a scalar multiply/add): never quantized, as the NPU applies them before requantizing,
  except the *pre-activations* a chip requantizes (RKNPU2: a depthwise conv's output before its SiLU, measured on
  rknn-toolkit2's compiled layers and its simulator's dumps, docs/vendor.md; for TFLite, every conv output before
  an activation TFLite cannot fuse): they are quantization points, whose range the activation decides
  (algorithms/activations.activation_range),
- *prefix*: the pre-processing chain from a graph input (transpose, channel reorder, mean/std), which the NPU's input
  stage evaluates before the first layer; only the tensor that leaves the prefix is quantized,
- *float tail*: a Concat whose result only reaches graph outputs through layout ops (the detector head that glues
  pixel-scale boxes to 0..1 scores), and the layout ops after it. Its inputs keep one scale each and are dequantized
  before the concat, so the scores are not erased by the boxes' range. A box decode exported inside the model
  (YOLOv8's distribution softmax and anchor arithmetic) that only feeds such a concat joins it: it is computed in
  float from the head convs' outputs, as rknn_model_zoo's demo computes it on the CPU.
Quantization points are grouped (union-find) where the NPU shares one scale: layout/pooling/resize ops keep their
input's scale and a Concat's inputs share the output's scale.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, FrozenSet, List, Optional, Set, Tuple

import numpy as np
import onnx

from ..graph.attention import find_attention_regions
from ..graph.norms import find_norm_regions
from ..graph.outputs import SELECTION_OPS
from .ir import GraphInfo

# Ops whose output reuses the input's scale (no requantization on the NPU: pure data movement or max/min). A
# windowed AveragePool too: rknn-toolkit2 gives its output the input's range in its own quantization file, and its
# simulator keeps a pool's output on the input's grid whatever range is asked for (the vendor's accuracy_analysis
# dumps, `vendor-export --layers`); TFLite's int8 AVERAGE_POOL_2D requires it as well. A GlobalAveragePool keeps a
# range of its own (the vendor makes it a chain of convs).
SAME_SCALE = {"MaxPool", "GlobalMaxPool", "AveragePool", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze",
              "Slice", "Split", "Gather", "Resize", "Upsample", "Identity", "Pad", "DepthToSpace", "SpaceToDepth",
              "Expand", "Tile", "ReduceMax", "ReduceMin"}
# Ops the input stage evaluates before the first layer (mean/std, reorder, NHWC->NCHW, Focus-style slicing).
PREFIX_OPS = {"Transpose", "Sub", "Add", "Mul", "Div", "Slice", "Gather", "Concat", "Reshape", "Cast", "Identity",
              "Split", "Squeeze", "Unsqueeze"}
# Layout ops allowed between a mixed-range Concat and a graph output for it to stay float.
TAIL_OPS = {"Reshape", "Transpose", "Concat", "Flatten", "Squeeze", "Unsqueeze", "Identity"}
# Decode steps a float tail extends back through (_decodes; with a sigmoid no layer feeds and a softmax's constant
# 1x1 projection of at most MAX_DECODE_WEIGHTS weights).
DECODE_OPS = TAIL_OPS | {"Slice", "Split", "Add", "Sub", "Mul", "Div", "Softmax", "Exp"}
# ... and the host's own steps after a head: an angle from two maps (tf2onnx writes atan2 as Atan of y / x with sign
# corrections), a peak test (map == MaxPool(map), the mask cast to float and multiplied in). The chip runs none of
# these comparisons, signs and trigonometry; on int8 they would round y / x, an unbounded ratio, to a few levels of
# its calibrated range before the Atan (LEADER's minutia directions). A max of int8 values is the same in float.
HOST_DECODE_OPS = {"Atan", "Sign", "Neg", "Abs", "Cast", "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual",
                   "Not", "And", "Or", "Where", "MaxPool"}
MAX_DECODE_WEIGHTS = 64
# A detector exported with its NMS inside (YOLOX "with post": the decode written into the head's output with
# ScatterND, scores multiplied, boxes converted, NonMaxSuppression, the kept rows gathered): every step after the
# mixed-range concat runs on the host CPU (the NPU runs no NMS), so the concat and all of that stay float, as with a
# concat that is a graph output. Ops such a post-processing tail may hold:
SELECTION_TAIL_OPS = DECODE_OPS | SELECTION_OPS | {
    "ScatterND", "GatherND", "Gather", "GatherElements", "Cast", "Sqrt", "Max", "Min", "Clip", "ReduceMax", "ArgMax",
    "TopK", "Where", "Greater", "Less", "Equal", "Not", "And", "Or", "Shape", "Expand", "Tile", "ConstantOfShape",
    "Range", "Sigmoid"}
# Activations the NPU applies inside the conv/matmul before requantizing.
FUSED_ACTS = {"Relu", "Clip", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu",
              "Softplus", "Mish", "Gelu", "Abs"}  # Abs: rknn-toolkit2 writes it as a LeakyRelu of slope -1
# x * gate(x) written out as two nodes (SiLU = x*sigmoid(x), HardSwish = x*hardsigmoid(x)): one activation.
GATES = {"Sigmoid": "SiLU", "HardSigmoid": "HardSwish"}
# Node-name endings of range split's part remaps (algorithms/split.py writes them).
REMAP_OPS = ("_remap_mul", "_remap_add")
# the pre-activation policy of config(pre_activation_points='tflite'): every conv output before an activation TFLite
# cannot fuse into a conv (all but Relu / Relu6) is an int8 point of its own, so the conv is an int8 TFLite op
# (Teflon offloads it) and the activation is computed from its integers, where the chip's own graph applies it in
# full precision inside the conv
ALL_PRE_ACTIVATIONS = "all"
# what _requantized_activation returns for such a conv output whose activation has no range search
# (algorithms/activations.py ACTIVATIONS): an ordinary point, calibrated like any other
PLAIN_POINT = "point"
# Ops whose output values do not depend on the input data (shape arithmetic).
STATIC_OPS = {"Shape", "Size"}


@dataclass
class WeightedOp:
    """A node with a constant weight: its activation input, weight, per-channel axis, bias."""

    node: int
    x: str
    w: str
    axis: int  # output-channel axis of the weight
    bias: Optional[str] = None
    depthwise: bool = False


def _conv(info: GraphInfo, i: int) -> Optional[WeightedOp]:
    node = info.nodes[i]
    if len(node.input) < 2 or not info.is_const(node.input[1]) or info.is_const(node.input[0]):
        return None
    w = info.const(node.input[1])
    group = int(info.attr(i, "group", 1))
    bias = node.input[2] if len(node.input) > 2 and node.input[2] and info.is_const(node.input[2]) else None
    return WeightedOp(i, node.input[0], node.input[1], 0, bias, depthwise=group > 1 and w.shape[1] == 1)


def _conv_transpose(info: GraphInfo, i: int) -> Optional[WeightedOp]:
    node = info.nodes[i]
    if len(node.input) < 2 or not info.is_const(node.input[1]) or info.is_const(node.input[0]):
        return None
    if int(info.attr(i, "group", 1)) != 1:
        return None  # grouped transposed conv: output channels are not one axis of the weight
    bias = node.input[2] if len(node.input) > 2 and node.input[2] and info.is_const(node.input[2]) else None
    return WeightedOp(i, node.input[0], node.input[1], 1, bias)


def _gemm(info: GraphInfo, i: int) -> Optional[WeightedOp]:
    node = info.nodes[i]
    if not info.is_const(node.input[1]) or info.is_const(node.input[0]) or int(info.attr(i, "transA", 0)):
        return None
    axis = 0 if int(info.attr(i, "transB", 0)) else 1
    n_out = info.const(node.input[1]).shape[axis]
    bias = None
    if len(node.input) > 2 and node.input[2] and info.is_const(node.input[2]):
        c = info.const(node.input[2])
        if c.ndim == 1 and c.shape[0] == n_out and float(info.attr(i, "beta", 1.0)) == 1.0:
            bias = node.input[2]
    if float(info.attr(i, "alpha", 1.0)) != 1.0:
        return None
    return WeightedOp(i, node.input[0], node.input[1], axis, bias)


def _matmul(info: GraphInfo, i: int) -> Optional[WeightedOp]:
    node = info.nodes[i]
    if not info.is_const(node.input[1]) or info.is_const(node.input[0]) or info.const(node.input[1]).ndim != 2:
        return None
    return WeightedOp(i, node.input[0], node.input[1], 1, None)


WEIGHTED: Dict[str, Callable[[GraphInfo, int], Optional[WeightedOp]]] = {
    "Conv": _conv, "ConvTranspose": _conv_transpose, "Gemm": _gemm, "MatMul": _matmul,
}


@dataclass
class Plan:
    points: List[str]                       # quantization points in topological order
    group_of: Dict[str, int]                # point -> group id
    groups: Dict[int, List[str]]            # group id -> member points
    weighted: List[WeightedOp]
    internal: Set[str] = field(default_factory=set)
    prefix: Set[str] = field(default_factory=set)
    float_tail: Set[str] = field(default_factory=set)
    fused: Dict[str, str] = field(default_factory=dict)   # fused output point -> activation name ('SiLU', 'Relu')
    split_concats: List[str] = field(default_factory=list)
    # points whose values lie inside their group's other members' range (a max-pool, reshape or resize of a
    # member; a concat of members): calibration skips them, the group range is the union of the rest
    derived: Set[str] = field(default_factory=set)
    pre_activations: Dict[str, str] = field(default_factory=dict)  # point -> 'silu' | 'sigmoid' (its activation)
    # (concat output, input) pairs kept out of one scale group: the input keeps its own scale, the Concat requantizes
    # it (algorithms/concat_inputs.py)
    detached: FrozenSet[Tuple[str, str]] = frozenset()
    # points whose range the NPU fixes whatever calibration saw: on RKNPU2 a Sigmoid's output is [0, 1] (scale 1/255),
    # in TFLite's LOGISTIC [0, 255/256] (scale 1/256)
    unit_ranges: Dict[str, Tuple[float, float]] = field(default_factory=dict)
    # Sigmoids the host computes in float from their int8 logits (output_sigmoids that reach the graph outputs only
    # through layout ops): every such Sigmoid that reads a point anyway, and the heads' Sigmoids the chip would fuse
    # into their conv where host_heads asks for them (algorithms/host_sigmoids.py measures which)
    host_sigmoids: Dict[str, str] = field(default_factory=dict)  # Sigmoid output -> the logits it reads
    # the same outputs as a build_plan argument for the plans made after this one: a rewrite (head split's conv per
    # group) must not move a Sigmoid back to the chip once calibration planned it on the host
    host_heads: FrozenSet[str] = frozenset()
    # the conditioning branch the host computes in float before the NPU runs (host_conditioning): its tensors
    host_branch: FrozenSet[str] = frozenset()

    @property
    def sources(self) -> List[str]:
        return [t for t in self.points if t not in self.derived]


class _UnionFind:
    def __init__(self) -> None:
        self.parent: Dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


def _dynamic_tensors(info: GraphInfo) -> Set[str]:
    """Tensors whose values depend on the input data (not constants, not shape arithmetic)."""
    dyn = set(info.inputs)
    for node in info.nodes:
        if node.op_type in STATIC_OPS:
            continue
        if any(n in dyn for n in node.input if n):
            dyn.update(o for o in node.output if o)
    return dyn


def _prefix(info: GraphInfo, dyn: Set[str]) -> Set[str]:
    prefix = {n for n in info.inputs if info.is_float(n)}
    for node in info.nodes:
        if node.op_type not in PREFIX_OPS or node.domain not in ("", "ai.onnx"):
            continue
        acts = [n for n in node.input if n in dyn]
        if acts and all(n in prefix for n in acts):
            prefix.update(o for o in node.output if o and info.is_float(o))
    return prefix


_INTEGER_TYPES = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT16, onnx.TensorProto.UINT16,
                  onnx.TensorProto.INT32, onnx.TensorProto.UINT32, onnx.TensorProto.INT64, onnx.TensorProto.UINT64,
                  onnx.TensorProto.BOOL}


# A conditioning input: a few numbers per sample beside the main input (a diffusion model's noise level or timestep,
# a class or difficulty label), and the largest tensor its branch of the graph computes on the host
CONDITION_MAX = 64
CONDITION_BRANCH_MAX = 4096


def _numel(info: GraphInfo, t: str) -> Optional[int]:
    s = info.shape.get(t)
    return None if s is None or any(d is None for d in s) else int(np.prod(s, dtype=np.int64))


def host_conditioning(info: GraphInfo, dyn: Optional[Set[str]] = None) -> Set[str]:
    """The tensors of a conditioning branch: computed only from small float or integer inputs (at most
    CONDITION_MAX values) of a model that also has a large one, and themselves small. The board's CPU computes such
    a branch in float before the NPU runs (a handful of values: an NPU layer per op would cost more in hand-overs
    than the arithmetic), and int8 could not hold it: a diffusion model's sinusoidal noise-level embedding is the
    Sin and Cos of log(sigma) times frequencies up to 250, a range one int8 step of which is several radians. Where
    the branch meets the main path (an Add onto a feature map), the tensor it hands over is an ordinary point. dyn:
    the graph's data-dependent tensors (_dynamic_tensors), when already known."""
    dyn = _dynamic_tensors(info) if dyn is None else dyn
    sizes = {t: _numel(info, t) for t in info.inputs if _numeric(info, t)}
    small = {t for t, n in sizes.items() if n is not None and n <= CONDITION_MAX}
    if not small or len(small) == len(sizes):
        return set()
    branch = set(small)
    for node in info.nodes:
        acts = [t for t in node.input if t in dyn]
        outs = [o for o in node.output if o]
        if acts and all(t in branch for t in acts) and all(
                _numeric(info, o) and (_numel(info, o) or CONDITION_BRANCH_MAX + 1) <= CONDITION_BRANCH_MAX
                for o in outs):
            branch.update(outs)
    return branch


def _numeric(info: GraphInfo, t: str) -> bool:
    """A float or integer tensor (a timestep comes as an int64 and is cast to float for its embedding); not a bool
    mask."""
    return info.is_float(t) or (info.elem_type.get(t) in _INTEGER_TYPES and
                                info.elem_type.get(t) != onnx.TensorProto.BOOL)


def _id_tensors(info: GraphInfo) -> Set[str]:
    """Float tensors read only by Casts to an integer type: ids carried as floats (a Keras embedding's input, cast to
    int32 before its lookup). They are never quantization points: a rounded id is another id."""
    out = set()
    for t, readers in info.consumers.items():
        if readers and all(info.nodes[c].op_type == "Cast" and int(info.attr(c, "to", 0)) in _INTEGER_TYPES
                           for c in readers):
            out.add(t)
    return out


def _gated(info: GraphInfo) -> Dict[int, tuple]:
    """Mul nodes computing x * gate(x): mul index -> (x, gate output, activation name)."""
    found = {}
    for i, node in enumerate(info.nodes):
        if node.op_type != "Mul" or len(node.input) != 2:
            continue
        for a, b in ((node.input[0], node.input[1]), (node.input[1], node.input[0])):
            g = info.producer.get(b)
            if g is None or info.nodes[g].op_type not in GATES or info.nodes[g].input[0] != a:
                continue
            if info.consumers[b] == [i] and b not in info.output_set:
                found[i] = (a, b, GATES[info.nodes[g].op_type])
                break
    return found


def tail_ok(info: GraphInfo) -> Dict[str, bool]:
    """tensor -> True when it only reaches graph outputs through TAIL_OPS."""
    ok: Dict[str, bool] = {}
    for node in reversed(info.nodes):
        for t in node.output:
            if not t:
                continue
            cons = info.consumers.get(t, [])
            good = t in info.output_set or bool(cons)
            for c in cons:
                cn = info.nodes[c]
                if cn.op_type not in TAIL_OPS or not all(ok.get(o, False) for o in cn.output if o):
                    good = False
                    break
            ok[t] = good
    return ok


def peak_maps(info: GraphInfo, plan: "Plan") -> List[str]:
    """Points a peak test reads: map == MaxPool(map), through layout ops (LEADER's minutiae, CenterNet's heat-map
    NMS). Smooth maps near a peak differ from their neighbours by less than an 8-bit step of their range, so on
    int8 a peak becomes a plateau of equal maxima and the test keeps all of it (LEADER reported each plateau's
    pixels as minutiae); the pipeline gives such a map 16 bits."""
    def source(t: str) -> str:  # back through the layout ops a comparison reads the map through
        while t in info.producer and info.nodes[info.producer[t]].op_type in TAIL_OPS and \
                info.nodes[info.producer[t]].op_type != "Concat":
            t = info.nodes[info.producer[t]].input[0]
        return t

    found: List[str] = []
    for node in info.nodes:
        if node.op_type != "Equal" or len(node.input) != 2:
            continue
        a, b = source(node.input[0]), source(node.input[1])
        for pooled, plain in ((a, b), (b, a)):
            p = info.producer.get(pooled)
            if p is not None and info.nodes[p].op_type == "MaxPool" and source(info.nodes[p].input[0]) == plain \
                    and plain in plan.group_of and plain not in found:
                found.append(plain)
    return found


def output_sigmoids(info: GraphInfo, dyn: Set[str], ok: Optional[Dict[str, bool]] = None) -> Set[str]:
    """Outputs of the Sigmoids that reach graph outputs only through layout ops (TAIL_OPS): a detector's score maps,
    a pose net's heatmaps, a text detector's probability map. Plan.host_sigmoids says which the host computes.
    ok: tail_ok(info), when already made."""
    ok = tail_ok(info) if ok is None else ok
    return {n.output[0] for n in info.nodes if n.op_type == "Sigmoid" and n.input and n.input[0] in dyn and
            ok.get(n.output[0], False)}


def selection_tail(info: GraphInfo) -> Set[int]:
    """Nodes of a post-processing tail that holds a selection (SELECTION_OPS, an NMS): every node whose outputs reach
    graph outputs only through SELECTION_TAIL_OPS, and that feeds a selection or reads what one selected (the rows
    gathered at the kept indices)."""
    ok: Dict[str, bool] = {}
    selects: Dict[str, bool] = {}
    selected: Set[str] = set()
    for n in info.nodes:
        if n.op_type in SELECTION_OPS or any(t in selected for t in n.input):
            selected.update(o for o in n.output if o)

    def tail_op(n) -> bool:  # yolov7's end2end export turns the boxes into corners by a constant 4x4 MatMul
        return n.op_type in SELECTION_TAIL_OPS or (
            n.op_type == "MatMul" and info.is_const(n.input[1]) and info.const(n.input[1]).size <= MAX_DECODE_WEIGHTS)

    for node in reversed(info.nodes):
        for t in node.output:
            if not t:
                continue
            cons = info.consumers.get(t, [])
            ok[t] = (t in info.output_set or bool(cons)) and all(
                tail_op(info.nodes[c]) and all(ok.get(o, False) for o in info.nodes[c].output if o) for c in cons)
            selects[t] = any(info.nodes[c].op_type in SELECTION_OPS or
                             any(selects.get(o, False) for o in info.nodes[c].output if o) for c in cons)
    return {i for i, n in enumerate(info.nodes) if tail_op(n) and n.output and
            all(ok.get(o, False) for o in n.output if o) and
            (n.op_type in SELECTION_OPS or any(selects.get(o, False) or o in selected for o in n.output if o))}


def _decodes(info: GraphInfo, i: int, layer_outputs: Set[str]) -> bool:
    """Whether node i is a step of a detector's decode, which a float tail may take in: layout, slicing and
    arithmetic on the head's outputs (anchor points, strides), a softmax over box-distribution bins and its
    constant 1x1 projection to one channel (YOLOv8's DFL: 16 weights), exp, and a sigmoid that no layer feeds
    directly (on concatenated class logits; a sigmoid right after a conv stays fused in it)."""
    node = info.nodes[i]
    if node.op_type in DECODE_OPS or node.op_type in HOST_DECODE_OPS:
        return True
    if node.op_type == "Sigmoid":
        return node.input[0] not in layer_outputs
    if node.op_type == "Conv" and len(node.input) > 1 and info.is_const(node.input[1]):
        w = info.const(node.input[1])
        const_bias = len(node.input) < 3 or not node.input[2] or info.is_const(node.input[2])
        projection = w.shape[0] == 1 and w.size <= MAX_DECODE_WEIGHTS and all(d == 1 for d in w.shape[2:])
        return projection and const_bias and _after_softmax(info, node.input[0])
    return False


def _after_softmax(info: GraphInfo, t: str) -> bool:
    """t is a Softmax output, or one through layout ops (a distribution over bins, transposed into channels)."""
    while True:
        p = info.producer.get(t)
        if p is None:
            return False
        node = info.nodes[p]
        if node.op_type == "Softmax":
            return True
        if node.op_type not in TAIL_OPS or not node.input:
            return False
        t = node.input[0]


def _extend_decode_tail(info: GraphInfo, float_tail: Set[str], layer_outputs: Set[str], dyn: Set[str],
                        fixed: Set[str], internal: Set[str]) -> None:
    """Grow ``float_tail`` (in place) back from its concats through the decode steps that only feed it (_decodes):
    a detector exported with its box decode inside (YOLOv8: head convs -> distribution softmax -> projection ->
    anchor arithmetic -> x strides, class logits -> sigmoid, all joined in one output) then computes it in float
    from the head's int8 outputs, each with its own scale, as rknn_model_zoo's YOLOv8 demo does on the CPU after
    cutting the model there. In int8 the grid-unit coordinates of all levels share one scale (half a cell: 16
    pixels at stride 32) and the levels' class logits one range. ``fixed``: outputs that stay as the plan has them
    (the pre-processing prefix, an activation or an absorbed affine fused into its layer); a node that reads an
    ``internal`` tensor (inside such a fused step, never stored) stays too."""
    in_tail = {i for i, n in enumerate(info.nodes) if n.output and all(o in float_tail for o in n.output if o)}
    for i in reversed(range(len(info.nodes))):
        outs = [o for o in info.nodes[i].output if o]
        if i in in_tail or not outs or any(o in fixed or o not in dyn or o in info.output_set for o in outs) or \
                any(t in internal for t in info.nodes[i].input):
            continue
        readers = [c for o in outs for c in info.consumers.get(o, [])]
        if readers and all(c in in_tail for c in readers) and _decodes(info, i, layer_outputs):
            float_tail.update(outs)
            in_tail.add(i)


def _scalar_const(info: GraphInfo, node: onnx.NodeProto, x: str) -> bool:
    """node is x (op) c with c a one-element constant."""
    others = [t for t in node.input if t != x]
    return len(node.input) == 2 and len(others) == 1 and info.is_const(others[0]) and \
        np.size(info.const(others[0])) == 1


def _affine_products(info: GraphInfo, dyn: Set[str], internal: Set[str], fused: Dict[str, str]) -> Set[str]:
    """RKNPU2: x * k read only by (x * k) + b or - b, k and b constants of any shape (a BatchNorm spelled out after a
    residual Add, per channel), is one layer on the chip: rknn-toolkit2's accuracy_analysis dumps no value of the
    product, and its sum lies a step away from a twice-rounded one on 28% of the values (captcha_crnn's eight such
    pairs, `vendor-export --layers`). The product is no point; the sum is rounded once."""
    out: Set[str] = set()
    for node in info.nodes:
        y = node.output[0] if node.op_type == "Mul" and node.output else ""
        if not y or y not in dyn or y in info.output_set or y in internal or y in fused or len(node.input) != 2 or \
                sum(info.is_const(t) for t in node.input) != 1:
            continue
        cons = info.consumers.get(y, [])
        after = info.nodes[cons[0]] if len(cons) == 1 else None
        other = [t for t in after.input if t != y] if after is not None else []
        if after is not None and after.op_type in ("Add", "Sub") and len(after.input) == 2 and len(other) == 1 and \
                info.is_const(other[0]) and (after.op_type == "Add" or after.input[0] == y):
            out.add(y)
    return out


def _absorb_affine(info: GraphInfo, internal: Set[str], fused: Dict[str, str], starts: Set[str],
                   requantized_pre_activations: bool = False) -> None:
    """A multiply, divide, add or subtract by a scalar constant right after a fused activation, or after a conv
    without one (``starts``), is part of it: the op's output quantizer absorbs it (a scale and a zero-point shift,
    or a different lookup table), so the NPU never requantizes in between. Exports write a layer's scalar
    "learnable affine" this way; range split's part remap (algorithms/split.py) writes such pairs too.
    requantized_pre_activations (RKNPU2): a remap after an activation is a layer of its own after the activation's
    int8 output, as rknn-toolkit2 compiles it (docs/vendor.md): the tensor entering the remap stays a point."""
    for y in list(fused) + sorted(starts - set(fused) - internal):
        act = fused.pop(y, "")
        chain: List[str] = []   # the tensors each absorbed op reads, in order
        remap_at = -1           # position in chain of the tensor range split's remap reads first
        z = y
        while z not in info.output_set:
            cons = info.consumers.get(z, [])
            if len(cons) != 1 or info.nodes[cons[0]].op_type not in ("Mul", "Add", "Div", "Sub") or \
                    not _scalar_const(info, info.nodes[cons[0]], z) or \
                    (info.nodes[cons[0]].op_type in ("Div", "Sub") and info.nodes[cons[0]].input[0] != z):
                break
            if remap_at < 0 and info.nodes[cons[0]].name.endswith(REMAP_OPS):
                remap_at = len(chain)
            chain.append(z)
            z = info.nodes[cons[0]].output[0]
        if act and requantized_pre_activations and remap_at >= 0:
            point = chain[remap_at]
            internal.update(chain[:remap_at] + chain[remap_at + 1:])
            fused[point] = act if remap_at == 0 or act.endswith("+affine") else act + "+affine"
            fused[z] = "affine"
            continue
        internal.update(chain)
        if act:
            fused[z] = act if not chain or act.endswith("+affine") else act + "+affine"
        elif chain:
            fused[z] = "affine"


def _regions(info: GraphInfo, keep: Set[str]) -> List:
    """Spelled-out activations (graph/activations.py) the graph still holds: GELU and Mish below the opsets that
    have them as ops (the optimizer rewrote the others into their op)."""
    from ..graph.activations import find_regions

    consts = {n: info.const(n) for n in info.inits if np.size(info.const(n)) == 1 and info.is_float(n)}
    return [r for r in find_regions(info.nodes, consts, keep)
            if len(r.nodes) > 1 and r.name not in ("Sigmoid", "Tanh", "HardSigmoid")]


def _kept(info: GraphInfo) -> Set[str]:
    """Tensors no fused region may hide: the graph outputs and what sub-graphs read."""
    from ..graph.names import subgraphs, used_names

    keep = set(info.output_set)
    for node in info.nodes:
        for sub in subgraphs(node):
            keep |= used_names(sub)
    return keep


def _requantized_activation(info: GraphInfo, w: WeightedOp, y: str, cons: List[int], gated: Dict[int, tuple],
                            policy: object = True) -> str:
    """'silu' / 'sigmoid' / 'hardswish' when this conv output y is stored as integers before its activation (a
    pre-activation, its range searched for that activation), PLAIN_POINT when it is an ordinary point, '' otherwise.
    policy True: as a chip that requantizes pre-activations does it (a depthwise conv before its SiLU; a conv
    before a standalone Sigmoid is not: rknn-toolkit2's simulator computes the Sigmoid of the unrounded sum, exactly
    so on every score head of YOLOX-nano and ddddocr's detector); ALL_PRE_ACTIVATIONS: every conv before an
    activation TFLite cannot fuse into it, as TFLite's int8 ops compute it (LOGISTIC reads int8)."""
    if info.nodes[w.node].op_type != "Conv":
        return ""
    if len(cons) == 1 and info.nodes[cons[0]].op_type == "Sigmoid":
        return "sigmoid" if policy == ALL_PRE_ACTIVATIONS else ""
    if (w.depthwise or policy == ALL_PRE_ACTIVATIONS) and len(cons) == 2 and \
            any(c in gated and gated[c][0] == y and gated[c][2] == "SiLU" for c in cons):
        return "silu"
    if policy != ALL_PRE_ACTIVATIONS:
        return ""
    if len(cons) == 1 and info.nodes[cons[0]].op_type == "HardSwish":
        return "hardswish"
    if len(cons) == 1 and info.nodes[cons[0]].op_type in FUSED_ACTS - {"Relu", "Clip"} or \
            len(cons) == 2 and any(c in gated and gated[c][0] == y for c in cons):
        return PLAIN_POINT
    return ""


def _residual_conv_outputs(info: GraphInfo, weighted: List[WeightedOp], dyn: Set[str], internal: Set[str],
                           fused: Dict[str, str]) -> Set[str]:
    """Conv outputs read only by a residual Add of two same-shape activations: the RKNPU2 adds the other operand
    into the conv's accumulator and rounds once, at the sum (rknn-toolkit2 2.5.0's simulator: the projection convs of
    BlazeFace's and MobileNetV2's residual blocks put out values on no int8 grid, their sums are on the Add's, or
    its ReLU's). Where both operands are such convs, the later one takes the Add, as the other must exist first."""
    taken: Dict[int, Tuple[int, str]] = {}  # Add node -> (conv node, conv output) of the conv it fuses into
    for w in weighted:
        y = info.nodes[w.node].output[0]
        cons = info.consumers.get(y, [])
        if info.nodes[w.node].op_type != "Conv" or y in info.output_set or y in internal or y in fused or \
                y not in dyn or len(cons) != 1:
            continue
        add = info.nodes[cons[0]]
        ops = [t for t in add.input if t]
        if add.op_type != "Add" or len(ops) != 2 or ops[0] == ops[1] or not all(t in dyn for t in ops) or \
                info.shape.get(ops[0]) is None or info.shape.get(ops[0]) != info.shape.get(ops[1]):
            continue
        if cons[0] not in taken or taken[cons[0]][0] < w.node:
            taken[cons[0]] = (w.node, y)
    return {y for _, y in taken.values()}


def _channel_split(info: GraphInfo, w: WeightedOp, i: int, y: str) -> bool:
    """Node ``i`` splits the Conv output ``y`` along its channels."""
    node = info.nodes[i]
    rank = info.rank(y)
    return info.nodes[w.node].op_type == "Conv" and node.op_type == "Split" and node.input[0] == y and \
        rank is not None and int(info.attr(i, "axis", 0)) % rank == 1


def _activation_reader(info: GraphInfo, t: str) -> Optional[int]:
    """The node of the activation that is ``t``'s only reader (and ``t`` no graph output), else None."""
    readers = info.consumers.get(t, [])
    if not t or t in info.output_set or len(readers) != 1 or info.nodes[readers[0]].op_type not in FUSED_ACTS or \
            info.nodes[readers[0]].input[0] != t:
        return None
    return readers[0]


def _clamps(info: GraphInfo, node, x: str) -> bool:
    """``node`` is a Relu of ``x``, or a Clip of ``x`` whose bounds are constants (or absent)."""
    if node.op_type == "Relu":
        return True
    return node.op_type == "Clip" and node.input[0] == x and \
        all(info.const(b) is not None for b in node.input[1:] if b)


def build_plan(info: GraphInfo, keep_mixed_concat_float: bool = True,
               requantized_pre_activations: object = False,
               detached: FrozenSet[Tuple[str, str]] = frozenset(),
               host_heads: FrozenSet[str] = frozenset()) -> Plan:
    """requantized_pre_activations: True for the RKNPU2's own points: the conv outputs it stores as integers before
    their activation (targets/chips.py Generation.requantizes_pre_activations), none for a conv whose residual
    Add it fuses (_residual_conv_outputs), and none inside an attention (its scores and probabilities: one fused
    op there); ALL_PRE_ACTIVATIONS for every conv output before an activation TFLite
    cannot fuse (config(pre_activation_points='tflite')), each residual Add reading int8 operands as TFLite's ADD.
    detached: (concat output, input) pairs whose scales stay apart (Plan.detached).
    host_heads: output Sigmoids the host computes whatever this graph's structure says (Plan.host_sigmoids): score
    heads the chip would fuse into their conv, and those an earlier plan of the same build gave the host; output
    Sigmoids that read a point are the host's in any case."""
    dyn = _dynamic_tensors(info)
    condition = host_conditioning(info, dyn)
    prefix = _prefix(info, dyn) - condition
    ok = tail_ok(info) if keep_mixed_concat_float else {}
    tail_sigmoids = output_sigmoids(info, dyn, ok) - prefix if keep_mixed_concat_float else set()
    host = set(host_heads) & tail_sigmoids
    weighted = [w for i, n in enumerate(info.nodes) if n.op_type in WEIGHTED for w in [WEIGHTED[n.op_type](info, i)]
                if w is not None and n.output[0] not in condition]  # the host's layers keep float weights
    internal: Set[str] = set()
    fused: Dict[str, str] = {}

    gated = _gated(info)
    for mul_i, (_x, gate_out, name) in gated.items():
        internal.add(gate_out)
        fused[info.nodes[mul_i].output[0]] = name
    # other spelled-out activations: one fused step from x to z, whatever their node count
    keep = _kept(info)
    region_of: Dict[str, object] = {}
    for r in _regions(info, keep):
        if r.z in fused or any(t in internal for t in r.inner):
            continue
        internal.update(r.inner)
        fused[r.z] = r.name
        region_of[r.x] = r

    # spelled-out normalisations (LayerNorm, RMSNorm): one step from x to z, as the NPU runs them
    for r in find_norm_regions(info.nodes, dyn, keep, info.const, claimed=internal | set(fused)):
        if r.z not in fused and not any(t in internal for t in r.inner):
            internal.update(r.inner)
    # scaled dot-product attention: one step from q, k and v to its output on RKNPU2 (graph/attention.py)
    if requantized_pre_activations is True:
        for a in find_attention_regions(info.nodes, dyn, keep, info.const):
            if not any(t in internal or t in fused for t in a.inner):
                internal.update(a.inner)

    # conv/matmul output consumed only by its activation: the activation output is the quantization point
    pre_activations: Dict[str, str] = {}
    for w in weighted:
        y = info.nodes[w.node].output[0]
        if y in info.output_set:
            continue
        cons = info.consumers.get(y, [])
        if len(cons) == 1 and info.nodes[cons[0]].output[0] in host:
            continue  # the logits are the point: the host applies the sigmoid
        act = _requantized_activation(info, w, y, cons, gated, requantized_pre_activations) \
            if requantized_pre_activations else ""
        if act in (PLAIN_POINT, "hardswish") and len(cons) == 1:
            # still the activation's own output stage: a scalar remap after it is absorbed or made a layer of its
            # own there (_absorb_affine), as after a fused one
            fused[info.nodes[cons[0]].output[0]] = info.nodes[cons[0]].op_type
        if act == PLAIN_POINT:
            continue
        if act:
            pre_activations[y] = act
            continue
        if len(cons) == 1 and info.nodes[cons[0]].op_type in FUSED_ACTS and info.nodes[cons[0]].input[0] == y:
            internal.add(y)
            fused[info.nodes[cons[0]].output[0]] = info.nodes[cons[0]].op_type
        elif len(cons) == 1 and _channel_split(info, w, cons[0], y):
            # rknn-toolkit2 compiles a conv read only by a channel Split as one conv per part: where each part goes
            # to an activation, each with it fused (onnx-cv-graph's Sobel: the x and y gradients of one conv, each
            # then an Abs); on RKNPU2 also where only some parts go to a Sigmoid (a detector head's score and box
            # channels): the score parts are fused with it, as a score head's conv is (its simulator's values of
            # layout_cdla's four score parts lie on no grid), and every other part is requantized from the conv's
            # sum on a range of its own. Parts read otherwise are head_split's (algorithms/head_split.py), which
            # cuts the conv itself where their ranges differ.
            acts = {part: _activation_reader(info, part) for part in info.nodes[cons[0]].output}
            # a score part whose Sigmoid the host computes is a point of its own on RKNPU2 (the chip puts out its
            # logits: one conv per part still; rknn-toolkit2's values of NanoDet's parts are within a step of ours)
            on_host = {part for part, a in acts.items() if a is not None and info.nodes[a].output[0] in host}
            acts = {part: (None if part in on_host else a) for part, a in acts.items()}
            every = all(a is not None for a in acts.values())
            fuse = {part: a for part, a in acts.items() if a is not None and (
                every or requantized_pre_activations is True and info.nodes[a].op_type == "Sigmoid")}
            if fuse or on_host and requantized_pre_activations is True:
                internal.add(y)
                for part, act in fuse.items():
                    internal.add(part)
                    fused[info.nodes[act].output[0]] = info.nodes[act].op_type
        elif len(cons) == 2:
            muls = [c for c in cons if c in gated and gated[c][0] == y]
            gates = [c for c in cons if info.nodes[c].op_type in GATES and info.nodes[c].output[0] in internal]
            if len(muls) == 1 and len(gates) == 1 and gated[muls[0]][1] == info.nodes[gates[0]].output[0]:
                internal.add(y)
        if y in region_of and all(c in region_of[y].nodes for c in cons):
            internal.add(y)
    # a sum or difference of two activations read only by a Relu, or a Clip with constant bounds: the NPU's
    # elementwise unit applies it before it requantizes (rknn-toolkit2 gives the sum the activation's range), so
    # what the activation cuts off never takes int8 levels of its own (onnx-cv-graph's Sobel: |gx| + |gy| clipped
    # to [0, 1] spans [0, 4.6] before the Clip)
    for node in info.nodes:
        y = node.output[0] if node.output else ""
        cons = info.consumers.get(y, [])
        if node.op_type in ("Add", "Sub") and y in dyn and y not in info.output_set and y not in internal and \
                y not in fused and sum(t in dyn for t in node.input) == 2 and len(cons) == 1 and \
                _clamps(info, info.nodes[cons[0]], y):
            internal.add(y)
            fused[info.nodes[cons[0]].output[0]] = info.nodes[cons[0]].op_type
    if requantized_pre_activations is True:
        internal.update(_residual_conv_outputs(info, weighted, dyn, internal, fused))
        internal.update(_affine_products(info, dyn, internal, fused))
    conv_outputs = {info.nodes[w.node].output[0] for w in weighted if info.nodes[w.node].op_type in
                    ("Conv", "ConvTranspose", "Gemm")}
    _absorb_affine(info, internal, fused, conv_outputs, requantized_pre_activations)

    # an output Sigmoid that reads a point (not fused into its layer: after an Add, a Concat, a Resize) is the
    # host's: the same logits, one rounding fewer than the chip's [0, 1] grid, which holds a score of 0.003 as one
    # step and of 0.001 as none (yolo26n's class scores, most below 0.01, read by a Sigmoid after their Concat:
    # cosine 0.30 -> 0.90). A conv's pre-activation in a build for TFLite stays with its int8 LOGISTIC, the op Teflon
    # offloads (on the host, YOLOX-nano's TFLite build kept 111 detections of 118 instead of 112)
    logits = {t: info.nodes[info.producer[t]].input[0] for t in tail_sigmoids}
    host |= {t for t in tail_sigmoids if t not in fused and logits[t] not in internal and
             pre_activations.get(logits[t]) != "sigmoid"}
    float_tail: Set[str] = set(host)
    split_concats: List[str] = []
    if keep_mixed_concat_float:
        post = selection_tail(info)
        for i, node in enumerate(info.nodes):
            out = node.output[0] if node.output else ""
            if out in prefix or out not in dyn:
                continue
            if node.op_type == "Concat" and (ok.get(out, False) or i in post):
                float_tail.add(out)
                split_concats.append(info.node_label(i))
            elif (node.op_type in TAIL_OPS or i in post) and any(n in float_tail for n in node.input):
                float_tail.update(o for o in node.output if o)
        if float_tail:
            layer_outputs = {info.nodes[w.node].output[0] for w in weighted}
            fixed = set(prefix) | internal | set(fused)  # fused into a layer on the NPU: stays as it is
            _extend_decode_tail(info, float_tail, layer_outputs, dyn, fixed, internal)
            # a layer inside the decode (YOLOv8's distribution projection) keeps its float weights
            weighted = [w for w in weighted if info.nodes[w.node].output[0] not in float_tail]

    points: List[str] = []
    seen: Set[str] = set()
    ids = _id_tensors(info)

    # what the conditioning branch hands to the NPU: the tensors a node outside it reads
    handed = {t for t in condition if any(info.nodes[c].output[0] not in condition for c in info.consumers.get(t, []))}

    def add(t: str) -> None:
        if t in condition and t not in handed:
            return
        if t not in seen and info.is_float(t) and t in dyn and t not in ids:
            seen.add(t)
            points.append(t)

    prefix_nodes = {i for i, n in enumerate(info.nodes)
                    if n.op_type in PREFIX_OPS and all(o in prefix for o in n.output if o)}
    for i, node in enumerate(info.nodes):
        if i in prefix_nodes:
            continue
        for t in node.input:  # prefix boundary: the (normalized) input of the first layer
            if t in prefix:
                add(t)
        for t in node.output:
            if t and t not in internal and t not in float_tail:
                add(t)

    uf = _UnionFind()
    for t in points:
        uf.find(t)
    derived: Set[str] = set()
    for i, node in enumerate(info.nodes):
        if node.op_type in SAME_SCALE and node.input and node.input[0] in seen:
            overshoots = node.op_type in ("Resize", "Upsample") and info.attr(i, "mode", b"nearest") == b"cubic"
            for o in node.output:
                if o in seen:
                    uf.union(node.input[0], o)
                    if not overshoots:
                        derived.add(o)
        elif node.op_type == "Concat" and node.output[0] in seen:
            acts = [t for t in node.input if t and not info.is_const(t)]
            apart = [t for t in acts if (node.output[0], t) in detached]
            for t in acts:
                if t in seen and t not in apart:
                    uf.union(node.output[0], t)
            if acts and all(t in seen for t in acts) and not apart:
                derived.add(node.output[0])
    ids: Dict[str, int] = {}
    group_of: Dict[str, int] = {}
    groups: Dict[int, List[str]] = {}
    for t in points:
        gid = ids.setdefault(uf.find(t), len(ids))
        group_of[t] = gid
        groups.setdefault(gid, []).append(t)
    # rknn-toolkit2's simulator puts every standalone Sigmoid's output on the [0, 1] grid (1/255 steps) whatever range
    # its cfg gives (its own cfg says [0, 0.5] for layout_cdla's score maps, whose dumped values go to 144 / 255; ours
    # were [0, 0.37] and a step apart on 28-74% of the values, `vendor-export --layers`)
    # TFLite's int8 LOGISTIC writes a fixed grid too (1/256, zero point -128): a build for TFLite takes that one, so
    # its LOGISTIC is exactly our Sigmoid and stays int8 (Teflon offloads it)
    grid = {True: (0.0, 1.0), ALL_PRE_ACTIVATIONS: (0.0, 255.0 / 256.0)}.get(requantized_pre_activations)
    unit = {t: grid for t in seen if grid is not None and t in info.producer and
            info.nodes[info.producer[t]].op_type == "Sigmoid"}
    return Plan(points, group_of, groups, weighted, internal, prefix, float_tail, fused, split_concats, derived,
                {t: a for t, a in pre_activations.items() if t in seen}, frozenset(detached), unit,
                {t: info.nodes[info.producer[t]].input[0] for t in sorted(host)}, frozenset(host),
                frozenset(condition))
