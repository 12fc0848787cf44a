"""Small models in each framework's own file format, written at test time without that framework (deterministic:
the same seed gives the same bytes). bench/loader_refs.py runs OpenCV's readers (4.x, in their own venv) on the same
files and stores the outputs in tests/data/loaders/*.npz: the independent reference the tests compare against."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import numpy as np

# The input each reference was computed on (NCHW for Darknet / Caffe, NHWC for TensorFlow / TFLite)
SEED = 20261203


def _rng(salt: int):
    return np.random.default_rng(SEED + salt)


# ---------------------------------------------------------------- Darknet


TINY_DARKNET_CFG = """[net]
width=32
height=32
channels=3

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=leaky

[route]
layers=-1
groups=2
group_id=1

[convolutional]
batch_normalize=1
filters=8
size=1
stride=1
pad=1
activation=mish

[route]
layers=-1,-3

[maxpool]
size=2
stride=1

[convolutional]
filters=16
size=3
stride=2
pad=1
activation=leaky

[shortcut]
from=-1
activation=linear

[convolutional]
size=1
stride=1
pad=1
filters=18
activation=linear

[yolo]
mask=0,1,2
anchors=10,14, 23,27, 37,58
classes=1
num=3

[route]
layers=-4

[upsample]
stride=2

[route]
layers=-1,-7

[convolutional]
size=1
stride=1
pad=1
filters=18
activation=linear

