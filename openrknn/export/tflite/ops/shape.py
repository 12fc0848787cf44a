"""Concat / Split / Gather / Reshape / Flatten / Squeeze / Unsqueeze / Transpose / Slice / Resize / Identity."""

from __future__ import annotations

import numpy as np

from ....errors import NotSupportedError
from ..lower import TO_NCHW, TO_NHWC, Value, nhwc_shape, same_memory
from ..writer import Tensor
from . import attr, layer_name, register
from .ids import typed_operands, typed_output

NHWC_AXIS = {0: 0, 1: 3, 2: 1, 3: 2}


def _finish(ctx, node, kind: str, t, nhwc: bool, layer: str, why: str) -> None:
    """Register the output of a layout op whose int8 form keeps its input's scale."""
    shape = ctx.out_shape(node.output[0])
    if kind == "q":
        t = ctx.requantize(t, ctx.out_point(node.output[0]), layer, why)
        ctx.set_q(node.output[0], t, nhwc, shape)
    else:
        ctx.values[node.output[0]] = Value(shape, f=t, nhwc=nhwc and len(shape) == 4)


def _like(ctx, x, name: str, shape):
    return ctx.m.add_tensor(ctx._tname(name), shape, x.dtype, x.quant)


def _constant(ctx, node, k: int, what: str) -> np.ndarray:
    """Input k of the node, which its TFLite form takes as a constant; refused with the layer's name when computed."""
    if not ctx.g.is_const(node.input[k]):
        raise NotSupportedError(f"export-tflite: {layer_name(node)} takes computed {what}; only constant {what} are "
                                "exported")
    return np.asarray(ctx.g.const(node.input[k]))


def _moved(ctx, node, kind: str, builtin: str, src, operand: str, values, stored_shape, nhwc: bool,
           layer: str) -> str:
    """A data-movement op (TRANSPOSE, TILE, BROADCAST_TO) of ``src`` with one int32 constant operand, writing the
    node's output stored as ``stored_shape``; int8 keeps the input's scale."""
    out = _like(ctx, src, node.output[0], stored_shape)
    ctx.m.add_op(builtin, [src, ctx.m.add_const(ctx._tname(operand), np.asarray(values, np.int32))], [out],
                 version=2 if kind == "q" else 1, layer=layer)
    _finish(ctx, node, kind, out, nhwc, layer, f"TFLite's int8 {builtin} keeps its input scale")
    return ""


# ---------------------------------------------------------------------------------------------------------- Concat
def _concat_const(ctx, name: str, kind: str, rank: int, nhwc: bool, point) -> Tensor:
    """A constant part of a concatenation (a ViT's class token, folded from its Expand): float, or on the output's
    int8 point, which is what quantizing the concatenation's output does to it in our graph."""
    qc = ctx.g.quant_const(name)
    arr = qc.dequantized() if qc is not None else np.asarray(ctx.g.const(name), np.float32)
    if kind == "f":
        return ctx.const_for(arr, rank, nhwc, name)
    ints = np.clip(np.round(arr / point.scale[0]) + point.zero_point[0], -128, 127)
    t = ctx.const_for(ints, rank, nhwc, name, np.int8)
    t.quant = point
    return t


def _concat(ctx, node, kind: str, act=None) -> str:
    layer = layer_name(node)
    acts = set(ctx.activation_inputs(node))
    typed = [ctx.value(i).f.dtype for i in acts
             if ctx.value(i).q is None and np.dtype(ctx.value(i).f.dtype).kind in "iu"]
    if kind == "f" and typed:  # integer ids or coordinates (M-LSD's line centres after its TopK), in the ONNX order
        dtype = np.dtype(typed[0])
        ins = typed_operands(ctx, node.input, dtype, layer, "joins")
        axis = attr(node, "axis") % len(ctx.out_shape(node.output[0]))
        ctx.m.add_op("CONCATENATION", ins, [typed_output(ctx, node.output[0], dtype)],
                     ("ConcatenationOptions", {"Axis": axis, "FusedActivationFunction": 0}), layer=layer)
        return f"on {dtype.name} values, exact"
    rank = len(ctx.out_shape(node.output[0]))
    axis = attr(node, "axis") % rank
    nhwc = rank == 4 and any(ctx.value(i).nhwc for i in acts)
    point = ctx.out_point(node.output[0]) if kind == "q" else None
    ins = [_concat_const(ctx, i, kind, rank, nhwc, point) if i not in acts else
           ctx.view(i, kind, nhwc, layer) if rank == 4 else (ctx.value(i).q if kind == "q" else ctx.f_of(i, layer))
           for i in node.input]
    if nhwc:
        axis = NHWC_AXIS[axis]
    opts = ("ConcatenationOptions", {"Axis": axis, "FusedActivationFunction": 0})
    if kind == "q":
        ins = [ctx.requantize(t, point, layer, "TFLite's int8 CONCATENATION needs every input on the output's "
                              "scale") for t in ins]
        out = ctx.out_q(node.output[0], nhwc)
        ctx.m.add_op("CONCATENATION", ins, [out], opts, version=2)
    else:
        ctx.m.add_op("CONCATENATION", ins, [ctx.out_f(node.output[0], nhwc)], opts)
    return ""


register("Concat", int8=lambda c, n, a: _concat(c, n, "q"), float=lambda c, n: _concat(c, n, "f"))


