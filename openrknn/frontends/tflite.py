"""TFLite flatbuffers -> one ONNX graph (read with the `tflite` schema package; no TensorFlow needed).

The graph comes in as the user knows it: 4-D inputs and outputs stay NHWC, while every convolution, pool and resize is
emitted NCHW-native (builder.ChannelLast inserts a Transpose only where a layout-sensitive op or a 4-D graph
input/output needs one), so the channel-last input machinery (graph/layout.py) sees a model whose first step is
Transpose(0,3,1,2) and folds it into the pre-processing.

Quantized models (int8 / uint8 tensors with scales) come in as QDQ ONNX: each quantized activation is followed by
QuantizeLinear -> DequantizeLinear with the file's scale and zero point, each quantized weight is its integers ->
DequantizeLinear (per channel where the file is), so build() can keep those parameters (convert/qdq_import.py).
Float16 weights behind DEQUANTIZE ops (MediaPipe models) become float32 constants; sparse weights (DENSIFY) become
dense ones (tflite_sparse.py).
"""

from __future__ import annotations

import copy
import logging
import struct
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
from onnx import TensorProto

from ..errors import ModelLoadError
from . import LoadedModel, file_sha256
from .builder import (NHWC_AXIS_IN_NCHW, ChannelLast, GraphBuilder, UnsupportedLayer, activation, const_for_layout,
                      same_pads, transpose_pads)
from .tflite_detection import detection_postprocess
from .tflite_sparse import densify, read_sparsity

log = logging.getLogger("openrknn.frontends.tflite")

_NP = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 6: np.bool_, 7: np.int16, 9: np.int8,
       10: np.float64, 12: np.uint64, 15: np.uint32, 16: np.uint16}
_ONNX_INT = {np.dtype(np.int8): TensorProto.INT8, np.dtype(np.uint8): TensorProto.UINT8}
_ACT = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH", 5: "SIGN_BIT"}


def _schema():
    try:
        import tflite
        from tflite.utils import opcode2name
    except ImportError:
        raise ModelLoadError("load_tflite needs the 'tflite' schema package: pip install 'openrknn[tflite]' (or "
                             "pip install tflite flatbuffers)") from None
    return tflite, opcode2name


