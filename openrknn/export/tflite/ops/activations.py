"""Relu / Clip / Sigmoid / HardSwish / LeakyRelu / Tanh / Softmax, standalone or as a fused activation."""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import numpy as np
import onnx

from ....errors import NotSupportedError
from ..writer import Quant
from . import attr, layer_name, register
from .ids import typed_operands

NONE, RELU, RELU_N1_TO_1, RELU6 = 0, 1, 2, 3
FIXED_OUTPUT = {"LOGISTIC": (1.0 / 256, -128), "SOFTMAX": (1.0 / 256, -128), "TANH": (1.0 / 128, 0)}


def clip_bounds(ctx, node: onnx.NodeProto) -> Tuple[float, float]:
    lo, hi = attr(node, "min", -np.inf), attr(node, "max", np.inf)
    if len(node.input) > 1 and node.input[1]:
        lo = float(np.asarray(ctx.g.const(node.input[1])).reshape(()))
    if len(node.input) > 2 and node.input[2]:
        hi = float(np.asarray(ctx.g.const(node.input[2])).reshape(()))
    return float(lo), float(hi)


def _bounds_code(lo: float, hi: float) -> Optional[int]:
    if lo == 0 and hi == 6:
        return RELU6
    if lo == -1 and hi == 1:
        return RELU_N1_TO_1
    if lo == 0 and hi == np.inf:
        return RELU
    return None


def fused_code(ctx, act: onnx.NodeProto) -> Optional[int]:
    """TFLite fused-activation code that computes this Relu/Clip exactly on the quantized output, else None."""
    if act.op_type == "Relu":
        return RELU
    if act.op_type != "Clip":
        return None
    if any(i and not ctx.g.is_const(i) for i in act.input[1:]):
        return None
    lo, hi = clip_bounds(ctx, act)
    code = _bounds_code(lo, hi)
    if code is not None:
        return code
    # a Clip whose bounds contain the output's quantized range is done by the int8 saturation itself
    qn = ctx.g.sole_quantizer(act.output[0])
    if qn is None:
        return None
    p = ctx.g.act_point(qn)
    q_lo, q_hi = p.scale * (-128 - p.zero_point), p.scale * (127 - p.zero_point)
    return NONE if lo <= q_lo and hi >= q_hi else None


def _unary(ctx, node, builtin: str, kind: str, options=None, version: int = 1, nhwc: Optional[bool] = None):
    """One elementwise TFLite op; ``nhwc``: the storage order to compute in (default: the input's own)."""
    v = ctx.value(node.input[0])
    layer = layer_name(node)
    store = v.nhwc if nhwc is None else nhwc
    if kind == "q":
        x = v.q if store == v.nhwc else ctx.view(node.input[0], "q", store, layer)
        fixed = FIXED_OUTPUT.get(builtin)
        if fixed is None:
            out = ctx.out_q(node.output[0], store)
            ctx.m.add_op(builtin, [x], [out], options, version=version)
            return ""
        mid = ctx.new_q(node.output[0] + f"/{builtin.lower()}", x.shape, Quant.per_tensor(*fixed))
        ctx.m.add_op(builtin, [x], [mid], options, version=version)
        final = ctx.requantize(mid, ctx.out_point(node.output[0]), layer,
                               f"TFLite's int8 {builtin} output has the fixed scale {fixed[0]:g}")
        ctx.set_q(node.output[0], final, store, v.shape)
        return ""
    x = ctx.f_of(node.input[0], layer) if store == v.nhwc else ctx.view(node.input[0], "f", store, layer)
    out = ctx.out_f(node.output[0], store)
    ctx.m.add_op(builtin, [x], [out], options)
    return ""


