"""The part of Caffe's protobuf schema (caffe.proto) that inference models use, built at import time with protobuf's
descriptor API, so neither Caffe nor protoc is needed. Field numbers and types are caffe.proto's (a file format);
fields not listed here are skipped when a .caffemodel is parsed and tolerated in a .prototxt."""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_T = descriptor_pb2.FieldDescriptorProto
_TYPES = {"string": _T.TYPE_STRING, "bool": _T.TYPE_BOOL, "float": _T.TYPE_FLOAT, "double": _T.TYPE_DOUBLE,
          "int32": _T.TYPE_INT32, "int64": _T.TYPE_INT64, "uint32": _T.TYPE_UINT32, "uint64": _T.TYPE_UINT64}

# message -> [(field, number, type, label, default)]; type is a scalar type, a message name or "enum:Name"
_MESSAGES = {
    "BlobShape": [("dim", 1, "int64", "repeated", None)],
    "BlobProto": [("shape", 7, "BlobShape", "optional", None), ("data", 5, "float", "repeated", None),
                  ("double_data", 8, "double", "repeated", None), ("num", 1, "int32", "optional", None),
                  ("channels", 2, "int32", "optional", None), ("height", 3, "int32", "optional", None),
                  ("width", 4, "int32", "optional", None)],
    "NetStateRule": [("phase", 1, "enum:Phase", "optional", None)],
    "NetParameter": [("name", 1, "string", "optional", None), ("input", 3, "string", "repeated", None),
                     ("input_shape", 8, "BlobShape", "repeated", None), ("input_dim", 4, "int32", "repeated", None),
                     ("layer", 100, "LayerParameter", "repeated", None),
                     ("layers", 2, "V1LayerParameter", "repeated", None)],
    "V1LayerParameter": [("name", 4, "string", "optional", None)],
    "ConvolutionParameter": [("num_output", 1, "uint32", "optional", None),
                             ("bias_term", 2, "bool", "optional", "true"), ("pad", 3, "uint32", "repeated", None),
                             ("kernel_size", 4, "uint32", "repeated", None), ("group", 5, "uint32", "optional", "1"),
                             ("stride", 6, "uint32", "repeated", None), ("pad_h", 9, "uint32", "optional", None),
                             ("pad_w", 10, "uint32", "optional", None), ("kernel_h", 11, "uint32", "optional", None),
                             ("kernel_w", 12, "uint32", "optional", None), ("stride_h", 13, "uint32", "optional", None),
                             ("stride_w", 14, "uint32", "optional", None), ("axis", 16, "int32", "optional", "1"),
                             ("dilation", 18, "uint32", "repeated", None)],
    "PoolingParameter": [("pool", 1, "enum:PoolingParameter.PoolMethod", "optional", None),
                         ("kernel_size", 2, "uint32", "optional", None), ("stride", 3, "uint32", "optional", "1"),
                         ("pad", 4, "uint32", "optional", None), ("kernel_h", 5, "uint32", "optional", None),
                         ("kernel_w", 6, "uint32", "optional", None), ("stride_h", 7, "uint32", "optional", None),
                         ("stride_w", 8, "uint32", "optional", None), ("pad_h", 9, "uint32", "optional", None),
                         ("pad_w", 10, "uint32", "optional", None), ("global_pooling", 12, "bool", "optional", None),
                         ("round_mode", 13, "enum:PoolingParameter.RoundMode", "optional", None)],
    "InnerProductParameter": [("num_output", 1, "uint32", "optional", None),
                              ("bias_term", 2, "bool", "optional", "true"), ("axis", 5, "int32", "optional", "1"),
                              ("transpose", 6, "bool", "optional", None)],
    "BatchNormParameter": [("use_global_stats", 1, "bool", "optional", None),
                           ("eps", 3, "float", "optional", "1e-5")],
    "ScaleParameter": [("axis", 1, "int32", "optional", "1"), ("num_axes", 2, "int32", "optional", "1"),
                       ("bias_term", 4, "bool", "optional", None)],
    "BiasParameter": [("axis", 1, "int32", "optional", "1"), ("num_axes", 2, "int32", "optional", "1")],
    "EltwiseParameter": [("operation", 1, "enum:EltwiseParameter.EltwiseOp", "optional", "SUM"),
                         ("coeff", 2, "float", "repeated", None)],
    "ConcatParameter": [("concat_dim", 1, "uint32", "optional", None), ("axis", 2, "int32", "optional", "1")],
    "ReLUParameter": [("negative_slope", 1, "float", "optional", None)],
    "PReLUParameter": [("channel_shared", 2, "bool", "optional", None)],
    "ELUParameter": [("alpha", 1, "float", "optional", "1")],
    "SoftmaxParameter": [("axis", 2, "int32", "optional", "1")],
    "FlattenParameter": [("axis", 1, "int32", "optional", "1"), ("end_axis", 2, "int32", "optional", "-1")],
    "ReshapeParameter": [("shape", 1, "BlobShape", "optional", None), ("axis", 2, "int32", "optional", None),
                         ("num_axes", 3, "int32", "optional", "-1")],
    "InputParameter": [("shape", 1, "BlobShape", "repeated", None)],
    "DropoutParameter": [("dropout_ratio", 1, "float", "optional", "0.5")],
    "LRNParameter": [("local_size", 1, "uint32", "optional", "5"), ("alpha", 2, "float", "optional", "1"),
                     ("beta", 3, "float", "optional", "0.75"),
                     ("norm_region", 4, "enum:LRNParameter.NormRegion", "optional", None),
                     ("k", 5, "float", "optional", "1")],
    "PowerParameter": [("power", 1, "float", "optional", "1"), ("scale", 2, "float", "optional", "1"),
                       ("shift", 3, "float", "optional", None)],
    "SliceParameter": [("slice_dim", 1, "uint32", "optional", None), ("slice_point", 2, "uint32", "repeated", None),
                       ("axis", 3, "int32", "optional", "1")],
    "PermuteParameter": [("order", 1, "uint32", "repeated", None)],
    "LayerParameter": [
        ("name", 1, "string", "optional", None), ("type", 2, "string", "optional", None),
        ("bottom", 3, "string", "repeated", None), ("top", 4, "string", "repeated", None),
        ("phase", 10, "enum:Phase", "optional", None), ("blobs", 7, "BlobProto", "repeated", None),
        ("include", 8, "NetStateRule", "repeated", None), ("exclude", 9, "NetStateRule", "repeated", None),
        ("batch_norm_param", 139, "BatchNormParameter", "optional", None),
        ("bias_param", 141, "BiasParameter", "optional", None),
        ("concat_param", 104, "ConcatParameter", "optional", None),
        ("convolution_param", 106, "ConvolutionParameter", "optional", None),
        ("dropout_param", 108, "DropoutParameter", "optional", None),
        ("eltwise_param", 110, "EltwiseParameter", "optional", None),
        ("elu_param", 140, "ELUParameter", "optional", None),
        ("flatten_param", 135, "FlattenParameter", "optional", None),
        ("inner_product_param", 117, "InnerProductParameter", "optional", None),
        ("input_param", 143, "InputParameter", "optional", None),
        ("lrn_param", 118, "LRNParameter", "optional", None),
        ("permute_param", 202, "PermuteParameter", "optional", None),
        ("pooling_param", 121, "PoolingParameter", "optional", None),
        ("power_param", 122, "PowerParameter", "optional", None),
        ("prelu_param", 131, "PReLUParameter", "optional", None),
        ("relu_param", 123, "ReLUParameter", "optional", None),
        ("reshape_param", 133, "ReshapeParameter", "optional", None),
        ("scale_param", 142, "ScaleParameter", "optional", None),
        ("slice_param", 126, "SliceParameter", "optional", None),
        ("softmax_param", 125, "SoftmaxParameter", "optional", None),
    ],
}
# enums: top-level ones, and ones nested in a message (their values are scoped by it, as in caffe.proto)
_ENUMS = {"Phase": ["TRAIN", "TEST"]}
_NESTED_ENUMS = {"PoolingParameter": {"PoolMethod": ["MAX", "AVE", "STOCHASTIC"], "RoundMode": ["CEIL", "FLOOR"]},
                 "EltwiseParameter": {"EltwiseOp": ["PROD", "SUM", "MAX"]},
                 "LRNParameter": {"NormRegion": ["ACROSS_CHANNELS", "WITHIN_CHANNEL"]}}
