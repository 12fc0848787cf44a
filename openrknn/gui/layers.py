"""The per-layer table: one row per layer of the user's model with its stored precision, and its accuracy against
the float reference (the package's accuracy analysis) once measured.

layer_rows lists the compute nodes of the built graph; nodes that are not a layer of the user's model (range split's
parts and their concat, the pre-processing) carry `group`, the user's layer they belong to (analysis.layer_names,
the one mapping every per-layer view uses), and fold_parts folds them into that layer's row (its `parts`, expandable
on the page). Rows are keyed by node name (what keep-float marks send) and carry the layer's logical output tensor
name (what accuracy rows are keyed by; a split layer's parts match the row that puts them back together)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..analysis.graph_info import node_names
from ..analysis.layer_names import layer_names
from ..quant.hybrid import layer_map
from ..quant.plan import WEIGHTED

_QDQ = {"QuantizeLinear", "DequantizeLinear"}
_SKIP = _QDQ | {"Constant", "Identity"}
_FUSE_DEPTH = 3  # conv -> bn -> act chains that share one quantization point


def layer_rows(model_bytes: bytes, quant_meta: Optional[dict], float_model_bytes: Optional[bytes] = None
               ) -> List[dict]:
    """Compute nodes in graph order. In a QDQ graph a node's output is stored at the precision of the quantization
    point right after it (Q -> DQ keeps the float name); a node whose consumers all reach one point before the next
    weighted layer (activations, layout ops, a concat) is fused into it; a node with neither runs in float (a
    layer kept in float, or one the quantizer left alone). Nodes that are not a layer of the user's model get `group`,
    the layer they are part of (the float graph's names, when given)."""
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
        # a point past the next weighted layer is that layer's own: a float (kept) layer is not fused into it
        if not after or depth >= _FUSE_DEPTH or any(c.op_type in WEIGHTED for c in after):
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
    names = layer_names(model, onnx.load_from_string(float_model_bytes) if float_model_bytes else None)
    for i, (node, name) in enumerate(zip(nodes, node_names(model))):
        if node.op_type in _SKIP:
            continue
        dtype, fused_into = stored(node) if quantized_graph else (None, None)
        if dtype:
            precision = dtype
        else:
            precision = "float16" if quantized_graph else "float"
        rows.append({"index": i, "name": name, "op_type": node.op_type,
                     "tensor": logical(node.output[0]) if node.output else "", "precision": precision,
                     "quantized": bool(dtype), "fused_into": fused_into, "cosine": None, "cosine_single": None,
                     "euclidean": None, "group": names.of(name) if names.of(name) != name else None})
    return rows


def keepable_layers(float_model_bytes: Optional[bytes]) -> set:
    """Float-graph layers that can be kept in float: those the quantizer has a point or a weight for (the check a
    keep-float build makes)."""
    if not float_model_bytes:
        return set()
    import onnx

    return set(layer_map(onnx.load_from_string(float_model_bytes)))


def fold_parts(rows: Sequence[dict], keepable: set, float_ops: Optional[Dict[str, str]] = None) -> List[dict]:
    """One row per layer of the user's model: rows sharing a `group` become that layer's row, with the parts
    listed under `parts`; its precision is the parts' ('mixed' when they differ), its accuracy the measured part's
    (or, for a layer fused into the next, that layer's). Every row says whether it can be kept in float."""
    order: List[str] = []
    members: Dict[str, List[dict]] = {}
    for r in rows:
        key = r.get("group") or r["name"]
        if key not in members:
            order.append(key)
            members[key] = []
        members[key].append(r)
    group_of = {r["name"]: r.get("group") or r["name"] for r in rows}
    out: List[dict] = []
    for key in order:
        parts = members[key]
        if len(parts) == 1 and not parts[0].get("group"):
            row = dict(parts[0], parts=[])
            row["fused_into"] = group_of.get(row["fused_into"], row["fused_into"])
        else:
            measured = next((p for p in parts if p["cosine"] is not None), None)
            own = next((p for p in parts if p["name"] == key), parts[0])
            precisions = {p["precision"] for p in parts}
            fused = {group_of.get(p["fused_into"], p["fused_into"]) for p in parts}
            row = {"index": parts[0]["index"], "name": key, "op_type": (float_ops or {}).get(key, own["op_type"]),
                   "tensor": (measured or own)["tensor"],
                   "precision": precisions.pop() if len(precisions) == 1 else "mixed",
                   "quantized": any(p["quantized"] for p in parts),
                   "fused_into": fused.pop() if len(fused) == 1 and None not in fused else None,
                   "cosine": None, "cosine_single": None, "euclidean": None, "group": None,
                   "parts": [{k: p[k] for k in ("name", "op_type", "precision", "quantized", "fused_into")}
                             for p in parts]}
            if measured is not None:
                row.update({k: measured[k] for k in ("cosine", "cosine_single", "euclidean")})
        row["keepable"] = key in keepable
        out.append(row)
    by_name = {r["name"]: r for r in out}
    for row in out:  # a layer fused into the next shows that layer's accuracy, as merge_accuracy does for nodes
        target = by_name.get(row["fused_into"])
        if row["cosine"] is None and target is not None and target["cosine"] is not None:
            row.update({k: target[k] for k in ("cosine", "cosine_single", "euclidean")})
    return out


def accuracy_summary(rows: Sequence[dict], threshold: float) -> dict:
    """How many layers fall below the threshold end to end and on their own, and the worst of each."""
    def below(key: str) -> List[dict]:
        return sorted((r for r in rows if r.get(key) is not None and r[key] < threshold), key=lambda r: r[key])

    def worst(key: str) -> Optional[dict]:
        scored = [r for r in rows if r.get(key) is not None]
        best = min(scored, key=lambda r: r[key]) if scored else None
        return {"name": best["name"], "cosine": best[key]} if best else None

    return {"threshold": threshold, "below_end_to_end": len(below("cosine")),
            "below_alone": len(below("cosine_single")), "worst_end_to_end": worst("cosine"),
            "worst_alone": worst("cosine_single")}


def measure_accuracy(package, inputs: Sequence[np.ndarray], output_dir: Path) -> List[dict]:
    """Run the analysis on one sample; returns its per-layer rows ({name, op, entire_cos, single_cos, ...})."""
    from ..analysis.package_reports import accuracy_analysis

    report = accuracy_analysis(package, list(inputs), str(output_dir))
    return list((report or {}).get("layers") or [])


def merge_accuracy(rows: List[dict], measured: Sequence[dict]) -> int:
    """Fill cosine (end to end), cosine_single (the layer alone) and euclidean into rows by logical tensor name (a
    part of a split tensor by the row that puts the parts together); a fused node shows the values of the point it
    is fused into. Returns how many rows got values."""
    by_tensor = {m.get("name"): m for m in measured}
    by_tensor.update({p: m for m in measured for p in m.get("parts") or [] if p not in by_tensor})
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
