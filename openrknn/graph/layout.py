"""Channel-last (NHWC) model inputs: which layout each image input has, and folding the layout Transposes away.

Keras / TensorFlow exports (tf2onnx), TFLite conversions and PyTorch NHWC wrappers take [N, H, W, C] inputs and wrap
their convolutions in Transpose(0,3,1,2) / Transpose(0,2,3,1). The deployed model is fed NHWC like every other
model, its mean/std/reorder apply per channel (C = the last dim), and the NPU should see NCHW-native convolutions: the
Transposes between them are pushed through the element-wise ops and cancelled (onnxruntime's transpose optimizer,
which does exactly this), so only the ones the graph cannot do without are left.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import onnx
from onnx import helper

log = logging.getLogger("openrknn.graph")

LAYOUTS = ("nchw", "nhwc")
TO_NCHW = [0, 3, 1, 2]
TO_NHWC = [0, 2, 3, 1]
_LAYOUT_PERMS = (TO_NCHW, TO_NHWC)
_IMAGE_CHANNELS = (1, 3, 4)  # gray, RGB/BGR, RGBA: what an image input's channel dim holds


@dataclass(frozen=True)
class InputLayout:
    layout: str  # "nchw" | "nhwc"
    channels: int
    reason: str  # why: said in the log and in every mismatch message

    def describe(self, name: str, shape: Sequence[int]) -> str:
        return (f"input '{name}' {list(shape)} is read as {self.layout.upper()} (C={self.channels}) because "
                f"{self.reason}")


def _dims(value_info) -> List[int]:
    return [d.dim_value if d.HasField("dim_value") else -1 for d in value_info.type.tensor_type.shape.dim]


def _perm(node: onnx.NodeProto) -> Optional[List[int]]:
    for a in node.attribute:
        if a.name == "perm":
            return list(helper.get_attribute_value(a))
    return None


def consumers(graph: onnx.GraphProto, name: str) -> List[onnx.NodeProto]:
    return [n for n in graph.node if name in n.input]


def first_consumers_are_to_nchw(graph: onnx.GraphProto, name: str) -> bool:
    """Every reader of ``name`` is a Transpose(0,3,1,2): the model itself says its input is channel-last."""
    users = consumers(graph, name)
    return bool(users) and all(n.op_type == "Transpose" and _perm(n) == TO_NCHW for n in users)


def detect_layout(graph: onnx.GraphProto, inp, n_values: Optional[int] = None,
                  explicit: Optional[str] = None) -> InputLayout:
    """The layout of the 4-D image input ``inp``.

    explicit: config(input_layout=...) for this input ('nchw' | 'nhwc'; None or 'auto' = detect).
    n_values: how many mean/std (or reorder) values the config gives for it (None or 1 = says nothing).
    Evidence, strongest first: the config; every first consumer a Transpose(0,3,1,2); the number of mean/std values
    matching the last dim and not dim 1; the shape alone (an image's 1/3/4 channels last, not in dim 1).
    """
    n, d1, d2, d3 = _dims(inp)
    if explicit in LAYOUTS:
        c = d1 if explicit == "nchw" else d3
        return InputLayout(explicit, c, f"config(input_layout='{explicit}') says so")
    if first_consumers_are_to_nchw(graph, inp.name):
        return InputLayout("nhwc", d3, "its first consumer is Transpose(perm=[0, 3, 1, 2]), which turns NHWC into "
                           "NCHW")
    if n_values is not None and n_values > 1:
        if d1 == n_values:
            return InputLayout("nchw", d1, f"dim 1 ({d1}) matches the {n_values} mean/std values given")
        if d3 == n_values:
            return InputLayout("nhwc", d3, f"the last dim ({d3}) matches the {n_values} mean/std values given and "
                               f"dim 1 ({d1}) does not")
    if d3 in _IMAGE_CHANNELS and d1 not in _IMAGE_CHANNELS:
        return InputLayout("nhwc", d3, f"the last dim ({d3}) looks like image channels and dim 1 ({d1}) does not")
    return InputLayout("nchw", d1, f"dim 1 ({d1}) is taken as channels (the NCHW default)")


def count_layout_transposes(model: onnx.ModelProto) -> int:
    return sum(1 for n in model.graph.node if n.op_type == "Transpose")


def has_layout_transposes(model: onnx.ModelProto) -> bool:
    return any(n.op_type == "Transpose" and _perm(n) in _LAYOUT_PERMS for n in model.graph.node)


def _sub_const_to_add(model: onnx.ModelProto) -> None:
    """Sub(x, constant) -> Add(x, -constant): a BatchNorm written as Sub/Mul/Add then folds into the conv before it
    (onnxruntime fuses Conv+Add and Conv+Mul, not Conv+Sub)."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    readers: dict = {}
    for n in model.graph.node:
        for x in n.input:
            readers[x] = readers.get(x, 0) + 1
    for n in model.graph.node:
        if n.op_type == "Sub" and len(n.input) == 2 and n.input[1] in inits and readers.get(n.input[1]) == 1:
            t = inits[n.input[1]]
            neg = numpy_helper.from_array(-numpy_helper.to_array(t), t.name)
            t.CopyFrom(neg)
            n.op_type = "Add"


_ANCHOR = "openrknn_layout_to_nchw"  # the first Transpose of an input pair: never pushed, never cancelled by the pass


def _with_input_pairs(model: onnx.ModelProto, nhwc_inputs: Sequence[str]) -> onnx.ModelProto:
    """A Transpose(0,3,1,2) -> Transpose(0,2,3,1) pair after each channel-last input whose readers are not already
    Transposes: push_transposes moves the second one down through Pad/Add/Mul/... to cancel it against the body's
    Transpose before the first conv, leaving the input's NHWC->NCHW step first."""
    from .names import rename_uses

    out = onnx.ModelProto()
    out.CopyFrom(model)
    pairs = []
    for name in nhwc_inputs:
        if first_consumers_are_to_nchw(out.graph, name):
            continue
        a, b = f"{name}/openrknn_layout_nchw", f"{name}/openrknn_layout_nhwc"
        rename_uses(out.graph, name, b)
        pairs += [helper.make_node("Transpose", [name], [a], perm=TO_NCHW, name=f"{name}/{_ANCHOR}"),
                  helper.make_node("Transpose", [a], [b], perm=TO_NHWC, name=f"{name}/openrknn_layout_to_nhwc")]
    nodes = pairs + list(out.graph.node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


# Ops that commute with any Transpose: f(T(x)) == T(f(x)).
_UNARY = {"Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip", "Cast", "HardSigmoid", "HardSwish", "Elu",
          "Selu", "Softplus", "Neg", "Abs", "Exp", "Log", "Sqrt", "Reciprocal", "Floor", "Ceil", "Round", "Erf",
          "Identity", "Not", "Sign", "Mish", "Celu", "Gelu"}
_BINARY = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Equal", "Greater", "Less", "PRelu"}
_REDUCE_AXES_ATTR = {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2", "ReduceL1",
                     "ReduceLogSumExp", "ReduceSumSquare"}  # axes an attribute at opset 17 (ReduceSum: an input)


def _set_perm(node: onnx.NodeProto, perm: Sequence[int]) -> None:
    for a in node.attribute:
        if a.name == "perm":
            del a.ints[:]
            a.ints.extend(int(p) for p in perm)


def _attr_value(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def push_transposes(model: onnx.ModelProto, max_rounds: int = 10000) -> onnx.ModelProto:
    """Move each Transpose down past element-wise ops (a constant operand is permuted to match), Pad (its pads
    permuted) and reductions (their axes remapped; keepdims=0 may absorb it), and cancel it against an inverse
    Transpose. Exact: only reorders data movement. onnxruntime's optimizer moves a Transpose only where it meets an
    inverse; this also clears the ones that end in a reduction (a channel-last classifier's global pool)."""
    import numpy as np
    from onnx import numpy_helper

    from .names import rename_uses

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    serial = [0]

    def fresh(base: str) -> str:
        serial[0] += 1
        return f"{base}/openrknn_pushed_{serial[0]}"

    def readers(name: str) -> List[onnx.NodeProto]:
        return [n for n in graph.node if name in n.input]

    def producer(name: str) -> Optional[onnx.NodeProto]:
        return next((n for n in graph.node if name in n.output), None)

    def const_for(name: str, perm: Sequence[int]) -> Optional[str]:
        """The constant ``name`` made to broadcast against the un-transposed tensor."""
        if name not in inits:
            return None
        k = numpy_helper.to_array(inits[name])
        rank = len(perm)
        if k.ndim > rank:
            return None
        k = k.reshape((1,) * (rank - k.ndim) + k.shape)
        inv = list(np.argsort(perm))
        new = fresh(name)
        t = numpy_helper.from_array(np.ascontiguousarray(np.transpose(k, inv)), new)
        graph.initializer.append(t)
        inits[new] = t
        return new

    def move_after(t: onnx.NodeProto, c: onnx.NodeProto, c_inputs: List[str]) -> None:
        """t (reading x, writing y) and c (reading y...) become c (reading x...) writing y' and t writing c's out."""
        c_out = c.output[0]
        mid = fresh(c_out)
        del c.input[:]
        c.input.extend(c_inputs)
        c.output[0] = mid
        t.input[0] = mid
        t.output[0] = c_out
        nodes = list(graph.node)
        nodes.remove(t)
        nodes.insert(nodes.index(c) + 1, t)
        del graph.node[:]
        graph.node.extend(nodes)

    for _ in range(max_rounds):
        changed = False
        for t in list(graph.node):
            if t.op_type != "Transpose" or t.name.endswith(_ANCHOR) or t.output[0] in outputs:
                continue
            perm = _perm(t)
            users = readers(t.output[0])
            if perm is None or len(users) != 1:
                continue
            c = users[0]
            x = t.input[0]
            if c.op_type == "Transpose" and not c.name.endswith(_ANCHOR):
                p2 = _perm(c)
                if p2 is None:
                    continue
                composed = [perm[i] for i in p2]
                if composed == sorted(composed):
                    if c.output[0] in outputs:
                        continue
                    rename_uses(graph, c.output[0], x)
                    graph.node.remove(c)
                    graph.node.remove(t)
                else:
                    _set_perm(c, composed)
                    c.input[0] = x
                    graph.node.remove(t)
                changed = True
                break
            if c.op_type in _UNARY and len(c.input) >= 1 and c.input[0] == t.output[0] and all(
                    i in inits or not i for i in c.input[1:]):
                move_after(t, c, [x] + list(c.input[1:]))
                changed = True
                break
            if c.op_type in _BINARY and len(c.input) == 2:
                other_idx = 1 if c.input[0] == t.output[0] else 0
                other = c.input[other_idx]
                if other == t.output[0]:
                    continue
                new_other = const_for(other, perm)
                if new_other is None:
                    p = producer(other)
                    if not (p is not None and p.op_type == "Transpose" and _perm(p) == perm
                            and len(readers(other)) == 1 and not p.name.endswith(_ANCHOR)):
                        continue
                    new_other = p.input[0]
                    graph.node.remove(p)
                ins = [x, new_other] if other_idx == 1 else [new_other, x]
                move_after(t, c, ins)
                changed = True
                break
            if c.op_type == "Pad" and len(c.input) >= 2 and c.input[1] in inits and _attr_value(c, "axes") is None \
                    and (len(c.input) < 4 or not c.input[3]):
                pads = numpy_helper.to_array(inits[c.input[1]]).astype(np.int64)
                r = len(perm)
                if pads.size != 2 * r:
                    continue
                new = np.zeros_like(pads)
                for k in range(r):
                    new[perm[k]], new[r + perm[k]] = pads[k], pads[r + k]
                name = fresh(c.input[1])
                graph.initializer.append(numpy_helper.from_array(new, name))
                inits[name] = graph.initializer[-1]
                move_after(t, c, [x, name] + list(c.input[2:]))
                changed = True
                break
            if c.op_type in _REDUCE_AXES_ATTR and _attr_value(c, "axes") is not None:
                axes = [a % len(perm) for a in _attr_value(c, "axes")]
                keep = _attr_value(c, "keepdims", 1)
                new_axes = sorted(perm[a] for a in axes)
                for a in c.attribute:
                    if a.name == "axes":
                        del a.ints[:]
                        a.ints.extend(new_axes)
                if keep:
                    move_after(t, c, [x])
                else:
                    rest = [perm[k] for k in range(len(perm)) if k not in axes]  # input axes, in output order
                    order = list(np.argsort(np.argsort(rest)))  # the remaining axes' ranks: their new perm
                    c.input[0] = x
                    if order == sorted(order):
                        rename_uses(graph, t.output[0], x)
                        graph.node.remove(t)
                    else:
                        _set_perm(t, order)
                        move_after(t, c, [x])
                changed = True
                break
        if not changed:
            break
    return model


def ort_basic(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxruntime's basic-level graph optimizations (constant folding, exact fusions, its transpose optimizer),
    written back as ONNX."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.intra_op_num_threads = 1
    with tempfile.TemporaryDirectory(prefix="openrknn_layout_") as tmp:
        path = os.path.join(tmp, "folded.onnx")
        opts.optimized_model_filepath = path
        ort.InferenceSession(model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
        out = onnx.load(path)
    used = {n.domain for n in out.graph.node}
    keep = [o for o in out.opset_import if o.domain in ("", "ai.onnx") or o.domain in used]
    del out.opset_import[:]
    out.opset_import.extend(keep)
    del out.graph.value_info[:]
    out.ir_version = model.ir_version
    return out


def fold_transposes(model: onnx.ModelProto, nhwc_inputs: Sequence[str] = ()) -> Tuple[onnx.ModelProto, int, int]:
    """Cancel the layout Transposes: onnxruntime's basic-level optimizations (its transpose optimizer pushes them
    through element-wise ops to meet an inverse; the rest of that level is constant folding and exact Conv+Add/Mul
    fusions), push_transposes for the ones left, then that level once more for the fusions they allow. With
    channel-last inputs the graph is also tried with a Transpose pair after them (_with_input_pairs); the variant with
    fewest Transposes is kept. Returns (model, Transposes before, after); the input model when nothing improves or
    onnxruntime cannot handle the graph (logged)."""
    before = count_layout_transposes(model)
    if not has_layout_transposes(model) and not nhwc_inputs:
        return model, before, before
    base = onnx.ModelProto()
    base.CopyFrom(model)
    _sub_const_to_add(base)
    best = None
    for variant in ([base, _with_input_pairs(base, nhwc_inputs)] if nhwc_inputs else [base]):
        try:
            out = ort_basic(push_transposes(ort_basic(variant)))
        except Exception as e:  # keep the model as it is: correct, with its Transposes
            log.warning("layout: could not fold the Transposes (%s: %s)", type(e).__name__, str(e)[:200])
            continue
        if best is None or count_layout_transposes(out) < count_layout_transposes(best):
            best = out
    if best is None or count_layout_transposes(best) >= before:
        return model, before, before
    return best, before, count_layout_transposes(best)
