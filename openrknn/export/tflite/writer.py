"""A TFLite model held as plain Python objects, serialized with the `tflite` schema package and `flatbuffers`.

The lowering (lower.py and ops/) only adds tensors and operators here; this module alone knows the flatbuffer
layout. Tensor data is written as 16-byte aligned buffers, as TFLite's own converter does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

TFLITE_FILE_ID = b"TFL3"
SCHEMA_VERSION = 3

# numpy dtype -> tflite.TensorType value
TENSOR_TYPES = {np.dtype(np.float32): 0, np.dtype(np.int32): 2, np.dtype(np.uint8): 3, np.dtype(np.int64): 4,
                np.dtype(np.bool_): 6,
                np.dtype(np.int16): 7, np.dtype(np.int8): 9}


@dataclass
class Quant:
    """Affine quantization of a tensor: real = scale * (q - zero_point), per channel along `axis` when several."""

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int = 0

    @classmethod
    def per_tensor(cls, scale: float, zero_point: int) -> "Quant":
        return cls(np.asarray([scale], np.float32), np.asarray([zero_point], np.int64))

    def same_as(self, other: Optional["Quant"]) -> bool:
        return other is not None and np.array_equal(self.scale, other.scale) and \
            np.array_equal(self.zero_point, other.zero_point)


@dataclass
class Sparsity:
    """A constant stored compressed, in TFLite's SparsityParameters: ``levels`` per traversed dimension
    (format 0 dense / 1 CSR, dense size, segments, indices), as frontends/tflite_sparse.py reads them; ``index_type``
    the indices' vector type (uint8 / uint16 / int32; 'auto' = the narrowest that holds them). openrknn's own export
    writes dense weights; this lets the loader's tests write the converters' sparse files."""

    order: List[int]
    block_map: List[int]
    levels: List[tuple]
    index_type: str = "auto"


@dataclass
class Tensor:
    index: int
    name: str
    shape: Tuple[int, ...]               # -1: a length known only when the model runs (after an NMS)
    dtype: np.dtype
    quant: Optional[Quant] = None
    data: Optional[np.ndarray] = None    # the stored values: all of them, or a sparse tensor's non-zeros
    sparsity: Optional[Sparsity] = None
    variable: bool = False               # a state the interpreter keeps between invokes (an LSTM's)

    @property
    def quantized(self) -> bool:
        return self.quant is not None and self.dtype != np.float32


@dataclass
class Operator:
    builtin: str                     # tflite.BuiltinOperator name, e.g. "CONV_2D"
    inputs: List[int]
    outputs: List[int]
    options: Optional[Tuple[str, dict]] = None   # (options table name, {CamelCase field: value})
    version: int = 1
    layer: str = ""                  # the ONNX node this operator comes from (reports)
    custom: str = ""                 # builtin "CUSTOM": the custom op's name, and its options as raw bytes
    custom_options: bytes = b""


@dataclass
class Model:
    tensors: List[Tensor] = field(default_factory=list)
    operators: List[Operator] = field(default_factory=list)
    inputs: List[int] = field(default_factory=list)
    outputs: List[int] = field(default_factory=list)
    description: str = "openrknn"
    # subgraphs 1, 2, ... of the file (the bodies an IF or WHILE names by index), each a Model of its own tensors,
    # operators, inputs and outputs; this Model is subgraph 0
    subgraphs: List["Model"] = field(default_factory=list)

    def add_tensor(self, name: str, shape: Sequence[int], dtype, quant: Optional[Quant] = None,
                   data: Optional[np.ndarray] = None) -> Tensor:
        t = Tensor(len(self.tensors), name, tuple(int(d) for d in shape), np.dtype(dtype), quant,
                   None if data is None else np.ascontiguousarray(data, dtype=dtype))
        self.tensors.append(t)
        return t

    def add_const(self, name: str, data: np.ndarray, quant: Optional[Quant] = None) -> Tensor:
        data = np.asarray(data)
        return self.add_tensor(name, data.shape, data.dtype, quant, data)

    def add_sparse_const(self, name: str, shape: Sequence[int], values: np.ndarray, sparsity: Sparsity) -> Tensor:
        t = self.add_tensor(name, shape, np.asarray(values).dtype, None, values)
        t.sparsity = sparsity
        return t

    def add_op(self, builtin: str, inputs: Sequence[Tensor], outputs: Sequence[Tensor],
               options: Optional[Tuple[str, dict]] = None, version: int = 1, layer: str = "") -> Operator:
        op = Operator(builtin, [t.index if t is not None else -1 for t in inputs], [t.index for t in outputs],
                      options, version, layer)
        self.operators.append(op)
        return op


# ---------------------------------------------------------------------------------------------------------- writing
def _aligned_bytes(b, data: bytes, alignment: int = 16) -> int:
    b.StartVector(1, len(data), alignment)
    b.head = b.head - len(data)
    b.Bytes[b.head:b.head + len(data)] = data
    return b.EndVector()


def _options(tfl, b, table: str, fields: dict) -> int:
    """Write one builtin-options table from {CamelCase field: int/float/bool or list of ints}."""
    vectors = {}
    for key, value in fields.items():
        if isinstance(value, (list, tuple)):
            vectors[key] = b.CreateNumpyVector(np.asarray(value, np.int32))
    getattr(tfl, f"{table}Start")(b)
    for key, value in fields.items():
        getattr(tfl, f"{table}Add{key}")(b, vectors.get(key, value))
    return getattr(tfl, f"{table}End")(b)


def _sparsity(tfl, b, sp: Sparsity, vector) -> int:
    kinds = {"uint8": ("Uint8Vector", np.uint8), "uint16": ("Uint16Vector", np.uint16),
             "int32": ("Int32Vector", np.int32)}

    def index_vector(values) -> Tuple[int, int]:
        values = np.asarray(values)
        kind = sp.index_type
        if kind == "auto":
            top = int(values.max(initial=0))
            kind = "uint8" if top < 256 else "uint16" if top < 65536 else "int32"
        cls, dtype = kinds[kind]
        data = b.CreateNumpyVector(values.astype(dtype))
        getattr(tfl, f"{cls}Start")(b)
        getattr(tfl, f"{cls}AddValues")(b, data)
        return getattr(tfl, f"{cls}End")(b), getattr(tfl.SparseIndexVector, cls)

    dims = []
    for fmt, size, segments, indices in sp.levels:
        csr = [index_vector(segments), index_vector(indices)] if fmt == 1 else None
        tfl.DimensionMetadataStart(b)
        tfl.DimensionMetadataAddFormat(b, fmt)
        tfl.DimensionMetadataAddDenseSize(b, size)
        if csr is not None:
            tfl.DimensionMetadataAddArraySegmentsType(b, csr[0][1])
            tfl.DimensionMetadataAddArraySegments(b, csr[0][0])
            tfl.DimensionMetadataAddArrayIndicesType(b, csr[1][1])
            tfl.DimensionMetadataAddArrayIndices(b, csr[1][0])
        dims.append(tfl.DimensionMetadataEnd(b))
    order = b.CreateNumpyVector(np.asarray(sp.order, np.int32))
    block_map = b.CreateNumpyVector(np.asarray(sp.block_map, np.int32)) if sp.block_map else None
    dims_vec = vector(tfl.SparsityParametersStartDimMetadataVector, dims)
    tfl.SparsityParametersStart(b)
    tfl.SparsityParametersAddTraversalOrder(b, order)
    if block_map is not None:
        tfl.SparsityParametersAddBlockMap(b, block_map)
    tfl.SparsityParametersAddDimMetadata(b, dims_vec)
    return tfl.SparsityParametersEnd(b)


def serialize(model: Model) -> bytes:
    import flatbuffers
    import tflite as tfl

    b = flatbuffers.Builder(1 << 20)

    def vector(start_fn, offsets):
        start_fn(b, len(offsets))
        for off in reversed(offsets):
            b.PrependUOffsetTRelative(off)
        return b.EndVector()

    graphs = [model] + list(model.subgraphs)
    codes: Dict[Tuple[str, int, str], int] = {}  # (builtin, version, custom op name) -> opcode index
    for g in graphs:
        for op in g.operators:
            codes.setdefault((op.builtin, op.version, op.custom), len(codes))

    # buffers: 0 is the empty sentinel; one per constant tensor
    buffer_of: Dict[Tuple[int, int], int] = {}  # (subgraph, tensor index) -> buffer
    buffer_offsets = []
    tfl.BufferStart(b)
    buffer_offsets.append(tfl.BufferEnd(b))
    by_content: Dict[bytes, int] = {}   # constants with the same bytes share one buffer (a weight read per time step)
    for gi, g in enumerate(graphs):
        for t in g.tensors:
            if t.data is None:
                continue
            raw = t.data.astype(t.data.dtype.newbyteorder("<"), copy=False).tobytes()
            if raw in by_content:
                buffer_of[gi, t.index] = by_content[raw]
                continue
            data_vec = _aligned_bytes(b, raw)
            tfl.BufferStart(b)
            tfl.BufferAddData(b, data_vec)
            buffer_of[gi, t.index] = by_content[raw] = len(buffer_offsets)
            buffer_offsets.append(tfl.BufferEnd(b))

    def write_subgraph(gi: int, g: Model) -> int:
        tensor_offsets = []
        for t in g.tensors:
            name = b.CreateString(t.name)
            dims = np.asarray(t.shape, np.int32)
            # a run-time length: the interpreter resizes it when the op making it runs; the stored shape holds 1
            signature = b.CreateNumpyVector(dims) if (dims < 0).any() else None
            shape = b.CreateNumpyVector(np.where(dims < 0, 1, dims).astype(np.int32))
            q_off = None
            if t.quant is not None:
                scale = b.CreateNumpyVector(np.asarray(t.quant.scale, np.float32).reshape(-1))
                zp = b.CreateNumpyVector(np.asarray(t.quant.zero_point, np.int64).reshape(-1))
                tfl.QuantizationParametersStart(b)
                tfl.QuantizationParametersAddScale(b, scale)
                tfl.QuantizationParametersAddZeroPoint(b, zp)
                tfl.QuantizationParametersAddQuantizedDimension(b, int(t.quant.axis))
                q_off = tfl.QuantizationParametersEnd(b)
            sp_off = _sparsity(tfl, b, t.sparsity, vector) if t.sparsity is not None else None
            tfl.TensorStart(b)
            tfl.TensorAddShape(b, shape)
            if signature is not None:
                tfl.TensorAddShapeSignature(b, signature)
            tfl.TensorAddType(b, TENSOR_TYPES[t.dtype])
            tfl.TensorAddBuffer(b, buffer_of.get((gi, t.index), 0))
            tfl.TensorAddName(b, name)
            if q_off is not None:
                tfl.TensorAddQuantization(b, q_off)
            if sp_off is not None:
                tfl.TensorAddSparsity(b, sp_off)
            if t.variable:
                tfl.TensorAddIsVariable(b, True)
            tensor_offsets.append(tfl.TensorEnd(b))

        op_offsets = []
        for op in g.operators:
            opts = None
            if op.options is not None:
                opts = _options(tfl, b, op.options[0], op.options[1])
            ins = b.CreateNumpyVector(np.asarray(op.inputs, np.int32))
            outs = b.CreateNumpyVector(np.asarray(op.outputs, np.int32))
            custom = b.CreateNumpyVector(np.frombuffer(op.custom_options, np.uint8)) if op.custom_options else None
            tfl.OperatorStart(b)
            tfl.OperatorAddOpcodeIndex(b, codes[(op.builtin, op.version, op.custom)])
            tfl.OperatorAddInputs(b, ins)
            tfl.OperatorAddOutputs(b, outs)
            if opts is not None:
                tfl.OperatorAddBuiltinOptionsType(b, getattr(tfl.BuiltinOptions, op.options[0]))
                tfl.OperatorAddBuiltinOptions(b, opts)
            if custom is not None:
                tfl.OperatorAddCustomOptions(b, custom)
            op_offsets.append(tfl.OperatorEnd(b))

        tensors_vec = vector(tfl.SubGraphStartTensorsVector, tensor_offsets)
        ops_vec = vector(tfl.SubGraphStartOperatorsVector, op_offsets)
        in_vec = b.CreateNumpyVector(np.asarray(g.inputs, np.int32))
        out_vec = b.CreateNumpyVector(np.asarray(g.outputs, np.int32))
        sg_name = b.CreateString("main" if gi == 0 else f"subgraph{gi}")
        tfl.SubGraphStart(b)
        tfl.SubGraphAddTensors(b, tensors_vec)
        tfl.SubGraphAddInputs(b, in_vec)
        tfl.SubGraphAddOutputs(b, out_vec)
        tfl.SubGraphAddOperators(b, ops_vec)
        tfl.SubGraphAddName(b, sg_name)
        return tfl.SubGraphEnd(b)

    subgraph_offsets = [write_subgraph(gi, g) for gi, g in enumerate(graphs)]

    code_offsets = []
    for (builtin, version, custom_name), _ in sorted(codes.items(), key=lambda kv: kv[1]):
        code = getattr(tfl.BuiltinOperator, builtin)
        name = b.CreateString(custom_name) if custom_name else None
        tfl.OperatorCodeStart(b)
        if name is not None:
            tfl.OperatorCodeAddCustomCode(b, name)
        tfl.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, 127))
        tfl.OperatorCodeAddBuiltinCode(b, code)
        tfl.OperatorCodeAddVersion(b, version)
        code_offsets.append(tfl.OperatorCodeEnd(b))

    codes_vec = vector(tfl.ModelStartOperatorCodesVector, code_offsets)
    subgraphs_vec = vector(tfl.ModelStartSubgraphsVector, subgraph_offsets)
    buffers_vec = vector(tfl.ModelStartBuffersVector, buffer_offsets)
    desc = b.CreateString(model.description)
    tfl.ModelStart(b)
    tfl.ModelAddVersion(b, SCHEMA_VERSION)
    tfl.ModelAddOperatorCodes(b, codes_vec)
    tfl.ModelAddSubgraphs(b, subgraphs_vec)
    tfl.ModelAddDescription(b, desc)
    tfl.ModelAddBuffers(b, buffers_vec)
    b.Finish(tfl.ModelEnd(b), file_identifier=TFLITE_FILE_ID)
    return bytes(b.Output())