def _bound(ctx, node, i: int, default: float):
    """A Clip bound as a float TFLite tensor, or None when absent / infinite; a computed bound (a floor set
    relative to a ReduceMax, as a log-mel front end does) must be a scalar."""
    name = node.input[i] if len(node.input) > i else ""
    if not name:
        value = attr(node, "max" if i == 2 else "min", default)
        return None if np.isinf(value) else ctx.m.add_const(ctx._tname("bound"), np.float32(value).reshape(()))
    qc = ctx.g.quant_const(name)
    if ctx.g.is_const(name) or qc is not None:
        value = np.asarray(qc.dequantized() if qc is not None else ctx.g.const(name), np.float32).reshape(())
        return None if np.isinf(value) else ctx.m.add_const(ctx._tname("bound"), value)
    if int(np.prod(ctx.value(name).shape)) != 1:
        raise NotSupportedError(f"export-tflite: {layer_name(node)} clips to a computed tensor bound; only scalar "
                                "computed bounds are exported")
    return ctx.f_of(name, layer_name(node))


def _clip_integer(ctx, node, dtype: np.dtype) -> str:
    """Clip of integer values (a sequence length capped at the number of time steps): MAXIMUM / MINIMUM on their
    own type, the bounds (constant or computed) in that type. (onnxruntime has no integer Relu.)"""
    layer = layer_name(node)
    x = ctx.f_of(node.input[0], layer)
    bounds = [(b, name) for b, name in (("MAXIMUM", node.input[1] if len(node.input) > 1 else ""),
                                        ("MINIMUM", node.input[2] if len(node.input) > 2 else "")) if name]
    out = ctx.m.add_tensor(ctx._tname(node.output[0]), ctx.out_shape(node.output[0]), dtype)
    cur = x
    for k, (builtin, name) in enumerate(bounds):
        (bound,) = typed_operands(ctx, [name], dtype, layer, "clips")
        nxt = out if k == len(bounds) - 1 else ctx.m.add_tensor(ctx._tname(node.output[0] + "/max"), x.shape, dtype)
        ctx.m.add_op(builtin, [cur, bound], [nxt], layer=layer)
        cur = nxt
    if not bounds:
        ctx.reshape(x, out, layer)
    ctx.set_f(node.output[0], out)
    return f"on {dtype.name} values, exact"


def _clip(ctx, node, kind):
    v = ctx.value(node.input[0])
    if kind == "f" and node.op_type == "Clip" and v.q is None and np.dtype(v.f.dtype).kind in "iu":
        return _clip_integer(ctx, node, np.dtype(v.f.dtype))
    computed = node.op_type == "Clip" and any(i and not ctx.g.is_const(i) for i in node.input[1:])
    lo, hi = clip_bounds(ctx, node) if node.op_type == "Clip" and not computed else (0.0, np.inf)
    code = None if computed else _bounds_code(lo, hi)
    if code is not None:
        return _unary(ctx, node, {RELU: "RELU", RELU6: "RELU6", RELU_N1_TO_1: "RELU_N1_TO_1"}[code], kind,
                      version=2 if kind == "q" else 1)
    v = ctx.value(node.input[0])
    x = ctx.f_of(node.input[0], layer_name(node))
    out = ctx.out_f(node.output[0], v.nhwc)
    lo_t, hi_t = _bound(ctx, node, 1, -np.inf), _bound(ctx, node, 2, np.inf)   # a Relu took RELU above
    cur = x
    if lo_t is not None:
        nxt = out if hi_t is None else ctx.new_f(node.output[0] + "/max", x.shape)
        ctx.m.add_op("MAXIMUM", [cur, lo_t], [nxt])
        cur = nxt
    if hi_t is not None:
        ctx.m.add_op("MINIMUM", [cur, hi_t], [out])
    if lo_t is None and hi_t is None:
        ctx.reshape(x, out)
    return ""


def _clip_int8_ok(ctx, node) -> bool:
    if node.op_type == "Relu":
        return True
    if any(i and not ctx.g.is_const(i) for i in node.input[1:]):
        return False
    return _bounds_code(*clip_bounds(ctx, node)) is not None


