"""A Keras model topology (a TensorFlow.js layers model's "modelTopology", or a Keras file's config) -> the
TensorFlow GraphDef of what each layer computes at inference, its weights as constants; the TensorFlow frontend
turns that graph into ONNX.

Each layer is lowered to the TensorFlow ops it runs as (Conv2D + BiasAdd + the activation, FusedBatchNormV3,
ResizeNearestNeighbor...), so the layout handling, SAME padding and shape folding are the ones frozen graphs and
graph models already go through. Where the runtimes differ, the file's own is followed (its dialect): UpSampling2D's
bilinear mode without half-pixel centres in TensorFlow.js, with them in Keras; hard_sigmoid as clip(0.2 x + 0.5, 0,
1) in TensorFlow.js and Keras 2, relu6(x + 3) / 6 in Keras 3. Functional models, Sequential models and models nested
in either are flattened; a layer whose class the model's own code defines (a custom layer), a Lambda or a
recurrence is refused by name.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import ModelLoadError
from .builder import UnsupportedLayer
from . import normalize_size_list
from .tf_schema import DT, GraphDef, set_attr

_MODELS = {"Model", "Functional", "Sequential"}
_IDENTITY = {"Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
             "GaussianDropout", "AlphaDropout", "ActivityRegularization"}
_RECURRENT = {"LSTM", "GRU", "SimpleRNN", "Bidirectional", "TimeDistributed", "ConvLSTM2D", "RNN", "CuDNNLSTM",
              "CuDNNGRU"}
_TF_DTYPE = {np.dtype(np.float32): "DT_FLOAT", np.dtype(np.int32): "DT_INT32", np.dtype(np.int64): "DT_INT64"}
Shape = List[int]


def _pair(v, what: str, layer: str) -> List[int]:
    """A Keras size argument: an int, or one int per spatial axis."""
    if isinstance(v, int):
        return [v, v]
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, int) for x in v):
        return list(v)
    raise ModelLoadError(f"layer '{layer}': {what}={v!r} is not an int or a pair of ints")


def _pads2d(v, layer: str) -> List[List[int]]:
    """ZeroPadding2D / Cropping2D's argument as [[top, bottom], [left, right]]."""
    if isinstance(v, int):
        return [[v, v], [v, v]]
    if isinstance(v, (list, tuple)) and len(v) == 2:
        if all(isinstance(x, int) for x in v):
            return [[v[0], v[0]], [v[1], v[1]]]
        if all(isinstance(x, (list, tuple)) and len(x) == 2 for x in v):
            return [list(map(int, v[0])), list(map(int, v[1]))]
    raise ModelLoadError(f"layer '{layer}': padding / cropping {v!r} is not an int, a pair or a pair of pairs")