class _Reader:
    """One subgraph of a .tflite file, converted op by op."""

    def __init__(self, path: Path, buf: bytes, input_is_nchw: bool):
        tflite, opcode2name = _schema()
        self.tfl = tflite
        self.path = path
        self.model = tflite.Model.GetRootAsModel(buf, 0)
        if self.model.SubgraphsLength() < 1:
            raise ModelLoadError(f"'{path}' holds no subgraph; it is not a usable TFLite model")
        self.g = self.model.Subgraphs(0)
        self.opcode2name = opcode2name
        self.b = GraphBuilder(path.stem)
        self.v = ChannelLast(self.b, lambda i: self.shape(i) or None)
        self.consts: Dict[int, np.ndarray] = {}
        self.input_is_nchw = input_is_nchw
        self.quantized = 0
        self.sparse = 0
        self.input_normalisation: Dict[str, tuple] = {}
        self.input_layouts: Dict[str, str] = {}
        self.int16_activations = 0  # a 16x8 model's: an 8-bit QDQ graph cannot hold their scales
        self.notes: List[str] = []

    # ---- tensors ----------------------------------------------------------------------------------------------
    def tensor(self, i: int):
        return self.g.Tensors(i)

    def tname(self, i: int) -> str:
        return (self.tensor(i).Name() or b"").decode("utf-8", "replace") or f"tensor_{i}"

    def shape(self, i: int) -> List[int]:
        t = self.tensor(i)
        return [int(d) for d in t.ShapeAsNumpy()] if t.ShapeLength() else []

    def qparams(self, i: int):
        """(scale array, zero point array, axis) of a quantized tensor, None for a float one."""
        q = self.tensor(i).Quantization()
        if q is None or q.ScaleLength() == 0:
            return None
        scale = q.ScaleAsNumpy().astype(np.float32)
        zp = q.ZeroPointAsNumpy().astype(np.int64) if q.ZeroPointLength() else np.zeros_like(scale, np.int64)
        return scale, zp, int(q.QuantizedDimension())

    def raw(self, i: int) -> Optional[np.ndarray]:
        """The stored data of a constant tensor (integers as stored), None for an activation."""
        if i in self.consts:
            return self.consts[i]
        t = self.tensor(i)
        buf = self.model.Buffers(t.Buffer())
        if buf is None or buf.DataLength() == 0:
            if buf is not None and buf.Offset() > 1:
                raise ModelLoadError(f"'{self.path}' keeps tensor '{self.tname(i)}' outside the flatbuffer (a model "
                                     "over 2 GB); openrknn reads weights stored inside the file only")
            return None
        dtype = _NP.get(t.Type())
        if dtype is None:
            raise ModelLoadError(f"tensor '{self.tname(i)}' has TFLite type {t.Type()}, which openrknn cannot read")
        data = buf.DataAsNumpy().view(dtype)
        if t.Sparsity() is not None:  # a pruned weight stored compressed (tflite_sparse.py)
            try:
                self.consts[i] = densify(data, self.shape(i), *read_sparsity(t.Sparsity()))
            except ValueError as e:
                raise ModelLoadError(f"sparse tensor '{self.tname(i)}' of '{self.path}' cannot be read: {e}; the "
                                     "file is damaged or was written by a converter that breaks TFLite's sparsity "
                                     "format") from None
            self.sparse += 1
            return self.consts[i]
        return data.reshape(self.shape(i))

    def array(self, i: int) -> Optional[np.ndarray]:
        """A constant's real value (dequantized, float16 widened), None for an activation."""
        a = self.raw(i)
        if a is None:
            return None
        q = self.qparams(i)
        if q is not None and a.dtype in (np.int8, np.uint8, np.int16, np.int32, np.int64):  # int64: a 16x8 bias
            scale, zp, axis = q
            shape = [1] * a.ndim
            if scale.size > 1:
                shape[axis] = scale.size
            return ((a.astype(np.float64) - zp.reshape(shape)) * scale.reshape(shape)).astype(np.float32)
        return a.astype(np.float32) if a.dtype in (np.float16, np.float64) else a

    def weight(self, i: int, transform: Callable[[np.ndarray], np.ndarray], axis_map: Dict[int, int],
               base: str) -> str:
        """A constant weight rearranged by ``transform``; quantized weights stay integers behind a
        DequantizeLinear (their channel axis moved by ``axis_map``) so their scales are kept."""
        a = self.raw(i)
        q = self.qparams(i)
        if a is not None and q is not None and a.dtype in (np.int8, np.uint8, np.int32):
            scale, zp, axis = q
            ints = np.ascontiguousarray(transform(a))
            inputs = [self.b.const(ints, base), self.b.const(scale if scale.size > 1 else scale[0], f"{base}/scale"),
                      self.b.const((zp if zp.size > 1 else zp[0]).astype(ints.dtype), f"{base}/zero_point")]
            attrs = {"axis": axis_map.get(axis, axis)} if scale.size > 1 else {}
            self.quantized += 1
            return self.b.node("DequantizeLinear", inputs, base, **attrs)
        arr = self.array(i)
        if arr is None:
            raise ModelLoadError(f"'{base}' needs constant weights but '{self.tname(i)}' is computed at run time; "
                                 "openrknn reads TFLite models whose weights are constants")
        return self.b.const(np.ascontiguousarray(transform(arr)).astype(np.float32), base)

    def value(self, i: int, want: str = "any"):
        """The ONNX value of tensor i (a constant becomes an initializer, laid out as ``want`` asks)."""
        if not self.v.has(i):
            arr = self.array(i)
            if arr is None:
                raise ModelLoadError(f"tensor '{self.tname(i)}' is read before it is written; the model is not in "
                                     "execution order")
            if arr.ndim == 4 and want == "nchw":
                return self._const_value(arr.transpose(0, 3, 1, 2), self.tname(i), "nchw")
            return self._const_value(arr, self.tname(i), "nhwc" if arr.ndim == 4 else "plain")
        return self.v.get(i, want)

    def _const_value(self, arr, base, layout):
        from .builder import Value

        return Value(self.b.const(np.ascontiguousarray(arr), base), layout, arr.ndim)

    def put(self, i: int, name: str, layout: str) -> None:
        """Record op output tensor i; a quantized activation gets its QuantizeLinear -> DequantizeLinear."""
        q = self.qparams(i)
        dtype = _NP.get(self.tensor(i).Type())
        if q is not None and dtype == np.int16:
            self.int16_activations += 1
        if q is not None and dtype in (np.int8, np.uint8) and q[0].size == 1:
            scale, zp, _ = q
            base = self.tname(i)
            s = self.b.const(np.float32(scale[0]), f"{base}/scale")
            z = self.b.const(np.array(zp[0], dtype), f"{base}/zero_point")
            qn = self.b.node("QuantizeLinear", [name, s, z], f"{base}/q")
            name = self.b.node("DequantizeLinear", [qn, s, z], f"{base}/dq")
            self.quantized += 1
        self.v.set(i, name, layout, len(self.shape(i)))

    # ---- conversion -------------------------------------------------------------------------------------------
    def convert(self) -> "onnx.ModelProto":  # noqa: F821
        g = self.g
        for k in range(g.InputsLength()):
            i = g.Inputs(k)
            shape = self.shape(i)
            if not shape or any(d < 1 for d in shape):
                raise ModelLoadError(f"input '{self.tname(i)}' has shape {shape}; openrknn needs static input "
                                     "shapes")
            dtype = _NP.get(self.tensor(i).Type())
            file_nchw = len(shape) == 4 and self._read_as_nchw(i)
            if file_nchw and self.input_is_nchw:
                # a file written from PyTorch keeps its NCHW input: it is NCHW already, not an NHWC to present so
                self.notes.append(f"input '{self.tname(i)}' {shape} is NCHW in the file already; input_is_nchw "
                                  "leaves it as it is")
                name = self.b.add_input(self.tname(i), shape)
                layout = "nhwc"  # the file's own layout, whatever its dims mean
            elif len(shape) == 4 and self.input_is_nchw:
                n, h, w, c = shape
                name = self.b.add_input(self.tname(i), [n, c, h, w])
                layout = "nchw"
            else:
                name = self.b.add_input(self.tname(i), shape)
                layout = "nhwc"
            if len(shape) == 4:  # build() takes the layout the file states, unless config(input_layout=...) says
                self.input_layouts[name] = "nchw" if file_nchw or self.input_is_nchw else "nhwc"
            if dtype not in (np.float32, np.int8, np.uint8, np.int16):
                raise ModelLoadError(f"input '{self.tname(i)}' has type {dtype}; openrknn loads float and "
                                     "quantized-integer TFLite inputs")
            q = self.qparams(i)
            if q is not None and dtype in (np.int8, np.uint8):
                scale, zp = float(q[0][0]), int(q[1][0])
                mean = zp + (128 if dtype == np.int8 else 0)  # the feed is uint8 pixels: an int8 q is pixel - 128
                self.notes.append(f"input '{self.tname(i)}' is {np.dtype(dtype).name} in the file: the loaded model "
                                  f"takes its real value (q - {zp}) * {scale:.6g}; config(mean_values=[{mean}], "
                                  f"std_values=[{1 / scale:.6g}]) feeds it the same integers (the default when "
                                  "config() gives no mean/std)")
                if len(shape) == 4:
                    c = shape[1] if file_nchw else shape[3]
                    self.input_normalisation[name] = ([float(mean)] * c, [1 / scale] * c)
            self.put(i, name, layout)
        displays = [self.b.unique(self.tname(g.Outputs(k))) for k in range(g.OutputsLength())]  # kept for them
        for k in range(g.OperatorsLength()):
            self.op(g.Operators(k))
        for k, display in enumerate(displays):
            val = self.v.get(g.Outputs(k), "nhwc")  # the file's own layout for 4-D outputs
            self.b.outputs.append(self.b.node("Identity", [val.name], f"{display}/output", outputs=[display]))
        return self.b.model("openrknn-tflite")

    def op(self, op) -> None:
        oc = self.model.OperatorCodes(op.OpcodeIndex())
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        try:
            kind = self.opcode2name(code)
        except ValueError:
            kind = f"builtin {code}"
        ins = [int(x) for x in op.InputsAsNumpy()] if op.InputsLength() else []
        outs = [int(x) for x in op.OutputsAsNumpy()]
        layer = self.tname(outs[0]) if outs else kind
        if kind == "CUSTOM":
            custom = oc.CustomCode().decode("utf-8", "replace")
            handler = _CUSTOM_OPS.get(custom)
            if handler is None:
                raise UnsupportedLayer("TFLite", layer, f"CUSTOM:{custom}")
            handler(self, op, ins, outs, layer)
            return
        handler = _OPS.get(kind)
        if handler is None:
            raise UnsupportedLayer("TFLite", layer, kind)
        handler(self, op, ins, outs, layer)

    def _read_as_nchw(self, i: int) -> bool:
        """The file's own ops read 4-D input i as NCHW: every reader is a TRANSPOSE to NHWC (a file written from
        PyTorch keeps its input so). TFLite's convention otherwise: NHWC, whatever the dims look like."""
        readers = []
        for k in range(self.g.OperatorsLength()):
            op = self.g.Operators(k)
            if op.InputsLength() and i in [int(x) for x in op.InputsAsNumpy()]:
                readers.append(op)
        for op in readers:
            oc = self.model.OperatorCodes(op.OpcodeIndex())
            if self.opcode2name(max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())) != "TRANSPOSE":
                return False
            perm = self.array(int(op.InputsAsNumpy()[1]))
            if perm is None or [int(v) for v in np.ravel(perm)] != [0, 2, 3, 1]:
                return False
        return bool(readers)

    def options(self, op, cls_name: str):
        table = op.BuiltinOptions()
        opt = getattr(self.tfl, cls_name)()
        if table is not None:
            opt.Init(table.Bytes, table.Pos)
        return opt


