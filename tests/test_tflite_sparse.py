"""Sparse TFLite weights (DENSIFY, as pruned MediaPipe models store them): load_tflite against the LiteRT interpreter
on files written here with TFLite's own sparsity format, and the densify walk against a dense encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from openrknn.api import RKNN
from openrknn.convert.loaders import load_tflite
from openrknn.errors import ModelLoadError
from openrknn.frontends.tflite_sparse import DENSE, SPARSE_CSR, densify
from openrknn.metrics import cosine


def _pruned(rng, shape, keep=0.4):
    w = rng.normal(0, 0.3, shape).astype(np.float32)
    return w * (rng.random(shape) < keep)


def _csr_last(w):
    """TFLite's encoding with every dimension dense but the last (CSR): the converter's default for a pruned conv."""
    rows = w.reshape(-1, w.shape[-1])
    segments, indices, values = [0], [], []
    for row in rows:
        nz = np.flatnonzero(row)
        indices += nz.tolist()
        values += row[nz].tolist()
        segments.append(len(indices))
    levels = [(DENSE, d, None, None) for d in w.shape[:-1]]
    levels.append((SPARSE_CSR, 0, np.array(segments), np.array(indices)))
    return np.array(values, w.dtype), list(range(w.ndim)), [], levels


def _block_rows(w, block):
    """A 2-D weight cut into 1 x ``block`` blocks along dim 1, blocks stored sparse (CSR), block interiors dense."""
    rows, cols = w.shape
    segments, indices, values = [0], [], []
    for r in range(rows):
        for b in range(cols // block):
            part = w[r, b * block:(b + 1) * block]
            if part.any():
                indices.append(b)
                values += part.tolist()
        segments.append(len(indices))
    levels = [(DENSE, rows, None, None), (SPARSE_CSR, 0, np.array(segments), np.array(indices)),
              (DENSE, block, None, None)]
    return np.array(values, w.dtype), [0, 1, 2], [1], levels


def test_densify_inverts_both_encodings():
    rng = np.random.default_rng(0)
    w = _pruned(rng, (6, 3, 3, 5))
    values, order, blocks, levels = _csr_last(w)
    np.testing.assert_array_equal(densify(values, w.shape, order, blocks, levels), w)
    fc = _pruned(rng, (7, 12))
    for r in range(7):  # whole blocks pruned, as block sparsity does
        fc[r, 4 * (r % 3):4 * (r % 3) + 4] = 0
    np.testing.assert_array_equal(densify(*_block_rows(fc, 4)[:1], fc.shape, *_block_rows(fc, 4)[1:]), fc)


def test_densify_refuses_inconsistent_metadata():
    w = _pruned(np.random.default_rng(1), (4, 6))
    v, o, b, lv = _csr_last(w)
    with pytest.raises(ValueError, match="stored values"):
        densify(v[:-1], w.shape, o, b, lv)
    bad = list(lv)
    bad[1] = (SPARSE_CSR, 0, lv[1][2], lv[1][3] + 6)  # indices past the dimension
    with pytest.raises(ValueError, match="outside dimension 1"):
        densify(v, w.shape, o, b, bad)
    with pytest.raises(ValueError, match="traversal order"):
        densify(v, w.shape, [0], b, lv)


# ------------------------------------------------------------------ files in TFLite's format, run by LiteRT

def _write(path: Path, sparse_weights: bool, damage: bool = False) -> Path:
    """input [1, 8, 8, 3] -> CONV_2D (3x3, 5 channels, weight DENSIFY'd from CSR, uint8 indices) -> RESHAPE [1, 320]
    -> FULLY_CONNECTED (6 x 320, weight DENSIFY'd from 1x4 blocks, int32 indices) -> [1, 6]."""
    import flatbuffers
    import tflite as tfl

    rng = np.random.default_rng(7)
    conv_w = _pruned(rng, (5, 3, 3, 3))
    fc_w = _pruned(rng, (6, 320))
    fc_w[:, 40:120] = 0  # whole blocks empty
    b = flatbuffers.Builder(1 << 16)

    def ivec(values, kind):  # a SparseIndexVector union member
        cls, np_t = {"u8": ("Uint8Vector", np.uint8), "i32": ("Int32Vector", np.int32)}[kind]
        data = b.CreateNumpyVector(np.asarray(values, np_t))
        getattr(tfl, f"{cls}Start")(b)
        getattr(tfl, f"{cls}AddValues")(b, data)
        return getattr(tfl, f"{cls}End")(b), getattr(tfl.SparseIndexVector, cls)

    def sparsity(order, block_map, levels, kind):
        dims = []
        for fmt, size, seg, idx in levels:
            s_off = i_off = None
            if fmt == SPARSE_CSR:
                s_off, s_type = ivec(seg, kind)
                i_off, i_type = ivec(idx, kind)
            tfl.DimensionMetadataStart(b)
            tfl.DimensionMetadataAddFormat(b, fmt)
            tfl.DimensionMetadataAddDenseSize(b, size)
            if s_off is not None:
                tfl.DimensionMetadataAddArraySegmentsType(b, s_type)
                tfl.DimensionMetadataAddArraySegments(b, s_off)
                tfl.DimensionMetadataAddArrayIndicesType(b, i_type)
                tfl.DimensionMetadataAddArrayIndices(b, i_off)
            dims.append(tfl.DimensionMetadataEnd(b))
        order_v = b.CreateNumpyVector(np.asarray(order, np.int32))
        block_v = b.CreateNumpyVector(np.asarray(block_map, np.int32)) if block_map else None
        tfl.SparsityParametersStartDimMetadataVector(b, len(dims))
        for d in reversed(dims):
            b.PrependUOffsetTRelative(d)
        dims_v = b.EndVector()
        tfl.SparsityParametersStart(b)
        tfl.SparsityParametersAddTraversalOrder(b, order_v)
        if block_v is not None:
            tfl.SparsityParametersAddBlockMap(b, block_v)
        tfl.SparsityParametersAddDimMetadata(b, dims_v)
        return tfl.SparsityParametersEnd(b)

    conv_values, conv_order, conv_blocks, conv_levels = _csr_last(conv_w)
    fc_values, *fc_sp = _block_rows(fc_w, 4)
    if damage:
        fc_values = fc_values[:-4]
    # tensors: (name, shape, data or None, sparsity args or None)
    tensors = [("image", [1, 8, 8, 3], None, None)]
    if sparse_weights:
        tensors += [("conv_w_sparse", [5, 3, 3, 3], conv_values, (conv_order, conv_blocks, conv_levels, "u8")),
                    ("conv_w", [5, 3, 3, 3], None, None),
                    ("fc_w_sparse", [6, 320], fc_values, (*fc_sp, "i32")), ("fc_w", [6, 320], None, None)]
    else:
        tensors += [("conv_w", [5, 3, 3, 3], conv_w, None), ("fc_w", [6, 320], fc_w, None)]
    tensors += [("conv_b", [5], rng.normal(0, .1, 5).astype(np.float32), None), ("conv", [1, 8, 8, 5], None, None),
                ("shape", [2], np.array([1, 320], np.int32), None), ("flat", [1, 320], None, None),
                ("fc_b", [6], rng.normal(0, .1, 6).astype(np.float32), None), ("out", [1, 6], None, None)]
    index = {t[0]: i for i, t in enumerate(tensors)}
    buffers = [None]
    t_offs = []
    buf_of = {}
    for name, shape, data, _ in tensors:
        if data is not None:
            buf_of[name] = len(buffers)
            buffers.append(np.ascontiguousarray(data).tobytes())
    for name, shape, data, sp in tensors:
        sp_off = sparsity(*sp) if sp is not None else None
        n_off = b.CreateString(name)
        s_off = b.CreateNumpyVector(np.asarray(shape, np.int32))
        tfl.TensorStart(b)
        tfl.TensorAddShape(b, s_off)
        tfl.TensorAddType(b, tfl.TensorType.INT32 if name == "shape" else tfl.TensorType.FLOAT32)
        tfl.TensorAddBuffer(b, buf_of.get(name, 0))
        tfl.TensorAddName(b, n_off)
        if sp_off is not None:
            tfl.TensorAddSparsity(b, sp_off)
        t_offs.append(tfl.TensorEnd(b))
    ops = []  # (builtin, inputs, outputs, options)
    if sparse_weights:
        ops += [("DENSIFY", ["conv_w_sparse"], ["conv_w"], None), ("DENSIFY", ["fc_w_sparse"], ["fc_w"], None)]
    ops += [("CONV_2D", ["image", "conv_w", "conv_b"], ["conv"], "Conv2DOptions"),
            ("RESHAPE", ["conv", "shape"], ["flat"], None),
            ("FULLY_CONNECTED", ["flat", "fc_w", "fc_b"], ["out"], "FullyConnectedOptions")]
    codes = sorted({op[0] for op in ops})
    op_offs = []
    for builtin, ins, outs, opts in ops:
        opt_off = None
        if opts == "Conv2DOptions":
            tfl.Conv2DOptionsStart(b)
            tfl.Conv2DOptionsAddPadding(b, tfl.Padding.SAME)
            tfl.Conv2DOptionsAddStrideW(b, 1)
            tfl.Conv2DOptionsAddStrideH(b, 1)
            tfl.Conv2DOptionsAddFusedActivationFunction(b, tfl.ActivationFunctionType.RELU)
            tfl.Conv2DOptionsAddDilationWFactor(b, 1)
            tfl.Conv2DOptionsAddDilationHFactor(b, 1)
            opt_off = tfl.Conv2DOptionsEnd(b)
        elif opts == "FullyConnectedOptions":
            tfl.FullyConnectedOptionsStart(b)
            opt_off = tfl.FullyConnectedOptionsEnd(b)
        i_v = b.CreateNumpyVector(np.asarray([index[n] for n in ins], np.int32))
        o_v = b.CreateNumpyVector(np.asarray([index[n] for n in outs], np.int32))
        tfl.OperatorStart(b)
        tfl.OperatorAddOpcodeIndex(b, codes.index(builtin))
        tfl.OperatorAddInputs(b, i_v)
        tfl.OperatorAddOutputs(b, o_v)
        if opt_off is not None:
            tfl.OperatorAddBuiltinOptionsType(b, getattr(tfl.BuiltinOptions, opts))
            tfl.OperatorAddBuiltinOptions(b, opt_off)
        op_offs.append(tfl.OperatorEnd(b))

    def vector(start, offs):
        start(b, len(offs))
        for off in reversed(offs):
            b.PrependUOffsetTRelative(off)
        return b.EndVector()

    tens_v, ops_v = vector(tfl.SubGraphStartTensorsVector, t_offs), vector(tfl.SubGraphStartOperatorsVector, op_offs)
    in_v = b.CreateNumpyVector(np.asarray([index["image"]], np.int32))
    out_v = b.CreateNumpyVector(np.asarray([index["out"]], np.int32))
    tfl.SubGraphStart(b)
    tfl.SubGraphAddTensors(b, tens_v)
    tfl.SubGraphAddInputs(b, in_v)
    tfl.SubGraphAddOutputs(b, out_v)
    tfl.SubGraphAddOperators(b, ops_v)
    sg = tfl.SubGraphEnd(b)
    code_offs = []
    for name in codes:
        code = getattr(tfl.BuiltinOperator, name)
        tfl.OperatorCodeStart(b)
        tfl.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, 127))
        tfl.OperatorCodeAddBuiltinCode(b, code)
        tfl.OperatorCodeAddVersion(b, 1)
        code_offs.append(tfl.OperatorCodeEnd(b))
    buf_offs = []
    for data in buffers:
        d_off = b.CreateByteVector(data) if data is not None else None
        tfl.BufferStart(b)
        if d_off is not None:
            tfl.BufferAddData(b, d_off)
        buf_offs.append(tfl.BufferEnd(b))
    codes_v = vector(tfl.ModelStartOperatorCodesVector, code_offs)
    sgs_v = vector(tfl.ModelStartSubgraphsVector, [sg])
    bufs_v = vector(tfl.ModelStartBuffersVector, buf_offs)
    tfl.ModelStart(b)
    tfl.ModelAddVersion(b, 3)
    tfl.ModelAddOperatorCodes(b, codes_v)
    tfl.ModelAddSubgraphs(b, sgs_v)
    tfl.ModelAddBuffers(b, bufs_v)
    b.Finish(tfl.ModelEnd(b), file_identifier=b"TFL3")
    path.write_bytes(bytes(b.Output()))
    return path


