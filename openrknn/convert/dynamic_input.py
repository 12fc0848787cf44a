"""config(dynamic_input=...): one .rknn that takes several input shapes, as rknn-toolkit2's option does.

The model is built once, at the largest set (its calibration, weights and scales; the vendor's 'MaxShape'). Every
other set gets the float graph built again at its shapes, compared with the base one node by node: the same ops in
the same order, differing only in dims and in the constants and attributes that follow the input size. Those
differences are the set's patch (runtime/shape_sets.py), applied to the built graph, int8 or float. A graph whose
structure changes with the size (an op folded away at one size only) cannot share one build; the error says where.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable, Dict, List, Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..config import BuildConfig
from ..errors import BuildError, ConfigError, DatasetError
from ..frontends import LoadedModel
from ..runtime.shape_sets import apply_patch, set_label
from .float_graph import build_float_graph, dims
from .package_meta import output_metas

if TYPE_CHECKING:
    from .build import BuildResult

log = logging.getLogger("openrknn.build")

# a constant that follows the input size and is larger than this (a detector's anchor grid at 1280x1280 has 67,200
# values) is refused: the file's metadata (JSON) would carry more than a few MB per set
MAX_PATCH_VALUES = 1 << 18
_NUMBER_ATTRIBUTES = (onnx.AttributeProto.INT, onnx.AttributeProto.INTS, onnx.AttributeProto.FLOAT,
                      onnx.AttributeProto.FLOATS)


def build_shape_sets(loaded: LoadedModel, cfg: BuildConfig, build_one: Callable, opts) -> "BuildResult":
    """build_one(loaded, cfg) at the base set, then every other set's patch; returns the base BuildResult with
    metadata['dynamic_input'] filled in."""
    sets = cfg.dynamic_input
    if loaded.reload is None:
        raise ConfigError("dynamic_input", sets, hint=f"a {loaded.framework} model is loaded at one fixed size; "
                          "dynamic_input works with load_onnx and load_pytorch models (convert this one to ONNX), "
                          "or build one model per shape")
    if (opts.rknn_batch_size or 1) > 1:
        raise ConfigError("dynamic_input", sets, hint="rknn_batch_size > 1 and dynamic_input together are not "
                          "supported: give the batch as the first dim of each shape set instead")
    base = cfg.dynamic_base
    log.info("dynamic_input: %d shape sets; building at the largest, %s (calibration images are resized to it)",
             len(sets), set_label(base))
    try:
        result = build_one(_at(loaded, base), cfg)
    except DatasetError as e:
        raise DatasetError(f"{e} (config dynamic_input calibrates at the largest set, {set_label(base)}: images are "
                           "resized to it; .npy samples must have its shape)") from None
    entries = []
    base_metas, base_seen = result.package.metadata["inputs"], {}
    for shapes in sets:
        if shapes == base:
            meta = result.package.metadata
            entries.append({"shapes": shapes, "inputs": meta["inputs"], "outputs": meta["outputs"],
                            "patch": {"inputs": {}, "outputs": {}, "constants": {}, "attributes": {}}})
            continue
        float_model, metas, _ = build_float_graph(_at(loaded, shapes), cfg)
        patch = shape_patch(result.float_model, float_model, shapes, base)
        _check_patch(result.float_model, float_model, patch, shapes)
        _check_built(result.model, result.float_model, patch, shapes)
        entry = {"shapes": shapes, "inputs": [dict(m) for m in metas], "outputs": output_metas(float_model),
                 "patch": patch}
        quant = result.package.metadata.get("quantization")
        clipped = _clipped_ranges(result.float_model, base_metas, float_model, metas, cfg, opts.dataset,
                                  quant.get("tensors") or {}, shapes, base_seen) if quant and opts.dataset else None
        if clipped is not None:
            entry["clipped"] = clipped
        entries.append(entry)
        log.info("dynamic_input: set %s shares the build (%d constants, %d attributes differ)", set_label(shapes),
                 len(patch["constants"]), len(patch["attributes"]))
    result.package.metadata["dynamic_input"] = {"base": sets.index(base), "sets": entries}
    return result


# a set's tensor is reported when it reaches past its quantized range and its extreme is this many times what the same
# images give it at the largest set
CLIP_REPORT_FACTOR = 1.25


def _observed_ranges(float_model: onnx.ModelProto, metas: List[dict], cfg: BuildConfig, dataset: str,
                     names: List[str], samples: int) -> Optional[Dict[str, tuple]]:
    """{tensor: (min, max)} of ``names`` over the first ``samples`` calibration samples read at ``metas``' shapes
    (images resized to them); None where the data cannot be read there (.npy samples have one shape)."""
    from ..runtime.ort_session import make_session
    from .quantize import calibration_data

    quiet = logging.getLogger("openrknn.quant.dataset")  # its resize notice was given once, for the base set
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        data = calibration_data(dataset, metas, cfg)
    except DatasetError as e:
        log.debug("dynamic_input: ranges not checked at %s (%s)", [m["shape"] for m in metas], e)
        return None
    finally:
        quiet.setLevel(level)
    model = onnx.ModelProto()
    model.CopyFrom(float_model)
    model.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names)
    sess = make_session(model.SerializeToString())
    first = len(float_model.graph.output)
    out = {n: (0.0, 0.0) for n in names}
    for k, feed in enumerate(data):
        if k >= samples:
            break
        for n, v in zip(names, sess.run([o.name for o in model.graph.output], feed)[first:]):
            out[n] = (min(out[n][0], float(np.min(v))), max(out[n][1], float(np.max(v))))
    return out


def _clipped_ranges(base_model: onnx.ModelProto, base_metas: List[dict], float_model: onnx.ModelProto,
                    metas: List[dict], cfg: BuildConfig, dataset: str, tensors: dict, shapes, base_seen: dict,
                    samples: int = 8) -> Optional[List[dict]]:
    """The activations that reach, at this set, past their quantized range and past what the same calibration images
    give them at the largest set, where the build calibrated (a softmax over the positions of a smaller image):
    [{"tensor", "factor"}] (the set's extreme over the base set's), worst first. None where the data cannot be read
    at this set."""
    from ..quant.hybrid import qparam_ranges

    produced = {o for node in float_model.graph.node for o in node.output}
    ranges = {n: r for n, r in qparam_ranges(tensors).items()
              if n in produced and tensors[n].get("kind") == "activation"}
    names = sorted(ranges)
    here = _observed_ranges(float_model, metas, cfg, dataset, names, samples) if names else None
    if here is None:
        return None
    missing = [n for n in names if n not in base_seen]  # the base set's, measured once for every set
    if missing:
        base_seen.update(_observed_ranges(base_model, base_metas, cfg, dataset, missing, samples) or {})
    there = {n: base_seen[n] for n in names if n in base_seen}
    if len(there) != len(names):
        return None
    clipped = []
    for n in names:
        (low, high), (lo, hi), (base_lo, base_hi) = ranges[n], here[n], there[n]
        past = hi > high or lo < low
        factor = max(hi / base_hi if base_hi > 0 else 0.0, lo / base_lo if base_lo < 0 else 0.0)
        if past and factor >= CLIP_REPORT_FACTOR:
            clipped.append({"tensor": n, "factor": round(factor, 2)})
    clipped.sort(key=lambda c: -c["factor"])
    if clipped:
        worst = ", ".join(f"{c['tensor']} x{c['factor']:g}" for c in clipped[:3])
        log.warning("dynamic_input: at %s, %d tensor(s) reach past their quantized range, beyond what the same images "
                    "give them at the largest set (worst: %s): their values are clipped there, and that set may lose "
                    "accuracy; compare it with a model built at that size, or keep those layers in 16-bit",
                    set_label(shapes), len(clipped), worst)
    return clipped


def _at(loaded: LoadedModel, shapes: List[List[int]]) -> LoadedModel:
    from ..errors import ModelLoadError

    try:
        return loaded.reload(shapes)
    except ModelLoadError as e:
        raise ConfigError("dynamic_input", shapes, hint=f"the model does not load at this shape set: {e}") from None


def _differs(where: str, shapes, base) -> BuildError:
    return BuildError(f"dynamic_input: the graph built at {set_label(shapes)} is not the one built at "
                      f"{set_label(base)} with other sizes: {where}. The model's structure depends on its input size "
                      "there, so one build cannot serve both; build one model per shape set")


def shape_patch(base: onnx.ModelProto, other: onnx.ModelProto, shapes, base_shapes) -> dict:
    """What ``other`` (the float graph at ``shapes``) changes in ``base`` (the float graph at the base set)."""
    a, b = base.graph, other.graph
    if [i.name for i in a.input] != [i.name for i in b.input] or \
            [o.name for o in a.output] != [o.name for o in b.output]:
        raise _differs("the graph inputs or outputs differ", shapes, base_shapes)
    if len(a.node) != len(b.node):
        raise _differs(f"{len(b.node)} nodes against {len(a.node)}", shapes, base_shapes)
    attributes: Dict[str, dict] = {}
    for x, y in zip(a.node, b.node):
        if (x.op_type, x.domain, list(x.input), list(x.output)) != (y.op_type, y.domain, list(y.input),
                                                                    list(y.output)):
            raise _differs(f"node '{x.name or x.output[0]}' ({x.op_type}) is '{y.name or y.output[0]}' ({y.op_type})",
                           shapes, base_shapes)
        changed = _attribute_changes(x, y, shapes, base_shapes)
        if changed:
            if not x.name or sum(n.name == x.name for n in a.node) > 1:
                raise _differs(f"an attribute of an unnamed (or not uniquely named) {x.op_type} node", shapes,
                               base_shapes)
            attributes[x.name] = changed
    a_init = {t.name: t for t in a.initializer}
    b_init = {t.name: t for t in b.initializer}
    if set(a_init) != set(b_init):
        raise _differs(f"constants {sorted(set(a_init) ^ set(b_init))[:4]} are in one graph only", shapes, base_shapes)
    constants = {}
    for name, t in a_init.items():
        u = b_init[name]
        if t.SerializeToString() == u.SerializeToString():
            continue
        constants[name] = _record(numpy_helper.to_array(u), f"constant '{name}'", shapes, base_shapes)
    return {"inputs": {i.name: dims(i) for i in b.input}, "outputs": {o.name: dims(o) for o in b.output},
            "constants": constants, "attributes": attributes}


def _record(arr: np.ndarray, what: str, shapes, base_shapes) -> dict:
    if arr.size > MAX_PATCH_VALUES or arr.dtype.kind not in "iuf":
        raise _differs(f"{what} ({arr.dtype}, {arr.size} values) changes with the input size", shapes, base_shapes)
    return {"dtype": arr.dtype.name, "dims": list(arr.shape), "values": arr.ravel().tolist()}


def _attribute_changes(x, y, shapes, base_shapes) -> dict:
    xa = {at.name: at for at in x.attribute}
    ya = {at.name: at for at in y.attribute}
    if set(xa) != set(ya):
        raise _differs(f"node '{x.name}' ({x.op_type}) has attributes {sorted(ya)} against {sorted(xa)}", shapes,
                       base_shapes)
    changed = {}
    for name, at in ya.items():
        if at == xa[name]:
            continue
        if at.type in _NUMBER_ATTRIBUTES:
            value = helper.get_attribute_value(at)
            changed[name] = list(value) if isinstance(value, (list, tuple)) else value
        elif at.type == onnx.AttributeProto.TENSOR:
            changed[name] = _record(numpy_helper.to_array(at.t), f"{x.op_type} '{x.name}''s {name}", shapes,
                                    base_shapes)
        else:
            raise _differs(f"attribute {name} of node '{x.name}' ({x.op_type})", shapes, base_shapes)
    return changed


def _feeds(model: onnx.ModelProto, seed: int = 0) -> dict:
    """A random feed for every graph input: values in the pixel range for real inputs, zeros for integer ones."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in model.graph.input:
        dtype = helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)
        shape = dims(i)
        feeds[i.name] = (rng.uniform(0, 255, shape).astype(dtype) if np.issubdtype(dtype, np.floating)
                         else np.zeros(shape, dtype))
    return feeds


