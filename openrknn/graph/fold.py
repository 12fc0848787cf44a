"""Exact folding passes that leave fewer, fused ops for the NPU (and fewer quantization points for int8).

Exporters write a conv's batch norm or "learnable affine" as a separate Mul and Add after it, and activations as
several elementwise nodes (graph/activations.py). The NPU runs conv + bias + scale + activation as one op, and an
int8 build that quantizes every one of those tensors adds rounding noise at each. These passes rewrite the graph
so that the deployed function is unchanged and the ops are the ones the NPU fuses:
- fold_conv_affine: Conv / ConvTranspose followed by a constant per-channel (or scalar) Mul, Div, Add or Sub ->
  new weights and bias;
- fold_gemm_batchnorm / fold_gemm_affine: a BatchNormalization, or a constant per-column Mul, Div, Add or Sub, after
  a Gemm -> its weights and bias;
- normalize_concat_pieces: the pieces of channel Concats that BatchNormalizations read -> standardised where they are
  made, the BatchNorms rescaled (DenseNet); a Concat's one BatchNorm or constant scale and shift -> into its pieces
  (CSP blocks); a piece a conv makes takes that into its weights;
- fold_input_scale: a constant per-channel Mul or Div read only by convs -> their weights; an Add or Sub -> their
  biases where no conv pads (a padded border would see the shift where the original saw zeros);
- canonical_activations: spelled-out activations -> the ONNX op (HardSwish, HardSigmoid, Sigmoid + Mul for SiLU;
  Gelu and Mish where the opset has them);
- channel_sums_as_convs: a ReduceSum / ReduceMean over the channels of x times a per-channel constant (a
  grayscale conversion) -> a 1x1 Conv;
- sink_squeezes: Conv -> Squeeze -> bias Add / activation (how tf2onnx writes a Keras Conv1D: the 2-D conv's
  size-1 axis squeezed before its bias and activation) -> the Squeeze after them, so the conv folds its bias and
  fuses its activation; a Squeeze then undone by an Unsqueeze of the same axes goes;
- logit_of_sigmoid: a DETR decoder's inverse sigmoid of a sigmoid -> a Clip of the sigmoid's input;
- unit_stride_transposed_convs: a ConvTranspose with unit strides -> the Conv it equals.
Each returns how many rewrites it made; constants shared with other nodes are copied, never edited in place.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Set, Tuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .activations import find_regions
from .names import drop_unread, rename_uses, splice_nodes, subgraphs, unique_name, used_names

FLOAT = onnx.TensorProto.FLOAT


class _Index:
    """Producer / consumer / constant indexes of the main graph, rebuilt after each rewrite."""

    def __init__(self, model: onnx.ModelProto):
        g = model.graph
        self.g = g
        self.inits = {t.name: t for t in g.initializer}
        self.producer = {o: i for i, n in enumerate(g.node) for o in n.output}  # tensor -> index of its node
        self.consumers: Dict[str, List[int]] = {}
        for i, n in enumerate(g.node):
            for t in n.input:
                if t:
                    self.consumers.setdefault(t, []).append(i)
        inner: Set[str] = set()
        for n in g.node:
            for sub in subgraphs(n):
                inner |= used_names(sub)
        self.keep = {o.name for o in g.output} | inner  # must stay as they are: read outside this graph's nodes
        self.names = set(self.inits) | {o for n in g.node for o in n.output} | {i.name for i in g.input}
        self._cache: Dict[str, np.ndarray] = {}

    def const(self, name: str) -> Optional[np.ndarray]:
        t = self.inits.get(name)
        if t is None or t.data_type != FLOAT:
            return None
        if name not in self._cache:
            self._cache[name] = numpy_helper.to_array(t).astype(np.float32)
        return self._cache[name]

    def unique(self, base: str) -> str:
        return unique_name(base, self.names)

    def add_const(self, base: str, value: np.ndarray) -> str:
        name = self.unique(base)
        self.g.initializer.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _channel_vector(value: np.ndarray, rank: int, channels: int) -> Optional[np.ndarray]:
    """A constant that, broadcast against a [N, C, ...] tensor of ``rank``, varies only along C (or not at all):
    its per-channel values; None otherwise (or when it would broadcast the tensor to a bigger shape)."""
    if value.ndim > rank:  # broadcasting would raise the tensor's rank: not an affine map of it
        return None
    if value.size == 1:
        return np.full(channels, float(value.reshape(-1)[0]), np.float32)
    shape = (1,) * (rank - value.ndim) + tuple(value.shape)
    if rank < 2 or shape[1] != channels or any(d != 1 for k, d in enumerate(shape) if k != 1):
        return None
    return value.reshape(-1).astype(np.float32)


def _drop(g: onnx.GraphProto, index: int) -> None:
    del g.node[index]


def _fold_each(model: onnx.ModelProto, match, apply) -> int:
    """``apply(ix, hit)`` to the first hit ``match(ix, node)`` returns (None: no hit), then again on the changed
    graph, until none is left; how many were applied."""
    done = 0
    while True:
        ix = _Index(model)
        hit = next((h for node in model.graph.node if (h := match(ix, node)) is not None), None)
        if hit is None:
            return done
        apply(ix, hit)
        done += 1


def _sole_reader(ix: _Index, node: onnx.NodeProto) -> Optional[int]:
    """The index of the one node reading ``node``'s first output, when that output is not a graph output."""
    y = node.output[0]
    cons = ix.consumers.get(y, [])
    return cons[0] if y not in ix.keep and len(cons) == 1 else None


def _affine_reader(ix: _Index, node: onnx.NodeProto):
    """(index, node, constant) of the one Mul / Div / Add / Sub reading ``node``'s output with a constant as its
    other operand (``node``'s output first for Div and Sub); None otherwise."""
    ci = _sole_reader(ix, node)
    if ci is None:
        return None
    y, c = node.output[0], ix.g.node[ci]
    if c.op_type not in ("Mul", "Div", "Add", "Sub") or len(c.input) != 2 or c.domain not in ("", "ai.onnx"):
        return None
    if c.input[0] == c.input[1] or (c.op_type in ("Div", "Sub") and c.input[0] != y):
        return None
    val = ix.const(c.input[1] if c.input[0] == y else c.input[0])
    return None if val is None else (ci, c, val)