register("Relu", "Clip", int8=lambda c, n, a: _clip(c, n, "q"), float=lambda c, n: _clip(c, n, "f"),
         int8_ok=_clip_int8_ok)


def _fixed_output(builtin: str, lower_float: Callable, int8_form_ok: Optional[Callable] = None) -> dict:
    """OpRule's int8_ok and float for an op whose int8 TFLite form writes a fixed output step (LOGISTIC, SOFTMAX:
    1/256, TANH: 1/128). The int8 form computes what our graph does only where our point has that step: a finer
    point (a score map calibrated to 0..0.37 has steps of 0.0015) would lose what our graph keeps (the layout
    detector's small probabilities: cosine 0.93 -> 0.86 against the float model), and any other step means a second
    rounding after it (the chip's Sigmoid grid of 1/255 against LOGISTIC's 1/256: an SSD's scores then ordered its
    boxes otherwise on 7 of 8 inputs). Such a layer is computed in float between DEQUANTIZE / QUANTIZE, as our graph
    computes it, and the report says why. A build for TFLite gives a Sigmoid LOGISTIC's own grid (quant/plan.py)."""
    fixed = FIXED_OUTPUT[builtin][0]

    def form_ok(ctx, node) -> bool:
        return int8_form_ok is None or int8_form_ok(ctx, node)

    def finer(ctx, node) -> bool:  # not the fixed step: finer, or another grid the int8 form would round twice to
        return abs(ctx.out_point(node.output[0]).scale[0] - fixed) > fixed * 1e-6

    def int8_ok(ctx, node) -> bool:
        return form_ok(ctx, node) and not finer(ctx, node)

    def lower(ctx, node) -> str:
        lower_float(ctx, node)
        q = ctx.g.sole_quantizer(node.output[0])
        for_step = q is not None and ctx.g.act_point(q).bits == 8 and form_ok(ctx, node) and \
            all(ctx.is_q8(i) for i in ctx.activation_inputs(node)) and finer(ctx, node)
        if not for_step:
            return ""
        ours = float(ctx.out_point(node.output[0]).scale[0])
        if ours < fixed:
            return f"float, as our graph computes it: TFLite's int8 {builtin} output step {fixed:g} is coarser than " \
                   f"ours ({ours:.3g})"
        return f"float, as our graph computes it: TFLite's int8 {builtin} output step {fixed:g} is not ours " \
               f"({ours:.3g}): it would round twice"

    return {"int8_ok": int8_ok, "float": lower}


register("Sigmoid", int8=lambda c, n, a: _unary(c, n, "LOGISTIC", "q", version=2),
         **_fixed_output("LOGISTIC", lambda c, n: _unary(c, n, "LOGISTIC", "f")))
register("Tanh", int8=lambda c, n, a: _unary(c, n, "TANH", "q", version=2),
         **_fixed_output("TANH", lambda c, n: _unary(c, n, "TANH", "f")))


def _hard_swish(ctx, node) -> str:
    _unary(ctx, node, "HARD_SWISH", "f")
    # TFLite's int8 HARD_SWISH computes through fixed-point approximations: after a pre-activation point
    # (pre_activation_points='tflite') it took PP-OCR's and the layout detector's agreement with our simulator
    # below their own floors (bench/RESULTS.md); in float between DEQUANTIZE / QUANTIZE it is what our graph
    # computes. Teflon offloads neither form.
    return "float, as our graph computes it: TFLite's int8 HARD_SWISH rounds through fixed-point approximations"


register("HardSwish", float=_hard_swish)
def _leaky_relu(ctx, node) -> str:
    _unary(ctx, node, "LEAKY_RELU", "f", ("LeakyReluOptions", {"Alpha": attr(node, "alpha", .01)}))
    # TFLite's int8 LEAKY_RELU requantizes through a coarse fixed-point alpha: 4-10% of values land one step off
    # ours (XNNPACK / builtin kernels, measured on a Keras audio net), and 40 such layers took the agreement to
    # cosine 0.95. In float between DEQUANTIZE / QUANTIZE it computes what our graph does (Teflon offloads neither).
    return "float, as our graph computes it: TFLite's int8 LEAKY_RELU rounds a coarse fixed-point alpha"


