"""GridSample, which TFLite's builtins lack (a warp: an affine or perspective map sampled at computed points), in
float ops: the grid's normalised coordinates to pixels, then for bilinear sampling the four neighbours gathered from
the input flattened to rows of channels and weighted, for nearest the one neighbour; zeros padding masks the
neighbours outside the image, border padding clamps the coordinates first. As onnxruntime computes it."""

from __future__ import annotations

import numpy as np

from ....errors import NotSupportedError
from . import attr, layer_name, register

_NAMES = {b"bilinear": "linear", b"linear": "linear", b"nearest": "nearest"}


def _grid_sample(ctx, node) -> str:
    layer = layer_name(node)
    mode = _NAMES.get(attr(node, "mode", b"bilinear"))
    padding = attr(node, "padding_mode", b"zeros")
    corners = bool(attr(node, "align_corners", 0))
    n, c, h, w = ctx.value(node.input[0]).shape
    grid_shape = tuple(ctx.value(node.input[1]).shape)
    if mode is None or padding not in (b"zeros", b"border") or len(grid_shape) != 4 or n * h * w > 2 ** 24:
        raise NotSupportedError(f"export-tflite: {layer} is a GridSample ({attr(node, 'mode', b'bilinear').decode()}, "
                                f"{padding.decode()} padding, {n} x {h} x {w} pixels); bilinear or nearest sampling "
                                "with zeros or border padding, of up to 2^24 pixels (float32's exact integers), is "
                                "exported")
    ho, wo = grid_shape[1:3]
    name = node.output[0]

    def const(value, tag, dtype=np.float32):
        return ctx.m.add_const(ctx._tname(f"{name}/{tag}"), np.asarray(value, dtype))

    def op(builtin, a, b, tag):
        if builtin in ("MAXIMUM", "MINIMUM"):  # no options of their own
            return ctx.float_op(builtin, [a, b], a.shape if len(a.shape) >= len(b.shape) else b.shape,
                                f"{name}/{tag}", layer)
        return ctx.float_binary(builtin, a, b, f"{name}/{tag}", layer)

    def unary(builtin, x, tag):
        return ctx.float_op(builtin, [x], x.shape, f"{name}/{tag}", layer)

    rows = ctx.m.add_tensor(ctx._tname(f"{name}/rows"), (n * h * w, c), np.float32)
    ctx.m.add_op("RESHAPE", [ctx.view(node.input[0], "f", True, layer),
                             const([n * h * w, c], "rows_shape", np.int32)], [rows], layer=layer)
    grid = ctx.view(node.input[1], "f", False, layer)  # [N, Ho, Wo, 2] in the model's own order: (x, y) last
    xy = [ctx.m.add_tensor(ctx._tname(f"{name}/{a}"), (n, ho, wo, 1), np.float32) for a in "xy"]
    ctx.m.add_op("SPLIT", [const(3, "axis", np.int32), grid], xy, ("SplitOptions", {"NumSplits": 2}), layer=layer)

    def pixels(g, size, tag):  # ONNX's unnormalisation; border padding clamps it into the image
        p = op("MUL", op("ADD", g, const(1.0, "one_" + tag), tag + "_shift"),
               const((size - 1) / 2 if corners else size / 2, tag + "_half"), tag + "_scaled")
        if not corners:
            p = op("SUB", p, const(0.5, tag + "_centre"), tag + "_px")
        if padding == b"border":
            p = op("MINIMUM", op("MAXIMUM", p, const(0.0, tag + "_lo"), tag + "_above"),
                   const(size - 1.0, tag + "_hi"), tag + "_clamped")
        return p

    px, py = pixels(xy[0], w, "x"), pixels(xy[1], h, "y")
    if mode == "nearest":  # ONNX rounds half to even, as ROUND does
        corners_xy = [(unary("ROUND", px, "rx"), unary("ROUND", py, "ry"), None)]
    else:
        x0, y0 = unary("FLOOR", px, "x0"), unary("FLOOR", py, "y0")
        one = const(1.0, "one")
        x1, y1 = op("ADD", x0, one, "x1"), op("ADD", y0, one, "y1")
        fx, fy = op("SUB", px, x0, "fx"), op("SUB", py, y0, "fy")
        gx, gy = op("SUB", one, fx, "gx"), op("SUB", one, fy, "gy")
        corners_xy = [(x0, y0, op("MUL", gx, gy, "w00")), (x1, y0, op("MUL", fx, gy, "w01")),
                      (x0, y1, op("MUL", gx, fy, "w10")), (x1, y1, op("MUL", fx, fy, "w11"))]
    zero, right, bottom = const(0.0, "zero"), const(w - 1.0, "right"), const(h - 1.0, "bottom")
    row, flat_shape = const(float(w), "row"), const([n * ho * wo], "flat_shape", np.int32)
    value_shape = const([n, ho, wo, c], "value_shape", np.int32)
    # image k's rows start at k * H * W (a deformable attention samples each head's map as one image of a batch)
    first_row = const((np.arange(n) * (h * w)).reshape(n, 1, 1, 1), "first_row") if n > 1 else None
    out = ctx.out_f(node.output[0], True)
    total = None
    for k, (cx, cy, weight) in enumerate(corners_xy):
        last = k == len(corners_xy) - 1
        if padding == b"zeros":  # a neighbour outside the image contributes nothing
            tests = [("GREATER_EQUAL", cx, zero), ("LESS_EQUAL", cx, right), ("GREATER_EQUAL", cy, zero),
                     ("LESS_EQUAL", cy, bottom)]
            inside = None
            for j, (builtin, v, bound) in enumerate(tests):
                m = ctx.m.add_tensor(ctx._tname(f"{name}/inside{k}_{j}"), v.shape, np.bool_)
                ctx.m.add_op(builtin, [v, bound], [m], layer=layer)
                if inside is not None:
                    both = ctx.m.add_tensor(ctx._tname(f"{name}/inside{k}_{j}_and"), v.shape, np.bool_)
                    ctx.m.add_op("LOGICAL_AND", [inside, m], [both], layer=layer)
                    m = both
                inside = m
            mask = unary("CAST", inside, f"mask{k}")
            weight = mask if weight is None else op("MUL", weight, mask, f"wm{k}")
        sx = op("MINIMUM", op("MAXIMUM", cx, zero, f"sx_a{k}"), right, f"sx{k}")
        sy = op("MINIMUM", op("MAXIMUM", cy, zero, f"sy_a{k}"), bottom, f"sy{k}")
        index = op("ADD", op("MUL", sy, row, f"rowoff{k}"), sx, f"index{k}")
        if first_row is not None:
            index = op("ADD", index, first_row, f"image_index{k}")
        flat = ctx.m.add_tensor(ctx._tname(f"{name}/flat{k}"), (n * ho * wo,), np.float32)
        ctx.m.add_op("RESHAPE", [index, flat_shape], [flat], layer=layer)
        ids = ctx.m.add_tensor(ctx._tname(f"{name}/ids{k}"), (n * ho * wo,), np.int32)
        ctx.m.add_op("CAST", [flat], [ids], layer=layer)
        picked = ctx.m.add_tensor(ctx._tname(f"{name}/picked{k}"), (n * ho * wo, c), np.float32)
        ctx.m.add_op("GATHER", [rows, ids], [picked], ("GatherOptions", {"Axis": 0, "BatchDims": 0}), layer=layer)
        # the last step of the last neighbour writes the output itself
        ends = last and total is None and weight is None
        value = out if ends else ctx.m.add_tensor(ctx._tname(f"{name}/value{k}"), (n, ho, wo, c), np.float32)
        ctx.m.add_op("RESHAPE", [picked, value_shape], [value], layer=layer)
        if weight is not None:
            weighted = out if last and total is None else ctx.new_f(f"{name}/weighted{k}", (n, ho, wo, c))
            ctx.m.add_op("MUL", [value, weight], [weighted], ("MulOptions", {"FusedActivationFunction": 0}),
                         layer=layer)
            value = weighted
        if total is None:
            total = value
        else:
            summed = out if last else ctx.new_f(f"{name}/sum{k}", (n, ho, wo, c))
            ctx.m.add_op("ADD", [total, value], [summed], ("AddOptions", {"FusedActivationFunction": 0}), layer=layer)
            total = summed
    return (f"{mode} sampling, {padding.decode()} padding, in float ops: {len(corners_xy)} GATHER(s) from the input "
            "flattened to rows of channels")


register("GridSample", float=_grid_sample)
