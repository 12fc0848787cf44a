"""The input shape sets of a model built with config(dynamic_input=...): one graph, several shapes.

The package holds the graph at its base set (the largest, where it was calibrated) and, for every other set, the
few things that differ there: the input and output dims and the constants and node attributes that follow the input
size (Reshape targets, Resize sizes, Slice ends, pool kernels). The weights and scales are the base graph's, as on
the chip, where every shape set shares one copy of them. metadata["dynamic_input"] = {"base": index, "sets": [{
"shapes": the set as config() gave it, "inputs": input records, "outputs": output records, "patch": {"inputs":
{name: dims}, "outputs": {name: dims}, "constants": {name: {"dtype", "dims", "values"}}, "attributes": {node name:
{attribute: value}}}}]} (the base set's patch is empty).
"""

from __future__ import annotations

from typing import List, Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import CorruptPackageError

__all__ = ["shape_sets", "apply_patch", "patched_metadata", "set_label", "base_set_only"]


def shape_sets(metadata: dict) -> Optional[List[dict]]:
    """The sets of a dynamic_input package in config() order, or None for a one-shape model."""
    entry = metadata.get("dynamic_input")
    return list(entry["sets"]) if entry else None


def base_set_only(metadata: dict, what: str) -> Optional[str]:
    """The warning for a tool that takes one shape (an export, a perf estimate) given a dynamic_input model."""
    sets = shape_sets(metadata)
    if not sets or len(sets) < 2:
        return None
    base = sets[metadata["dynamic_input"]["base"]]
    return (f"{what} covers the base shape set {set_label(base['shapes'])} only, of this model's {len(sets)} "
            "(config dynamic_input); build a model at another set to get that one")


def set_label(shapes) -> str:
    return " + ".join("x".join(str(d) for d in s) for s in shapes)


def patched_metadata(metadata: dict, entry: dict) -> dict:
    """The metadata of one set's model: its inputs and outputs, no further sets."""
    out = {k: v for k, v in metadata.items() if k != "dynamic_input"}
    out["inputs"], out["outputs"] = entry["inputs"], entry["outputs"]
    return out


def _set_dims(value_info, dims: List[int]) -> None:
    shape = value_info.type.tensor_type.shape
    shape.ClearField("dim")
    for d in dims:
        shape.dim.add().dim_value = int(d)


def _attribute(node, name: str, value):
    if isinstance(value, dict):  # a tensor (a Constant node's value)
        return helper.make_attribute(name, _tensor(value, node.output[0]))
    return helper.make_attribute(name, value)


def _tensor(record: dict, name: str) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(record["values"], dtype=record["dtype"]).reshape(record["dims"]), name)


def apply_patch(model_bytes: bytes, patch: dict) -> bytes:
    """The base graph with one set's dims, constants and attributes. A name the graph lacks means the file does not
    belong together (CorruptPackageError)."""
    model = onnx.ModelProto()
    model.ParseFromString(model_bytes)
    graph = model.graph
    del graph.value_info[:]  # the base set's shapes; onnxruntime infers this set's own
    for group, dims in ((graph.input, patch["inputs"]), (graph.output, patch["outputs"])):
        for v in group:
            if v.name in dims:
                _set_dims(v, dims[v.name])
    constants, attributes = dict(patch.get("constants", {})), dict(patch.get("attributes", {}))
    for k, t in enumerate(graph.initializer):
        if t.name in constants:
            graph.initializer[k].CopyFrom(_tensor(constants.pop(t.name), t.name))
    for node in graph.node:
        for name, value in attributes.pop(node.name, {}).items() if node.name else ():
            kept = [a for a in node.attribute if a.name != name]
            del node.attribute[:]
            node.attribute.extend(kept + [_attribute(node, name, value)])
    if constants or attributes:
        missing = list(constants) + list(attributes)
        raise CorruptPackageError(f"the model's shape set patch names {missing[:4]}, which its graph lacks: the file "
                                  "was edited or damaged; re-export it")
    return model.SerializeToString()
