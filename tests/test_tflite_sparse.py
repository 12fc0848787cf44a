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
    from openrknn.export.tflite.writer import Model, Sparsity, serialize

    rng = np.random.default_rng(7)
    conv_w = _pruned(rng, (5, 3, 3, 3))
    fc_w = _pruned(rng, (6, 320))
    fc_w[:, 40:120] = 0  # whole blocks empty
    m = Model()
    x = m.add_tensor("image", [1, 8, 8, 3], np.float32)
    m.inputs = [x.index]
    if sparse_weights:
        values, order, blocks, levels = _csr_last(conv_w)
        conv_sparse = m.add_sparse_const("conv_w_sparse", conv_w.shape, values,
                                         Sparsity(order, blocks, levels, "uint8"))
        values, order, blocks, levels = _block_rows(fc_w, 4)
        fc_sparse = m.add_sparse_const("fc_w_sparse", fc_w.shape, values[:-4] if damage else values,
                                       Sparsity(order, blocks, levels, "int32"))
        conv_t, fc_t = m.add_tensor("conv_w", conv_w.shape, np.float32), m.add_tensor("fc_w", fc_w.shape, np.float32)
        m.add_op("DENSIFY", [conv_sparse], [conv_t])
        m.add_op("DENSIFY", [fc_sparse], [fc_t])
    else:
        conv_t, fc_t = m.add_const("conv_w", conv_w), m.add_const("fc_w", fc_w)
    conv = m.add_tensor("conv", [1, 8, 8, 5], np.float32)
    m.add_op("CONV_2D", [x, conv_t, m.add_const("conv_b", rng.normal(0, .1, 5).astype(np.float32))], [conv],
             ("Conv2DOptions", {"Padding": 0, "StrideW": 1, "StrideH": 1, "FusedActivationFunction": 1,
                                "DilationWFactor": 1, "DilationHFactor": 1}))
    flat = m.add_tensor("flat", [1, 320], np.float32)
    m.add_op("RESHAPE", [conv, m.add_const("shape", np.array([1, 320], np.int32))], [flat])
    out = m.add_tensor("out", [1, 6], np.float32)
    m.add_op("FULLY_CONNECTED", [flat, fc_t, m.add_const("fc_b", rng.normal(0, .1, 6).astype(np.float32))], [out],
             ("FullyConnectedOptions", {"FusedActivationFunction": 0}))
    m.outputs = [out.index]
    path.write_bytes(serialize(m))
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
