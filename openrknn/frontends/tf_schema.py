"""The part of TensorFlow's GraphDef schema (tensorflow/core/framework/*.proto) that frozen inference graphs use,
built at import time with protobuf's descriptor API, so TensorFlow is not needed to read or write a frozen .pb. Field
numbers and types are TensorFlow's (a file format); fields not listed are skipped when parsing."""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_T = descriptor_pb2.FieldDescriptorProto
_S = {"string": _T.TYPE_STRING, "bytes": _T.TYPE_BYTES, "bool": _T.TYPE_BOOL, "float": _T.TYPE_FLOAT,
      "double": _T.TYPE_DOUBLE, "int32": _T.TYPE_INT32, "int64": _T.TYPE_INT64, "uint32": _T.TYPE_UINT32,
      "uint64": _T.TYPE_UINT64}
PACKAGE = "openrknn_tf"

# DataType values (types.proto)
DT = {"DT_INVALID": 0, "DT_FLOAT": 1, "DT_DOUBLE": 2, "DT_INT32": 3, "DT_UINT8": 4, "DT_INT16": 5, "DT_INT8": 6,
      "DT_STRING": 7, "DT_COMPLEX64": 8, "DT_INT64": 9, "DT_BOOL": 10, "DT_QINT8": 11, "DT_QUINT8": 12,
      "DT_QINT32": 13, "DT_BFLOAT16": 14, "DT_QINT16": 15, "DT_QUINT16": 16, "DT_UINT16": 17, "DT_COMPLEX128": 18,
      "DT_HALF": 19, "DT_RESOURCE": 20, "DT_VARIANT": 21, "DT_UINT32": 22, "DT_UINT64": 23}

_MESSAGES = {
    "Dim": [("size", 1, "int64", False), ("name", 2, "string", False)],
    "TensorShapeProto": [("dim", 2, "Dim", True), ("unknown_rank", 3, "bool", False)],
    "TensorProto": [("dtype", 1, "enum:DataType", False), ("tensor_shape", 2, "TensorShapeProto", False),
                    ("version_number", 3, "int32", False), ("tensor_content", 4, "bytes", False),
                    ("float_val", 5, "float", True), ("double_val", 6, "double", True),
                    ("int_val", 7, "int32", True), ("string_val", 8, "bytes", True),
                    ("int64_val", 10, "int64", True), ("bool_val", 11, "bool", True),
                    ("half_val", 13, "int32", True), ("uint32_val", 16, "uint32", True),
                    ("uint64_val", 17, "uint64", True)],
    "ListValue": [("s", 2, "bytes", True), ("i", 3, "int64", True), ("f", 4, "float", True), ("b", 5, "bool", True),
                  ("type", 6, "enum:DataType", True), ("shape", 7, "TensorShapeProto", True),
                  ("tensor", 8, "TensorProto", True)],
    "AttrValue": [("list", 1, "ListValue", False), ("s", 2, "bytes", False), ("i", 3, "int64", False),
                  ("f", 4, "float", False), ("b", 5, "bool", False), ("type", 6, "enum:DataType", False),
                  ("shape", 7, "TensorShapeProto", False), ("tensor", 8, "TensorProto", False),
                  ("placeholder", 9, "string", False)],
    "AttrEntry": [("key", 1, "string", False), ("value", 2, "AttrValue", False)],
    "NodeDef": [("name", 1, "string", False), ("op", 2, "string", False), ("input", 3, "string", True),
                ("device", 4, "string", False), ("attr", 5, "AttrEntry", True)],
    "VersionDef": [("producer", 1, "int32", False), ("min_consumer", 2, "int32", False)],
    "GraphDef": [("node", 1, "NodeDef", True), ("version", 3, "int32", False), ("versions", 4, "VersionDef", False)],
}
_NESTED = {"TensorShapeProto": ["Dim"], "NodeDef": ["AttrEntry"]}


def _build():
    f = descriptor_pb2.FileDescriptorProto(name="openrknn_tf.proto", package=PACKAGE, syntax="proto3")
    e = f.enum_type.add(name="DataType")
    for k, v in DT.items():
        e.value.add(name=k, number=v)
    nested_in = {child: parent for parent, kids in _NESTED.items() for child in kids}

    def full(name: str) -> str:
        return f".{PACKAGE}.{nested_in[name]}.{name}" if name in nested_in else f".{PACKAGE}.{name}"

    protos = {}
    for name in _MESSAGES:
        if name in nested_in:
            continue
        protos[name] = f.message_type.add(name=name)
    for child, parent in nested_in.items():
        protos[child] = protos[parent].nested_type.add(name=child)
    protos["AttrEntry"].options.map_entry = True
    for name, fields in _MESSAGES.items():
        m = protos[name]
        for fname, num, ftype, repeated in fields:
            fd = m.field.add(name=fname, number=num, label=_T.LABEL_REPEATED if repeated else _T.LABEL_OPTIONAL)
            if ftype in _S:
                fd.type = _S[ftype]
            elif ftype.startswith("enum:"):
                fd.type, fd.type_name = _T.TYPE_ENUM, f".{PACKAGE}.{ftype[5:]}"
            else:
                fd.type, fd.type_name = _T.TYPE_MESSAGE, full(ftype)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)

    def cls(name):
        path = f"{PACKAGE}.{nested_in[name]}.{name}" if name in nested_in else f"{PACKAGE}.{name}"
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(path))

    return {name: cls(name) for name in _MESSAGES}


MESSAGES = _build()
GraphDef = MESSAGES["GraphDef"]
NodeDef = MESSAGES["NodeDef"]
AttrValue = MESSAGES["AttrValue"]
TensorProto = MESSAGES["TensorProto"]


def set_attr(a, v) -> None:
    """An AttrValue from a Python value: bool, int, float, str, or a list of ints."""
    if isinstance(v, bool):
        a.b = v
    elif isinstance(v, int):
        a.i = v
    elif isinstance(v, float):
        a.f = v
    elif isinstance(v, str):
        a.s = v.encode()
    elif isinstance(v, (list, tuple)):
        a.list.i.extend(int(x) for x in v)
    else:
        raise TypeError(f"no attribute form for {type(v).__name__}")
