"""Caffe .prototxt + .caffemodel -> one ONNX graph (NCHW, as Caffe computes), read with caffe_schema (no Caffe).

The .prototxt (protobuf text) gives the layers, the .caffemodel (protobuf binary) their weights, matched by layer
name. In-place layers (top == bottom, Caffe's ReLU/BatchNorm/Scale habit) are followed by name. A BatchNorm followed by
its Scale becomes one BatchNormalization (folded into the convolution before it by the graph optimiser). Pooling keeps
Caffe's ceil rounding with its rule that the last window must start inside the padded input, and average pooling
divides by the window clipped to the padded input, as Caffe does.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from ..errors import ModelLoadError
from . import LoadedModel, file_sha256, normalize_size_list
from .builder import GraphBuilder, UnsupportedLayer

log = logging.getLogger("openrknn.frontends.caffe")

_SKIP = {"Data", "ImageData", "MemoryData", "HDF5Data", "WindowData", "DummyData", "Accuracy", "SoftmaxWithLoss",
         "EuclideanLoss", "SigmoidCrossEntropyLoss", "HingeLoss", "Silence"}
_PASS = {"Dropout", "Split"}


def _read_net(prototxt: Path, caffemodel: Optional[Path]):
    from google.protobuf import text_format
    from google.protobuf.message import DecodeError

    from .caffe_schema import NetParameter

    net = NetParameter()
    try:
        text_format.Parse(prototxt.read_text(encoding="utf-8"), net, allow_unknown_field=True,
                          allow_unknown_extension=True)
    except (text_format.ParseError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"'{prototxt}' is not a readable Caffe .prototxt ({str(e)[:200]}); load_caffe(model=<the "
                             ".prototxt>, blobs=<the .caffemodel>)") from None
    if net.layers and not net.layer:
        raise ModelLoadError(f"'{prototxt}' uses Caffe's old V1 'layers' format; upgrade it with Caffe's "
                             "upgrade_net_proto_text / upgrade_net_proto_binary tools first")
    weights: Dict[str, list] = {}
    if caffemodel is not None:
        blob_net = NetParameter()
        try:
            blob_net.ParseFromString(caffemodel.read_bytes())
        except DecodeError as e:
            raise ModelLoadError(f"'{caffemodel}' is not a readable .caffemodel ({e}); pass the binary weights "
                                 "file as blobs=") from None
        if blob_net.layers and not blob_net.layer:
            raise ModelLoadError(f"'{caffemodel}' uses Caffe's old V1 format; upgrade it with Caffe's "
                                 "upgrade_net_proto_binary tool first")
        weights = {layer.name: list(layer.blobs) for layer in blob_net.layer if layer.blobs}
    return net, weights


def _blob(b) -> np.ndarray:
    data = np.asarray(b.data if len(b.data) else b.double_data, np.float32)
    shape = list(b.shape.dim) if len(b.shape.dim) else [d for d in (b.num, b.channels, b.height, b.width)]
    if len(b.shape.dim) == 0:  # legacy 4-D blobs: drop the leading 1s the old format padded with
        while len(shape) > 1 and shape[0] == 1 and int(np.prod(shape[1:])) == data.size:
            shape = shape[1:]
    if int(np.prod(shape)) != data.size:
        shape = [data.size]
    return data.reshape(shape)


def _hw(p, name: str, default: int) -> List[int]:
    """Caffe's (value | repeated value | value_h/value_w) pattern -> [h, w]."""
    h, w = getattr(p, f"{name}_h", 0), getattr(p, f"{name}_w", 0)
    if h or w:
        return [h or default, w or default]
    v = getattr(p, name)
    if hasattr(v, "__len__"):
        v = list(v)
        return [v[0], v[-1]] if v else [default, default]
    return [v if p.HasField(name) else default] * 2