PACKAGE = "openrknn_caffe"


def _build():
    f = descriptor_pb2.FileDescriptorProto(name="openrknn_caffe.proto", package=PACKAGE, syntax="proto2")
    for name, values in _ENUMS.items():
        e = f.enum_type.add(name=name)
        for i, v in enumerate(values):
            e.value.add(name=v, number=i)
    for msg, fields in _MESSAGES.items():
        m = f.message_type.add(name=msg)
        for ename, values in _NESTED_ENUMS.get(msg, {}).items():
            e = m.enum_type.add(name=ename)
            for i, v in enumerate(values):
                e.value.add(name=v, number=i)
        for fname, num, ftype, label, default in fields:
            fd = m.field.add(name=fname, number=num,
                             label=_T.LABEL_REPEATED if label == "repeated" else _T.LABEL_OPTIONAL)
            if ftype in _TYPES:
                fd.type = _TYPES[ftype]
            elif ftype.startswith("enum:"):
                fd.type = _T.TYPE_ENUM
                fd.type_name = f".{PACKAGE}.{ftype[5:]}"
            else:
                fd.type = _T.TYPE_MESSAGE
                fd.type_name = f".{PACKAGE}.{ftype}"
            if default is not None:
                fd.default_value = default
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.{name}"))
            for name in _MESSAGES}


MESSAGES = _build()
NetParameter = MESSAGES["NetParameter"]
LayerParameter = MESSAGES["LayerParameter"]
BlobProto = MESSAGES["BlobProto"]
