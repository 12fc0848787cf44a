"""TensorFlow.js model (model.json + its .bin weight shards) -> the TensorFlow frontend's GraphDef -> ONNX.

A graph model's "modelTopology" is a TensorFlow GraphDef written as JSON (protobuf's JSON mapping), with the Const
nodes' values left out: they are the weights the manifest lists, in order, in the shards beside the file. The
converter may have stored them quantized (uint8 / uint16 with a min and a scale, or float16); they are read back to
float32 here, as TensorFlow.js does when it loads them. A layers model's "modelTopology" is a Keras topology
instead: keras_layers lowers it to the GraphDef of what its layers compute, with the same weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from ..errors import ModelLoadError
from . import LoadedModel

_DTYPES = {"float32": np.float32, "int32": np.int32, "bool": np.bool_, "uint8": np.uint8, "uint16": np.uint16,
           "float16": np.float16, "int64": np.int64}
_TF_DTYPE = {"float32": "DT_FLOAT", "int32": "DT_INT32", "bool": "DT_BOOL", "int64": "DT_INT64"}


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise ModelLoadError(f"TensorFlow.js model not found: '{path}'. Give the graph model's model.json (its "
                             ".bin weight files beside it)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"'{path}' is not a TensorFlow.js model.json ({e})") from None
    if not isinstance(doc, dict) or "modelTopology" not in doc or "weightsManifest" not in doc:
        raise ModelLoadError(f"'{path}' is JSON but not a TensorFlow.js model (no modelTopology / weightsManifest); "
                             "give the model.json that tensorflowjs_converter wrote")
    return doc


def _is_layers_model(doc: dict) -> bool:
    """A layers model (a Keras topology: what tf.LayersModel.save and Keras exports write) rather than a GraphDef."""
    topology = doc["modelTopology"]
    # TensorFlow.js 1.x wrote no "format", and Teachable Machine's files keep the Keras config at the top
    return doc.get("format") == "layers-model" or (isinstance(topology, dict) and ("model_config" in topology or
                                                                                   "class_name" in topology))


def _shard(path: Path, rel) -> bytes:
    """A weight file the manifest names: a file beside the model (or below its folder), never outside it."""
    folder = path.parent.resolve()
    shard = (folder / str(rel)).resolve() if isinstance(rel, str) and rel else None
    if shard is None or folder not in shard.parents:
        raise ModelLoadError(f"'{path.name}' names the weight file {rel!r}, which is not a file name inside the "
                             "model's folder; a model.json lists its shards by their names beside it")
    if not shard.is_file():
        raise ModelLoadError(f"'{path.name}' lists the weight file '{rel}', which is not beside it in "
                             f"{path.parent}; copy the model's .bin files with it")
    return shard.read_bytes()


def _spec(path: Path, spec) -> tuple:
    """(name, shape, dtype, stored dtype, quantization) of one manifest entry, checked."""
    bad = f"'{path.name}': a weightsManifest entry ({str(spec)[:80]}) is not a weight spec"
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise ModelLoadError(bad + " (no name)")
    shape = spec.get("shape", [])
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ModelLoadError(bad + f" (shape {shape!r}: a list of sizes >= 0)")
    dtype = spec.get("dtype", "float32")
    quant = spec.get("quantization") or {}
    if not isinstance(quant, dict):
        raise ModelLoadError(bad + " (quantization is not an object)")
    stored = quant.get("dtype", dtype)
    if stored not in _DTYPES or dtype not in _TF_DTYPE:
        raise ModelLoadError(f"'{path.name}': weight '{spec['name']}' is stored as {stored} ({dtype}), which "
                             "openrknn cannot read; export the model without that weight type")
    if stored in ("uint8", "uint16") and not all(isinstance(quant.get(k), (int, float)) for k in ("min", "scale")):
        raise ModelLoadError(f"'{path.name}': weight '{spec['name']}' is stored as {stored} without a numeric min "
                             "and scale to read it back with")
    return spec["name"], shape, dtype, stored, quant


def _weights(path: Path, manifest) -> dict:
    """{weight name: float32 / int32 / bool array} from the shards, dequantized as TensorFlow.js loads them."""
    if not isinstance(manifest, list) or not all(isinstance(g, dict) for g in manifest):
        raise ModelLoadError(f"'{path.name}': weightsManifest is not a list of weight groups; the file is not a "
                             "TensorFlow.js model.json as tensorflowjs_converter writes it")
    out = {}
    for group in manifest:
        data = b"".join(_shard(path, rel) for rel in group.get("paths", []))
        offset = 0
        for entry in group.get("weights", []):
            name, shape, dtype, stored, quant = _spec(path, entry)
            n = int(np.prod(shape)) if shape else 1
            size = n * np.dtype(_DTYPES[stored]).itemsize
            if offset + size > len(data):
                raise ModelLoadError(f"'{path.name}': the weight files end before weight '{name}' ({len(data)} "
                                     f"bytes, {offset + size} needed); the .bin files are incomplete or not this "
                                     "model's")
            raw = np.frombuffer(data, _DTYPES[stored], count=n, offset=offset)
            offset += size
            if stored in ("uint8", "uint16"):  # affine quantization: value = q * scale + min, in double as
                # TensorFlow.js computes it (in float32 a stored zero comes back as 1e-7, which per-channel int8
                # weights would then blow up to a full-scale channel)
                raw = raw.astype(np.float64) * float(quant["scale"]) + float(quant["min"])
            out[name] = raw.astype(_DTYPES[dtype]).reshape(shape)
    return out


def read_graph(path: str | Path):
    """The model's GraphDef with every Const filled from the weight shards."""
    from google.protobuf import json_format

    from .tf_schema import DT, GraphDef

    path = Path(path)
    doc = _read_json(path)
    graph = GraphDef()
    try:
        if not isinstance(doc["modelTopology"], dict):
            raise json_format.ParseError("an object was expected")
        json_format.ParseDict(doc["modelTopology"], graph, ignore_unknown_fields=True)
    except (json_format.ParseError, TypeError, ValueError, AttributeError) as e:
        raise ModelLoadError(f"'{path}': its modelTopology is not a TensorFlow GraphDef ({str(e)[:200]})") from None
    weights = _weights(path, doc["weightsManifest"])
    for node in graph.node:
        if node.op != "Const" or node.name not in weights:
            continue
        arr = weights.pop(node.name)
        t = node.attr["value"].tensor
        t.Clear()
        t.dtype = DT[_TF_DTYPE[arr.dtype.name]]
        for d in arr.shape:
            t.tensor_shape.dim.add(size=d)
        t.tensor_content = np.ascontiguousarray(arr).tobytes()
    missing = [n.name for n in graph.node if n.op == "Const" and not n.attr["value"].tensor.tensor_content
               and not _has_inline_value(n) and not _is_empty(n)]
    if missing:
        raise ModelLoadError(f"'{path.name}': constant(s) {missing[:5]} have no weights in the manifest; the "
                             "model.json and its .bin files do not belong together")
    return graph, doc