def fold_conv_affine(model: onnx.ModelProto) -> int:
    """Conv -> Mul/Div/Add/Sub by a per-output-channel constant, folded into the conv (repeated for chains)."""
    def match(ix: _Index, node: onnx.NodeProto):
        if node.op_type not in ("Conv", "ConvTranspose") or len(node.input) < 2 or node.domain not in ("", "ai.onnx"):
            return None
        w = ix.const(node.input[1])
        has_bias = len(node.input) > 2 and bool(node.input[2])
        bias = ix.const(node.input[2]) if has_bias else None
        if w is None or (has_bias and bias is None):
            return None
        if node.op_type == "ConvTranspose" and int(_attr(node, "group", 1)) != 1:
            return None
        reader = _affine_reader(ix, node)
        if reader is None:
            return None
        ci, c, val = reader
        out_ch = w.shape[0] if node.op_type == "Conv" else w.shape[1]
        vec = _channel_vector(val, w.ndim, out_ch)
        if vec is None or not np.all(np.isfinite(vec)) or (c.op_type == "Div" and np.any(vec == 0)):
            return None
        return ci, node, c, w, bias, vec

    def apply(ix: _Index, hit) -> None:
        ci, node, c, w, bias, vec = hit
        axis = 0 if node.op_type == "Conv" else 1
        shape = [1] * w.ndim
        shape[axis] = -1
        b = bias if bias is not None else np.zeros(w.shape[axis], np.float32)
        if c.op_type in ("Mul", "Div"):
            s = vec if c.op_type == "Mul" else (1.0 / vec.astype(np.float64)).astype(np.float32)
            w, b = w * s.reshape(shape), b * s
        else:
            b = b + (vec if c.op_type == "Add" else -vec)
        new_w = ix.add_const(node.input[1] + "_folded", w.astype(np.float32))
        new_b = ix.add_const((node.input[2] if bias is not None else node.name or "conv") + "_bias_folded",
                             b.astype(np.float32))
        node.input[1] = new_w
        if len(node.input) > 2:
            node.input[2] = new_b
        else:
            node.input.append(new_b)
        node.output[0] = c.output[0]
        _drop(ix.g, ci)

    return _fold_each(model, match, apply)


def _batchnorm_affine(ix: _Index, node: onnx.NodeProto) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """(scale, shift) per channel of an inference BatchNormalization with constant parameters; None otherwise."""
    if node.op_type != "BatchNormalization" or node.domain not in ("", "ai.onnx") or len(node.output) != 1 or \
            _attr(node, "training_mode", 0) or len(node.input) != 5:
        return None
    params = [ix.const(t) for t in node.input[1:5]]
    if any(v is None for v in params) or len({v.size for v in params}) != 1:
        return None
    gamma, beta, mean, var = (v.astype(np.float64).ravel() for v in params)
    scale = gamma / np.sqrt(var + _attr(node, "epsilon", 1e-5))
    return scale, beta - mean * scale


def fold_gemm_batchnorm(model: onnx.ModelProto) -> int:
    """Gemm -> BatchNormalization (inference) folded into the Gemm: onnxslim fuses a BatchNorm into the conv before
    it but leaves one after a fully connected layer (a landmark head's Linear -> BatchNorm1d), which the NPU would
    compute as an op of its own, rounding the Gemm's output once more on its way."""
    def match(ix: _Index, node: onnx.NodeProto):
        if node.op_type != "Gemm" or node.domain not in ("", "ai.onnx") or _attr(node, "transA", 0):
            return None
        w = ix.const(node.input[1])
        c = ix.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if w is None or w.ndim != 2 or (len(node.input) > 2 and node.input[2] and c is None):
            return None
        ci = _sole_reader(ix, node)
        affine = None if ci is None else _batchnorm_affine(ix, ix.g.node[ci])
        n = w.shape[0] if _attr(node, "transB", 0) else w.shape[1]
        if affine is None or affine[0].size != n or (c is not None and c.size not in (1, n)):
            return None
        return ci, node, w, c, affine

    def apply(ix: _Index, hit) -> None:
        ci, node, w, c, (k, shift) = hit
        w = w.astype(np.float64) * _attr(node, "alpha", 1.0) * (k[:, None] if _attr(node, "transB", 0)
                                                                 else k[None, :])
        bias = np.zeros(len(k)) if c is None else np.broadcast_to(c.astype(np.float64).ravel(), k.shape)
        _rewrite_gemm(ix, node, w, k * _attr(node, "beta", 1.0) * bias + shift, ci, "bn")

    return _fold_each(model, match, apply)


def _rewrite_gemm(ix: _Index, node: onnx.NodeProto, w: np.ndarray, bias: np.ndarray, ci: int, tag: str) -> None:
    """The Gemm ``node`` with new weights (alpha folded in) and bias, taking over the output of the node at ``ci``,
    which goes."""
    node.input[1] = ix.add_const(node.input[1] + f"_{tag}_folded", w.astype(np.float32))
    new_c = ix.add_const((node.name or "gemm") + f"_bias_{tag}_folded", bias.astype(np.float32))
    if len(node.input) > 2:
        node.input[2] = new_c
    else:
        node.input.append(new_c)
    kept = [at for at in node.attribute if at.name not in ("alpha", "beta")]
    del node.attribute[:]
    node.attribute.extend(kept)
    node.output[0] = ix.g.node[ci].output[0]
    _drop(ix.g, ci)


def fold_gemm_affine(model: onnx.ModelProto) -> int:
    """Gemm -> Add / Sub / Mul / Div by a constant per output column (or a scalar), folded into the Gemm's weights
    and bias: the TensorFlow and TensorFlow.js loaders write a Dense as MatMul then BiasAdd, and exporters leave a
    head's scale after it; the NPU's fully connected op takes the bias itself, without rounding the product first."""
    def row_vector(v: Optional[np.ndarray], n: int) -> Optional[np.ndarray]:
        if v is None or v.ndim > 2 or v.size not in (1, n) or (v.ndim == 2 and v.shape[0] != 1):
            return None
        return np.broadcast_to(v.astype(np.float64).ravel(), (n,))

    def match(ix: _Index, node: onnx.NodeProto):
        if node.op_type != "Gemm" or node.domain not in ("", "ai.onnx") or _attr(node, "transA", 0):
            return None
        w = ix.const(node.input[1])
        has_c = len(node.input) > 2 and bool(node.input[2])
        if w is None or w.ndim != 2:
            return None
        n_out = w.shape[0] if _attr(node, "transB", 0) else w.shape[1]
        c = row_vector(ix.const(node.input[2]), n_out) if has_c else np.zeros(n_out)
        reader = _affine_reader(ix, node)
        if c is None or reader is None:
            return None
        ci, a, val = reader
        vec = row_vector(val, n_out)
        if vec is None or not np.all(np.isfinite(vec)) or (a.op_type == "Div" and np.any(vec == 0)):
            return None
        return ci, node, a, w, c, vec

    def apply(ix: _Index, hit) -> None:
        ci, node, a, w, c, vec = hit
        trans_b = _attr(node, "transB", 0)
        w = w.astype(np.float64) * _attr(node, "alpha", 1.0)
        bias = c * _attr(node, "beta", 1.0)
        if a.op_type in ("Mul", "Div"):
            k = vec if a.op_type == "Mul" else 1.0 / vec
            w, bias = w * (k[:, None] if trans_b else k[None, :]), bias * k
        else:
            bias = bias + (vec if a.op_type == "Add" else -vec)
        _rewrite_gemm(ix, node, w, bias, ci, "affine")

    return _fold_each(model, match, apply)


