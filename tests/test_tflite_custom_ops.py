"""MediaPipe's custom Convolution2DTransposeBias (the decoder of its selfie segmenters, which LiteRT's XNNPACK
delegate runs): load_tflite reads it as a ConvTranspose with explicit pads, on files written here with TFLite's own
custom-op encoding, against LiteRT; and a TFLite TRANSPOSE_CONV loads with explicit pads too, so the w8a8 build of
such a model exports again."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from conftest import built_rknn
from openrknn.api import RKNN
from openrknn.errors import ModelLoadError
from openrknn.metrics import cosine

H = W = 8


def _write(path: Path, padding: int, stride: int, custom: bool = True, options: bytes = None,
           out_hw: int = None) -> Path:
    """x [1, 8, 8, 3] -> CONV_2D 3x3 (3 -> 4, RELU) -> transpose conv 3x3 (4 -> 2) with a bias -> y. ``custom``:
    MediaPipe's Convolution2DTransposeBias (custom options: padding, stride_w, stride_h as int32); else TFLite's
    builtin TRANSPOSE_CONV and an output-shape input."""
    from openrknn.export.tflite.writer import Model, serialize

    rng = np.random.default_rng(padding * 10 + stride)
    m = Model()
    x = m.add_tensor("x", (1, H, W, 3), np.float32)
    mid = m.add_tensor("mid", (1, H, W, 4), np.float32)
    m.add_op("CONV_2D", [x, m.add_const("w1", rng.normal(0, .4, (4, 3, 3, 3)).astype(np.float32)),
                         m.add_const("b1", rng.normal(0, .1, 4).astype(np.float32))], [mid],
             ("Conv2DOptions", {"Padding": 0, "StrideW": 1, "StrideH": 1, "FusedActivationFunction": 1}))
    out_hw = out_hw or (H * stride if padding == 1 else (H - 1) * stride + 3)
    y = m.add_tensor("y", (1, out_hw, out_hw, 2), np.float32)
    w2 = m.add_const("w2", rng.normal(0, .4, (2, 3, 3, 4)).astype(np.float32))
    b2 = m.add_const("b2", rng.normal(0, .1, 2).astype(np.float32))
    if custom:
        op = m.add_op("CUSTOM", [mid, w2, b2], [y])
        op.custom = "Convolution2DTransposeBias"
        op.custom_options = struct.pack("<3i", padding, stride, stride) if options is None else options
    else:
        shape = m.add_const("out_shape", np.array([1, out_hw, out_hw, 2], np.int32))
        m.add_op("TRANSPOSE_CONV", [shape, w2, mid, b2], [y],
                 ("TransposeConvOptions", {"Padding": 0 if padding == 1 else 1, "StrideW": stride, "StrideH": stride}))
    m.inputs, m.outputs = [x.index], [y.index]
    path.write_bytes(serialize(m))
    return path


def _litert(path: Path, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(str(path))
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])


@pytest.mark.parametrize("padding,stride", [(1, 2), (2, 2), (1, 1)])  # SAME / VALID
def test_mediapipes_transpose_conv_bias_loads_as_litert_runs_it(tmp_path, padding, stride):
    path = _write(tmp_path / "t.tflite", padding, stride)
    rk = built_rknn(path, loader="tflite", target_platform="rk3588", mean_values=[[0, 0, 0]], std_values=[[1, 1, 1]])
    x = np.random.default_rng(1).uniform(0, 1, (1, H, W, 3)).astype(np.float32)
    want = _litert(path, x)
    got = rk.inference(inputs=[x])[0]
    np.testing.assert_allclose(np.asarray(got).reshape(want.shape), want, rtol=1e-4, atol=1e-5)
    rk.release()


def test_tflites_transpose_conv_crops_as_litert_does(tmp_path):
    """TFLite's builtin TRANSPOSE_CONV with SAME padding and an output one smaller than the full one (16 of 17): the
    crop falls where LiteRT puts it."""
    path = _write(tmp_path / "t.tflite", 1, 2, custom=False, out_hw=2 * H)
    rk = built_rknn(path, loader="tflite", target_platform="rk3588", mean_values=[[0, 0, 0]], std_values=[[1, 1, 1]])
    x = np.random.default_rng(3).uniform(0, 1, (1, H, W, 3)).astype(np.float32)
    want = _litert(path, x)
    np.testing.assert_allclose(np.asarray(rk.inference(inputs=[x])[0]).reshape(want.shape), want, rtol=1e-4,
                               atol=1e-5)
    rk.release()


def test_damaged_custom_options_are_named(tmp_path):
    path = _write(tmp_path / "bad.tflite", 1, 2, options=b"\x01\x00")
    with pytest.raises(ModelLoadError, match="has 2 bytes of options"):
        from openrknn.convert.loaders import load_tflite

        load_tflite(path)


@pytest.mark.parametrize("custom", [True, False])
def test_a_transpose_conv_from_tflite_exports_again(tmp_path, custom):
    """Both forms load with explicit pads (no output_shape), which is what export_tflite writes TRANSPOSE_CONV from:
    before, every TFLite transpose conv was refused there."""
    from openrknn.runtime.tflite_runner import TfliteRunner

    path = _write(tmp_path / "t.tflite", 1, 2, custom=custom)
    rng = np.random.default_rng(2)
    for k in range(6):
        np.save(tmp_path / f"{k}.npy", rng.uniform(0, 255, (1, H, W, 3)).astype(np.float32))
    (tmp_path / "ds.txt").write_text("".join(f"{k}.npy\n" for k in range(6)))
    rk = RKNN(verbose=False)
    assert rk.config(target_platform="rk3588", quantized_dtype="w8a8", mean_values=[[0, 0, 0]],
                     std_values=[[255, 255, 255]]) == 0
    assert rk.load_tflite(str(path)) == 0, rk.last_error
    assert rk.build(do_quantization=True, dataset=str(tmp_path / "ds.txt")) == 0, rk.last_error
    assert rk.init_runtime() == 0
    assert rk.export_tflite(str(tmp_path / "e.tflite")) == 0, rk.last_error
    runner = TfliteRunner(str(tmp_path / "e.tflite"), delegate=None)
    x = rng.integers(0, 256, (1, H, W, 3)).astype(np.uint8)
    assert cosine(runner.run([x])[0], rk.inference(inputs=[x])[0]) >= 0.999
    rk.release()