# ---------------------------------------------------------------- op handlers


def _fused(r: _Reader, name: str, opt, layer: str) -> str:
    kind = _ACT.get(opt.FusedActivationFunction(), "?")
    return activation(r.b, name, kind, f"{layer}/act")


def _conv(r: _Reader, op, ins, outs, layer):
    opt = r.options(op, "Conv2DOptions")
    x = r.value(ins[0], "nchw")
    kshape = r.shape(ins[1])  # [O, H, W, I]
    w = r.weight(ins[1], lambda a: a.transpose(0, 3, 1, 2), {0: 0}, f"{layer}/weight")
    in_c = r.shape(ins[0])[3]
    group = max(1, in_c // kshape[3]) if kshape[3] else 1
    strides, dil = [opt.StrideH(), opt.StrideW()], [opt.DilationHFactor(), opt.DilationWFactor()]
    pads = (same_pads(r.shape(ins[0])[1:3], kshape[1:3], strides, dil) if opt.Padding() == 0 else [0, 0, 0, 0])
    inputs = [x.name, w] + ([r.weight(ins[2], lambda a: a, {}, f"{layer}/bias")] if len(ins) > 2 and ins[2] >= 0
                            else [])
    y = r.b.node("Conv", inputs, layer, kernel_shape=kshape[1:3], strides=strides, dilations=dil, pads=pads,
                 group=group)
    r.put(outs[0], _fused(r, y, opt, layer), "nchw")


def _depthwise(r: _Reader, op, ins, outs, layer):
    opt = r.options(op, "DepthwiseConv2DOptions")
    x = r.value(ins[0], "nchw")
    kshape = r.shape(ins[1])  # [1, H, W, O]
    w = r.weight(ins[1], lambda a: a.transpose(3, 0, 1, 2), {3: 0}, f"{layer}/weight")
    in_c = r.shape(ins[0])[3]
    strides, dil = [opt.StrideH(), opt.StrideW()], [opt.DilationHFactor(), opt.DilationWFactor()]
    pads = (same_pads(r.shape(ins[0])[1:3], kshape[1:3], strides, dil) if opt.Padding() == 0 else [0, 0, 0, 0])
    inputs = [x.name, w] + ([r.weight(ins[2], lambda a: a, {}, f"{layer}/bias")] if len(ins) > 2 and ins[2] >= 0
                            else [])
    y = r.b.node("Conv", inputs, layer, kernel_shape=kshape[1:3], strides=strides, dilations=dil, pads=pads,
                 group=in_c)
    r.put(outs[0], _fused(r, y, opt, layer), "nchw")


def _transpose_conv(r: _Reader, op, ins, outs, layer):
    opt = r.options(op, "TransposeConvOptions")
    out_shape = [int(v) for v in r.array(ins[0])]  # NHWC
    kshape = r.shape(ins[1])  # [O, H, W, I]
    x = r.value(ins[2], "nchw")
    w = r.weight(ins[1], lambda a: a.transpose(3, 0, 1, 2), {0: 1}, f"{layer}/weight")  # -> [I, O, H, W]
    strides = [opt.StrideH(), opt.StrideW()]
    pads, extra = transpose_pads(r.shape(ins[2])[1:3], strides, kshape[1:3], out_shape[1:3])
    inputs = [x.name, w] + ([r.weight(ins[3], lambda a: a, {}, f"{layer}/bias")] if len(ins) > 3 and ins[3] >= 0
                            else [])
    y = r.b.node("ConvTranspose", inputs, layer, kernel_shape=kshape[1:3], strides=strides, pads=pads,
                 output_padding=extra)
    kind = _ACT.get(opt.FusedActivationFunction(), "NONE") if hasattr(opt, "FusedActivationFunction") else "NONE"
    r.put(outs[0], activation(r.b, y, kind, f"{layer}/act"), "nchw")


def _transpose_conv_bias(r: _Reader, op, ins, outs, layer):
    """MediaPipe's custom Convolution2DTransposeBias (its selfie segmenters' decoder; XNNPACK runs it): a transpose
    conv with a bias input, its padding and strides in the custom options as TfLiteTransposeConvParams (three int32:
    padding 1 SAME / 2 VALID, stride_width, stride_height), the output size that of its output tensor."""
    raw = op.CustomOptionsAsNumpy().tobytes() if op.CustomOptionsLength() else b""
    if len(raw) < 12:
        raise ModelLoadError(f"TFLite layer '{layer}' (Convolution2DTransposeBias) has {len(raw)} bytes of options, "
                             "not the 12 of its padding and strides; the file is damaged")
    padding, stride_w, stride_h = struct.unpack("<3i", raw[:12])
    out_shape = r.shape(outs[0])  # NHWC
    kshape = r.shape(ins[1])  # [O, H, W, I]
    x = r.value(ins[0], "nchw")
    w = r.weight(ins[1], lambda a: a.transpose(3, 0, 1, 2), {0: 1}, f"{layer}/weight")  # -> [I, O, H, W]
    strides = [stride_h, stride_w]
    pads, extra = transpose_pads(r.shape(ins[0])[1:3], strides, kshape[1:3], out_shape[1:3], same=padding != 2)
    inputs = [x.name, w] + ([r.weight(ins[2], lambda a: a, {}, f"{layer}/bias")] if len(ins) > 2 and ins[2] >= 0
                            else [])
    y = r.b.node("ConvTranspose", inputs, layer, kernel_shape=kshape[1:3], strides=strides, pads=pads,
                 output_padding=extra)
    r.put(outs[0], y, "nchw")


_CUSTOM_OPS = {"Convolution2DTransposeBias": _transpose_conv_bias,
               "TFLite_Detection_PostProcess": detection_postprocess}


def _fully_connected(r: _Reader, op, ins, outs, layer):
    opt = r.options(op, "FullyConnectedOptions")
    x = r.value(ins[0], "nhwc")  # the flattening order is the file's (NHWC)
    wshape = r.shape(ins[1])  # [O, I]
    flat = r.b.node("Reshape", [x.name, r.b.const(np.array([-1, wshape[1]], np.int64), f"{layer}/shape")],
                    f"{layer}/flatten")
    w = r.weight(ins[1], lambda a: a, {0: 0}, f"{layer}/weight")
    inputs = [flat, w] + ([r.weight(ins[2], lambda a: a, {}, f"{layer}/bias")] if len(ins) > 2 and ins[2] >= 0
                          else [])
    y = r.b.node("Gemm", inputs, layer, transB=1)
    y = _fused(r, y, opt, layer)
    out_shape = r.shape(outs[0])
    if len(out_shape) != 2:
        y = r.b.node("Reshape", [y, r.b.const(np.array(out_shape, np.int64), f"{layer}/out_shape")],
                     f"{layer}/reshape")
    r.put(outs[0], y, "nhwc" if len(out_shape) == 4 else "plain")


def _pool(onnx_op):
    def handler(r: _Reader, op, ins, outs, layer):
        opt = r.options(op, "Pool2DOptions")
        x = r.value(ins[0], "nchw")
        k, s = [opt.FilterHeight(), opt.FilterWidth()], [opt.StrideH(), opt.StrideW()]
        pads = same_pads(r.shape(ins[0])[1:3], k, s) if opt.Padding() == 0 else [0, 0, 0, 0]
        y = r.b.node(onnx_op, [x.name], layer, kernel_shape=k, strides=s, pads=pads)
        r.put(outs[0], _fused(r, y, opt, layer), "nchw")
    return handler


def _binary(onnx_op, options: Optional[str]):
    def handler(r: _Reader, op, ins, outs, layer):
        a_const, b_const = r.array(ins[0]) is not None and not r.v.has(ins[0]), \
            r.array(ins[1]) is not None and not r.v.has(ins[1])
        vals = [None, None]
        act = [r.v.get(i) for i, c in zip(ins, (a_const, b_const)) if not c]
        layout = "nchw" if any(v.layout == "nchw" for v in act) else ("nhwc" if any(v.layout == "nhwc" for v in act)
                                                                       else "plain")
        if layout == "nchw" and any(v.rank < 4 for v in act):
            layout = "nhwc"  # a lower-rank activation broadcasts against the file's trailing (H, W, C) axes
        for k, (i, is_const) in enumerate(zip(ins, (a_const, b_const))):
            if is_const:
                arr = r.array(i)
                if layout == "nchw":
                    arr = const_for_layout(arr, "nchw")
                vals[k] = r.b.const(arr.astype(np.float32) if arr.dtype.kind == "f" else arr, f"{layer}/const{k}")
            else:
                vals[k] = r.v.get(i, layout if layout != "plain" else "any").name
        y = r.b.node(onnx_op, vals, layer)
        if options:
            y = _fused(r, y, r.options(op, options), layer)
        r.put(outs[0], y, layout)
    return handler


def _unary(onnx_op, **attrs):
    def handler(r: _Reader, op, ins, outs, layer):
        x = r.value(ins[0])
        r.put(outs[0], r.b.node(onnx_op, [x.name], layer, **attrs), x.layout)
    return handler


def _relu6(r, op, ins, outs, layer):
    x = r.value(ins[0])
    r.put(outs[0], activation(r.b, x.name, "RELU6", layer), x.layout)


def _relu_n1(r, op, ins, outs, layer):
    x = r.value(ins[0])
    r.put(outs[0], activation(r.b, x.name, "RELU_N1_TO_1", layer), x.layout)


def _leaky(r, op, ins, outs, layer):
    x = r.value(ins[0])
    alpha = r.options(op, "LeakyReluOptions").Alpha()
    r.put(outs[0], r.b.node("LeakyRelu", [x.name], layer, alpha=float(alpha)), x.layout)


def _prelu(r, op, ins, outs, layer):
    x = r.value(ins[0])
    alpha = r.array(ins[1])
    alpha = const_for_layout(alpha, x.layout) if x.layout == "nchw" else alpha
    if alpha.ndim == 4 and alpha.shape[0] == 1:
        alpha = alpha[0]  # [C, 1, 1]: the slope shape exporters write (the quantizer's channel rewrites expect it)
    r.put(outs[0], r.b.node("PRelu", [x.name, r.b.const(alpha.astype(np.float32), f"{layer}/slope")], layer),
          x.layout)


def _rsqrt(r, op, ins, outs, layer):
    x = r.value(ins[0])
    r.put(outs[0], r.b.node("Reciprocal", [r.b.node("Sqrt", [x.name], f"{layer}/sqrt")], layer), x.layout)


def _square(r, op, ins, outs, layer):
    x = r.value(ins[0])
    r.put(outs[0], r.b.node("Mul", [x.name, x.name], layer), x.layout)


def _concat(r, op, ins, outs, layer):
    opt = r.options(op, "ConcatenationOptions")
    rank = len(r.shape(outs[0]))
    axis = opt.Axis() % rank
    vals = [r.value(i) for i in ins]
    layout = "nchw" if rank == 4 and any(v.layout == "nchw" for v in vals) else ("nhwc" if rank == 4 else "plain")
    names = [r.value(i, layout if layout != "plain" else "any").name for i in ins]
    y = r.b.node("Concat", names, layer, axis=NHWC_AXIS_IN_NCHW[axis] if layout == "nchw" else axis)
    r.put(outs[0], _fused(r, y, opt, layer), layout)


def _reshape(r, op, ins, outs, layer):
    x = r.value(ins[0], "nhwc")
    shape = r.shape(outs[0])
    y = r.b.node("Reshape", [x.name, r.b.const(np.array(shape, np.int64), f"{layer}/shape")], layer)
    r.put(outs[0], y, "nhwc" if len(shape) == 4 else "plain")


def _pad(r, op, ins, outs, layer):
    x = r.value(ins[0])
    p = r.array(ins[1]).astype(np.int64)  # [[before, after] per dim], NHWC
    if x.layout == "nchw":
        p = p[[0, 3, 1, 2]]
    inputs = [x.name, r.b.const(np.concatenate([p[:, 0], p[:, 1]]).astype(np.int64), f"{layer}/pads")]
    if len(ins) > 2 and ins[2] >= 0:
        inputs.append(r.b.const(np.asarray(r.array(ins[2]), np.float32).reshape(()), f"{layer}/value"))
    r.put(outs[0], r.b.node("Pad", inputs, layer), x.layout)


def _mirror_pad(r, op, ins, outs, layer):
    x = r.value(ins[0])
    p = r.array(ins[1]).astype(np.int64)
    if x.layout == "nchw":
        p = p[[0, 3, 1, 2]]
    mode = "reflect" if r.options(op, "MirrorPadOptions").Mode() == 0 else "edge"
    if mode == "edge":
        raise UnsupportedLayer("TFLite", layer, "MIRROR_PAD", "SYMMETRIC mode")
    pads = r.b.const(np.concatenate([p[:, 0], p[:, 1]]).astype(np.int64), f"{layer}/pads")
    r.put(outs[0], r.b.node("Pad", [x.name, pads], layer, mode=mode), x.layout)


def _reduce(onnx_op):
    def handler(r: _Reader, op, ins, outs, layer):
        keep = bool(r.options(op, "ReducerOptions").KeepDims())
        axes = sorted(int(a) % len(r.shape(ins[0])) for a in np.atleast_1d(r.array(ins[1])))
        x = r.value(ins[0])
        layout = x.layout
        if layout == "nchw":
            mapped = [NHWC_AXIS_IN_NCHW[a] for a in axes]
            rest_nchw = [d for d in (0, 1, 2, 3) if d not in mapped]
            rest_nhwc = [NHWC_AXIS_IN_NCHW[d] for d in (0, 1, 2, 3) if d not in axes]
            if keep or rest_nchw == rest_nhwc:
                axes = sorted(mapped)
            else:
                x, layout = r.v.get(ins[0], "nhwc"), "nhwc"
        y = r.b.node(onnx_op, [x.name], layer, axes=axes, keepdims=int(keep))
        r.put(outs[0], y, layout if keep else "plain")
    return handler


def _softmax(r, op, ins, outs, layer):
    x = r.value(ins[0])
    beta = r.options(op, "SoftmaxOptions").Beta()
    name = x.name
    if beta != 1.0:
        name = r.b.node("Mul", [name, r.b.const(np.float32(beta), f"{layer}/beta")], f"{layer}/beta")
    axis = 1 if x.layout == "nchw" else -1
    r.put(outs[0], r.b.node("Softmax", [name], layer, axis=axis), x.layout)


def _resize(mode):
    def handler(r: _Reader, op, ins, outs, layer):
        x = r.value(ins[0], "nchw")
        opt = r.options(op, "ResizeBilinearOptions" if mode == "linear" else "ResizeNearestNeighborOptions")
        size = [int(v) for v in r.array(ins[1])]
        n, _, _, c = r.shape(ins[0])
        if opt.AlignCorners():
            ctm = "align_corners"
        elif opt.HalfPixelCenters():
            ctm = "half_pixel" if mode == "linear" else "tf_half_pixel_for_nn"
        else:
            ctm = "asymmetric"
        attrs = {"mode": mode, "coordinate_transformation_mode": ctm}
        if mode == "nearest":
            attrs["nearest_mode"] = "round_prefer_ceil" if opt.AlignCorners() else "floor"
        sizes = r.b.const(np.array([n, c] + size, np.int64), f"{layer}/sizes")
        y = r.b.node("Resize", [x.name, "", "", sizes], layer, **attrs)
        r.put(outs[0], y, "nchw")
    return handler


def _depth_space(onnx_op, options):
    def handler(r: _Reader, op, ins, outs, layer):
        x = r.value(ins[0], "nchw")
        bs = r.options(op, options).BlockSize()
        attrs = {"blocksize": bs}
        if onnx_op == "DepthToSpace":
            attrs["mode"] = "DCR"  # TensorFlow's channel order
        r.put(outs[0], r.b.node(onnx_op, [x.name], layer, **attrs), "nchw")
    return handler


def _dequantize(r, op, ins, outs, layer):
    arr = r.array(ins[0])
    if arr is not None and not r.v.has(ins[0]):
        r.consts[outs[0]] = arr.astype(np.float32)  # float16 / int8 weights: a float constant
        return
    x = r.value(ins[0])  # an activation: its value is already real (QDQ)
    r.v.set(outs[0], x.name, x.layout, x.rank)


def _densify(r, op, ins, outs, layer):
    arr = r.raw(ins[0])
    if arr is None:
        raise ModelLoadError(f"DENSIFY layer '{layer}' reads '{r.tname(ins[0])}', which is not a constant; openrknn "
                             "reads TFLite models whose sparse weights are stored in the file")
    r.consts[outs[0]] = arr  # as stored (float16 / int8 stay so): a DEQUANTIZE after it widens them


def _quantize(r, op, ins, outs, layer):
    x = r.value(ins[0])
    r.put(outs[0], r.b.node("Identity", [x.name], layer), x.layout)


def _transpose(r, op, ins, outs, layer):
    x = r.value(ins[0], "nhwc")
    perm = [int(p) for p in r.array(ins[1])]
    r.put(outs[0], r.b.node("Transpose", [x.name], layer, perm=perm), "nhwc" if len(perm) == 4 else "plain")


def _squeeze(r, op, ins, outs, layer):
    x = r.value(ins[0], "nhwc")
    y = r.b.node("Reshape", [x.name, r.b.const(np.array(r.shape(outs[0]), np.int64), f"{layer}/shape")], layer)
    r.put(outs[0], y, "nhwc" if len(r.shape(outs[0])) == 4 else "plain")


def _slice_like(r, op, ins, outs, layer, begin, size):
    x = r.value(ins[0], "nhwc")
    rank = len(begin)
    ends = [b + s if s >= 0 else np.iinfo(np.int64).max for b, s in zip(begin, size)]
    y = r.b.node("Slice", [x.name, r.b.const(np.array(begin, np.int64), f"{layer}/starts"),
                           r.b.const(np.array(ends, np.int64), f"{layer}/ends"),
                           r.b.const(np.arange(rank, dtype=np.int64), f"{layer}/axes")], layer)
    r.put(outs[0], y, "nhwc" if rank == 4 else "plain")


def _slice(r, op, ins, outs, layer):
    _slice_like(r, op, ins, outs, layer, [int(v) for v in r.array(ins[1])], [int(v) for v in r.array(ins[2])])


def _strided_slice(r, op, ins, outs, layer):
    opt = r.options(op, "StridedSliceOptions")
    if opt.EllipsisMask() or opt.NewAxisMask() or opt.ShrinkAxisMask():
        raise UnsupportedLayer("TFLite", layer, "STRIDED_SLICE", "ellipsis / new-axis / shrink masks")
    begin, end, strides = (list(map(int, r.array(i))) for i in ins[1:4])
    big = np.iinfo(np.int64).max
    for k in range(len(begin)):
        if opt.BeginMask() >> k & 1:
            begin[k] = 0 if strides[k] > 0 else big
        if opt.EndMask() >> k & 1:
            end[k] = big if strides[k] > 0 else -big
    x = r.value(ins[0], "nhwc")
    rank = len(begin)
    y = r.b.node("Slice", [x.name, r.b.const(np.array(begin, np.int64), f"{layer}/starts"),
                           r.b.const(np.array(end, np.int64), f"{layer}/ends"),
                           r.b.const(np.arange(rank, dtype=np.int64), f"{layer}/axes"),
                           r.b.const(np.array(strides, np.int64), f"{layer}/steps")], layer)
    r.put(outs[0], y, "nhwc" if rank == 4 else "plain")


def _split(r, op, ins, outs, layer):
    axis = int(np.asarray(r.array(ins[0])).reshape(()))
    x = r.value(ins[1])
    rank = len(r.shape(ins[1]))
    axis %= rank
    if x.layout == "nchw":
        axis = NHWC_AXIS_IN_NCHW[axis]
    sizes = [r.shape(o)[axis if x.layout != "nchw" else [0, 3, 1, 2][axis]] for o in outs]
    ys = r.b.node("Split", [x.name, r.b.const(np.array(sizes, np.int64), f"{layer}/split")], layer,
                  n_out=len(outs), axis=axis)
    for o, y in zip(outs, ys if isinstance(ys, list) else [ys]):
        r.put(o, y, x.layout)


def _hard_swish(r, op, ins, outs, layer):
    x = r.value(ins[0])
    r.put(outs[0], r.b.node("HardSwish", [x.name], layer), x.layout)


def _cast(r, op, ins, outs, layer):
    x = r.value(ins[0])
    to = {np.float32: TensorProto.FLOAT, np.int32: TensorProto.INT32, np.int64: TensorProto.INT64}.get(
        _NP.get(r.tensor(outs[0]).Type()), TensorProto.FLOAT)
    r.put(outs[0], r.b.node("Cast", [x.name], layer, to=to), x.layout)


def _not_equal(r, op, ins, outs, layer):
    _binary("Equal", None)(r, op, ins, outs, f"{layer}/equal")
    x = r.v.get(outs[0])
    r.put(outs[0], r.b.node("Not", [x.name], layer), x.layout)


def _select(r, op, ins, outs, layer):
    vals = [r.value(i) for i in ins]
    layout = next((v.layout for v in vals[1:] if v.rank == 4), "plain")
    names = [v.name if v.rank != 4 else r.value(i, layout).name for i, v in zip(ins, vals)]
    r.put(outs[0], r.b.node("Where", names, layer), layout)


def _file_layout(r, i: int):
    """Tensor i as the file lays it out (NHWC for 4-D): ops that index axes or elements read it so."""
    return r.value(i, "nhwc")


def _layout_of(rank: int) -> str:
    return "nhwc" if rank == 4 else "plain"


def _arg_max(onnx_op):
    def handler(r, op, ins, outs, layer):
        x = _file_layout(r, ins[0])
        axis = int(np.asarray(r.array(ins[1])).reshape(())) % len(r.shape(ins[0]))
        y = r.b.node(onnx_op, [x.name], layer, axis=axis, keepdims=0)  # the first of equal values, as TFLite
        if _NP.get(r.tensor(outs[0]).Type()) == np.int32:
            y = r.b.node("Cast", [y], f"{layer}/int32", to=TensorProto.INT32)
        r.put(outs[0], y, _layout_of(len(r.shape(outs[0]))))
    return handler


def _floor_div(r, op, ins, outs, layer):
    """a // b rounded down. ONNX's integer Div truncates toward zero, so integers take away the floor remainder first
    (Mod with fmod=0 has the divisor's sign): (a - a mod b) / b divides exactly."""
    a, b = _file_layout(r, ins[0]), _file_layout(r, ins[1])
    if _NP.get(r.tensor(outs[0]).Type()) in (np.int32, np.int64):
        rest = r.b.node("Mod", [a.name, b.name], f"{layer}/mod", fmod=0)
        y = r.b.node("Div", [r.b.node("Sub", [a.name, rest], f"{layer}/exact"), b.name], layer)
    else:
        y = r.b.node("Floor", [r.b.node("Div", [a.name, b.name], f"{layer}/div")], layer)
    r.put(outs[0], y, _layout_of(len(r.shape(outs[0]))))


def _gather_nd(r, op, ins, outs, layer):
    x = _file_layout(r, ins[0])
    idx = r.b.node("Cast", [_file_layout(r, ins[1]).name], f"{layer}/indices", to=TensorProto.INT64)
    r.put(outs[0], r.b.node("GatherND", [x.name, idx], layer), _layout_of(len(r.shape(outs[0]))))


def _pack(r, op, ins, outs, layer):
    """TFLite's PACK (tf.stack): each input gets the new axis, then one Concat along it."""
    out_shape = r.shape(outs[0])
    axis = r.options(op, "PackOptions").Axis() % len(out_shape)
    parts = []
    for k, i in enumerate(ins):
        shape = list(r.shape(i))
        shape.insert(axis, 1)
        parts.append(r.b.node("Reshape", [_file_layout(r, i).name,
                                          r.b.const(np.array(shape, np.int64), f"{layer}/shape{k}")], f"{layer}/in{k}"))
    r.put(outs[0], r.b.node("Concat", parts, layer, axis=axis), _layout_of(len(out_shape)))


def _unpack(r, op, ins, outs, layer):
    """TFLite's UNPACK (tf.unstack): a Split into ones along the axis, each part without it."""
    in_shape = r.shape(ins[0])
    axis = r.options(op, "UnpackOptions").Axis() % len(in_shape)
    ys = r.b.node("Split", [_file_layout(r, ins[0]).name, r.b.const(np.ones(len(outs), np.int64), f"{layer}/split")],
                  f"{layer}/split", n_out=len(outs), axis=axis)
    for k, (o, y) in enumerate(zip(outs, ys if isinstance(ys, list) else [ys])):
        shape = r.b.const(np.array(r.shape(o), np.int64), f"{layer}/shape{k}")
        r.put(o, r.b.node("Reshape", [y, shape], f"{layer}/{k}"), _layout_of(len(r.shape(o))))


# UNIDIRECTIONAL_SEQUENCE_LSTM's inputs: the input_to_* weights (1-4), recurrent_to_* (5-8), the peephole cell_to_*
# (9-11), the gate biases (12-15), each in the file's gate order input, forget, cell, output; ONNX's is i, o, f, c
_LSTM_GATES = (0, 3, 1, 2)  # ONNX gate k is the file's gate _LSTM_GATES[k]
_LSTM_ACTS = {1: "Relu", 4: "Tanh"}


def _sequence_lstm(r, op, ins, outs, layer):
    """UNIDIRECTIONAL_SEQUENCE_LSTM -> one ONNX LSTM over the whole sequence (its weights dequantized when the file
    stores integers: the chip's own quantizer decides how to run it), the states it starts from taken from the
    file's state tensors. Variants ONNX's LSTM has no form for (no input gate, a projection, layer norms) are
    refused by name."""
    opt = r.options(op, "UnidirectionalSequenceLSTMOptions")
    given = [k < len(ins) and ins[k] >= 0 for k in range(24)]
    act = _LSTM_ACTS.get(opt.FusedActivationFunction())
    problem = ("no input gate (a CIFG LSTM couples it to the forget gate)" if not all(given[k] for k in (1, 5, 12))
               else "a projection" if given[16] or given[17]
               else "layer normalisation" if any(given[20:24])
               else f"a {_ACT.get(opt.FusedActivationFunction(), '?')} cell activation" if act is None else "")
    if problem:
        raise ModelLoadError(f"TFLite layer '{layer}' (UNIDIRECTIONAL_SEQUENCE_LSTM) has {problem}, which ONNX's "
                             "LSTM cannot express; convert the model to ONNX with a tool that unrolls it and use "
                             "load_onnx()")

    def stacked(first: int):  # four per-gate constants from index ``first`` on, in ONNX's gate order
        return np.concatenate([r.array(ins[first + g]) for g in _LSTM_GATES])[None].astype(np.float32)

    w, rec = stacked(1), stacked(5)
    hidden = rec.shape[2]
    bias = np.concatenate([stacked(12), np.zeros((1, 4 * hidden), np.float32)], axis=1)
    inputs = [r.b.const(w, f"{layer}/W"), r.b.const(rec, f"{layer}/R"), r.b.const(bias, f"{layer}/B")]
    x = _file_layout(r, ins[0]).name
    if not opt.TimeMajor():
        x = r.b.node("Transpose", [x], f"{layer}/time_major", perm=[1, 0, 2])
    batch = r.shape(ins[0])[1 if opt.TimeMajor() else 0]
    states = []
    for k in (18, 19):  # output_state, cell_state: variables that start at their stored value (zeros if none)
        v = r.array(ins[k]) if given[k] else None
        states.append(r.b.const(np.zeros((1, batch, hidden), np.float32) if v is None else
                                np.asarray(v, np.float32).reshape(1, batch, hidden), f"{layer}/state{k - 18}"))
    inputs += ["", states[0], states[1]]
    r.notes.append(f"LSTM '{layer}': its states are variables in the file, which LiteRT carries from one invoke to "
                   "the next; the loaded model starts every inference from their stored value (feed whole "
                   "sequences, or reset LiteRT's variables, to compare)")
    if any(given[k] for k in (9, 10, 11)):  # peepholes, ONNX's order i, o, f
        inputs.append(r.b.const(np.concatenate([r.array(ins[k]) for k in (9, 11, 10)])[None].astype(np.float32),
                                f"{layer}/P"))
    if opt.CellClip() > 0:
        r.notes.append(f"LSTM '{layer}': cell_clip {opt.CellClip():g} not carried over (ONNX's LSTM clips no cell "
                       "state); a cell state beyond it would differ")
    y = r.b.node("LSTM", [x] + inputs, f"{layer}/lstm", hidden_size=hidden,
                 activations=["Sigmoid", act, act])
    y = r.b.node("Squeeze", [y, r.b.const(np.array([1], np.int64), f"{layer}/axes")], f"{layer}/squeeze")
    if not opt.TimeMajor():
        y = r.b.node("Transpose", [y], layer, perm=[1, 0, 2])
    r.put(outs[0], y, "plain")


def _branch(r: "_Reader", index: int, args: List[int]) -> list:
    """The outputs (Values) of subgraph ``index`` run on the caller's tensors ``args``, its ops emitted into the same
    ONNX graph. A constant passed in (a converter hands a branch its weights as inputs) stays a constant there."""
    if not 0 <= index < r.model.SubgraphsLength():
        raise ModelLoadError(f"'{r.path}': an IF names subgraph {index}, which the file does not have")
    child = copy.copy(r)  # the same builder and file; its own subgraph, tensor values and constants
    child.g = r.model.Subgraphs(index)
    child.consts = {}
    child.v = ChannelLast(r.b, lambda i: child.shape(i) or None)
    for k in range(child.g.InputsLength()):
        inner, outer = child.g.Inputs(k), args[k]
        if not r.v.has(outer) and r.raw(outer) is not None:
            child.consts[inner] = r.raw(outer)
        else:
            val = r.value(outer)
            child.v.set(inner, val.name, val.layout, val.rank)
    for k in range(child.g.OperatorsLength()):
        child.op(child.g.Operators(k))
    r.quantized, r.sparse = child.quantized, child.sparse
    return [child.v.get(child.g.Outputs(k)) for k in range(child.g.OutputsLength())]


def _if(r, op, ins, outs, layer):
    """TFLite's IF runs one of two subgraphs. A static NPU graph runs both and keeps each output with a Where on the
    condition (as load_onnx does with an ONNX If on data); the load's check run proves both branches run."""
    opt = r.options(op, "IfOptions")
    then_vals = _branch(r, opt.ThenSubgraphIndex(), ins[1:])
    else_vals = _branch(r, opt.ElseSubgraphIndex(), ins[1:])
    cond = r.b.node("Cast", [r.value(ins[0]).name], f"{layer}/condition", to=TensorProto.BOOL)
    for k, (t, e) in enumerate(zip(then_vals, else_vals)):
        if t.rank == 4 and e.layout != t.layout:
            raise ModelLoadError(f"IF '{layer}': its branches give output {k} in different layouts")
        r.put(outs[k], r.b.node("Where", [cond, t.name, e.name], f"{layer}/select{k}"), t.layout)
    r.notes.append(f"IF '{layer}': both branches computed and each output picked by the condition (a static NPU "
                   "graph; the branch not taken runs too)")


_OPS = {
    "CONV_2D": _conv, "DEPTHWISE_CONV_2D": _depthwise, "TRANSPOSE_CONV": _transpose_conv,
    "FULLY_CONNECTED": _fully_connected, "AVERAGE_POOL_2D": _pool("AveragePool"), "MAX_POOL_2D": _pool("MaxPool"),
    "ADD": _binary("Add", "AddOptions"), "SUB": _binary("Sub", "SubOptions"), "MUL": _binary("Mul", "MulOptions"),
    "DIV": _binary("Div", "DivOptions"), "MAXIMUM": _binary("Max", None), "MINIMUM": _binary("Min", None),
    "POW": _binary("Pow", None),
    "RELU": _unary("Relu"), "RELU6": _relu6, "RELU_N1_TO_1": _relu_n1, "LEAKY_RELU": _leaky, "PRELU": _prelu,
    "LOGISTIC": _unary("Sigmoid"), "TANH": _unary("Tanh"), "HARD_SWISH": _hard_swish, "ELU": _unary("Elu"),
    "EXP": _unary("Exp"), "LOG": _unary("Log"), "SQRT": _unary("Sqrt"), "RSQRT": _rsqrt, "ABS": _unary("Abs"),
    "NEG": _unary("Neg"), "SQUARE": _square,
    "CONCATENATION": _concat, "RESHAPE": _reshape, "SQUEEZE": _squeeze, "EXPAND_DIMS": _squeeze,
    "PAD": _pad, "PADV2": _pad, "MIRROR_PAD": _mirror_pad,
    "MEAN": _reduce("ReduceMean"), "REDUCE_MAX": _reduce("ReduceMax"), "REDUCE_MIN": _reduce("ReduceMin"),
    "SOFTMAX": _softmax, "RESIZE_BILINEAR": _resize("linear"), "RESIZE_NEAREST_NEIGHBOR": _resize("nearest"),
    "DEPTH_TO_SPACE": _depth_space("DepthToSpace", "DepthToSpaceOptions"),
    "SPACE_TO_DEPTH": _depth_space("SpaceToDepth", "SpaceToDepthOptions"),
    "DEQUANTIZE": _dequantize, "DENSIFY": _densify, "QUANTIZE": _quantize, "TRANSPOSE": _transpose, "SLICE": _slice,
    "STRIDED_SLICE": _strided_slice, "SPLIT": _split, "CAST": _cast,
    "GREATER": _binary("Greater", None), "GREATER_EQUAL": _binary("GreaterOrEqual", None),
    "LESS": _binary("Less", None), "LESS_EQUAL": _binary("LessOrEqual", None), "EQUAL": _binary("Equal", None),
    "NOT_EQUAL": _not_equal, "LOGICAL_AND": _binary("And", None), "LOGICAL_OR": _binary("Or", None),
    "LOGICAL_NOT": _unary("Not"), "SELECT": _select, "SELECT_V2": _select, "IF": _if,
    "ARG_MAX": _arg_max("ArgMax"), "ARG_MIN": _arg_max("ArgMin"), "FLOOR_DIV": _floor_div, "GATHER_ND": _gather_nd,
    "PACK": _pack, "UNPACK": _unpack, "UNIDIRECTIONAL_SEQUENCE_LSTM": _sequence_lstm,
}
_OPS = {k: v for k, v in _OPS.items() if v is not None}


def load_tflite(path: str | Path, input_is_nchw: bool = False) -> LoadedModel:
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"TFLite model file not found: '{path}'. Check the path (relative paths are resolved "
                             f"against the current folder, {Path.cwd()}).")
    buf = path.read_bytes()
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise ModelLoadError(f"'{path}' is not a TFLite flatbuffer (no 'TFL3' identifier at byte 4); give a .tflite "
                             "file")
    reader = _Reader(path, buf, bool(input_is_nchw))
    model = reader.convert()
    if any(n.startswith("IF ") for n in reader.notes):
        from .onnx import _dry_run

        failure = _dry_run(model)
        if failure:
            raise ModelLoadError(f"'{path}': an IF's two branches cannot both run at these input sizes "
                                 f"({failure[:200]}); a static NPU graph computes both. Convert the model without the "
                                 "IF (fix the condition at export) or cut it before the IF")
    notes = [f"TFLite converted to ONNX: {reader.g.OperatorsLength()} operators -> {len(model.graph.node)} nodes"]
    if reader.quantized:
        notes.append(f"quantized TFLite: {reader.quantized} scales / zero points kept as QuantizeLinear / "
                     "DequantizeLinear")
    if reader.sparse:
        notes.append(f"{reader.sparse} sparse weight(s) densified")
    if reader.int16_activations:
        notes.append(f"{reader.int16_activations} int16 activations (a 16x8 model) load as float: their scales are "
                     "not kept, and build(do_quantization=False) quantizes them from its dataset at the configured "
                     "quantized_dtype (give it real inputs)")
    notes += reader.notes
    if reader.model.SubgraphsLength() > 1 and not any(n.startswith("IF ") for n in reader.notes):
        notes.append(f"only the main subgraph of {reader.model.SubgraphsLength()} was converted")
    log.info("loaded TFLite %s: %s", path, notes[0])
    return LoadedModel(model, "tflite", str(path), file_sha256(path), notes,
                       input_normalisation=reader.input_normalisation or None,
                       input_layouts=reader.input_layouts or None)
