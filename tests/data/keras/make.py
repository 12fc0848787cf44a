"""Writes the compact Keras models tests/test_keras_loading.py loads, and Keras's own outputs on fixed inputs
(reference.npz), with Keras 3 on its torch backend: python tests/data/keras/make.py (pip install keras first; run it
again only to change the models).

functional.keras / functional.h5: the same Functional model as a Keras 3 archive and in the legacy HDF5 format
(two inputs would not add much here; two outputs, a Sequential nested as a layer, most built-in layers and
activations); stacked.keras: a Sequential whose first layer is a Functional model with its own input (how
keras.applications backbones are fine-tuned); temporal.keras: Conv1D and pooling over time."""

import hashlib
import os
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers as L  # noqa: E402

HERE = Path(__file__).resolve().parent


def randomised(model, seed):
    """Weights away from their initial values (a BatchNorm's statistics too), so every variable matters."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        shape = tuple(w.shape)
        fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
        v = rng.standard_normal(shape) / np.sqrt(max(fan_in, 1))
        if "variance" in w.path or "gamma" in w.path:
            v = np.abs(v) + 0.5
        w.assign(v.astype(np.float32))
    return model


def functional():
    image = keras.Input((24, 20, 3), name="image")
    x = L.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="stem")(image)
    x = L.BatchNormalization(name="stem_bn")(x)
    x = L.ReLU(max_value=6.0, name="stem_relu6")(x)
    x = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, activation="hard_silu", name="dw")(x)
    x = L.SeparableConv2D(12, 3, padding="valid", activation="gelu", name="sep")(x)
    t = L.Conv2DTranspose(8, 3, strides=2, padding="same", activation="hard_sigmoid", name="up_t")(x)
    inner = keras.Sequential([keras.Input((20, 16, 8)), L.Conv2D(8, 1, name="inner_conv"),
                              L.LeakyReLU(negative_slope=0.1, name="inner_leaky"),
                              L.PReLU(shared_axes=[1, 2], name="inner_prelu")], name="inner")
    y = L.Add(name="add")([t, inner(t)])
    y = L.Concatenate(name="cat")([y, t])
    y = L.UpSampling2D(2, interpolation="bilinear", name="up_bilinear")(y)
    y = L.MaxPooling2D(2, name="pool")(y)
    # padding="valid": with "same", Keras on torch counts the padded zeros (TensorFlow does not)
    y = L.AveragePooling2D(3, strides=2, padding="valid", name="avgpool")(y)
    mask = L.Conv2D(4, 1, activation="sigmoid", name="mask")(y)
    h = L.GlobalAveragePooling2D(name="gap")(y)
    h = L.Dense(16, activation="leaky_relu", name="fc")(h)
    h = L.BatchNormalization(name="fc_bn")(h)
    h = L.Dropout(0.5, name="drop")(h)
    probs = L.Dense(5, activation="softmax", name="probs")(h)
    return randomised(keras.Model(image, [probs, mask], name="functional"), 1)


def stacked():
    inp = keras.Input((16, 16, 3), name="backbone_input")
    b = L.Conv2D(6, 3, strides=2, padding="same", name="b_conv1")(inp)
    b = L.BatchNormalization(name="b_bn1")(b)
    b = L.Activation("relu", name="b_relu1")(b)
    b = L.Conv2D(8, 3, padding="same", name="b_conv2")(b)
    b = L.BatchNormalization(name="b_bn2")(b)
    backbone = keras.Model(inp, L.Activation("swish", name="b_act2")(b), name="backbone")
    model = keras.Sequential([keras.Input((16, 16, 3), name="image"), backbone, L.GlobalAveragePooling2D(name="gap"),
                              L.Dense(3, name="head")], name="stacked")
    return randomised(model, 2)


def temporal():
    x = keras.Input((30, 4), name="series")
    y = L.Conv1D(6, 3, dilation_rate=2, activation="relu", name="t1")(x)
    y = L.MaxPooling1D(2, name="p1")(y)
    y = L.Conv1D(5, 3, strides=2, padding="same", activation="tanh", name="t2")(y)
    y = L.GlobalAveragePooling1D(name="gap1")(y)
    return randomised(keras.Model(x, L.Dense(2, name="out")(y), name="temporal"), 3)


def main():
    rng = np.random.default_rng(0)
    feeds = {"functional": rng.uniform(-2, 2, (1, 24, 20, 3)), "stacked": rng.uniform(-2, 2, (1, 16, 16, 3)),
             "temporal": rng.uniform(-2, 2, (1, 30, 4))}
    ref = {}
    for name, build, files in (("functional", functional, ("functional.keras", "functional.h5")),
                               ("stacked", stacked, ("stacked.keras",)), ("temporal", temporal, ("temporal.keras",))):
        model = build()
        x = feeds[name].astype(np.float32)
        outs = model.predict(x, verbose=0)
        outs = outs if isinstance(outs, list) else [outs]
        ref[f"{name}/in"] = x
        for k, o in enumerate(outs):
            ref[f"{name}/out/{k}"] = np.asarray(o)
        for f in files:
            model.save(HERE / f)
            ref[f"{f}/sha256"] = np.array(hashlib.sha256((HERE / f).read_bytes()).hexdigest())
    np.savez_compressed(HERE / "reference.npz", **ref)


if __name__ == "__main__":
    main()
