"""ONNX LSTM -> TFLite float ops, unrolled over the (static) sequence: one FULLY_CONNECTED for every step's input
projection, then per step the recurrent FULLY_CONNECTED, the gates and the cell update. Our graph computes recurrent
layers in float between quantization points, and so does this.

Why not TFLite's UNIDIRECTIONAL_SEQUENCE_LSTM: its h / c state are variable tensors that persist across invocations,
so a second frame would start from the first frame's final state (measured: the first steps of every later frame
off by up to 19 quantization steps) unless the caller resets the interpreter's variables before each run. ONNX's LSTM
starts from its initial state on every run; the unrolled form does too, with no caller duty."""

from __future__ import annotations

import numpy as np

from ....errors import NotSupportedError
from . import attr, layer_name, register

ONNX_GATES = "iofc"            # ONNX's gate order in W, R and B (kept: SPLIT gives the four gates in this order)


def _float_const(ctx, node, name: str) -> np.ndarray:
    qc = ctx.g.quant_const(name)
    if qc is not None:
        return qc.dequantized()
    if not ctx.g.is_const(name):
        raise NotSupportedError(f"export-tflite: {layer_name(node)}'s '{name}' is computed, not a constant; TFLite's "
                                "LSTM export takes constant weights")
    return np.asarray(ctx.g.const(name), np.float32)


