"""Ops newer than the opset the graph is kept at, written as the older ops that compute them.

onnx's version converter steps a model down one opset at a time and refuses every model holding an op with no
earlier form: GELU (opset 20), Mish (18), Col2Im (18), GroupNormalization (18; per channel since 21),
RMSNormalization and Attention (23), a Resize that filters as it shrinks (antialias, 18). torch.onnx.export's
default exporter (dynamo, torch 2.9 and later) cannot write below opset 18 and writes these ops wherever a model
has them, so a transformer exported the default way did not load. Each is replaced here by what an older exporter
writes for it, the spellings that graph/activations.py, graph/norms.py and graph/attention.py recognise (so the
quantizer still sees the one op the NPU runs), in the model's own opset (a reduction's axes as an input), which
the converter then steps down with the rest. Every replacement computes the same function in float; a form with
no such spelling here is refused naming its node.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Sequence, Set

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import ModelLoadError
from ..graph.constants import constants
from ..graph.names import graph_and_bodies, unique_name


class _Writer:
    """Nodes and constants written in place of one node: fresh names, the node's own name as their stem."""

    def __init__(self, graph: onnx.GraphProto, node: onnx.NodeProto, taken: Set[str]):
        self.g, self.taken, self.nodes = graph, taken, []
        self.stem = node.name or node.output[0]

    def const(self, what: str, value) -> str:
        name = unique_name(f"{self.stem}_{what}", self.taken)
        self.g.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], out: Optional[str] = None, **attrs) -> str:
        out = out or unique_name(f"{self.stem}_{op_type.lower()}", self.taken)
        name = unique_name(f"{self.stem}/{op_type}", self.taken)
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=name, **attrs))
        return out


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            value = helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _refuse(node: onnx.NodeProto, what: str, advice: str) -> ModelLoadError:
    return ModelLoadError(f"{node.op_type} node '{node.name}' {what}; {advice}")


EXPORT_ADVICE = ("re-export the model at opset 17 (from PyTorch: torch.onnx.export(..., dynamo=False, "
                 "opset_version=17)), or cut it before this node with load_onnx(..., outputs=[...]) and run the rest "
                 "on the CPU")


def _gelu(w: _Writer, node: onnx.NodeProto, shape) -> None:
    x, y = node.input[0], node.output[0]
    if _attr(node, "approximate", "none") == "tanh":  # 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))
        cube = w.op("Mul", [w.op("Mul", [x, x]), x])
        inner = w.op("Add", [x, w.op("Mul", [cube, w.const("c", np.float32(0.044715))])])
        t = w.op("Tanh", [w.op("Mul", [inner, w.const("k", np.float32(math.sqrt(2.0 / math.pi)))])])
        half_x = w.op("Mul", [x, w.const("half", np.float32(0.5))])
        w.op("Mul", [half_x, w.op("Add", [t, w.const("one", np.float32(1.0))])], y)
        return
    e = w.op("Erf", [w.op("Div", [x, w.const("sqrt2", np.float32(math.sqrt(2.0)))])])  # 0.5 x (1 + erf(x / sqrt 2))
    w.op("Mul", [w.op("Mul", [x, w.op("Add", [e, w.const("one", np.float32(1.0))])]),
                 w.const("half", np.float32(0.5))], y)


def _mish(w: _Writer, node: onnx.NodeProto, shape) -> None:
    x = node.input[0]
    w.op("Mul", [x, w.op("Tanh", [w.op("Softplus", [x])])], node.output[0])


def _rank(node: onnx.NodeProto, shape, tensor: str, what: str) -> int:
    s = shape(tensor)
    if s is None:
        raise _refuse(node, f"reads '{tensor}', whose rank is not known here ({what})",
                      "give load_onnx an input_size_list so every shape is known")
    return len(s)


