"""Convs the RKNPU2 computes in input-channel tiles, with an integer partial sum between them.

rknn-toolkit2 2.5.0 (its rule tiling_conv_channelin) splits a group-1 conv whose input channels x kernel area pass
3072 into convs over slices of the input channels: the second slice's conv runs first and its output is stored as
int8 under a scale of its own; each other slice's conv then adds the running sum into its accumulator (ConvAdd),
rounded to int8 again where another slice follows; the last applies the conv's activation (ConvAddRelu). Measured
on single convs of 64 to 6400 input channels and 1x1 to 7x7 kernels (its build log's layer table): a slice is at
most floor(3072 / kernel area) channels, down to a multiple of 16; the channels are cut into equal slices where
those are multiples of 16, else into full slices and what is left. VGG16's 512-channel 3x3 convs are two slices.

The same structure in the float graph: a Split of the input, one Conv per slice, Adds in the chip's order. The
plan (plan.py _residual_conv_outputs) then makes the first conv's output and every running sum but the last
int8 points, and fuses each later conv into its Add, as the chip does.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ...graph.names import drop_unread, splice_nodes
from ..ir import GraphInfo, normalize
from ..stages import QuantState, Rewrite, StageResult

LIMIT = 3072  # input channels x kernel area a conv takes whole
ALIGN = 16


def slices(channels: int, area: int) -> Optional[List[int]]:
    """The input-channel slices of a conv with ``channels`` inputs and a ``area``-element kernel, or None when it is
    computed whole."""
    if channels * area <= LIMIT:
        return None
    widest = max(ALIGN, LIMIT // area // ALIGN * ALIGN)
    n = math.ceil(channels / widest)
    if channels % n == 0 and (channels // n) % ALIGN == 0:
        return [channels // n] * n
    return [widest] * (n - 1) + [channels - widest * (n - 1)]


def tiled_convs(info: GraphInfo) -> Dict[int, List[int]]:
    """{Conv node: its slices} for the group-1 2-D convs with constant weights that the chip tiles."""
    out = {}
    for i, node in enumerate(info.nodes):
        if node.op_type != "Conv" or int(info.attr(i, "group", 1)) != 1 or len(node.input) < 2:
            continue
        w = info.const(node.input[1])
        if w is None or w.ndim != 4 or info.is_const(node.input[0]):
            continue
        parts = slices(int(w.shape[1]), int(w.shape[2] * w.shape[3]))
        if parts:
            out[i] = parts
    return out


def tile_convs(model: onnx.ModelProto, info: GraphInfo, tiled: Dict[int, List[int]]
               ) -> Tuple[onnx.ModelProto, Dict, Dict[str, str]]:
    """Each conv of ``tiled`` as Split -> one Conv per slice -> Adds: the second slice's conv first (it carries the
    bias), then each other slice's conv added to the running sum in slice order. Returns (model, report, {new node:
    conv it was made from})."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    replace: Dict[int, List[onnx.NodeProto]] = {}
    origins: Dict[str, str] = {}
    made = []
    sliced = set()  # weights already cut (two convs may share one: a siamese net's branches)
    for i, parts in tiled.items():
        conv = info.nodes[i]
        name, y = conv.name or conv.output[0], conv.output[0]
        w = info.const(conv.input[1])
        bias = conv.input[2] if len(conv.input) > 2 and conv.input[2] else None
        xs = [f"{y}__tile{k}_in" for k in range(len(parts))]
        sizes = f"{y}__tile_sizes"
        m.graph.initializer.append(numpy_helper.from_array(np.asarray(parts, np.int64), sizes))
        nodes = [helper.make_node("Split", [conv.input[0], sizes], xs, name=f"{name}__tile_split", axis=1)]
        starts = np.cumsum([0] + parts)
        partial = {}
        for k in range(len(parts)):
            wk = f"{conv.input[1]}__tile{k}"
            if wk not in sliced:
                sliced.add(wk)
                m.graph.initializer.append(numpy_helper.from_array(
                    np.ascontiguousarray(w[:, starts[k]:starts[k + 1]]), wk))
            partial[k] = helper.make_node("Conv", [xs[k], wk] + ([bias] if bias and k == 1 else []),
                                          [f"{y}__tile{k}"], name=f"{name}__tile{k}")
            partial[k].attribute.extend(conv.attribute)
        order = [1, 0] + list(range(2, len(parts)))  # the chip's order
        nodes.append(partial[1])
        total = partial[1].output[0]
        for j, k in enumerate(order[1:], start=1):
            nodes.append(partial[k])
            out = y if j == len(order) - 1 else f"{y}__tile_sum{j}"
            nodes.append(helper.make_node("Add", [partial[k].output[0], total], [out], name=f"{name}__tile_add{j}"))
            total = out
        for n in nodes:
            origins[n.name] = name
        replace[i] = nodes
        made.append({"conv": name, "slices": parts})
    splice_nodes(m.graph, list(m.graph.node), replace, set())
    drop_unread(m.graph)  # the whole weights, now read by no conv
    return normalize(m), {"convs": made}, origins  # shapes for the new tensors: the plan reads them


class ConvTiles(Rewrite):
    """Before calibration, on a chip that stores its own pre-activation points (RKNPU2) at 8 bits: the convs it
    computes in input-channel tiles get the tiles, so their partial sums are calibrated and rounded as on the chip."""

    name, phase = "conv_tiles", "graph"

    def enabled(self, state: QuantState) -> bool:
        act = state.scheme.act
        return state.options.requantized_pre_activations is True and act is not None and act.bits == 8

    def apply(self, state: QuantState) -> Optional[StageResult]:
        tiled = tiled_convs(state.info)
        if not tiled:
            return None
        model, report, origins = tile_convs(state.model, state.info, tiled)
        state.replace_model(model)
        return StageResult(self.name, report, node_origins=origins)


__all__ = ["ConvTiles", "LIMIT", "slices", "tile_convs", "tiled_convs"]
