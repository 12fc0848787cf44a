"""Calibration's per-channel min/max (range split, head split) of tensors of any rank: a Conv1D's [N, C, L] output
as well as an NCHW map."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from openrknn.quant.calibrate import Stats, collect_minmax


def test_per_channel_ranges_of_a_1d_conv_and_a_2d_map():
    """silero-vad's STFT is a Conv1D read by a channel split: head split asked for its per-channel ranges, and the
    reduction over axes (0, 2, 3) of a rank-3 tensor made onnxruntime refuse the calibration graph."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 1, (4, 1, 5)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1"], ["c1"]), helper.make_node("Unsqueeze", ["c1", "ax"], ["c2"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 64])],
        [helper.make_tensor_value_info("c2", TensorProto.FLOAT, [1, 4, 1, 60])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(np.array([2], np.int64), "ax")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    data = [{"x": rng.normal(0, 1, (1, 1, 64)).astype(np.float32)} for _ in range(3)]
    stats = Stats()
    collect_minmax(m, ["c1", "c2"], data, {}, stats, progress=False, threads=1, channel_tensors=["c1", "c2"])
    conv = np.stack([np.stack([np.convolve(d["x"][0, 0], k[0, ::-1], "valid") for k in w1]) for d in data])
    for t in ("c1", "c2"):
        lo, hi = stats.channel_minmax[t]
        np.testing.assert_allclose(lo, conv.min(axis=(0, 2)), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(hi, conv.max(axis=(0, 2)), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(stats.minmax[t], (conv.min(), conv.max()), rtol=1e-5, atol=1e-5)


def test_steadiness_tells_a_channel_that_fires_in_one_sample_from_a_steady_one():
    """Per channel: the median over samples of its span in one sample over its span in all of them. A ReLU channel
    positive in one sample of five scores 0; one whose span is the same in every sample scores 1."""
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    data = []
    for k in range(5):
        x = np.full((1, 2, 4, 4), -1.0, np.float32)
        x[0, 0] = np.linspace(0, 2, 16).reshape(4, 4)  # channel 0: the same span, 0..2, every time
        if k == 3:
            x[0, 1, 0, 0] = 0.7                          # channel 1: fires once
        data.append({"x": x})
    stats = Stats()
    collect_minmax(m, ["y"], data, {}, stats, progress=False, threads=1, channel_tensors=["y"])
    np.testing.assert_allclose(stats.channel_steadiness["y"], [1.0, 0.0])


def test_histogram_of_a_range_of_denormals():
    """An SSR-Net ReLU's values on every calibration face were 0 or about 1e-39: bins / range overflowed float32,
    every position was NaN, and the build failed in numpy's bincount. They count like any other range now."""
    from openrknn.quant.calibrate import histogram_fixed

    hi = float(np.float32(1.4262261627066912e-39))
    x = np.array([0.0, 0.0, 1.1e-39, hi, 5e-40], np.float32)
    h = histogram_fixed(x, 0.0, hi, 2048)
    assert h.sum() == 5 and h[0] == 2 and h[-1] == 1
    assert histogram_fixed(np.array([0.0, 1.0, 2.0], np.float32), 0.0, 2.0, 4).tolist() == [1, 0, 1, 1]
