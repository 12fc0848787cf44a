"""What `openrknn info`, the GUI and the HTML report show about a `.rknn` package: a JSON-able summary and a readable
description. Not board-side: the reader (openrknn.package) stays free of presentation."""

from __future__ import annotations

import hashlib
import os
from typing import Any, Dict

from .package import FORMAT_VERSION, HEADER_SIZE, RknnPackage, encode_metadata
from .units import format_bytes


def quant_counts(tensors: dict) -> dict:
    """What a quantization record's tensors are: activations, weights, biases, and how many weights have one scale
    per output channel. The one count `info`, `perf`/eval_memory, the GUI and the report show (a bias takes its
    weight's granularity and is not counted again; a per-layer build has 0 per-channel tensors)."""
    records = [t for t in tensors.values() if isinstance(t, dict)]
    # records without a kind (older files): a tensor with an axis is a weight
    kinds = [t.get("kind") or ("weight" if t.get("axis") is not None else "activation") for t in records]
    return {"quantized_tensors": len(kinds), "activations": kinds.count("activation"),
            "weights": kinds.count("weight"), "biases": kinds.count("bias"),
            "per_channel_tensors": sum(1 for t, k in zip(records, kinds)
                                       if k == "weight" and t.get("axis") is not None)}


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 'es' if word.endswith('s') else 's'}"


def package_summary(pkg: RknnPackage, path: str | None = None) -> dict:
    """A JSON-able overview of pkg (what `openrknn info --json` prints). Missing optional fields become None."""
    meta = pkg.metadata
    meta_len = len(encode_metadata(meta))
    float_len = len(pkg.float_model_bytes or b"")
    size = HEADER_SIZE + meta_len + len(pkg.model_bytes) + float_len
    if path is not None:
        try:
            size = os.path.getsize(path)
        except OSError:
            pass
    inputs = []
    firsts = _first_points(pkg.model_bytes, (meta.get("quantization") or {}).get("tensors") or {})
    for entry in meta.get("inputs") or []:
        pre = entry.get("preprocess") or {}
        inputs.append({
            "name": entry.get("name"), "shape": entry.get("shape"), "dtype": entry.get("dtype"),
            "layout": entry.get("layout"), "model_shape": entry.get("model_shape"),
            "reorder_channel": pre.get("reorder_channel"), "mean": pre.get("mean"), "std": pre.get("std"),
            "folded_into": pre.get("folded_into"), "first_point": firsts.get(entry.get("name")),
        })
    outputs = [{"name": o.get("name"), "shape": o.get("shape"), "dtype": o.get("dtype")}
               for o in meta.get("outputs") or []]
    quant = meta.get("quantization")
    quant_summary = None
    if isinstance(quant, dict):
        tensors = quant.get("tensors") or {}
        quant_summary = {
            "dtype": quant.get("dtype"), "algorithm": quant.get("algorithm"), "method": quant.get("method"),
            "weight_rounding": quant.get("weight_rounding") or "nearest",  # files from before the option: nearest
            "ranges": quant.get("ranges") or {},  # files from before the record: none
            "pre_activation_points": quant.get("pre_activation_points") or "chip",  # files from before: chip
            **quant_counts(tensors),
        }
    return {
        "file": path, "size_bytes": size, "format_version": FORMAT_VERSION,
        "toolkit": meta.get("toolkit"), "toolkit_version": meta.get("toolkit_version"),
        "created_utc": meta.get("created_utc"), "target_platform": meta.get("target_platform"),
        "inputs": inputs, "outputs": outputs, "build": meta.get("build") or {},
        "quantization": quant_summary, "source": meta.get("source"),
        "metadata_bytes": meta_len, "payload_bytes": len(pkg.model_bytes),
        "payload_sha256": hashlib.sha256(pkg.model_bytes).hexdigest(),
        "float_reference_bytes": float_len,
        "shape_sets": _shape_sets(meta),
    }


