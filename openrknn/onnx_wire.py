"""A minimal reader of the protobuf wire format, enough to tell whether a `.rknn` payload is an ONNX ModelProto with a
graph, and to list its graph's input and output names, without the onnx package (the board has only onnxruntime).

It checks the framing of the model's and the graph's fields (tags, varints, lengths inside their message) and that the
names are UTF-8; the full check of a graph is onnxruntime's, when a runtime opens the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, List, Tuple

# field numbers from onnx.proto
MODEL_IR_VERSION, MODEL_GRAPH = 1, 7
GRAPH_INPUT, GRAPH_OUTPUT = 11, 12
VALUE_INFO_NAME = 1
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message (or not the ONNX fields expected)."""


def _varint(data: memoryview, pos: int, end: int) -> Tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end:
            raise WireError("a varint runs past the end of its message")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift >= 70:
            raise WireError("a varint is longer than 10 bytes")


def fields(data: memoryview, start: int = 0, end: int = -1) -> Iterator[Tuple[int, int, int, int]]:
    """(field number, wire type, value or payload start, payload end) for each field of one message."""
    end = len(data) if end < 0 else end
    pos = start
    while pos < end:
        key, pos = _varint(data, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0")
        if wire == _VARINT:
            value, pos = _varint(data, pos, end)
            yield number, wire, value, pos
        elif wire in (_I64, _I32):
            size = 8 if wire == _I64 else 4
            if pos + size > end:
                raise WireError("a fixed-size field runs past the end of its message")
            yield number, wire, pos, pos + size
            pos += size
        elif wire == _LEN:
            size, pos = _varint(data, pos, end)
            if size > end - pos:
                raise WireError(f"a field of {size} bytes runs past the end of its message")
            yield number, wire, pos, pos + size
            pos += size
        else:
            raise WireError(f"wire type {wire} (groups are not used by ONNX)")


@dataclass
class GraphNames:
    ir_version: int = 0
    inputs: List[str] = field(default_factory=list)
    outputs: List[str] = field(default_factory=list)


def _name(data: memoryview, start: int, end: int) -> str:
    name = ""
    for number, wire, a, b in fields(data, start, end):
        if number == VALUE_INFO_NAME:
            if wire != _LEN:
                raise WireError("a value's name is not a string")
            try:
                name = bytes(data[a:b]).decode("utf-8")
            except UnicodeDecodeError:
                raise WireError("a graph input or output name is not UTF-8") from None
    return name


def graph_names(payload: bytes) -> GraphNames:
    """The IR version and the graph's input/output names of a serialized ModelProto; WireError if it is not one."""
    data = memoryview(payload).cast("B")
    out, graphs = GraphNames(), 0
    for number, wire, a, b in fields(data):
        if number == MODEL_IR_VERSION and wire == _VARINT:
            out.ir_version = a
        elif number == MODEL_GRAPH:
            if wire != _LEN:
                raise WireError("the model's graph field is not a message")
            graphs += 1
            for g_number, g_wire, ga, gb in fields(data, a, b):
                if g_number in (GRAPH_INPUT, GRAPH_OUTPUT):
                    if g_wire != _LEN:
                        raise WireError("a graph input/output is not a message")
                    (out.inputs if g_number == GRAPH_INPUT else out.outputs).append(_name(data, ga, gb))
    if not graphs:
        raise WireError("there is no graph (ModelProto field 7)")
    if out.ir_version < 1:
        raise WireError(f"ir_version {out.ir_version} is not an ONNX IR version")
    return out