def _litert(path: Path, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])


def test_sparse_tflite_matches_litert_and_its_dense_twin(tmp_path):
    sparse = _write(tmp_path / "sparse.tflite", True)
    dense = _write(tmp_path / "dense.tflite", False)
    x = np.random.default_rng(3).normal(0, 1, (1, 8, 8, 3)).astype(np.float32)
    ref = _litert(sparse, x)
    np.testing.assert_allclose(ref, _litert(dense, x), rtol=1e-5, atol=1e-6)  # the file is what we meant
    loaded = load_tflite(sparse)
    assert any("2 sparse weight(s) densified" in n for n in loaded.notes)
    sess = ort.InferenceSession(loaded.model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_sparse_tflite_builds_and_quantizes_through_the_api(tmp_path):
    path = _write(tmp_path / "sparse.tflite", True)
    rng = np.random.default_rng(4)
    imgs = []
    for k in range(32):
        p = tmp_path / f"c{k}.npy"
        np.save(p, rng.integers(0, 256, (8, 8, 3)).astype(np.uint8))
        imgs.append(str(p))
    (tmp_path / "ds.txt").write_text("\n".join(imgs) + "\n")
    img = rng.integers(0, 256, (1, 8, 8, 3)).astype(np.uint8)
    ref = _litert(path, ((img.astype(np.float32) - 127.5) / 127.5).astype(np.float32))
    for quant in (False, True):
        r = RKNN()
        assert r.config(mean_values=[127.5] * 3, std_values=[127.5] * 3, target_platform="rk3588",
                        quantized_dtype="w8a8") == 0
        assert r.load_tflite(str(path)) == 0
        assert r.build(do_quantization=quant, dataset=str(tmp_path / "ds.txt")) == 0
        assert r.init_runtime() == 0
        out = r.inference([img])[0]
        assert cosine(out, ref) >= (0.99 if quant else 0.9999)
        r.release()


def test_damaged_sparse_tensor_names_itself(tmp_path):
    path = _write(tmp_path / "damaged.tflite", True, damage=True)
    with pytest.raises(ModelLoadError, match="sparse tensor 'fc_w_sparse'.*stored values"):
        load_tflite(path)