def _group_norm(w: _Writer, node: onnx.NodeProto, shape, opset: int) -> None:
    """Opset 18 scales each group, opset 21 each channel; both normalise each group of channels over the group and
    the spatial axes: an InstanceNormalization of the input seen as [N, groups, -1] (exact: the same mean and
    variance), then the affine."""
    x, scale, bias = node.input[0], node.input[1], node.input[2]
    groups, eps = int(_attr(node, "num_groups", 0)), float(_attr(node, "epsilon", 1e-5))
    grouped = w.op("Reshape", [x, w.const("grouped", np.array([0, groups, -1], np.int64))])
    if opset < 21:  # the scale and bias are per group: the InstanceNormalization's own
        normed = w.op("InstanceNormalization", [grouped, scale, bias], epsilon=eps)
        w.op("Reshape", [normed, w.op("Shape", [x])], node.output[0])
        return
    rank = _rank(node, shape, x, "the per-channel scale is broadcast over the spatial axes")
    normed = w.op("InstanceNormalization", [grouped, w.const("ones", np.ones(groups, np.float32)),
                                            w.const("zeros", np.zeros(groups, np.float32))], epsilon=eps)
    back = w.op("Reshape", [normed, w.op("Shape", [x])])
    per_channel = w.const("channel_shape", np.array([-1] + [1] * (rank - 2), np.int64))
    scaled = w.op("Mul", [back, w.op("Reshape", [scale, per_channel])])
    w.op("Add", [scaled, w.op("Reshape", [bias, per_channel])], node.output[0])


def _rms_norm(w: _Writer, node: onnx.NodeProto, shape) -> None:
    """x / sqrt(mean(x^2 over the axes from 'axis' on) + epsilon) * scale."""
    x, scale = node.input[0], node.input[1]
    axis, eps = int(_attr(node, "axis", -1)), float(_attr(node, "epsilon", 1e-5))
    if axis == -1:
        axes = [-1]
    else:
        rank = _rank(node, shape, x, "it normalises over the axes from 'axis' to the last")
        axes = list(range(axis % rank, rank))
    sq = w.op("Pow", [x, w.const("two", np.float32(2.0))])
    mean = w.op("ReduceMean", [sq, w.const("axes", np.array(axes, np.int64))], keepdims=1)
    root = w.op("Sqrt", [w.op("Add", [mean, w.const("epsilon", np.float32(eps))])])
    normed = w.op("Mul", [x, w.op("Reciprocal", [root])])
    w.op("Mul", [normed, scale], node.output[0])


