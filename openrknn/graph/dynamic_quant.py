"""onnxruntime's dynamic quantization (`quantize_dynamic`) turned back into float ops with dequantized weights.

Such a model quantizes its activations on the CPU at run time (DynamicQuantizeLinear, a scale per call) and keeps
int8 weights: MatMulInteger / ConvInteger -> Cast -> Mul by the two scales, com.microsoft's
DynamicQuantizeLSTM / DynamicQuantizeMatMul, and an embedding table stored as integers (Gather on the uint8 table,
then DequantizeLinear of the rows it picked). None of that runs on an NPU, and per-call activation scales have no
NPU form. The weights' own integers and scales are what the file knows; they become float weights of the plain op
(MatMul, Conv, LSTM), which build() then quantizes for the chip like any float model.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .names import drop_unread, splice_nodes, unique_name

MS = "com.microsoft"


class _Graph:
    def __init__(self, graph: onnx.GraphProto):
        self.g = graph
        self.inits = {t.name: t for t in graph.initializer}
        self.producer = {o: n for n in graph.node for o in n.output if o}
        self.readers: Dict[str, List[onnx.NodeProto]] = {}
        for n in graph.node:
            for i in n.input:
                if i:
                    self.readers.setdefault(i, []).append(n)
        self.names = {t.name for t in graph.initializer} | set(self.producer) | {i.name for i in graph.input}

    def const(self, name: str) -> Optional[np.ndarray]:
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        p = self.producer.get(name)
        if p is not None and p.op_type == "Constant":
            return numpy_helper.to_array(p.attribute[0].t)
        return None

    def add_const(self, base: str, value: np.ndarray) -> str:
        name = unique_name(base, self.names)
        self.g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name


def _dequantized(q: np.ndarray, scale: np.ndarray, zero: Optional[np.ndarray], axis: int) -> np.ndarray:
    """(q - zero) * scale with a scalar or per-``axis`` scale / zero point."""
    shape = [1] * q.ndim
    scale = np.asarray(scale, np.float64).reshape(-1)
    zero = np.zeros(1) if zero is None else np.asarray(zero, np.float64).reshape(-1)
    if scale.size > 1:
        shape[axis] = scale.size
    z_shape = [1] * q.ndim
    if zero.size > 1:
        z_shape[axis] = zero.size
    return ((q.astype(np.float64) - zero.reshape(z_shape)) * scale.reshape(shape)).astype(np.float32)


def _integer_op(ix: _Graph, node: onnx.NodeProto) -> Optional[Tuple[str, np.ndarray, onnx.NodeProto]]:
    """For MatMulInteger / ConvInteger fed by a DynamicQuantizeLinear and read by Cast -> Mul(scales): (the float
    input x, the float weight, the final Mul), else None."""
    dql = ix.producer.get(node.input[0])
    w_q = ix.const(node.input[1])
    if dql is None or dql.op_type != "DynamicQuantizeLinear" or w_q is None:
        return None
    casts = ix.readers.get(node.output[0], [])
    if len(casts) != 1 or casts[0].op_type != "Cast":
        return None
    muls = ix.readers.get(casts[0].output[0], [])
    if len(muls) != 1 or muls[0].op_type != "Mul":
        return None
    mul = muls[0]
    scales = ix.producer.get(mul.input[1] if mul.input[0] == casts[0].output[0] else mul.input[0])
    if scales is None or scales.op_type != "Mul" or dql.output[1] not in scales.input:
        return None
    w_scale = ix.const(scales.input[1] if scales.input[0] == dql.output[1] else scales.input[0])
    w_zero = ix.const(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    if w_scale is None:
        return None
    # MatMulInteger's B is [K, N] with per-column (N) parameters; ConvInteger's W is [M, C, kh, kw], per M
    axis = 1 if node.op_type == "MatMulInteger" else 0
    return dql.input[0], _dequantized(w_q, w_scale, w_zero, axis), mul


def _lstm(ix: _Graph, node: onnx.NodeProto) -> Optional[onnx.NodeProto]:
    """DynamicQuantizeLSTM -> LSTM: W / R are [dirs, input, 4 hidden] int8 with a scale (and zero point) per direction
    or per column; ONNX's LSTM wants them float [dirs, 4 hidden, input]."""
    ins = list(node.input) + [""] * (12 - len(node.input))
    w_q, r_q = ix.const(ins[1]), ix.const(ins[2])
    w_s, w_z, r_s, r_z = (ix.const(ins[k]) for k in (8, 9, 10, 11))
    if any(v is None for v in (w_q, r_q, w_s, r_s)):
        return None

    def weight(q, s, z, base):
        s = np.asarray(s).reshape(q.shape[0], -1)
        z = np.zeros_like(s) if z is None else np.asarray(z).reshape(q.shape[0], -1)
        f = (q.astype(np.float64) - z[:, None, :]) * s[:, None, :]  # [dirs, input, 4H], per direction or column
        return ix.add_const(base, np.ascontiguousarray(f.transpose(0, 2, 1)).astype(np.float32))

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return helper.make_node("LSTM", [ins[0], weight(w_q, w_s, w_z, ins[1] + "_float"),
                                     weight(r_q, r_s, r_z, ins[2] + "_float")] + ins[3:8],
                            list(node.output), name=node.name, **attrs)