def _first_points(model_bytes: bytes, tensors: dict) -> dict:
    """{input: the quantization of the first point its values reach (the tensor that leaves its pre-processing),
    with the values the levels span}; empty for a float model. Found in the payload: the first QuantizeLinear on
    the way from each graph input."""
    if not isinstance(tensors, dict) or not tensors:
        return {}
    import onnx
    from google.protobuf.message import DecodeError

    try:
        graph = onnx.load_from_string(model_bytes).graph
    except (DecodeError, ValueError):  # a payload that does not parse: load_rknn refuses it; info leaves the line out
        return {}
    readers: Dict[str, list] = {}
    for node in graph.node:
        for t in node.input:
            readers.setdefault(t, []).append(node)
    out = {}
    for inp in graph.input:
        seen, todo = set(), [inp.name]
        while todo and inp.name not in out:
            for node in readers.get(todo.pop(0), []):
                if node.op_type == "QuantizeLinear" and node.output:
                    point = next((n.output[0] for n in readers.get(node.output[0], [])
                                  if n.op_type == "DequantizeLinear" and n.output), node.output[0])
                    if point in tensors:
                        out[inp.name] = _point(point, tensors[point])
                        break  # (None for a record without a readable scale and zero point)
                elif id(node) not in seen:
                    seen.add(id(node))
                    todo.extend(o for o in node.output if o)
    return out


def _point(name: str, q: dict) -> dict | None:
    from .quant.hybrid import qparam_ranges

    try:
        scale, zp = float(q["scale"][0]), int(q["zero_point"][0])
        span = [float(v) for v in qparam_ranges({name: q})[name]]
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        return None
    return {"tensor": name, "dtype": q.get("dtype"), "scale": scale, "zero_point": zp, "range": span}


def first_point_text(point: dict, span_sep: str = ": ") -> str:
    """`openrknn info`'s and the report's words for an input's first_point (the report's row is a list of
    clauses: span_sep ', ')."""
    return (f"first quantized at {point['tensor']}: {point['dtype']}, scale {point['scale']:.6g}, zero point "
            f"{point['zero_point']}{span_sep}levels span [{point['range'][0]:.6g}, {point['range'][1]:.6g}]")


def _shape_sets(meta: dict) -> list:
    """config(dynamic_input=...): each set's deployed input and output shapes (None for a one-shape model)."""
    entry = meta.get("dynamic_input")
    if not entry:
        return None
    return [{"shapes": e["shapes"], "inputs": [m["shape"] for m in e["inputs"]],
             "outputs": [m["shape"] for m in e["outputs"]], "base": k == entry["base"],
             "patched_constants": len(e["patch"].get("constants", {})),
             "patched_attributes": len(e["patch"].get("attributes", {})),
             "clipped": e.get("clipped")} for k, e in enumerate(entry["sets"])]


def _fmt_list(values: Any) -> str:
    if values is None:
        return "?"
    if isinstance(values, list):
        return "[" + ", ".join(_fmt_list(v) if isinstance(v, list) else f"{v:g}" if isinstance(v, float) else str(v)
                               for v in values) + "]"
    return str(values)


def _fmt_reorder(order: Any) -> str:
    if order is None:
        return "none"
    text = " ".join(map(str, order)) if isinstance(order, list) else str(order)
    return text + (" (swaps RGB <-> BGR)" if order == [2, 1, 0] else "")


def _wrap_options(options: dict, indent: str, width: int = 100) -> list[str]:
    lines, line = [], indent
    for key in sorted(options):
        item = f"{key}={options[key]!r}"
        if line.strip() and len(line) + len(item) + 2 > width:
            lines.append(line.rstrip(", "))
            line = indent
        line += item + ", "
    if line.strip():
        lines.append(line.rstrip(", "))
    return lines or [indent + "(none recorded)"]


