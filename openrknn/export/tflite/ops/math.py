"""Float forms of ops the int8 graph computes in float between quantization points (a layer norm's Pow / Sqrt, an
Exp or Log of a decoder, PRelu, MatMul, Pad): TFLite's float kernels, on dequantized inputs."""

from __future__ import annotations

import numpy as np

from ....errors import NotSupportedError
from ..lower import TO_NHWC
from . import attr, layer_name, register
from .elementwise import _layout, _operands

UNARY = {"Sqrt": "SQRT", "Exp": "EXP", "Log": "LOG", "Neg": "NEG", "Abs": "ABS", "Sin": "SIN", "Cos": "COS",
         "Floor": "FLOOR", "Ceil": "CEIL", "Round": "ROUND", "Sign": "SIGN"}  # ROUND: half to even, as ONNX's


def _unary(ctx, node) -> str:
    v = ctx.value(node.input[0])
    x = ctx.f_of(node.input[0], layer_name(node))
    ctx.m.add_op(UNARY[node.op_type], [x], [ctx.out_f(node.output[0], v.nhwc)])
    return ""


for _op in UNARY:
    register(_op, float=_unary)


def _atan(ctx, node) -> str:
    """Atan, which TFLite has only as ATAN2 (tf2onnx writes atan2 as Atan of y / x and sign corrections): ATAN2 of x
    and ones FILLed at x's shape, since ATAN2 takes two inputs of one shape."""
    layer = layer_name(node)
    v = ctx.value(node.input[0])
    x = ctx.f_of(node.input[0], layer)
    name = node.output[0]
    dims = ctx.m.add_const(ctx._tname(f"{name}/dims"), np.asarray(x.shape, np.int32))
    one = ctx.m.add_const(ctx._tname(f"{name}/one"), np.asarray(1.0, np.float32))
    ones = ctx.float_op("FILL", [dims, one], x.shape, f"{name}/ones", layer)
    ctx.m.add_op("ATAN2", [x, ones], [ctx.out_f(node.output[0], v.nhwc)], layer=layer)
    return "ATAN2(x, 1)"


register("Atan", float=_atan)


# Abramowitz & Stegun 7.1.26: erf(|x|) = 1 - t (a1 + t (a2 + ... + t a5)) exp(-x^2), t = 1 / (1 + p |x|); its largest
# error is 1.5e-7, far under the int8 steps around it
_ERF_P = 0.3275911
_ERF_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def _erf(ctx, node) -> str:
    """Erf, which TFLite's builtins lack (a GELU spelled out whose steps the chip quantizes one by one, PP-OCR's small
    models): Abramowitz & Stegun's rational approximation in float ops, the sign restored as x / max(|x|, tiny)."""
    layer = layer_name(node)
    v = ctx.value(node.input[0])
    x = ctx.f_of(node.input[0], layer)
    name = node.output[0]

    def const(value, tag):
        return ctx.m.add_const(ctx._tname(f"{name}/{tag}"), np.asarray(value, np.float32))

    def op(builtin, a, b, tag):
        return ctx.float_binary(builtin, a, b, f"{name}/{tag}", layer)

    one = const(1.0, "one")
    a = ctx.float_op("ABS", [x], x.shape, f"{name}/abs", layer)
    t = op("DIV", one, op("ADD", one, op("MUL", a, const(_ERF_P, "p"), "pa"), "den"), "t")
    poly = const(_ERF_A[-1], "a5")
    for k, coef in enumerate(reversed(_ERF_A[:-1])):
        poly = op("ADD", op("MUL", poly, t, f"h{k}"), const(coef, f"a{4 - k}"), f"s{k}")
    tail = op("MUL", op("MUL", poly, t, "pt"),
              ctx.float_op("EXP", [ctx.float_op("NEG", [op("MUL", a, a, "sq")], x.shape, f"{name}/neg", layer)],
                           x.shape, f"{name}/exp", layer), "tail")
    y = op("SUB", one, tail, "abs_erf")
    sign = op("DIV", x, ctx.float_op("MAXIMUM", [a, const(1e-30, "tiny")], x.shape, f"{name}/safe", layer), "sign")
    ctx.m.add_op("MUL", [sign, y], [ctx.out_f(node.output[0], v.nhwc)], ("MulOptions", {"FusedActivationFunction": 0}),
                 layer=layer)
    return "Abramowitz & Stegun's approximation in float ops (largest error 1.5e-7)"


register("Erf", float=_erf)


def _cumsum(ctx, node) -> str:
    """CumSum along a constant axis (a transformer's sine position encoding counts its mask so) -> CUMSUM in float,
    exclusive and reverse as ONNX says."""
    from .shape import NHWC_AXIS, _constant

    layer = layer_name(node)
    v = ctx.value(node.input[0])
    rank = len(v.shape)
    axis = int(np.ravel(_constant(ctx, node, 1, "axes"))[0]) % rank
    if v.nhwc and rank == 4:
        axis = NHWC_AXIS[axis]
    x = ctx.f_of(node.input[0], layer)
    ctx.m.add_op("CUMSUM", [x, ctx.m.add_const(ctx._tname("axis"), np.asarray(axis, np.int32))],
                 [ctx.out_f(node.output[0], v.nhwc)],
                 ("CumsumOptions", {"Exclusive": bool(attr(node, "exclusive", 0)),
                                    "Reverse": bool(attr(node, "reverse", 0))}), layer=layer)
    return ""