def _attention(w: _Writer, node: onnx.NodeProto, shape) -> None:
    """softmax(q k^T * scale [+ mask] [causal]) v per head, the chain graph/attention.py finds. Inputs [B, heads,
    S, D], or [B, S, heads * D] with q_num_heads / kv_num_heads; without a cache (past key / value) or its extra
    outputs. Fewer key / value heads than query heads (grouped-query attention): each serves that many
    consecutive query heads, repeated to them."""
    ins = list(node.input) + [""] * (6 - len(node.input))
    q, k, v, mask = ins[:4]
    if ins[4] or ins[5] or any(o for o in node.output[1:]):
        raise _refuse(node, "uses a key / value cache (past_key, past_value, present outputs)", EXPORT_ADVICE)
    if _attr(node, "softcap", 0.0):
        raise _refuse(node, "caps its scores (softcap)", EXPORT_ADVICE)
    qs, ks, vs = shape(q), shape(k), shape(v)
    if qs is None or ks is None or vs is None:
        raise _refuse(node, "reads tensors whose shapes are not known here",
                      "give load_onnx an input_size_list so every shape is known")
    heads_q, heads_kv = _attr(node, "q_num_heads", 0), _attr(node, "kv_num_heads", 0)
    three_d = len(qs) == 3
    if three_d:
        if not heads_q or not heads_kv:
            raise _refuse(node, "has 3-D inputs without q_num_heads / kv_num_heads", EXPORT_ADVICE)
        if any(not isinstance(d, int) for d in (qs[2], ks[2], vs[2])):
            raise _refuse(node, "has a hidden size that is not known here",
                          "give load_onnx an input_size_list so every shape is known")
        depth = qs[2] // heads_q

        def heads(t: str, n: int, size: int) -> str:  # [B, S, n * d] -> [B, n, S, d]
            split = w.op("Reshape", [t, w.const("heads", np.array([0, 0, n, size // n], np.int64))])
            return w.op("Transpose", [split], perm=[0, 2, 1, 3])

        q, k, v = heads(q, heads_q, qs[2]), heads(k, heads_kv, ks[2]), heads(v, heads_kv, vs[2])
        q_heads, kv_heads = heads_q, heads_kv
    elif len(qs) == 4 and len(ks) == 4 and len(vs) == 4:
        depth, q_heads, kv_heads = qs[3], qs[1], ks[1]
    else:
        raise _refuse(node, f"has inputs of ranks {len(qs)}, {len(ks)}, {len(vs)}", EXPORT_ADVICE)
    if q_heads != kv_heads:
        if not all(isinstance(d, int) and d > 0 for d in (q_heads, kv_heads)) or q_heads % kv_heads:
            raise _refuse(node, f"shares {kv_heads} key / value heads among {q_heads} query heads",
                          "give load_onnx an input_size_list so every shape is known")
        k, v = (_repeat_heads(w, t, q_heads // kv_heads, q_heads) for t in (k, v))
    scale = _attr(node, "scale", None)
    if scale is None:
        if not isinstance(depth, int) or depth <= 0:
            raise _refuse(node, "has a head size that is not known here (its default scale is 1 / sqrt of it)",
                          "give load_onnx an input_size_list so every shape is known")
        scale = 1.0 / math.sqrt(depth)
    scores = w.op("MatMul", [q, w.op("Transpose", [k], perm=[0, 1, 3, 2])])
    scores = w.op("Mul", [scores, w.const("scale", np.float32(scale))])
    if mask:
        mask_type = shape.dtype(mask)
        if mask_type == onnx.TensorProto.BOOL:  # True: attend
            scores = w.op("Where", [mask, scores, w.const("masked", np.float32(-np.inf))])
        else:
            scores = w.op("Add", [scores, mask])
    if _attr(node, "is_causal", 0):
        sq = qs[1] if three_d else qs[2]
        sk = ks[1] if three_d else ks[2]
        if not isinstance(sq, int) or not isinstance(sk, int):
            raise _refuse(node, "is causal over sequence lengths not known here",
                          "give load_onnx an input_size_list so every shape is known")
        causal = np.where(np.tril(np.ones((sq, sk), bool)), 0.0, -np.inf).astype(np.float32)
        scores = w.op("Add", [scores, w.const("causal", causal)])
    probs = w.op("Softmax", [scores], axis=-1)
    if not three_d:
        w.op("MatMul", [probs, v], node.output[0])
        return
    out = w.op("Transpose", [w.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
    w.op("Reshape", [out, w.const("merged", np.array([0, 0, -1], np.int64))], node.output[0])


def _repeat_heads(w: _Writer, t: str, times: int, heads: int) -> str:
    """[B, H, S, D] -> [B, heads = H * times, S, D], each head ``times`` times in a row."""
    wide = w.op("Unsqueeze", [t, w.const("head_axis", np.array([2], np.int64))])  # [B, H, 1, S, D]
    dims = w.op("Shape", [wide])

    def part(start: int, end: int) -> str:
        return w.op("Slice", [dims, w.const("start", np.array([start], np.int64)),
                              w.const("end", np.array([end], np.int64))])

    batch_heads, rest = part(0, 2), part(3, 5)
    repeated = w.op("Expand", [wide, w.op("Concat", [batch_heads, w.const("times", np.array([times], np.int64)),
                                                     rest], axis=0)])
    return w.op("Reshape", [repeated, w.op("Concat", [part(0, 1), w.const("heads", np.array([heads], np.int64)),
                                                      rest], axis=0)])


def _col2im(w: _Writer, node: onnx.NodeProto, shape) -> None:
    """Sums each column's block back into the image: a ConvTranspose, one group per channel, whose kernels are
    one-hot (column entry (c, i, j) adds to tap (i, j) of channel c)."""
    x, image, block = node.input[:3]
    consts = shape.const
    if consts(image) is None or consts(block) is None:
        raise _refuse(node, "takes its image or block shape at run time", EXPORT_ADVICE)
    hw, kk = [int(v) for v in consts(image)], [int(v) for v in consts(block)]
    xs = shape(x)
    if len(hw) != 2 or xs is None or len(xs) != 3 or not isinstance(xs[1], int):
        raise _refuse(node, "is not a 2-D fold of a known channel count", EXPORT_ADVICE)
    dil = list(_attr(node, "dilations", [1, 1]))
    pads = list(_attr(node, "pads", [0, 0, 0, 0]))
    strides = list(_attr(node, "strides", [1, 1]))
    blocks = [(hw[a] + pads[a] + pads[a + 2] - dil[a] * (kk[a] - 1) - 1) // strides[a] + 1 for a in range(2)]
    taps = kk[0] * kk[1]
    channels = xs[1] // taps
    weight = np.zeros((channels * taps, 1, kk[0], kk[1]), np.float32)
    for c in range(channels):
        for t in range(taps):
            weight[c * taps + t, 0, t // kk[1], t % kk[1]] = 1.0
    # rows / columns past the last block's reach get nothing: ConvTranspose's output_padding adds them as zeros
    reach = [(blocks[a] - 1) * strides[a] - pads[a] - pads[a + 2] + dil[a] * (kk[a] - 1) + 1 for a in range(2)]
    grid = w.op("Reshape", [x, w.const("blocks", np.array([0, channels * taps] + blocks, np.int64))])
    w.op("ConvTranspose", [grid, w.const("taps", weight)], node.output[0], group=channels, strides=strides,
         dilations=dil, pads=pads, kernel_shape=kk, output_padding=[hw[a] - reach[a] for a in range(2)])


def _antialiased_resize(w: _Writer, node: onnx.NodeProto, shape, opset: int) -> bool:
    """A linear or cubic Resize that filters before it shrinks (antialias=1) is, per resized axis, one fixed matrix
    of weights: taken from onnxruntime by resizing that axis of a stack of unit vectors with the node's own
    settings, then applied as a MatMul (the axis moved last and back). False: not antialiased, left as it is."""
    if not _attr(node, "antialias", 0):
        return False
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name != "antialias"}
    ins = list(node.input) + [""] * (4 - len(node.input))
    advice = "interpolate without antialias, or " + EXPORT_ADVICE.split(", or ", 1)[1]
    if _attr(node, "mode", "nearest") == "nearest":
        raise _refuse(node, "asks a nearest Resize to filter (antialias=1), which onnxruntime refuses too", advice)
    if "axes" in attrs or _attr(node, "coordinate_transformation_mode", "half_pixel") == "tf_crop_and_resize":
        raise _refuse(node, "filters before it shrinks (antialias=1) over chosen axes or a crop", advice)
    xs = shape(ins[0])
    scales = shape.const(ins[2]) if ins[2] else None
    sizes = shape.const(ins[3]) if ins[3] else None
    if xs is None or not all(isinstance(d, int) and d > 0 for d in xs) or (scales is None and sizes is None):
        raise _refuse(node, "filters before it shrinks (antialias=1) at sizes not known here",
                      "give load_onnx an input_size_list so every shape is known")
    rank = len(xs)
    ys = [int(v) for v in sizes] if sizes is not None and len(sizes) else \
        [int(np.floor(d * float(s))) for d, s in zip(xs, scales)]
    y = node.output[0]
    moved = [a for a in range(rank) if ys[a] != xs[a] or (scales is not None and len(scales) and scales[a] != 1)]
    if not moved or moved[0] == 0:
        raise _refuse(node, "filters before it resizes its first axis", advice)
    x = ins[0]
    for k, a in enumerate(moved):
        out = y if k == len(moved) - 1 else None
        weights = w.const(f"axis{a}_weights", _resize_matrix(
            attrs, xs[a], ys[a], rank, a, None if sizes is not None and len(sizes) else float(scales[a]), opset).T)
        if a == rank - 1:
            x = w.op("MatMul", [x, weights], out)
        else:
            perm = list(range(rank))
            perm[a], perm[-1] = perm[-1], perm[a]
            x = w.op("Transpose", [w.op("MatMul", [w.op("Transpose", [x], perm=perm), weights])], out, perm=perm)
    return True


def _resize_matrix(attrs: dict, n: int, m: int, rank: int, axis: int, scale: Optional[float], opset: int
                   ) -> np.ndarray:
    """[m, n]: what the node's Resize makes of each of the n unit vectors along ``axis`` (to m samples)."""
    import onnxruntime as ort

    shape_in = [n] + [1] * (rank - 1)
    shape_in[axis] = n
    unit = np.zeros(shape_in, np.float32)
    unit[(np.arange(n),) + (0,) * (axis - 1) + (np.arange(n),)] = 1.0
    inputs = [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shape_in)]
    consts = []
    if scale is None:
        sizes = list(shape_in)
        sizes[axis] = m
        consts.append(numpy_helper.from_array(np.array(sizes, np.int64), "sizes"))
        feeds = ["x", "", "", "sizes"]
    else:
        scales = np.ones(rank, np.float32)
        scales[axis] = scale
        consts.append(numpy_helper.from_array(scales, "scales"))
        feeds = ["x", "", "scales"]
    graph = helper.make_graph([helper.make_node("Resize", feeds, ["y"], antialias=1, **attrs)], "axis", inputs,
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    out = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": unit})[0]
    return np.moveaxis(out, axis, 1).reshape(n, m).T.astype(np.float32)  # row j: what output j takes


# integer types opset 17's QuantizeLinear / DequantizeLinear lack -> the 8-bit type holding the same integers
_FOUR_BIT = {onnx.TensorProto.INT4: (onnx.TensorProto.INT8, np.int8),
             onnx.TensorProto.UINT4: (onnx.TensorProto.UINT8, np.uint8)}
_QDQ_17 = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT32}


def quantized_weights_in_older_types(model: onnx.ModelProto) -> Dict[str, int]:
    """Weights quantized in forms opset 21 added, in ones opset 17 has. A DequantizeLinear of 4-bit integers
    (onnxruntime's quantize_static(weight_type=QInt4)) reads the same integers as 8-bit ones, with the same scales
    and zero points: exact, and the integers are kept. One with block-wise scales (block_size) or another new type
    (float 8-bit) becomes the float weight it computes, which build() quantizes. A QuantizeLinear to such a type
    (activations on a 4-bit grid) has no older form: refused naming its node. Returns {what: how many}."""
    done: Dict[str, int] = {}
    for g in graph_and_bodies(model.graph):
        inits = {t.name: t for t in g.initializer}
        keep: List[onnx.NodeProto] = []
        for node in g.node:
            if node.domain not in ("", "ai.onnx") or node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
                keep.append(node)
                continue
            ins = list(node.input) + [""] * (3 - len(node.input))
            types = {inits[x].data_type for x in (ins[0], ins[2]) if x in inits} if node.op_type == \
                "DequantizeLinear" else {inits[ins[2]].data_type} if ins[2] in inits else set()
            blocked = bool(_attr(node, "block_size", 0))
            if not blocked and types <= _QDQ_17 | {onnx.TensorProto.FLOAT}:
                keep.append(node)
                continue
            if node.op_type == "QuantizeLinear" or ins[0] not in inits or (ins[1] and ins[1] not in inits):
                raise _refuse(node, "quantizes to a type opset 17 has no form for (4-bit, 8-bit float) or in "
                              "blocks", "quantize the model to int8 / uint8 instead (onnxruntime's quantize_static "
                              "with QuantType.QInt8 / QUInt8), or give the float model, which build() quantizes")
            if not blocked and types <= set(_FOUR_BIT) | _QDQ_17:
                for x in (ins[0], ins[2]):
                    if x in inits and inits[x].data_type in _FOUR_BIT:
                        wide, dtype = _FOUR_BIT[inits[x].data_type]
                        inits[x].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(inits[x]).astype(dtype), x))
                keep.append(node)
                done["4-bit weights as 8-bit integers"] = done.get("4-bit weights as 8-bit integers", 0) + 1
                continue
            # the float weight it computes, by onnx's own reference implementation of the op
            from onnx.reference import ReferenceEvaluator

            mini = helper.make_model(helper.make_graph(
                [node], "dequantize", [], [helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT,
                                                                          None)],
                [inits[x] for x in ins if x]), opset_imports=[helper.make_opsetid("", 21)])
            value = ReferenceEvaluator(mini).run(None, {})[0]
            g.initializer.append(numpy_helper.from_array(np.asarray(value, np.float32), node.output[0]))
            done["blocked or float-8 weights as float"] = done.get("blocked or float-8 weights as float", 0) + 1
        del g.node[:]
        g.node.extend(keep)
    return done


class _Shapes:
    """Shapes, element types and constant values of the model's tensors, inferred once when first asked."""

    def __init__(self, model: onnx.ModelProto):
        self.model, self.shapes, self.types, self.values = model, None, {}, {}  # values: constants by name

    def _infer(self) -> None:
        try:
            inferred = onnx.shape_inference.infer_shapes(self.model, data_prop=True)
        except Exception:  # the node that needs a shape says so
            inferred = self.model
        self.shapes = {}
        for g in graph_and_bodies(inferred.graph):
            for vi in list(g.input) + list(g.value_info) + list(g.output):
                t = vi.type.tensor_type
                self.types[vi.name] = t.elem_type
                if t.HasField("shape"):
                    self.shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else d.dim_param or None
                                            for d in t.shape.dim]
            for init in g.initializer:
                self.shapes[init.name] = list(init.dims)
                self.types[init.name] = init.data_type
            self.values.update(constants(g))

    def __call__(self, name: str) -> Optional[List]:
        if self.shapes is None:
            self._infer()
        return self.shapes.get(name)

    def dtype(self, name: str) -> int:
        if self.shapes is None:
            self._infer()
        return self.types.get(name, onnx.TensorProto.FLOAT)

    def const(self, name: str) -> Optional[np.ndarray]:
        if self.shapes is None:
            self._infer()
        value = self.values.get(name)
        return None if value is None else np.asarray(value).ravel()


def spell_out(model: onnx.ModelProto, target: int) -> Dict[str, int]:
    """Replace, in place, every op of ``model``'s opset that has no form at opset ``target`` and has a spelling
    here (of Resize, the antialiased ones). Returns {op type: how many}."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    rules: Dict[str, Callable] = {}
    if opset >= 20 > target:
        rules["Gelu"] = _gelu
    if opset >= 18 > target:
        rules["Mish"] = _mish
        rules["Col2Im"] = _col2im
        rules["GroupNormalization"] = lambda w, n, s: _group_norm(w, n, s, opset)
        rules["Resize"] = lambda w, n, s: _antialiased_resize(w, n, s, opset)
    if opset >= 23 > target:
        rules["RMSNormalization"] = _rms_norm
        rules["Attention"] = _attention
    if not rules:
        return {}
    shape = _Shapes(model)
    taken: Set[str] = set()
    for g in graph_and_bodies(model.graph):
        taken |= {t.name for t in g.initializer} | {i.name for i in g.input} | {n.name for n in g.node}
        taken |= {o for n in g.node for o in n.output}
    done: Dict[str, int] = {}
    for g in graph_and_bodies(model.graph):
        nodes = list(g.node)
        if not any(n.domain in ("", "ai.onnx") and n.op_type in rules for n in nodes):
            continue
        out: List[onnx.NodeProto] = []
        for n in nodes:
            if n.domain not in ("", "ai.onnx") or n.op_type not in rules:
                out.append(n)
                continue
            w = _Writer(g, n, taken)
            if rules[n.op_type](w, n, shape) is False:  # not a form this rule is for
                out.append(n)
                continue
            out.extend(w.nodes)
            done[n.op_type] = done.get(n.op_type, 0) + 1
        del g.node[:]
        g.node.extend(out)
    return done
