"""Writes the compact TensorFlow.js layers models tests/test_tfjs_layers.py loads, and TensorFlow.js's own outputs on
fixed inputs (reference.npz), run by node with @tensorflow/tfjs-layers from npm. Run it again only to change the
models: python tests/data/tfjs_layers/make.py <node_modules with @tensorflow/tfjs-core, -backend-cpu, -layers>.

Three models: 'functional' (two inputs of which one is a Sequential model nested as a layer, two outputs, most
built-in layers and activations), 'sequential' (a Keras Sequential with a dynamic input size) and 'temporal' (1-D
convolutions and pooling over a [time, features] input)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
rng = np.random.default_rng(7)


class Model:
    def __init__(self):
        self.layers, self.weights = [], []

    def w(self, layer, key, shape, scale=None, positive=False):
        arr = rng.standard_normal(shape).astype(np.float32)
        fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
        arr *= scale if scale is not None else 1.0 / np.sqrt(max(fan_in, 1))
        if positive:
            arr = np.abs(arr) + 0.5
        self.weights.append((f"{layer}/{key}", arr))

    def add(self, cls, name, inputs, **cfg):
        self.layers.append({"class_name": cls, "name": name, "config": {"name": name, "trainable": True, **cfg},
                            "inbound_nodes": [[list(i) + [{}] if isinstance(i, tuple) else [i, 0, 0, {}]
                                               for i in inputs]] if inputs else []})
        return name

    def save(self, folder: Path, topology):
        folder.mkdir(exist_ok=True)
        blob = b"".join(a.tobytes() for _, a in self.weights)
        (folder / "weights.bin").write_bytes(blob)
        doc = {"format": "layers-model", "generatedBy": "openrknn tests", "convertedBy": None,
               "modelTopology": {"keras_version": "2.10.0", "backend": "tensorflow", "model_config": topology},
               "weightsManifest": [{"paths": ["weights.bin"], "weights": [
                   {"name": n, "shape": list(a.shape), "dtype": "float32"} for n, a in self.weights]}]}
        (folder / "model.json").write_text(json.dumps(doc, indent=None))


def conv(m, name, x, filters, k, cin, act="linear", **cfg):
    m.w(name, "kernel", [k, k, cin, filters])
    m.w(name, "bias", [filters], scale=0.1)
    return m.add("Conv2D", name, [x], filters=filters, kernel_size=[k, k], activation=act, use_bias=True,
                 padding=cfg.pop("padding", "same"), strides=cfg.pop("strides", [1, 1]),
                 dilation_rate=cfg.pop("dilation_rate", [1, 1]), data_format="channels_last", **cfg)


def bn(m, name, x, ch):
    m.w(name, "gamma", [ch], positive=True)
    m.w(name, "beta", [ch], scale=0.2)
    m.w(name, "moving_mean", [ch], scale=0.3)
    m.w(name, "moving_variance", [ch], positive=True)
    return m.add("BatchNormalization", name, [x], axis=-1, epsilon=0.001, center=True, scale=True, momentum=0.99)


def functional():
    m = Model()
    image = m.add("InputLayer", "image", [], batch_input_shape=[None, 16, 20, 3], dtype="float32", sparse=False)
    extra = m.add("InputLayer", "extra", [], batch_input_shape=[None, 8, 10, 4], dtype="float32", sparse=False)
    x = conv(m, "stem", image, 8, 3, 3, strides=[2, 2])                                      # 8 x 10 x 8
    x = bn(m, "stem_bn", x, 8)
    x = m.add("ReLU", "stem_relu6", [x], max_value=6.0, negative_slope=0.0, threshold=0.0)
    m.w("dw", "depthwise_kernel", [3, 3, 8, 2])
    m.w("dw", "bias", [16], scale=0.1)
    x = m.add("DepthwiseConv2D", "dw", [x], kernel_size=[3, 3], strides=[1, 1], padding="same", depth_multiplier=2,
              activation="swish", use_bias=True, dilation_rate=[1, 1], data_format="channels_last")   # 16 ch
    m.w("sep", "depthwise_kernel", [3, 3, 16, 1])
    m.w("sep", "pointwise_kernel", [1, 1, 16, 12])
    m.w("sep", "bias", [12], scale=0.1)
    x = m.add("SeparableConv2D", "sep", [x], filters=12, kernel_size=[3, 3], strides=[1, 1], padding="valid",
              depth_multiplier=1, activation="elu", use_bias=True, dilation_rate=[1, 1],
              data_format="channels_last")                                                     # 6 x 8 x 12
    x = m.add("ZeroPadding2D", "pad", [x], padding=[[1, 1], [0, 0]], data_format="channels_last")  # 8 x 8 x 12
    e = conv(m, "extra_conv", extra, 12, 3, 4, act="tanh", padding="valid", dilation_rate=[1, 1])  # 6 x 8 x 12
    e = m.add("ZeroPadding2D", "extra_pad", [e], padding=1, data_format="channels_last")        # 8 x 10 x 12
    e = m.add("Cropping2D", "extra_crop", [e], cropping=[[0, 0], [1, 1]], data_format="channels_last")  # 8 x 8
    # a Sequential model nested as a layer: a leaky conv and a PReLU with shared spatial axes
    m.w("inner_conv", "kernel", [3, 3, 12, 12])
    m.w("inner_conv", "bias", [12], scale=0.1)
    m.w("inner_prelu", "alpha", [1, 1, 12], scale=0.3)
    inner = {"class_name": "Sequential", "name": "inner", "inbound_nodes": [[[e, 0, 0, {}]]], "config": {
        "name": "inner", "layers": [
            {"class_name": "Conv2D", "config": {"name": "inner_conv", "filters": 12, "kernel_size": [3, 3],
                                                "strides": [1, 1], "padding": "same", "activation": "linear",
                                                "use_bias": True, "dilation_rate": [1, 1],
                                                "data_format": "channels_last",
                                                "batch_input_shape": [None, 8, 8, 12]}},
            {"class_name": "LeakyReLU", "config": {"name": "inner_leaky", "alpha": 0.1}},
            {"class_name": "PReLU", "config": {"name": "inner_prelu", "shared_axes": [1, 2]}}]}}
    m.layers.append(inner)
    inner = ("inner", 1, 0)  # a nested model's node 0 is its own input: Keras counts the outer call from 1
    a = m.add("Add", "add", [x, inner])
    s = m.add("Minimum", "min", [x, inner])
    mx = m.add("Maximum", "max", [a, s])
    av = m.add("Average", "avg", [a, s, mx])
    x = m.add("Concatenate", "cat", [av, mx], axis=-1)                                          # 8 x 8 x 24
    x = m.add("MaxPooling2D", "pool", [x], pool_size=[2, 2], strides=[2, 2], padding="same",
              data_format="channels_last")                                                     # 4 x 4 x 24
    # a squeeze-and-excite gate
    g = m.add("GlobalAveragePooling2D", "gap", [x], data_format="channels_last")
    g = m.add("Reshape", "gate_shape", [g], target_shape=[1, 1, 24])
    m.w("gate", "kernel", [24, 24])
    m.w("gate", "bias", [24], scale=0.1)
    g = m.add("Dense", "gate", [g], units=24, activation="hard_sigmoid", use_bias=True)
    x = m.add("Multiply", "excite", [x, g])
    m.w("up_t", "kernel", [3, 3, 10, 24])
    m.w("up_t", "bias", [10], scale=0.1)
    u = m.add("Conv2DTranspose", "up_t", [x], filters=10, kernel_size=[3, 3], strides=[2, 2], padding="same",
              activation="selu", use_bias=True, data_format="channels_last")                  # 8 x 8 x 10
    u = m.add("UpSampling2D", "up_nearest", [u], size=[2, 1], interpolation="nearest", data_format="channels_last")
    u = m.add("UpSampling2D", "up_bilinear", [u], size=[1, 2], interpolation="bilinear",
              data_format="channels_last")                                                     # 16 x 16 x 10
    u = m.add("AveragePooling2D", "avgpool", [u], pool_size=[3, 3], strides=[2, 2], padding="valid",
              data_format="channels_last")                                                     # 7 x 7 x 10
    m.w("pixel_dense", "kernel", [10, 6])
    m.w("pixel_dense", "bias", [6], scale=0.1)
    u = m.add("Dense", "pixel_dense", [u], units=6, activation="softsign", use_bias=True)       # 7 x 7 x 6
    u = m.add("Activation", "mask", [u], activation="sigmoid")
    h = m.add("Permute", "permute", [x], dims=[3, 1, 2])                                        # 24 x 4 x 4
    h = m.add("Flatten", "flat", [h], data_format="channels_last")
    h = m.add("Dropout", "drop", [h], rate=0.5)
    m.w("fc", "kernel", [384, 16])
    m.w("fc", "bias", [16], scale=0.1)
    h = m.add("Dense", "fc", [h], units=16, activation="relu", use_bias=True)
    h = bn(m, "fc_bn", h, 16)
    m.w("cls", "kernel", [16, 5])
    h = m.add("Dense", "cls", [h], units=5, activation="linear", use_bias=False)
    h = m.add("Softmax", "probs", [h], axis=-1)
    m.save(HERE / "functional", {"class_name": "Model", "config": {
        "name": "functional", "layers": m.layers, "input_layers": [["image", 0, 0], ["extra", 0, 0]],
        "output_layers": [["probs", 0, 0], ["mask", 0, 0]]}})


def sequential():
    m = Model()
    layers = []
    m.w("c1", "kernel", [5, 5, 1, 6])
    m.w("c1", "bias", [6], scale=0.1)
    layers.append({"class_name": "Conv2D", "config": {"name": "c1", "filters": 6, "kernel_size": [5, 5],
                                                      "strides": [2, 2], "padding": "same", "activation": "relu",
                                                      "use_bias": True, "dilation_rate": [1, 1],
                                                      "data_format": "channels_last",
                                                      "batch_input_shape": [None, None, None, 1]}})
    m.w("c2", "kernel", [3, 3, 6, 4])
    layers.append({"class_name": "Conv2D", "config": {"name": "c2", "filters": 4, "kernel_size": [3, 3],
                                                      "strides": [1, 1], "padding": "same", "activation": "softplus",
                                                      "use_bias": False, "dilation_rate": [2, 2],
                                                      "data_format": "channels_last"}})
    layers.append({"class_name": "ELU", "config": {"name": "elu", "alpha": 1.0}})
    layers.append({"class_name": "GlobalMaxPooling2D", "config": {"name": "gmp", "data_format": "channels_last"}})
    m.save(HERE / "sequential", {"class_name": "Sequential", "config": {"name": "sequential", "layers": layers}})


def temporal():
    """1-D layers over a [time, features] input: a dilated Conv1D, pooling over time, a strided Conv1D."""
    m = Model()
    layers = []
    m.w("t1", "kernel", [3, 5, 8])
    m.w("t1", "bias", [8], scale=0.1)
    layers.append({"class_name": "Conv1D", "config": {"name": "t1", "filters": 8, "kernel_size": [3], "strides": [1],
                                                      "padding": "valid", "dilation_rate": [2], "activation": "relu",
                                                      "use_bias": True, "batch_input_shape": [None, 40, 5]}})
    layers.append({"class_name": "MaxPooling1D", "config": {"name": "p1", "pool_size": [2], "strides": [2],
                                                            "padding": "valid"}})
    m.w("t2", "kernel", [5, 8, 6])
    m.w("t2", "bias", [6], scale=0.1)
    layers.append({"class_name": "Conv1D", "config": {"name": "t2", "filters": 6, "kernel_size": [5], "strides": [2],
                                                      "padding": "same", "dilation_rate": [1], "activation": "tanh",
                                                      "use_bias": True}})
    layers.append({"class_name": "AveragePooling1D", "config": {"name": "p2", "pool_size": [3], "strides": [1],
                                                                "padding": "same"}})
    layers.append({"class_name": "GlobalMaxPooling1D", "config": {"name": "gmp1"}})
    m.save(HERE / "temporal", {"class_name": "Sequential", "config": {"name": "temporal", "layers": layers}})


def sha256(folder: Path) -> str:
    """Of the model's files, so the test knows the reference was computed on these bytes."""
    import hashlib

    h = hashlib.sha256()
    for f in ("model.json", "weights.bin"):
        h.update((folder / f).read_bytes())
    return h.hexdigest()