register("CumSum", float=_cumsum)


def _reciprocal(ctx, node) -> str:
    """1 / x as DIV (TFLite has no reciprocal op; a DIV by x is what its converter writes too)."""
    v = ctx.value(node.input[0])
    x = ctx.f_of(node.input[0], layer_name(node))
    one = ctx.m.add_const(ctx._tname("one"), np.ones((), np.float32))
    ctx.m.add_op("DIV", [one, x], [ctx.out_f(node.output[0], v.nhwc)], ("DivOptions", {"FusedActivationFunction": 0}))
    return ""


register("Reciprocal", float=_reciprocal)


def _pow(ctx, node) -> str:
    """x ** constant: a square as MUL (exact, and what TFLite's delegates run), other exponents as POW."""
    nhwc = _layout(ctx, node)
    base, exp = _operands(ctx, node, "f", nhwc)
    out = ctx.out_f(node.output[0], nhwc)
    e = ctx.g.const(node.input[1]) if ctx.g.is_const(node.input[1]) else None
    if e is not None and np.size(e) == 1 and float(np.reshape(e, ())) == 2.0:
        ctx.m.add_op("MUL", [base, base], [out], ("MulOptions", {"FusedActivationFunction": 0}))
    else:
        ctx.m.add_op("POW", [base, exp], [out])
    return ""


register("Pow", float=_pow)


def _prelu(ctx, node) -> str:
    nhwc = _layout(ctx, node)
    x, slope = _operands(ctx, node, "f", nhwc)
    ctx.m.add_op("PRELU", [x, slope], [ctx.out_f(node.output[0], nhwc)])
    return ""


register("PRelu", float=_prelu)


def _matmul(ctx, node) -> str:
    """BATCH_MATMUL in the ONNX element order (a rank-4 operand stored N,H,W,C is viewed back first)."""
    layer = layer_name(node)
    ins = []
    for name in node.input:
        if ctx.g.is_const(name) or ctx.g.quant_const(name) is not None:
            qc = ctx.g.quant_const(name)
            arr = qc.dequantized() if qc is not None else np.asarray(ctx.g.const(name), np.float32)
            ins.append(ctx.m.add_const(ctx._tname(name), np.ascontiguousarray(arr, np.float32)))
        elif len(ctx.value(name).shape) == 4:
            ins.append(ctx.view(name, "f", False, layer))
        else:
            ins.append(ctx.f_of(name, layer))
    # a vector operand (D-FINE's bin weights: distances = softmax(bins) @ w) is a one-row or one-column matrix, as
    # ONNX's MatMul treats it; the output then drops that dim again
    vectors = [len(t.shape) == 1 for t in ins]
    for k, t in enumerate(ins):
        if vectors[k]:
            ins[k] = ctx.reshape(t, ctx.new_f(f"{layer}/matrix{k}", (1, t.shape[0]) if k == 0 else (t.shape[0], 1)),
                                 layer)
    out = ctx.out_f(node.output[0], False)
    if any(vectors):
        a, b = ins
        wide = tuple(np.broadcast_shapes(tuple(a.shape[:-2]), tuple(b.shape[:-2]))) + (a.shape[-2], b.shape[-1])
        full = ctx.new_f(f"{layer}/product", wide)
        ctx.m.add_op("BATCH_MATMUL", ins, [full], ("BatchMatMulOptions", {"AdjX": False, "AdjY": False}),
                     layer=layer)
        ctx.reshape(full, out, layer)
        return "a vector operand as a one-row or one-column matrix, the product reshaped back"
    ctx.m.add_op("BATCH_MATMUL", ins, [out], ("BatchMatMulOptions", {"AdjX": False, "AdjY": False}))
    return ""


register("MatMul", float=_matmul)


def _edge_pad(ctx, x, pairs, out, layer: str) -> None:
    """ONNX's edge mode (repeat the border value): per padded axis, a CONCATENATION of the border slice repeated
    and the tensor (TFLite's PAD / MIRROR_PAD have no edge mode)."""
    padded = [i for i, (b, e) in enumerate(pairs) if b or e]
    for n, axis in enumerate(padded):
        before, after = pairs[axis]
        shape = list(x.shape)
        parts = []
        for count, start in ((before, 0), (after, shape[axis] - 1)):
            if not count:
                parts.append([])
                continue
            begin = [0] * len(shape)
            begin[axis] = start
            size = list(shape)
            size[axis] = 1
            edge = ctx.float_op("SLICE", [x, ctx.m.add_const(ctx._tname("begin"), np.asarray(begin, np.int32)),
                                          ctx.m.add_const(ctx._tname("size"), np.asarray(size, np.int32))],
                                size, layer + "/edge", layer)
            parts.append([edge] * count)
        shape[axis] += before + after
        y = out if n == len(padded) - 1 else ctx.new_f(layer + "/edge_padded", shape)
        ctx.m.add_op("CONCATENATION", parts[0] + [x] + parts[1], [y],
                     ("ConcatenationOptions", {"Axis": axis, "FusedActivationFunction": 0}), layer=layer)
        x = y


