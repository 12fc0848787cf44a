"""load_tfjs on TensorFlow.js layers models (a Keras topology + .bin weights, what tf.LayersModel.save, Teachable
Machine and tensorflowjs_converter from Keras write): against TensorFlow.js's own outputs on the committed models
(tests/data/tfjs_layers, written with their reference by its make.py), through the API, and the bad inputs."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from openrknn.api import RKNN
from openrknn.convert.loaders import load_model
from openrknn.errors import ModelLoadError
from openrknn.frontends.builder import UnsupportedLayer
from openrknn.frontends.tfjs import load_tfjs
from openrknn.metrics import cosine

DATA = Path(__file__).resolve().parent / "data" / "tfjs_layers"
REF = np.load(DATA / "reference.npz")


def _run(loaded, feeds):
    sess = ort.InferenceSession(loaded.model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _copy(tmp_path: Path, name: str) -> tuple:
    folder = tmp_path / name
    shutil.copytree(DATA / name, folder)
    return folder / "model.json", json.loads((folder / "model.json").read_text())


def _save(path: Path, doc: dict) -> Path:
    path.write_text(json.dumps(doc))
    return path


def _layers(doc: dict) -> list:
    return doc["modelTopology"]["model_config"]["config"]["layers"]


def test_reference_belongs_to_the_committed_models():
    for name in ("functional", "sequential", "temporal"):
        h = hashlib.sha256()
        for f in ("model.json", "weights.bin"):
            h.update((DATA / name / f).read_bytes())
        assert str(REF[f"{name}/sha256"]) == h.hexdigest(), "regenerate with tests/data/tfjs_layers/make.py"


def test_functional_model_matches_tensorflow_js():
    """Two inputs, two outputs, a Sequential nested as a layer (called as Keras counts it: node 1), and most
    built-in layers: convs of every kind, BatchNormalization, merges, pools, a squeeze-excite gate, transposed conv,
    both UpSampling2D modes, a Dense over pixels, Permute / Flatten, activations by name."""
    loaded = load_tfjs(DATA / "functional" / "model.json")
    assert loaded.framework == "tfjs" and loaded.input_names == ["image", "extra"]
    assert loaded.input_shapes == [[1, 16, 20, 3], [1, 8, 10, 4]] and loaded.output_names == ["probs", "mask"]
    assert "layers model" in loaded.notes[0]
    outs = _run(loaded, {n: REF[f"functional/in/{n}"] for n in loaded.input_names})
    for k, got in enumerate(outs):
        want = REF[f"functional/out/{k}"]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    ops = {n.op_type for n in loaded.model.graph.node}
    assert {"Conv", "ConvTranspose", "Resize", "MaxPool", "AveragePool", "PRelu", "Erf"} - ops == {"Erf"}


def test_sequential_model_with_a_dynamic_size_through_the_api(tmp_path):
    """A Keras Sequential whose input size is left open: input_size_list sets it; float and int8 builds run."""
    model = DATA / "sequential" / "model.json"
    with pytest.raises(ModelLoadError, match=r"input 'c1_input' has shape \['\?', '\?', '\?', 1\].*input_size_list"):
        load_tfjs(model)
    x = REF["sequential/in/c1_input"]
    want = REF["sequential/out/0"]
    got = _run(load_tfjs(model, input_size_list=[[1, 24, 28, 1]]), {"c1_input": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert load_model(model, input_size_list=[[24, 28, 1]]).input_shapes == [[1, 24, 28, 1]]  # batch prepended
    # an NCHW input (how the vendor toolkit takes ONNX): the sizes given NCHW, the same outputs
    nchw = load_tfjs(model, input_size_list=[[1, 1, 24, 28]], input_is_nchw=True)
    assert nchw.input_shapes == [[1, 1, 24, 28]]
    np.testing.assert_allclose(_run(nchw, {"c1_input": x.transpose(0, 3, 1, 2)})[0], want, rtol=1e-4, atol=1e-5)
    calib = [np.sin(np.arange(24 * 28, dtype=np.float32) / s).reshape(1, 24, 28, 1) for s in (3, 5, 7, 9, 11)]
    for k, c in enumerate(calib):
        np.save(tmp_path / f"c{k}.npy", c)
    (tmp_path / "ds.txt").write_text("".join(f"c{k}.npy\n" for k in range(len(calib))))
    for dtype in (None, "w8a8"):
        r = RKNN()
        assert r.config(mean_values=[[0]], std_values=[[1]], target_platform="rk3588",
                        **({"quantized_dtype": dtype} if dtype else {})) == 0
        assert r.load_tfjs(str(model), input_size_list=[[1, 24, 28, 1]]) == 0, r.last_error
        assert r.build(do_quantization=dtype is not None, dataset=str(tmp_path / "ds.txt")) == 0, r.last_error
        assert r.init_runtime() == 0
        out = r.inference([x], data_format="nhwc")[0]
        assert cosine(np.ravel(out), np.ravel(want)) >= (0.99 if dtype else 0.99999)
        r.release()


def test_one_d_layers_match_tensorflow_js(tmp_path):
    """Conv1D (dilated; strided SAME) and pooling over time on a [1, time, features] input, run as their 2-D forms;
    a 'causal' Conv1D, which TensorFlow.js cannot run either, is refused by name."""
    loaded = load_tfjs(DATA / "temporal" / "model.json")
    assert loaded.input_shapes == [[1, 40, 5]]
    got = _run(loaded, {"t1_input": REF["temporal/in/t1_input"]})[0]
    np.testing.assert_allclose(got, REF["temporal/out/0"], rtol=1e-4, atol=1e-5)
    path, doc = _copy(tmp_path, "temporal")
    doc["modelTopology"]["model_config"]["config"]["layers"][0]["config"]["padding"] = "causal"
    with pytest.raises(UnsupportedLayer, match="'t1' of type Conv1D with padding='causal'"):
        load_tfjs(_save(path, doc))


def test_keras_3_call_format_and_a_cut_at_a_layer(tmp_path):
    """Keras 3 writes each call as {"args": [keras tensors]}, and counts a nested model's calls from 0 (Keras 2 from
    1); outputs=[layer name] ends the graph at that layer."""
    path, doc = _copy(tmp_path, "functional")
    for spec in _layers(doc):
        spec["inbound_nodes"] = [{"args": [[{"class_name": "__keras_tensor__", "config": {"keras_history": [
            ref[0], ref[1] - (ref[0] == "inner"), ref[2]]}} for ref in call]], "kwargs": {}}
            for call in spec["inbound_nodes"]]
    loaded = load_tfjs(_save(path, doc))
    outs = _run(loaded, {n: REF[f"functional/in/{n}"] for n in loaded.input_names})
    np.testing.assert_allclose(outs[0], REF["functional/out/0"], rtol=1e-4, atol=1e-5)
    cut = load_tfjs(path, outputs=["cat"])
    assert cut.output_names == ["cat"]
    assert _run(cut, {n: REF[f"functional/in/{n}"] for n in cut.input_names})[0].shape == (1, 8, 8, 24)


def test_teachable_machine_shape_a_model_first_in_a_sequential(tmp_path):
    """Teachable Machine's export: no "format", the Keras config at the top of modelTopology, and an outer
    Sequential whose first layer is a model (its MobileNet) that brings the input."""
    path, doc = _copy(tmp_path, "sequential")
    inner = doc["modelTopology"]["model_config"]
    outer = {"class_name": "Sequential", "config": {"name": "outer", "layers": [inner]}, "keras_version": "tfjs"}
    tm = {"modelTopology": outer, "weightsManifest": doc["weightsManifest"]}
    loaded = load_tfjs(_save(path, tm), input_size_list=[[1, 24, 28, 1]])
    assert loaded.input_names == ["c1_input"] and "layers model" in loaded.notes[0]
    got = _run(loaded, {"c1_input": REF["sequential/in/c1_input"]})[0]
    np.testing.assert_allclose(got, REF["sequential/out/0"], rtol=1e-4, atol=1e-5)


def test_layers_tensorflow_js_lacks_follow_keras(tmp_path):
    """Subtract, ELU with alpha != 1 and LeakyReLU's default slope (0.3), which TensorFlow.js cannot run, against
    their Keras definitions."""
    rng = np.random.default_rng(0)
    kernel = rng.standard_normal((4, 3)).astype(np.float32)
    (tmp_path / "w.bin").write_bytes(kernel.tobytes())

    def layer(cls, name, inputs, **cfg):
        return {"class_name": cls, "name": name, "config": {"name": name, **cfg},
                "inbound_nodes": [[[i, 0, 0, {}] for i in inputs]] if inputs else []}

    layers = [layer("InputLayer", "x", [], batch_input_shape=[None, 4]),
              layer("Dense", "d", ["x"], units=3, activation="linear", use_bias=False),
              layer("ELU", "e", ["d"], alpha=0.5), layer("LeakyReLU", "l", ["d"]),
              layer("Subtract", "s", ["e", "l"])]
    doc = {"format": "layers-model", "modelTopology": {"model_config": {"class_name": "Functional", "config": {
        "name": "m", "layers": layers, "input_layers": [["x", 0, 0]], "output_layers": ["s", 0, 0]}}},
        "weightsManifest": [{"paths": ["w.bin"], "weights": [{"name": "d/kernel", "shape": [4, 3],
                                                              "dtype": "float32"}]}]}
    x = rng.standard_normal((1, 4)).astype(np.float32) * 2
    d = x @ kernel
    want = np.where(d > 0, d, 0.5 * (np.exp(d) - 1)) - np.where(d > 0, d, 0.3 * d)
    got = _run(load_tfjs(_save(tmp_path / "m.json", doc)), {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _edited(tmp_path: Path, edit) -> Path:
    path, doc = _copy(tmp_path, "functional")
    edit(_layers(doc), doc)
    return _save(path, doc)


def _named(layers: list, name: str) -> dict:
    return next(s for s in layers if s["name"] == name)


def test_layers_it_cannot_lower_are_refused_by_name(tmp_path):
    def custom(layers, doc):
        _named(layers, "stem_relu6")["class_name"] = "MultiplyBeta"

    with pytest.raises(UnsupportedLayer, match="layer 'stem_relu6' of type MultiplyBeta.*custom layer"):
        load_tfjs(_edited(tmp_path / "a", custom))

    def lam(layers, doc):
        _named(layers, "stem_relu6")["class_name"] = "Lambda"

    with pytest.raises(UnsupportedLayer, match="'stem_relu6' of type Lambda.*function is code"):
        load_tfjs(_edited(tmp_path / "b", lam))

    def rnn(layers, doc):
        _named(layers, "stem_relu6")["class_name"] = "LSTM"

    with pytest.raises(UnsupportedLayer, match="'stem_relu6' of type LSTM.*recurrent"):
        load_tfjs(_edited(tmp_path / "c", rnn))

    def channels_first_bn(layers, doc):
        _named(layers, "stem_bn")["config"]["axis"] = 1

    with pytest.raises(UnsupportedLayer, match="'stem_bn'.*BatchNormalization over axis 1"):
        load_tfjs(_edited(tmp_path / "d", channels_first_bn))

    def activation(layers, doc):
        _named(layers, "mask")["config"]["activation"] = "thresholded_linear"

    with pytest.raises(UnsupportedLayer, match="activation 'thresholded_linear'"):
        load_tfjs(_edited(tmp_path / "e", activation))


def test_broken_files_say_what_is_wrong(tmp_path):
    def dangling(layers, doc):
        _named(layers, "cat")["inbound_nodes"][0][1][0] = "nowhere"

    with pytest.raises(ModelLoadError, match=r"read outputs of \['nowhere'\], which no layer of the model produces"):
        load_tfjs(_edited(tmp_path / "a", dangling))

    def missing_weight(layers, doc):
        doc["weightsManifest"][0]["weights"][0]["name"] = "elsewhere/kernel"

    with pytest.raises(ModelLoadError, match="layer 'stem' needs its weight 'kernel', which is not among the "
                                             "file's weights; the model.json"):
        load_tfjs(_edited(tmp_path / "b", missing_weight))

    def wrong_shape(layers, doc):
        _named(layers, "stem")["config"]["filters"] = 9

    with pytest.raises(ModelLoadError, match=r"'stem/kernel' has shape \[3, 3, 3, 8\], but layer 'stem' needs"):
        load_tfjs(_edited(tmp_path / "c", wrong_shape))

    model = DATA / "functional" / "model.json"
    with pytest.raises(ModelLoadError, match="has 1 shapes but the model has more inputs .'extra' is input 2"):
        load_tfjs(model, input_size_list=[[1, 16, 20, 3]])
    with pytest.raises(ModelLoadError, match=r"gives input 'image' the shape \[1, 32, 32, 3\], but the model fixes"):
        load_tfjs(model, input_size_list=[[1, 32, 32, 3], [1, 8, 10, 4]])
    with pytest.raises(ModelLoadError, match=r"input layers \['image', 'extra'\], not at inputs=\['cat'\]"):
        load_tfjs(model, inputs=["cat"], input_size_list=[[1, 8, 8, 24]])
    r = RKNN()
    assert r.load_tfjs(str(model), input_size_list=[[1, 16, 20, 3]]) == -1
    assert "one shape per input" in str(r.last_error)