# --------------------------------------------------------------------------------------------------------- Reshape
def _reshape(ctx, node, kind: str, act=None) -> str:
    layer = layer_name(node)
    v = ctx.value(node.input[0])
    if len(v.shape) == 4 and not (v.nhwc and same_memory(v.shape)):  # same bytes in both orders: no conversion
        x = ctx.view(node.input[0], kind, False, layer)
    else:
        x = v.q if kind == "q" else ctx.f_of(node.input[0], layer)
    shape = ctx.out_shape(node.output[0])
    out = ctx.reshape(x, _like(ctx, x, node.output[0], shape), layer)
    _finish(ctx, node, kind, out, False, layer, "TFLite's int8 RESHAPE keeps its input scale")
    return ""


register("Reshape", "Flatten", "Squeeze", "Unsqueeze", int8=lambda c, n, a: _reshape(c, n, "q"),
         float=lambda c, n: _reshape(c, n, "f"))


# ------------------------------------------------------------------------------------------------------- Transpose
def _transpose(ctx, node, kind: str, act=None) -> str:
    layer = layer_name(node)
    v = ctx.value(node.input[0])
    rank = len(v.shape)
    p = list(attr(node, "perm", list(range(rank))[::-1]))
    src = v.q if kind == "q" else (v.f if v.f is not None else ctx.f_of(node.input[0], layer))
    perm = [TO_NCHW[i] for i in p] if v.nhwc else p
    out_nhwc = rank == 4
    if out_nhwc:
        perm = [perm[i] for i in TO_NHWC]
    if perm == list(range(rank)):
        if kind == "q":
            _finish(ctx, node, kind, src, out_nhwc, layer, "TFLite's int8 TRANSPOSE keeps its input scale")
        else:  # the layout change is the one this exporter makes anyway: nothing to run
            ctx.values[node.output[0]] = Value(ctx.out_shape(node.output[0]), q=v.q, f=v.f, nhwc=out_nhwc)
        return ""
    shape = ctx.out_shape(node.output[0])
    return _moved(ctx, node, kind, "TRANSPOSE", src, "perm", perm, nhwc_shape(shape) if out_nhwc else shape,
                  out_nhwc, layer)


register("Transpose", int8=lambda c, n, a: _transpose(c, n, "q"), float=lambda c, n: _transpose(c, n, "f"))


# ----------------------------------------------------------------------------------------------------------- Slice
def _slice(ctx, node, kind: str, act=None) -> str:
    layer = layer_name(node)
    if ctx.g.positions_computed(node):
        return _slice_at_computed(ctx, node, kind, layer)
    v = ctx.value(node.input[0])
    rank = len(v.shape)
    starts = [int(s) for s in _constant(ctx, node, 1, "start positions").reshape(-1)]
    ends = [int(e) for e in _constant(ctx, node, 2, "end positions").reshape(-1)]
    axes = [int(a) % rank for a in _constant(ctx, node, 3, "axes").reshape(-1)] \
        if len(node.input) > 3 and node.input[3] else list(range(len(starts)))
    steps = [int(s) for s in _constant(ctx, node, 4, "steps").reshape(-1)] \
        if len(node.input) > 4 and node.input[4] else [1] * len(starts)
    if any(s == 0 for s in steps):
        raise NotSupportedError(f"export-tflite: {layer} slices with step 0, which ONNX does not allow")
    begin, end, stride = [0] * rank, list(v.shape), [1] * rank
    # TFLite's end mask: a backward slice that runs through index 0, or a forward one to the end of a length known
    # only when the model runs (after an NMS)
    to_start = [d < 0 for d in v.shape]
    end = [max(d, 0) for d in end]
    for s, e, a, st in zip(starts, ends, axes, steps):
        dim = v.shape[a]
        if dim < 0:
            if st != 1 or s < 0 or e < 0:
                raise NotSupportedError(f"export-tflite: {layer} slices axis {a}, whose length is known only when "
                                        "the model runs, from its end or with a step; only forward slices from "
                                        "its start are exported")
            to_start[a] = e >= 2 ** 31 - 1     # to the end; a smaller end TFLite clamps to the length, as ONNX
            begin[a], end[a] = s, 0 if to_start[a] else e
            continue
        s, e = (s + dim if s < 0 else s), (e + dim if e < 0 else e)
        if st > 0:
            s, e = max(0, min(dim, s)), max(0, min(dim, e))
        else:  # ONNX clamps a backward slice to [dim - 1, -1]; TFLite would read an end of -1 as dim - 1
            s, e = max(-1, min(dim - 1, s)), max(-1, min(dim - 1, e))
            to_start[a] = e < 0
            e = max(e, 0)
        begin[a], end[a], stride[a] = s, e, st
    nhwc = v.nhwc
    if nhwc:
        begin, end, stride, to_start = ([x[i] for i in TO_NHWC] for x in (begin, end, stride, to_start))
    end_mask = sum(1 << i for i, m in enumerate(to_start) if m)
    src = v.q if kind == "q" else ctx.f_of(node.input[0], layer)
    shape = ctx.out_shape(node.output[0])
    out = _like(ctx, src, node.output[0], nhwc_shape(shape) if nhwc else shape)
    consts = [ctx.m.add_const(ctx._tname(n), np.asarray(x, np.int32)) for n, x in
              (("begin", begin), ("end", end), ("strides", stride))]
    ctx.m.add_op("STRIDED_SLICE", [src] + consts, [out], ("StridedSliceOptions", {"EndMask": end_mask}),
                 version=2 if kind == "q" else 1, layer=layer)
    _finish(ctx, node, kind, out, nhwc, layer, "TFLite's int8 STRIDED_SLICE keeps its input scale")
    return ""


register("Slice", int8=lambda c, n, a: _slice(c, n, "q"), float=lambda c, n: _slice(c, n, "f"))


