"""The per-layer table: one row per compute node of the built graph with its stored precision, and its accuracy
against the float reference (analysis_bridge.accuracy_analysis) once measured. Rows are keyed by node name (what
hybrid toggles send) and carry the layer's logical output tensor name (what accuracy rows are keyed by)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

_QDQ = {"QuantizeLinear", "DequantizeLinear"}
_SKIP = _QDQ | {"Constant", "Identity"}
_FUSE_DEPTH = 3  # conv -> bn -> act chains that share one quantization point


def layer_rows(model_bytes: bytes, quant_meta: Optional[dict]) -> List[dict]:
    """Compute nodes in graph order. In a QDQ graph a node's output is stored at the precision of the quantization
    point right after it (Q -> DQ keeps the float name); a node whose single consumer chain reaches that point is
    fused into it; a node with neither runs in float (a hybrid layer, or one the quantizer left alone)."""
    import onnx

    model = onnx.load_from_string(model_bytes)
    nodes = list(model.graph.node)
    consumers: Dict[str, list] = {}
    for n in nodes:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    tensors = (quant_meta or {}).get("tensors") or {}

    def logical(t: str) -> str:
        for q in consumers.get(t, []):
            if q.op_type == "QuantizeLinear":
                for dq in consumers.get(q.output[0], []):
                    if dq.op_type == "DequantizeLinear":
                        return dq.output[0]
        return t

    def stored(node, depth: int = 0) -> Tuple[Optional[str], Optional[str]]:
        """(dtype of the quantization point this node's output lands in, the node owning that point when it is not
        this node). A node is fused when every consumer path reaches the same point (conv -> sigmoid + mul = SiLU)."""
        if not node.output:
            return None, None
        info = tensors.get(logical(node.output[0]))
        if isinstance(info, dict) and info.get("kind", "activation") == "activation":
            return info.get("dtype"), None
        after = [c for c in consumers.get(node.output[0], []) if c.op_type not in _SKIP]
        if not after or depth >= _FUSE_DEPTH:
            return None, None
        found = set()
        for c in after:
            dtype, owner = stored(c, depth + 1)
            found.add((dtype, owner or c.name) if dtype else None)
        if len(found) == 1 and None not in found:
            return found.pop()
        return None, None

    rows = []
    quantized_graph = bool(quant_meta)
    for i, node in enumerate(nodes):
        if node.op_type in _SKIP:
            continue
        dtype, fused_into = stored(node) if quantized_graph else (None, None)
        if dtype:
            precision = dtype
        else:
            precision = "float16" if quantized_graph else "float"
        rows.append({"index": i, "name": node.name or f"{node.op_type}_{i}", "op_type": node.op_type,
                     "tensor": logical(node.output[0]) if node.output else "", "precision": precision,
                     "quantized": bool(dtype), "fused_into": fused_into, "cosine": None, "cosine_single": None,
                     "euclidean": None})
    return rows


def measure_accuracy(package, inputs: Sequence[np.ndarray], output_dir: Path) -> List[dict]:
    """Run the analysis on one sample; returns its per-layer rows ({name, op, entire_cos, single_cos, ...})."""
    from ..analysis_bridge import accuracy_analysis

    report = accuracy_analysis(package, list(inputs), str(output_dir))
    return list((report or {}).get("layers") or [])


def merge_accuracy(rows: List[dict], measured: Sequence[dict]) -> int:
    """Fill cosine (end to end), cosine_single (the layer alone) and euclidean into rows by logical tensor name;
    a fused node shows the values of the point it is fused into. Returns how many rows got values."""
    by_tensor = {m.get("name"): m for m in measured}
    by_node = {r["name"]: r for r in rows}

    def finite(v) -> Optional[float]:
        return None if v is None or not np.isfinite(v) else float(v)

    hits = 0
    for row in rows:
        m = by_tensor.get(row["tensor"])
        if m is None and row.get("fused_into") in by_node:
            m = by_tensor.get(by_node[row["fused_into"]]["tensor"])
        if m is None:
            continue
        row["cosine"], row["cosine_single"] = finite(m.get("entire_cos")), finite(m.get("single_cos"))
        row["euclidean"] = finite(m.get("entire_euc"))
        hits += 1
    return hits
