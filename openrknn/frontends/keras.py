"""Keras model files -> the layers lowering (keras_layers) -> the TensorFlow frontend -> ONNX.

Two formats: the HDF5 file Keras 2 (and Keras 3's legacy `model.save('x.h5')`) writes, with the model's config as a
JSON attribute and each layer's weights in a group named after the layer, listed by name; and Keras 3's `.keras`
archive (a zip of config.json and model.weights.h5), whose weights sit under paths Keras derives from each layer's
class (`layers/functional/layers/conv2d_3/vars/0`), in the order the layers come in their model, not their names.
Both are read with h5py; TensorFlow and Keras are not needed.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

from ..errors import ModelLoadError
from . import LoadedModel

_MODELS = {"Model", "Functional", "Sequential"}
# a Keras 3 layer's variables, in the order it creates them (a bias only with use_bias, gamma / beta with scale /
# center); the names are the ones the lowering asks for
_VARS = {"Conv1D": ["kernel", "bias"], "Conv2D": ["kernel", "bias"], "Conv2DTranspose": ["kernel", "bias"],
         "Dense": ["kernel", "bias"], "DepthwiseConv2D": ["depthwise_kernel", "bias"],
         "SeparableConv2D": ["depthwise_kernel", "pointwise_kernel", "bias"],
         "BatchNormalization": ["gamma", "beta", "moving_mean", "moving_variance"], "PReLU": ["alpha"]}


def _h5py():
    try:
        import h5py
    except ImportError:
        raise ModelLoadError("reading a Keras model needs h5py: pip install h5py (or openrknn[keras])") from None
    return h5py


def _snake(name: str) -> str:
    """Keras's own class-name-to-path rule (keras.src.utils.naming.to_snake_case)."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _layers_of(spec: dict) -> list:
    cfg = spec.get("config")
    return cfg if isinstance(cfg, list) else (cfg or {}).get("layers") or []


def _keras3_weights(spec: dict, group, out: Dict[str, np.ndarray]) -> None:
    """The weights of a model's layers from its group of model.weights.h5, under 'layer name/variable'."""
    used: Dict[str, int] = {}
    layers = group.get("layers") if group is not None else None
    for layer in _layers_of(spec):
        cls = layer.get("class_name", "")
        path = _snake(cls)
        if path in used:
            used[path] += 1
            path = f"{path}_{used[path]}"
        else:
            used[path] = 0
        sub = layers.get(path) if layers is not None else None
        name = (layer.get("config") or {}).get("name") or layer.get("name")
        if cls in _MODELS:
            _keras3_weights(layer, sub, out)
            continue
        if cls not in _VARS:  # no weights, or a layer the lowering refuses by name
            continue
        stored = sub.get("vars") if sub is not None else None
        if stored is None or not len(stored):
            continue
        cfg = layer.get("config") or {}
        off = {"bias": not cfg.get("use_bias", True), "gamma": not cfg.get("scale", True),
               "beta": not cfg.get("center", True)}
        names = [k for k in _VARS[cls] if not off.get(k, False)]
        if len(names) != len(stored):
            raise ModelLoadError(f"Keras layer '{name}' ({cls}) stores {len(stored)} variables where openrknn "
                                 f"expects {len(names) or 'none'} ({names}); the archive's weights do not match its "
                                 "config")
        for k, key in enumerate(names):
            out[f"{name}/{key}"] = np.asarray(stored[str(k)])


def _keras2_weights(f, config: dict) -> Dict[str, np.ndarray]:
    """Each layer group's weights by the layer's name and the last part of each weight name ('kernel:0' ->
    'kernel'); a nested model's group holds its layers' weights named '<layer>/<weight>'."""
    group = f["model_weights"] if "model_weights" in f else f
    nested = {(layer.get("config") or {}).get("name") or layer.get("name")
              for layer in _layers_of(config) if layer.get("class_name") in _MODELS}
    out: Dict[str, np.ndarray] = {}
    for raw in group.attrs.get("layer_names", []):
        layer = raw.decode() if isinstance(raw, bytes) else str(raw)
        g = group[layer]
        for wraw in g.attrs.get("weight_names", []):
            wname = wraw.decode() if isinstance(wraw, bytes) else str(wraw)
            parts = wname.split(":")[0].split("/")
            owner = parts[-2] if layer in nested and len(parts) >= 2 else layer
            out[f"{owner}/{parts[-1]}"] = np.asarray(g[wname])
    return out


def read_keras(path: Path):
    """(model config, {'layer/weight': array}, dialect: 'keras2' / 'keras3', the Keras that wrote it) of a Keras
    .h5 / .hdf5 or .keras file."""
    h5py = _h5py()
    if not path.is_file():
        raise ModelLoadError(f"Keras model not found: '{path}'. Give the .h5 / .keras file model.save() wrote")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            if "config.json" not in names or "model.weights.h5" not in names:
                raise ModelLoadError(f"'{path}' is a zip archive but not a Keras 3 model (config.json and "
                                     f"model.weights.h5 expected, found {sorted(names)[:5]})")
            config = json.loads(z.read("config.json"))
            with h5py.File(io.BytesIO(z.read("model.weights.h5")), "r") as f:
                weights: Dict[str, np.ndarray] = {}
                _keras3_weights(config, f, weights)
        return config, weights, "keras3"
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ModelLoadError(f"'{path}' is neither a Keras HDF5 file nor a .keras archive ({e})") from None
    with f:
        raw = f.attrs.get("model_config")
        if raw is None:
            raise ModelLoadError(f"'{path}' holds weights only (no model_config): it was written with "
                                 "save_weights(); load the model in Keras and save it with model.save()")
        config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        version = f.attrs.get("keras_version", b"2")
        version = version.decode() if isinstance(version, bytes) else str(version)
        return config, _keras2_weights(f, config), "keras3" if version.startswith("3") else "keras2"


def load_keras(path: str | Path, input_size_list=None, outputs: Optional[Sequence[str]] = None,
               input_is_nchw: bool = False) -> LoadedModel:
    """A Keras model file; inputs at ``input_size_list`` (channel-last, or NCHW with ``input_is_nchw``; None: the
    sizes its input layers state), ``outputs``: layer names to end at (None: the model's outputs)."""
    from .keras_layers import graph_of_layers, model_config, nchw_shapes, nhwc_sizes
    from .tensorflow import convert_graph

    path = Path(path)
    config, weights, dialect = read_keras(path)
    model_config(config, str(path))
    sizes = nhwc_sizes(input_size_list) if input_size_list is not None and input_is_nchw else input_size_list
    graph, inputs, found_out, shapes = graph_of_layers(config, weights, str(path), sizes, dialect)
    return convert_graph(graph, path, "keras", inputs, nchw_shapes(shapes) if input_is_nchw else shapes,
                         list(outputs or found_out), input_is_nchw, what="Keras model")