def _check(ctx, node) -> None:
    layer = layer_name(node)
    acts = [a.decode() if isinstance(a, bytes) else a for a in (attr(node, "activations") or [])]
    if acts and [a.lower() for a in acts] != ["sigmoid", "tanh", "tanh"] * (len(acts) // 3):
        raise NotSupportedError(f"export-tflite: {layer} uses activations {acts}; the export computes "
                                "sigmoid gates with tanh cell and hidden activations only")
    if attr(node, "clip") is not None or attr(node, "input_forget", 0) or attr(node, "layout", 0):
        raise NotSupportedError(f"export-tflite: {layer} sets clip / input_forget / layout=1, which this exporter "
                                "does not unroll")
    if len(node.input) > 7 and node.input[7]:
        raise NotSupportedError(f"export-tflite: {layer} has peephole weights; not exported")
    if len(node.input) > 4 and node.input[4]:
        seq = ctx.g.const(node.input[4]) if ctx.g.is_const(node.input[4]) else None
        t = ctx.value(node.input[0]).shape[0]
        if seq is None or np.any(np.asarray(seq) != t):
            raise NotSupportedError(f"export-tflite: {layer} has sequence_lens shorter than the sequence; the "
                                    "unrolled LSTM runs every step")
    for i in (5, 6):   # initial_h, initial_c: the unrolled steps start from zero
        if len(node.input) > i and node.input[i]:
            name = node.input[i]
            init = ctx.g.const(name) if ctx.g.is_const(name) else None
            if init is None or np.any(np.asarray(init) != 0):
                raise NotSupportedError(f"export-tflite: {layer} starts from a non-zero or computed initial "
                                        "state; only a zero initial state is exported")
    if any(o and ctx.is_read(o) for o in node.output[1:]):
        raise NotSupportedError(f"export-tflite: {layer}'s final states Y_h / Y_c are read; only the sequence "
                                "output Y is exported")


def _op(ctx, builtin: str, ins, shape, layer: str, name: str, options=None):
    out = ctx.new_f(f"{layer}/{name}", shape)
    ctx.m.add_op(builtin, ins, [out], options, layer=layer)
    return out


def _binary(ctx, builtin: str, a, b, layer: str, name: str):
    return _op(ctx, builtin, [a, b], a.shape, layer, name,
               ({"ADD": "AddOptions", "MUL": "MulOptions"}[builtin], {"FusedActivationFunction": 0}))


def _direction(ctx, x, w: np.ndarray, r: np.ndarray, bias: np.ndarray, reverse: bool, layer: str) -> list:
    """One direction's hidden state per time step ([batch, hidden] tensors, in time order)."""
    seq, batch, feat = x.shape
    hidden = r.shape[1]
    tag = "reverse" if reverse else "forward"
    flat = _op(ctx, "RESHAPE", [x, ctx.m.add_const(ctx._tname("shape"), np.asarray((seq * batch, feat), np.int32))],
               (seq * batch, feat), layer, f"{tag}/x_flat", ("ReshapeOptions", {"NewShape": [seq * batch, feat]}))
    fc = ("FullyConnectedOptions", {"FusedActivationFunction": 0})
    # every step's input projection and both biases at once: [seq * batch, 4 * hidden], rows in time order
    xw = _op(ctx, "FULLY_CONNECTED", [flat, ctx.m.add_const(ctx._tname(f"{layer}/W_{tag}"), np.ascontiguousarray(w)),
                                      ctx.m.add_const(ctx._tname(f"{layer}/B_{tag}"), np.ascontiguousarray(bias))],
             (seq * batch, 4 * hidden), layer, f"{tag}/xw", fc)
    r_t = ctx.m.add_const(ctx._tname(f"{layer}/R_{tag}"), np.ascontiguousarray(r))
    gate_axis = ctx.m.add_const(ctx._tname("axis"), np.asarray(1, np.int32))
    h = c = None
    hs = [None] * seq
    for t in (reversed(range(seq)) if reverse else range(seq)):
        begin = ctx.m.add_const(ctx._tname("begin"), np.asarray((t * batch, 0), np.int32))
        size = ctx.m.add_const(ctx._tname("size"), np.asarray((batch, 4 * hidden), np.int32))
        gates = _op(ctx, "SLICE", [xw, begin, size], (batch, 4 * hidden), layer, f"{tag}/x{t}")
        if h is not None:
            gates = _binary(ctx, "ADD", gates, _op(ctx, "FULLY_CONNECTED", [h, r_t, None], (batch, 4 * hidden),
                                                   layer, f"{tag}/rh{t}", fc), layer, f"{tag}/gates{t}")
        parts = [ctx.new_f(f"{layer}/{tag}/{g}{t}", (batch, hidden)) for g in ONNX_GATES]
        ctx.m.add_op("SPLIT", [gate_axis, gates], parts, ("SplitOptions", {"NumSplits": 4}), layer=layer)
        i, o, f = (_op(ctx, "LOGISTIC", [p], p.shape, layer, f"{tag}/{g}{t}_sig") for p, g in zip(parts[:3], "iof"))
        g = _op(ctx, "TANH", [parts[3]], parts[3].shape, layer, f"{tag}/g{t}_tanh")
        c_new = _binary(ctx, "MUL", i, g, layer, f"{tag}/ig{t}")
        if c is not None:
            c_new = _binary(ctx, "ADD", _binary(ctx, "MUL", f, c, layer, f"{tag}/fc{t}"), c_new, layer, f"{tag}/c{t}")
        c = c_new
        h = _binary(ctx, "MUL", o, _op(ctx, "TANH", [c], c.shape, layer, f"{tag}/c{t}_tanh"), layer, f"{tag}/h{t}")
        hs[t] = h
    return hs


def _lstm(ctx, node) -> str:
    layer = layer_name(node)
    hidden = int(attr(node, "hidden_size"))
    _check(ctx, node)
    for state in node.output[1:]:
        if state:
            ctx.skip_unread(state)
    direction = attr(node, "direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    reverse = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}[direction]
    w, r = _float_const(ctx, node, node.input[1]), _float_const(ctx, node, node.input[2])
    b = _float_const(ctx, node, node.input[3]) if len(node.input) > 3 and node.input[3] else \
        np.zeros((len(reverse), 8 * hidden), np.float32)
    x = ctx.f_of(node.input[0], layer)
    seq, batch, _ = ctx.value(node.input[0]).shape
    steps = []   # per time step, each direction's h as [1, 1, batch, hidden]
    per_dir = [_direction(ctx, x, w[d], r[d], b[d][:4 * hidden] + b[d][4 * hidden:], rev, layer)
               for d, rev in enumerate(reverse)]
    shape4 = ctx.m.add_const(ctx._tname("shape"), np.asarray((1, 1, batch, hidden), np.int32))
    for t in range(seq):
        for d in range(len(reverse)):
            steps.append(_op(ctx, "RESHAPE", [per_dir[d][t], shape4], (1, 1, batch, hidden), layer, f"y{t}_{d}",
                             ("ReshapeOptions", {"NewShape": [1, 1, batch, hidden]})))
    # ONNX's Y is [seq, num_directions, batch, hidden]: directions side by side, then time steps
    rows = []
    for t in range(seq):
        row = steps[t * len(reverse):(t + 1) * len(reverse)]
        rows.append(row[0] if len(row) == 1 else _op(ctx, "CONCATENATION", row, (1, len(row), batch, hidden), layer,
                                                     f"y{t}", ("ConcatenationOptions", {"Axis": 1,
                                                                                        "FusedActivationFunction": 0})))
    out = ctx.out_f(node.output[0], False)
    if len(rows) == 1:
        ctx.m.add_op("RESHAPE", [rows[0], ctx.m.add_const(ctx._tname("shape"), np.asarray(out.shape, np.int32))],
                     [out], ("ReshapeOptions", {"NewShape": list(out.shape)}), layer=layer)
    else:
        ctx.m.add_op("CONCATENATION", rows, [out], ("ConcatenationOptions", {"Axis": 0, "FusedActivationFunction": 0}),
                     layer=layer)
    return ""


register("LSTM", float=_lstm)