def _is_empty(node) -> bool:
    """A constant of zero elements (a constant-folded empty Where): nothing to read."""
    dims = node.attr["value"].tensor.tensor_shape.dim
    return bool(dims) and any(d.size == 0 for d in dims)


def _has_inline_value(node) -> bool:
    t = node.attr["value"].tensor
    return bool(t.float_val or t.int_val or t.int64_val or t.bool_val or t.half_val or t.double_val)


def _signature_outputs(doc: dict) -> List[str]:
    sig = (doc.get("signature") or {}).get("outputs") or {}
    return [v.get("name", k) if isinstance(v, dict) else k for k, v in sig.items()]


def _signature_shapes(doc: dict, inputs: Sequence[str]) -> Optional[List[List[int]]]:
    """The signature's input shapes, where it gives every input a full one (batch -1 taken as 1)."""
    sig = (doc.get("signature") or {}).get("inputs") or {}
    by_name = {k.split(":")[0]: v for k, v in sig.items() if isinstance(v, dict)}
    shapes = []
    for name in inputs:
        spec = by_name.get(name.split(":")[0])
        dims = [int(d.get("size", -1)) for d in ((spec or {}).get("tensorShape") or {}).get("dim", [])]
        dims = [1 if (i == 0 and d < 1) else d for i, d in enumerate(dims)]
        if not dims or any(d < 1 for d in dims):
            return None
        shapes.append(dims)
    return shapes


def load_tfjs(model_json: str | Path, inputs: Optional[Sequence[str]] = None, input_size_list=None,
              outputs: Optional[Sequence[str]] = None, input_is_nchw: bool = False) -> LoadedModel:
    """inputs / outputs None: the graph's placeholders and the outputs its signature names (else its final nodes);
    input_size_list None: the placeholders' shapes, or the signature's where a placeholder leaves H or W at -1 (a -1
    batch taken as 1)."""
    from .tensorflow import convert_graph, graph_io_of, placeholder_shapes_of

    path = Path(model_json)
    doc = _read_json(path)
    if _is_layers_model(doc):
        from .keras_layers import graph_of_layers, model_config, model_inputs, nchw_shapes, nhwc_sizes

        own = model_inputs(model_config(doc["modelTopology"], str(path)))
        if inputs and [str(i).split(":")[0] for i in inputs] != own:
            raise ModelLoadError(f"load_tfjs: a layers model starts at its input layers {own}, not at "
                                 f"inputs={list(inputs)}; leave inputs out (outputs=[...] can still end it early)")
        # the layers are lowered at the file's channel-last sizes
        sizes = nhwc_sizes(input_size_list) if input_size_list is not None and input_is_nchw else input_size_list
        graph, found_in, found_out, shapes = graph_of_layers(doc["modelTopology"], _weights(
            path, doc["weightsManifest"]), str(path), sizes)
        input_size_list = nchw_shapes(shapes) if input_is_nchw else shapes
        inputs, outputs = found_in, list(outputs or found_out)
        what = "TensorFlow.js layers model"
    else:
        graph, doc = read_graph(path)
        what = "TensorFlow.js graph model"
    if not inputs or not outputs:
        found_in, found_out = graph_io_of(graph, str(path))
        inputs = list(inputs or found_in)
        outputs = list(outputs or _signature_outputs(doc) or found_out)
    if input_size_list is None:
        try:
            input_size_list = placeholder_shapes_of(graph, inputs)
        except ModelLoadError:  # a -1 height or width: the signature may state the size the model was made for
            input_size_list = _signature_shapes(doc, inputs)
            if input_size_list is None:
                raise
    return convert_graph(graph, path, "tfjs", inputs, input_size_list, outputs, input_is_nchw, what=what)