def _run(model_bytes: bytes, feeds: dict) -> list:
    from ..runtime.ort_session import make_session

    return make_session(model_bytes).run(None, feeds)


def _check_patch(base: onnx.ModelProto, other: onnx.ModelProto, patch: dict, shapes) -> None:
    """The base float graph patched to ``shapes`` computes what the float graph built there computes."""
    feeds = _feeds(other)
    want = _run(other.SerializeToString(), feeds)
    got = _run(apply_patch(base.SerializeToString(), patch), feeds)
    for o, w, g in zip(other.graph.output, want, got):
        scale = float(np.max(np.abs(w))) if np.size(w) and np.issubdtype(w.dtype, np.number) else 0.0
        if np.shape(g) != np.shape(w) or (np.size(w) and not np.allclose(g, w, rtol=1e-4, atol=1e-4 * max(scale, 1))):
            raise BuildError(f"dynamic_input: at {set_label(shapes)} the patched graph's output '{o.name}' differs "
                             "from the graph built there (internal error: please report this model); build one "
                             "model per shape set meanwhile")


def _check_built(model: onnx.ModelProto, float_model: onnx.ModelProto, patch: dict, shapes) -> None:
    """The built graph (int8 or float) holds every patched constant as the float graph has it, and runs patched."""
    built = {t.name: t for t in model.graph.initializer}
    plain = {t.name: t for t in float_model.graph.initializer}
    for name in patch["constants"]:
        if name not in built or built[name].SerializeToString() != plain[name].SerializeToString():
            raise BuildError(f"dynamic_input: constant '{name}' follows the input size, and quantization changed "
                             "or folded it; build one model per shape set, or build float (do_quantization=False)")
    names = {n.name for n in model.graph.node}
    for node in patch["attributes"]:
        if node not in names:
            raise BuildError(f"dynamic_input: node '{node}' has attributes that follow the input size, and "
                             "quantization replaced it; build one model per shape set")
    _run(apply_patch(model.SerializeToString(), patch), _feeds(_model_at(float_model, patch)))


def _model_at(model: onnx.ModelProto, patch: dict) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.ParseFromString(apply_patch(model.SerializeToString(), patch))
    return out