register("LeakyRelu", float=_leaky_relu)


def _elu(ctx, node) -> str:
    """ELU (madmom's TCN and note CNN): TFLite's float ELU, whose alpha is 1; another alpha scales its negative part:
    max(x, 0) + alpha * min(ELU(x), 0)."""
    alpha = float(attr(node, "alpha", 1.0))
    if alpha == 1.0:
        _unary(ctx, node, "ELU", "f")
        return ""
    v = ctx.value(node.input[0])
    layer = layer_name(node)
    x = ctx.f_of(node.input[0], layer)
    zero = ctx.m.add_const(ctx._tname("zero"), np.zeros((), np.float32))
    elu = ctx.float_op("ELU", [x], x.shape, node.output[0] + "/elu", layer)
    neg = ctx.float_op("MINIMUM", [elu, zero], x.shape, node.output[0] + "/neg", layer)
    scaled = ctx.float_binary("MUL", neg, ctx.m.add_const(ctx._tname("alpha"), np.asarray(alpha, np.float32)),
                              node.output[0] + "/scaled", layer)
    pos = ctx.float_op("MAXIMUM", [x, zero], x.shape, node.output[0] + "/pos", layer)
    ctx.m.add_op("ADD", [pos, scaled], [ctx.out_f(node.output[0], v.nhwc)],
                 ("AddOptions", {"FusedActivationFunction": 0}), layer=layer)
    return f"alpha {alpha:g}: max(x, 0) + alpha * min(ELU(x), 0)"


register("Elu", float=_elu)


def _softplus(ctx, node) -> str:
    """log(1 + exp(x)) (trueocr's line detector): TFLite has no SOFTPLUS; written as max(x, 0) + log(1 + exp(-|x|)),
    which never overflows exp."""
    v = ctx.value(node.input[0])
    layer = layer_name(node)
    x = ctx.f_of(node.input[0], layer)
    name = node.output[0]
    neg = ctx.float_op("NEG", [ctx.float_op("ABS", [x], x.shape, name + "/abs", layer)], x.shape, name + "/neg", layer)
    tail = ctx.float_binary("ADD", ctx.float_op("EXP", [neg], x.shape, name + "/exp", layer),
                            ctx.m.add_const(ctx._tname("one"), np.ones((), np.float32)), name + "/1p", layer)
    log = ctx.float_op("LOG", [tail], x.shape, name + "/log", layer)
    pos = ctx.float_op("MAXIMUM", [x, ctx.m.add_const(ctx._tname("zero"), np.zeros((), np.float32))], x.shape,
                       name + "/pos", layer)
    ctx.m.add_op("ADD", [pos, log], [ctx.out_f(node.output[0], v.nhwc)],
                 ("AddOptions", {"FusedActivationFunction": 0}), layer=layer)
    return "TFLite has no SOFTPLUS: max(x, 0) + log(1 + exp(-|x|)) in float"


register("Softplus", float=_softplus)