LAYOUT = {"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity"}


def _quantized_lookup(ix: _Graph, node: onnx.NodeProto) -> Optional[Tuple[List[onnx.NodeProto], np.ndarray]]:
    """A Gather from an integer table whose rows reach only per-tensor DequantizeLinears of one scale and zero point
    (through layout ops: quantize_dynamic's embedding feeds its LSTM a Transpose of the integer rows): (those
    DequantizeLinears, the float table). Gathering integer rows, moving them and dequantizing them is gathering
    and moving rows of the dequantized table."""
    table = ix.const(node.input[0])
    if table is None or table.dtype.kind not in "iu":
        return None
    dqs, todo, params = [], [node.output[0]], None
    while todo:
        for r in ix.readers.get(todo.pop(), []):
            if r.op_type in LAYOUT and r.domain in ("", "ai.onnx"):
                todo.append(r.output[0])
                continue
            if r.op_type != "DequantizeLinear" or r.domain not in ("", "ai.onnx"):
                return None
            scale = ix.const(r.input[1])
            zero = ix.const(r.input[2]) if len(r.input) > 2 and r.input[2] else np.zeros((), table.dtype)
            if scale is None or zero is None or scale.size != 1 or zero.size != 1:
                return None
            if params is not None and (float(params[0]) != float(scale.reshape(-1)[0])
                                       or float(params[1]) != float(zero.reshape(-1)[0])):
                return None
            params = (scale.reshape(-1)[0], zero.reshape(-1)[0])
            dqs.append(r)
    if not dqs:
        return None
    return dqs, _dequantized(table, np.asarray(params[0]), np.asarray(params[1]), 0)


def float_from_dynamic_quant(model: onnx.ModelProto) -> int:
    """Rewrite ``model``'s dynamically quantized ops to float, in place; returns how many. Whatever only they read
    (the DynamicQuantizeLinear, the scale products, the integer weights) is removed."""
    g = model.graph
    ix = _Graph(g)
    replace: Dict[int, List[onnx.NodeProto]] = {}   # node index -> nodes in its place
    drop: set = set()
    position = {id(n): k for k, n in enumerate(g.node)}
    for k, node in enumerate(g.node):
        new: Optional[List[onnx.NodeProto]] = None
        if node.op_type in ("MatMulInteger", "ConvInteger") and node.domain in ("", "ai.onnx"):
            found = _integer_op(ix, node)
            if found is None:
                continue
            x, w, mul = found
            w_name = ix.add_const(node.input[1] + "_float", w)
            op = "MatMul" if node.op_type == "MatMulInteger" else "Conv"
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            # the float op takes the final Mul's place (its output name), so every reader keeps its input
            replace[position[id(mul)]] = [helper.make_node(op, [x, w_name], list(mul.output), name=node.name, **attrs)]
            drop.add(k)
            drop.add(position[id(ix.readers[node.output[0]][0])])  # the Cast
        elif node.op_type == "DynamicQuantizeMatMul" and node.domain == MS:
            b_q, b_s = ix.const(node.input[1]), ix.const(node.input[2])
            b_z = ix.const(node.input[3]) if len(node.input) > 3 and node.input[3] else None
            if b_q is None or b_s is None:
                continue
            w_name = ix.add_const(node.input[1] + "_float", _dequantized(b_q, b_s, b_z, 1))
            bias = node.input[4] if len(node.input) > 4 and node.input[4] else None
            out = node.output[0]
            if bias is None:
                new = [helper.make_node("MatMul", [node.input[0], w_name], [out], name=node.name)]
            else:
                mm = unique_name(out + "_matmul", ix.names)
                new = [helper.make_node("MatMul", [node.input[0], w_name], [mm], name=node.name),
                       helper.make_node("Add", [mm, bias], [out], name=node.name + "_bias")]
        elif node.op_type == "Gather" and node.domain in ("", "ai.onnx"):
            found = _quantized_lookup(ix, node)
            if found is None:
                continue
            dqs, table = found
            replace[k] = [helper.make_node("Gather", [ix.add_const(node.input[0] + "_float", table), node.input[1]],
                                           list(node.output), name=node.name,
                                           **{a.name: helper.get_attribute_value(a) for a in node.attribute})]
            for dq in dqs:  # the rows are float already
                replace[position[id(dq)]] = [helper.make_node("Identity", [dq.input[0]], list(dq.output),
                                                              name=dq.name)]
            continue
        elif node.op_type == "DynamicQuantizeLSTM" and node.domain == MS:
            lstm = _lstm(ix, node)
            if lstm is not None:
                new = [lstm]
        if new is not None:
            replace[k] = new
    if not replace:
        return 0
    splice_nodes(g, list(g.node), replace, drop)
    drop_unread(g)  # what only the old ops read: DynamicQuantizeLinear, the scale products, the integer weights
    return len(replace)


__all__ = ["float_from_dynamic_quant"]
