"""Edit a serialized ONNX model at the protobuf wire level: read its nodes and initializers, drop or replace nodes,
add initializers. The board has numpy + onnxruntime only (no onnx package), and the simulator's speed rewrites
(runtime/speedups.py) run when a model is loaded; every field this module does not touch is copied byte for byte.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from ..onnx_wire import WireError, _varint

# field numbers from onnx.proto
_MODEL_GRAPH = 7
_GRAPH_NODE, _GRAPH_INITIALIZER = 1, 5
_NODE_INPUT, _NODE_OUTPUT, _NODE_NAME, _NODE_OP_TYPE, _NODE_ATTRIBUTE, _NODE_DOMAIN = 1, 2, 3, 4, 5, 7
_ATTR_NAME, _ATTR_I, _ATTR_T, _ATTR_INTS, _ATTR_TYPE, _ATTR_INT = 1, 3, 5, 8, 20, 2
_T_DIMS, _T_DATA_TYPE, _T_FLOAT, _T_INT32, _T_INT64, _T_NAME, _T_RAW = 1, 2, 4, 5, 7, 8, 9
_T_DOUBLE, _T_LOCATION = 10, 14
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
# TensorProto.DataType -> numpy dtype (the types a quantized graph stores)
DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32, 7: np.int64,
          10: np.float16, 11: np.float64}
_CODES = {np.dtype(v): k for k, v in DTYPES.items()}


def _spans(data: memoryview, start: int, end: int) -> Iterator[Tuple[int, int, int, int, int]]:
    """(field number, wire type, key start, payload start or varint value, field end) for each field."""
    pos = start
    while pos < end:
        key_at = pos
        key, pos = _varint(data, pos, end)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _varint(data, pos, end)
            yield number, wire, key_at, value, pos
        elif wire in (_I64, _I32):
            size = 8 if wire == _I64 else 4
            if pos + size > end:
                raise WireError("a fixed-size field runs past the end of its message")
            yield number, wire, key_at, pos, pos + size
            pos += size
        elif wire == _LEN:
            size, pos = _varint(data, pos, end)
            if size > end - pos:
                raise WireError("a field runs past the end of its message")
            yield number, wire, key_at, pos, pos + size
            pos += size
        else:
            raise WireError(f"wire type {wire} (groups are not used by ONNX)")


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1  # negative int64 values are ten-byte varints
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(number: int, wire: int) -> bytes:
    return _encode_varint(number << 3 | wire)


def _len_field(number: int, payload: bytes) -> bytes:
    return _key(number, _LEN) + _encode_varint(len(payload)) + payload


def _str(data: memoryview, a: int, b: int) -> str:
    return bytes(data[a:b]).decode("utf-8")


@dataclass
class Node:
    index: int
    op_type: str
    domain: str
    name: str
    inputs: List[str]
    outputs: List[str]
    raw: bytes                                      # the serialized NodeProto
    int_attrs: Dict[str, int] = field(default_factory=dict)
    ints_attrs: Dict[str, List[int]] = field(default_factory=dict)  # a Transpose's perm
    tensor_attrs: Dict[str, bytes] = field(default_factory=dict)  # serialized TensorProto (a Constant's value)


def _parse_node(index: int, raw: bytes) -> Node:
    data = memoryview(raw)
    node = Node(index, "", "", "", [], [], raw)
    for number, wire, _, a, b in _spans(data, 0, len(raw)):
        if wire != _LEN:
            continue
        if number == _NODE_INPUT:
            node.inputs.append(_str(data, a, b))
        elif number == _NODE_OUTPUT:
            node.outputs.append(_str(data, a, b))
        elif number == _NODE_NAME:
            node.name = _str(data, a, b)
        elif number == _NODE_OP_TYPE:
            node.op_type = _str(data, a, b)
        elif number == _NODE_DOMAIN:
            node.domain = _str(data, a, b)
        elif number == _NODE_ATTRIBUTE:
            name, value, kind, tensor, ints = "", None, None, None, []
            for an, aw, _, aa, ab in _spans(data, a, b):
                if an == _ATTR_NAME and aw == _LEN:
                    name = _str(data, aa, ab)
                elif an == _ATTR_T and aw == _LEN:
                    tensor = bytes(data[aa:ab])
                elif an == _ATTR_I and aw == _VARINT:
                    value = aa - (1 << 64) if aa >= 1 << 63 else aa
                elif an == _ATTR_INTS:
                    ints += [aa] if aw == _VARINT else _packed_varints(data, aa, ab)
                elif an == _ATTR_TYPE and aw == _VARINT:
                    kind = aa
            if kind == _ATTR_INT and value is not None:
                node.int_attrs[name] = value
            if ints:
                node.ints_attrs[name] = [v - (1 << 64) if v >= 1 << 63 else v for v in ints]
            if tensor is not None:
                node.tensor_attrs[name] = tensor
    return node


def encode_node(node: Node, inputs: Optional[List[str]] = None, outputs: Optional[List[str]] = None,
                int_attrs: Optional[Dict[str, int]] = None) -> bytes:
    """node's NodeProto with its inputs, outputs and/or some integer attributes replaced (the rest as it was)."""
    data = memoryview(node.raw)
    out = bytearray()
    pending = {_NODE_INPUT: list(inputs) if inputs is not None else None,
               _NODE_OUTPUT: list(outputs) if outputs is not None else None}
    for number, _wire, key_at, a, b in _spans(data, 0, len(node.raw)):
        if pending.get(number) is not None:
            if pending[number]:
                out += _len_field(number, pending[number].pop(0).encode("utf-8"))
            continue
        if number == _NODE_ATTRIBUTE and int_attrs:
            name = next((_str(data, aa, ab) for an, aw, _, aa, ab in _spans(data, a, b)
                         if an == _ATTR_NAME and aw == _LEN), "")
            if name in int_attrs:
                attr = (_len_field(_ATTR_NAME, name.encode("utf-8")) + _key(_ATTR_I, _VARINT)
                        + _encode_varint(int(int_attrs[name])) + _key(_ATTR_TYPE, _VARINT) + _encode_varint(_ATTR_INT))
                out += _len_field(_NODE_ATTRIBUTE, attr)
                continue
        out += data[key_at:b]
    if any(pending.values()):
        raise ValueError("encode_node: more inputs or outputs given than the node has")
    return bytes(out)


