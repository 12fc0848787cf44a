"""The user's layer names for every node of a built graph: one mapping that every per-layer view (accuracy, check,
perf tables, the report, the GUI) folds its rows through.

A built graph holds nodes the user's model does not have: range split's parts ('Conv_44__split0'), the concat that
joins them, remaps, the quantizer's Q/DQ pairs, the board's pre-processing. The quantizer records what its rewrites
made in the QDQ graph (quant.qdq.node_origins: {node: the float node it was made from}); those records decide.
The float graph (the package's float reference) names the user's layers; a node it has keeps its name. Without a
record (files written before the quantizer kept one) a node is matched to the float node producing the same tensor,
then by the rewrite's naming. Q/DQ nodes belong to the layer whose tensor or weight they quantize; the pre-processing
nodes of an input fold into one row, '<input> (pre-processing)'.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import onnx

from ..graph.preprocess import PREFIX as PRE_PREFIX
from ..quant.qdq import node_origins
from .graph_info import node_names

QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}
# the suffixes range split gives what it makes (quant/algorithms/split.py): for files without the origin record
_PART_MARKS = ("__split",)
_JOIN_MARKS = ("_split_concat", "_split_order", "_remap_mul", "_remap_add")


def preprocess_layer(input_name: str) -> str:
    """The row the pre-processing nodes of one input fold into."""
    return f"{input_name} (pre-processing)"


@dataclass
class LayerNames:
    """layer: built node name (graph_info.node_names) -> the user's layer; parts: user layer -> its built compute
    nodes (Q/DQ left out) in graph order; op_types: user layer -> its op type in the user's model; tensor_layer: a
    built tensor -> the user's layer that produces it."""

    layer: Dict[str, str] = field(default_factory=dict)
    parts: Dict[str, List[str]] = field(default_factory=dict)
    op_types: Dict[str, str] = field(default_factory=dict)
    tensor_layer: Dict[str, str] = field(default_factory=dict)

    def of(self, node: str) -> str:
        """The user's layer of a built node (a name it does not know stays as it is)."""
        return self.layer.get(node, node)

    def folded(self, layer: str) -> bool:
        """Whether the built graph runs this layer as something else than one node of its own name."""
        parts = self.parts.get(layer, [])
        return len(parts) > 1 or (len(parts) == 1 and parts[0] != layer)

    @property
    def order(self) -> List[str]:
        return list(self.parts)


def layer_names(built: onnx.ModelProto, float_model: Optional[onnx.ModelProto] = None) -> LayerNames:
    """The mapping for ``built`` (what the package runs). ``float_model``: the package's float reference (None for
    a float package: the built graph is then the user's graph, but for the pre-processing)."""
    reference = float_model if float_model is not None else built
    f_names = node_names(reference)
    f_known = set(f_names)
    f_op = {name: n.op_type for name, n in zip(f_names, reference.graph.node)}
    f_producer = {t: name for name, n in zip(f_names, reference.graph.node) for t in n.output if t}
    inputs = [i.name for i in built.graph.input]
    origins = node_origins(built)

    def user(name: str) -> Optional[str]:
        for inp in inputs:
            if name.startswith(f"{PRE_PREFIX}/{inp}/"):
                return preprocess_layer(inp)
        return name if name in f_known else None

    def legacy(name: str, node: onnx.NodeProto) -> Optional[str]:
        """Files without the origin record: the float node producing the same tensor, then the rewrite's names."""
        for t in node.output:
            base = t[:-3] if t.endswith("__f") else t  # the Q/DQ pair's float side
            if base in f_producer:
                return f_producer[base]
        cut = [name.index(m) for m in _PART_MARKS if m in name]
        if cut and user(name[:min(cut)]):
            return user(name[:min(cut)])
        for mark in _JOIN_MARKS:
            if mark in name:
                tensor = name[:name.index(mark)]
                tensor = tensor[:tensor.index("__split")] if "__split" in tensor else tensor
                return f_producer.get(tensor)
        return None

    b_names = node_names(built)
    out = LayerNames()
    qdq = []
    for name, node in zip(b_names, built.graph.node):
        if node.op_type in QDQ_OPS:
            qdq.append((name, node))
            continue
        origin = origins.get(name)
        layer = user(name) or (user(origin) or origin if origin else None) or legacy(name, node) or name
        out.layer[name] = layer
        out.parts.setdefault(layer, []).append(name)
        out.op_types.setdefault(layer, "Preprocess" if layer.endswith(" (pre-processing)") and layer not in f_op
                                else f_op.get(layer, node.op_type))
        for t in node.output:
            out.tensor_layer[t] = layer
    readers: Dict[str, List[onnx.NodeProto]] = {}
    for node in built.graph.node:
        for t in node.input:
            readers.setdefault(t, []).append(node)
    by_node = {id(node): name for name, node in zip(b_names, built.graph.node)}

    def read_by(t: str, depth: int = 0) -> Optional[str]:
        """The layer of the first compute node reading t (through Q/DQ pairs)."""
        for r in readers.get(t, []):
            if r.op_type not in QDQ_OPS:
                return out.layer[by_node[id(r)]]
            found = read_by(r.output[0], depth + 1) if depth < 4 and r.output else None
            if found:
                return found
        return None

    # a Q/DQ pair quantizing an activation belongs to the layer producing it (a graph input's, to its reader); a
    # weight's or bias's DequantizeLinear to the layer reading it. Graph order: a DQ finds its Q's owner.
    for name, node in qdq:
        owner = out.tensor_layer.get(node.input[0]) if node.input else None
        owner = owner or (read_by(node.output[0]) if node.output else None) or name
        out.layer[name] = owner
        for t in node.output:
            out.tensor_layer.setdefault(t, owner)
    return out


def package_layer_names(pkg) -> LayerNames:
    """The mapping for a built or loaded package (its float reference names the layers)."""
    built = onnx.load_from_string(pkg.model_bytes)
    ref = onnx.load_from_string(pkg.float_model_bytes) if pkg.float_model_bytes else None
    return layer_names(built, ref)