[yolo]
mask=0,1,2
anchors=10,14, 23,27, 37,58
classes=1
num=3
"""


def darknet_weights(cfg_text: str, salt: int = 0) -> bytes:
    """Darknet .weights for a .cfg: header (0.2.0, 64-bit seen) then each layer's parameters in file order."""
    from openrknn.frontends.darknet import parse_cfg

    rng = _rng(salt)
    sections = parse_cfg(cfg_text)
    net = sections[0][1]
    c = int(net.get("channels", 3))
    chans: List[int] = []
    parts = [np.array([0, 2, 0], np.int32).tobytes(), np.array([0], np.int64).tobytes()]
    for idx, (kind, sec) in enumerate(sections[1:]):
        if kind == "convolutional":
            f, k, g = int(sec["filters"]), int(sec.get("size", 1)), int(sec.get("groups", 1))
            vals = [rng.normal(0, 0.1, f)]
            if int(sec.get("batch_normalize", 0)):
                vals += [rng.uniform(0.5, 1.5, f), rng.normal(0, 0.1, f), rng.uniform(0.5, 2.0, f)]
            vals.append(rng.normal(0, (2.0 / (c // g * k * k)) ** 0.5, f * (c // g) * k * k))
            parts += [np.asarray(v, np.float32).tobytes() for v in vals]
            c = f
        elif kind == "route":
            refs = [int(v) for v in sec["layers"].split(",")]
            srcs = [chans[idx + r if r < 0 else r] for r in refs]
            c = sum(srcs) // int(sec.get("groups", 1))
        chans.append(c)
    return b"".join(parts)


def write_darknet(folder: Path, cfg_text: str = TINY_DARKNET_CFG, salt: int = 0) -> Dict[str, Path]:
    cfg, weights = folder / "tiny.cfg", folder / "tiny.weights"
    cfg.write_text(cfg_text)
    weights.write_bytes(darknet_weights(cfg_text, salt))
    return {"cfg": cfg, "weights": weights}


# ---------------------------------------------------------------- Caffe


TINY_CAFFE_PROTOTXT = """name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 23 dim: 23 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" batch_norm_param { eps: 0.001 } }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "dw" type: "Convolution" bottom: "pool1" top: "dw"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 group: 8 bias_term: false } }
layer { name: "prelu" type: "PReLU" bottom: "dw" top: "dw" }
layer { name: "pw" type: "Convolution" bottom: "dw" top: "pw" convolution_param { num_output: 8 kernel_size: 1 } }
layer { name: "sum" type: "Eltwise" bottom: "pw" bottom: "pool1" top: "sum" eltwise_param { operation: SUM } }
layer { name: "pool2" type: "Pooling" bottom: "sum" top: "pool2"
  pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "cat" type: "Concat" bottom: "pool2" bottom: "pool2" top: "cat" }
layer { name: "fc" type: "InnerProduct" bottom: "cat" top: "fc" inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def write_caffe(folder: Path, prototxt: str = TINY_CAFFE_PROTOTXT, salt: int = 1) -> Dict[str, Path]:
    """The .prototxt and a .caffemodel with generated weights for each layer that has parameters."""
    from google.protobuf import text_format

    from openrknn.frontends import caffe_schema as cs
    from openrknn.frontends.caffe import _Converter

    rng = _rng(salt)
    net = cs.NetParameter()
    text_format.Parse(prototxt, net)
    # walk the layers with the converter's own shape bookkeeping, giving each layer the blobs its shapes need
    conv = _Converter(net, {}, "probe")
    for layer in net.layer:
        if layer.type == "Input":
            for top, shape in zip(layer.top, layer.input_param.shape):
                conv.set(top, conv.b.add_input(top, list(shape.dim)), list(shape.dim))
    weights = cs.NetParameter()
    for layer in net.layer:
        if layer.type == "Input":
            continue
        shape_in = conv.shapes[conv.blobs[layer.bottom[0]]]
        c = shape_in[1]
        blobs: List[np.ndarray] = []
        if layer.type == "Convolution":
            p = layer.convolution_param
            k, g = p.kernel_size[0], p.group or 1
            blobs.append(rng.normal(0, (2.0 / (c // g * k * k)) ** 0.5, (p.num_output, c // g, k, k)))
            if p.bias_term:
                blobs.append(rng.normal(0, 0.1, p.num_output))
        elif layer.type == "InnerProduct":
            n_in, n_out = int(np.prod(shape_in[1:])), layer.inner_product_param.num_output
            blobs += [rng.normal(0, (1.0 / n_in) ** 0.5, (n_out, n_in)), rng.normal(0, 0.1, n_out)]
        elif layer.type == "BatchNorm":
            sf = 0.5  # Caffe stores mean and variance multiplied by a moving-average factor
            blobs += [rng.normal(0, 0.2, c) * sf, rng.uniform(0.5, 2, c) * sf, np.array([sf])]
        elif layer.type == "Scale":
            blobs += [rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c)]
        elif layer.type == "PReLU":
            blobs.append(rng.uniform(0.05, 0.3, c))
        if blobs:
            wl = weights.layer.add(name=layer.name, type=layer.type)
            for arr in blobs:
                bp = wl.blobs.add()
                bp.shape.dim.extend(arr.shape)
                bp.data.extend(np.asarray(arr, np.float32).ravel().tolist())
            conv.weights[layer.name] = list(wl.blobs)
        conv.layer(layer)
    proto, model = folder / "tiny.prototxt", folder / "tiny.caffemodel"
    proto.write_text(prototxt)
    model.write_bytes(weights.SerializeToString())
    return {"prototxt": proto, "caffemodel": model}


# ---------------------------------------------------------------- TensorFlow (frozen GraphDef)


class TFGraph:
    """NodeDefs for a frozen inference graph, written with openrknn's GraphDef schema."""

    def __init__(self, salt: int):
        self.nodes = []
        self.rng = _rng(salt)

    def node(self, op: str, name: str, inputs=(), **attrs):
        from openrknn.frontends.tf_schema import NodeDef, set_attr

        n = NodeDef(name=name, op=op)
        n.input.extend(inputs)
        for k, v in attrs.items():
            if isinstance(v, np.ndarray):
                self._tensor(n.attr[k].tensor, v)
            else:
                set_attr(n.attr[k], v)
        if op in ("Placeholder",):
            n.attr["dtype"].type = 1
        elif op != "Const":  # the type attributes TensorFlow writes on every op (readers look them up)
            n.attr["T"].type = 1
            for key in {"Mean": ["Tidx"], "ConcatV2": ["Tidx"], "Reshape": ["Tshape"], "Pad": ["Tpaddings"]}.get(op,
                                                                                                           []):
                n.attr[key].type = 3
        self.nodes.append(n)
        return name

    @staticmethod
    def _tensor(t, arr: np.ndarray):
        t.dtype = {np.dtype(np.float32): 1, np.dtype(np.int32): 3, np.dtype(np.int64): 9}[arr.dtype]
        for d in arr.shape:
            t.tensor_shape.dim.add().size = d
        if arr.ndim == 0:  # TensorFlow writes scalars as a value list, not raw content
            {1: t.float_val, 3: t.int_val, 9: t.int64_val}[t.dtype].append(arr.item())
        else:
            t.tensor_content = np.ascontiguousarray(arr).tobytes()

    def const(self, name: str, arr) -> str:
        n = self.node("Const", name, value=np.asarray(arr))
        self.nodes[-1].attr["dtype"].type = self.nodes[-1].attr["value"].tensor.dtype
        return n

    def placeholder(self, name: str, shape) -> str:
        n = self.node("Placeholder", name)
        for d in shape:
            self.nodes[-1].attr["shape"].shape.dim.add().size = d
        return n

    def conv_bn_relu6(self, x: str, name: str, cin: int, cout: int, k: int, stride: int, depthwise=False,
                      padding: str = "SAME") -> str:
        if depthwise:
            w = self.const(f"{name}/weights", self.rng.normal(0, (2.0 / (k * k)) ** 0.5, (k, k, cin, 1))
                           .astype(np.float32))
            y = self.node("DepthwiseConv2dNative", f"{name}/depthwise", [x, w], strides=[1, stride, stride, 1],
                          padding="SAME", data_format="NHWC", dilations=[1, 1, 1, 1])
            cout = cin
        else:
            w = self.const(f"{name}/weights", self.rng.normal(0, (2.0 / (k * k * cin)) ** 0.5, (k, k, cin, cout))
                           .astype(np.float32))
            y = self.node("Conv2D", f"{name}/Conv2D", [x, w], strides=[1, stride, stride, 1], padding=padding,
                          data_format="NHWC", dilations=[1, 1, 1, 1])
        params = [self.const(f"{name}/bn/{p}", v.astype(np.float32)) for p, v in (
            ("gamma", self.rng.uniform(0.5, 1.5, cout)), ("beta", self.rng.normal(0, 0.1, cout)),
            ("mean", self.rng.normal(0, 0.1, cout)), ("var", self.rng.uniform(0.5, 2, cout)))]
        y = self.node("FusedBatchNormV3", f"{name}/bn/FusedBatchNormV3", [y] + params, epsilon=0.001,
                      is_training=False, data_format="NHWC")
        return self.node("Relu6", f"{name}/Relu6", [y])

    def save(self, path: Path) -> Path:
        from openrknn.frontends.tensorflow import save_graph

        save_graph(self.nodes, path)
        return path


def mobilenet_v1_graph(size: int = 128, alpha: float = 0.25, classes: int = 10, salt: int = 2) -> TFGraph:
    """MobileNet v1 (Howard et al. 2017) as TensorFlow freezes it: Conv2D / DepthwiseConv2dNative + FusedBatchNormV3
    + Relu6 blocks, SAME padding, global average pool, a 1x1 conv classifier, Squeeze, Softmax."""
    g = TFGraph(salt)
    x = g.placeholder("input", [-1, size, size, 3])
    cin = max(8, int(32 * alpha))
    y = g.conv_bn_relu6(x, "Conv2d_0", 3, cin, 3, 2)
    for i, (cout, stride) in enumerate([(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1),
                                        (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)], 1):
        cout = max(8, int(cout * alpha))
        y = g.conv_bn_relu6(y, f"Conv2d_{i}_depthwise", cin, cin, 3, stride, depthwise=True)
        y = g.conv_bn_relu6(y, f"Conv2d_{i}_pointwise", cin, cout, 1, 1)
        cin = cout
    axes = g.const("pool/axes", np.array([1, 2], np.int32))
    y = g.node("Mean", "AvgPool", [y, axes], keep_dims=True)
    w = g.const("Logits/weights", g.rng.normal(0, 0.05, (1, 1, cin, classes)).astype(np.float32))
    y = g.node("Conv2D", "Logits/Conv2D", [y, w], strides=[1, 1, 1, 1], padding="VALID", data_format="NHWC",
               dilations=[1, 1, 1, 1])
    b = g.const("Logits/biases", g.rng.normal(0, 0.1, classes).astype(np.float32))
    y = g.node("BiasAdd", "Logits/BiasAdd", [y, b], data_format="NHWC")
    y = g.node("Squeeze", "Logits/SpatialSqueeze", [y], squeeze_dims=[1, 2])
    g.node("Softmax", "Predictions", [y])
    return g


def tiny_tf_graph(salt: int = 3) -> TFGraph:
    """A residual block with padding, pooling, a concat, a dense layer: the other TensorFlow ops the loader maps."""
    g = TFGraph(salt)
    x = g.placeholder("image", [1, 20, 20, 3])
    pads = g.const("pad/paddings", np.array([[0, 0], [1, 1], [1, 1], [0, 0]], np.int32))
    y = g.node("Pad", "pad", [x, pads])
    a = g.conv_bn_relu6(y, "stem", 3, 8, 3, 2, padding="VALID")  # explicit Pad + VALID, as TF writes it
    b = g.conv_bn_relu6(a, "branch", 8, 8, 3, 1)
    y = g.node("AddV2", "residual", [a, b])
    y = g.node("MaxPool", "pool", [y], ksize=[1, 3, 3, 1], strides=[1, 2, 2, 1], padding="SAME", data_format="NHWC")
    c = g.node("AvgPool", "avg", [y], ksize=[1, 2, 2, 1], strides=[1, 1, 1, 1], padding="SAME", data_format="NHWC")
    axis = g.const("concat/axis", np.array(3, np.int32))
    y = g.node("ConcatV2", "concat", [y, c, axis], N=2)
    y = g.node("Relu", "relu", [y])
    shape = g.const("flatten/shape", np.array([-1, 5 * 5 * 16], np.int32))
    y = g.node("Reshape", "flatten", [y, shape])
    w = g.const("dense/kernel", g.rng.normal(0, 0.05, (400, 6)).astype(np.float32))
    y = g.node("MatMul", "dense/MatMul", [y, w])
    b = g.const("dense/bias", g.rng.normal(0, 0.1, 6).astype(np.float32))
    y = g.node("BiasAdd", "dense/BiasAdd", [y, b])
    g.node("Sigmoid", "output", [y])
    return g


# ---------------------------------------------------------------- TensorFlow.js (graph model)


def tiny_tfjs_graph(salt: int = 4) -> TFGraph:
    """The ops grappler and the TensorFlow.js converter write: conv + bias + relu fused in one _FusedConv2D, a fused
    depthwise conv with Relu6, Prelu, AddN, a squeeze-excitation gate, tf.stack + Reshape (TF object detection's
    nearest-neighbour upsampling), Mean, a fused MatMul, Softmax; two outputs."""
    g = TFGraph(salt)

    def fused(op, name, inputs, ops, **attrs):
        n = g.node(op, name, inputs, **attrs)
        g.nodes[-1].attr["fused_ops"].list.s.extend([o.encode() for o in ops])
        g.nodes[-1].attr["num_args"].i = len(inputs) - 2
        return n

    conv = dict(strides=[1, 1, 1, 1], padding="SAME", data_format="NHWC", dilations=[1, 1, 1, 1])
    x = g.placeholder("input", [-1, 12, 12, 3])
    w = g.const("conv/kernel", g.rng.normal(0, 0.4, (3, 3, 3, 8)).astype(np.float32))
    b = g.const("conv/bias", g.rng.normal(0, 0.1, 8).astype(np.float32))
    y = fused("_FusedConv2D", "conv/Relu", [x, w, b], ["BiasAdd", "Relu"], **conv)
    dw = g.const("dw/kernel", g.rng.normal(0, 0.5, (3, 3, 8, 1)).astype(np.float32))
    db = g.const("dw/bias", g.rng.normal(0, 0.1, 8).astype(np.float32))
    d = fused("FusedDepthwiseConv2dNative", "dw/Relu6", [y, dw, db], ["BiasAdd", "Relu6"], **conv)
    alpha = g.const("prelu/alpha", g.rng.uniform(0.05, 0.3, 8).astype(np.float32))
    p = g.node("Prelu", "prelu", [d, alpha])
    s = g.node("AddN", "sum", [y, d, p], N=3)
    se = g.node("Mean", "se/pool", [s, g.const("se/axes", np.array([1, 2], np.int32))], keep_dims=True)
    se = g.node("Sigmoid", "se/gate", [se])
    s = g.node("Mul", "se/scale", [se, s])  # the [1, 1, 1, C] operand first: the product keeps s's shape
    st = g.node("Pack", "up/stack", [s, s], axis=3, N=2)  # [1, 12, 12, 2, 8]
    up = g.node("Reshape", "up/reshape", [st, g.const("up/shape", np.array([1, 12, 24, 8], np.int32))])
    g.node("Identity", "map", [up])
    axes = g.const("pool/axes", np.array([1, 2], np.int32))
    m = g.node("Mean", "pool", [s, axes], keep_dims=False)
    fw = g.const("dense/kernel", g.rng.normal(0, 0.3, (8, 5)).astype(np.float32))
    fb = g.const("dense/bias", g.rng.normal(0, 0.1, 5).astype(np.float32))
    z = fused("_FusedMatMul", "dense/Relu", [m, fw, fb], ["BiasAdd", "Relu"], transpose_a=False, transpose_b=False)
    g.node("Softmax", "probs", [z])
    return g


def tiny_tfjs_decoder(salt: int = 5) -> TFGraph:
    """The loader's other ops, as a decoder and a head write them: a transposed conv (Conv2DBackpropInput, SAME,
    stride 2) + BiasAdd, DepthToSpace, a Reshape whose target is computed from Shape (StridedSlice, Prod, Pack:
    folded at load time), Sum, Unpack, ExpandDims, Cast, and a backward strided slice with masks; three outputs."""
    g = TFGraph(salt)
    i32 = lambda *v: np.array(v, np.int32)  # noqa: E731
    x = g.placeholder("input", [1, 6, 6, 4])
    w = g.const("up/filter", g.rng.normal(0, 0.3, (3, 3, 3, 4)).astype(np.float32))
    t = g.node("Conv2DBackpropInput", "up/deconv", [g.const("up/sizes", i32(1, 12, 12, 3)), w, x],
               strides=[1, 2, 2, 1], padding="SAME", data_format="NHWC", dilations=[1, 1, 1, 1])
    t = g.node("BiasAdd", "up/bias", [t, g.const("up/b", g.rng.normal(0, 0.1, 3).astype(np.float32))])
    d = g.node("DepthToSpace", "d2s", [x], block_size=2, data_format="NHWC")  # [1, 12, 12, 1]
    cat = g.node("ConcatV2", "cat", [t, d, g.const("cat/axis", np.array(3, np.int32))], N=2)
    shp = g.node("Shape", "flat/shape", [cat])
    g.nodes[-1].attr["out_type"].type = 3
    n = g.node("StridedSlice", "flat/n", [shp, g.const("flat/b0", i32(0)), g.const("flat/e0", i32(1)),
                                          g.const("flat/s0", i32(1))], shrink_axis_mask=1)
    hw = g.node("StridedSlice", "flat/hw", [shp, g.const("flat/b1", i32(1)), g.const("flat/e1", i32(3)),
                                            g.const("flat/s1", i32(1))])
    hw = g.node("Prod", "flat/prod", [hw, g.const("flat/axis", i32(0))], keep_dims=False)
    ch = g.node("StridedSlice", "flat/c", [shp, g.const("flat/b3", i32(3)), g.const("flat/e3", i32(4)),
                                           g.const("flat/s3", i32(1))], shrink_axis_mask=1)
    target = g.node("Pack", "flat/target", [n, hw, ch], axis=0, N=3)
    r = g.node("Reshape", "flat", [cat, target])  # [1, 144, 4]
    g.node("Sum", "pooled", [r, g.const("pooled/axis", i32(1))], keep_dims=False)  # [1, 4]
    parts = g.node("Unpack", "parts", [r], num=4, axis=2)  # four [1, 144]
    both = g.node("AddV2", "parts/sum", [f"{parts}:1", f"{parts}:3"])
    both = g.node("ExpandDims", "parts/expand", [both, g.const("parts/axis", i32(-1))])
    g.node("Cast", "parts/float", [both])
    g.nodes[-1].attr["SrcT"].type = g.nodes[-1].attr["DstT"].type = 1
    g.node("StridedSlice", "crop", [cat, g.const("crop/b", i32(0, 1, 11, 0)), g.const("crop/e", i32(0, 11, 0, 3)),
                                    g.const("crop/s", i32(1, 2, -1, 1))], begin_mask=1, end_mask=1)
    return g


def tiny_tfjs_tensor_ops(salt: int = 6) -> TFGraph:
    """Tensor ops on a conv's output (held NCHW inside the loader, so each axis is mapped): SplitV, Split, Slice,
    GatherV2 on channels, Tile, Floor, Min, and BatchMatMulV2 with a constant and with adj_x; four outputs."""
    g = TFGraph(salt)
    i32 = lambda *v: np.array(v, np.int32)  # noqa: E731
    x = g.placeholder("input", [1, 8, 8, 6])
    w = g.const("conv/kernel", g.rng.normal(0, 0.5, (1, 1, 6, 6)).astype(np.float32))
    y = g.node("Conv2D", "conv", [x, w], strides=[1, 1, 1, 1], padding="SAME", data_format="NHWC",
               dilations=[1, 1, 1, 1])
    parts = g.node("SplitV", "splitv", [y, g.const("splitv/sizes", i32(2, -1)), g.const("splitv/axis", i32(3))],
                   num_split=2)
    halves = g.node("Split", "split", [g.const("split/axis", i32(-1)), f"{parts}:1"], num_split=2)
    t = g.node("AddV2", "sum", [parts, f"{halves}:1"])
    t = g.node("Slice", "crop", [t, g.const("crop/begin", i32(0, 1, 2, 0)), g.const("crop/size", i32(-1, 6, 5, -1))])
    t = g.node("Tile", "tile", [t, g.const("tile/reps", i32(1, 1, 2, 1))])
    t = g.node("Mul", "scaled", [t, g.const("scaled/k", np.array(3.0, np.float32))])
    g.node("Floor", "floor", [t])
    picked = g.node("GatherV2", "pick", [y, g.const("pick/idx", i32(5, 0, 3)), g.const("pick/axis", i32(3))])
    g.node("Min", "low", [picked, g.const("low/axes", i32(1, 2))], keep_dims=False)
    rows = g.node("Reshape", "rows", [picked, g.const("rows/shape", i32(1, 64, 3))])
    g.node("BatchMatMulV2", "proj", [rows, g.const("proj/w", g.rng.normal(0, 1, (3, 4)).astype(np.float32))])
    g.node("BatchMatMulV2", "gram", [rows, rows], adj_x=True)
    return g


def tiny_tfjs_atrous(salt: int = 7) -> TFGraph:
    """Dilated convs as TensorFlow 1 writes them (tf.nn.atrous_conv2d): SpaceToBatchND -> conv -> BatchToSpaceND, on
    an odd 9x9 input (padded to a multiple of the rate, cropped back): a VALID conv, and a depthwise conv whose own
    padding is SAME; two outputs."""
    g = TFGraph(salt)
    i32 = lambda *v: np.array(v, np.int32)  # noqa: E731
    x = g.placeholder("input", [1, 9, 9, 3])
    conv = dict(strides=[1, 1, 1, 1], data_format="NHWC", dilations=[1, 1, 1, 1])
    rate = g.const("rate", i32(2, 2))
    s = g.node("SpaceToBatchND", "a/s2b", [x, rate, g.const("a/pads", i32([2, 3], [2, 3]))])
    w = g.const("a/kernel", g.rng.normal(0, 0.4, (3, 3, 3, 5)).astype(np.float32))
    y = g.node("Conv2D", "a/conv", [s, w], padding="VALID", **conv)
    y = g.node("BatchToSpaceND", "a/b2s", [y, rate, g.const("a/crops", i32([0, 1], [0, 1]))])
    g.node("BiasAdd", "a/bias", [y, g.const("a/b", g.rng.normal(0, 0.1, 5).astype(np.float32))])
    s = g.node("SpaceToBatchND", "b/s2b", [x, rate, g.const("b/pads", i32([0, 1], [0, 1]))])
    dw = g.const("b/kernel", g.rng.normal(0, 0.4, (3, 3, 3, 1)).astype(np.float32))
    y = g.node("DepthwiseConv2dNative", "b/conv", [s, dw], padding="SAME", **conv)
    g.node("BatchToSpaceND", "b/b2s", [y, rate, g.const("b/crops", i32([0, 1], [0, 1]))])
    return g


# how the converter stored each weight of the tiny graph model (the rest float32): its two quantized forms
TINY_TFJS_STORAGE = {"conv/kernel": "float16", "dw/kernel": "uint8", "dense/kernel": "uint8", "prelu/alpha": "float16"}


def write_tfjs(folder: Path, graph: TFGraph, storage: Dict[str, str] = None) -> Path:
    """``graph`` as a TensorFlow.js graph model: model.json (the topology without constant values) and the weights in
    two shards, each weight stored as ``storage`` says ('float16', 'uint8' (min/scale), default float32)."""
    import json

    from google.protobuf import json_format

    from openrknn.frontends.tensorflow import tensor_to_array
    from openrknn.frontends.tf_schema import GraphDef

    storage = storage or {}
    g = GraphDef()
    g.node.extend(graph.nodes)
    g.versions.producer = 1087  # TensorFlow.js reads it
    specs, data = [], bytearray()
    for node in g.node:
        if node.op != "Const":
            continue
        arr = tensor_to_array(node.attr["value"].tensor)
        t = node.attr["value"].tensor
        t.ClearField("tensor_content")
        del t.float_val[:], t.int_val[:], t.int64_val[:]
        spec = {"name": node.name, "shape": list(arr.shape), "dtype": "float32" if arr.dtype.kind == "f" else "int32"}
        how = storage.get(node.name)
        if how == "float16":
            raw = arr.astype(np.float16).tobytes()
            spec["quantization"] = {"dtype": "float16", "original_dtype": "float32"}
        elif how == "uint8":
            lo, hi = float(arr.min()), float(arr.max())
            scale = (hi - lo) / 255 or 1.0
            raw = np.round((arr - lo) / scale).astype(np.uint8).tobytes()
            spec["quantization"] = {"dtype": "uint8", "min": lo, "scale": scale, "original_dtype": "float32"}
        else:
            raw = arr.astype(np.float32 if arr.dtype.kind == "f" else np.int32).tobytes()
        specs.append(spec)
        data += raw
    folder.mkdir(parents=True, exist_ok=True)
    half = len(data) // 2
    (folder / "group1-shard1of2.bin").write_bytes(bytes(data[:half]))
    (folder / "group1-shard2of2.bin").write_bytes(bytes(data[half:]))
    doc = {"format": "graph-model", "generatedBy": "openrknn tests", "convertedBy": "openrknn tests",
           "modelTopology": json_format.MessageToDict(g),
           "weightsManifest": [{"paths": ["group1-shard1of2.bin", "group1-shard2of2.bin"], "weights": specs}]}
    out = folder / "model.json"
    out.write_text(json.dumps(doc, indent=1, sort_keys=True))
    return out


def reference_input(shape, salt: int = 99, lo: float = -1.0, hi: float = 1.0) -> np.ndarray:
    return _rng(salt).uniform(lo, hi, shape).astype(np.float32)


# ---------------------------------------------------------------- real architectures, generated weights (bench)


def yolov4_tiny_cfg(classes: int = 80, size: int = 416) -> str:
    """YOLOv4-tiny's layer list (Bochkovskiy et al. 2020, Darknet's yolov4-tiny.cfg): three CSP blocks whose
    routes split channels in half (groups=2, group_id=1), two [yolo] heads, the second reading layer 23."""
    def conv(f, k, s=1, act="leaky", bn=True):
        return (f"[convolutional]\n{'batch_normalize=1' if bn else ''}\nfilters={f}\nsize={k}\nstride={s}\n"
                f"pad=1\nactivation={act}\n")

    def csp(f):
        return (conv(f, 3) + "[route]\nlayers=-1\ngroups=2\ngroup_id=1\n" + conv(f // 2, 3) + conv(f // 2, 3)
                + "[route]\nlayers=-1,-2\n" + conv(f, 1) + "[route]\nlayers=-6,-1\n[maxpool]\nsize=2\nstride=2\n")

    anchors = "10,14, 23,27, 37,58, 81,82, 135,169, 344,319"
    out = 3 * (classes + 5)

    def yolo(mask):
        return f"[yolo]\nmask={mask}\nanchors={anchors}\nclasses={classes}\nnum=6\n"

    return (f"[net]\nwidth={size}\nheight={size}\nchannels=3\n" + conv(32, 3, 2) + conv(64, 3, 2)
            + csp(64) + csp(128) + csp(256) + conv(512, 3) + conv(256, 1) + conv(512, 3)
            + conv(out, 1, act="linear", bn=False) + yolo("3,4,5") + "[route]\nlayers=-4\n" + conv(128, 1)
            + "[upsample]\nstride=2\n[route]\nlayers=-1,23\n" + conv(256, 3) + conv(out, 1, act="linear", bn=False)
            + yolo("1,2,3"))


def squeezenet_prototxt(classes: int = 1000) -> str:
    """SqueezeNet v1.1 (Iandola et al. 2016) as its Caffe deploy.prototxt lays it out: fire modules (1x1 squeeze,
    1x1 + 3x3 expand, concat), Caffe's ceil-mode 3x3/2 max pools, dropout, a 1x1 classifier, global average pool."""
    lines = ['name: "SqueezeNet_v1.1"',
             'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 227 '
             'dim: 227 } } }']

    def conv(name, bottom, n, k, s=1, p=0):
        lines.append(f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}" '
                     f'convolution_param {{ num_output: {n} kernel_size: {k} stride: {s} pad: {p} }} }}')
        lines.append(f'layer {{ name: "{name}_relu" type: "ReLU" bottom: "{name}" top: "{name}" }}')
        return name

    def pool(name, bottom):
        lines.append(f'layer {{ name: "{name}" type: "Pooling" bottom: "{bottom}" top: "{name}" '
                     'pooling_param { pool: MAX kernel_size: 3 stride: 2 } }')
        return name

    def fire(i, bottom, s, e):
        sq = conv(f"fire{i}/squeeze1x1", bottom, s, 1)
        a = conv(f"fire{i}/expand1x1", sq, e, 1)
        b = conv(f"fire{i}/expand3x3", sq, e, 3, p=1)
        lines.append(f'layer {{ name: "fire{i}/concat" type: "Concat" bottom: "{a}" bottom: "{b}" '
                     f'top: "fire{i}/concat" }}')
        return f"fire{i}/concat"

    x = pool("pool1", conv("conv1", "data", 64, 3, 2))
    x = fire(3, fire(2, x, 16, 64), 16, 64)
    x = pool("pool3", x)
    x = fire(5, fire(4, x, 32, 128), 32, 128)
    x = pool("pool5", x)
    for i, (s, e) in zip(range(6, 10), ((48, 192), (48, 192), (64, 256), (64, 256))):
        x = fire(i, x, s, e)
    lines.append(f'layer {{ name: "drop9" type: "Dropout" bottom: "{x}" top: "{x}" '
                 'dropout_param { dropout_ratio: 0.5 } }')
    x = conv("conv10", x, classes, 1)
    lines.append(f'layer {{ name: "pool10" type: "Pooling" bottom: "{x}" top: "pool10" '
                 'pooling_param { pool: AVE global_pooling: true } }')
    lines.append('layer { name: "prob" type: "Softmax" bottom: "pool10" top: "prob" }')
    return "\n".join(lines) + "\n"