def describe_package(pkg: RknnPackage, path: str | None = None) -> str:
    """Readable multi-line description of a package (`openrknn info`)."""
    s = package_summary(pkg, path)
    targets = s["target_platform"]
    lines = [
        f"openrknn package: {s['file'] or '(in memory)'}",
        f"  size:            {format_bytes(s['size_bytes'])} ({s['size_bytes']:,} bytes), format version "
        f"{s['format_version']}",
        f"  toolkit:         {s['toolkit']} {s['toolkit_version']}",
        f"  target platform: {', '.join(targets) if isinstance(targets, list) else targets}",
        f"inputs ({len(s['inputs'])}):",
    ]
    if s["created_utc"]:  # older files; builds are reproducible now and record no time
        lines.insert(3, f"  created:         {s['created_utc']}")
    for i in s["inputs"]:
        into = i["folded_into"]
        into = ", ".join(into) if isinstance(into, list) else into
        folded = f"yes, into {into}" if into else "no (applied by graph nodes)"
        lines.append(f"  {i['name']}: deployed {_fmt_list(i['shape'])} {i['dtype'] or '?'} {i['layout'] or '?'}; "
                     f"model-side {_fmt_list(i['model_shape'])}")
        lines.append(f"      reorder_channel: {_fmt_reorder(i['reorder_channel'])}; mean {_fmt_list(i['mean'])}; "
                     f"std {_fmt_list(i['std'])}; folded into the model: {folded}")
        if i["first_point"]:
            lines.append(f"      {first_point_text(i['first_point'])}")
    lines.append(f"outputs ({len(s['outputs'])}):")
    lines += [f"  {o['name']}: {_fmt_list(o['shape'])} {o['dtype'] or '?'}" for o in s["outputs"]]
    if s["shape_sets"]:
        lines.append(f"input shape sets ({len(s['shape_sets'])}, config dynamic_input; the inputs and outputs above "
                     "are the base set's):")
        for e in s["shape_sets"]:
            how = "built and calibrated here" if e["base"] else \
                f"{e['patched_constants']} constants, {e['patched_attributes']} attributes differ"
            if e["clipped"]:
                how += (f"; {len(e['clipped'])} tensor(s) reach past their quantized range, worst "
                        f"{e['clipped'][0]['tensor']} x{e['clipped'][0]['factor']:g}")
            lines.append(f"  {' + '.join(map(_fmt_list, e['shapes']))}: deployed "
                         f"{' + '.join(map(_fmt_list, e['inputs']))} -> {' + '.join(map(_fmt_list, e['outputs']))}"
                         f" ({how})")
    lines.append("build options:")
    lines += _wrap_options(s["build"], "  ")
    q = s["quantization"]
    if q is None:
        lines.append("quantization:    none (float model)")
    else:
        lines.append(f"quantization:    dtype {q['dtype']}, algorithm {q['algorithm']}, method {q['method']}, "
                     f"weight rounding {q['weight_rounding']}")
        ranges = q["ranges"]
        decided = ([f"range choice kept {ranges['chosen']}"] if ranges.get("chosen") else []) + \
            ([f"ranges into a Log / square root cut by {ranges['log_cut_decades']:g} decades"]
             if ranges.get("log_cut_decades") else [])
        if ranges.get("host_sigmoids"):
            names = ranges["host_sigmoids"]
            decided.append(f"{_count(len(names), 'output Sigmoid')} on the host CPU in float from int8 logits: "
                           f"{', '.join(names[:4])}{' ...' if len(names) > 4 else ''}")
        if ranges.get("host_branch"):
            branch = ranges["host_branch"]
            decided.append(f"{_count(branch['layers'], 'layer')} computed from {', '.join(branch['inputs'])} on the "
                           "host CPU in float before the NPU (a conditioning branch)")
        if q["pre_activation_points"] == "tflite":
            decided.append("every conv before an activation TFLite cannot fuse into it requantized, as TFLite int8 "
                           "computes it (pre_activation_points='tflite')")
        if decided:
            lines.append(f"                 {'; '.join(decided)}")
        lines.append(f"                 {_count(q['quantized_tensors'], 'quantized tensor')}: "
                     f"{_count(q['activations'], 'activation')}, {_count(q['weights'], 'weight')} "
                     f"({q['per_channel_tensors']} per-channel), {_count(q['biases'], 'bias')}")
    src = s["source"]
    if src:
        digest = src.get("sha256")
        lines.append(f"source:          {src.get('framework', '?')} {src.get('file', '?')}"
                     + (f" (sha256 {digest[:16]}...)" if isinstance(digest, str) and digest else ""))
        # what the load changed: an input fixed to a constant, a branch kept, an opset stepped down
        for note in src.get("notes") or []:
            note = str(note)
            lines.append(f"                 {note if len(note) <= 100 else note[:97] + '...'}")
    else:
        lines.append("source:          unknown")
    lines.append(f"payload:         ONNX model, {format_bytes(s['payload_bytes'])}, sha256 "
                 f"{s['payload_sha256'][:16]}...")
    return "\n".join(lines)