def encode_new_node(op_type: str, inputs: List[str], outputs: List[str], name: str) -> bytes:
    """A NodeProto of the default domain without attributes (Slice, whose arguments are inputs since opset 10)."""
    out = bytearray()
    for t in inputs:
        out += _len_field(_NODE_INPUT, t.encode("utf-8"))
    for t in outputs:
        out += _len_field(_NODE_OUTPUT, t.encode("utf-8"))
    out += _len_field(_NODE_NAME, name.encode("utf-8"))
    return bytes(out + _len_field(_NODE_OP_TYPE, op_type.encode("utf-8")))


def encode_tensor(name: str, array: np.ndarray) -> bytes:
    """A TensorProto (dims, data type, name, little-endian raw data)."""
    array = np.ascontiguousarray(array)
    code = _CODES.get(array.dtype)
    if code is None:
        raise ValueError(f"encode_tensor: no ONNX type for {array.dtype}")
    out = bytearray()
    for d in array.shape:
        out += _key(_T_DIMS, _VARINT) + _encode_varint(int(d))
    out += _key(_T_DATA_TYPE, _VARINT) + _encode_varint(code)
    out += _len_field(_T_NAME, name.encode("utf-8"))
    out += _len_field(_T_RAW, array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
    return bytes(out)


def _parse_tensor(raw: bytes) -> Tuple[str, Optional[np.ndarray]]:
    """(name, array) of a TensorProto; array None for types or storage this reader does not handle."""
    data = memoryview(raw)
    name, dims, code, raw_data, ints, floats = "", [], 0, None, [], []
    for number, wire, _, a, b in _spans(data, 0, len(raw)):
        if number == _T_NAME and wire == _LEN:
            name = _str(data, a, b)
        elif number == _T_DIMS:
            dims += [a] if wire == _VARINT else _packed_varints(data, a, b)
        elif number == _T_DATA_TYPE and wire == _VARINT:
            code = a
        elif number == _T_RAW and wire == _LEN:
            raw_data = bytes(data[a:b])
        elif number in (_T_INT32, _T_INT64):
            vals = [a] if wire == _VARINT else _packed_varints(data, a, b)
            ints += [v - (1 << 64) if v >= 1 << 63 else v for v in vals]
        elif number == _T_FLOAT:
            floats += [struct.unpack("<f", data[a:b])[0]] if wire == _I32 else \
                list(struct.unpack(f"<{(b - a) // 4}f", data[a:b]))
        elif number in (_T_LOCATION, _T_DOUBLE):
            return name, None  # external or double data: not needed by the rewrites
    dtype = DTYPES.get(code)
    if dtype is None:
        return name, None
    if raw_data is not None:
        arr = np.frombuffer(raw_data, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype)
    elif floats:
        arr = np.asarray(floats, dtype)
    else:
        arr = np.asarray(ints, np.int64).astype(dtype)
    count = int(np.prod(dims)) if dims else 1
    if arr.size != count:
        return name, None
    return name, arr.reshape(dims)


def _packed_varints(data: memoryview, a: int, b: int) -> List[int]:
    out, pos = [], a
    while pos < b:
        v, pos = _varint(data, pos, b)
        out.append(v)
    return out


class WireModel:
    """A serialized ModelProto whose graph's nodes and initializers can be read, dropped, replaced and added."""

    def __init__(self, model_bytes: bytes):
        self.data = memoryview(model_bytes)
        graph = [(a, b) for number, wire, _, a, b in _spans(self.data, 0, len(self.data))
                 if number == _MODEL_GRAPH and wire == _LEN]
        if len(graph) != 1:
            raise WireError("the model does not hold exactly one graph")
        self._graph = graph[0]
        self.nodes: List[Node] = []
        self._init_raw: Dict[str, bytes] = {}
        for number, wire, _, a, b in _spans(self.data, *self._graph):
            if number == _GRAPH_NODE and wire == _LEN:
                self.nodes.append(_parse_node(len(self.nodes), bytes(self.data[a:b])))
            elif number == _GRAPH_INITIALIZER and wire == _LEN:
                raw = bytes(self.data[a:b])
                name = next((_str(memoryview(raw), na, nb) for n, w, _, na, nb in _spans(memoryview(raw), 0, len(raw))
                             if n == _T_NAME and w == _LEN), "")
                self._init_raw[name] = raw
        self._arrays: Dict[str, Optional[np.ndarray]] = {}
        self.graph_outputs: set = set()  # filled by callers that need them (onnx_wire.graph_names)
        self.replaced: Dict[int, bytes] = {}   # node index -> new NodeProto bytes (b"" = dropped)
        self.after: Dict[int, List[bytes]] = {}  # node index -> NodeProtos placed right after it
        self.new_inits: List[bytes] = []

    def is_initializer(self, name: str) -> bool:
        return name in self._init_raw

    def array(self, name: str) -> Optional[np.ndarray]:
        """An initializer's or a Constant node's values (None if it is neither, or is stored in a form the reader
        does not handle)."""
        if name not in self._arrays:
            raw = self._init_raw.get(name) or next(
                (n.tensor_attrs.get("value") for n in self.nodes
                 if n.op_type == "Constant" and n.outputs == [name] and n.domain in ("", "ai.onnx")), None)
            self._arrays[name] = None if not raw else _parse_tensor(raw)[1]
        return self._arrays[name]

    def fresh_name(self, base: str) -> str:
        taken = set(self._init_raw) | {o for n in self.nodes for o in n.outputs}
        name, k = base, 0
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        self._init_raw[name] = b""  # reserved
        return name

    def add_initializer(self, name: str, array: np.ndarray) -> None:
        self.new_inits.append(encode_tensor(name, array))
        self._arrays[name] = array

    def insert_after(self, index: int, node_bytes: bytes) -> None:
        self.after.setdefault(index, []).append(node_bytes)

    @property
    def changed(self) -> bool:
        return bool(self.replaced or self.after or self.new_inits)

    def serialize(self) -> bytes:
        if not self.changed:
            return bytes(self.data)
        g_start, g_end = self._graph
        graph = bytearray()
        k = 0
        for number, wire, key_at, _a, b in _spans(self.data, g_start, g_end):
            if number == _GRAPH_NODE and wire == _LEN:
                new = self.replaced.get(k)
                graph += self.data[key_at:b] if new is None else _len_field(_GRAPH_NODE, new) if new else b""
                for extra in self.after.get(k, ()):
                    graph += _len_field(_GRAPH_NODE, extra)
                k += 1
                continue
            graph += self.data[key_at:b]
        for raw in self.new_inits:
            graph += _len_field(_GRAPH_INITIALIZER, raw)
        out = bytearray()
        for number, _wire, key_at, _a, b in _spans(self.data, 0, len(self.data)):
            out += _len_field(_MODEL_GRAPH, bytes(graph)) if number == _MODEL_GRAPH else self.data[key_at:b]
        return bytes(out)


# ---- a model at other input sizes (config dynamic_input: runtime/shape_sets.py) -----------------------------------
_GRAPH_INPUT, _GRAPH_OUTPUT, _GRAPH_VALUE_INFO = 11, 12, 13
_ATTR_F, _ATTR_FLOATS = 2, 7
_ATTR_TYPES = {"float": 1, "int": 2, "tensor": 4, "floats": 6, "ints": 7}


def _field_str(raw: bytes, number: int) -> str:
    data = memoryview(raw)
    return next((_str(data, a, b) for n, w, _, a, b in _spans(data, 0, len(raw)) if n == number and w == _LEN), "")


def _value_info_with_dims(raw: bytes, dims: List[int]) -> bytes:
    """A tensor ValueInfoProto with its shape replaced by ``dims`` (its name and element type kept)."""
    data = memoryview(raw)
    elem = 0
    for n, w, _, a, b in _spans(data, 0, len(raw)):
        if n == 2 and w == _LEN:  # type
            for tn, tw, _, ta, tb in _spans(data, a, b):
                if tn == 1 and tw == _LEN:  # tensor_type
                    elem = next((ea for en, ew, _, ea, _eb in _spans(data, ta, tb) if en == 1 and ew == _VARINT), 0)
    shape = b"".join(_len_field(1, _key(1, _VARINT) + _encode_varint(int(d))) for d in dims)
    tensor = _key(1, _VARINT) + _encode_varint(elem) + _len_field(2, shape)
    return _len_field(1, _field_str(raw, 1).encode("utf-8")) + _len_field(2, _len_field(1, tensor))


def _attribute(name: str, value, tensor_name: str) -> bytes:
    out = _len_field(_ATTR_NAME, name.encode("utf-8"))
    if isinstance(value, np.ndarray):
        return out + _len_field(_ATTR_T, encode_tensor(tensor_name, value)) + \
            _key(_ATTR_TYPE, _VARINT) + _encode_varint(_ATTR_TYPES["tensor"])
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, int) for v in value):
            out += b"".join(_key(_ATTR_INTS, _VARINT) + _encode_varint(int(v)) for v in value)
            return out + _key(_ATTR_TYPE, _VARINT) + _encode_varint(_ATTR_TYPES["ints"])
        out += b"".join(_key(_ATTR_FLOATS, _I32) + struct.pack("<f", float(v)) for v in value)
        return out + _key(_ATTR_TYPE, _VARINT) + _encode_varint(_ATTR_TYPES["floats"])
    if isinstance(value, int):
        return out + _key(_ATTR_I, _VARINT) + _encode_varint(value) + _key(_ATTR_TYPE, _VARINT) + \
            _encode_varint(_ATTR_TYPES["int"])
    return out + _key(_ATTR_F, _I32) + struct.pack("<f", float(value)) + _key(_ATTR_TYPE, _VARINT) + \
        _encode_varint(_ATTR_TYPES["float"])


