"""The `.rknn` metadata schema (docs/model-format.md, "Metadata schema"): one validator for readers and writers.

Every key a reader or the runtime relies on is checked for its type and range, optional keys only when present, so
that a file edited under a valid checksum is refused here with the field named, never later as a KeyError or a numpy
error. Unknown keys are allowed (newer writers may add optional ones). Standard library only: the board side uses it.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional

REQUIRED_KEYS = ("toolkit", "toolkit_version", "target_platform", "inputs", "outputs", "build")
SECTIONS_KEY = "payload_sections"  # present only when a float reference follows the model
LAYOUTS = ("nhwc", "raw")  # nhwc: an image the graph pre-processes; raw: a tensor fed as it is
# element types an input may declare (the runtime builds its feeds with them; never object or string dtypes)
TENSOR_DTYPES = ("bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float16",
                 "float32", "float64")
MAX_DIM = (1 << 31) - 1  # a tensor dimension; also keeps every element count far from numpy's limits


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def is_int(value: Any) -> bool:
    """A JSON integer (bool is an int in Python, never in this schema)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return (is_int(value) or isinstance(value, float)) and math.isfinite(value)


class _Problems:
    """Collects 'field: what it must be, what it is' lines."""

    def __init__(self) -> None:
        self.lines: List[str] = []

    def add(self, path: str, what: str, value: Any) -> None:
        self.lines.append(f"{path} must be {what}, got {_show(value)}")

    def check(self, ok: bool, path: str, what: str, value: Any) -> bool:
        if not ok:
            self.add(path, what, value)
        return ok

    def text(self, obj: dict, key: str, path: str, nullable: bool = False) -> None:
        if key in obj and not (nullable and obj[key] is None):
            v = obj[key]
            self.check(isinstance(v, str) and bool(v), f"{path}.{key}" if path else key,
                       "a non-empty string" + (" or null" if nullable else ""), v)

    def ints(self, value: Any, path: str, low: int) -> bool:
        ok = isinstance(value, list) and len(value) <= 64 and all(is_int(d) and low <= d <= MAX_DIM for d in value)
        return self.check(ok, path, f"a list of at most 64 integers in {low}..{MAX_DIM}", value)

    def numbers(self, value: Any, path: str) -> bool:
        return self.check(isinstance(value, list) and all(is_number(v) for v in value), path,
                          "a list of finite numbers", value)


def _check_preprocess(p: _Problems, pre: Any, path: str, channels: Optional[int]) -> None:
    if pre is None:
        return
    if not p.check(isinstance(pre, dict), path, "an object or null", pre):
        return
    order = pre.get("reorder_channel")
    if order is not None and p.ints(order, f"{path}.reorder_channel", 0):
        p.check(sorted(order) == list(range(len(order))), f"{path}.reorder_channel",
                "a permutation of the channel indices", order)
        if channels is not None:
            p.check(len(order) == channels, f"{path}.reorder_channel", f"{channels} entries (one per channel)", order)
    for key in ("mean", "std"):  # required: inputs_pass_through undoes them
        if key not in pre:
            p.lines.append(f"{path} has no '{key}' (a pre-processing object needs both mean and std)")
        elif p.numbers(pre[key], f"{path}.{key}") and channels is not None:
            p.check(len(pre[key]) in (1, channels), f"{path}.{key}", f"1 or {channels} values (one per channel)",
                    pre[key])
    into = pre.get("folded_into")
    p.check(into is None or isinstance(into, str) or (isinstance(into, list) and all(isinstance(n, str)
                                                                                      for n in into)),
            f"{path}.folded_into", "a node name, a list of them or null", into)
    if "mean_folded" in pre:
        p.check(isinstance(pre["mean_folded"], bool), f"{path}.mean_folded", "true or false", pre["mean_folded"])