def _scale_and_shift(ix: _Index, node: onnx.NodeProto, at: int, rank: int, channels: int):
    """(scale, shift, index of the last node) per channel of ``node`` (at index ``at``), a Mul / Div by a constant
    channel vector, and of the constant Add / Sub that alone reads it, if any; None when ``node`` is no such scale."""
    if len(node.input) != 2 or node.input[0] == node.input[1]:
        return None
    val = ix.const(node.input[1])
    vec = None if val is None else _channel_vector(val, rank, channels)
    if vec is None or not np.all(np.isfinite(vec)) or np.any(vec == 0):
        return None
    scale = vec.astype(np.float64) if node.op_type == "Mul" else 1.0 / vec.astype(np.float64)
    reader = _affine_reader(ix, node)
    shift = None if reader is None or reader[1].op_type not in ("Add", "Sub") else \
        _channel_vector(reader[2], rank, channels)
    if shift is None or not np.all(np.isfinite(shift)):
        return scale, np.zeros_like(scale), at
    return scale, shift.astype(np.float64) * (1 if reader[1].op_type == "Add" else -1), reader[0]


class _Affine:
    """y = x * scale + shift per channel, read from ``x`` by the nodes at ``nodes``: a BatchNormalization (``stats``:
    its running mean and standard deviation per channel) or a Mul / Div by a constant, and the constant Add / Sub
    that alone reads it."""

    def __init__(self, x: str, nodes: List[int], scale: np.ndarray, shift: np.ndarray,
                 stats: Optional[Tuple[np.ndarray, np.ndarray]] = None):
        self.x, self.nodes, self.scale, self.shift, self.stats = x, nodes, scale, shift, stats

    def channels(self, start: int, width: int) -> tuple:
        """(scale, shift, stats) of channels start .. start + width."""
        part = slice(start, start + width)
        stats = None if self.stats is None else (self.stats[0][part], self.stats[1][part])
        return self.scale[part], self.shift[part], stats


def _affine_of(ix: _Index, i: int, x: str, rank: int, channels: int) -> Optional[_Affine]:
    """The per-channel affine that node ``i`` starts on ``x`` (of ``rank`` and ``channels``); None if it is none."""
    node = ix.g.node[i]
    if node.input[0] != x or node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "BatchNormalization":
        found = _batchnorm_affine(ix, node)
        if found is None or found[0].size != channels:
            return None
        mean, var = (ix.const(t).astype(np.float64).ravel() for t in node.input[3:5])
        return _Affine(x, [i], *found, stats=(mean, np.sqrt(var + _attr(node, "epsilon", 1e-5))))
    if node.op_type in ("Mul", "Div"):
        found = _scale_and_shift(ix, node, i, rank, channels)
        if found is not None:
            return _Affine(x, sorted({i, found[2]}), found[0], found[1])
    return None


def normalize_concat_pieces(model: onnx.ModelProto) -> int:
    """The pieces of channel Concats that per-channel affines read (BatchNormalizations; a Mul / Div by a constant
    and an Add / Sub after it) are standardised where they are made, and the affines rescaled to match.

    Why: the NPU stores a Concat and its pieces at one int8 scale, set by the widest channels. Each layer of a
    DenseNet block reads the block's growing Concat through a BatchNorm that multiplies every channel by
    gamma / std, so a channel of small variance had its rounding error multiplied as well. A piece read by several
    BatchNorms is now written as (x - mean) / std, from the running statistics of the first (all of them measure the
    same channel), so the Concat joins channels of one size and each BatchNorm becomes about gamma * x + beta. A
    piece read by one affine takes it whole, and that affine goes (a CSP block's BatchNorm after its two branches).
    A piece that a conv writes for these readers alone takes the factor into its weights (fold_conv_affine runs
    next): no new op; so does one that an unpadded AveragePool makes from such a conv's output (a DenseNet
    transition: the factor commutes with the pool); any other piece gets one Mul and Add. A piece read by several
    affines none of which is a BatchNorm has no statistics and stays as it is.
    Runs once: the rescaled affines would match again. Returns how many pieces it rescaled."""
    ix = _Index(model)
    concats = [i for i, node in enumerate(model.graph.node) if node.op_type == "Concat"]
    if not concats:
        return 0
    shapes = _known_shapes(model)
    ranks = {i: r for i in concats if (r := _channel_concat_rank(model.graph.node[i], shapes)) is not None}
    family: Dict[int, int] = {i: i for i in ranks}  # union-find over Concats reading one another or one piece
    first_reader: Dict[str, int] = {}

    def root(i: int) -> int:
        while family[i] != i:
            i = family[i]
        return i

    for i in ranks:
        for t in model.graph.node[i].input:
            other = ix.producer.get(t)
            other = other if other in ranks else first_reader.setdefault(t, i)
            family[root(other)] = root(i)
    members: Dict[int, List[int]] = {}
    for i in ranks:
        members.setdefault(root(i), []).append(i)
    after: Dict[int, List[onnx.NodeProto]] = {}  # producer index (-1: a graph input) -> the nodes that follow it
    rescaled = sum(_normalize_family(ix, group, ranks, shapes, after) for group in members.values())
    if rescaled:
        nodes = list(after.get(-1, []))
        for k, node in enumerate(model.graph.node):
            nodes += [node] + after.get(k, [])
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        drop_unread(model.graph)  # the affines that became the identity
    return rescaled


def _channel_concat_rank(node: onnx.NodeProto, shapes) -> Optional[int]:
    """The output rank of a Concat along the channels (axis 1, channel count known); None for any other node."""
    if node.op_type != "Concat" or node.domain not in ("", "ai.onnx"):
        return None
    shape = shapes.get(node.output[0], ())
    ok = len(shape) >= 2 and int(_attr(node, "axis", 1)) in (1, 1 - len(shape)) and shape[1] is not None
    return len(shape) if ok else None