def positions(ctx, name: str, take: list, layer: str):
    """An int32 vector of computed (or constant) integer positions ``name`` picked in ``take`` order, where -1 in
    ``take`` means 0 (a dim left alone): GATHER from [0, positions...], the int64 values clamped to int32 first."""
    if ctx.g.is_const(name):
        values = np.asarray(ctx.g.const(name), np.int64).reshape(-1)
        full = np.concatenate([[0], np.clip(values, -2 ** 31, 2 ** 31 - 1)])
        return ctx.m.add_const(ctx._tname(name), full[[k + 1 for k in take]].astype(np.int32))
    src = ctx.f_of(name, layer)
    if np.dtype(src.dtype) not in (np.int32, np.int64):
        raise NotSupportedError(f"export-tflite: {layer} takes {np.dtype(src.dtype).name} positions; ONNX gives "
                                "integer ones")
    n = int(np.prod(src.shape))
    if np.dtype(src.dtype) == np.int64:  # TFLite's slicing ops take int32: INT64_MAX ("to the end") kept as the most
        lo, hi = (ctx.m.add_const(ctx._tname(t), np.asarray(v, np.int64)) for t, v in (("lo", -2 ** 31),
                                                                                       ("hi", 2 ** 31 - 1)))
        low = ctx.m.add_tensor(ctx._tname(name + "/hi"), (n,), np.int64)
        ctx.m.add_op("MINIMUM", [src, hi], [low], layer=layer)
        high = ctx.m.add_tensor(ctx._tname(name + "/lo"), (n,), np.int64)
        ctx.m.add_op("MAXIMUM", [low, lo], [high], layer=layer)
        src = ctx.m.add_tensor(ctx._tname(name + "/i32"), (n,), np.int32)
        ctx.m.add_op("CAST", [high], [src], layer=layer)
    joined = ctx.m.add_tensor(ctx._tname(name + "/with_zero"), (n + 1,), np.int32)
    ctx.m.add_op("CONCATENATION", [ctx.m.add_const(ctx._tname("zero"), np.zeros(1, np.int32)), src], [joined],
                 ("ConcatenationOptions", {"Axis": 0, "FusedActivationFunction": 0}), layer=layer)
    out = ctx.m.add_tensor(ctx._tname(name + "/picked"), (len(take),), np.int32)
    ctx.m.add_op("GATHER", [joined, ctx.m.add_const(ctx._tname("take"), np.asarray([k + 1 for k in take],
                                                                                    np.int32))],
                 [out], ("GatherOptions", {"Axis": 0, "BatchDims": 0}), layer=layer)
    return out


def _slice_at_computed(ctx, node, kind: str, layer: str) -> str:
    """A Slice whose starts / ends the graph computes (a crop its inputs decide) -> STRIDED_SLICE with begin and end
    tensors in the stored order of dims; the dims it leaves alone run whole (end mask). Its output's size is known
    only when the model runs."""
    v = ctx.value(node.input[0])
    rank = len(v.shape)
    n_axes = int(np.prod(ctx.g.shape(node.input[1]) or (0,)))
    axes = [int(a) % rank for a in _constant(ctx, node, 3, "axes").reshape(-1)] \
        if len(node.input) > 3 and node.input[3] else list(range(n_axes))
    steps = _constant(ctx, node, 4, "steps").reshape(-1) if len(node.input) > 4 and node.input[4] else [1]
    if any(int(s) != 1 for s in steps) or not axes:
        raise NotSupportedError(f"export-tflite: {layer} slices at computed positions with steps {list(steps)}; "
                                "only steps of 1 are exported there")
    order = list(TO_NHWC) if v.nhwc else list(range(rank))       # stored dim -> ONNX dim
    take = [axes.index(d) if d in axes else -1 for d in order]
    begin = positions(ctx, node.input[1], take, layer)
    end = positions(ctx, node.input[2], take, layer)
    end_mask = sum(1 << i for i, k in enumerate(take) if k < 0)
    src = v.q if kind == "q" else ctx.f_of(node.input[0], layer)
    shape = ctx.out_shape(node.output[0])
    out = _like(ctx, src, node.output[0], nhwc_shape(shape) if v.nhwc else shape)
    ctx.m.add_op("STRIDED_SLICE", [src, begin, end, ctx.m.add_const(ctx._tname("strides"), np.ones(rank, np.int32))],
                 [out], ("StridedSliceOptions", {"BeginMask": end_mask, "EndMask": end_mask}),
                 version=2 if kind == "q" else 1, layer=layer)
    _finish(ctx, node, kind, out, v.nhwc, layer, "TFLite's int8 STRIDED_SLICE keeps its input scale")
    return "at positions the graph computes; the output's size is known when the model runs"