def _check_tensor(p: _Problems, entry: Any, path: str, is_input: bool) -> None:
    if not p.check(isinstance(entry, dict), path, "an object", entry):
        return
    p.check(isinstance(entry.get("name"), str) and bool(entry.get("name")), f"{path}.name", "a non-empty string",
            entry.get("name"))
    layout = entry.get("layout")
    if "layout" in entry:
        p.check(layout in LAYOUTS, f"{path}.layout", " or ".join(repr(x) for x in LAYOUTS), layout)
    shape = entry.get("shape")
    shape_ok = "shape" in entry and p.ints(shape, f"{path}.shape", 0)
    if shape_ok and layout == "nhwc":
        p.check(len(shape) == 4, f"{path}.shape", "4 dimensions [N, H, W, C] for an nhwc input", shape)
    if "model_shape" in entry:
        p.ints(entry["model_shape"], f"{path}.model_shape", 0)
    if "dtype" in entry:
        if is_input:
            p.check(entry["dtype"] in TENSOR_DTYPES, f"{path}.dtype", "one of " + ", ".join(TENSOR_DTYPES),
                    entry["dtype"])
        else:
            p.text(entry, "dtype", path)
    p.text(entry, "model_dtype", path)
    if is_input and "preprocess" in entry:
        channels = shape[3] if shape_ok and layout == "nhwc" and len(shape) == 4 else None
        _check_preprocess(p, entry["preprocess"], f"{path}.preprocess", channels)


def _check_tensors(p: _Problems, entries: Any, key: str) -> None:
    if not p.check(isinstance(entries, list) and bool(entries), key, "a non-empty list of objects", entries):
        return
    for i, entry in enumerate(entries):
        _check_tensor(p, entry, f"{key}[{i}]", key.endswith("inputs"))
    names = [e.get("name") for e in entries if isinstance(e, dict) and isinstance(e.get("name"), str)]
    dupes = sorted({n for n in names if names.count(n) > 1})
    p.check(not dupes, key, "a list of distinct names", dupes)


def _check_build(p: _Problems, build: Any) -> None:
    if not p.check(isinstance(build, dict), "build", "an object", build):
        return
    batch = build.get("rknn_batch_size")
    p.check(batch is None or (is_int(batch) and 1 <= batch <= 4096), "build.rknn_batch_size",
            "an integer in 1..4096 or null", batch)
    for key in ("quant_img_RGB2BGR", "do_quantization"):
        if key in build:
            p.check(isinstance(build[key], bool), f"build.{key}", "true or false", build[key])


def _check_quantization(p: _Problems, quant: Any) -> None:
    if quant is None or not p.check(isinstance(quant, dict), "quantization", "an object or null", quant):
        return
    for key in ("dtype", "algorithm", "method", "weight_rounding"):
        p.text(quant, key, "quantization", nullable=True)
    if "pre_activation_points" in quant:
        p.check(quant["pre_activation_points"] in ("chip", "tflite"), "quantization.pre_activation_points",
                "'chip' or 'tflite'", quant["pre_activation_points"])
    ranges = quant.get("ranges")
    if ranges is not None and p.check(isinstance(ranges, dict), "quantization.ranges", "an object or null", ranges):
        p.text(ranges, "chosen", "quantization.ranges", nullable=True)
        if "log_cut_decades" in ranges:
            p.check(is_number(ranges["log_cut_decades"]), "quantization.ranges.log_cut_decades", "a finite number",
                    ranges["log_cut_decades"])
    tensors = quant.get("tensors")
    if tensors is None or not p.check(isinstance(tensors, dict), "quantization.tensors", "an object", tensors):
        return
    for name, t in tensors.items():
        path = f"quantization.tensors[{_show(name)}]"
        if not p.check(isinstance(t, dict), path, "an object", t):
            continue
        if "scale" in t:
            p.numbers(t["scale"], f"{path}.scale")
        if "zero_point" in t:
            p.check(isinstance(t["zero_point"], list) and all(is_int(z) for z in t["zero_point"]),
                    f"{path}.zero_point", "a list of integers", t["zero_point"])
        if "axis" in t:
            p.check(t["axis"] is None or is_int(t["axis"]), f"{path}.axis", "an integer or null", t["axis"])
        p.text(t, "dtype", path)


def _check_source(p: _Problems, source: Any) -> None:
    if source is None or not p.check(isinstance(source, dict), "source", "an object or null", source):
        return
    for key in ("framework", "file", "sha256"):
        if source.get(key) is not None:
            p.check(isinstance(source[key], str), f"source.{key}", "a string or null", source[key])
    if "notes" in source:
        p.check(isinstance(source["notes"], list) and all(isinstance(n, str) for n in source["notes"]),
                "source.notes", "a list of strings", source["notes"])


def check_sections(p: _Problems, sections: Any, payload_len: Optional[int]) -> None:
    what = "an object {\"model\": A, \"float_reference\": B} of byte counts > 0"
    ok = (isinstance(sections, dict) and all(is_int(sections.get(k)) and sections[k] > 0
                                             for k in ("model", "float_reference")))
    if p.check(ok, SECTIONS_KEY, what, sections) and payload_len is not None:
        p.check(sections["model"] + sections["float_reference"] == payload_len, SECTIONS_KEY,
                f"sizes that add up to the payload's {payload_len} bytes", sections)