class _Converter:
    def __init__(self, net, weights: Dict[str, list], name: str):
        self.net, self.weights = net, weights
        self.b = GraphBuilder(name)
        self.blobs: Dict[str, str] = {}  # Caffe blob name -> current ONNX tensor
        self.shapes: Dict[str, List[int]] = {}  # ONNX tensor -> shape (static)
        self.reads: Dict[str, int] = {}
        self.bn_of: Dict[str, tuple] = {}  # ONNX tensor -> (scale init, bias init) of the BN that wrote it
        self.inits = {}

    def params(self, layer, n: int, what: str) -> List[np.ndarray]:
        got = self.weights.get(layer.name, [])
        if len(got) < n:
            raise ModelLoadError(f"layer '{layer.name}' ({layer.type}) needs {what} but the .caffemodel holds "
                                 f"{len(got)} blob(s) for it; pass the .caffemodel that matches the .prototxt")
        return [_blob(b) for b in got]

    def get(self, blob: str, layer) -> str:
        if blob not in self.blobs:
            raise ModelLoadError(f"layer '{layer.name}' ({layer.type}) reads blob '{blob}', which no earlier layer "
                                 "or input produces")
        t = self.blobs[blob]
        self.reads[t] = self.reads.get(t, 0) + 1
        return t

    def set(self, blob: str, tensor: str, shape: List[int]) -> None:
        self.blobs[blob] = tensor
        self.shapes[tensor] = [int(d) for d in shape]

    def const(self, arr, base: str) -> str:
        name = self.b.const(arr, base)
        self.inits[name] = self.b.inits[-1]
        return name

    def convert(self, input_shapes: Optional[List[List[int]]], input_name: Optional[str]):
        net = self.net
        declared = []  # (name, shape)
        for k, name in enumerate(net.input):
            if k < len(net.input_shape):
                shape = list(net.input_shape[k].dim)
            else:
                shape = list(net.input_dim[4 * k:4 * k + 4])
            declared.append((name, shape))
        for layer in net.layer:
            if layer.type == "Input":
                shapes = [list(s.dim) for s in layer.input_param.shape]
                for k, top in enumerate(layer.top):
                    declared.append((top, shapes[min(k, len(shapes) - 1)] if shapes else []))
        if input_name is not None:
            names = [d[0] for d in declared]
            if input_name not in names:
                raise ModelLoadError(f"input_name='{input_name}' is not an input of this model; its inputs are "
                                     f"{names}")
            declared = [d for d in declared if d[0] == input_name]
        if not declared:
            raise ModelLoadError("the .prototxt declares no input (an Input layer or input/input_shape); add one, e.g. "
                                 "input: \"data\" input_shape { dim: 1 dim: 3 dim: 224 dim: 224 }")
        if input_shapes:
            if len(input_shapes) != len(declared):
                raise ModelLoadError(f"input_size_list has {len(input_shapes)} shapes for {len(declared)} inputs")
            declared = [(n, s) for (n, _), s in zip(declared, input_shapes)]
        for name, shape in declared:
            if len(shape) < 1 or any(d < 1 for d in shape):
                raise ModelLoadError(f"input '{name}' has shape {shape}; give input_size_list with its full shape")
            shape = [1] + list(shape[1:])  # batch 1, as every openrknn model
            self.set(name, self.b.add_input(name, shape), shape)
        last_tops: List[str] = []
        for layer in net.layer:
            if layer.type == "Input" or layer.type in _SKIP:
                continue
            if any(r.phase == 0 and r.HasField("phase") for r in layer.include):  # TRAIN-only
                continue
            self.layer(layer)
            last_tops = list(layer.top) or last_tops
        read_later = set()
        outputs = []
        consumed = {b for layer in net.layer if layer.type not in _SKIP for b in layer.bottom}
        produced = [t for layer in net.layer if layer.type not in _SKIP and layer.type != "Input" for t in layer.top]
        for top in dict.fromkeys(produced):
            t = self.blobs.get(top)
            if t is None or t in read_later:
                continue
            if top not in consumed or self.reads.get(t, 0) == 0:
                outputs.append(t)
        self.b.outputs = outputs or [self.blobs[last_tops[0]]]
        return self.b.model("openrknn-caffe")

    # ---- layers -----------------------------------------------------------------------------------------------
    def layer(self, layer) -> None:
        kind = layer.type
        handler = getattr(self, f"_{kind.lower()}", None)
        if kind in _PASS:
            x = self.get(layer.bottom[0], layer)
            for top in layer.top:
                self.set(top, x, self.shapes[x])
            return
        if handler is None:
            raise UnsupportedLayer("Caffe", layer.name, kind)
        handler(layer)

    def _one(self, layer, op: str, **attrs) -> None:
        x = self.get(layer.bottom[0], layer)
        y = self.b.node(op, [x], layer.name, **attrs)
        self.set(layer.top[0], y, self.shapes[x])

    def _convolution(self, layer, transpose: bool = False) -> None:
        p = layer.convolution_param
        x = self.get(layer.bottom[0], layer)
        n, c, h, w = self.shapes[x]
        blobs = self.params(layer, 2 if p.bias_term else 1, "weights" + (" and a bias" if p.bias_term else ""))
        k, s, pad = _hw(p, "kernel", 1) if p.kernel_h else _hw(p, "kernel_size", 1), _hw(p, "stride", 1), \
            _hw(p, "pad", 0)
        dil = list(p.dilation) or [1]
        dil = [dil[0], dil[-1]]
        group = p.group or 1
        out = p.num_output
        wt = blobs[0].reshape((c, out // group, k[0], k[1]) if transpose else (out, c // group, k[0], k[1]))
        inputs = [x, self.const(wt, f"{layer.name}/weight")]
        if p.bias_term:
            inputs.append(self.const(blobs[1].reshape(-1), f"{layer.name}/bias"))
        op = "ConvTranspose" if transpose else "Conv"
        y = self.b.node(op, inputs, layer.name, kernel_shape=k, strides=s, pads=pad + pad, dilations=dil,
                        group=group)
        if transpose:
            oh = (h - 1) * s[0] - 2 * pad[0] + dil[0] * (k[0] - 1) + 1
            ow = (w - 1) * s[1] - 2 * pad[1] + dil[1] * (k[1] - 1) + 1
        else:
            oh = (h + 2 * pad[0] - dil[0] * (k[0] - 1) - 1) // s[0] + 1
            ow = (w + 2 * pad[1] - dil[1] * (k[1] - 1) - 1) // s[1] + 1
        self.set(layer.top[0], y, [n, out, oh, ow])

    def _deconvolution(self, layer) -> None:
        self._convolution(layer, transpose=True)

    def _pooling(self, layer) -> None:
        p = layer.pooling_param
        x = self.get(layer.bottom[0], layer)
        n, c, h, w = self.shapes[x]
        is_max = p.pool == 0
        if p.pool == 2:
            raise UnsupportedLayer("Caffe", layer.name, "Pooling (STOCHASTIC)")
        if p.global_pooling:
            y = self.b.node("GlobalMaxPool" if is_max else "GlobalAveragePool", [x], layer.name)
            self.set(layer.top[0], y, [n, c, 1, 1])
            return
        k = [p.kernel_h, p.kernel_w] if p.kernel_h else [p.kernel_size] * 2
        s = [p.stride_h, p.stride_w] if p.stride_h else [p.stride] * 2
        pad = [p.pad_h, p.pad_w] if (p.pad_h or p.pad_w) else [p.pad] * 2
        floor = p.round_mode == 1
        outs, extra = [], []
        for size, kk, ss, pp in zip((h, w), k, s, pad):
            o = (size + 2 * pp - kk) // ss + 1 if floor else int(math.ceil((size + 2 * pp - kk) / ss)) + 1
            if pp and (o - 1) * ss >= size + pp:
                o -= 1  # Caffe: the last window starts inside the padded input
            outs.append(o)
            extra.append(max((o - 1) * ss + kk - size - 2 * pp, 0))
        if is_max:
            y = self.b.node("MaxPool", [x], layer.name, kernel_shape=k, strides=s,
                            pads=pad + [pad[0] + extra[0], pad[1] + extra[1]])
        else:
            src = x
            if any(pad):  # zeros that count in the divisor, then the overhang that does not (Caffe's rule)
                pads = self.const(np.array([0, 0, pad[0], pad[1], 0, 0, pad[0], pad[1]], np.int64),
                                  f"{layer.name}/pads")
                src = self.b.node("Pad", [x, pads], f"{layer.name}/pad")
            y = self.b.node("AveragePool", [src], layer.name, kernel_shape=k, strides=s,
                            pads=[0, 0, extra[0], extra[1]], count_include_pad=0)
        self.set(layer.top[0], y, [n, c, outs[0], outs[1]])

    def _innerproduct(self, layer) -> None:
        p = layer.inner_product_param
        x = self.get(layer.bottom[0], layer)
        shape = self.shapes[x]
        blobs = self.params(layer, 2 if p.bias_term else 1, "weights")
        axis = p.axis % len(shape)
        flat = self.b.node("Flatten", [x], f"{layer.name}/flatten", axis=axis)
        k = int(np.prod(shape[axis:]))
        wt = blobs[0].reshape((k, p.num_output) if p.transpose else (p.num_output, k))
        inputs = [flat, self.const(wt, f"{layer.name}/weight")]
        if p.bias_term:
            inputs.append(self.const(blobs[1].reshape(-1), f"{layer.name}/bias"))
        y = self.b.node("Gemm", inputs, layer.name, transB=0 if p.transpose else 1)
        self.set(layer.top[0], y, shape[:axis] + [p.num_output])

    def _batchnorm(self, layer) -> None:
        x = self.get(layer.bottom[0], layer)
        shape = self.shapes[x]
        blobs = self.params(layer, 3, "mean, variance and scale factor")
        sf = float(blobs[2].reshape(-1)[0])
        f = 0.0 if sf == 0 else 1.0 / sf
        mean, var = blobs[0].reshape(-1) * f, blobs[1].reshape(-1) * f
        c = mean.size
        gamma = self.const(np.ones(c, np.float32), f"{layer.name}/scale")
        beta = self.const(np.zeros(c, np.float32), f"{layer.name}/bias")
        eps = layer.batch_norm_param.eps if layer.HasField("batch_norm_param") else 1e-5
        y = self.b.node("BatchNormalization", [x, gamma, beta, self.const(mean, f"{layer.name}/mean"),
                                               self.const(var, f"{layer.name}/var")], layer.name, epsilon=float(eps))
        self.bn_of[y] = (gamma, beta)
        self.set(layer.top[0], y, shape)

    def _scale(self, layer) -> None:
        p = layer.scale_param
        x = self.get(layer.bottom[0], layer)
        shape = self.shapes[x]
        if len(layer.bottom) > 1:  # the scale is a second input
            other = self.get(layer.bottom[1], layer)
            oshape = self.shapes[other]
            axis = p.axis % len(shape)
            tgt = [1] * axis + oshape + [1] * (len(shape) - axis - len(oshape))
            r = self.b.node("Reshape", [other, self.const(np.array(tgt, np.int64), f"{layer.name}/shape")],
                            f"{layer.name}/reshape")
            self.set(layer.top[0], self.b.node("Mul", [x, r], layer.name), shape)
            return
        blobs = self.params(layer, 2 if p.bias_term else 1, "scale" + (" and bias" if p.bias_term else ""))
        gamma = blobs[0].reshape(-1)
        bias = blobs[1].reshape(-1) if p.bias_term else np.zeros_like(gamma)
        bn = self.bn_of.get(x)
        if bn is not None and self.reads.get(x, 0) == 1 and p.axis == 1:  # fold into the BatchNorm before it
            from onnx import numpy_helper

            g_t, b_t = self.inits[bn[0]], self.inits[bn[1]]
            g_t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(g_t) * gamma, g_t.name))
            b_t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(b_t) * gamma + bias, b_t.name))
            self.reads[x] = 0
            self.set(layer.top[0], x, shape)
            return
        axis = p.axis % len(shape)
        bshape = [1] * len(shape)
        for k, d in enumerate(blobs[0].shape):
            bshape[axis + k] = d
        y = self.b.node("Mul", [x, self.const(gamma.reshape(bshape), f"{layer.name}/scale")], layer.name)
        if p.bias_term:
            y = self.b.node("Add", [y, self.const(bias.reshape(bshape), f"{layer.name}/bias")], f"{layer.name}/bias")
        self.set(layer.top[0], y, shape)

    def _bias(self, layer) -> None:
        x = self.get(layer.bottom[0], layer)
        shape = self.shapes[x]
        b = self.params(layer, 1, "a bias")[0]
        axis = layer.bias_param.axis % len(shape)
        bshape = [1] * len(shape)
        for k, d in enumerate(b.shape):
            bshape[axis + k] = d
        self.set(layer.top[0], self.b.node("Add", [x, self.const(b.reshape(bshape), f"{layer.name}/bias")],
                                           layer.name), shape)

    def _relu(self, layer) -> None:
        slope = layer.relu_param.negative_slope
        if slope:
            self._one(layer, "LeakyRelu", alpha=float(slope))
        else:
            self._one(layer, "Relu")

    def _prelu(self, layer) -> None:
        x = self.get(layer.bottom[0], layer)
        shape = self.shapes[x]
        slope = self.params(layer, 1, "slopes")[0].reshape(-1)
        slope = slope.reshape([-1] + [1] * (len(shape) - 2)) if slope.size > 1 else slope.reshape([1])
        self.set(layer.top[0], self.b.node("PRelu", [x, self.const(slope, f"{layer.name}/slope")], layer.name),
                 shape)

    def _sigmoid(self, layer) -> None:
        self._one(layer, "Sigmoid")

    def _tanh(self, layer) -> None:
        self._one(layer, "Tanh")

    def _absval(self, layer) -> None:
        self._one(layer, "Abs")

    def _bnll(self, layer) -> None:
        self._one(layer, "Softplus")

    def _elu(self, layer) -> None:
        self._one(layer, "Elu", alpha=float(layer.elu_param.alpha))

    def _power(self, layer) -> None:
        p = layer.power_param
        x = self.get(layer.bottom[0], layer)
        y = x
        if p.scale != 1:
            y = self.b.node("Mul", [y, self.const(np.float32(p.scale), f"{layer.name}/scale")], f"{layer.name}/mul")
        if p.shift:
            y = self.b.node("Add", [y, self.const(np.float32(p.shift), f"{layer.name}/shift")], f"{layer.name}/add")
        if p.power != 1:
            y = self.b.node("Pow", [y, self.const(np.float32(p.power), f"{layer.name}/power")], layer.name)
        if y == x:
            y = self.b.node("Identity", [x], layer.name)
        self.set(layer.top[0], y, self.shapes[x])

    def _eltwise(self, layer) -> None:
        p = layer.eltwise_param
        xs = [self.get(bt, layer) for bt in layer.bottom]
        shape = self.shapes[xs[0]]
        op = {0: "Mul", 1: "Sum", 2: "Max"}[p.operation]
        if op == "Sum" and len(p.coeff):
            xs = [x if c == 1 else self.b.node("Mul", [x, self.const(np.float32(c), f"{layer.name}/coeff")],
                                               f"{layer.name}/coeff") for x, c in zip(xs, p.coeff)]
        y = xs[0]
        for k, other in enumerate(xs[1:]):
            y = self.b.node({"Sum": "Add"}.get(op, op), [y, other], layer.name if k == len(xs) - 2 else
                            f"{layer.name}/{k}")
        self.set(layer.top[0], y, shape)

    def _concat(self, layer) -> None:
        p = layer.concat_param
        xs = [self.get(bt, layer) for bt in layer.bottom]
        shape = list(self.shapes[xs[0]])
        axis = (p.concat_dim if p.HasField("concat_dim") else p.axis) % len(shape)
        shape[axis] = sum(self.shapes[x][axis] for x in xs)
        self.set(layer.top[0], self.b.node("Concat", xs, layer.name, axis=axis), shape)

    def _slice(self, layer) -> None:
        p = layer.slice_param
        x = self.get(layer.bottom[0], layer)
        shape = self.shapes[x]
        axis = (p.slice_dim if p.HasField("slice_dim") else p.axis) % len(shape)
        points = list(p.slice_point) or [shape[axis] * (i + 1) // len(layer.top) for i in range(len(layer.top) - 1)]
        edges = [0] + points + [shape[axis]]
        sizes = [b - a for a, b in zip(edges, edges[1:])]
        ys = self.b.node("Split", [x, self.const(np.array(sizes, np.int64), f"{layer.name}/split")], layer.name,
                         n_out=len(sizes), axis=axis)
        for top, y, sz in zip(layer.top, ys if isinstance(ys, list) else [ys], sizes):
            s = list(shape)
            s[axis] = sz
            self.set(top, y, s)

    def _flatten(self, layer) -> None:
        p = layer.flatten_param
        x = self.get(layer.bottom[0], layer)
        shape = self.shapes[x]
        a, e = p.axis % len(shape), p.end_axis % len(shape)
        new = shape[:a] + [int(np.prod(shape[a:e + 1]))] + shape[e + 1:]
        y = self.b.node("Reshape", [x, self.const(np.array(new, np.int64), f"{layer.name}/shape")], layer.name)
        self.set(layer.top[0], y, new)

    def _reshape(self, layer) -> None:
        p = layer.reshape_param
        x = self.get(layer.bottom[0], layer)
        shape = self.shapes[x]
        dims = list(p.shape.dim)
        a = p.axis % (len(shape) + 1) if p.axis < 0 else p.axis
        end = len(shape) if p.num_axes == -1 else a + p.num_axes
        mid = [shape[a + k] if d == 0 else d for k, d in enumerate(dims)]
        new = shape[:a] + mid + shape[end:]
        if -1 in new:
            known = int(np.prod([d for d in new if d != -1]))
            new[new.index(-1)] = int(np.prod(shape)) // known
        y = self.b.node("Reshape", [x, self.const(np.array(new, np.int64), f"{layer.name}/shape")], layer.name)
        self.set(layer.top[0], y, new)

    def _softmax(self, layer) -> None:
        x = self.get(layer.bottom[0], layer)
        axis = layer.softmax_param.axis if layer.HasField("softmax_param") else 1
        self.set(layer.top[0], self.b.node("Softmax", [x], layer.name, axis=int(axis)), self.shapes[x])

    def _permute(self, layer) -> None:
        x = self.get(layer.bottom[0], layer)
        shape = self.shapes[x]
        order = list(layer.permute_param.order)
        order += [d for d in range(len(shape)) if d not in order]
        self.set(layer.top[0], self.b.node("Transpose", [x], layer.name, perm=order), [shape[d] for d in order])

    def _lrn(self, layer) -> None:
        p = layer.lrn_param
        if p.norm_region == 1:
            raise UnsupportedLayer("Caffe", layer.name, "LRN (WITHIN_CHANNEL)")
        self._one(layer, "LRN", size=int(p.local_size), alpha=float(p.alpha), beta=float(p.beta), bias=float(p.k))


def load_caffe(model: str | Path, blobs: Optional[str | Path] = None, input_name: Optional[str] = None,
               input_size_list=None) -> LoadedModel:
    prototxt = Path(model)
    caffemodel = Path(blobs) if blobs else None
    if not prototxt.is_file():
        raise ModelLoadError(f"Caffe .prototxt not found: '{prototxt}'. Check the path (relative paths are resolved "
                             f"against the current folder, {Path.cwd()}).")
    if caffemodel is None:
        raise ModelLoadError("load_caffe needs the weights: load_caffe(model='deploy.prototxt', "
                             "blobs='weights.caffemodel')")
    if not caffemodel.is_file():
        raise ModelLoadError(f"Caffe .caffemodel not found: '{caffemodel}'")
    net, weights = _read_net(prototxt, caffemodel)
    shapes = normalize_size_list(input_size_list) if input_size_list is not None else None
    conv = _Converter(net, weights, net.name or prototxt.stem)
    onnx_model = conv.convert(shapes, input_name)
    notes = [f"Caffe converted to ONNX: {len(net.layer)} layers -> {len(onnx_model.graph.node)} nodes"]
    log.info("loaded Caffe %s + %s: %s", prototxt, caffemodel, notes[0])
    return LoadedModel(onnx_model, "caffe", str(prototxt), file_sha256(caffemodel), notes)
