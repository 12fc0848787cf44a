"""load_keras: Keras .keras archives and .h5 files (Keras 3's own and its legacy HDF5) against Keras's own outputs on
the committed models (tests/data/keras, written with their reference by its make.py), through the API, and the bad
inputs."""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from openrknn.api import RKNN
from openrknn.convert.loaders import load_model, model_kind
from openrknn.errors import ModelLoadError
from openrknn.frontends.builder import UnsupportedLayer
from openrknn.frontends.keras import load_keras
from openrknn.metrics import cosine

h5py = pytest.importorskip("h5py")
DATA = Path(__file__).resolve().parent / "data" / "keras"
REF = np.load(DATA / "reference.npz")
FILES = [("functional.keras", "functional"), ("functional.h5", "functional"), ("stacked.keras", "stacked"),
         ("temporal.keras", "temporal")]


def _run(loaded, x):
    sess = ort.InferenceSession(loaded.model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {loaded.input_names[0]: x})


@pytest.mark.parametrize("file,name", FILES)
def test_matches_keras(file, name):
    """Each file against Keras 3's outputs on the same bytes: the Functional model (a Sequential nested as a layer,
    two outputs, hard_silu / gelu / hard_sigmoid / leaky_relu as Keras 3 defines them, bilinear upsampling with
    half-pixel centres) from the .keras archive and from legacy HDF5; a Sequential led by a Functional backbone;
    Conv1D over time."""
    assert str(REF[f"{file}/sha256"]) == hashlib.sha256((DATA / file).read_bytes()).hexdigest(), \
        "regenerate with tests/data/keras/make.py"
    loaded = load_keras(DATA / file)
    assert loaded.framework == "keras" and "Keras model" in loaded.notes[0]
    outs = _run(loaded, REF[f"{name}/in"])
    for k, got in enumerate(outs):
        want = REF[f"{name}/out/{k}"]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_through_the_api_and_the_file_dispatch(tmp_path):
    assert model_kind("m.h5") == model_kind("m.hdf5") == model_kind("m.keras") == "keras"
    nchw = load_keras(DATA / "functional.keras", [[1, 3, 24, 20]], input_is_nchw=True)  # as the vendor takes ONNX
    assert nchw.input_shapes == [[1, 3, 24, 20]]
    np.testing.assert_allclose(_run(nchw, REF["functional/in"].transpose(0, 3, 1, 2))[0], REF["functional/out/0"],
                               rtol=1e-4, atol=1e-5)
    loaded = load_model(DATA / "functional.keras")
    assert loaded.input_names == ["image"] and loaded.output_names == ["probs", "mask"]
    assert load_model(DATA / "functional.keras", outputs=["cat"]).output_names == ["cat"]
    with pytest.raises(ModelLoadError, match="starts at its input layers"):
        load_model(DATA / "functional.keras", inputs=["cat"])
    rng = np.random.default_rng(1)
    for k in range(6):
        np.save(tmp_path / f"c{k}.npy", rng.uniform(-2, 2, (1, 24, 20, 3)).astype(np.float32))
    (tmp_path / "ds.txt").write_text("".join(f"c{k}.npy\n" for k in range(6)))
    x = REF["functional/in"]
    for dtype in (None, "w8a8"):
        r = RKNN()
        assert r.config(mean_values=[[0] * 3], std_values=[[1] * 3], target_platform="rk3588",
                        **({"quantized_dtype": dtype} if dtype else {})) == 0
        assert r.load_keras(str(DATA / "functional.h5")) == 0, r.last_error
        assert r.build(do_quantization=dtype is not None, dataset=str(tmp_path / "ds.txt")) == 0, r.last_error
        assert r.init_runtime() == 0
        outs = r.inference([x], data_format="nhwc")
        for k, got in enumerate(outs):
            assert cosine(np.ravel(got), np.ravel(REF[f"functional/out/{k}"])) >= (0.98 if dtype else 0.99999)
        r.release()