def _normalize_family(ix: _Index, group: List[int], ranks: Dict[int, int], shapes,
                      after: Dict[int, List[onnx.NodeProto]]) -> int:
    """normalize_concat_pieces on one family of Concats; nothing when anything but a Concat of the family or a
    per-channel affine reads one of them (it would see the rescaled values)."""
    g = ix.g
    outs = {g.node[i].output[0]: i for i in group}
    pieces: Dict[str, int] = {}  # piece -> its channels
    affines: List[_Affine] = []
    for i in group:
        for t in g.node[i].input:
            if t not in outs:
                shape = shapes.get(t, ())
                if not t or t in ix.keep or len(shape) != ranks[i] or shape[1] is None:
                    return 0
                pieces[t] = shape[1]
        y = g.node[i].output[0]
        readers = [c for c in ix.consumers.get(y, []) if c not in group]
        found = [_affine_of(ix, c, y, ranks[i], shapes[y][1]) for c in readers]
        if y in ix.keep or None in found:
            return 0
        affines += found
    if not affines:
        return 0
    for t, width in pieces.items():  # an affine reading a piece itself (a block's first layer) reads it too
        found = [_affine_of(ix, c, t, len(shapes[t]), width) for c in ix.consumers.get(t, []) if c not in group]
        affines += [a for a in found if a is not None]
    affines.sort(key=lambda a: a.nodes[0])  # graph order: a piece's statistics come from its first BatchNorm

    def layout(t: str) -> List[Tuple[str, int]]:  # (piece, channels) in the order they make up t
        return [(t, pieces[t])] if t not in outs else [p for x in g.node[outs[t]].input for p in layout(x)]

    layouts = {a.x: layout(a.x) for a in affines}  # before the Concats are rewired
    seen: Dict[str, list] = {t: [] for t in pieces}
    for a in affines:
        start = 0
        for t, width in layouts[a.x]:
            seen[t].append(a.channels(start, width))
            start += width
    factors = {t: _piece_factor(found, pieces[t]) for t, found in seen.items()}
    made: Dict[str, str] = {}
    rewired = {a.nodes[0] for a in affines} | set(group)
    for t, (scale, shift) in factors.items():
        if np.all(scale == 1) and np.all(shift == 0):
            continue
        pool = _pooled_conv_output(ix, t, rewired)
        x = t if pool is None else ix.g.node[pool].input[0]  # the affine commutes with the pool: before it
        shape = [1, scale.size] + [1] * (len(shapes[t]) - 2)
        y = ix.unique(f"{t}/normalized")
        new = [helper.make_node("Mul", [x, ix.add_const(f"{t}/norm_scale", scale.reshape(shape))], [y], name=y)]
        if np.any(shift != 0):
            z = ix.unique(f"{t}/normalized_shift")
            new.append(helper.make_node("Add", [y, ix.add_const(f"{t}/norm_shift", shift.reshape(shape))], [z],
                                        name=z))
            y = z
        if pool is None:
            made[t] = y
        else:  # the pool reads the normalized conv output (folded into that conv next) and is the piece
            ix.g.node[pool].input[0] = y
            made[t] = t
        after.setdefault(ix.producer.get(x, -1), []).extend(new)
    for i in group:
        g.node[i].input[:] = [made.get(x, x) for x in g.node[i].input]
    for a in affines:
        scale = np.concatenate([factors[t][0] for t, _ in layouts[a.x]])
        shift = np.concatenate([factors[t][1] for t, _ in layouts[a.x]])
        x, last = made.get(a.x, a.x), g.node[a.nodes[-1]]
        g.node[a.nodes[0]].input[0] = x
        new_scale, new_shift = a.scale / scale, a.shift - a.scale * shift / scale
        if np.allclose(new_scale, 1, rtol=1e-12, atol=0) and np.allclose(new_shift, 0, rtol=0, atol=1e-12) and \
                last.output[0] not in ix.keep:
            rename_uses(g, last.output[0], x)  # nothing reads it now: drop_unread removes it
        else:
            _set_affine(ix, a, new_scale, new_shift, len(shapes[a.x]), after)
    return len(made)


def _pooled_conv_output(ix: _Index, t: str, rewired: set) -> Optional[int]:
    """The AveragePool that makes piece ``t`` from a conv's output that nothing else reads (a DenseNet transition),
    when it pads nothing (a per-channel scale and shift then commute with it) and every reader of ``t`` is one that
    _normalize_family rewires; else None."""
    i = ix.producer.get(t)
    if i is None or t in ix.keep or any(c not in rewired for c in ix.consumers.get(t, [])):
        return None
    pool = ix.g.node[i]
    if pool.op_type != "AveragePool" or not _unpadded(pool) or _attr(pool, "ceil_mode", 0):
        return None
    x = pool.input[0]
    conv = ix.producer.get(x)
    if conv is None or ix.g.node[conv].op_type != "Conv" or x in ix.keep or ix.consumers.get(x, []) != [i]:
        return None
    return i


def _piece_factor(found: list, channels: int) -> Tuple[np.ndarray, np.ndarray]:
    """(scale, shift) a piece is rescaled by, from what its readers apply to it: [(scale, shift, stats)]."""
    if len(found) == 1:
        scale, shift = found[0][0], found[0][1]
    else:
        stats = next((f[2] for f in found if f[2] is not None), None)
        if stats is None:  # several readers and no statistics: a guess would do harm (see the docstring)
            return np.ones(channels), np.zeros(channels)
        scale, shift = 1.0 / stats[1], -stats[0] / stats[1]
    ok = np.isfinite(scale) & (np.abs(scale) > 1e-12) & np.isfinite(shift)
    return np.where(ok, scale, 1.0), np.where(ok, shift, 0.0)


def _set_affine(ix: _Index, a: _Affine, scale: np.ndarray, shift: np.ndarray, rank: int,
                after: Dict[int, List[onnx.NodeProto]]) -> None:
    """The nodes of ``a`` computing x * scale + shift instead (an Add placed in ``after`` where a Mul had none)."""
    first, last = ix.g.node[a.nodes[0]], ix.g.node[a.nodes[-1]]
    if first.op_type == "BatchNormalization":  # (x - 0) / sqrt(1 - eps + eps) * scale + shift
        eps = float(_attr(first, "epsilon", 1e-5))
        values = (scale, shift, np.zeros_like(scale), np.full_like(scale, 1.0 - eps))
        for k, (part, v) in enumerate(zip(("gamma", "beta", "mean", "var"), values)):
            first.input[1 + k] = ix.add_const(f"{first.name or 'bn'}/{part}_rescaled", v)
        return
    shape = [1, scale.size] + [1] * (rank - 2)
    first.op_type = "Mul"
    first.input[:] = [first.input[0], ix.add_const(f"{first.name or 'mul'}/scale_rescaled", scale.reshape(shape))]
    if len(a.nodes) == 2:
        last.op_type = "Add"
        last.input[:] = [first.output[0], ix.add_const(f"{last.name or 'add'}/shift_rescaled", shift.reshape(shape))]
    elif np.any(shift != 0):  # a lone Mul whose pieces were standardised: it needs a shift after it now
        y = first.output[0]
        first.output[0] = ix.unique(f"{y}/scaled")
        add = helper.make_node("Add", [first.output[0], ix.add_const(f"{y}/shift", shift.reshape(shape))], [y],
                               name=ix.unique(f"{first.name or 'mul'}/shift"))
        after.setdefault(a.nodes[0], []).append(add)