def _out_len(n: int, k: int, s: int, d: int, padding: str) -> int:
    if padding == "same":
        return -(-n // s)
    return (n - d * (k - 1) - 1) // s + 1


class _Lowering:
    def __init__(self, weights: Dict[str, np.ndarray], where: str, input_size_list=None, dialect: str = "tfjs"):
        self.graph = GraphDef()
        self.where = where
        self.dialect = dialect  # whose runtime the file's semantics are: 'tfjs', 'keras2' or 'keras3'
        self.framework = "TensorFlow.js" if dialect == "tfjs" else "Keras"
        self.given = input_size_list  # the user's shapes, one per input in the model's order (None: the file's)
        self.n_inputs = 0
        self.weights = weights
        self.by_pair: Dict[str, List[str]] = {}  # "layer/weight" -> the manifest names ending so
        for name in weights:
            parts = name.split("/")
            if len(parts) >= 2:
                self.by_pair.setdefault("/".join(parts[-2:]), []).append(name)
        self.shapes: Dict[str, Shape] = {}  # tensor (node name) -> its static shape, batch 1
        self.taken: set = set()

    # ---- graph writing ----------------------------------------------------------------------------------------
    def unique(self, base: str) -> str:
        name, k = base, 1
        while name in self.taken:
            name, k = f"{base}_{k}", k + 1
        self.taken.add(name)
        return name

    def op(self, op: str, inputs: Sequence[str], name: str, shape: Shape, **attrs) -> str:
        node = self.graph.node.add(name=self.unique(name), op=op, input=list(inputs))
        for key, v in attrs.items():
            set_attr(node.attr[key], v)
        self.shapes[node.name] = [int(d) for d in shape]
        return node.name

    def const(self, arr, name: str) -> str:
        arr = np.asarray(arr)
        arr = arr.astype(np.float32) if arr.dtype.kind == "f" else arr
        node = self.graph.node.add(name=self.unique(name), op="Const")
        t = node.attr["value"].tensor
        t.dtype = DT[_TF_DTYPE[arr.dtype]]
        for d in arr.shape:
            t.tensor_shape.dim.add(size=d)
        t.tensor_content = np.ascontiguousarray(arr).tobytes()
        node.attr["dtype"].type = t.dtype
        self.shapes[node.name] = list(arr.shape)
        return node.name

    def placeholder(self, name: str, declared: Sequence[Optional[int]]) -> str:
        """A model input of a static shape: the user's (input_size_list), else the file's with batch 1. Every layer
        below needs its input's size (SAME padding, upsampling, a Dense over pixels)."""
        dims = [-1 if d is None else int(d) for d in declared]
        k, self.n_inputs = self.n_inputs, self.n_inputs + 1
        if self.given:
            if k >= len(self.given):
                raise ModelLoadError(f"input_size_list has {len(self.given)} shapes but the model has more inputs "
                                     f"('{name}' is input {k + 1}); give one shape per input, in the model's order")
            shape = normalize_size_list([self.given[k]], 1, ranks=[len(dims)])[0]
            if len(shape) != len(dims) or any(d > 0 and d != g for d, g in zip(dims[1:], shape[1:])):
                raise ModelLoadError(f"input_size_list gives input '{name}' the shape {shape}, but the model fixes "
                                     f"it to {['?' if d < 0 else d for d in dims]} (channel-last: [1, H, W, C])")
        else:
            shape = [1 if i == 0 and d < 1 else d for i, d in enumerate(dims)]
            if any(d < 1 for d in shape):
                example = [1] + [d if d > 0 else 224 for d in dims[1:]]
                raise ModelLoadError(f"input '{name}' has shape {['?' if d < 0 else d for d in dims]} in the model; "
                                     f"give input_size_list with its size, e.g. [{example}] (channel-last)")
        node = self.graph.node.add(name=self.unique(name), op="Placeholder")
        node.attr["dtype"].type = DT["DT_FLOAT"]
        for d in shape:
            node.attr["shape"].shape.dim.add(size=d)
        self.shapes[node.name] = list(shape)
        return node.name

    def weight(self, layer: str, key: str, shape: Optional[Sequence[int]] = None) -> np.ndarray:
        found = self.by_pair.get(f"{layer}/{key}", [])
        if not found and key == "depthwise_kernel":  # Keras 3 names a DepthwiseConv2D's kernel 'kernel'
            found = self.by_pair.get(f"{layer}/kernel", [])
        if len(found) != 1:
            why = "is not among the file's weights" if not found else f"matches {len(found)} weights ({found[:3]})"
            fix = "the model.json and its .bin files do not belong together" if self.dialect == "tfjs" else \
                "the file's weights do not match its config"
            raise ModelLoadError(f"'{self.where}': layer '{layer}' needs its weight '{key}', which {why}; {fix}")
        arr = self.weights[found[0]]
        if shape is not None and list(arr.shape) != list(shape):
            raise ModelLoadError(f"'{self.where}': weight '{found[0]}' has shape {list(arr.shape)}, but layer "
                                 f"'{layer}' needs {list(shape)}")
        return arr.astype(np.float32)

    # ---- models -----------------------------------------------------------------------------------------------
    def model(self, class_name: str, config, inputs: Optional[List[str]]) -> Tuple[List[str], List[str]]:
        """(input tensors, output tensors) of a Functional or Sequential model; ``inputs`` None: the top model,
        whose inputs become placeholders."""
        if class_name == "Sequential":
            return self.sequential(config, inputs)
        return self.functional(config, inputs)

    def sequential(self, config, inputs: Optional[List[str]]) -> Tuple[List[str], List[str]]:
        layers = config if isinstance(config, list) else (config or {}).get("layers")
        if not isinstance(layers, list) or not layers:
            raise ModelLoadError(f"'{self.where}': a Sequential model without layers")
        first = layers[0].get("config", {}) if isinstance(layers[0], dict) else {}
        start = 0
        if inputs is None and layers[0].get("class_name") in _MODELS:
            # a model as the first layer (Teachable Machine's Sequential of a MobileNet and a head) brings the inputs
            inputs, x = self.model(layers[0]["class_name"], first, None)
            start = 1
        elif inputs is None:
            shape = first.get("batch_input_shape") or first.get("batch_shape")
            if shape is None and "input_shape" in first:
                shape = [None] + list(first["input_shape"])
            if shape is None:
                raise ModelLoadError(f"'{self.where}': the Sequential model's first layer states no input shape "
                                     "(batch_input_shape); the file cannot be loaded without it")
            inputs = [self.placeholder(model_inputs({"class_name": "Sequential", "config": config})[0], shape)]
        if start == 0:
            x = list(inputs)
        for spec in layers[start:]:
            if spec.get("class_name") == "InputLayer":
                continue
            x = self.call(spec, x, 0)
        return list(inputs), x

    def functional(self, config, inputs: Optional[List[str]]) -> Tuple[List[str], List[str]]:
        if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
            raise ModelLoadError(f"'{self.where}': the model's config has no list of layers")
        specs = {s.get("name") or s.get("config", {}).get("name"): s for s in config["layers"]}
        tensors: Dict[Tuple[str, int, int], str] = {}
        in_refs = _refs(config.get("input_layers"))
        if inputs is not None and len(inputs) != len(in_refs):
            raise ModelLoadError(f"'{self.where}': a nested model takes {len(in_refs)} inputs but is called with "
                                 f"{len(inputs)}")
        made = []
        for k, ref in enumerate(in_refs):
            spec = specs.get(ref[0])
            if spec is None or spec.get("class_name") != "InputLayer":
                raise ModelLoadError(f"'{self.where}': input layer '{ref[0]}' is not an InputLayer of the model")
            cfg = spec.get("config", {})
            tensors[ref] = inputs[k] if inputs is not None else self.placeholder(
                ref[0], cfg.get("batch_input_shape") or cfg.get("batch_shape") or [None, None])
            made.append(tensors[ref])
        pending = [(name, k, call) for name, s in specs.items() if s.get("class_name") != "InputLayer"
                   for k, call in enumerate(s.get("inbound_nodes") or [])]
        while pending:  # the saved order is usually topological; a layer whose inputs are not ready waits a round
            waiting = []
            for name, k, call in pending:
                args = _call_args(call)
                if not all(a in tensors for a in args):
                    waiting.append((name, k, call))
                    continue
                outs = self.call(specs[name], [tensors[a] for a in args], k)
                for i, o in enumerate(outs):
                    tensors[(name, k + _first_call(specs[name]), i)] = o
            if len(waiting) == len(pending):
                unknown = sorted({a[0] for _, _, c in waiting for a in _call_args(c) if a[0] not in specs})
                if unknown:
                    raise ModelLoadError(f"'{self.where}': layers read outputs of {unknown[:5]}, which no layer of "
                                         "the model produces")
                raise ModelLoadError(f"'{self.where}': layers {[w[0] for w in waiting][:5]} wait on each other's "
                                     "outputs (a cycle, or a call index no call has); the topology is broken")
            pending = waiting
        outs = []
        for ref in _refs(config.get("output_layers")):
            if ref not in tensors:
                raise ModelLoadError(f"'{self.where}': output layer '{ref[0]}' is not computed by the model")
            outs.append(tensors[ref])
        return made, outs

    # ---- layers -----------------------------------------------------------------------------------------------
    def call(self, spec: dict, xs: List[str], k: int) -> List[str]:
        kind = spec.get("class_name")
        cfg = spec.get("config") or {}
        name = spec.get("name") or cfg.get("name") or kind
        if kind in _MODELS:
            return self.model(kind, cfg, xs)[1]
        base = name if k == 0 else f"{name}_{k}"
        if kind in _RECURRENT:
            raise UnsupportedLayer(self.framework, name, kind, "recurrent layers are not lowered from a layers "
                                   "model; export the Keras model to ONNX with tf2onnx")
        if kind == "Lambda":
            raise UnsupportedLayer(self.framework, name, kind, "a Lambda layer's function is code, not in the file")
        handler = _LAYERS.get(kind)
        if handler is None:
            raise UnsupportedLayer(self.framework, name, kind, "not a built-in Keras layer: a custom layer that the "
                                   "model's own code defines, or one openrknn does not lower")
        out = handler(self, cfg, name, base, xs)
        out = out if isinstance(out, list) else [out]
        # the layer's name on its (last) op, so outputs=[layer name] cuts there and the ONNX outputs keep the names
        return [o if o == base or len(out) > 1 else self.op("Identity", [o], base, self.shapes[o]) for o in out]

    def activation(self, x: str, kind, base: str) -> str:
        key = str(kind or "linear").lower().replace("_", "")
        s = self.shapes[x]
        if key == "linear":
            return x
        if key in ("relu", "elu", "sigmoid", "tanh", "softplus", "softmax", "relu6"):
            op = {"relu": "Relu", "elu": "Elu", "sigmoid": "Sigmoid", "tanh": "Tanh", "softplus": "Softplus",
                  "softmax": "Softmax", "relu6": "Relu6"}[key]
            return self.op(op, [x], base, s)
        if key in ("swish", "silu"):
            return self.op("Mul", [x, self.op("Sigmoid", [x], f"{base}/sigmoid", s)], base, s)
        if key == "hardsigmoid":
            return self.hard_sigmoid(x, base)
        if key in ("hardsilu", "hardswish") and self.dialect == "keras3":
            return self.op("Mul", [x, self.hard_sigmoid(x, f"{base}/gate")], base, s)
        if key == "leakyrelu" and self.dialect == "keras3":  # Keras 3's activation function: slope 0.2
            return self.op("LeakyRelu", [x], base, s, alpha=0.2)
        if key == "selu":
            return self.elu(x, 1.6732632423543772, base, scale=1.0507009873554805)
        if key == "softsign":
            den = self.op("AddV2", [self.op("Abs", [x], f"{base}/abs", s), self.const(np.float32(1), f"{base}/one")],
                          f"{base}/den", s)
            return self.op("RealDiv", [x, den], base, s)
        if key == "mish":
            t = self.op("Tanh", [self.op("Softplus", [x], f"{base}/softplus", s)], f"{base}/tanh", s)
            return self.op("Mul", [x, t], base, s)
        if key == "gelu":  # x * 0.5 * (1 + erf(x / sqrt(2)))
            e = self.op("Erf", [self.op("Mul", [x, self.const(np.float32(1 / np.sqrt(2)), f"{base}/rsqrt2")],
                                        f"{base}/scaled", s)], f"{base}/erf", s)
            e = self.op("AddV2", [e, self.const(np.float32(1), f"{base}/one")], f"{base}/plus1", s)
            half = self.op("Mul", [x, self.const(np.float32(0.5), f"{base}/half")], f"{base}/halfx", s)
            return self.op("Mul", [half, e], base, s)
        raise UnsupportedLayer(self.framework, base, f"activation '{kind}'")

    def hard_sigmoid(self, x: str, base: str) -> str:
        """clip(x / 6 + 0.5, 0, 1) in Keras 3 (relu6(x + 3) / 6); TensorFlow.js and Keras 2: clip(0.2 x + 0.5)."""
        s = self.shapes[x]
        slope = 1 / 6 if self.dialect == "keras3" else 0.2
        y = self.op("AddV2", [self.op("Mul", [x, self.const(np.float32(slope), f"{base}/slope")], f"{base}/mul", s),
                              self.const(np.float32(0.5), f"{base}/offset")], f"{base}/add", s)
        y = self.op("Maximum", [y, self.const(np.float32(0), f"{base}/lo")], f"{base}/max", s)
        return self.op("Minimum", [y, self.const(np.float32(1), f"{base}/hi")], base, s)

    def elu(self, x: str, alpha: float, base: str, scale: float = 1.0) -> str:
        """scale * (max(x, 0) + alpha * (exp(min(x, 0)) - 1)): Elu with any alpha (TensorFlow's Elu has 1)."""
        s = self.shapes[x]
        if alpha == 1.0 and scale == 1.0:
            return self.op("Elu", [x], base, s)
        neg = self.op("Elu", [self.op("Minimum", [x, self.const(np.float32(0), f"{base}/zero")], f"{base}/neg", s)],
                      f"{base}/elu", s)
        neg = self.op("Mul", [neg, self.const(np.float32(alpha), f"{base}/alpha")], f"{base}/scaled", s)
        y = self.op("AddV2", [self.op("Relu", [x], f"{base}/pos", s), neg], f"{base}/sum" if scale != 1 else base, s)
        return y if scale == 1.0 else self.op("Mul", [y, self.const(np.float32(scale), f"{base}/scale")], base, s)

    def bias_act(self, y: str, cfg: dict, name: str, base: str, units: int) -> str:
        if cfg.get("use_bias", True):
            b = self.weight(name, "bias", [units])
            y = self.op("BiasAdd", [y, self.const(b, f"{base}/bias")], f"{base}/BiasAdd", self.shapes[y])
        return self.activation(y, cfg.get("activation"), base)

    def spatial_input(self, x: str, name: str, kind: str) -> Shape:
        s = self.shapes[x]
        if len(s) != 4:
            raise UnsupportedLayer(self.framework, name, f"{kind} on a rank-{len(s)} input")
        return s


def _first_call(spec: dict) -> int:
    """The node index Keras gives a layer's first call in the model: 1 for a nested model with its own input in
    Keras 2 and TensorFlow.js (its node 0 is that input, made when it was built), else 0; Keras 3 (calls written as
    {"args": ...}) counts the outer calls only."""
    calls = spec.get("inbound_nodes") or []
    if spec.get("class_name") not in _MODELS or (calls and isinstance(calls[0], dict)):
        return 0
    cfg = spec.get("config")
    if spec.get("class_name") != "Sequential":
        return 1
    layers = cfg if isinstance(cfg, list) else (cfg or {}).get("layers") or [{}]
    first = layers[0] if isinstance(layers[0], dict) else {}
    first_cfg = first.get("config") or {}
    return int(first.get("class_name") == "InputLayer" or any(k in first_cfg for k in ("batch_input_shape",
                                                                                       "batch_shape", "input_shape")))


def _refs(v) -> List[Tuple[str, int, int]]:
    """input_layers / output_layers: [[name, node, tensor], ...] (Keras 3 writes a single one unnested)."""
    if isinstance(v, list) and len(v) == 3 and isinstance(v[0], str):
        v = [v]
    if not isinstance(v, list) or not v:
        raise ModelLoadError("the model's config names no input_layers / output_layers")
    return [(str(r[0]), int(r[1]), int(r[2])) for r in v]


def _call_args(call) -> List[Tuple[str, int, int]]:
    """The tensors one call of a layer reads: Keras 2's [[name, node, tensor, kwargs], ...] or Keras 3's
    {"args": [keras tensors], "kwargs": {}}."""
    if isinstance(call, dict):
        found: List[Tuple[str, int, int]] = []

        def walk(v):
            if isinstance(v, dict):
                hist = (v.get("config") or {}).get("keras_history") if v.get("class_name") == "__keras_tensor__" \
                    else None
                if hist:
                    found.append((str(hist[0]), int(hist[1]), int(hist[2])))
                    return
                for x in v.values():
                    walk(x)
            elif isinstance(v, list):
                for x in v:
                    walk(x)

        walk(call.get("args", []))
        return found
    return [(str(r[0]), int(r[1]), int(r[2])) for r in call]


def _one(xs: List[str], name: str) -> str:
    if len(xs) != 1:
        raise ModelLoadError(f"layer '{name}' is called with {len(xs)} inputs; it takes one")
    return xs[0]


# ---------------------------------------------------------------- layer handlers: (lowering, config, layer name,
# node base name, inputs) -> output tensor(s)


def _conv2d(lo: _Lowering, cfg, name, base, xs):
    x = _one(xs, name)
    n, h, w, c = lo.spatial_input(x, name, "Conv2D")
    if cfg.get("data_format", "channels_last") not in (None, "channels_last"):
        raise UnsupportedLayer(lo.framework, name, f"Conv2D with data_format={cfg.get('data_format')}")
    (kh, kw), (sh, sw) = _pair(cfg.get("kernel_size"), "kernel_size", name), _pair(cfg.get("strides", 1), "strides",
                                                                                    name)
    dh, dw = _pair(cfg.get("dilation_rate", 1), "dilation_rate", name)
    padding, filters, groups = cfg.get("padding", "valid"), int(cfg["filters"]), int(cfg.get("groups", 1) or 1)
    if padding not in ("same", "valid"):
        raise UnsupportedLayer(lo.framework, name, f"Conv2D with padding='{padding}'")
    kernel = lo.weight(name, "kernel", [kh, kw, c // groups, filters])
    shape = [n, _out_len(h, kh, sh, dh, padding), _out_len(w, kw, sw, dw, padding), filters]
    y = lo.op("Conv2D", [x, lo.const(kernel, f"{base}/kernel")], f"{base}/Conv2D", shape, strides=[1, sh, sw, 1],
              dilations=[1, dh, dw, 1], padding=padding.upper(), data_format="NHWC")
    return lo.bias_act(y, cfg, name, base, filters)


def _depthwise(lo: _Lowering, cfg, name, base, xs):
    x = _one(xs, name)
    n, h, w, c = lo.spatial_input(x, name, "DepthwiseConv2D")
    (kh, kw), (sh, sw) = _pair(cfg.get("kernel_size"), "kernel_size", name), _pair(cfg.get("strides", 1), "strides",
                                                                                    name)
    dh, dw = _pair(cfg.get("dilation_rate", 1), "dilation_rate", name)
    padding, mult = cfg.get("padding", "valid"), int(cfg.get("depth_multiplier", 1))
    kernel = lo.weight(name, "depthwise_kernel", [kh, kw, c, mult])
    shape = [n, _out_len(h, kh, sh, dh, padding), _out_len(w, kw, sw, dw, padding), c * mult]
    y = lo.op("DepthwiseConv2dNative", [x, lo.const(kernel, f"{base}/depthwise_kernel")], f"{base}/depthwise",
              shape, strides=[1, sh, sw, 1], dilations=[1, dh, dw, 1], padding=padding.upper(), data_format="NHWC")
    if cfg.get("_separable"):  # SeparableConv2D's pointwise step (set by _separable)
        pw = lo.weight(name, "pointwise_kernel", [1, 1, c * mult, int(cfg["filters"])])
        shape = shape[:3] + [int(cfg["filters"])]
        y = lo.op("Conv2D", [y, lo.const(pw, f"{base}/pointwise_kernel")], f"{base}/pointwise", shape,
                  strides=[1, 1, 1, 1], dilations=[1, 1, 1, 1], padding="VALID", data_format="NHWC")
    return lo.bias_act(y, cfg, name, base, shape[3])


def _separable(lo: _Lowering, cfg, name, base, xs):
    return _depthwise(lo, {**cfg, "_separable": True}, name, base, xs)


def _conv_transpose(lo: _Lowering, cfg, name, base, xs):
    x = _one(xs, name)
    n, h, w, c = lo.spatial_input(x, name, "Conv2DTranspose")
    (kh, kw), (sh, sw) = _pair(cfg.get("kernel_size"), "kernel_size", name), _pair(cfg.get("strides", 1), "strides",
                                                                                    name)
    if _pair(cfg.get("dilation_rate", 1), "dilation_rate", name) != [1, 1] or cfg.get("output_padding"):
        raise UnsupportedLayer(lo.framework, name, "Conv2DTranspose with dilation or output_padding")
    padding, filters = cfg.get("padding", "valid"), int(cfg["filters"])
    kernel = lo.weight(name, "kernel", [kh, kw, filters, c])
    out = [v * s if padding == "same" else v * s + max(k - s, 0) for v, s, k in ((h, sh, kh), (w, sw, kw))]
    shape = [n, out[0], out[1], filters]
    y = lo.op("Conv2DBackpropInput", [lo.const(np.array(shape, np.int32), f"{base}/output_shape"),
                                      lo.const(kernel, f"{base}/kernel"), x], f"{base}/conv_transpose", shape,
              strides=[1, sh, sw, 1], dilations=[1, 1, 1, 1], padding=padding.upper(), data_format="NHWC")
    return lo.bias_act(y, cfg, name, base, filters)


def _dense(lo: _Lowering, cfg, name, base, xs):
    x = _one(xs, name)
    s = lo.shapes[x]
    units = int(cfg["units"])
    kernel = lo.weight(name, "kernel", [s[-1], units])
    flat = x if len(s) == 2 else lo.op("Reshape", [x, lo.const(np.array([-1, s[-1]], np.int32), f"{base}/flat")],
                                       f"{base}/flatten", [int(np.prod(s[:-1])), s[-1]])
    y = lo.op("MatMul", [flat, lo.const(kernel, f"{base}/kernel")], f"{base}/MatMul", [lo.shapes[flat][0], units])
    if len(s) != 2:
        y = lo.op("Reshape", [y, lo.const(np.array(s[:-1] + [units], np.int32), f"{base}/unflat")],
                  f"{base}/unflatten", s[:-1] + [units])
    return lo.bias_act(y, cfg, name, base, units)


def _batch_norm(lo: _Lowering, cfg, name, base, xs):
    x = _one(xs, name)
    s = lo.shapes[x]
    axis = cfg.get("axis", -1)
    axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
    if not isinstance(axis, int) or axis % len(s) != len(s) - 1:
        raise UnsupportedLayer(lo.framework, name, f"BatchNormalization over axis {axis} (not the channels)")
    ch = s[-1]
    gamma = lo.weight(name, "gamma", [ch]) if cfg.get("scale", True) else np.ones(ch, np.float32)
    beta = lo.weight(name, "beta", [ch]) if cfg.get("center", True) else np.zeros(ch, np.float32)
    mean, var = lo.weight(name, "moving_mean", [ch]), lo.weight(name, "moving_variance", [ch])
    eps = float(cfg.get("epsilon", 1e-3))
    if len(s) == 4:
        return lo.op("FusedBatchNormV3", [x] + [lo.const(a, f"{base}/{k}") for a, k in
                                                ((gamma, "gamma"), (beta, "beta"), (mean, "mean"), (var, "var"))],
                     base, s, epsilon=eps, data_format="NHWC")
    f = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
    y = lo.op("Mul", [x, lo.const(f.astype(np.float32), f"{base}/scale")], f"{base}/mul", s)
    return lo.op("AddV2", [y, lo.const((beta - mean * f).astype(np.float32), f"{base}/offset")], base, s)


def _activation_layer(lo: _Lowering, cfg, name, base, xs):
    x = _one(xs, name)
    y = lo.activation(x, cfg.get("activation"), base)
    return y if y != x else lo.op("Identity", [x], base, lo.shapes[x])


def _relu(lo: _Lowering, cfg, name, base, xs):
    x = _one(xs, name)
    s = lo.shapes[x]
    top, slope = cfg.get("max_value"), float(cfg.get("negative_slope", 0) or 0)
    if float(cfg.get("threshold", 0) or 0) != 0:
        raise UnsupportedLayer(lo.framework, name, "ReLU with a threshold")
    if slope == 0 and top is not None and float(top) == 6:
        return lo.op("Relu6", [x], base, s)
    y = lo.op("LeakyRelu", [x], base if top is None else f"{base}/leaky", s, alpha=slope) if slope else \
        lo.op("Relu", [x], base if top is None else f"{base}/relu", s)
    return y if top is None else lo.op("Minimum", [y, lo.const(np.float32(top), f"{base}/max_value")], base, s)


def _leaky(lo: _Lowering, cfg, name, base, xs):
    x = _one(xs, name)
    alpha = cfg.get("alpha", cfg.get("negative_slope", 0.3))
    return lo.op("LeakyRelu", [x], base, lo.shapes[x], alpha=float(0.3 if alpha is None else alpha))


def _prelu(lo: _Lowering, cfg, name, base, xs):
    x = _one(xs, name)
    s = lo.shapes[x]
    shared = [int(a) for a in (cfg.get("shared_axes") or [])]
    want = [1 if (i + 1) in shared else d for i, d in enumerate(s[1:])]
    alpha = lo.weight(name, "alpha")
    if int(np.prod(alpha.shape)) != int(np.prod(want)):
        raise ModelLoadError(f"layer '{name}' (PReLU): slope of shape {list(alpha.shape)} for an input of shape {s}")
    return lo.op("Prelu", [x, lo.const(alpha.reshape(want), f"{base}/alpha")], base, s)


def _elu_layer(lo: _Lowering, cfg, name, base, xs):
    return lo.elu(_one(xs, name), float(cfg.get("alpha", 1.0)), base)


def _softmax_layer(lo: _Lowering, cfg, name, base, xs):
    x = _one(xs, name)
    axis = cfg.get("axis", -1)
    axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
    if axis % len(lo.shapes[x]) != len(lo.shapes[x]) - 1:
        raise UnsupportedLayer(lo.framework, name, f"Softmax over axis {axis} (not the last)")
    return lo.op("Softmax", [x], base, lo.shapes[x])


def _merge(op: str):
    def handler(lo: _Lowering, cfg, name, base, xs):
        if len(xs) < 2:
            raise ModelLoadError(f"layer '{name}' merges {len(xs)} input; it needs at least two")
        shape = list(np.broadcast_shapes(*(tuple(lo.shapes[x]) for x in xs)))
        if op == "AddN":
            return lo.op("AddN", xs, base, shape, N=len(xs))
        if op == "Average":
            total = lo.op("AddN", xs, f"{base}/sum", shape, N=len(xs))
            return lo.op("Mul", [total, lo.const(np.float32(1 / len(xs)), f"{base}/inv_n")], base, shape)
        if op == "Sub" and len(xs) != 2:
            raise ModelLoadError(f"layer '{name}' (Subtract) takes exactly two inputs, not {len(xs)}")
        y = xs[0]
        for k, other in enumerate(xs[1:]):
            y = lo.op(op, [y, other], base if k == len(xs) - 2 else f"{base}/{k}", shape)
        return y
    return handler


def _concat(lo: _Lowering, cfg, name, base, xs):
    shapes = [lo.shapes[x] for x in xs]
    axis = int(cfg.get("axis", -1)) % len(shapes[0])
    shape = list(shapes[0])
    shape[axis] = sum(s[axis] for s in shapes)
    if len(xs) == 1:
        return lo.op("Identity", xs, base, shape)
    return lo.op("ConcatV2", xs + [lo.const(np.int32(axis), f"{base}/axis")], base, shape, N=len(xs))


def _pool(op: str):
    def handler(lo: _Lowering, cfg, name, base, xs):
        x = _one(xs, name)
        n, h, w, c = lo.spatial_input(x, name, op)
        k = _pair(cfg.get("pool_size", 2), "pool_size", name)
        s = _pair(cfg.get("strides") or k, "strides", name)
        padding = cfg.get("padding", "valid")
        shape = [n, _out_len(h, k[0], s[0], 1, padding), _out_len(w, k[1], s[1], 1, padding), c]
        return lo.op(op, [x], base, shape, ksize=[1, k[0], k[1], 1], strides=[1, s[0], s[1], 1],
                     padding=padding.upper(), data_format="NHWC")
    return handler


def _global_pool(op: str):
    def handler(lo: _Lowering, cfg, name, base, xs):
        x = _one(xs, name)
        s = lo.shapes[x]
        axes = list(range(1, len(s) - 1))
        keep = bool(cfg.get("keepdims", False))
        shape = [1 if i in axes else d for i, d in enumerate(s)] if keep else [s[0], s[-1]]
        return lo.op(op, [x, lo.const(np.array(axes, np.int32), f"{base}/axes")], base, shape, keep_dims=keep)
    return handler


def _upsampling(lo: _Lowering, cfg, name, base, xs):
    x = _one(xs, name)
    n, h, w, c = lo.spatial_input(x, name, "UpSampling2D")
    fy, fx = _pair(cfg.get("size", 2), "size", name)
    mode = cfg.get("interpolation", "nearest")
    if mode not in ("nearest", "bilinear"):
        raise UnsupportedLayer(lo.framework, name, f"UpSampling2D with interpolation='{mode}'")
    op = "ResizeNearestNeighbor" if mode == "nearest" else "ResizeBilinear"
    # TensorFlow.js resizes without aligned corners or half-pixel centres; Keras in Python (tf.image.resize, or the
    # torch and JAX backends) with half-pixel centres (for whole factors, nearest picks the same pixels either way)
    return lo.op(op, [x, lo.const(np.array([h * fy, w * fx], np.int32), f"{base}/size")], base, [n, h * fy, w * fx, c],
                 half_pixel_centers=lo.dialect != "tfjs" and mode == "bilinear")


def _zero_pad(lo: _Lowering, cfg, name, base, xs):
    x = _one(xs, name)
    n, h, w, c = lo.spatial_input(x, name, "ZeroPadding2D")
    (t, b), (left, r) = _pads2d(cfg.get("padding", 1), name)
    pads = np.array([[0, 0], [t, b], [left, r], [0, 0]], np.int32)
    return lo.op("Pad", [x, lo.const(pads, f"{base}/paddings")], base, [n, h + t + b, w + left + r, c])


def _crop(lo: _Lowering, cfg, name, base, xs):
    x = _one(xs, name)
    n, h, w, c = lo.spatial_input(x, name, "Cropping2D")
    (t, b), (left, r) = _pads2d(cfg.get("cropping", 0), name)
    size = [n, h - t - b, w - left - r, c]
    if size[1] < 1 or size[2] < 1:
        raise ModelLoadError(f"layer '{name}' crops a {h}x{w} input to nothing")
    return lo.op("Slice", [x, lo.const(np.array([0, t, left, 0], np.int32), f"{base}/begin"),
                           lo.const(np.array(size, np.int32), f"{base}/size")], base, size)


def _reshape(lo: _Lowering, cfg, name, base, xs):
    x = _one(xs, name)
    target = [int(d) for d in cfg.get("target_shape") or []]
    total = int(np.prod(lo.shapes[x]))
    if target.count(-1) == 1:
        rest = int(np.prod([d for d in target if d != -1]))
        target = [total // rest if d == -1 else d for d in target]
    if int(np.prod(target)) * 1 != total:
        raise ModelLoadError(f"layer '{name}' reshapes {lo.shapes[x]} to {cfg.get('target_shape')}, which does not "
                             "hold the same number of values")
    return lo.op("Reshape", [x, lo.const(np.array([1] + target, np.int32), f"{base}/shape")], base, [1] + target)


def _flatten(lo: _Lowering, cfg, name, base, xs):
    x = _one(xs, name)
    total = int(np.prod(lo.shapes[x]))
    return lo.op("Reshape", [x, lo.const(np.array([1, total], np.int32), f"{base}/shape")], base, [1, total])


def _permute(lo: _Lowering, cfg, name, base, xs):
    x = _one(xs, name)
    perm = [0] + [int(d) for d in cfg.get("dims") or []]
    if sorted(perm) != list(range(len(lo.shapes[x]))):
        raise ModelLoadError(f"layer '{name}' (Permute) dims {cfg.get('dims')} do not fit an input of rank "
                             f"{len(lo.shapes[x])}")
    return lo.op("Transpose", [x, lo.const(np.array(perm, np.int32), f"{base}/perm")], base,
                 [lo.shapes[x][p] for p in perm])


def _identity(lo: _Lowering, cfg, name, base, xs):
    x = _one(xs, name)
    return lo.op("Identity", [x], base, lo.shapes[x])


def _rescaling(lo: _Lowering, cfg, name, base, xs):
    x = _one(xs, name)
    s = lo.shapes[x]
    y = lo.op("Mul", [x, lo.const(np.float32(cfg.get("scale", 1.0)), f"{base}/scale")], f"{base}/mul", s)
    return lo.op("AddV2", [y, lo.const(np.float32(cfg.get("offset", 0.0)), f"{base}/offset")], base, s)


def _one_d(handler, kind: str):
    """A 1-D layer (Conv1D, pooling over time: the ones TensorFlow.js has) as its 2-D form on [1, 1, L, C]: the
    sizes get a leading 1, the kernel a leading row."""
    def wrapped(lo: _Lowering, cfg, name, base, xs):
        x = _one(xs, name)
        s = lo.shapes[x]
        if len(s) != 3:
            raise UnsupportedLayer(lo.framework, name, f"{kind} on a rank-{len(s)} input")
        cfg = dict(cfg)
        if "Pooling" in kind:
            cfg.setdefault("pool_size", 2)
        for key in ("kernel_size", "strides", "dilation_rate", "pool_size"):
            v = cfg.get(key)
            if v is not None:
                cfg[key] = [1, int(v[0] if isinstance(v, (list, tuple)) else v)]
        for key in ("kernel", "depthwise_kernel", "pointwise_kernel"):
            found = lo.by_pair.get(f"{name}/{key}", [])
            if len(found) == 1 and lo.weights[found[0]].ndim == 3:
                lo.weights[found[0]] = lo.weights[found[0]][None]
        y = lo.op("Reshape", [x, lo.const(np.array([1, 1, s[1], s[2]], np.int32), f"{base}/as_2d")],
                  f"{base}/as_2d", [1, 1, s[1], s[2]])
        if cfg.get("padding") not in (None, "same", "valid"):  # 'causal': TensorFlow.js cannot run it either
            raise UnsupportedLayer(lo.framework, name, f"{kind} with padding='{cfg.get('padding')}'")
        y = handler(lo, cfg, name, f"{base}/2d", [y])
        _, _, length, ch = lo.shapes[y]
        return lo.op("Reshape", [y, lo.const(np.array([1, length, ch], np.int32), f"{base}/as_1d")], base,
                     [1, length, ch])
    return wrapped


_LAYERS = {
    "Conv2D": _conv2d, "Convolution2D": _conv2d, "DepthwiseConv2D": _depthwise, "SeparableConv2D": _separable,
    "SeparableConvolution2D": _separable, "Conv2DTranspose": _conv_transpose, "Deconvolution2D": _conv_transpose,
    "Dense": _dense, "BatchNormalization": _batch_norm, "Activation": _activation_layer, "ReLU": _relu,
    "LeakyReLU": _leaky, "PReLU": _prelu, "ELU": _elu_layer, "Softmax": _softmax_layer,
    "Add": _merge("AddN"), "Subtract": _merge("Sub"), "Multiply": _merge("Mul"), "Average": _merge("Average"),
    "Maximum": _merge("Maximum"), "Minimum": _merge("Minimum"), "Concatenate": _concat,
    "MaxPooling2D": _pool("MaxPool"), "MaxPool2D": _pool("MaxPool"), "AveragePooling2D": _pool("AvgPool"),
    "AvgPool2D": _pool("AvgPool"), "GlobalAveragePooling2D": _global_pool("Mean"),
    "GlobalAvgPool2D": _global_pool("Mean"), "GlobalMaxPooling2D": _global_pool("Max"),
    "GlobalMaxPool2D": _global_pool("Max"), "UpSampling2D": _upsampling, "ZeroPadding2D": _zero_pad,
    "Cropping2D": _crop, "Reshape": _reshape, "Flatten": _flatten, "Permute": _permute, "Rescaling": _rescaling,
    "Conv1D": _one_d(_conv2d, "Conv1D"), "Convolution1D": _one_d(_conv2d, "Conv1D"),
    "MaxPooling1D": _one_d(_pool("MaxPool"), "MaxPooling1D"), "MaxPool1D": _one_d(_pool("MaxPool"), "MaxPooling1D"),
    "AveragePooling1D": _one_d(_pool("AvgPool"), "AveragePooling1D"),
    "AvgPool1D": _one_d(_pool("AvgPool"), "AveragePooling1D"),
    "GlobalAveragePooling1D": _global_pool("Mean"), "GlobalAvgPool1D": _global_pool("Mean"),
    "GlobalMaxPooling1D": _global_pool("Max"), "GlobalMaxPool1D": _global_pool("Max"),
    **{k: _identity for k in _IDENTITY},
}


def nhwc_sizes(sizes) -> list:
    """input_size_list given NCHW (the layout the vendor toolkit feeds ONNX in) as the file's channel-last sizes."""
    return [[s[0], s[2], s[3], s[1]] if len(s) == 4 else s for s in normalize_size_list(sizes)]


def nchw_shapes(shapes) -> list:
    return [[s[0], s[3], s[1], s[2]] if len(s) == 4 else s for s in shapes]


def model_config(topology, where: str) -> dict:
    """The Keras model config of a layers model's topology, checked before its weights are read."""
    config = topology.get("model_config", topology) if isinstance(topology, dict) else None
    if not isinstance(config, dict) or config.get("class_name") not in _MODELS:
        found = config.get("class_name") if isinstance(config, dict) else type(topology).__name__
        raise ModelLoadError(f"'{where}': the layers model's topology is not a Keras Model or Sequential ({found})")
    return config


def model_inputs(config: dict) -> List[str]:
    """The names the model's inputs get (its input layers; a Sequential's first layer name + '_input' where it has
    no InputLayer, as Keras names it)."""
    if config.get("class_name") != "Sequential":
        return [r[0] for r in _refs((config.get("config") or {}).get("input_layers"))]
    cfg = config.get("config")
    layers = cfg if isinstance(cfg, list) else (cfg or {}).get("layers") or [{}]
    first = layers[0] if isinstance(layers[0], dict) else {}
    if first.get("class_name") in _MODELS:
        return model_inputs({"class_name": first["class_name"], "config": first.get("config")})
    name = (first.get("config") or {}).get("name", "x")
    return [name if first.get("class_name") == "InputLayer" else f"{name}_input"]


def graph_of_layers(topology, weights: Dict[str, np.ndarray], where: str, input_size_list=None, dialect="tfjs"):
    """(GraphDef, input names, output names, input shapes) of a layers model's topology and its weights, the inputs
    at ``input_size_list`` (channel-last, one per input; None: the sizes the file states). ``dialect``: the runtime
    whose semantics the file has where they differ ('tfjs', 'keras2', 'keras3')."""
    config = model_config(topology, where)
    given = normalize_size_list(input_size_list) if input_size_list is not None else None
    lo = _Lowering(weights, where, given, dialect)
    inputs, outputs = lo.model(config["class_name"], config.get("config"), None)
    if given and len(given) != len(inputs):
        raise ModelLoadError(f"input_size_list has {len(given)} shapes but the model has {len(inputs)} inputs "
                             f"({inputs}); give one shape per input, in the model's order")
    return lo.graph, inputs, outputs, [lo.shapes[i] for i in inputs]
