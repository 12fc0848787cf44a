"""Model file -> LoadedModel: the one place that picks a frontend by file type.

Every loader returns the same thing, an ONNX graph (frontends/), so the build after it does not care where a model
came from. Two-file formats name their weights beside the model: a Darknet .cfg finds the .weights of the same name,
a Caffe .prototxt the .caffemodel of the same name, unless ``weights`` is given.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path
from typing import List, Optional

from ..errors import ModelLoadError
from ..frontends import LoadedModel

PYTORCH_SUFFIXES = (".pt", ".pth", ".torchscript", ".jit", ".pt2")  # .pt2: a torch.export archive
ONNX_SUFFIXES = (".onnx",)
KINDS = {**{s: "pytorch" for s in PYTORCH_SUFFIXES}, ".onnx": "onnx", ".tflite": "tflite", ".cfg": "darknet",
         ".prototxt": "caffe", ".pb": "tensorflow", ".json": "tfjs", ".h5": "keras", ".hdf5": "keras",
         ".keras": "keras", ".rknn": "rknn"}
WEIGHT_SUFFIXES = {"darknet": ".weights", "caffe": ".caffemodel"}  # the second file of two-file formats
MODEL_SUFFIXES = tuple(KINDS)


def model_kind(path: str | Path) -> str:
    """'onnx', 'pytorch', 'tflite', 'darknet', 'caffe', 'tensorflow', 'tfjs', 'keras' or 'rknn' from the file name;
    ModelLoadError for anything else."""
    suffix = Path(path).suffix.lower()
    if suffix in KINDS:
        return KINDS[suffix]
    hint = " (a Darknet model is loaded from its .cfg, a Caffe model from its .prototxt)" if suffix in (
        ".weights", ".caffemodel") else ""
    raise ModelLoadError(f"'{path}': unknown model type '{suffix}'{hint}; give a TorchScript .pt, a torch.export "
                         ".pt2, an .onnx, a .tflite, a Darknet .cfg, a Caffe .prototxt, a TensorFlow frozen .pb, a "
                         "TensorFlow.js model.json, a Keras .h5 / .keras or an .rknn file")


def weights_beside(path: str | Path, kind: str) -> Path:
    """The weights file of a two-file model: the same name with the format's weights suffix."""
    p = Path(path)
    w = p.with_suffix(WEIGHT_SUFFIXES[kind])
    if not w.is_file():
        raise ModelLoadError(f"'{p.name}' is a {kind} model whose weights are a separate {WEIGHT_SUFFIXES[kind]} "
                             f"file; '{w.name}' is not beside it. Give the weights file (weights: in the YAML, "
                             f"{'weight' if kind == 'darknet' else 'blobs'}= in Python) or put it there")
    return w


def _cut(loaded: LoadedModel, inputs, outputs) -> LoadedModel:
    if inputs or outputs:
        from ..frontends.onnx import cut_loaded

        loaded = cut_loaded(loaded, inputs, outputs)
    return loaded


def _reload(load, path, options: dict, input_size_list) -> LoadedModel:
    return load(path, input_size_list=input_size_list, **options)


def _reloadable(loaded: LoadedModel, load, path, **options) -> LoadedModel:
    """``loaded`` with the way to load the same file at other input sizes (config(dynamic_input=...))."""
    return dataclasses.replace(loaded, reload=partial(_reload, load, path, options))


def load_pytorch(path: str | Path, input_size_list, inputs: Optional[List[str]] = None,
                 outputs: Optional[List[str]] = None) -> LoadedModel:
    from ..frontends.pytorch import load_pytorch as load

    loaded = _cut(load(path, input_size_list), inputs, outputs)
    return _reloadable(loaded, load_pytorch, path, inputs=inputs, outputs=outputs)


def _keep_quantization(loaded: LoadedModel) -> LoadedModel:
    """A QDQ graph (quantized elsewhere) becomes its float graph plus the parameters build() keeps."""
    from .qdq_import import is_qdq, strip

    if not is_qdq(loaded.model):
        return loaded
    model, params, notes = strip(loaded.model)
    if not params:
        return loaded
    return dataclasses.replace(loaded, model=model, notes=loaded.notes + notes, source_quant=params)


