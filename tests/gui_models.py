"""Small models the GUI tests build at test time: a layer the quantizer splits into parts, and a YOLOX-shaped
80-class detector with one known detection. Each converts in about a second."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

YOLOX_SIZE = 32  # input 32x32: 4x4 + 2x2 + 1x1 anchor points at strides 8, 16, 32
YOLOX_ANCHORS = sum(math.ceil(YOLOX_SIZE / s) ** 2 for s in (8, 16, 32))
DOG = 16  # the COCO class of the one detection


def split_model(path: Path, hw: int = 12) -> Path:
    """x [1,3,hw,hw] -> conv + SiLU whose channels span 1000x in range ("stem_*") -> depthwise conv + SiLU
    ("dw_*") -> pointwise conv ("pw_conv") -> two slices swapped by a concat -> flatten. Range split cuts the stem
    and the depthwise layer into parts (their channel ranges differ too much for one scale) and joins the
    depthwise parts with a concat of its own; the swap concat and the flatten have no quantization of their own."""
    rng = np.random.default_rng(0)
    gain = np.logspace(0, -3, 8)
    w1 = rng.normal(0, 0.02, (8, 3, 3, 3)) * gain[:, None, None, None]
    wdw = rng.normal(0, 1, (8, 1, 3, 3)) / gain[:, None, None, None]
    wpw = rng.normal(0, 0.5, (4, 8, 1, 1))
    inits = [numpy_helper.from_array(np.asarray(a, np.float32), n) for n, a in
             [("w1", w1), ("b1", np.zeros(8)), ("wdw", wdw), ("bdw", np.zeros(8)), ("wpw", wpw), ("bpw", np.zeros(4))]]
    inits += [numpy_helper.from_array(np.array(v, np.int64), k)
              for k, v in (("s0", [0]), ("s2", [2]), ("s4", [4]), ("ax", [1]), ("shape", [1, -1]))]
    n = helper.make_node
    nodes = [n("Conv", ["x", "w1", "b1"], ["c1"], name="stem_conv", pads=[1, 1, 1, 1]),
             n("Sigmoid", ["c1"], ["g1"], name="stem_sigmoid"), n("Mul", ["c1", "g1"], ["stem"], name="stem_mul"),
             n("Conv", ["stem", "wdw", "bdw"], ["c2"], name="dw_conv", pads=[1, 1, 1, 1], group=8),
             n("Sigmoid", ["c2"], ["g2"], name="dw_sigmoid"), n("Mul", ["c2", "g2"], ["dw"], name="dw_mul"),
             n("Conv", ["dw", "wpw", "bpw"], ["pw"], name="pw_conv"),
             n("Slice", ["pw", "s0", "s2", "ax"], ["pa"], name="slice_a"),
             n("Slice", ["pw", "s2", "s4", "ax"], ["pb"], name="slice_b"),
             n("Concat", ["pb", "pa"], ["cat"], name="swap_concat", axis=1),
             n("Reshape", ["cat", "shape"], ["out"], name="flatten")]
    graph = helper.make_graph(nodes, "split", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, hw, hw])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4 * hw * hw])], inits)
    return _save(graph, path)


def tiny_yolox(path: Path) -> Path:
    """images [1,3,32,32] -> output [1,21,85] in the official export's flat layout (x, y offsets and log w, h per
    anchor point, then objectness and 80 class scores after sigmoid): whatever the image, one box at (4,4)-(20,20)
    of class 16 ('dog' in COCO) with score 0.95 * 0.9. The image still flows through the graph (times 0)."""
    rows = np.zeros((1, YOLOX_ANCHORS, 85), np.float32)
    rows[0, 0, :4] = [1.5, 1.5, math.log(2.0), math.log(2.0)]  # centre (12, 12), 16x16 at stride 8
    rows[0, 0, 4] = 0.95
    rows[0, 0, 5 + DOG] = 0.9
    n = helper.make_node
    nodes = [n("ReduceMean", ["images"], ["mean"], name="image_mean", axes=[1, 2, 3], keepdims=0),
             n("Mul", ["mean", "zero"], ["nothing"], name="times_zero"),
             n("Add", ["nothing", "rows"], ["output"], name="detections")]
    inits = [numpy_helper.from_array(np.float32(0.0), "zero"), numpy_helper.from_array(rows, "rows")]
    image = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, YOLOX_SIZE, YOLOX_SIZE])
    output = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, YOLOX_ANCHORS, 85])
    graph = helper.make_graph(nodes, "tiny_yolox", [image], [output], inits)
    return _save(graph, path)


def _save(graph, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