def _hard_sigmoid_float(ctx, node) -> str:
    """max(0, min(1, alpha * x + beta)): TFLite has no HardSigmoid op; MUL, ADD, then the Clip's float form."""
    v = ctx.value(node.input[0])
    layer = layer_name(node)
    x = ctx.f_of(node.input[0], layer)
    alpha, beta = float(attr(node, "alpha", 0.2)), float(attr(node, "beta", 0.5))
    scaled = ctx.new_f(node.output[0] + "/scaled", x.shape)
    ctx.m.add_op("MUL", [x, ctx.m.add_const(ctx._tname("alpha"), np.float32(alpha).reshape(()))], [scaled],
                 ("MulOptions", {"FusedActivationFunction": NONE}))
    shifted = ctx.new_f(node.output[0] + "/shifted", x.shape)
    ctx.m.add_op("ADD", [scaled, ctx.m.add_const(ctx._tname("beta"), np.float32(beta).reshape(()))], [shifted],
                 ("AddOptions", {"FusedActivationFunction": NONE}))
    low = ctx.new_f(node.output[0] + "/max", x.shape)
    ctx.m.add_op("MAXIMUM", [shifted, ctx.m.add_const(ctx._tname("zero"), np.float32(0).reshape(()))], [low])
    out = ctx.out_f(node.output[0], v.nhwc)
    ctx.m.add_op("MINIMUM", [low, ctx.m.add_const(ctx._tname("one"), np.float32(1).reshape(()))], [out])
    return "TFLite has no HardSigmoid: computed as multiply, add and clip in float"


register("HardSigmoid", float=_hard_sigmoid_float)


def _softmax_layout(ctx, node) -> Optional[bool]:
    """The storage order (True: NHWC) in which the softmax axis is TFLite's last one, which is the only axis its
    SOFTMAX works on; None when neither is. A rank-4 value stored NHWC has C last: ONNX axis 1 there, while ONNX's
    last axis (W) is last only in NCHW order (one TRANSPOSE)."""
    v = ctx.value(node.input[0])
    rank = len(v.shape)
    axis = attr(node, "axis", -1) % rank
    if v.nhwc and rank == 4:
        return True if axis == 1 else False if axis == 3 else None
    return v.nhwc if axis == rank - 1 else None


def _moved_last(ctx, node, builtin: str, options=None) -> str:
    """A softmax over an axis that is last in neither storage order (attention weights over the positions of a
    Keras layer): TRANSPOSE that axis last, TFLite's float op, TRANSPOSE back."""
    v = ctx.value(node.input[0])
    layer = layer_name(node)
    x = ctx.view(node.input[0], "f", False, layer) if len(v.shape) == 4 else ctx.f_of(node.input[0], layer)
    rank = len(v.shape)
    axis = attr(node, "axis", -1) % rank
    perm = list(range(rank))
    perm[axis], perm[-1] = perm[-1], perm[axis]
    moved = tuple(v.shape[p] for p in perm)
    perm_t = ctx.m.add_const(ctx._tname("perm"), np.asarray(perm, np.int32))
    xt = ctx.float_op("TRANSPOSE", [x, perm_t], moved, f"{node.output[0]}/axis_last", layer)
    yt = ctx.float_op(builtin, [xt], moved, f"{node.output[0]}/{builtin.lower()}", layer, options)
    ctx.m.add_op("TRANSPOSE", [yt, perm_t], [ctx.out_f(node.output[0], False)], layer=layer)
    return f"over axis {axis}: moved last for TFLite's {builtin} and back"


def _softmax(ctx, node, kind: str) -> str:
    layout = _softmax_layout(ctx, node)
    if layout is None:
        return _moved_last(ctx, node, "SOFTMAX", ("SoftmaxOptions", {"Beta": 1.0}))
    return _unary(ctx, node, "SOFTMAX", kind, ("SoftmaxOptions", {"Beta": 1.0}), version=2 if kind == "q" else 1,
                  nhwc=layout)


def _log_softmax(ctx, node) -> str:
    """A decoder's LogSoftmax (a seq2seq model's next-token scores): TFLite's float LOG_SOFTMAX."""
    layout = _softmax_layout(ctx, node)
    if layout is None:
        return _moved_last(ctx, node, "LOG_SOFTMAX")
    return _unary(ctx, node, "LOG_SOFTMAX", "f", nhwc=layout)


register("LogSoftmax", float=_log_softmax)
register("Softmax", int8=lambda c, n, a: _softmax(c, n, "q"),
         **_fixed_output("SOFTMAX", lambda c, n: _softmax(c, n, "f"), lambda c, n: _softmax_layout(c, n) is not None))