def _rewritten(tmp_path: Path, edit) -> Path:
    """functional.keras with its config.json edited."""
    out = tmp_path / "edited.keras"
    with zipfile.ZipFile(DATA / "functional.keras") as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.namelist():
            data = src.read(item)
            if item == "config.json":
                config = json.loads(data)
                edit(config["config"]["layers"])
                data = json.dumps(config).encode()
            dst.writestr(item, data)
    return out


def test_bad_files_say_what_is_wrong(tmp_path):
    with pytest.raises(ModelLoadError, match="Keras model not found"):
        load_keras(tmp_path / "missing.keras")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(ModelLoadError, match="neither a Keras HDF5 file nor a .keras archive"):
        load_keras(tmp_path / "text.h5")
    with zipfile.ZipFile(tmp_path / "other.keras", "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(ModelLoadError, match="not a Keras 3 model .config.json and model.weights.h5 expected"):
        load_keras(tmp_path / "other.keras")
    weights_only = tmp_path / "weights.h5"
    with h5py.File(weights_only, "w") as f:
        f.create_dataset("dense/kernel", data=np.zeros((2, 2), np.float32))
    with pytest.raises(ModelLoadError, match="weights only .no model_config.*model.save"):
        load_keras(weights_only)
    r = RKNN()
    assert r.load_keras(str(weights_only)) == -1 and "model.save" in str(r.last_error)

    def custom(layers):
        next(s for s in layers if s["name"] == "stem_relu6")["class_name"] = "MultiplyBeta"

    (tmp_path / "a").mkdir()
    with pytest.raises(UnsupportedLayer, match="Keras layer 'stem_relu6' of type MultiplyBeta"):
        load_keras(_rewritten(tmp_path / "a", custom))

    def no_bias(layers):  # the config says no bias, the archive stores one: the two disagree
        next(s for s in layers if s["name"] == "sep")["config"]["use_bias"] = False

    (tmp_path / "b").mkdir()
    with pytest.raises(ModelLoadError, match="layer 'sep' .SeparableConv2D. stores 3 variables where openrknn "
                                             "expects 2"):
        load_keras(_rewritten(tmp_path / "b", no_bias))


def test_a_keras_2_file_names_weights_by_layer(tmp_path):
    """Keras 2's HDF5 lists each layer's weights under names that need not start with the layer's (TF 2 wrote
    'conv2d_1_1/kernel:0' for layer conv2d_1): they are read by the layer's group. And the file's Keras decides
    hard_sigmoid: 0.2 x + 0.5 in Keras 2, x / 6 + 0.5 in Keras 3 (both clipped to [0, 1])."""
    files = {}
    for version in ("3.15.1", "2.4.0"):
        path = files[version] = tmp_path / f"k{version[0]}.h5"
        shutil.copy(DATA / "functional.h5", path)
        with h5py.File(path, "r+") as f:
            f.attrs["keras_version"] = version
            config = json.loads(f.attrs["model_config"])
            for spec in config["config"]["layers"]:
                if spec["name"] in ("dw", "fc"):  # hard_silu and leaky_relu are Keras 3's only
                    spec["config"]["activation"] = "relu"
            f.attrs["model_config"] = json.dumps(config)
            if version.startswith("2"):
                layer = f["model_weights"]["up_t"]
                names = [n.decode() if isinstance(n, bytes) else n for n in layer.attrs["weight_names"]]
                renamed = [n.replace("up_t/", "up_t_1/") + ":0" for n in names]
                for old, new in zip(names, renamed):
                    layer.move(old, new)
                layer.attrs["weight_names"] = [n.encode() for n in renamed]
    x = REF["functional/in"]
    y3 = _run(load_keras(files["3.15.1"], outputs=["up_t"]), x)[0]
    y2 = _run(load_keras(files["2.4.0"], outputs=["up_t"]), x)[0]
    inside = (y3 > 0.01) & (y3 < 0.99)
    assert inside.mean() > 0.5
    z = (y3[inside] - 0.5) * 6  # the pre-activation, from Keras 3's curve
    np.testing.assert_allclose(y2[inside], np.clip(0.2 * z + 0.5, 0, 1), atol=1e-5)