def _node_with_attributes(raw: bytes, values: Dict[str, object]) -> bytes:
    data = memoryview(raw)
    out = bytearray()
    outputs = []
    for number, wire, key_at, a, b in _spans(data, 0, len(raw)):
        if number == _NODE_OUTPUT and wire == _LEN:
            outputs.append(_str(data, a, b))
        if number == _NODE_ATTRIBUTE and wire == _LEN and _field_str(bytes(data[a:b]), _ATTR_NAME) in values:
            continue
        out += data[key_at:b]
    for name, value in values.items():
        out += _len_field(_NODE_ATTRIBUTE, _attribute(name, value, outputs[0] if outputs else name))
    return bytes(out)


def patch_model(model_bytes: bytes, dims: Dict[str, List[int]], tensors: Dict[str, np.ndarray],
                attributes: Dict[str, Dict[str, object]]) -> bytes:
    """The model with graph inputs / outputs ``dims`` replaced, initializers ``tensors`` replaced and node attributes
    ``attributes`` ({node name: {attribute: int, float, list or array}}) replaced; the graph's value_info dropped
    (shapes of the old sizes). WireError if a name given is not in the graph."""
    data = memoryview(model_bytes)
    spans = [(a, b) for n, w, _, a, b in _spans(data, 0, len(data)) if n == _MODEL_GRAPH and w == _LEN]
    if len(spans) != 1:
        raise WireError("the model does not hold exactly one graph")
    graph, done = bytearray(), set()
    for number, wire, key_at, a, b in _spans(data, *spans[0]):
        raw = bytes(data[a:b]) if wire == _LEN else b""
        if number == _GRAPH_VALUE_INFO:
            continue
        if number in (_GRAPH_INPUT, _GRAPH_OUTPUT) and wire == _LEN and _field_str(raw, 1) in dims:
            graph += _len_field(number, _value_info_with_dims(raw, dims[_field_str(raw, 1)]))
            continue
        if number == _GRAPH_INITIALIZER and wire == _LEN and _field_str(raw, _T_NAME) in tensors:
            name = _field_str(raw, _T_NAME)
            graph += _len_field(number, encode_tensor(name, tensors[name]))
            done.add(name)
            continue
        if number == _GRAPH_NODE and wire == _LEN and attributes and _field_str(raw, _NODE_NAME) in attributes:
            name = _field_str(raw, _NODE_NAME)
            graph += _len_field(number, _node_with_attributes(raw, attributes[name]))
            done.add(name)
            continue
        graph += data[key_at:b]
    missing = (set(tensors) | set(attributes)) - done
    if missing:
        raise WireError(f"the graph has no initializer or node named {sorted(missing)[:4]}")
    out = bytearray()
    for number, _wire, key_at, _a, b in _spans(data, 0, len(data)):
        out += _len_field(_MODEL_GRAPH, bytes(graph)) if number == _MODEL_GRAPH else data[key_at:b]
    return bytes(out)