def _pad(ctx, node) -> str:
    """Pad with constant pads (and value), in the stored layout: constant, reflect (MIRROR_PAD) or edge mode."""
    layer = layer_name(node)
    mode = attr(node, "mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if ctx.g.positions_computed(node):
        return _pad_at_computed(ctx, node, mode, layer)
    if mode not in ("constant", "reflect", "edge") or not ctx.g.is_const(node.input[1]) or \
            (len(node.input) > 3 and node.input[3]):
        raise NotSupportedError(f"export-tflite: {layer} is a Pad mode={mode!r} or with computed pads / axes; only "
                                "constant, reflect and edge padding by constant pads is exported")
    v = ctx.value(node.input[0])
    rank = len(v.shape)
    pads = [int(p) for p in np.asarray(ctx.g.const(node.input[1])).reshape(-1)]
    if any(p < 0 for p in pads):
        raise NotSupportedError(f"export-tflite: {layer} crops (negative pads)")
    pairs = [[pads[i], pads[i + rank]] for i in range(rank)]
    nhwc = v.nhwc and rank == 4
    if nhwc:
        pairs = [pairs[i] for i in TO_NHWC]
    value = 0.0
    if mode == "constant" and len(node.input) > 2 and node.input[2]:
        value = float(np.asarray(ctx.g.const(node.input[2])).reshape(()))
    x = ctx.f_of(node.input[0], layer)
    out = ctx.out_f(node.output[0], nhwc)
    paddings = ctx.m.add_const(ctx._tname("paddings"), np.asarray(pairs, np.int32))
    if mode == "edge" and any(p for pair in pairs for p in pair):
        _edge_pad(ctx, x, pairs, out, layer)
    elif mode == "reflect":
        ctx.m.add_op("MIRROR_PAD", [x, paddings], [out], ("MirrorPadOptions", {"Mode": 0}))  # 0: REFLECT
    elif value == 0.0:
        ctx.m.add_op("PAD", [x, paddings], [out])
    else:
        ctx.m.add_op("PADV2", [x, paddings, ctx.m.add_const(ctx._tname("pad_value"), np.float32(value).reshape(()))],
                     [out])
    return ""


def _pad_at_computed(ctx, node, mode: str, layer: str) -> str:
    """A Pad whose pads the graph computes (a border its inputs decide), constant or reflect -> PAD / PADV2 /
    MIRROR_PAD with a paddings tensor in the stored order of dims; the output's size is known only when the model
    runs. A constant input (a mask of ones the graph pads) is written as a constant in the same layout."""
    from .shape import positions

    if mode not in ("constant", "reflect") or (len(node.input) > 3 and node.input[3]):
        raise NotSupportedError(f"export-tflite: {layer} pads by computed amounts in mode {mode!r}"
                                f"{' over given axes' if len(node.input) > 3 and node.input[3] else ''}; only "
                                "constant and reflect padding of every axis is exported there")
    shape = ctx.out_shape(node.output[0])
    rank = len(shape)
    if ctx.g.is_const(node.input[0]):
        nhwc = rank == 4
        x = ctx.const_for(np.asarray(ctx.g.const(node.input[0]), np.float32), rank, nhwc, node.input[0])
    else:
        nhwc = ctx.value(node.input[0]).nhwc and rank == 4
        x = ctx.f_of(node.input[0], layer)
    order = list(TO_NHWC) if nhwc else list(range(rank))           # stored dim -> ONNX dim
    take = [k for d in order for k in (d, d + rank)]                 # (before, after) per stored dim
    flat = positions(ctx, node.input[1], take, layer)
    paddings = ctx.m.add_tensor(ctx._tname("paddings"), (rank, 2), np.int32)
    ctx.reshape(flat, paddings, layer)
    out = ctx.out_f(node.output[0], nhwc)
    value = 0.0
    if mode == "constant" and len(node.input) > 2 and node.input[2]:
        value = float(np.asarray(ctx.g.const(node.input[2])).reshape(()))
    if mode == "reflect":
        ctx.m.add_op("MIRROR_PAD", [x, paddings], [out], ("MirrorPadOptions", {"Mode": 0}), layer=layer)
    elif value == 0.0:
        ctx.m.add_op("PAD", [x, paddings], [out], layer=layer)
    else:
        ctx.m.add_op("PADV2", [x, paddings, ctx.m.add_const(ctx._tname("pad_value"), np.float32(value).reshape(()))],
                     [out], layer=layer)
    return "by amounts the graph computes; the output's size is known when the model runs"


register("Pad", float=_pad)