def _conv_readers(ix: _Index, t: str) -> Optional[List[int]]:
    """The convs reading t as their data input, with constant weights; None if anything else reads t."""
    out = []
    for k in ix.consumers.get(t, []):
        n = ix.g.node[k]
        if n.op_type != "Conv" or n.input[0] != t or t in n.input[1:] or ix.const(n.input[1]) is None:
            return None
        if len(n.input) > 2 and n.input[2] and ix.const(n.input[2]) is None:
            return None
        out.append(k)
    return out or None


def _input_channel_of(w: np.ndarray, group: int) -> np.ndarray:
    """For weight [Cout, Cin/group, ...]: the input channel each [o, j] entry reads, shape [Cout, Cin/group]."""
    cout, cin_g = w.shape[0], w.shape[1]
    per_group = cout // group
    o = np.arange(cout)[:, None]
    return (o // per_group) * cin_g + np.arange(cin_g)[None, :]


def _unpadded(node: onnx.NodeProto) -> bool:
    pads = _attr(node, "pads", None)
    auto = _attr(node, "auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    return auto in ("NOTSET", "VALID") and (pads is None or not any(pads))


def _known_shapes(model: onnx.ModelProto) -> Dict[str, Tuple[Optional[int], ...]]:
    """Tensor shapes as shape inference reads them (dims it cannot tell as None); empty when it fails."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        return {}
    out = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        if vi.type.tensor_type.HasField("shape"):
            out[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None
                                 for d in vi.type.tensor_type.shape.dim)
    return out


def _keeps_shape(x_shape, const_shape, channels: int) -> bool:
    """x (of known rank, ``channels`` channels) combined with a constant of ``const_shape`` keeps x's shape."""
    if x_shape is None or len(x_shape) < 2 or x_shape[1] != channels or len(const_shape) > len(x_shape):
        return False
    aligned = x_shape[len(x_shape) - len(const_shape):]
    return all(c == 1 or (d is not None and c == d) for c, d in zip(const_shape, aligned))


def fold_input_scale(model: onnx.ModelProto) -> int:
    """A per-channel Mul/Div (any conv) or Add/Sub (unpadded convs only) whose output only convs read -> their
    weights / biases."""
    done = 0
    shapes = _known_shapes(model)  # x is never rewritten, so its shape stays valid across the rewrites below
    while True:
        ix = _Index(model)
        g = model.graph
        hit = None
        for i, node in enumerate(g.node):
            if node.op_type not in ("Mul", "Div", "Add", "Sub") or len(node.input) != 2 or \
                    node.domain not in ("", "ai.onnx"):
                continue
            t = node.output[0]
            readers = None if t in ix.keep else _conv_readers(ix, t)
            if not readers:
                continue
            x, other = node.input
            if ix.const(x) is not None and node.op_type in ("Mul", "Add"):
                x, other = other, x
            val = ix.const(other)
            if val is None or ix.const(x) is not None or (node.op_type in ("Sub", "Div") and other != node.input[1]):
                continue
            ws = [ix.const(g.node[k].input[1]) for k in readers]
            cin = ws[0].shape[1] * int(_attr(g.node[readers[0]], "group", 1))
            vec = _channel_vector(val, ws[0].ndim, cin)
            if vec is None or not np.all(np.isfinite(vec)) or (node.op_type == "Div" and np.any(vec == 0)):
                continue
            if any(w.shape[1] * int(_attr(g.node[k], "group", 1)) != cin for k, w in zip(readers, ws)):
                continue
            if not _keeps_shape(shapes.get(x), val.shape, cin):  # the constant must not broadcast x bigger
                continue
            if node.op_type in ("Add", "Sub") and not all(_unpadded(g.node[k]) for k in readers):
                continue
            hit = (i, node, x, vec, readers, ws)
            break
        if hit is None:
            return done
        i, node, x, vec, readers, ws = hit
        for k, w in zip(readers, ws):
            conv = g.node[k]
            src = _input_channel_of(w, int(_attr(conv, "group", 1)))
            tail = (1,) * (w.ndim - 2)
            if node.op_type in ("Mul", "Div"):
                s = vec if node.op_type == "Mul" else (1.0 / vec.astype(np.float64)).astype(np.float32)
                conv.input[1] = ix.add_const(conv.input[1] + "_folded", w * s[src].reshape(src.shape + tail))
            else:
                a = vec if node.op_type == "Add" else -vec
                shift = (w.astype(np.float64) * a[src].reshape(src.shape + tail)).reshape(w.shape[0], -1).sum(1)
                has_bias = len(conv.input) > 2 and conv.input[2]
                b = ix.const(conv.input[2]) if has_bias else np.zeros(w.shape[0], np.float32)
                name = ix.add_const((conv.input[2] if has_bias else conv.name or "conv") + "_bias_folded",
                                    (b + shift).astype(np.float32))
                if has_bias:
                    conv.input[2] = name
                else:
                    conv.input.append(name)
            conv.input[0] = x
        _drop(g, i)
        done += 1


def channel_sums_as_convs(model: onnx.ModelProto) -> int:
    """ReduceSum / ReduceMean over the channels (keepdims) of x times a per-channel constant read only by it (a
    grayscale conversion: x * luma, summed), x an [N, C, H, W] tensor -> one 1x1 Conv with those weights. The NPU
    runs it as a conv, and an int8 build no longer rounds the weighted channels at a point of their own. Exact up to
    float summation order."""
    done = 0
    shapes = _known_shapes(model)
    while True:
        ix = _Index(model)
        g = model.graph
        producer = ix.producer
        hit = None
        for i, node in enumerate(g.node):
            if node.op_type not in ("ReduceSum", "ReduceMean") or node.domain not in ("", "ai.onnx") or \
                    int(_attr(node, "keepdims", 1)) != 1:
                continue
            x = node.input[0]
            shape = shapes.get(x)
            if shape is None or len(shape) != 4 or shape[1] is None or _axes(ix, node, 4) != (1,):
                continue
            c = shape[1]
            # weighted channels only: a plain channel sum or mean is a norm's statistic (an L2 or layer norm over
            # the channels), which the quantizer keeps inside the norm's one step (graph/norms.py)
            p = producer.get(x)
            if p is None or g.node[p].op_type != "Mul" or x in ix.keep or ix.consumers.get(x) != [i]:
                continue
            a, b = g.node[p].input
            if ix.const(a) is not None:
                a, b = b, a
            vec = ix.const(b)
            vec = None if vec is None or ix.const(a) is not None else _channel_vector(vec, 4, c)
            if vec is None or not _keeps_shape(shapes.get(a), ix.const(b).shape, c):
                continue
            hit = (i, node, a, vec * (1.0 / c if node.op_type == "ReduceMean" else 1.0), g.node[p])
            break
        if hit is None:
            return done
        i, node, x, weights, mul = hit
        w = ix.add_const((node.name or node.output[0]) + "_weights", weights.reshape(1, -1, 1, 1))
        conv = helper.make_node("Conv", [x, w], [node.output[0]],
                                name=ix.unique((node.name or "channel_sum") + "_conv"))
        g.node.insert(i, conv)
        g.node.remove(node)
        g.node.remove(mul)
        done += 1


# What each recognised activation becomes: the ONNX op and the opset it needs (None: no single op).
_CANONICAL = {"HardSwish": ("HardSwish", 14), "HardSigmoid": ("HardSigmoid", 6), "Sigmoid": ("Sigmoid", 1),
              "Tanh": ("Tanh", 1), "Gelu": ("Gelu", 20), "GeluTanh": ("Gelu", 20), "Mish": ("Mish", 18)}


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def canonical_activations(model: onnx.ModelProto) -> int:
    """Spelled-out activations -> their ONNX op (SiLU -> Sigmoid + Mul; HardSwish below opset 14 -> HardSigmoid +
    Mul). Activations without an op in this opset (GELU before 20) stay as they are; the quantizer's plan
    recognises them with the same finder."""
    ix = _Index(model)
    g = model.graph
    consts = {n: v for n in ix.inits if (v := ix.const(n)) is not None and v.size == 1}
    regions = find_regions(list(g.node), consts, ix.keep)
    opset = _opset(model)
    replace: Dict[int, List[onnx.NodeProto]] = {}
    drop: Set[int] = set()
    for r in regions:
        types = [g.node[i].op_type for i in r.nodes]
        base = g.node[r.nodes[-1]].name or r.z
        if r.name == "SiLU":
            if sorted(types) == ["Mul", "Sigmoid"]:
                continue
            s = ix.unique(r.z + "_sigmoid")
            new = [helper.make_node("Sigmoid", [r.x], [s], name=ix.unique(base + "_sigmoid")),
                   helper.make_node("Mul", [r.x, s], [r.z], name=ix.unique(base + "_silu"))]
        elif r.name == "HardSwish" and opset < 14:
            if sorted(types) == ["HardSigmoid", "Mul"]:
                continue
            s = ix.unique(r.z + "_hardsigmoid")
            new = [helper.make_node("HardSigmoid", [r.x], [s], alpha=1.0 / 6.0, beta=0.5,
                                    name=ix.unique(base + "_hardsigmoid")),
                   helper.make_node("Mul", [r.x, s], [r.z], name=ix.unique(base + "_hardswish"))]
        else:
            op, need = _CANONICAL.get(r.name, (None, 0))
            if op is None or opset < need or types == [op]:
                continue
            attrs = {}
            if r.name == "HardSigmoid":
                attrs = {"alpha": r.params[0], "beta": r.params[1]}
            elif r.name == "GeluTanh":
                attrs = {"approximate": "tanh"}
            new = [helper.make_node(op, [r.x], [r.z], name=ix.unique(base + "_" + op.lower()), **attrs)]
        replace[r.nodes[-1]] = new
        drop.update(r.nodes[:-1])
    if not replace:
        return 0
    splice_nodes(g, list(g.node), replace, drop)
    return len(replace)


# elementwise ops that commute with dropping size-1 axes (their other inputs, if any, are scalars)
_UNARY = {"Relu", "LeakyRelu", "Clip", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Selu", "Softplus",
          "Gelu", "Mish"}
_BINARY = {"Add", "Sub", "Mul", "Div"}


def _axes(ix: _Index, node: onnx.NodeProto, rank: Optional[int]) -> Optional[Tuple[int, ...]]:
    """A Squeeze / Unsqueeze (or reduction) node's axes, normalised against ``rank`` (the Squeeze input's rank or the
    Unsqueeze output's); None when they are not constant or the rank is unknown."""
    axes = _attr(node, "axes", None)
    if axes is None and len(node.input) > 1 and node.input[1] in ix.inits:
        axes = numpy_helper.to_array(ix.inits[node.input[1]]).reshape(-1).tolist()
    if axes is None or rank is None:
        return None
    return tuple(sorted(int(a) % rank for a in axes))


def _scalar_inputs(ix: _Index, node: onnx.NodeProto) -> bool:
    return all(not t or (t in ix.inits and numpy_helper.to_array(ix.inits[t]).size == 1) for t in node.input[1:])


def sink_squeezes(model: onnx.ModelProto) -> int:
    """Conv -> Squeeze -> elementwise op (an activation, or Add / Sub / Mul / Div by a constant) becomes Conv ->
    elementwise op (its constant given the squeezed axes back) -> Squeeze, repeated along the chain; then a Squeeze
    whose only reader is an Unsqueeze of the same axes is dropped with it. Exact."""
    done = 0
    shapes: Optional[Dict] = None  # inferred once: a rewrite keeps every rank (the moved op's output takes x's)
    while True:
        ix = _Index(model)
        g = model.graph
        producer = ix.producer
        hit = None
        for i, sq in enumerate(g.node):
            if sq.op_type != "Squeeze" or sq.domain not in ("", "ai.onnx") or sq.output[0] in ix.keep:
                continue
            x, y = sq.input[0], sq.output[0]
            p = producer.get(x)
            cons = ix.consumers.get(y, [])
            if p is None or g.node[p].op_type not in {"Conv", "ConvTranspose"} | _UNARY | _BINARY or len(cons) != 1:
                continue
            e = g.node[cons[0]]
            if e.domain not in ("", "ai.onnx") or not e.input or (e.op_type not in _UNARY | _BINARY):
                continue
            if shapes is None:
                shapes = _known_shapes(model)
            rank = len(shapes[x]) if x in shapes else None
            axes = _axes(ix, sq, rank)
            if axes is None:
                continue
            if e.op_type in _UNARY:
                if e.input[0] != y or not _scalar_inputs(ix, e):
                    continue
                hit = (i, cons[0], sq, e, None)
                break
            if len(e.input) != 2 or e.input[0] == e.input[1] or (e.op_type in ("Sub", "Div") and e.input[0] != y):
                continue
            other = e.input[1] if e.input[0] == y else e.input[0]
            c = ix.const(other)
            if c is None or c.ndim > rank - len(axes):
                continue
            c = c.reshape((1,) * (rank - len(axes) - c.ndim) + c.shape)
            hit = (i, cons[0], sq, e, (other, np.expand_dims(c, axes)))
            break
        if hit is None:
            return done + _cancel_squeeze_pairs(model)
        i, ci, sq, e, const = hit
        moved = onnx.NodeProto()
        moved.CopyFrom(e)
        x, out = sq.input[0], e.output[0]
        inner = ix.unique(out + "_unsqueezed")
        moved.input[list(moved.input).index(sq.output[0])] = x
        if const is not None:
            name, value = const
            moved.input[list(moved.input).index(name)] = ix.add_const(name + "_unsqueezed", value)
        moved.output[0] = inner
        shapes[inner] = shapes[x]
        squeeze = onnx.NodeProto()
        squeeze.CopyFrom(sq)
        squeeze.input[0] = inner
        squeeze.output[0] = out
        g.node[i].CopyFrom(moved)
        g.node[ci].CopyFrom(squeeze)
        done += 1


def _cancel_squeeze_pairs(model: onnx.ModelProto) -> int:
    """Squeeze(axes) read only by Unsqueeze(the same axes): both go, the Unsqueeze's readers read the input."""
    from .names import rename_uses

    ix = _Index(model)
    g = model.graph
    shapes = _known_shapes(model)
    drop: Set[int] = set()
    for i, sq in enumerate(g.node):
        if sq.op_type != "Squeeze" or sq.output[0] in ix.keep or sq.input[0] not in shapes:
            continue
        cons = ix.consumers.get(sq.output[0], [])
        if len(cons) != 1 or g.node[cons[0]].op_type != "Unsqueeze" or g.node[cons[0]].output[0] in ix.keep:
            continue
        un = g.node[cons[0]]
        rank = len(shapes[sq.input[0]])
        if _axes(ix, sq, rank) is None or _axes(ix, sq, rank) != _axes(ix, un, rank):
            continue
        rename_uses(g, un.output[0], sq.input[0])
        drop |= {i, cons[0]}
    if drop:
        keep = [n for k, n in enumerate(g.node) if k not in drop]
        del g.node[:]
        g.node.extend(keep)
    return len(drop) // 2



def unit_stride_transposed_convs(model: onnx.ModelProto) -> int:
    """ConvTranspose with unit strides (a decoder's same-size "deconv", often dilated and grouped as GTCRN's) -> the
    Conv it equals: each group's weight transposed (in <-> out) and flipped, pads d * (k - 1) - p. Exact; the NPU
    and the quantizer then treat it as any conv (a grouped ConvTranspose has no per-channel weight axis and stayed
    float, which also kept the model out of the TFLite export)."""
    done = 0
    ix = _Index(model)
    g = model.graph
    for node in list(g.node):
        if node.op_type != "ConvTranspose" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        w = ix.const(node.input[1])
        if w is None or w.ndim < 3 or _attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or \
                _attr(node, "output_shape") is not None:
            continue
        spatial = w.ndim - 2
        strides = list(_attr(node, "strides", [1] * spatial))
        dil = list(_attr(node, "dilations", [1] * spatial))
        pads = list(_attr(node, "pads", [0] * 2 * spatial))
        extra = list(_attr(node, "output_padding", [0] * spatial))
        kernel = list(w.shape[2:])
        new_pads = [d * (kk - 1) - p for d, kk, p in zip(dil * 2, kernel * 2, pads)]
        if any(s != 1 for s in strides) or any(extra) or min(new_pads) < 0:
            continue
        group = int(_attr(node, "group", 1))
        cin, cout_g = w.shape[0], w.shape[1]
        flipped = w[(slice(None), slice(None)) + (slice(None, None, -1),) * spatial]
        parts = flipped.reshape((group, cin // group, cout_g) + tuple(kernel))
        conv_w = np.swapaxes(parts, 1, 2).reshape((group * cout_g, cin // group) + tuple(kernel))
        inputs = [node.input[0], ix.add_const(node.input[1] + "_as_conv", conv_w)] + list(node.input[2:3])
        conv = helper.make_node("Conv", inputs, list(node.output), name=ix.unique((node.name or "deconv") + "_conv"),
                                pads=new_pads, dilations=dil, group=group, kernel_shape=kernel, strides=strides)
        g.node.insert(list(g.node).index(node), conv)
        g.node.remove(node)
        done += 1
    if done:
        drop_unread(model.graph)  # the ConvTranspose weights
    return done


def _clip_bounds(ix: _Index, node: onnx.NodeProto) -> Optional[Tuple[float, float]]:
    """A Clip's constant (min, max), -inf / inf where absent; None when a bound is not a constant scalar."""
    lo, hi = _attr(node, "min", -np.inf), _attr(node, "max", np.inf)  # attributes before opset 11
    for k in (1, 2):
        if len(node.input) > k and node.input[k]:
            v = ix.const(node.input[k])
            if v is None or v.size != 1:
                return None
            if k == 1:
                lo = float(v.reshape(()))
            else:
                hi = float(v.reshape(()))
    return float(lo), float(hi)


# the largest clamp an inverse sigmoid may use for its fold to count as exact (the fold moves values by at most it)
_LOGIT_EPS = 1e-3


def logit_of_sigmoid(model: onnx.ModelProto) -> int:
    """DETR-family decoders take the inverse sigmoid of a sigmoid: log(max(s, e) / max(1 - s, e)) with
    s = sigmoid(a), sometimes clamped to [0, 1] first. That is a itself, clamped where s meets e: the Log's output
    becomes Clip(a, logit(e), -logit(e)). Exact up to e (1e-5 in these models; float32's own sigmoid is further
    off near the clamp), and an int8 build no longer rounds s near 0 and 1 (where the logit magnifies each step:
    DEIMv2's decoder kept 7 of 62 detections until this rule)."""
    done = 0
    while True:
        ix = _Index(model)
        g = model.graph
        producer = ix.producer

        def made_by(t: str, op: str) -> Optional[onnx.NodeProto]:
            p = producer.get(t)
            return g.node[p] if p is not None and g.node[p].op_type == op and \
                g.node[p].domain in ("", "ai.onnx") else None

        hit = None
        for node in g.node:
            div = made_by(node.input[0], "Div") if node.op_type == "Log" else None
            num = made_by(div.input[0], "Clip") if div is not None else None
            den = made_by(div.input[1], "Clip") if div is not None else None
            sub = made_by(den.input[0], "Sub") if den is not None else None
            if num is None or sub is None:
                continue
            one = ix.const(sub.input[0])
            bn, bd = _clip_bounds(ix, num), _clip_bounds(ix, den)
            if one is None or one.size != 1 or float(one.reshape(())) != 1.0 or sub.input[1] != num.input[0] or \
                    bn is None or bd is None or not (0 < bn[0] <= _LOGIT_EPS and 0 < bd[0] <= _LOGIT_EPS):
                continue
            s = num.input[0]
            clamp = made_by(s, "Clip")
            if clamp is not None:  # a [0, 1] clamp of a sigmoid changes nothing
                b = _clip_bounds(ix, clamp)
                if b is None or b[0] > 0 or b[1] < 1:
                    continue
                s = clamp.input[0]
            sig = made_by(s, "Sigmoid")
            if sig is None:
                continue
            e1, e2 = bn[0], bd[0]
            hit = (node, sig.input[0], float(np.log(e1 / (1 - e1))), float(np.log((1 - e2) / e2)))
            break
        if hit is None:
            if done:
                drop_unread(model.graph)  # the Div, Clips and Sub the Log read, and their constants
            return done
        log_node, a, lo, hi = hit
        name = log_node.name or log_node.output[0]
        clip = helper.make_node("Clip", [a, ix.add_const(name + "_logit_min", np.float32(lo)),
                                         ix.add_const(name + "_logit_max", np.float32(hi))],
                                [log_node.output[0]], name=ix.unique(name + "_logit"))
        at = list(g.node).index(log_node)
        g.node.insert(at, clip)
        g.node.remove(log_node)
        done += 1


def vector_matmuls(model: onnx.ModelProto) -> List[str]:
    """MatMul(A, v) with a constant vector v -> MatMul(A, v as a [K, 1] matrix) and a Squeeze of the last axis: the
    same values. onnxruntime 1.32 (extended optimisations) fuses a Transpose of A's last two axes into such a MatMul
    and then computes it wrongly (a YOLO head's distribution times its bins written as softmax(...).transpose(-1,
    -2) @ bins: off by the bins' own scale), so every session openrknn runs would; the matrix form is fused right.
    Returns the names of the MatMuls whose A was such a Transpose, the ones onnxruntime gets wrong on the file."""
    ix = _Index(model)
    g = model.graph
    wrong: List[str] = []
    replace: Dict[int, List[onnx.NodeProto]] = {}
    for i, node in enumerate(g.node):
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        v = ix.const(node.input[1])
        if v is None or v.ndim != 1:
            continue
        t = g.node[ix.producer[node.input[0]]] if node.input[0] in ix.producer else None
        perm = _attr(t, "perm") if t is not None and t.op_type == "Transpose" else None
        if perm is not None and len(perm) >= 2 and list(perm[-2:]) == [len(perm) - 1, len(perm) - 2]:
            wrong.append(node.name or node.output[0])
        column = ix.add_const(node.input[1] + "_column", v.reshape(-1, 1))
        product = ix.unique(node.output[0] + "_column")
        axes = ix.unique(node.output[0] + "_last_axis")
        g.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), axes))
        replace[i] = [helper.make_node("MatMul", [node.input[0], column], [product], name=node.name),
                      helper.make_node("Squeeze", [product, axes], [node.output[0]],
                                       name=ix.unique((node.name or product) + "_squeeze"))]
    if replace:
        splice_nodes(g, list(g.node), replace, set())
    return wrong


def _einsum_as_product(equation: str) -> Optional[Tuple[List[int], List[int], bool, bool, List[int]]]:
    """(perm of the first operand to [batch.., m, k], of the second to [batch.., k, n], whether the first and the
    second are vectors (no free letter: m or n missing), perm of the [batch.., m, n] product to the output) for a
    two-operand equation that is a batched matrix or matrix-vector product: every letter once per operand, batch
    letters in both operands and the output, one contracted letter, at most one free letter per operand. None for
    anything else (an ellipsis, a trace, a letter summed away, several free or contracted letters)."""
    if "->" not in equation or "." in equation:
        return None
    lhs, out = equation.split("->")
    ins = lhs.split(",")
    if len(ins) != 2 or any(len(set(s)) != len(s) for s in (*ins, out)):
        return None
    x, y = ins
    batch = [c for c in out if c in x and c in y]
    k = [c for c in x if c in y and c not in out]
    m = [c for c in x if c not in y]
    n = [c for c in y if c not in x]
    if len(k) != 1 or len(m) > 1 or len(n) > 1 or sorted(out) != sorted(batch + m + n) or \
            len(x) != len(batch) + len(m) + 1 or len(y) != len(batch) + len(n) + 1:
        return None
    product = batch + m + n
    return ([x.index(c) for c in batch + m + k], [y.index(c) for c in batch + k + n], not m, not n,
            [product.index(c) for c in out])


def einsum_as_matmul(model: onnx.ModelProto) -> int:
    """An Einsum of two operands that is a batched matrix (or matrix-vector) product -> Transposes around a MatMul:
    the same sums, in ops the NPU, the quantizer and the TFLite export know (attention written as
    einsum('bct,bcs->bts', q, k) in a diffusion UNet); a vector operand takes a unit axis for the product, squeezed
    after it. Others stay Einsums (the board's CPU runs them). Returns how many were rewritten."""
    if not any(n.op_type == "Einsum" for n in model.graph.node):
        return 0  # every build calls this: no index of a graph without one
    ix = _Index(model)
    g = model.graph
    replace: Dict[int, List[onnx.NodeProto]] = {}

    def axes(base: str, values: List[int]) -> str:
        name = ix.unique(base)
        g.initializer.append(numpy_helper.from_array(np.array(values, np.int64), name))
        return name

    for i, node in enumerate(g.node):
        if node.op_type != "Einsum" or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
            continue
        eq = _attr(node, "equation", b"")
        plan = _einsum_as_product((eq.decode() if isinstance(eq, bytes) else eq).replace(" ", ""))
        if plan is None:
            continue
        perm_x, perm_y, x_vec, y_vec, perm_out = plan
        nb = len(perm_x) - (1 if x_vec else 2)  # batch axes
        name = node.name or node.output[0]
        nodes, operands = [], []
        # the left operand [batch.., m, k] ([batch.., 1, k] for a vector), the right [batch.., k, n] ([.., k, 1])
        for x, perm, vec, unit in ((node.input[0], perm_x, x_vec, nb), (node.input[1], perm_y, y_vec, nb + 1)):
            if perm != sorted(perm):
                t = ix.unique(f"{x}_{name}_t")
                nodes.append(helper.make_node("Transpose", [x], [t], name=ix.unique(f"{name}_t"), perm=perm))
                x = t
            if vec:
                t = ix.unique(f"{x}_{name}_unit")
                nodes.append(helper.make_node("Unsqueeze", [x, axes(f"{name}_unit_axis", [unit])], [t],
                                              name=ix.unique(f"{name}_unit")))
                x = t
            operands.append(x)
        units = ([nb] if x_vec else []) + ([nb + 1] if y_vec else [])
        last = perm_out == sorted(perm_out)
        steps = [("MatMul", [], {})]
        if units:
            steps.append(("Squeeze", [axes(f"{name}_units", units)], {}))
        if not last:
            steps.append(("Transpose", [], {"perm": perm_out}))
        t = operands
        for k, (op, extra, attrs) in enumerate(steps):
            out = node.output[0] if k == len(steps) - 1 else ix.unique(f"{node.output[0]}_{op.lower()}")
            nodes.append(helper.make_node(op, t + extra, [out], name=name if op == "MatMul" else
                                          ix.unique(f"{name}_{op.lower()}"), **attrs))
            t = [out]
        replace[i] = nodes
    if replace:
        splice_nodes(g, list(g.node), replace, set())
    return len(replace)


__all__ = ["fold_conv_affine", "fold_gemm_affine", "fold_input_scale", "canonical_activations", "channel_sums_as_convs",
           "sink_squeezes", "logit_of_sigmoid", "unit_stride_transposed_convs", "vector_matmuls", "einsum_as_matmul"]
