"""The per-layer table: one row per compute node of the built graph, its precision, and (when the analysis side
provides it) its accuracy against the float reference. Rows are keyed by node name, the name hybrid toggles send."""

from __future__ import annotations

import importlib.util
from typing import List, Optional, Sequence, Tuple

import numpy as np

_QDQ = {"QuantizeLinear", "DequantizeLinear"}
_SKIP = _QDQ | {"Constant", "Identity"}


def layer_rows(model_bytes: bytes, quant_meta: Optional[dict]) -> List[dict]:
    """Compute nodes in graph order. A node fed through DequantizeLinear runs quantized; the others run float."""
    import onnx

    model = onnx.load_from_string(model_bytes)
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name for i in model.graph.initializer}
    dtype = (quant_meta or {}).get("dtype") if quant_meta else None
    rows = []
    for i, node in enumerate(model.graph.node):
        if node.op_type in _SKIP:
            continue
        fed = [t for t in node.input if t and t not in inits]
        quantized = any(t in producer and producer[t].op_type == "DequantizeLinear" for t in fed)
        rows.append({"index": i, "name": node.name or f"{node.op_type}_{i}", "op_type": node.op_type,
                     "outputs": list(node.output), "precision": (dtype or "quantized") if quantized else "float",
                     "cosine": None, "euclidean": None})
    return rows


def accuracy_provider() -> Tuple[Optional[object], str]:
    """(function, '') when openrknn.analysis.accuracy offers layer_accuracy(package, inputs), else (None, why)."""
    if importlib.util.find_spec("openrknn.analysis.accuracy") is None:
        return None, "per-layer accuracy (cosine vs the float model) is not in this openrknn yet"
    from ..analysis import accuracy

    fn = getattr(accuracy, "layer_accuracy", None)
    if fn is None:
        return None, "openrknn.analysis.accuracy has no layer_accuracy(package, inputs) yet"
    return fn, ""


def merge_accuracy(rows: List[dict], measured: Sequence[dict]) -> int:
    """Fill cosine/euclidean into rows by layer name; returns how many rows got a value."""
    by_name = {m.get("name"): m for m in measured}
    hits = 0
    for row in rows:
        m = by_name.get(row["name"])
        if m is None:
            continue
        for key in ("cosine", "euclidean"):
            v = m.get(key)
            row[key] = None if v is None or not np.isfinite(v) else float(v)
        hits += 1
    return hits
