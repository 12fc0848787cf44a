"""ONNX LSTM, GRU and RNN -> TFLite float ops, unrolled over the (static) sequence: one FULLY_CONNECTED for every step's
input projection, then per step the recurrent FULLY_CONNECTED, the gates and the state update. Our graph computes
recurrent layers in float between quantization points, and so does this.

Why not TFLite's UNIDIRECTIONAL_SEQUENCE_LSTM: its h / c state are variable tensors that persist across invocations,
so a second frame would start from the first frame's final state (measured: the first steps of every later frame
off by up to 19 quantization steps) unless the caller resets the interpreter's variables before each run. ONNX's LSTM
starts from its initial state on every run; the unrolled form does too, with no caller duty. A streaming model that
feeds its state in and reads it out (silero-vad: initial_h / initial_c from an input, Y_h / Y_c to an output) gets
the recurrence started from those tensors and its final states written out."""

from __future__ import annotations

from typing import List, Optional

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


def _activations(node) -> List[str]:
    return [(a.decode() if isinstance(a, bytes) else a).lower() for a in (attr(node, "activations") or [])]


def _unrollable(ctx, node) -> List[bool]:
    """What every recurrent op must satisfy to unroll (no clip / input_forget / layout=1, every step run); returns
    its directions as reverse flags."""
    layer = layer_name(node)
    if attr(node, "clip") is not None or attr(node, "input_forget", 0) or attr(node, "layout", 0):
        raise NotSupportedError(f"export-tflite: {layer} sets clip / input_forget / layout=1, which this exporter "
                                "does not unroll")
    if len(node.input) > 4 and node.input[4]:
        seq = ctx.g.const(node.input[4]) if ctx.g.is_const(node.input[4]) else None
        if seq is None or np.any(np.asarray(seq) != ctx.value(node.input[0]).shape[0]):
            raise NotSupportedError(f"export-tflite: {layer} has sequence_lens shorter than the sequence; the "
                                    f"unrolled {node.op_type} runs every step")
    direction = attr(node, "direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    return {"forward": [False], "reverse": [True], "bidirectional": [False, True]}[direction]


def _finals(ctx, node, indices) -> List[int]:
    """The final-state outputs (Y_h, Y_c) something reads; the quantize chains the builder put on unread ones go."""
    read = [k for k in indices if len(node.output) > k and node.output[k] and ctx.is_read(node.output[k])]
    for k in indices:
        if len(node.output) > k and node.output[k] and k not in read:
            ctx.skip_unread(node.output[k])
    return read


def _outputs(ctx, node, ys, finals, states, batch: int, hidden: int, fed: bool) -> str:
    """ONNX's Y ([seq, num_directions, batch, hidden]) from each direction's Y slice; the read final states
    (``states[k]``: each direction's last state for output k); the layer's note."""
    layer = layer_name(node)
    out = ctx.out_f(node.output[0], False)
    if len(ys) == 1:
        ctx.reshape(ys[0], out, layer)
    else:
        ctx.m.add_op("CONCATENATION", ys, [out], ("ConcatenationOptions", {"Axis": 1, "FusedActivationFunction": 0}),
                     layer=layer)
    for k in finals:
        _final(ctx, node, k, states[k], batch, hidden, layer)
    return ", ".join((["starts from the state fed in"] if fed else []) + (["final states written out"] if finals
                                                                         else []))


def _initial(ctx, node, index: int, d: int, batch: int, hidden: int, layer: str):
    """Direction d's initial state (initial_h for index 5, initial_c for 6) as a float [batch, hidden] tensor, or None
    where it is absent or zero (the unrolled steps then start from nothing)."""
    if len(node.input) <= index or not node.input[index]:
        return None
    name = node.input[index]
    if ctx.g.is_const(name) or ctx.g.quant_const(name) is not None:
        init = _float_const(ctx, node, name)[d]
        if not np.any(init):
            return None
        return ctx.m.add_const(ctx._tname(f"{layer}/init{index}_{d}"), np.ascontiguousarray(init, np.float32))
    state = ctx.f_of(name, layer)  # [num_directions, batch, hidden]
    begin = ctx.m.add_const(ctx._tname("begin"), np.asarray((d, 0, 0), np.int32))
    size = ctx.m.add_const(ctx._tname("size"), np.asarray((1, batch, hidden), np.int32))
    part = ctx.float_op("SLICE", [state, begin, size], (1, batch, hidden), f"{layer}/init{index}_{d}", layer)
    return ctx.reshape(part, ctx.new_f(f"{layer}/init{index}_{d}/2d", (batch, hidden)), layer)


FC = ("FullyConnectedOptions", {"FusedActivationFunction": 0})


class _Steps:
    """One direction's unrolled time steps: every step's input projection (x W^T + bias) as one FULLY_CONNECTED over
    [seq * batch, width] rows in time order, read back one step at a time; the hidden states stacked into ONNX's
    Y slice [seq, 1, batch, hidden]."""

    def __init__(self, ctx, x, w: np.ndarray, bias: np.ndarray, reverse: bool, layer: str):
        self.ctx, self.layer = ctx, layer
        self.seq, self.batch, feat = x.shape
        self.width = w.shape[0]
        self.tag = "reverse" if reverse else "forward"
        self.order = list(reversed(range(self.seq))) if reverse else list(range(self.seq))
        flat = ctx.reshape(x, ctx.new_f(f"{layer}/{self.tag}/x_flat", (self.seq * self.batch, feat)), layer)
        self.xw = ctx.float_op("FULLY_CONNECTED", [flat, self.const("W", w), self.const("B", bias)],
                               (self.seq * self.batch, self.width), f"{layer}/{self.tag}/xw", layer, FC)
        self.size = ctx.m.add_const(ctx._tname("size"), np.asarray((self.batch, self.width), np.int32))

    def const(self, what: str, value: np.ndarray):
        return self.ctx.m.add_const(self.ctx._tname(f"{self.layer}/{what}_{self.tag}"),
                                    np.ascontiguousarray(value, np.float32))

    def name(self, t: int) -> str:
        return f"{self.layer}/{self.tag}/t{t}"

    def projected(self, t: int):
        """Step t's rows of the input projection, [batch, width]."""
        begin = self.ctx.m.add_const(self.ctx._tname("begin"), np.asarray((t * self.batch, 0), np.int32))
        return self.ctx.float_op("SLICE", [self.xw, begin, self.size], (self.batch, self.width),
                                 self.name(t) + "/x", self.layer)

    def stacked(self, hs: list, hidden: int):
        ctx, seq, batch = self.ctx, self.seq, self.batch
        flat = hs[0] if seq == 1 else ctx.float_op(
            "CONCATENATION", hs, (seq * batch, hidden), f"{self.layer}/{self.tag}/y_flat", self.layer,
            ("ConcatenationOptions", {"Axis": 0, "FusedActivationFunction": 0}))
        return ctx.reshape(flat, ctx.new_f(f"{self.layer}/{self.tag}/y", (seq, 1, batch, hidden)), self.layer)


def _direction(ctx, x, w: np.ndarray, r: np.ndarray, bias: np.ndarray, reverse: bool, layer: str, h=None, c=None,
               peep: Optional[np.ndarray] = None):
    """One direction's hidden states as ONNX's Y slice [seq, 1, batch, hidden], and its final h and c
    ([batch, hidden]); ``h`` / ``c``: the initial state (None: zero); ``peep``: peephole weights [3 * hidden] in
    ONNX's i, o, f order (madmom's LSTMs), the gates then also reading the cell."""
    steps = _Steps(ctx, x, w, bias, reverse, layer)  # both biases in the input projection
    batch, hidden = steps.batch, r.shape[1]
    r_t = steps.const("R", r)
    gate_axis = ctx.m.add_const(ctx._tname("axis"), np.asarray(1, np.int32))
    peeps = [] if peep is None else [steps.const(f"P{k}", peep[k * hidden:(k + 1) * hidden]) for k in range(3)]
    hs = [None] * steps.seq
    for t in steps.order:
        name = steps.name(t)
        gates = steps.projected(t)
        if h is not None:
            rh = ctx.float_op("FULLY_CONNECTED", [h, r_t, None], (batch, 4 * hidden), name + "/rh", layer, FC)
            gates = ctx.float_binary("ADD", gates, rh, name + "/gates", layer)
        parts = [ctx.new_f(f"{name}/{g}", (batch, hidden)) for g in ONNX_GATES]
        ctx.m.add_op("SPLIT", [gate_axis, gates], parts, ("SplitOptions", {"NumSplits": 4}), layer=layer)
        pre = dict(zip(ONNX_GATES, parts))
        if peep is not None and c is not None:  # i and f look at the previous cell
            for k, gate in ((0, "i"), (2, "f")):
                pre[gate] = ctx.float_binary("ADD", pre[gate], ctx.float_binary(
                    "MUL", c, peeps[k], f"{name}/p{gate}_c", layer), f"{name}/{gate}_peep", layer)
        i, f = (ctx.float_op("LOGISTIC", [pre[g]], (batch, hidden), f"{name}/{g}_sig", layer) for g in "if")
        g = ctx.float_op("TANH", [pre["c"]], (batch, hidden), name + "/c_tanh", layer)
        c_new = ctx.float_binary("MUL", i, g, name + "/ig", layer)
        if c is not None:
            c_new = ctx.float_binary("ADD", ctx.float_binary("MUL", f, c, name + "/fc", layer), c_new, name + "/c",
                                     layer)
        c = c_new
        if peep is not None:  # o looks at the new cell
            pre["o"] = ctx.float_binary("ADD", pre["o"], ctx.float_binary("MUL", c, peeps[1], f"{name}/po_c", layer),
                                        f"{name}/o_peep", layer)
        o = ctx.float_op("LOGISTIC", [pre["o"]], (batch, hidden), f"{name}/o_sig", layer)
        h = ctx.float_binary("MUL", o, ctx.float_op("TANH", [c], c.shape, name + "/tanh_c", layer), name + "/h", layer)
        hs[t] = h
    return steps.stacked(hs, hidden), h, c


def _final(ctx, node, index: int, states, batch: int, hidden: int, layer: str) -> None:
    """ONNX's Y_h (index 1) or Y_c (2), [num_directions, batch, hidden], from each direction's last state."""
    out = ctx.out_f(node.output[index], False)
    parts = [ctx.reshape(t, ctx.new_f(f"{layer}/final{index}_{k}", (1, batch, hidden)), layer)
             for k, t in enumerate(states)]
    if len(parts) == 1:
        ctx.reshape(parts[0], out, layer)
    else:
        ctx.m.add_op("CONCATENATION", parts, [out], ("ConcatenationOptions", {"Axis": 0, "FusedActivationFunction": 0}),
                     layer=layer)


def _weights(ctx, node, directions: int, gate_rows: int):
    """W, R and B of an ONNX LSTM / GRU / RNN node as float arrays; B is zeros when the node has none (its W and R
    halves: 2 x ``gate_rows`` per direction)."""
    w, r = _float_const(ctx, node, node.input[1]), _float_const(ctx, node, node.input[2])
    b = _float_const(ctx, node, node.input[3]) if len(node.input) > 3 and node.input[3] else \
        np.zeros((directions, 2 * gate_rows), np.float32)
    return w, r, b


def _lstm(ctx, node) -> str:
    layer = layer_name(node)
    hidden = int(attr(node, "hidden_size"))
    acts = _activations(node)
    if acts and acts != ["sigmoid", "tanh", "tanh"] * (len(acts) // 3):
        raise NotSupportedError(f"export-tflite: {layer} uses activations {acts}; the export computes "
                                "sigmoid gates with tanh cell and hidden activations only")
    reverse = _unrollable(ctx, node)
    finals = _finals(ctx, node, (1, 2))
    w, r, b = _weights(ctx, node, len(reverse), 4 * hidden)
    x = ctx.f_of(node.input[0], layer)
    batch = x.shape[1]
    inits = [(_initial(ctx, node, 5, d, batch, hidden, layer), _initial(ctx, node, 6, d, batch, hidden, layer))
             for d in range(len(reverse))]
    peep = _float_const(ctx, node, node.input[7]) if len(node.input) > 7 and node.input[7] else None
    runs = [_direction(ctx, x, w[d], r[d], b[d][:4 * hidden] + b[d][4 * hidden:], rev, layer, *inits[d],
                       peep=None if peep is None or not np.any(peep[d]) else peep[d])
            for d, rev in enumerate(reverse)]
    return _outputs(ctx, node, [y for y, _, _ in runs], finals, {k: [run[k] for run in runs] for k in finals},
                    batch, hidden, any(t is not None for pair in inits for t in pair))


register("LSTM", float=_lstm)


# ------------------------------------------------------------------------------------------------------------- GRU
def _gru_direction(ctx, x, w: np.ndarray, r: np.ndarray, wb: np.ndarray, rb: np.ndarray, before_reset: bool,
                   reverse: bool, layer: str, h=None):
    """One GRU direction (ONNX's zrh gate order): its hidden states as ONNX's Y slice [seq, 1, batch, hidden] and its
    final h. ``before_reset``: linear_before_reset=1 (PyTorch's GRU), the reset gate scaling R_h h + Rb_h."""
    steps = _Steps(ctx, x, w, wb, reverse, layer)
    batch, hidden = steps.batch, r.shape[1]
    r_all, rb_all = steps.const("R", r), steps.const("Rb", rb)
    r_h, rb_h = steps.const("Rh", r[2 * hidden:]), steps.const("Rbh", rb[2 * hidden:])
    axis = ctx.m.add_const(ctx._tname("axis"), np.asarray(1, np.int32))
    if h is None:
        h = steps.const("h0", np.zeros((batch, hidden), np.float32))
    hs = [None] * steps.seq
    for t in steps.order:
        name = steps.name(t)
        xg = steps.projected(t)
        hg = ctx.float_op("FULLY_CONNECTED", [h, r_all, rb_all], (batch, 3 * hidden), name + "/rh", layer, FC)
        xz, xr, xh = (ctx.new_f(f"{name}/x{g}", (batch, hidden)) for g in "zrh")
        hz, hr, hh = (ctx.new_f(f"{name}/h{g}", (batch, hidden)) for g in "zrh")
        ctx.m.add_op("SPLIT", [axis, xg], [xz, xr, xh], ("SplitOptions", {"NumSplits": 3}), layer=layer)
        ctx.m.add_op("SPLIT", [axis, hg], [hz, hr, hh], ("SplitOptions", {"NumSplits": 3}), layer=layer)
        z = ctx.float_op("LOGISTIC", [ctx.float_binary("ADD", xz, hz, name + "/z_in", layer)], (batch, hidden),
                         name + "/z", layer)
        rg = ctx.float_op("LOGISTIC", [ctx.float_binary("ADD", xr, hr, name + "/r_in", layer)], (batch, hidden),
                          name + "/r", layer)
        if before_reset:
            gated = ctx.float_binary("MUL", rg, hh, name + "/r_hh", layer)
        else:
            rh = ctx.float_binary("MUL", rg, h, name + "/r_h", layer)
            gated = ctx.float_op("FULLY_CONNECTED", [rh, r_h, rb_h], (batch, hidden), name + "/rh_h", layer, FC)
        cand = ctx.float_op("TANH", [ctx.float_binary("ADD", xh, gated, name + "/h_in", layer)], (batch, hidden),
                            name + "/h_tilde", layer)
        # (1 - z) * h~ + z * h = h~ + z * (h - h~)
        step = ctx.float_binary("MUL", z, ctx.float_binary("SUB", h, cand, name + "/h_diff", layer), name + "/zd",
                                layer)
        h = ctx.float_binary("ADD", cand, step, name + "/h", layer)
        hs[t] = h
    return steps.stacked(hs, hidden), h


def _gru(ctx, node) -> str:
    layer = layer_name(node)
    hidden = int(attr(node, "hidden_size"))
    acts = _activations(node)
    if acts and acts != ["sigmoid", "tanh"] * (len(acts) // 2):
        raise NotSupportedError(f"export-tflite: {layer} uses activations {acts}; the export computes sigmoid gates "
                                "with a tanh candidate only")
    reverse = _unrollable(ctx, node)
    finals = _finals(ctx, node, (1,))
    w, r, b = _weights(ctx, node, len(reverse), 3 * hidden)
    before_reset = bool(attr(node, "linear_before_reset", 0))
    x = ctx.f_of(node.input[0], layer)
    batch = x.shape[1]
    inits = [_initial(ctx, node, 5, d, batch, hidden, layer) for d in range(len(reverse))]
    runs = [_gru_direction(ctx, x, w[d], r[d], b[d][:3 * hidden], b[d][3 * hidden:], before_reset, rev, layer,
                           inits[d]) for d, rev in enumerate(reverse)]
    return _outputs(ctx, node, [y for y, _ in runs], finals, {1: [h for _, h in runs]}, batch, hidden,
                    any(t is not None for t in inits))


register("GRU", float=_gru)


# ------------------------------------------------------------------------------------------------------------- RNN
RNN_ACTIVATIONS = {"tanh": "TANH", "relu": "RELU", "sigmoid": "LOGISTIC"}


def _rnn_direction(ctx, x, w: np.ndarray, r: np.ndarray, bias: np.ndarray, act: str, reverse: bool, layer: str,
                   h=None):
    """One direction of a plain RNN (h = act(x W^T + h R^T + Wb + Rb)): ONNX's Y slice and the final h."""
    steps = _Steps(ctx, x, w, bias, reverse, layer)
    batch, hidden = steps.batch, r.shape[1]
    r_t = steps.const("R", r)
    hs = [None] * steps.seq
    for t in steps.order:
        name = steps.name(t)
        pre = steps.projected(t)
        if h is not None:
            rh = ctx.float_op("FULLY_CONNECTED", [h, r_t, None], (batch, hidden), name + "/rh", layer, FC)
            pre = ctx.float_binary("ADD", pre, rh, name + "/pre", layer)
        h = ctx.float_op(act, [pre], (batch, hidden), name + "/h", layer)
        hs[t] = h
    return steps.stacked(hs, hidden), h


def _rnn(ctx, node) -> str:
    layer = layer_name(node)
    hidden = int(attr(node, "hidden_size"))
    acts = _activations(node)
    if any(a not in RNN_ACTIVATIONS for a in acts) or len(set(acts)) > 1:
        raise NotSupportedError(f"export-tflite: {layer} uses activations {acts}; the export computes one of "
                                f"{', '.join(RNN_ACTIVATIONS)} in every direction")
    reverse = _unrollable(ctx, node)
    finals = _finals(ctx, node, (1,))
    w, r, b = _weights(ctx, node, len(reverse), hidden)
    x = ctx.f_of(node.input[0], layer)
    batch = x.shape[1]
    inits = [_initial(ctx, node, 5, d, batch, hidden, layer) for d in range(len(reverse))]
    act = RNN_ACTIVATIONS[acts[0] if acts else "tanh"]
    runs = [_rnn_direction(ctx, x, w[d], r[d], b[d][:hidden] + b[d][hidden:], act, rev, layer, inits[d])
            for d, rev in enumerate(reverse)]
    return _outputs(ctx, node, [y for y, _ in runs], finals, {1: [h for _, h in runs]}, batch, hidden,
                    any(t is not None for t in inits))


register("RNN", float=_rnn)
