"""Walk the QDQ graph once, in order, and emit TFLite tensors and operators.

Every ONNX node becomes either
- an int8 TFLite op, when all its activation inputs are int8 quantization points and each output is read only by a
  QuantizeLinear (that Q/DQ pair is then absorbed: the op writes the int8 tensor directly, with our scale and zero
  point), with a following Relu/Clip fused as TFLite's fused activation the way our NPU graph fuses it; or
- a float TFLite op on dequantized inputs, when our graph itself computes it in float between quantization points
  (the NPU's fused activations such as SiLU, constants folded into a quantizer) or TFLite has no int8 form.
  DEQUANTIZE / QUANTIZE ops join the two worlds; each layer's choice is recorded for the report.

Layout: ONNX activations are N,C,H,W; every rank-4 tensor an op produces is stored N,H,W,C here (``Value.nhwc``).
Ops that depend on the element order (Reshape, Flatten, Transpose) and graph outputs get a TRANSPOSE back to the
ONNX order when the two orders differ in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx

from ...errors import NotSupportedError
from .graph import DQ_OPS, Q_OPS, ActPoint, QdqGraph
from .writer import Model, Quant, Tensor

TO_NHWC = (0, 2, 3, 1)
TO_NCHW = (0, 3, 1, 2)
# ops whose TFLite form keeps an integer or boolean tensor's type (ids reshaped, compared, cast)
INT_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity", "Equal", "Cast", "Gather",
                     "GatherND", "Split", "Concat", "Not", "And", "Or", "Xor", "Where", "Add", "Sub", "Mul", "Div",
                     "Mod", "Max", "Min", "Clip", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Tile",
                     "GatherElements", "Slice", "NonMaxSuppression", "Shape", "Pad"})
# ops whose second input is integer positions: int8 when the data (the first input) is an int8 point
INDEXED = frozenset({"GatherND", "GatherElements"})
BINARY_OPTIONS = {"ADD": "AddOptions", "SUB": "SubOptions", "MUL": "MulOptions", "DIV": "DivOptions"}
# ops whose lowering takes a length known only when the model runs (an NMS's rows: -1 in the shape), writing no
# constant from that length; any other op on such a tensor is refused rather than given a wrong constant
RUN_TIME_LENGTH_OPS = frozenset({"NonMaxSuppression", "Slice", "Split", "Concat", "Reshape", "Flatten", "Squeeze",
                                 "Unsqueeze", "Cast", "Gather", "GatherND", "Add", "Sub", "Mul", "Div", "Identity",
                                 "QuantizeLinear", "DequantizeLinear", "Shape", "Pad", "Transpose"})


@dataclass
class Value:
    """What one ONNX tensor is in the TFLite model: an int8 tensor, a float tensor, or both."""

    shape: Tuple[int, ...]               # logical (ONNX) shape
    q: Optional[Tensor] = None
    f: Optional[Tensor] = None
    nhwc: bool = False
    views: Dict[Tuple[str, bool], Tensor] = field(default_factory=dict)   # cached layout conversions


@dataclass
class LayerRecord:
    layer: str
    op_type: str
    mode: str                 # "int8" | "float" | "alias"
    tflite_ops: List[str]
    note: str = ""


def nhwc_shape(shape: Sequence[int]) -> Tuple[int, ...]:
    return tuple(shape[i] for i in TO_NHWC)


def same_memory(shape: Sequence[int]) -> bool:
    """Whether N,C,H,W and N,H,W,C orders of this shape are the same bytes (C == 1 or H*W == 1); never for a
    run-time length (-1)."""
    return len(shape) == 4 and min(shape) > 0 and (shape[1] == 1 or shape[2] * shape[3] == 1)


class Lowerer:
    def __init__(self, graph: QdqGraph, inputs_meta: List[dict], float_inputs: bool = False):
        from .ops import RULES  # the op modules register themselves on import

        self.rules = RULES
        self.g = graph
        self.m = Model()
        self.values: Dict[str, Value] = {}
        self.layers: List[LayerRecord] = []
        self.changes: List[str] = []
        self.skip: set = set()
        self._meta = {m["name"]: m for m in inputs_meta}
        self._float_inputs = float_inputs
        # float tensors whose values often sit exactly between two levels (a bilinear upscale's): quantized as the
        # simulator quantizes them (quantize_as_simulated), not by TFLite's QUANTIZE
        self.tie_prone: set = set()

    # ---------------------------------------------------------------------------------------------------- tensors
    def _tname(self, base: str) -> str:
        return f"{base}#{len(self.m.tensors)}"

    def new_q(self, name: str, shape: Sequence[int], quant: Quant, dtype=np.int8) -> Tensor:
        return self.m.add_tensor(self._tname(name), shape, dtype, quant)

    def new_f(self, name: str, shape: Sequence[int]) -> Tensor:
        return self.m.add_tensor(self._tname(name), shape, np.float32)

    @staticmethod
    def quant(point: ActPoint) -> Quant:
        return Quant.per_tensor(point.scale, point.zero_point)

    def value(self, name: str) -> Value:
        v = self.values.get(name)
        if v is None:
            raise NotSupportedError(f"export-tflite: tensor '{name}' is read before anything produces it; the "
                                    "graph is not one openrknn's builder wrote")
        return v

    def f_of(self, name: str, layer: str = "") -> Tensor:
        """Float tensor of a value (a DEQUANTIZE the first time an int8-only value is read in float)."""
        v = self.value(name)
        if v.f is None:
            v.f = self.new_f(name + "/dequantized", v.q.shape)
            self.m.add_op("DEQUANTIZE", [v.q], [v.f], version=2, layer=layer)
        return v.f

    def is_q8(self, name: str) -> bool:
        v = self.values.get(name)
        return v is not None and v.q is not None and v.q.dtype == np.int8

    def reshape(self, x: Tensor, out: Tensor, layer: str = "") -> Tensor:
        """RESHAPE x into ``out`` (the same elements in out's shape; one dim may be a run-time length, -1)."""
        if sum(d < 0 for d in out.shape) > 1:
            raise NotSupportedError(f"export-tflite: {layer or out.name} reshapes into {list(out.shape)}, with more "
                                    "than one length known only when the model runs")
        self.m.add_op("RESHAPE", [x, self.m.add_const(self._tname("shape"), np.asarray(out.shape, np.int32))], [out],
                      ("ReshapeOptions", {"NewShape": list(out.shape)}), layer=layer)
        return out

    def float_op(self, builtin: str, inputs: Sequence[Optional[Tensor]], shape: Sequence[int], name: str,
                 layer: str, options=None) -> Tensor:
        """One float op writing a new float tensor (the steps of a multi-op lowering)."""
        out = self.new_f(name, shape)
        self.m.add_op(builtin, inputs, [out], options, layer=layer)
        return out

    def float_binary(self, builtin: str, a: Tensor, b: Tensor, name: str, layer: str) -> Tensor:
        """ADD / SUB / MUL / DIV of two float tensors (numpy broadcasting; the higher rank's shape)."""
        return self.float_op(builtin, [a, b], a.shape if len(a.shape) >= len(b.shape) else b.shape, name, layer,
                             (BINARY_OPTIONS[builtin], {"FusedActivationFunction": 0}))

    def quantize_as_simulated(self, x: Tensor, out: Tensor, layer: str) -> None:
        """Write `x` into the int8 tensor `out` as onnxruntime's QuantizeLinear (the simulator's) computes it: the real
        value divided by the scale, rounded half to even, plus the zero point. TFLite's QUANTIZE multiplies by the
        scale's reciprocal instead (and requantizes int8 in fixed point), and a value within a rounding of a tie
        between two levels lands on the other one: 4% of a detector's 2x bilinear upscale, where ties are common
        (after a conv and its activation they are rare: YOLOX-nano, 3 values in 16 million). So: a float DIV, a
        QUANTIZE on scale 1 (the division's result is the level), and a RESHAPE that hands the same integers on
        with the point's scale."""
        if any(d < 0 for d in out.shape):   # a length known when the model runs: no RESHAPE to a fixed one
            self.m.add_op("QUANTIZE", [x], [out], version=2, layer=layer)
            return
        if x.dtype != np.float32:
            real = self.new_f(x.name.split("#")[0] + "/real", x.shape)
            self.m.add_op("DEQUANTIZE", [x], [real], version=2, layer=layer)
            x = real
        base = out.name.split("#")[0]
        scale = self.m.add_const(self._tname("scale"), np.asarray(out.quant.scale[0], np.float32))
        levels = self.float_binary("DIV", x, scale, base + "/levels", layer)
        unit = self.new_q(base + "/unit", out.shape, Quant.per_tensor(1.0, int(out.quant.zero_point[0])), out.dtype)
        self.m.add_op("QUANTIZE", [levels], [unit], version=2, layer=layer)
        self.reshape(unit, out, layer)

    def requantize(self, t: Tensor, quant: Quant, layer: str, why: str) -> Tensor:
        """int8 -> int8 onto another scale (TFLite's rule where ours differs), rounded as the simulator rounds."""
        if quant.same_as(t.quant):
            return t
        out = self.new_q(t.name.split("#")[0] + "/requant", t.shape, quant)
        self.quantize_as_simulated(t, out, layer)
        self.changes.append(f"{layer}: {why}: requantized from scale {t.quant.scale[0]:.6g} zp "
                            f"{int(t.quant.zero_point[0])} to {quant.scale[0]:.6g} zp {int(quant.zero_point[0])}")
        return out

    # ----------------------------------------------------------------------------------------------------- layout
    def view(self, name: str, kind: str, nhwc: bool, layer: str) -> Tensor:
        """The value's int8 ('q') or float ('f') tensor in the wanted storage order (rank-4 values only)."""
        v = self.value(name)
        base = v.q if kind == "q" else self.f_of(name, layer)
        if len(v.shape) != 4 or v.nhwc == nhwc:
            return base
        key = (kind, nhwc)
        if key not in v.views:
            shape = nhwc_shape(v.shape) if nhwc else tuple(v.shape)
            out = self.m.add_tensor(self._tname(name + ("/nhwc" if nhwc else "/nchw")), shape, base.dtype,
                                    base.quant)
            if same_memory(v.shape):
                self.reshape(base, out, layer)
            else:
                perm = TO_NHWC if nhwc else TO_NCHW
                self.m.add_op("TRANSPOSE", [base, self.m.add_const(self._tname("perm"), np.asarray(perm, np.int32))],
                              [out], version=2, layer=layer)
            v.views[key] = out
        return v.views[key]

    def stored_shape(self, shape: Sequence[int], nhwc: bool) -> Tuple[int, ...]:
        return nhwc_shape(shape) if nhwc and len(shape) == 4 else tuple(shape)

    def out_shape(self, name: str, fallback: Optional[Sequence[int]] = None) -> Tuple[int, ...]:
        shape = self.g.shape(name)
        if shape is None and fallback is not None:
            shape = tuple(fallback)
        if shape is None:
            raise NotSupportedError(f"export-tflite: the shape of '{name}' is unknown (ONNX shape inference did not "
                                    "reach it); TFLite needs static shapes")
        return tuple(shape)

    def const_for(self, arr: np.ndarray, out_rank: int, nhwc: bool, name: str, dtype=np.float32) -> Tensor:
        """A broadcasting constant laid out like a rank-`out_rank` operand stored N,H,W,C when `nhwc`."""
        arr = np.asarray(arr, dtype)
        if nhwc and out_rank == 4 and arr.ndim > 0:
            arr = arr.reshape((1,) * (4 - arr.ndim) + arr.shape).transpose(TO_NHWC)
        return self.m.add_const(self._tname(name), np.ascontiguousarray(arr))

    # ----------------------------------------------------------------------------------------------------- outputs
    def out_q(self, onnx_name: str, nhwc: bool, shape: Optional[Sequence[int]] = None) -> Tensor:
        """int8 output tensor for an ONNX output read only by a QuantizeLinear; registers the point's value."""
        qn = self.g.sole_quantizer(onnx_name)
        point = self.g.act_point(qn)
        logical = self.out_shape(onnx_name, shape)
        t = self.new_q(qn.output[0], self.stored_shape(logical, nhwc), self.quant(point))
        self.values[qn.output[0]] = Value(logical, q=t, nhwc=nhwc and len(logical) == 4)
        return t

    def out_point(self, onnx_name: str) -> Quant:
        return self.quant(self.g.act_point(self.g.sole_quantizer(onnx_name)))

    def set_q(self, onnx_name: str, t: Tensor, nhwc: bool, shape: Sequence[int]) -> None:
        """Register an int8 tensor made by a multi-op lowering as the quantization point of `onnx_name`."""
        qn = self.g.sole_quantizer(onnx_name)
        self.values[qn.output[0]] = Value(tuple(shape), q=t, nhwc=nhwc and len(shape) == 4)

    def set_f(self, onnx_name: str, t: Tensor, nhwc: bool = False) -> None:
        """Register an unquantized tensor of any type (ids, a comparison's booleans) as the value of `onnx_name`."""
        shape = self.out_shape(onnx_name)
        self.values[onnx_name] = Value(shape, f=t, nhwc=nhwc and len(shape) == 4)

    def out_f(self, onnx_name: str, nhwc: bool, shape: Optional[Sequence[int]] = None) -> Tensor:
        logical = self.out_shape(onnx_name, shape)
        t = self.new_f(onnx_name, self.stored_shape(logical, nhwc))
        self.values[onnx_name] = Value(logical, f=t, nhwc=nhwc and len(logical) == 4)
        return t

    def first_output_only(self, node: onnx.NodeProto, what: str) -> None:
        """A node exported by its first output: refuse it when another output is read, else leave out the quantize
        chains the builder put on those (an LSTM's final states, a layer norm's statistics)."""
        if any(o and self.is_read(o) for o in node.output[1:]):
            raise NotSupportedError(f"export-tflite: {node.name or node.output[0]}'s {what} are read; only its first "
                                    "output is exported")
        for o in node.output[1:]:
            if o:
                self.skip_unread(o)

    def is_read(self, name: str) -> bool:
        """Whether anything but a quantize / dequantize chain to nowhere reads this tensor (the builder quantizes
        every output of a node, used or not: an LSTM's final states, a layer norm's statistics)."""
        if name in self.g.outputs:
            return True
        return any(c.op_type not in Q_OPS + DQ_OPS or self.is_read(c.output[0]) for c in self.g.consumers.get(name, []))

    def skip_unread(self, name: str) -> None:
        """Leave out the quantize / dequantize chain of a tensor nothing reads (is_read)."""
        for c in self.g.consumers.get(name, []):
            if c.name:
                self.skip.add(c.name)
                self.skip_unread(c.output[0])

    # -------------------------------------------------------------------------------------------------------- walk
    def activation_inputs(self, node: onnx.NodeProto) -> List[str]:
        return [i for i in node.input if i and not self.g.is_const(i) and self.g.quant_const(i) is None]

    def fused_activation(self, node: onnx.NodeProto) -> Optional[onnx.NodeProto]:
        """A Relu/Clip that is the only reader of this node's output and whose output is quantized."""
        from .ops.activations import fused_code

        if len(node.output) != 1:
            return None
        readers = self.g.consumers.get(node.output[0], [])
        if len(readers) != 1 or node.output[0] in self.g.outputs:
            return None
        act = readers[0]
        if fused_code(self, act) is None or self.g.sole_quantizer(act.output[0]) is None:
            return None
        return act

    def _gelu_regions(self) -> Dict[int, object]:
        """GELUs spelled out in ONNX ops (0.5 x (1 + erf(x / sqrt 2)), or the tanh form), by their last node's
        index: TFLite computes them as one GELU op, while its builtins have no Erf. Our graph computes such a
        region in float between two quantization points (the quantizer's plan finds it with the same finder)."""
        from ...graph.activations import find_regions

        consts = {n: a for n, a in self.g.inits.items() if a.size == 1}
        keep = set(self.g.outputs)
        return {r.nodes[-1]: r for r in find_regions(self.g.nodes, consts, keep) if r.name in ("Gelu", "GeluTanh")}

    def _gelu(self, region, layer: str) -> None:
        x, xf = self.value(region.x), self.f_of(region.x, layer)
        out = self.float_op("GELU", [xf], xf.shape, region.z, layer,
                            ("GeluOptions", {"Approximate": region.name == "GeluTanh"}))
        self.values[region.z] = Value(x.shape, f=out, nhwc=x.nhwc)
        self.layers.append(LayerRecord(layer, "Gelu", "float", ["GELU"],
                                       f"{len(region.nodes)} ONNX ops of a spelled-out GELU as one TFLite GELU"))

    def run(self) -> Model:
        self._inputs()
        gelus = self._gelu_regions()
        inside = {i for r in gelus.values() for i in r.nodes}
        for index, node in enumerate(self.g.nodes):
            if node.name in self.skip and node.name:
                continue
            if index in gelus:
                self._gelu(gelus[index], node.name or node.output[0])
                continue
            if index in inside:
                continue
            if node.op_type in Q_OPS:
                self._quantize(node)
            elif node.op_type in DQ_OPS:
                self._dequantize(node)
            elif node.op_type == "Constant":
                continue
            else:
                self._compute(node)
        self._outputs()
        return self.m

    def int8_points(self) -> Dict[str, Tuple[int, bool]]:
        """Each quantization point held as an int8 tensor of the main graph -> (tensor index, stored N,H,W,C)."""
        points = {n.output[0] for n in self.g.nodes if n.op_type in Q_OPS}
        return {name: (v.q.index, v.nhwc) for name, v in self.values.items()
                if name in points and v.q is not None and v.q.dtype == np.int8
                and v.q.index < len(self.m.tensors) and self.m.tensors[v.q.index] is v.q}

    def _inputs(self) -> None:
        for name in self.g.inputs:
            shape = self.g.shape(name)
            if shape is None:
                raise NotSupportedError(f"export-tflite: graph input '{name}' has no static shape")
            meta = self._meta.get(name, {})
            dtype = self.g.input_dtypes.get(name, np.dtype(np.float32))
            if np.issubdtype(dtype, np.integer) and meta.get("layout") != "nhwc":
                # integer ids (bytes, tokens): the graph's own type, read only by ops that keep it (INT_OPS)
                t = self.m.add_tensor(name, shape, np.int64 if dtype == np.int64 else np.int32)
                self.values[name] = Value(tuple(shape), f=t)
            elif dtype == np.bool_:  # a mask (attention padding)
                t = self.m.add_tensor(name, shape, np.bool_)
                self.values[name] = Value(tuple(shape), f=t)
            elif meta.get("dtype") == "uint8" and meta.get("layout") == "nhwc" and not self._float_inputs:
                # the deployed feed: uint8 pixels; the graph computes on their float values (scale 1, zero 0)
                t = self.m.add_tensor(name, shape, np.uint8, Quant.per_tensor(1.0, 0))
                self.values[name] = Value(tuple(shape), q=t)
            else:
                t = self.m.add_tensor(name, shape, np.float32)
                self.values[name] = Value(tuple(shape), f=t)
            self.m.inputs.append(t.index)

    def _quantize(self, node: onnx.NodeProto) -> None:
        if node.output[0] in self.values:  # written directly by the int8 op before it
            return
        src = self.value(node.input[0])
        point = self.g.act_point(node)
        layer = node.name or node.output[0]
        if point.bits != 8:
            self.values[node.output[0]] = Value(src.shape, f=self.f_of(node.input[0], layer), nhwc=src.nhwc)
            self.changes.append(f"{layer}: a {point.bits}-bit quantization point stays float (TFLite int8 has no "
                                f"{point.bits}-bit activations)")
            return
        inp = src.q if src.q is not None else src.f
        out = self.new_q(node.output[0], inp.shape, self.quant(point))
        same_grid = src.q is not None and src.q.quant is not None and out.quant.same_as(src.q.quant) and \
            src.q.dtype == np.int8
        # integers put on another grid, and what tie_prone names, land on rounding ties often: rounded as the
        # simulator rounds. A conv's or an activation's float output lands on one about once in a million values,
        # which is not worth two more ops per point on the board's CPU.
        if not same_grid and (src.q is not None or node.input[0] in self.tie_prone):
            self.quantize_as_simulated(inp, out, layer)
        else:
            self.m.add_op("QUANTIZE", [inp], [out], version=2, layer=layer)
        self.values[node.output[0]] = Value(src.shape, q=out, nhwc=src.nhwc)

    def _dequantize(self, node: onnx.NodeProto) -> None:
        if node.input[0] in self.g.inits:  # weights and biases: their readers take the integers
            return
        v = self.value(node.input[0])
        if v.q is None and np.dtype(v.f.dtype).kind in "iub":
            # only our own quantization points are dequantized here; integers of the model's own (ids, a table
            # stored as uint8) would pass through as if they were already real values
            raise NotSupportedError(f"export-tflite: {node.name or node.output[0]} dequantizes "
                                    f"{np.dtype(v.f.dtype).name} tensor '{node.input[0]}', which is not one of "
                                    "the build's quantization points")
        self.values[node.output[0]] = v

    def _compute(self, node: onnx.NodeProto) -> None:
        rule = self.rules.get(node.op_type)
        layer = node.name or node.output[0]
        if rule is None:
            raise NotSupportedError(f"export-tflite: layer '{layer}' is an ONNX {node.op_type}, which this exporter "
                                    f"has no TFLite form for (supported: {', '.join(sorted(self.rules))})")
        if node.op_type not in RUN_TIME_LENGTH_OPS and any(
                d < 0 for t in list(node.input) + list(node.output) if t for d in (self.g.shape(t) or ())):
            raise NotSupportedError(f"export-tflite: layer '{layer}' ({node.op_type}) computes on a tensor whose "
                                    "length is known only when the model runs (after an NMS); its TFLite form "
                                    f"here needs a fixed one (ops that take it: "
                                    f"{', '.join(sorted(RUN_TIME_LENGTH_OPS))})")
        acts = self.activation_inputs(node)
        act_node = self.fused_activation(node) if rule.fuses_activation else None
        outs = [act_node.output[0]] if act_node is not None else [o for o in node.output if o]
        data = acts[:1] if node.op_type in INDEXED else acts
        int8 = (rule.int8 is not None and bool(data) and all(self.is_q8(i) for i in data)
                and all(self.g.sole_quantizer(o) is not None and self.g.act_point(self.g.sole_quantizer(o)).bits == 8
                        for o in outs)
                and (rule.int8_ok is None or rule.int8_ok(self, node)))
        start = len(self.m.operators)
        if int8:
            note = rule.int8(self, node, act_node) or ""
            mode = "int8"
            if act_node is not None:
                self.skip.add(act_node.name)
                self.layers.append(LayerRecord(act_node.name or act_node.output[0], act_node.op_type, "fused", [],
                                               f"fused into {layer}"))
        else:
            typed = [i for i in acts if self.values.get(i) is not None and self.values[i].q is None
                     and self.values[i].f.dtype != np.float32]
            if typed and node.op_type not in INT_OPS:
                raise NotSupportedError(f"export-tflite: layer '{layer}' ({node.op_type}) computes on "
                                        f"{self.values[typed[0]].f.dtype.name} tensor '{typed[0]}'; integer and "
                                        f"boolean tensors are exported only through {', '.join(sorted(INT_OPS))}")
            if rule.float is None:
                raise NotSupportedError(f"export-tflite: layer '{layer}' ({node.op_type}) has only an int8 TFLite "
                                        "form here, but its inputs/outputs are not int8 quantization points")
            note = rule.float(self, node) or ""
            mode = "float"
            if not note:
                note = self._float_reason(node, acts, outs) if rule.int8 is not None else \
                    f"this exporter has no int8 TFLite form of {node.op_type}: float TFLite ops compute it"
        ops = [op.builtin for op in self.m.operators[start:]]
        for op in self.m.operators[start:]:
            op.layer = op.layer or layer
        self.layers.append(LayerRecord(layer, node.op_type, mode if ops else "alias", ops, note))

    def _float_reason(self, node: onnx.NodeProto, acts: List[str], outs: List[str]) -> str:
        if any(self.values[i].q is not None and self.values[i].q.dtype == np.uint8 for i in acts):
            return "reads the uint8 input as float pixel values (the pre-processing before the first quantizer)"
        if not all(self.is_q8(i) for i in acts):
            return "an input is a float intermediate of our graph (the NPU fuses it with the op before)"
        if not all(self.g.sole_quantizer(o) is not None for o in outs):
            return ("its output is not a quantization point (the NPU fuses it with the op after; "
                    "config(pre_activation_points='tflite') makes it one before any activation but ReLU and before a "
                    "residual Add)")
        return "no int8 TFLite form for these attributes"

    def _outputs(self) -> None:
        for name in self.g.outputs:
            v = self.value(name)
            # outputs in the ONNX model's own order and float, as the simulator returns them
            t = self.view(name, "f", False, "output") if len(v.shape) == 4 and v.nhwc else self.f_of(name, "output")
            t.name = name
            self.m.outputs.append(t.index)