def reference(modules: str):
    """TensorFlow.js's outputs on fixed inputs, by bench/tfjs_reference.js."""
    work = HERE / "_ref"
    work.mkdir(exist_ok=True)
    feeds = {"functional": {"image": np.linspace(-2, 2, 16 * 20 * 3, dtype=np.float32).reshape(1, 16, 20, 3),
                            "extra": np.cos(np.arange(8 * 10 * 4, dtype=np.float32)).reshape(1, 8, 10, 4)},
             "sequential": {"c1_input": np.sin(np.arange(24 * 28, dtype=np.float32) / 7).reshape(1, 24, 28, 1)},
             "temporal": {"t1_input": np.cos(np.arange(40 * 5, dtype=np.float32) / 3).reshape(1, 40, 5)}}
    out = {}
    for model, ins in feeds.items():
        out[f"{model}/sha256"] = np.array(sha256(HERE / model))
        samples = [{"inputs": {}, "out": str(work / model)}]
        for name, x in ins.items():
            x.tofile(work / f"{model}_{name}.f32")
            samples[0]["inputs"][name] = [str(work / f"{model}_{name}.f32"), list(x.shape)]
            out[f"{model}/in/{name}"] = x
        job = work / f"{model}.job.json"
        job.write_text(json.dumps({"model": str(HERE / model / "model.json"), "outputs": [], "samples": samples}))
        subprocess.run(["node", str(HERE.parents[2] / "bench" / "tfjs_reference.js"), str(job)], check=True,
                       env={**os.environ, "NODE_PATH": modules})
        shapes = json.loads((work / f"{model}.json").read_text())
        for k, sh in enumerate(shapes):
            out[f"{model}/out/{k}"] = np.fromfile(work / f"{model}.{k}.f32", np.float32).reshape(sh)
    np.savez_compressed(HERE / "reference.npz", **out)
    for f in work.iterdir():
        f.unlink()
    work.rmdir()


if __name__ == "__main__":
    functional()
    sequential()
    temporal()
    reference(sys.argv[1])
