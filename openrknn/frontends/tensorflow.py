"""TensorFlow frozen GraphDef (.pb) -> one ONNX graph, read with tf_schema (no TensorFlow needed).

As for TFLite, 4-D tensors are NHWC in the file: the graph comes in with its NHWC inputs and outputs while every
convolution, pool and resize is emitted NCHW-native (builder.ChannelLast), so the channel-last input machinery folds
the one Transpose at the input into the pre-processing. ``inputs`` may name any tensor (the graph is cut there, as the
vendor's load_tensorflow does for pre-processing sub-graphs); only what ``outputs`` needs is converted.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..errors import ModelLoadError
from . import LoadedModel, file_sha256, normalize_size_list
from .builder import (NHWC_AXIS_IN_NCHW, ChannelLast, GraphBuilder, UnsupportedLayer, Value, const_for_layout,
                      same_pads, transpose_pads)

log = logging.getLogger("openrknn.frontends.tensorflow")

_NP = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8, 9: np.int64, 10: np.bool_,
       17: np.uint16, 19: np.float16, 22: np.uint32, 23: np.uint64}
_LOOP_OPS = {"Enter", "Exit", "Merge", "Switch", "NextIteration", "LoopCond"}  # TF1 control flow
_IDENTITY = {"Identity", "StopGradient", "Snapshot", "PreventGradient", "IdentityN", "CheckNumerics"}


def tensor_to_array(t) -> np.ndarray:
    dtype = _NP.get(t.dtype)
    if dtype is None:
        raise ModelLoadError(f"a constant of TensorFlow dtype {t.dtype} cannot be read")
    shape = [d.size for d in t.tensor_shape.dim]
    n = int(np.prod(shape)) if shape else 1
    if t.tensor_content:
        arr = np.frombuffer(t.tensor_content, dtype)
    else:
        vals = {np.float32: t.float_val, np.float64: t.double_val, np.int64: t.int64_val, np.bool_: t.bool_val,
                np.uint32: t.uint32_val, np.uint64: t.uint64_val}.get(dtype, t.int_val)
        if dtype == np.float16:
            arr = np.asarray(list(t.half_val), np.uint16).view(np.float16)
        else:
            arr = np.asarray(list(vals), dtype)
        if arr.size == 1 and n > 1:
            arr = np.full(n, arr[0], dtype)
        elif arr.size == 0:
            arr = np.zeros(n, dtype)
    return arr.reshape(shape).copy()


def _tensor_name(ref: str) -> str:
    """'node', 'node:0' -> 'node:0'; 'node:1' stays."""
    ref = ref.lstrip("^")
    return ref if ":" in ref else f"{ref}:0"


class _Converter:
    def __init__(self, graph, name: str):
        self.nodes = {n.name: n for n in graph.node}
        self.b = GraphBuilder(name)
        self.shapes: Dict[str, List[int]] = {}  # tensor -> NHWC-view shape where known
        self.v = ChannelLast(self.b, self.shapes.get)
        self.consts: Dict[str, np.ndarray] = {}

    def attr(self, node, key, default=None):
        if key not in node.attr:
            return default
        a = node.attr[key]
        if a.HasField("list"):
            lv = a.list
            return list(lv.i) or list(lv.f) or [s.decode() for s in lv.s] or list(lv.b) or []
        if a.HasField("tensor"):
            return tensor_to_array(a.tensor)
        if a.HasField("shape"):
            return [d.size for d in a.shape.dim]
        for k, conv in (("s", lambda v: v.decode()), ("f", float), ("i", int), ("b", bool), ("type", int)):
            v = getattr(a, k)
            if v:
                return conv(v)
        return default

    # ---- values -----------------------------------------------------------------------------------------------
    def const(self, ref: str) -> Optional[np.ndarray]:
        name = _tensor_name(ref)
        if name in self.consts:
            return self.consts[name]
        node = self.nodes.get(name.rsplit(":", 1)[0])
        if node is None:
            return None
        if node.op == "Const":
            arr = self.attr(node, "value")
            self.consts[name] = arr
            return arr
        if node.op in _IDENTITY and node.input:
            return self.const(node.input[0])
        return None

    def value(self, ref: str, want: str = "any") -> Value:
        name = _tensor_name(ref)
        if not self.v.has(name):
            arr = self.const(name)
            if arr is not None:
                arr = arr.astype(np.float32) if arr.dtype.kind == "f" else arr
                if arr.ndim == 4 and want == "nchw":
                    return Value(self.b.const(np.ascontiguousarray(arr.transpose(0, 3, 1, 2)), name), "nchw", 4)
                return Value(self.b.const(arr, name), "nhwc" if arr.ndim == 4 else "plain", arr.ndim)
            self.convert_node(self.nodes[name.rsplit(":", 1)[0]])
        return self.v.get(name, want)

    def put(self, node, onnx_name: str, layout: str, rank: int, index: int = 0) -> None:
        self.v.set(f"{node.name}:{index}", onnx_name, layout, rank)

    def rank(self, ref: str) -> int:
        return self.v.get(_tensor_name(ref)).rank if self.v.has(_tensor_name(ref)) else len(
            self.shapes.get(_tensor_name(ref), []))

    # ---- conversion -------------------------------------------------------------------------------------------
    def convert(self, inputs: Sequence[str], shapes: List[List[int]], outputs: Sequence[str], input_is_nchw: bool):
        if len(shapes) != len(inputs):
            raise ModelLoadError(f"load_tensorflow: {len(inputs)} inputs but {len(shapes)} shapes in "
                                 "input_size_list; give one shape per input")
        for ref, shape in zip(inputs, shapes):
            name = _tensor_name(ref)
            if name.rsplit(":", 1)[0] not in self.nodes:
                raise ModelLoadError(f"inputs=[... '{ref}' ...] names no node of this graph; placeholders: "
                                     f"{[n for n, d in self.nodes.items() if d.op == 'Placeholder'][:10]}")
            display = name.rsplit(":", 1)[0] if name.endswith(":0") else name
            if len(shape) == 4 and input_is_nchw:
                n, c, h, w = shape
                x = self.b.add_input(display, [n, c, h, w])
                self.v.set(name, x, "nchw", 4)
                self.shapes[name] = [n, h, w, c]
            else:
                x = self.b.add_input(display, shape)
                self.v.set(name, x, "nhwc", len(shape))
                self.shapes[name] = list(shape)
        displays = []
        for ref in outputs:  # the outputs keep the graph's names: reserved before any node takes them
            name = _tensor_name(ref)
            if name.rsplit(":", 1)[0] not in self.nodes:
                raise ModelLoadError(f"outputs=[... '{ref}' ...] names no node of this graph")
            displays.append(self.b.unique(name.rsplit(":", 1)[0] if name.endswith(":0") else name))
        for ref, display in zip(outputs, displays):
            val = self.value(_tensor_name(ref), "nhwc")
            self.b.outputs.append(self.b.node("Identity", [val.name], f"{display}/output", outputs=[display]))
        return self.b.model("openrknn-tensorflow")

    def convert_node(self, node) -> None:
        # iterative post-order: deep graphs must not hit Python's recursion limit
        stack = [(node, False)]
        pending = set()  # on the current path: met again, the graph loops (a TF1 while loop's NextIteration)
        while stack:
            n, ready = stack.pop()
            if self.v.has(f"{n.name}:0"):
                continue
            if n.op == "Placeholder":
                raise ModelLoadError(f"placeholder '{n.name}' is needed for the outputs but is not in inputs=[...]; "
                                     "list every input the outputs depend on")
            if n.op in _LOOP_OPS or (not ready and n.name in pending):
                raise UnsupportedLayer("TensorFlow", n.name, f"{n.op} (a while loop)", "a loop over the images, "
                                       "as TF object detection's preprocessor is, runs on the CPU: load the network "
                                       "after it with inputs=['<the tensor the loop produces>']")
            if n.op == "BatchToSpaceND" and not ready:
                n = self.nodes[n.name] = self.atrous_conv(n)
            deps = [i for i in n.input if not i.startswith("^")]
            if not ready:
                pending.add(n.name)
                stack.append((n, True))
                for d in deps:
                    dn = _tensor_name(d)
                    if not self.v.has(dn) and self.const(dn) is None:
                        src = self.nodes.get(dn.rsplit(":", 1)[0])
                        if src is None:
                            raise ModelLoadError(f"node '{n.name}' reads '{d}', which is not in the graph")
                        stack.append((src, False))
                continue
            if n.op in _FOLD and self.fold(n):
                pending.discard(n.name)
                continue
            handler = _OPS.get(n.op)
            if handler is None:
                raise UnsupportedLayer("TensorFlow", n.name, n.op, self.cut_hint(n))
            handler(self, n)
            pending.discard(n.name)

    def atrous_conv(self, node):
        """SpaceToBatchND -> conv -> BatchToSpaceND (how TensorFlow 1 writes a dilated conv, tf.nn.atrous_conv2d)
        as one conv with dilations, reading the SpaceToBatchND's input; its pads are the space-to-batch paddings
        less the crops (plus the inner conv's own SAME pads, dilated). Anything else is refused by name."""
        from .tf_schema import NodeDef

        refs = [i for i in node.input if not i.startswith("^")]
        conv = self.nodes.get(_tensor_name(refs[0]).rsplit(":", 1)[0])
        s2b = self.nodes.get(_tensor_name(conv.input[0]).rsplit(":", 1)[0]) if conv is not None and \
            conv.op in ("Conv2D", "DepthwiseConv2dNative") else None
        if s2b is None or s2b.op != "SpaceToBatchND":
            raise UnsupportedLayer("TensorFlow", node.name, "BatchToSpaceND not after SpaceToBatchND -> conv",
                                   self.cut_hint(node))
        block, crops = np.asarray(self.const(refs[1])).reshape(-1), self.const(refs[2])
        s_block, paddings = np.asarray(self.const(s2b.input[1])).reshape(-1), self.const(s2b.input[2])
        w = self.const(conv.input[1])
        if crops is None or paddings is None or w is None or list(block) != list(s_block) or len(block) != 2 or \
                list(self.attr(conv, "strides", [1, 1, 1, 1])) != [1, 1, 1, 1]:
            raise UnsupportedLayer("TensorFlow", node.name, "BatchToSpaceND of a strided conv or of computed "
                                   "paddings", self.cut_hint(node))
        pads = np.asarray(paddings, np.int64) - np.asarray(crops, np.int64)  # [[top, bottom], [left, right]]
        if self.attr(conv, "padding", "VALID") == "SAME":
            x_hw = self.shapes.get(_tensor_name(s2b.input[0]))
            if x_hw is None:
                raise ModelLoadError(f"'{node.name}' needs its input's shape; give input_size_list")
            inner = [(x_hw[1 + a] + int(paddings[a][0]) + int(paddings[a][1])) // int(block[a]) for a in range(2)]
            same = same_pads(inner, list(w.shape[:2]), [1, 1])  # [top, left, bottom, right] in the batch domain
            pads = pads + np.array([[same[0], same[2]], [same[1], same[3]]]) * block[:, None]
        if (pads < 0).any():
            raise UnsupportedLayer("TensorFlow", node.name, "BatchToSpaceND cropping more than was padded",
                                   self.cut_hint(node))
        out = NodeDef(name=node.name, op=conv.op, input=[s2b.input[0], conv.input[1]])
        for k in conv.attr:
            out.attr[k].CopyFrom(conv.attr[k])
        out.attr["padding"].s = b"EXPLICIT"
        del out.attr["explicit_paddings"].list.i[:]
        out.attr["explicit_paddings"].list.i.extend([0, 0, *map(int, pads[0]), *map(int, pads[1]), 0, 0])
        del out.attr["dilations"].list.i[:]
        out.attr["dilations"].list.i.extend([1, int(block[0]), int(block[1]), 1])
        return out

    def cut_hint(self, node) -> str:
        """Where the graph can end before ``node``: its inputs that are computed (a decode or NMS after a detector's
        heads usually starts with such an op, and the heads are what goes on the NPU)."""
        ready = [r.lstrip("^") for r in node.input if not r.startswith("^") and self.v.has(_tensor_name(r))]
        if not ready:
            return ""
        names = [r[:-2] if r.endswith(":0") else r for r in ready]
        return f"to deploy the network up to there, load it with outputs={names}"

    def fold(self, node) -> bool:
        """Shape arithmetic on values known at load time (a Shape of a tensor whose size is fixed, and what is
        computed from it: the target of a Reshape, an upsampling size) becomes a constant, as TensorFlow's own
        constant folding would with static shapes. False: an input is not known, the node is converted as is."""
        refs = [i for i in node.input if not i.startswith("^")]
        if node.op == "Shape":
            known = self.shapes.get(_tensor_name(refs[0]))
            if known is None or any(d is None or d < 0 for d in known):
                return False
            out = np.array(known, np.int64 if self.attr(node, "out_type", 3) == 9 else np.int32)
        else:
            args = [self.const(r) for r in refs]
            if any(a is None for a in args):
                return False
            out = _FOLD[node.op](self, node, args)
            if out is None:
                return False
        self.consts[f"{node.name}:0"] = np.asarray(out)
        return True

    def data_format(self, node) -> str:
        fmt = self.attr(node, "data_format", "NHWC")
        if fmt != "NHWC":
            raise UnsupportedLayer("TensorFlow", node.name, f"{node.op} with data_format={fmt}")
        return fmt

    def spatial(self, node, ref: str) -> List[int]:
        """The H, W of an NHWC-view 4-D tensor (needed for SAME padding)."""
        s = self.shapes.get(_tensor_name(ref))
        if s is None or len(s) != 4:
            raise ModelLoadError(f"'{node.name}' ({node.op}) needs the spatial size of its input, which openrknn "
                                 "could not follow; give input_size_list")
        return s[1:3]


def _out_hw(in_hw, k, s, d, pads):
    return [(i + pads[j] + pads[j + 2] - d[j] * (k[j] - 1) - 1) // s[j] + 1 for j, i in enumerate(in_hw)]


def _conv(c: _Converter, node, depthwise: bool = False):
    fmt = c.data_format(node)
    x = c.value(node.input[0], "nchw")
    w = c.const(node.input[1])
    if w is None:
        raise ModelLoadError(f"'{node.name}' ({node.op}) has weights computed at run time; freeze the graph first")
    strides = list(c.attr(node, "strides", [1, 1, 1, 1]))
    dil = list(c.attr(node, "dilations", [1, 1, 1, 1]))
    sh, dh = (strides[1:3], dil[1:3]) if fmt == "NHWC" else (strides[2:4], dil[2:4])
    kh, kw = w.shape[0], w.shape[1]
    in_hw = c.spatial(node, node.input[0])
    padding = c.attr(node, "padding", "VALID")
    if padding == "SAME":
        pads = same_pads(in_hw, [kh, kw], sh, dh)
    elif padding == "EXPLICIT":
        ep = list(c.attr(node, "explicit_paddings"))
        ep = ep[2:6] if fmt == "NHWC" else ep[4:8]
        pads = [ep[0], ep[2], ep[1], ep[3]]
    else:
        pads = [0, 0, 0, 0]
    if depthwise:
        cin, mult = w.shape[2], w.shape[3]
        wt = w.transpose(2, 3, 0, 1).reshape(cin * mult, 1, kh, kw)  # [H, W, C, M] -> [C*M, 1, H, W]
        group, cout = cin, cin * mult
    else:
        wt = w.transpose(3, 2, 0, 1)  # [H, W, I, O] -> [O, I, H, W]
        cout = w.shape[3]
        cin = c.shapes[_tensor_name(node.input[0])][3]
        group = max(1, cin // w.shape[2])
    y = c.b.node("Conv", [x.name, c.b.const(np.ascontiguousarray(wt).astype(np.float32), f"{node.name}/weight")],
                 node.name, kernel_shape=[kh, kw], strides=sh, dilations=dh, pads=pads, group=group)
    c.put(node, y, "nchw", 4)
    n = c.shapes[_tensor_name(node.input[0])][0]
    c.shapes[f"{node.name}:0"] = [n] + _out_hw(in_hw, [kh, kw], sh, dh, pads) + [cout]


def _same_shape(c: _Converter, node, src: str):
    s = c.shapes.get(_tensor_name(src))
    if s is not None:
        c.shapes[f"{node.name}:0"] = list(s)


def _bias_add(c: _Converter, node):
    x = c.value(node.input[0])
    b = c.const(node.input[1]).astype(np.float32)
    if x.layout == "nchw":
        b = b.reshape(1, -1, 1, 1)
    c.put(node, c.b.node("Add", [x.name, c.b.const(b, f"{node.name}/bias")], node.name), x.layout, x.rank)
    _same_shape(c, node, node.input[0])


def _batch_norm(c: _Converter, node):
    """After a conv: a Mul and an Add, computed in float64, which graph/fold folds into the conv. Anywhere else (after
    a Concat, a pool, an Add): one BatchNormalization, whose running statistics graph/fold needs to standardise a
    DenseNet's Concat pieces."""
    x = c.value(node.input[0], "nchw")
    if c.attr(node, "is_training", False):
        log.info("'%s': is_training=True in a frozen graph; using its stored mean and variance", node.name)
    scale, offset, mean, var = (c.const(i).astype(np.float64) for i in node.input[1:5])
    eps = c.attr(node, "epsilon", 1e-3)
    if any(n.op_type in ("Conv", "ConvTranspose") and x.name in n.output for n in c.b.nodes):
        f = scale / np.sqrt(var + eps)
        mul = c.b.const((f.reshape(1, -1, 1, 1)).astype(np.float32), f"{node.name}/scale")
        add = c.b.const(((offset - mean * f).reshape(1, -1, 1, 1)).astype(np.float32), f"{node.name}/offset")
        y = c.b.node("Add", [c.b.node("Mul", [x.name, mul], f"{node.name}/mul"), add], node.name)
    else:
        params = [c.b.const(v.astype(np.float32).reshape(-1), f"{node.name}/{part}")
                  for v, part in zip((scale, offset, mean, var), ("scale", "offset", "mean", "variance"))]
        y = c.b.node("BatchNormalization", [x.name] + params, node.name, epsilon=float(eps))
    c.put(node, y, "nchw", 4)
    _same_shape(c, node, node.input[0])


def _unary(op, **attrs):
    def handler(c: _Converter, node):
        x = c.value(node.input[0])
        extra = {k: (v(c, node) if callable(v) else v) for k, v in attrs.items()}
        c.put(node, c.b.node(op, [x.name], node.name, **extra), x.layout, x.rank)
        _same_shape(c, node, node.input[0])
    return handler


def _clip(lo, hi):
    def handler(c: _Converter, node):
        x = c.value(node.input[0])
        y = c.b.node("Clip", [x.name, c.b.const(np.float32(lo), f"{node.name}/min"),
                              c.b.const(np.float32(hi), f"{node.name}/max")], node.name)
        c.put(node, y, x.layout, x.rank)
        _same_shape(c, node, node.input[0])
    return handler


def _binary(op):
    def handler(c: _Converter, node):
        consts = [c.const(i) if not c.v.has(_tensor_name(i)) else None for i in node.input[:2]]
        acts = [c.value(i) for i, k in zip(node.input[:2], consts) if k is None]
        layout = "nchw" if any(v.layout == "nchw" for v in acts) else ("nhwc" if any(v.layout == "nhwc"
                                                                                     for v in acts) else "plain")
        names = []
        for i, k in zip(node.input[:2], consts):
            if k is not None:
                arr = k.astype(np.float32) if k.dtype.kind == "f" else k
                names.append(c.b.const(const_for_layout(arr, layout) if layout == "nchw" else arr,
                                       f"{node.name}/const"))
            else:
                names.append(c.value(i, layout if layout != "plain" else "any").name)
        rank = max([v.rank for v in acts] or [0])
        c.put(node, c.b.node(op, names, node.name), layout, rank)
        known = [c.shapes.get(_tensor_name(i)) if k is None else list(k.shape) for i, k in zip(node.input[:2], consts)]
        if all(s is not None for s in known):  # the broadcast of both (an SE block's x * scale[1, 1, 1, C])
            c.shapes[f"{node.name}:0"] = list(np.broadcast_shapes(*map(tuple, known)))
        else:
            _same_shape(c, node, next((i for i, k in zip(node.input[:2], consts) if k is None), node.input[0]))
    return handler


def _pool(op):
    def handler(c: _Converter, node):
        fmt = c.data_format(node)
        x = c.value(node.input[0], "nchw")
        ks, st = list(c.attr(node, "ksize")), list(c.attr(node, "strides"))
        k, s = (ks[1:3], st[1:3]) if fmt == "NHWC" else (ks[2:4], st[2:4])
        in_hw = c.spatial(node, node.input[0])
        pads = same_pads(in_hw, k, s) if c.attr(node, "padding", "VALID") == "SAME" else [0, 0, 0, 0]
        y = c.b.node(op, [x.name], node.name, kernel_shape=k, strides=s, pads=pads)
        c.put(node, y, "nchw", 4)
        n, _, _, ch = c.shapes[_tensor_name(node.input[0])]
        c.shapes[f"{node.name}:0"] = [n] + _out_hw(in_hw, k, s, [1, 1], pads) + [ch]
    return handler


def _matmul(c: _Converter, node):
    x = c.value(node.input[0])
    w = c.const(node.input[1])
    a_t, b_t = c.attr(node, "transpose_a", False), c.attr(node, "transpose_b", False)
    if w is not None:
        y = c.b.node("Gemm", [x.name, c.b.const(w.astype(np.float32), f"{node.name}/weight")], node.name,
                     transA=int(a_t), transB=int(b_t))
        c.shapes[f"{node.name}:0"] = [c.shapes.get(_tensor_name(node.input[0]), [1])[0],
                                      w.shape[0] if b_t else w.shape[1]]
    else:
        if a_t or b_t:
            raise UnsupportedLayer("TensorFlow", node.name, "MatMul of two run-time tensors with transpose flags")
        y = c.b.node("MatMul", [x.name, c.value(node.input[1]).name], node.name)
    c.put(node, y, "plain", 2)


def _reshape(c: _Converter, node):
    x = c.value(node.input[0], "nhwc")
    shape = c.const(node.input[1])
    if shape is None:
        raise UnsupportedLayer("TensorFlow", node.name, "Reshape to a shape computed at run time",
                               "freeze it with static shapes")
    shape = [int(v) for v in shape]
    known = c.shapes.get(_tensor_name(node.input[0]))
    if -1 in shape and known:
        rest = int(np.prod([d for d in shape if d != -1]))
        shape = [int(np.prod(known)) // rest if d == -1 else d for d in shape]
    if shape and shape[0] == -1:
        shape[0] = 1
    y = c.b.node("Reshape", [x.name, c.b.const(np.array(shape, np.int64), f"{node.name}/shape")], node.name)
    c.put(node, y, "nhwc" if len(shape) == 4 else "plain", len(shape))
    c.shapes[f"{node.name}:0"] = shape


def _squeeze(c: _Converter, node):
    x = c.value(node.input[0], "nhwc")
    known = c.shapes.get(_tensor_name(node.input[0]))
    dims = list(c.attr(node, "squeeze_dims", []))
    if known is None:
        raise ModelLoadError(f"'{node.name}' (Squeeze) needs its input's shape; give input_size_list")
    dims = [d % len(known) for d in dims] or [i for i, d in enumerate(known) if d == 1]
    shape = [d for i, d in enumerate(known) if i not in dims]
    y = c.b.node("Reshape", [x.name, c.b.const(np.array(shape, np.int64), f"{node.name}/shape")], node.name)
    c.put(node, y, "nhwc" if len(shape) == 4 else "plain", len(shape))
    c.shapes[f"{node.name}:0"] = shape


def _concat(c: _Converter, node):
    ins = [i for i in node.input if not i.startswith("^")]
    axis_ref, parts = (ins[-1], ins[:-1]) if node.op == "ConcatV2" else (ins[0], ins[1:])
    axis = int(c.const(axis_ref))
    vals = [c.value(p) for p in parts]
    rank = max(v.rank for v in vals)
    axis %= rank
    layout = "nchw" if rank == 4 and any(v.layout == "nchw" for v in vals) else ("nhwc" if rank == 4 else "plain")
    names = [c.value(p, layout if layout != "plain" else "any").name for p in parts]
    y = c.b.node("Concat", names, node.name, axis=NHWC_AXIS_IN_NCHW[axis] if layout == "nchw" else axis)
    c.put(node, y, layout, rank)
    shapes = [c.shapes.get(_tensor_name(p)) for p in parts]
    if all(s is not None for s in shapes):
        out = list(shapes[0])
        out[axis] = sum(s[axis] for s in shapes)
        c.shapes[f"{node.name}:0"] = out


def _mean(op):
    def handler(c: _Converter, node):
        x = c.value(node.input[0])
        axes = sorted(int(a) % max(x.rank, 1) for a in np.atleast_1d(c.const(node.input[1])))
        keep = bool(c.attr(node, "keep_dims", False))
        layout = x.layout
        if layout == "nchw":
            mapped = [NHWC_AXIS_IN_NCHW[a] for a in axes]
            rest_nchw = [d for d in (0, 1, 2, 3) if d not in mapped]
            rest_nhwc = [NHWC_AXIS_IN_NCHW[d] for d in (0, 1, 2, 3) if d not in axes]
            if keep or rest_nchw == rest_nhwc:
                out_axes = sorted(mapped)
            else:
                x, layout, out_axes = c.value(node.input[0], "nhwc"), "nhwc", axes
        else:
            out_axes = axes
        if op == "ReduceSum":  # its axes are an input since opset 13
            y = c.b.node(op, [x.name, c.b.const(np.array(out_axes, np.int64), f"{node.name}/axes")], node.name,
                         keepdims=int(keep))
        else:
            y = c.b.node(op, [x.name], node.name, axes=out_axes, keepdims=int(keep))
        known = c.shapes.get(_tensor_name(node.input[0]))
        if known:
            c.shapes[f"{node.name}:0"] = [1 if i in axes else d for i, d in enumerate(known)] if keep else \
                [d for i, d in enumerate(known) if i not in axes]
        c.put(node, y, layout if keep else "plain", x.rank if keep else x.rank - len(axes))
    return handler


def _softmax(c: _Converter, node):
    x = c.value(node.input[0])
    c.put(node, c.b.node("Softmax", [x.name], node.name, axis=1 if x.layout == "nchw" else -1), x.layout, x.rank)
    _same_shape(c, node, node.input[0])


def _pad(c: _Converter, node):
    x = c.value(node.input[0])
    p = c.const(node.input[1]).astype(np.int64)
    if x.layout == "nchw":
        p = p[[0, 3, 1, 2]]
    inputs = [x.name, c.b.const(np.concatenate([p[:, 0], p[:, 1]]), f"{node.name}/pads")]
    attrs = {}
    if node.op == "PadV2":
        inputs.append(c.b.const(np.asarray(c.const(node.input[2]), np.float32).reshape(()), f"{node.name}/value"))
    if node.op == "MirrorPad":
        mode = c.attr(node, "mode", "REFLECT")
        if mode != "REFLECT":
            raise UnsupportedLayer("TensorFlow", node.name, f"MirrorPad mode {mode}")
        attrs["mode"] = "reflect"
    c.put(node, c.b.node("Pad", inputs, node.name, **attrs), x.layout, x.rank)
    known = c.shapes.get(_tensor_name(node.input[0]))
    if known:
        raw = c.const(node.input[1]).astype(np.int64)
        c.shapes[f"{node.name}:0"] = [d + int(raw[i, 0] + raw[i, 1]) for i, d in enumerate(known)]


def _resize(mode):
    def handler(c: _Converter, node):
        x = c.value(node.input[0], "nchw")
        size = [int(v) for v in c.const(node.input[1])]
        n, _, _, ch = c.shapes[_tensor_name(node.input[0])]
        align, half = c.attr(node, "align_corners", False), c.attr(node, "half_pixel_centers", False)
        ctm = "align_corners" if align else (("half_pixel" if mode == "linear" else "tf_half_pixel_for_nn") if half
                                             else "asymmetric")
        attrs = {"mode": mode, "coordinate_transformation_mode": ctm}
        if mode == "nearest":
            attrs["nearest_mode"] = "round_prefer_ceil" if align else "floor"
        y = c.b.node("Resize", [x.name, "", "", c.b.const(np.array([n, ch] + size, np.int64), f"{node.name}/sizes")],
                     node.name, **attrs)
        c.put(node, y, "nchw", 4)
        c.shapes[f"{node.name}:0"] = [n] + size + [ch]
    return handler


def _identity(c: _Converter, node):
    x = c.value(node.input[0])
    c.v.set(f"{node.name}:0", x.name, x.layout, x.rank)
    _same_shape(c, node, node.input[0])


def _transpose(c: _Converter, node):
    x = c.value(node.input[0], "nhwc")
    perm = [int(p) for p in c.const(node.input[1])]
    c.put(node, c.b.node("Transpose", [x.name], node.name, perm=perm), "nhwc" if len(perm) == 4 else "plain",
          len(perm))
    known = c.shapes.get(_tensor_name(node.input[0]))
    if known:
        c.shapes[f"{node.name}:0"] = [known[p] for p in perm]


def _leaky(c: _Converter, node):
    _unary("LeakyRelu", alpha=float(c.attr(node, "alpha", 0.2)))(c, node)


def _rsqrt(c: _Converter, node):
    x = c.value(node.input[0])
    y = c.b.node("Reciprocal", [c.b.node("Sqrt", [x.name], f"{node.name}/sqrt")], node.name)
    c.put(node, y, x.layout, x.rank)
    _same_shape(c, node, node.input[0])


def _conv_transpose(c: _Converter, node):
    """Conv2DBackpropInput (tf.nn.conv2d_transpose): its output size is an input; ONNX's pads crop to it exactly as
    the forward conv's SAME / VALID padding would have padded (TF puts the odd pixel at the end)."""
    c.data_format(node)
    sizes, w = c.const(node.input[0]), c.const(node.input[1])
    if sizes is None or w is None:
        raise UnsupportedLayer("TensorFlow", node.name, "Conv2DBackpropInput with a size or filter computed at run "
                               "time", "freeze it with static shapes")
    x = c.value(node.input[2], "nchw")
    in_hw = c.spatial(node, node.input[2])
    out_hw = [int(v) for v in np.asarray(sizes).reshape(-1)[1:3]]
    s = list(c.attr(node, "strides", [1, 1, 1, 1]))[1:3]
    d = list(c.attr(node, "dilations", [1, 1, 1, 1]))[1:3]
    kh, kw = w.shape[0], w.shape[1]
    pads, extra = transpose_pads(in_hw, s, [(k - 1) * dl + 1 for k, dl in zip((kh, kw), d)], out_hw,
                                 same=c.attr(node, "padding", "VALID") == "SAME")
    wt = np.ascontiguousarray(w.transpose(3, 2, 0, 1)).astype(np.float32)  # [H, W, O, I] -> [I, O, H, W]
    y = c.b.node("ConvTranspose", [x.name, c.b.const(wt, f"{node.name}/weight")], node.name, kernel_shape=[kh, kw],
                 strides=s, dilations=d, pads=pads, output_padding=extra)
    c.put(node, y, "nchw", 4)
    n = c.shapes[_tensor_name(node.input[2])][0]
    c.shapes[f"{node.name}:0"] = [n] + out_hw + [w.shape[2]]


def _depth_to_space(c: _Converter, node):
    c.data_format(node)
    x = c.value(node.input[0], "nchw")
    bs = int(c.attr(node, "block_size"))
    # TF's NHWC order (block row, block column, channel) is ONNX's DCR mode
    c.put(node, c.b.node("DepthToSpace", [x.name], node.name, blocksize=bs, mode="DCR"), "nchw", 4)
    n, h, w, ch = c.shapes[_tensor_name(node.input[0])]
    c.shapes[f"{node.name}:0"] = [n, h * bs, w * bs, ch // (bs * bs)]


def _strided_index(c: _Converter, node, begin, end, strides) -> Optional[list]:
    """StridedSlice's constant bounds and masks as one Python index per axis (an int for a shrunk axis, else a
    slice); None for an ellipsis or new axes."""
    if c.attr(node, "ellipsis_mask", 0) or c.attr(node, "new_axis_mask", 0):
        return None
    bm, em, sm = (int(c.attr(node, k, 0)) for k in ("begin_mask", "end_mask", "shrink_axis_mask"))
    index = []
    for ax, (b, e, st) in enumerate(zip(*(np.asarray(v).reshape(-1).tolist() for v in (begin, end, strides)))):
        if sm >> ax & 1:
            index.append(int(b))
        else:
            index.append(slice(None if bm >> ax & 1 else int(b), None if em >> ax & 1 else int(e), int(st)))
    return index


def _strided_slice(c: _Converter, node):
    """StridedSlice with constant begin / end / strides (masks included, no ellipsis or new axes): an ONNX Slice in
    the NHWC view, then a Reshape dropping the shrunk axes."""
    bounds = [c.const(i) for i in node.input[1:4]]
    known = c.shapes.get(_tensor_name(node.input[0]))
    if any(v is None for v in bounds) or known is None:
        raise UnsupportedLayer("TensorFlow", node.name, "StridedSlice with bounds computed at run time")
    index = _strided_index(c, node, *bounds)
    if index is None:
        raise UnsupportedLayer("TensorFlow", node.name, "StridedSlice with an ellipsis or new axes")
    x = c.value(node.input[0], "nhwc")
    starts, ends, steps, out = [], [], [], []
    for ax, ix in enumerate(index):
        sl = slice(ix, ix + 1 if ix != -1 else None) if isinstance(ix, int) else ix
        lo, hi, step = sl.indices(known[ax])
        starts.append(lo)
        ends.append(hi if hi >= 0 else -(2 ** 62))  # a backward slice to the start
        steps.append(step)
        if not isinstance(ix, int):  # a shrunk axis leaves the shape
            out.append(len(range(lo, hi, step)))
    out += list(known[len(index):])
    axes = list(range(len(index)))
    y = c.b.node("Slice", [x.name, *(c.b.const(np.array(v, np.int64), f"{node.name}/{k}") for k, v in
                                      (("starts", starts), ("ends", ends), ("axes", axes), ("steps", steps)))],
                 f"{node.name}/slice")
    y = c.b.node("Reshape", [y, c.b.const(np.array(out, np.int64), f"{node.name}/shape")], node.name)
    c.put(node, y, "nhwc" if len(out) == 4 else "plain", len(out))
    c.shapes[f"{node.name}:0"] = out


_ONNX_TYPE = {1: 1, 3: 6, 9: 7, 10: 9, 19: 10, 2: 11}  # TF DataType -> ONNX TensorProto type


def _cast(c: _Converter, node):
    x = c.value(node.input[0])
    to = c.attr(node, "DstT", 1)
    if to == 1:  # to float: the graph's values are float already (inputs are fed as float)
        c.v.set(f"{node.name}:0", x.name, x.layout, x.rank)
    else:
        if to not in _ONNX_TYPE:
            raise UnsupportedLayer("TensorFlow", node.name, f"Cast to TensorFlow type {to}")
        c.put(node, c.b.node("Cast", [x.name], node.name, to=_ONNX_TYPE[to]), x.layout, x.rank)
    _same_shape(c, node, node.input[0])


def _expand_dims(c: _Converter, node):
    x = c.value(node.input[0], "nhwc")
    known = c.shapes.get(_tensor_name(node.input[0]))
    rank = c.rank(node.input[0]) + 1
    axis = int(np.asarray(c.const(node.input[1])).reshape(-1)[0]) % rank
    y = c.b.node("Unsqueeze", [x.name, c.b.const(np.array([axis], np.int64), f"{node.name}/axes")], node.name)
    c.put(node, y, "nhwc" if rank == 4 else "plain", rank)
    if known is not None:
        c.shapes[f"{node.name}:0"] = list(known[:axis]) + [1] + list(known[axis:])


def _unpack(c: _Converter, node):
    x = c.value(node.input[0], "nhwc")
    known = c.shapes.get(_tensor_name(node.input[0]))
    if known is None:
        raise ModelLoadError(f"'{node.name}' (Unpack) needs its input's shape; give input_size_list")
    axis = int(c.attr(node, "axis", 0)) % len(known)
    n = known[axis]
    parts = c.b.node("Split", [x.name, c.b.const(np.ones(n, np.int64), f"{node.name}/split")], f"{node.name}/split",
                     n_out=n, axis=axis)
    parts = [parts] if isinstance(parts, str) else parts
    out = list(known[:axis]) + list(known[axis + 1:])
    for k, part in enumerate(parts):
        y = c.b.node("Reshape", [part, c.b.const(np.array(out, np.int64), f"{node.name}/shape{k}")],
                     node.name if k == 0 else f"{node.name}_{k}")
        c.put(node, y, "nhwc" if len(out) == 4 else "plain", len(out), index=k)
        c.shapes[f"{node.name}:{k}"] = out


def _axis_view(c: _Converter, ref: str, axis: int):
    """(value, ONNX axis, layout) for an op along the NHWC-view ``axis`` of ``ref``: a 4-D tensor held NCHW is used
    as it is, with the axis moved (no Transpose); anything else in its own layout."""
    x = c.value(ref)
    rank = max(x.rank, 1)
    axis %= rank
    if x.layout == "nchw" and x.rank == 4:
        return x, NHWC_AXIS_IN_NCHW[axis], "nchw"
    x = c.value(ref, "nhwc")
    return x, axis, "nhwc" if x.rank == 4 else "plain"


def _split(c: _Converter, node):
    """Split (axis first, num_split equal parts) and SplitV (sizes, axis last)."""
    refs = [i for i in node.input if not i.startswith("^")]
    src, axis_ref = (refs[1], refs[0]) if node.op == "Split" else (refs[0], refs[2])
    if c.const(axis_ref) is None or (node.op == "SplitV" and c.const(refs[1]) is None):
        raise UnsupportedLayer("TensorFlow", node.name, f"{node.op} with sizes computed at run time",
                               c.cut_hint(node))
    known = c.shapes.get(_tensor_name(src))
    axis = int(np.asarray(c.const(axis_ref)).reshape(-1)[0])
    if known is None:
        raise ModelLoadError(f"'{node.name}' ({node.op}) needs its input's shape; give input_size_list")
    axis %= len(known)
    if node.op == "Split":
        n = int(c.attr(node, "num_split"))
        sizes = [known[axis] // n] * n
    else:
        sizes = [int(v) for v in np.asarray(c.const(refs[1])).reshape(-1)]
        if -1 in sizes:
            sizes[sizes.index(-1)] = known[axis] - sum(v for v in sizes if v != -1)
    x, onnx_axis, layout = _axis_view(c, src, axis)
    parts = c.b.node("Split", [x.name, c.b.const(np.array(sizes, np.int64), f"{node.name}/sizes")], node.name,
                     n_out=len(sizes), axis=onnx_axis)
    parts = [parts] if isinstance(parts, str) else parts
    for k, (part, size) in enumerate(zip(parts, sizes)):
        c.put(node, part, layout, x.rank, index=k)
        c.shapes[f"{node.name}:{k}"] = [size if i == axis else d for i, d in enumerate(known)]


def _slice(c: _Converter, node):
    if any(c.const(r) is None for r in node.input[1:3]):
        raise UnsupportedLayer("TensorFlow", node.name, "Slice with bounds computed at run time", c.cut_hint(node))
    begin, size = (np.asarray(c.const(r)).reshape(-1) for r in node.input[1:3])
    known = c.shapes.get(_tensor_name(node.input[0]))
    if known is None:
        raise ModelLoadError(f"'{node.name}' (Slice) needs its input's shape; give input_size_list")
    ends = [int(b) + (int(n) if n >= 0 else known[i] - int(b)) for i, (b, n) in enumerate(zip(begin, size))]
    x = c.value(node.input[0])
    order = [NHWC_AXIS_IN_NCHW[a] for a in range(4)] if x.layout == "nchw" and x.rank == 4 else list(range(x.rank))
    y = c.b.node("Slice", [x.name, c.b.const(np.array([int(b) for b in begin], np.int64), f"{node.name}/starts"),
                           c.b.const(np.array(ends, np.int64), f"{node.name}/ends"),
                           c.b.const(np.array(order, np.int64), f"{node.name}/axes")], node.name)
    c.put(node, y, x.layout, x.rank)
    c.shapes[f"{node.name}:0"] = [e - int(b) for b, e in zip(begin, ends)]


def _gather(c: _Converter, node):
    """GatherV2 with constant indices (a channel pick, a row lookup)."""
    idx = c.const(node.input[1])
    if idx is None or int(c.attr(node, "batch_dims", 0)):
        raise UnsupportedLayer("TensorFlow", node.name, "GatherV2 with indices computed at run time or batch_dims")
    known = c.shapes.get(_tensor_name(node.input[0]))
    if known is None:
        raise ModelLoadError(f"'{node.name}' (GatherV2) needs its input's shape; give input_size_list")
    axis = int(np.asarray(c.const(node.input[2])).reshape(-1)[0]) % len(known)
    idx = np.asarray(idx, np.int64)
    out = list(known[:axis]) + list(idx.shape) + list(known[axis + 1:])
    if idx.ndim == 1 and len(out) == len(known):
        x, onnx_axis, layout = _axis_view(c, node.input[0], axis)
    else:
        x, onnx_axis = c.value(node.input[0], "nhwc"), axis
        layout = "nhwc" if len(out) == 4 else "plain"
    y = c.b.node("Gather", [x.name, c.b.const(idx, f"{node.name}/indices")], node.name, axis=onnx_axis)
    c.put(node, y, layout, len(out))
    c.shapes[f"{node.name}:0"] = out


def _tile(c: _Converter, node):
    if c.const(node.input[1]) is None:
        raise UnsupportedLayer("TensorFlow", node.name, "Tile with multiples computed at run time", c.cut_hint(node))
    reps = [int(v) for v in np.asarray(c.const(node.input[1])).reshape(-1)]
    x = c.value(node.input[0])
    onnx_reps = [reps[a] for a in (0, 3, 1, 2)] if x.layout == "nchw" and x.rank == 4 else reps
    c.put(node, c.b.node("Tile", [x.name, c.b.const(np.array(onnx_reps, np.int64), f"{node.name}/repeats")],
                         node.name), x.layout, x.rank)
    known = c.shapes.get(_tensor_name(node.input[0]))
    if known is not None:
        c.shapes[f"{node.name}:0"] = [d * r for d, r in zip(known, reps)]


def _batch_matmul(c: _Converter, node):
    """BatchMatMulV2 (adj_x / adj_y: the last two axes swapped first), in the graph's own layout."""
    vals, shapes = [], []
    for k, ref in enumerate(node.input[:2]):
        arr = c.const(ref) if not c.v.has(_tensor_name(ref)) else None
        if arr is not None:
            name, shape = c.b.const(np.asarray(arr, np.float32), f"{node.name}/operand{k}"), list(arr.shape)
        else:
            name, shape = c.value(ref, "nhwc").name, c.shapes.get(_tensor_name(ref))
        if c.attr(node, "adj_x" if k == 0 else "adj_y", False):
            if shape is None:
                raise ModelLoadError(f"'{node.name}' (BatchMatMulV2) needs its inputs' shapes")
            perm = list(range(len(shape) - 2)) + [len(shape) - 1, len(shape) - 2]
            name = c.b.node("Transpose", [name], f"{node.name}/adj{k}", perm=perm)
            shape = [shape[p] for p in perm]
        vals.append(name)
        shapes.append(shape)
    y = c.b.node("MatMul", vals, node.name)
    if all(s is not None for s in shapes):
        batch = list(np.broadcast_shapes(tuple(shapes[0][:-2]), tuple(shapes[1][:-2])))
        out = batch + [shapes[0][-2], shapes[1][-1]]
        c.shapes[f"{node.name}:0"] = out
        c.put(node, y, "nhwc" if len(out) == 4 else "plain", len(out))
    else:
        c.put(node, y, "plain", max(len(s or []) for s in shapes))


def _prelu(c: _Converter, node):
    x = c.value(node.input[0])
    alpha = c.const(node.input[1])
    if alpha is None:
        raise UnsupportedLayer("TensorFlow", node.name, "Prelu with a slope computed at run time")
    alpha = alpha.astype(np.float32)
    if x.layout == "nchw":
        alpha = const_for_layout(alpha, "nchw")[0]  # [C] or [1, 1, C] -> [C, 1, 1]: ONNX PRelu's slope broadcasts
    c.put(node, c.b.node("PRelu", [x.name, c.b.const(alpha, f"{node.name}/slope")], node.name), x.layout, x.rank)
    _same_shape(c, node, node.input[0])


def _add_n(c: _Converter, node):
    refs = [i for i in node.input if not i.startswith("^")]
    vals = [c.value(r) for r in refs]
    layout = "nchw" if any(v.layout == "nchw" for v in vals) else vals[0].layout
    names = [c.value(r, layout if layout != "plain" else "any").name for r in refs]
    y = names[0]
    for k, other in enumerate(names[1:]):
        y = c.b.node("Add", [y, other], node.name if k == len(names) - 2 else f"{node.name}/add{k}")
    if len(names) == 1:
        y = c.b.node("Identity", [y], node.name)
    c.put(node, y, layout, max(v.rank for v in vals))
    _same_shape(c, node, refs[0])


def _pack(c: _Converter, node):
    """Pack (tf.stack): each input gains the new axis, then one Concat along it (in the graph's own layout)."""
    refs = [i for i in node.input if not i.startswith("^")]
    known = [c.shapes.get(_tensor_name(r)) for r in refs]
    rank = c.rank(refs[0]) + 1
    axis = int(c.attr(node, "axis", 0)) % rank
    parts = []
    for k, r in enumerate(refs):
        x = c.value(r, "nhwc")
        parts.append(c.b.node("Unsqueeze", [x.name, c.b.const(np.array([axis], np.int64), f"{node.name}/axis{k}")],
                              f"{node.name}/unsqueeze{k}"))
    y = parts[0] if len(parts) == 1 else c.b.node("Concat", parts, f"{node.name}/concat", axis=axis)
    y = c.b.node("Identity", [y], node.name)
    c.put(node, y, "nhwc" if rank == 4 else "plain", rank)
    if known[0] is not None:
        c.shapes[f"{node.name}:0"] = list(known[0][:axis]) + [len(refs)] + list(known[0][axis:])


def _fold_strided_slice(c: _Converter, node, args):
    index = _strided_index(c, node, *args[1:4])
    return None if index is None else np.asarray(args[0])[tuple(index)]


def _fold_binary(fn):
    return lambda c, node, args: fn(np.asarray(args[0]), np.asarray(args[1]))


_FOLD = {  # op -> numpy on constant inputs (Shape is folded from the tracked shapes)
    "Shape": None, "StridedSlice": _fold_strided_slice,
    "Pack": lambda c, node, args: np.stack(args, axis=int(c.attr(node, "axis", 0))),
    "ConcatV2": lambda c, node, args: np.concatenate(args[:-1], axis=int(args[-1])),
    "Mul": _fold_binary(np.multiply), "Add": _fold_binary(np.add), "AddV2": _fold_binary(np.add),
    "Sub": _fold_binary(np.subtract), "FloorDiv": _fold_binary(np.floor_divide), "Maximum": _fold_binary(np.maximum),
    "Minimum": _fold_binary(np.minimum),
    "RealDiv": lambda c, node, args: np.asarray(args[0]) / np.asarray(args[1]),
    "Cast": lambda c, node, args: np.asarray(args[0]).astype(_NP.get(c.attr(node, "DstT", 1), np.float32)),
    "Prod": lambda c, node, args: np.prod(args[0], axis=tuple(np.atleast_1d(args[1]).tolist()),
                                         keepdims=bool(c.attr(node, "keep_dims", False))),
    "ExpandDims": lambda c, node, args: np.expand_dims(args[0], int(np.asarray(args[1]).reshape(-1)[0])),
    "Reshape": lambda c, node, args: np.reshape(args[0], [int(v) for v in np.asarray(args[1]).reshape(-1)]),
    "Fill": lambda c, node, args: np.full([int(v) for v in np.asarray(args[0]).reshape(-1)], args[1]),
    "GatherV2": lambda c, node, args: np.take(args[0], args[1], axis=int(np.asarray(args[2]).reshape(-1)[0])),
    "Slice": lambda c, node, args: np.asarray(args[0])[tuple(
        slice(int(b), None if int(n) < 0 else int(b) + int(n)) for b, n in zip(np.ravel(args[1]), np.ravel(args[2])))],
}


# the ops grappler (and the TensorFlow.js converter) fuse after a conv or matmul: the op's extra inputs they read
_FUSED_ARGS = {"BiasAdd": 1, "FusedBatchNorm": 4, "FusedBatchNormV3": 4, "Prelu": 1, "Add": 1, "AddV2": 1}
_FUSED_UNARY = {"Relu", "Relu6", "Elu", "Sigmoid", "Tanh", "LeakyRelu"}


def _fused(base: str):
    """_FusedConv2D / FusedDepthwiseConv2dNative / _FusedMatMul: the base op, then each fused op in turn, as
    separate nodes (the fused_ops attr lists them; their operands follow the base op's two inputs)."""
    def handler(c: _Converter, node):
        from .tf_schema import NodeDef

        refs = [i for i in node.input if not i.startswith("^")]
        args = refs[2:]
        fused = list(c.attr(node, "fused_ops", []))
        steps = [NodeDef(name=f"{node.name}/{base}", op=base, input=refs[:2])]
        for k in node.attr:
            if k not in ("fused_ops", "num_args", "epsilon", "leakyrelu_alpha"):
                steps[0].attr[k].CopyFrom(node.attr[k])
        for op in fused:
            if op not in _FUSED_ARGS and op not in _FUSED_UNARY:
                raise UnsupportedLayer("TensorFlow", node.name, f"{node.op} fusing {op}")
            n_args = _FUSED_ARGS.get(op, 0)
            if len(args) < n_args:
                raise ModelLoadError(f"'{node.name}' ({node.op}) fuses {fused} but has too few operands for {op}")
            step = NodeDef(name=f"{node.name}/{op}", op=op, input=[steps[-1].name] + args[:n_args])
            args = args[n_args:]
            if op.startswith("FusedBatchNorm"):
                step.attr["epsilon"].f = float(c.attr(node, "epsilon", 1e-3))
            if op == "LeakyRelu":
                step.attr["alpha"].f = float(c.attr(node, "leakyrelu_alpha", 0.2))
            steps.append(step)
        steps[-1].name = node.name  # the last step is what other nodes read
        for step in steps:
            c.nodes[step.name] = step
            _OPS[step.op](c, step)
    return handler


def _square(c: _Converter, node):
    x = c.value(node.input[0])
    c.put(node, c.b.node("Mul", [x.name, x.name], node.name), x.layout, x.rank)
    _same_shape(c, node, node.input[0])


_OPS = {
    "Conv2D": _conv, "DepthwiseConv2dNative": lambda c, n: _conv(c, n, depthwise=True), "BiasAdd": _bias_add,
    "FusedBatchNorm": _batch_norm, "FusedBatchNormV2": _batch_norm, "FusedBatchNormV3": _batch_norm,
    "Relu": _unary("Relu"), "Relu6": _clip(0, 6), "Elu": _unary("Elu"), "Sigmoid": _unary("Sigmoid"),
    "Tanh": _unary("Tanh"), "Erf": _unary("Erf"), "LeakyRelu": _leaky, "Softplus": _unary("Softplus"),
    "Exp": _unary("Exp"), "Log": _unary("Log"), "Sqrt": _unary("Sqrt"), "Rsqrt": _rsqrt, "Square": _square,
    "Abs": _unary("Abs"), "Neg": _unary("Neg"),
    "Add": _binary("Add"), "AddV2": _binary("Add"), "Sub": _binary("Sub"), "Mul": _binary("Mul"),
    "RealDiv": _binary("Div"), "Maximum": _binary("Max"), "Minimum": _binary("Min"),
    "MaxPool": _pool("MaxPool"), "AvgPool": _pool("AveragePool"), "MatMul": _matmul, "Reshape": _reshape,
    "Squeeze": _squeeze, "ConcatV2": _concat, "Concat": _concat, "Mean": _mean("ReduceMean"),
    "Max": _mean("ReduceMax"), "Sum": _mean("ReduceSum"), "Softmax": _softmax, "Pad": _pad, "PadV2": _pad,
    "MirrorPad": _pad,
    "ResizeBilinear": _resize("linear"), "ResizeNearestNeighbor": _resize("nearest"), "Transpose": _transpose,
    "Prelu": _prelu, "AddN": _add_n, "Pack": _pack, "Conv2DBackpropInput": _conv_transpose,
    "DepthToSpace": _depth_to_space, "StridedSlice": _strided_slice, "Cast": _cast, "ExpandDims": _expand_dims,
    "Unpack": _unpack, "Split": _split, "SplitV": _split, "Slice": _slice, "GatherV2": _gather, "Tile": _tile,
    "BatchMatMulV2": _batch_matmul, "BatchMatMul": _batch_matmul, "Floor": _unary("Floor"),
    "Min": _mean("ReduceMin"), "_FusedConv2D": _fused("Conv2D"),
    "FusedDepthwiseConv2dNative": _fused("DepthwiseConv2dNative"), "_FusedDepthwiseConv2dNative":
        _fused("DepthwiseConv2dNative"), "_FusedMatMul": _fused("MatMul"),
    **{k: _identity for k in _IDENTITY},
}


def _read_graph(path: Path):
    from google.protobuf.message import DecodeError

    from .tf_schema import GraphDef

    data = path.read_bytes()
    g = GraphDef()
    try:
        g.ParseFromString(data)
    except DecodeError as e:
        raise ModelLoadError(f"'{path}' is not a TensorFlow frozen GraphDef ({e}); give the frozen .pb (a "
                             "SavedModel folder must be frozen first)") from None
    if not g.node:
        raise ModelLoadError(f"'{path}' holds no graph nodes; give a frozen GraphDef .pb")
    if any(n.op in ("VarHandleOp", "VariableV2", "ReadVariableOp") for n in g.node):
        raise ModelLoadError(f"'{path}' still has variables; freeze the graph (variables to constants) first")
    return g


def load_tensorflow(tf_pb: str | Path, inputs: Sequence[str], input_size_list, outputs: Sequence[str],
                    input_is_nchw: bool = False) -> LoadedModel:
    path = Path(tf_pb)
    if not path.is_file():
        raise ModelLoadError(f"TensorFlow .pb not found: '{path}'. Check the path (relative paths are resolved "
                             f"against the current folder, {Path.cwd()}).")
    if not inputs or not outputs:
        raise ModelLoadError("load_tensorflow needs inputs=[...] and outputs=[...] (tensor or node names, e.g. "
                             "inputs=['input'], outputs=['MobilenetV1/Predictions/Reshape_1'])")
    if input_size_list is None:
        raise ModelLoadError("load_tensorflow needs input_size_list, one shape per input, e.g. [[1, 224, 224, 3]]")
    return convert_graph(_read_graph(path), path, "tensorflow", inputs, input_size_list, outputs, input_is_nchw)


def convert_graph(graph, path: Path, framework: str, inputs: Sequence[str], input_size_list, outputs: Sequence[str],
                  input_is_nchw: bool = False, what: str = "TensorFlow graph") -> LoadedModel:
    """A GraphDef (read from a frozen .pb, a TensorFlow.js graph model's topology with its weights, or lowered from a
    layers model) -> ONNX. ``what``: the file's kind, for the notes."""
    inputs, outputs = list(inputs), list(outputs)
    nodes = {n.name: n for n in graph.node}
    ranks = []
    for ref in inputs:
        node = nodes.get(_tensor_name(ref).rsplit(":", 1)[0])
        shape = list(c for c in (_Converter(graph, "probe").attr(node, "shape") or [])) if node is not None else []
        ranks.append(len(shape) or 4)
    shapes = normalize_size_list(input_size_list, len(inputs), ranks=ranks)
    conv = _Converter(graph, path.stem)
    onnx_model = conv.convert(inputs, shapes, outputs, bool(input_is_nchw))
    notes = [f"{what} converted to ONNX: {len(graph.node)} nodes -> {len(onnx_model.graph.node)} ONNX nodes "
             f"(inputs {inputs}, outputs {outputs})"]
    log.info("loaded %s %s: %s", what, path, notes[0])
    return LoadedModel(onnx_model, framework, str(path), file_sha256(path), notes)


def save_graph(nodes: List, path: str | Path) -> None:
    """Write NodeDefs as a frozen GraphDef (tests and benchmark models built without TensorFlow)."""
    from ..atomic import write_bytes_atomic
    from .tf_schema import GraphDef

    g = GraphDef()
    g.node.extend(nodes)
    g.versions.producer = 1087
    write_bytes_atomic(path, g.SerializeToString(deterministic=True))  # attr maps in key order: same bytes


def graph_io(tf_pb: str | Path):
    """(placeholders, final nodes): the defaults when load_model is not told a frozen graph's inputs and outputs."""
    return graph_io_of(_read_graph(Path(tf_pb)), str(tf_pb))


def graph_io_of(graph, where: str):
    read = {_tensor_name(i).rsplit(":", 1)[0] for n in graph.node for i in n.input}
    inputs = [n.name for n in graph.node if n.op == "Placeholder"]
    outputs = [n.name for n in graph.node if n.name not in read and n.op not in ("Const", "NoOp", "Placeholder",
                                                                                 "Assert", "SaveV2", "RestoreV2")]
    if not inputs or not outputs:
        raise ModelLoadError(f"'{where}': could not tell the graph's inputs and outputs (placeholders {inputs}, final "
                             f"nodes {outputs[:5]}); give inputs=[...] and outputs=[...]")
    return inputs, outputs


def placeholder_shapes(tf_pb: str | Path, inputs: Sequence[str]) -> List[List[int]]:
    """The placeholders' own shapes (batch -1 taken as 1); an error naming the input when another dim is unknown."""
    return placeholder_shapes_of(_read_graph(Path(tf_pb)), inputs)


def placeholder_shapes_of(graph, inputs: Sequence[str]) -> List[List[int]]:
    conv = _Converter(graph, "probe")
    shapes = []
    for ref in inputs:
        node = conv.nodes.get(_tensor_name(ref).rsplit(":", 1)[0])
        shape = list(conv.attr(node, "shape") or []) if node is not None else []
        shape = [1 if (i == 0 and d < 1) else d for i, d in enumerate(shape)]
        if not shape or any(d < 1 for d in shape):
            raise ModelLoadError(f"input '{ref}' has shape {shape or 'unknown'} in the graph; give input_size_list, "
                                 "e.g. [[1, 224, 224, 3]]")
        shapes.append(shape)
    return shapes