def _check_shape_sets(p: _Problems, entry: Any) -> None:
    """config(dynamic_input=...): {"base": index, "sets": [{"shapes", "inputs", "outputs", "patch"}]}."""
    if not p.check(isinstance(entry, dict) and isinstance(entry.get("sets"), list) and bool(entry.get("sets")),
                   "dynamic_input", "an object with a non-empty list 'sets'", entry):
        return
    sets = entry["sets"]
    p.check(is_int(entry.get("base")) and 0 <= entry["base"] < len(sets), "dynamic_input.base",
            f"an index into its {len(sets)} sets", entry.get("base"))
    for k, e in enumerate(sets):
        path = f"dynamic_input.sets[{k}]"
        if not p.check(isinstance(e, dict), path, "an object", e):
            continue
        for key in ("inputs", "outputs"):
            if key in e:
                _check_tensors(p, e[key], f"{path}.{key}")
            else:
                p.lines.append(f"{path} has no '{key}'")
        patch = e.get("patch")
        if p.check(isinstance(patch, dict), f"{path}.patch", "an object", patch):
            for key in ("inputs", "outputs", "constants", "attributes"):
                p.check(isinstance(patch.get(key, {}), dict), f"{path}.patch.{key}", "an object", patch.get(key))
        if "clipped" in e:
            clipped = e["clipped"]
            p.check(isinstance(clipped, list) and all(isinstance(c, dict) and isinstance(c.get("tensor"), str)
                                                      and is_number(c.get("factor")) for c in clipped),
                    f"{path}.clipped", "a list of {tensor, factor} objects", clipped)


_TOP_LEVEL: Dict[str, Callable[[_Problems, Any], None]] = {
    "build": _check_build, "quantization": _check_quantization, "source": _check_source,
    "dynamic_input": _check_shape_sets}


def metadata_problems(meta: Any, payload_len: Optional[int] = None) -> List[str]:
    """Everything wrong with decoded metadata (empty list = valid). payload_len: check payload_sections against it."""
    if not isinstance(meta, dict):
        return [f"the metadata must be a JSON object, got {type(meta).__name__}"]
    p = _Problems()
    p.lines += [f"required key {k!r} is missing" for k in REQUIRED_KEYS if k not in meta]
    p.text(meta, "toolkit", "")
    p.text(meta, "toolkit_version", "")
    if "created_utc" in meta:
        p.check(isinstance(meta["created_utc"], str), "created_utc", "a string", meta["created_utc"])
    if "target_platform" in meta:
        tp = meta["target_platform"]
        p.check(isinstance(tp, list) and bool(tp) and all(isinstance(t, str) and t for t in tp), "target_platform",
                "a non-empty list of chip names", tp)
    for key in ("inputs", "outputs"):
        if key in meta:
            _check_tensors(p, meta[key], key)
    for key, check in _TOP_LEVEL.items():
        if key in meta:
            check(p, meta[key])
    if SECTIONS_KEY in meta:
        check_sections(p, meta[SECTIONS_KEY], payload_len)
    return p.lines


def runtime_problems(meta: dict) -> List[str]:
    """What a runtime needs beyond the schema, for metadata that already passed metadata_problems: every input's
    shape and layout (and dtype for a raw input), all dimensions >= 1, and a batch that divides them."""
    p = _Problems()
    batch = (meta.get("build") or {}).get("rknn_batch_size") or 1
    for i, entry in enumerate(meta["inputs"]):
        path = f"inputs[{i}] ({entry['name']!r})"
        for key in ("shape", "layout") + (("dtype",) if entry.get("layout") == "raw" else ()):
            if key not in entry:
                p.lines.append(f"{path} has no '{key}', which running the model needs")
        shape = entry.get("shape")
        if shape is None:
            continue
        if len(shape) == 0 and entry.get("layout") == "raw":
            continue  # a scalar input (a sample rate, a flag): no batch to divide
        if p.check(len(shape) >= 1 and all(d >= 1 for d in shape), f"{path}.shape",
                   "a fixed shape, every dimension >= 1", shape):
            p.check(shape[0] % batch == 0, f"{path}.shape", f"a first dimension that build.rknn_batch_size={batch} "
                    "divides", shape)
    return p.lines
