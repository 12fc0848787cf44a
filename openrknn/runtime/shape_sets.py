"""The input shape sets of a model built with config(dynamic_input=...): one graph, several shapes.

The package holds the graph at its base set (the largest, where it was calibrated) and, for every other set, the
few things that differ there: the input and output dims and the constants and node attributes that follow the input
size (Reshape targets, Resize sizes, Slice ends, an anchor grid). The weights and scales are the base graph's, as on
the chip, where every shape set shares one copy of them. metadata["dynamic_input"] = {"base": index, "sets": [{
"shapes": the set as config() gave it, "inputs": input records, "outputs": output records, "patch": {"inputs":
{name: dims}, "outputs": {name: dims}, "constants": {name: {"dtype", "dims", "values"}}, "attributes": {node name:
{attribute: value}}}}]} (the base set's patch is empty).
"""

from __future__ import annotations

from typing import List, Optional

import numpy as np

from ..errors import CorruptPackageError, InferenceInputError
from ..onnx_wire import WireError
from .graph_edit import patch_model

__all__ = ["shape_sets", "apply_patch", "patched_metadata", "set_label", "base_set_only", "set_of", "matching_set",
           "package_at", "package_of_set", "image_sizes", "set_argument"]


def shape_sets(metadata: dict) -> Optional[List[dict]]:
    """The sets of a dynamic_input package in config() order, or None for a one-shape model."""
    entry = metadata.get("dynamic_input")
    return list(entry["sets"]) if entry else None


def base_set_only(metadata: dict, what: str, then: str) -> Optional[str]:
    """The note for a tool that takes one shape (an export, a per-layer estimate) given a dynamic_input model."""
    sets = shape_sets(metadata)
    if not sets or len(sets) < 2:
        return None
    base = sets[metadata["dynamic_input"]["base"]]
    return (f"{what} covers the base shape set {set_label(base['shapes'])} only, of this model's {len(sets)} "
            f"(config dynamic_input); {then}")


def image_sizes(metadata: dict, j: int) -> List[tuple]:
    """The (h, w) input ``j`` takes in each shape set (none for a one-shape model): an image of one of these sizes is
    fed as it is, where a one-shape model's tools resize it."""
    return [tuple(e["inputs"][j]["shape"][1:3]) for e in shape_sets(metadata) or ()]


def set_argument(text: str):
    """A command line's --shape-set: an index ('0') or a label ('1x3x240x320')."""
    return int(text) if text.isdigit() else text


def set_label(shapes) -> str:
    return " + ".join("x".join(str(d) for d in s) for s in shapes)


def patched_metadata(metadata: dict, entry: dict) -> dict:
    """The metadata of one set's model: its inputs and outputs, no further sets."""
    out = {k: v for k, v in metadata.items() if k != "dynamic_input"}
    out["inputs"], out["outputs"] = entry["inputs"], entry["outputs"]
    return out


def set_of(inputs, metadata: dict, data_type=None, data_format="nhwc", pass_through=None) -> int:
    """The index of the set whose inputs ``inputs`` fit (as inference() takes them); the base set is tried first.
    InferenceInputError naming the sets when none fits."""
    return matching_set(inputs, metadata, data_type, data_format, pass_through)[0]


def matching_set(inputs, metadata: dict, data_type=None, data_format="nhwc", pass_through=None) -> tuple:
    """(index, feeds): set_of's set and the feeds prepare_feeds made for it (run them; no second conversion)."""
    from .feeds import prepare_feeds

    sets, base = metadata["dynamic_input"]["sets"], metadata["dynamic_input"]["base"]
    first = None
    for k in [base] + [k for k in range(len(sets)) if k != base]:
        try:
            return k, prepare_feeds(inputs, sets[k]["inputs"], data_type, data_format, pass_through, many=True)
        except InferenceInputError as e:
            first = first or e
    if "shape" not in str(first):  # not a size the sets differ in (a dtype, a count): the base set's own words
        raise first
    given = [list(np.shape(x)) for x in (inputs if isinstance(inputs, (list, tuple)) else [inputs])]
    fed = ", ".join(" + ".join(str(m["shape"]) for m in e["inputs"]) for e in sets)
    raise InferenceInputError(f"the inputs have shape(s) {' + '.join(map(str, given))} ({data_format}), which is not "
                              f"one of the shape sets this model was built for: {fed} as fed (config dynamic_input). "
                              "Resize or letterbox to one of them, or build with this shape in dynamic_input") from None


def package_at(pkg, inputs):
    """``pkg`` as the one-shape package of the set ``inputs`` fit (see package_of_set); ``pkg`` itself for a
    one-shape model."""
    if not shape_sets(pkg.metadata):
        return pkg
    return package_of_set(pkg, set_of(inputs, pkg.metadata))


def package_of_set(pkg, which):
    """The one-shape package of a dynamic_input model's set ``which`` (its index in config() order, or its label
    such as '1x3x240x320'): that set's graph and metadata, its float reference patched alike."""
    from ..errors import ConfigError
    from ..package import RknnPackage

    sets = shape_sets(pkg.metadata)
    labels = [set_label(e["shapes"]) for e in sets or ()]
    if not sets:
        raise ConfigError("shape_set", which, hint="this model takes one input shape (it was built without "
                          "config(dynamic_input=...)); leave shape_set out")
    k = which if isinstance(which, int) and not isinstance(which, bool) else \
        labels.index(which) if which in labels else None
    if k is None or not 0 <= k < len(sets):
        raise ConfigError("shape_set", which, labels + list(range(len(sets))), "a set's label or its index")
    entry = sets[k]
    meta = patched_metadata(pkg.metadata, entry)
    if k == pkg.metadata["dynamic_input"]["base"]:
        return RknnPackage(meta, pkg.model_bytes, pkg.float_model_bytes)
    return RknnPackage(meta, apply_patch(pkg.model_bytes, entry["patch"]),
                       apply_patch(pkg.float_model_bytes, entry["patch"]) if pkg.float_model_bytes else None)


def _array(record: dict) -> np.ndarray:
    return np.array(record["values"], dtype=record["dtype"]).reshape(record["dims"])


def apply_patch(model_bytes: bytes, patch: dict) -> bytes:
    """The base graph with one set's dims, constants and attributes (at the protobuf wire level: the board has no
    onnx package). A name the graph lacks means the file does not belong together (CorruptPackageError)."""
    dims = {**patch.get("inputs", {}), **patch.get("outputs", {})}
    tensors = {name: _array(r) for name, r in patch.get("constants", {}).items()}
    attributes = {node: {k: _array(v) if isinstance(v, dict) else v for k, v in values.items()}
                  for node, values in patch.get("attributes", {}).items()}
    try:
        return patch_model(model_bytes, dims, tensors, attributes)
    except WireError as e:
        raise CorruptPackageError(f"the model's shape set patch does not fit its graph ({e}): the file was edited "
                                  "or damaged; re-export it") from None