# ----------------------------------------------------------------------------------------------------------- Split
def _split_sizes(ctx, node, dim: int) -> list:
    sizes = attr(node, "split")
    if sizes is None and len(node.input) > 1 and node.input[1]:
        sizes = np.asarray(ctx.g.const(node.input[1])).reshape(-1).tolist()
    n = len(node.output)
    if sizes is None:
        per = -(-dim // n)  # ONNX: equal parts, the last one smaller when dim does not divide
        sizes = [min(per, dim - k * per) for k in range(n)]
    return [int(x) for x in sizes]


def _split(ctx, node, kind: str, act=None) -> str:
    """One STRIDED_SLICE per output (each keeps the input's scale; an output on another scale is requantized)."""
    layer = layer_name(node)
    v = ctx.value(node.input[0])
    rank = len(v.shape)
    axis = attr(node, "axis", 0) % rank
    if v.shape[axis] < 0:
        raise NotSupportedError(f"export-tflite: {layer} splits axis {axis}, whose length is known only when the "
                                "model runs")
    sizes = _split_sizes(ctx, node, v.shape[axis])
    src = v.q if kind == "q" else ctx.f_of(node.input[0], layer)
    nhwc = v.nhwc
    start = 0
    whole = [d < 0 for d in v.shape]   # a run-time length: taken whole (TFLite's end mask)
    for out_name, size in zip(node.output, sizes):
        begin, end = [0] * rank, [max(d, 0) for d in v.shape]
        begin[axis], end[axis] = start, start + size
        start += size
        if not out_name:
            continue
        mask = whole
        if nhwc:
            begin, end, mask = ([x[i] for i in TO_NHWC] for x in (begin, end, whole))
        end_mask = sum(1 << i for i, m in enumerate(mask) if m)
        shape = ctx.out_shape(out_name)
        out = _like(ctx, src, out_name, nhwc_shape(shape) if nhwc else shape)
        consts = [ctx.m.add_const(ctx._tname(n), np.asarray(x, np.int32)) for n, x in
                  (("begin", begin), ("end", end), ("strides", [1] * rank))]
        ctx.m.add_op("STRIDED_SLICE", [src] + consts, [out], ("StridedSliceOptions", {"EndMask": end_mask}),
                     version=2 if kind == "q" else 1, layer=layer)
        if kind == "q":
            t = ctx.requantize(out, ctx.out_point(out_name), layer, "TFLite's int8 STRIDED_SLICE keeps its input "
                               "scale")
            ctx.set_q(out_name, t, nhwc, shape)
        else:
            ctx.values[out_name] = Value(shape, f=out, nhwc=nhwc and len(shape) == 4)
    return ""


register("Split", int8=lambda c, n, a: _split(c, n, "q"), float=lambda c, n: _split(c, n, "f"))


# ---------------------------------------------------------------------------------------------------------- Gather
def _gather_ok(ctx, node) -> bool:
    return ctx.g.is_const(node.input[1])


def _lookup(ctx, node) -> str:
    """An embedding lookup: rows of a constant table at computed integer ids (token or character ids). TFLite's
    GATHER on the float table (a quantized one dequantized: the point after it quantizes the rows it picks), or on
    an integer table in its own type."""
    layer = layer_name(node)
    ids = ctx.f_of(node.input[1], layer)
    if np.dtype(ids.dtype) not in (np.int32, np.int64):
        raise NotSupportedError(f"export-tflite: {layer} gathers at {ids.dtype.name} positions; TFLite's GATHER takes "
                                "int32 or int64")
    qc = ctx.g.quant_const(node.input[0])
    table = qc.dequantized() if qc is not None else np.asarray(ctx.g.const(node.input[0]))
    if table.dtype.kind not in "iu":
        table = table.astype(np.float32)
    axis = attr(node, "axis", 0) % table.ndim
    params = ctx.m.add_const(ctx._tname(node.input[0]), np.ascontiguousarray(table))
    if table.dtype == np.float32:
        out = ctx.out_f(node.output[0], False)
    else:  # an integer table keeps its type: whatever reads the rows decides what they mean
        out = ctx.m.add_tensor(ctx._tname(node.output[0]), ctx.out_shape(node.output[0]), table.dtype)
        ctx.set_f(node.output[0], out)
    ctx.m.add_op("GATHER", [params, ids], [out], ("GatherOptions", {"Axis": axis, "BatchDims": 0}), layer=layer)
    return f"an embedding lookup: {table.dtype.name} rows of the table at {np.dtype(ids.dtype).name} ids"


def _gather(ctx, node, kind: str, act=None) -> str:
    """Gather with constant indices (e.g. the channel order range split writes): TFLite's GATHER, which keeps the
    input's scale."""
    layer = layer_name(node)
    if not ctx.g.is_const(node.input[1]):
        if kind == "f" and (ctx.g.is_const(node.input[0]) or ctx.g.quant_const(node.input[0]) is not None):
            return _lookup(ctx, node)
        return _picked(ctx, node, layer)
    v = ctx.value(node.input[0])
    rank = len(v.shape)
    axis = attr(node, "axis", 0) % rank
    idx = np.asarray(ctx.g.const(node.input[1]), np.int64)
    if v.shape[axis] < 0 and (idx < 0).any():
        raise NotSupportedError(f"export-tflite: {layer} gathers from the end of axis {axis}, whose length is known "
                                "only when the model runs")
    idx = np.where(idx < 0, idx + v.shape[axis], idx).astype(np.int32)
    nhwc = v.nhwc and rank == 4 and idx.ndim == 1
    src = v.q if kind == "q" else ctx.f_of(node.input[0], layer)
    if v.nhwc and not nhwc:
        src = ctx.view(node.input[0], kind, False, layer)
    tfl_axis = NHWC_AXIS[axis] if nhwc else axis
    shape = ctx.out_shape(node.output[0])
    out = _like(ctx, src, node.output[0], nhwc_shape(shape) if nhwc else shape)
    ctx.m.add_op("GATHER", [src, ctx.m.add_const(ctx._tname("indices"), idx)], [out],
                 ("GatherOptions", {"Axis": tfl_axis, "BatchDims": 0}), version=2 if kind == "q" else 1, layer=layer)
    _finish(ctx, node, kind, out, nhwc, layer, "TFLite's int8 GATHER keeps its input scale")
    return ""


register("Gather", int8=lambda c, n, a: _gather(c, n, "q"), float=lambda c, n: _gather(c, n, "f"),
         int8_ok=_gather_ok)


def _picked(ctx, node, layer: str) -> str:
    """Gather at computed positions from a computed tensor (the rows an NMS kept, at a flat index the graph works
    out) -> GATHER on the tensor in the model's own order of dims, in its own type (float, or integer ids)."""
    v = ctx.value(node.input[0])
    src = ctx.view(node.input[0], "f", False, layer) if len(v.shape) == 4 else ctx.f_of(node.input[0], layer)
    idx = ctx.f_of(node.input[1], layer)
    if np.dtype(idx.dtype) not in (np.int32, np.int64):
        raise NotSupportedError(f"export-tflite: {layer} gathers at {np.dtype(idx.dtype).name} positions; TFLite's "
                                "GATHER takes int32 or int64")
    axis = attr(node, "axis", 0) % len(v.shape)
    out = _like(ctx, src, node.output[0], ctx.out_shape(node.output[0]))
    ctx.m.add_op("GATHER", [src, idx], [out], ("GatherOptions", {"Axis": axis, "BatchDims": 0}), layer=layer)
    ctx.values[node.output[0]] = Value(tuple(out.shape), f=out)
    return ("at computed positions, which must not be negative (TFLite's GATHER reads no index from the end; the "
            "interpreter stops with an error on one)")


def _shape(ctx, node) -> str:
    """Shape of a tensor whose length is known only when the model runs (the number of rows an NMS kept; any other
    shape the build folded into a constant) -> TFLite's SHAPE, in the ONNX order of dims."""
    layer = layer_name(node)
    if attr(node, "start", 0) != 0 or attr(node, "end") is not None:
        raise NotSupportedError(f"export-tflite: {layer} takes part of a shape (start / end); only whole shapes of "
                                "run-time lengths are exported")
    v = ctx.value(node.input[0])
    src = ctx.view(node.input[0], "f", False, layer) if len(v.shape) == 4 else ctx.f_of(node.input[0], layer)
    out = ctx.m.add_tensor(ctx._tname(node.output[0]), (len(v.shape),), np.int64)
    ctx.m.add_op("SHAPE", [src], [out], ("ShapeOptions", {"OutType": 4}), layer=layer)   # 4: INT64, as ONNX's
    ctx.set_f(node.output[0], out)
    return "the run-time shape"


register("Shape", float=_shape)


def _gather_nd(ctx, node, kind: str, act=None) -> str:
    """GatherND (batch_dims 0) at computed indices (a pose model picks its peak cells so) -> GATHER_ND on the tensor
    in the model's own order of dims; int8 keeps the input's scale."""
    layer = layer_name(node)
    if attr(node, "batch_dims", 0):
        raise NotSupportedError(f"export-tflite: {layer} is a GatherND with batch_dims; TFLite's GATHER_ND has none")
    src = ctx.view(node.input[0], kind, False, layer)  # in the model's own order of dims
    idx = ctx.g.const(node.input[1]) if ctx.g.is_const(node.input[1]) else None
    idx = (ctx.m.add_const(ctx._tname("indices"), np.asarray(idx, np.int32)) if idx is not None
           else ctx.f_of(node.input[1], layer))
    if np.dtype(idx.dtype) not in (np.int32, np.int64):
        raise NotSupportedError(f"export-tflite: {layer} gathers at {np.dtype(idx.dtype).name} indices; TFLite's "
                                "GATHER_ND takes int32 or int64")
    out = _like(ctx, src, node.output[0], ctx.out_shape(node.output[0]))
    ctx.m.add_op("GATHER_ND", [src, idx], [out], version=2 if kind == "q" else 1, layer=layer)
    _finish(ctx, node, kind, out, False, layer, "TFLite's int8 GATHER_ND keeps its input scale")
    return ""


register("GatherND", int8=lambda c, n, a: _gather_nd(c, n, "q"), float=lambda c, n: _gather_nd(c, n, "f"))


def _gather_elements(ctx, node, kind: str, act=None) -> str:
    """GatherElements (a DETR decoder picks its top queries' features and boxes so, at TopK's indices) ->
    GATHER_ND at the full index of each output element: the given index (wrapped by FLOOR_MOD, as ONNX allows
    negative ones) on the gathered axis, the element's own position on every other axis. In the model's own order of
    dims; int8 keeps the input's scale."""
    layer = layer_name(node)
    name = node.input[0]
    if ctx.g.is_const(name) or ctx.g.quant_const(name) is not None:  # a table (a DETR's anchors): float
        qc = ctx.g.quant_const(name)
        table = qc.dequantized() if qc is not None else np.asarray(ctx.g.const(name), np.float32)
        src, dims = ctx.m.add_const(ctx._tname(name), table), list(table.shape)
    else:
        src, dims = ctx.view(name, kind, False, layer), list(ctx.value(name).shape)
    rank = len(dims)
    axis = attr(node, "axis", 0) % rank
    shape = tuple(ctx.out_shape(node.output[0]))
    grid = np.stack(np.meshgrid(*[np.arange(d) for d in shape], indexing="ij"), -1).astype(np.int32)
    if ctx.g.is_const(node.input[1]):
        idx = np.asarray(ctx.g.const(node.input[1]), np.int64).reshape(shape)
        grid[..., axis] = np.where(idx < 0, idx + dims[axis], idx)
        index = ctx.m.add_const(ctx._tname("indices"), grid)
    else:
        idx = ctx.view(node.input[1], "f", False, layer)
        if np.dtype(idx.dtype) not in (np.int32, np.int64):
            raise NotSupportedError(f"export-tflite: {layer} gathers at {np.dtype(idx.dtype).name} indices; "
                                    "GatherElements takes int32 or int64")
        if np.dtype(idx.dtype) != np.int32:
            idx32 = ctx.m.add_tensor(ctx._tname(f"{layer}/indices_int32"), shape, np.int32)
            ctx.m.add_op("CAST", [idx], [idx32], layer=layer)
            idx = idx32
        wrapped = ctx.m.add_tensor(ctx._tname(f"{layer}/indices_wrapped"), shape, np.int32)
        ctx.m.add_op("FLOOR_MOD", [idx, ctx.m.add_const(ctx._tname("size"), np.asarray(dims[axis], np.int32))],
                     [wrapped], layer=layer)
        column = ctx.m.add_tensor(ctx._tname(f"{layer}/indices_column"), shape + (1,), np.int32)
        ctx.reshape(wrapped, column, layer)
        parts = [column if k == axis else ctx.m.add_const(ctx._tname(f"position{k}"), grid[..., k:k + 1])
                 for k in range(rank)]
        index = ctx.m.add_tensor(ctx._tname(f"{layer}/indices_full"), shape + (rank,), np.int32)
        ctx.m.add_op("CONCATENATION", parts, [index], ("ConcatenationOptions", {"Axis": rank,
                                                                               "FusedActivationFunction": 0}),
                     layer=layer)
    out = _like(ctx, src, node.output[0], shape)
    ctx.m.add_op("GATHER_ND", [src, index], [out], version=2 if kind == "q" else 1, layer=layer)
    _finish(ctx, node, kind, out, False, layer, "TFLite's int8 GATHER_ND keeps its input scale")
    return ""


register("GatherElements", int8=lambda c, n, a: _gather_elements(c, n, "q"),
         float=lambda c, n: _gather_elements(c, n, "f"))


def _tile(ctx, node, kind: str, act=None) -> str:
    """Tile by constant repeats (a transformer's queries repeated over the batch) -> TILE, in the layout the input
    is stored in; int8 keeps the input's scale."""
    layer = layer_name(node)
    reps = [int(r) for r in np.ravel(_constant(ctx, node, 1, "repeats"))]
    v = ctx.value(node.input[0])
    nhwc = v.nhwc and len(v.shape) == 4
    if nhwc:
        reps = [reps[0], reps[2], reps[3], reps[1]]
    src = v.q if kind == "q" else ctx.f_of(node.input[0], layer)
    shape = ctx.out_shape(node.output[0])
    return _moved(ctx, node, kind, "TILE", src, "multiples", reps, nhwc_shape(shape) if nhwc else shape, nhwc, layer)


register("Tile", int8=lambda c, n, a: _tile(c, n, "q"), float=lambda c, n: _tile(c, n, "f"))


def _scatter_nd(ctx, node) -> str:
    """ScatterND at constant indices (a decode written into its output in place: "with post" YOLOX and older YOLOv5
    exports assign the decoded boxes to a slice so) -> in float, SCATTER_ND of the updates onto zeros plus the data
    times a constant mask that is 0 where an update lands: TFLite's SCATTER_ND starts from zeros, ONNX's from the
    data."""
    layer = layer_name(node)
    reduction = attr(node, "reduction", b"none")
    if (reduction.decode() if isinstance(reduction, bytes) else reduction) != "none":
        raise NotSupportedError(f"export-tflite: {layer} is a ScatterND with reduction '{reduction}'; only plain "
                                "assignment is exported")
    idx = _constant(ctx, node, 1, "indices").astype(np.int64)
    shape = tuple(ctx.value(node.input[0]).shape)
    idx = np.where(idx < 0, idx + np.asarray(shape[:idx.shape[-1]]), idx)
    flat = idx.reshape(-1, idx.shape[-1])
    if len({tuple(r) for r in flat.tolist()}) != len(flat):
        raise NotSupportedError(f"export-tflite: {layer} writes one place twice; ONNX leaves the result undefined "
                                "and TFLite's SCATTER_ND would add the updates")
    keep = np.ones(shape, np.float32)
    keep[tuple(flat.T)] = 0.0
    data, updates = (ctx.view(node.input[k], "f", False, layer) for k in (0, 2))
    scattered = ctx.float_op("SCATTER_ND", [ctx.m.add_const(ctx._tname("indices"), idx.astype(np.int32)), updates,
                                            ctx.m.add_const(ctx._tname("shape"), np.asarray(shape, np.int32))],
                             shape, node.output[0] + "/scattered", layer)
    kept = ctx.float_binary("MUL", data, ctx.m.add_const(ctx._tname("keep"), keep), node.output[0] + "/kept", layer)
    ctx.m.add_op("ADD", [kept, scattered], [ctx.out_f(node.output[0], False)],
                 ("AddOptions", {"FusedActivationFunction": 0}), layer=layer)
    return "the data where no update lands, plus SCATTER_ND of the updates onto zeros"


register("ScatterND", float=_scatter_nd)


# ---------------------------------------------------------------------------------------------------------- Expand
def _expand(ctx, node, kind: str, act=None) -> str:
    """Expand to a constant shape: TFLite's BROADCAST_TO (numpy broadcasting, as ONNX's Expand), in the model's own
    order of dims; int8 keeps the input's scale."""
    layer = layer_name(node)
    _constant(ctx, node, 1, "shapes")
    src = ctx.view(node.input[0], kind, False, layer)
    shape = ctx.out_shape(node.output[0])
    return _moved(ctx, node, kind, "BROADCAST_TO", src, "shape", shape, shape, False, layer)


register("Expand", int8=lambda c, n, a: _expand(c, n, "q"), float=lambda c, n: _expand(c, n, "f"))


# ---------------------------------------------------------------------------------------------------------- Resize
def _resize_mode(node) -> tuple:
    mode = attr(node, "mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    ctm = attr(node, "coordinate_transformation_mode", b"half_pixel")
    ctm = ctm.decode() if isinstance(ctm, bytes) else ctm
    nearest = attr(node, "nearest_mode", b"round_prefer_floor")
    nearest = nearest.decode() if isinstance(nearest, bytes) else nearest
    return mode, ctm, nearest


def _resize(ctx, node, kind: str, act=None) -> str:
    layer = layer_name(node)
    v = ctx.value(node.input[0])
    shape = ctx.out_shape(node.output[0])
    if len(shape) != 4 or shape[:2] != v.shape[:2]:
        raise NotSupportedError(f"export-tflite: {layer} resizes other than the two spatial axes of a 4-D tensor")
    mode, ctm, nearest = _resize_mode(node)
    factors = [shape[2] / v.shape[2], shape[3] / v.shape[3]]
    if mode == "nearest":
        # an integer upscale k with half-pixel centres picks (i + 0.5) / k - 0.5, within half a pixel of i // k,
        # which rounding to the nearest takes there: the asymmetric floor (an opset-9 Upsample stepped up to a
        # Resize is written so)
        if ctm in ("half_pixel", "pytorch_half_pixel") and nearest in ("round_prefer_floor", "round_prefer_ceil") \
                and all(f >= 1 and float(f).is_integer() for f in factors):
            ctm, nearest = "asymmetric", "floor"
        ok = ctm in ("asymmetric", "tf_half_pixel_for_nn", "align_corners") and (
            nearest == "floor" or (nearest == "round_prefer_floor" and all(f in (1.0, 2.0) for f in factors)))
        builtin, opts_name = "RESIZE_NEAREST_NEIGHBOR", "ResizeNearestNeighborOptions"
    elif mode == "linear":
        ok = ctm in ("asymmetric", "half_pixel", "pytorch_half_pixel", "align_corners")
        builtin, opts_name = "RESIZE_BILINEAR", "ResizeBilinearOptions"
    else:
        ok = False
    if not ok:
        raise NotSupportedError(f"export-tflite: {layer} is a Resize mode={mode!r} coordinate_transformation_mode="
                                f"{ctm!r} nearest_mode={nearest!r}, which TFLite's resize ops do not compute")
    opts = {"AlignCorners": ctm == "align_corners",
            "HalfPixelCenters": ctm in ("tf_half_pixel_for_nn", "half_pixel", "pytorch_half_pixel")}
    from_int8 = kind == "f" and ctx.is_q8(node.input[0])
    x = ctx.view(node.input[0], kind, True, layer)
    if mode == "linear":
        _bilinear_as_simulated(ctx, node, x, shape, ctm)
        return ("the simulator's float arithmetic, op for op (four neighbours gathered, weighted and added in its "
                "order): TFLite's RESIZE_BILINEAR interpolates in another order, and a tie between two levels, "
                "which a 2x upscale makes often, then rounds the other way" + (
                    "; its int8 kernel rounds fixed-point weights besides" if from_int8 else ""))
    size = ctx.m.add_const(ctx._tname("size"), np.asarray(shape[2:], np.int32))
    out = _like(ctx, x, node.output[0], nhwc_shape(shape))
    ctx.m.add_op(builtin, [x, size], [out], (opts_name, opts), version=2 if kind == "q" else 1, layer=layer)
    _finish(ctx, node, kind, out, True, layer, f"TFLite's int8 {builtin} keeps its input scale")
    if from_int8 and mode == "linear":
        return ("float, as our graph computes it: TFLite's int8 RESIZE_BILINEAR interpolates with fixed-point "
                "weights and rounds differently, and a decoder's resizes amplify that (Teflon runs no resize)")
    return ""


def _source_coordinates(n_out: int, n_in: int, ctm: str, scale=None) -> tuple:
    """onnxruntime's linear Resize along one axis, in its float32 arithmetic: (first source index, second, weight of
    the first, weight of the second) per output position. scale: the node's own scale for the axis, else
    n_out / n_in as onnxruntime derives it from sizes."""
    f32 = np.float32
    scale = f32(n_out) / f32(n_in) if scale is None else f32(scale)
    first, second, w_first, w_second = [], [], [], []
    for i in range(n_out):
        if scale == 1:
            x = f32(i)
        elif ctm == "asymmetric":
            x = f32(i) / scale
        elif ctm == "align_corners":
            x = f32(0) if n_out == 1 else f32(f32(i) * f32(n_in - 1)) / f32(n_out - 1)
        elif ctm == "pytorch_half_pixel" and n_out == 1:
            x = f32(0)
        else:   # half_pixel, pytorch_half_pixel
            x = f32(f32(f32(i) + f32(0.5)) / scale) - f32(0.5)
        x = max(f32(0), min(x, f32(n_in - 1)))
        a = min(int(x), n_in - 1)
        b = min(a + 1, n_in - 1)
        wa, wb = (f32(abs(f32(x - f32(a)))), f32(abs(f32(x - f32(b))))) if a != b else (f32(0.5), f32(0.5))
        # dx1 (distance to the first) weighs the second neighbour, dx2 the first
        first.append(a)
        second.append(b)
        w_first.append(wb)
        w_second.append(wa)
    return (np.asarray(first, np.int32), np.asarray(second, np.int32), np.asarray(w_first, f32),
            np.asarray(w_second, f32))


def _bilinear_as_simulated(ctx, node, x, shape, ctm: str) -> None:
    """A linear Resize as onnxruntime's float kernel (the simulator's) computes it: for each output value, the four
    source neighbours X11 (first row, first column), X21, X12, X22 times the products of their row and column weights,
    added left to right: dx2*dy2*X11 + dx1*dy2*X21 + dx2*dy1*X12 + dx1*dy1*X22. GATHERs pick the neighbours, the
    weight products are constants computed in float32 as the kernel computes them."""
    layer = layer_name(node)
    (_, h, w, _), (_, _, ho, wo) = x.shape, shape
    scales = [None, None]
    if len(node.input) > 2 and node.input[2] and ctx.g.is_const(node.input[2]):
        given = np.ravel(ctx.g.const(node.input[2]))
        if given.size == 4:
            scales = [float(given[2]), float(given[3])]
    y1, y2, wy1, wy2 = _source_coordinates(ho, h, ctm, scales[0])
    x1, x2, wx1, wx2 = _source_coordinates(wo, w, ctm, scales[1])
    out_name = node.output[0]

    def gather(src, idx, axis, name, n):
        out_shape = list(src.shape)
        out_shape[axis] = n
        return ctx.float_op("GATHER", [src, ctx.m.add_const(ctx._tname("indices"), idx)], out_shape,
                            f"{out_name}/{name}", layer, ("GatherOptions", {"Axis": axis, "BatchDims": 0}))

    rows = {1: gather(x, y1, 1, "rows1", ho), 2: gather(x, y2, 1, "rows2", ho)}
    total = None
    for (r, wy), (c, wx), tag in (((1, wy1), (1, wx1), "11"), ((1, wy1), (2, wx2), "21"),
                                  ((2, wy2), (1, wx1), "12"), ((2, wy2), (2, wx2), "22")):
        picked = gather(rows[r], x1 if c == 1 else x2, 2, f"x{tag}", wo)
        weight = (wx[None, :] * wy[:, None]).astype(np.float32).reshape(1, ho, wo, 1)
        term = ctx.float_binary("MUL", ctx.m.add_const(ctx._tname(f"w{tag}"), weight), picked,
                                f"{out_name}/term{tag}", layer)
        if total is None:
            total = term
        elif tag != "22":
            total = ctx.float_binary("ADD", total, term, f"{out_name}/sum{tag}", layer)
        else:
            ctx.m.add_op("ADD", [total, term], [ctx.out_f(out_name, True)],
                         ("AddOptions", {"FusedActivationFunction": 0}), layer=layer)
    ctx.tie_prone.add(out_name)   # weights of quarters and halves: many values sit exactly between two levels


# nearest-neighbour resizes copy values: exact in int8. A bilinear one is computed in float between our int8
# points; TFLite's int8 kernel rounds its fixed-point interpolation elsewhere (pose_landmark_full's segmentation
# decoder went from 1.00000 to 0.969 against the simulator over five of them).
register("Resize", int8=lambda c, n, a: _resize(c, n, "q"), float=lambda c, n: _resize(c, n, "f"),
         int8_ok=lambda c, n: _resize_mode(n)[0] == "nearest")


def _depth_space(ctx, node, kind: str, act=None) -> str:
    """DepthToSpace / SpaceToDepth of a 4-D tensor: TFLite's DEPTH_TO_SPACE / SPACE_TO_DEPTH on NHWC, which move
    channels in ONNX's DCR order (TensorFlow's); a CRD DepthToSpace (PyTorch's PixelShuffle) gets its channels put in
    DCR order by a GATHER first. int8 keeps the input's scale."""
    layer = layer_name(node)
    v = ctx.value(node.input[0])
    if len(v.shape) != 4:
        raise NotSupportedError(f"export-tflite: {layer} moves depth of a {len(v.shape)}-D tensor; only 4-D")
    b = int(attr(node, "blocksize"))
    x = ctx.view(node.input[0], kind, True, layer)
    note = ""
    mode = attr(node, "mode", b"DCR")
    if node.op_type == "DepthToSpace" and (mode.decode() if isinstance(mode, bytes) else mode) == "CRD":
        c = v.shape[1] // (b * b)
        # DCR channel (i * b + j) * c + k is CRD channel k * b * b + i * b + j
        order = np.array([k * b * b + i * b + j for i in range(b) for j in range(b) for k in range(c)], np.int32)
        moved = _like(ctx, x, node.output[0] + "/dcr", x.shape)
        ctx.m.add_op("GATHER", [x, ctx.m.add_const(ctx._tname("dcr_order"), order)], [moved],
                     ("GatherOptions", {"Axis": 3, "BatchDims": 0}), version=2 if kind == "q" else 1, layer=layer)
        x, note = moved, "CRD channels gathered into DCR order"
    builtin = "DEPTH_TO_SPACE" if node.op_type == "DepthToSpace" else "SPACE_TO_DEPTH"
    out = _like(ctx, x, node.output[0], nhwc_shape(ctx.out_shape(node.output[0])))
    ctx.m.add_op(builtin, [x], [out], ("DepthToSpaceOptions" if builtin == "DEPTH_TO_SPACE" else
                                       "SpaceToDepthOptions", {"BlockSize": b}),
                 version=2 if kind == "q" else 1, layer=layer)
    _finish(ctx, node, kind, out, True, layer, f"TFLite's int8 {builtin} keeps its input scale")
    return note


register("DepthToSpace", "SpaceToDepth", int8=lambda c, n, a: _depth_space(c, n, "q"),
         float=lambda c, n: _depth_space(c, n, "f"))


def _identity(ctx, node, kind: str = "f", act=None) -> str:
    ctx.values[node.output[0]] = ctx.value(node.input[0])
    return ""


register("Identity", "Dropout", float=_identity)