def load_onnx(path: str | Path, inputs: Optional[List[str]] = None, input_size_list=None,
              outputs: Optional[List[str]] = None, input_initial_val=None) -> LoadedModel:
    from ..frontends.onnx import load_onnx as load

    loaded = _keep_quantization(load(path, inputs=inputs, input_size_list=input_size_list,
                                     input_initial_val=input_initial_val, outputs=outputs))
    return _reloadable(loaded, load_onnx, path, inputs=inputs, outputs=outputs, input_initial_val=input_initial_val)


def load_tflite(path: str | Path, input_is_nchw: bool = False) -> LoadedModel:
    from ..frontends.tflite import load_tflite as load

    return _keep_quantization(load(path, input_is_nchw=input_is_nchw))


def load_darknet(model: str | Path, weight: str | Path, input_size_list=None) -> LoadedModel:
    from ..frontends.darknet import load_darknet as load

    return load(model, weight, input_size_list)


def load_caffe(model: str | Path, blobs: Optional[str | Path] = None, input_name: Optional[str] = None,
               input_size_list=None) -> LoadedModel:
    from ..frontends.caffe import load_caffe as load

    return load(model, blobs, input_name, input_size_list)


def load_tensorflow(tf_pb: str | Path, inputs: Optional[List[str]], input_size_list, outputs: Optional[List[str]],
                    input_is_nchw: bool = False) -> LoadedModel:
    """inputs / outputs None: the graph's placeholders and its final nodes."""
    from ..frontends import tensorflow as tf

    if not inputs or not outputs:
        found_in, found_out = tf.graph_io(tf_pb)
        inputs, outputs = list(inputs or found_in), list(outputs or found_out)
    if input_size_list is None:
        input_size_list = tf.placeholder_shapes(tf_pb, inputs)
    return tf.load_tensorflow(tf_pb, inputs, input_size_list, outputs, input_is_nchw=input_is_nchw)


def load_tfjs(model_json: str | Path, inputs: Optional[List[str]] = None, input_size_list=None,
              outputs: Optional[List[str]] = None) -> LoadedModel:
    """A TensorFlow.js graph or layers model; inputs / outputs None: its placeholders (input layers) and the
    outputs its signature (model) names."""
    from ..frontends.tfjs import load_tfjs as load

    return _reloadable(load(model_json, inputs, input_size_list, outputs), load_tfjs, model_json, inputs=inputs,
                       outputs=outputs)


def load_keras(path: str | Path, input_size_list=None, outputs: Optional[List[str]] = None) -> LoadedModel:
    """A Keras .h5 / .hdf5 / .keras file; outputs None: the model's outputs."""
    from ..frontends.keras import load_keras as load

    return _reloadable(load(path, input_size_list, outputs), load_keras, path, outputs=outputs)


def load_model(path: str | Path, input_size_list=None, inputs: Optional[List[str]] = None,
               outputs: Optional[List[str]] = None, weights: Optional[str | Path] = None,
               input_initial_val=None) -> LoadedModel:
    """Dispatch on the file type (an .rknn is already converted). ``weights``: the second file of a Darknet or
    Caffe model (default: the same name beside it). ``input_initial_val``: ONNX only, as load_onnx takes it."""
    kind = model_kind(path)
    if input_initial_val is not None and kind != "onnx":
        raise ModelLoadError(f"input_initial_val fixes inputs of ONNX models only; '{path}' is a {kind} model. "
                             "Export it to ONNX, or feed that input at run time")
    if kind == "onnx":
        return load_onnx(path, inputs=inputs, input_size_list=input_size_list, outputs=outputs,
                         input_initial_val=input_initial_val)
    if kind == "pytorch":
        return load_pytorch(path, input_size_list, inputs, outputs)
    if kind == "tflite":
        return _cut(load_tflite(path), inputs, outputs)
    if kind == "darknet":
        return _cut(load_darknet(path, weights or weights_beside(path, kind), input_size_list), inputs, outputs)
    if kind == "caffe":
        return _cut(load_caffe(path, weights or weights_beside(path, kind), None, input_size_list), inputs, outputs)
    if kind == "tensorflow":
        return load_tensorflow(path, inputs, input_size_list, outputs)
    if kind == "tfjs":
        return load_tfjs(path, inputs, input_size_list, outputs)
    if kind == "keras":
        if inputs:
            raise ModelLoadError(f"'{path}': a Keras model starts at its input layers; leave inputs out (outputs= "
                                 "can still end it at a layer)")
        return load_keras(path, input_size_list, outputs)
    raise ModelLoadError(f"'{path}' is already an .rknn model; nothing to convert (use `openrknn info` or "
                         "`openrknn run` on it, or load_rknn() in Python)")
