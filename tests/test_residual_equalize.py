"""Residual-stream channel equalization: an exact rewrite that evens out the channel ranges of Add-joined streams."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import write_npy_dataset
from openrknn.errors import ConfigError
from openrknn.quant import QuantOptions, quantize
from openrknn.quant.algorithms.residual_equalize import find_streams, residual_equalize, stream_scales
from openrknn.quant.calibrate import Stats, collect_minmax
from openrknn.quant.dataset import InputSpec, read_dataset
from openrknn.quant.ir import GraphInfo, normalize
from openrknn.quant.qdq import channel_scales

SPEC = [InputSpec("raw", (1, 8, 8, 3))]
STREAM = {"t0", "p1", "a1", "p2", "a2"}


def stream_model(nonlinear_reader: bool = False, output_in_stream: bool = False) -> onnx.ModelProto:
    """MobileNetV2-like stage: t0 = projection conv, a1 = t0 + proj(relu(expand(t0))), a2 = a1 + ..., read by a
    final conv. Stream channel 3 is 30x wider than the others."""
    rng = np.random.default_rng(0)
    gain = np.array([1.0, 1.0, 1.0, 30.0])
    arrays = {"w_in": rng.normal(0, 0.02, (8, 3, 1, 1)), "b_in": rng.normal(0, 0.1, 8),
              "w_t0": rng.normal(0, 0.5, (4, 8, 1, 1)) * gain[:, None, None, None], "b_t0": rng.normal(0, 0.1, 4),
              "w_e1": rng.normal(0, 0.5, (8, 4, 3, 3)), "b_e1": rng.normal(0, 0.1, 8),
              "w_p1": rng.normal(0, 0.01, (4, 8, 1, 1)), "b_p1": rng.normal(0, 0.1, 4),
              "w_e2": rng.normal(0, 0.5, (8, 4, 1, 1)), "b_e2": rng.normal(0, 0.1, 8),
              "w_p2": rng.normal(0, 0.01, (4, 8, 1, 1)), "b_p2": rng.normal(0, 0.1, 4),
              "w_o": rng.normal(0, 0.5, (5, 4, 1, 1)), "b_o": rng.normal(0, 0.1, 5),
              "w_s": rng.normal(0, 0.5, (2, 4, 1, 1))}
    inits = [numpy_helper.from_array(a.astype(np.float32), k) for k, a in arrays.items()]
    n = helper.make_node
    nodes = [n("Transpose", ["raw"], ["x"], perm=[0, 3, 1, 2]),
             n("Conv", ["x", "w_in", "b_in"], ["c_in"]), n("Relu", ["c_in"], ["r_in"]),
             n("Conv", ["r_in", "w_t0", "b_t0"], ["t0"]),
             n("Conv", ["t0", "w_e1", "b_e1"], ["c_e1"], pads=[1, 1, 1, 1]), n("Relu", ["c_e1"], ["r_e1"]),
             n("Conv", ["r_e1", "w_p1", "b_p1"], ["p1"]), n("Add", ["t0", "p1"], ["a1"]),
             n("Conv", ["a1", "w_e2", "b_e2"], ["c_e2"]), n("Relu", ["c_e2"], ["r_e2"]),
             n("Conv", ["r_e2", "w_p2", "b_p2"], ["p2"]), n("Add", ["a1", "p2"], ["a2"]),
             n("Conv", ["a2", "w_o", "b_o"], ["out"])]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 5, 8, 8])]
    if nonlinear_reader:  # relu(a1) is not a/s for a per-channel s of mixed sign: the stream must stay as it is
        nodes += [n("Relu", ["a1"], ["side"]), n("Conv", ["side", "w_s"], ["out2"])]
        outputs.append(helper.make_tensor_value_info("out2", TensorProto.FLOAT, [1, 2, 8, 8]))
    if output_in_stream:
        outputs.append(helper.make_tensor_value_info("a2", TensorProto.FLOAT, [1, 4, 8, 8]))
    g = helper.make_graph(nodes, "stream", [helper.make_tensor_value_info("raw", TensorProto.FLOAT, [1, 8, 8, 3])],
                          outputs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    return read_dataset(write_npy_dataset(tmp_path_factory.mktemp("residual"), (8, 8, 3)), SPEC)


def _spread(lo, hi):
    r = np.maximum(np.abs(lo), np.abs(hi))
    return r.max() / np.median(r)


def test_finds_the_stream():
    info = GraphInfo(normalize(stream_model()))
    streams = find_streams(info)
    assert len(streams) == 1
    st = streams[0]
    assert set(st.tensors) == STREAM and st.channels == 4
    assert sorted(info.nodes[i].output[0] for i in st.producers) == ["p1", "p2", "t0"]
    assert sorted(info.nodes[i].output[0] for i in st.readers) == ["c_e1", "c_e2", "out"]


@pytest.mark.parametrize("kw", [{"nonlinear_reader": True}, {"output_in_stream": True}])
def test_streams_with_other_readers_or_outputs_are_left_alone(kw):
    assert find_streams(GraphInfo(normalize(stream_model(**kw)))) == []


def test_rewrite_is_exact_and_evens_ranges(calib, ort_reference):
    m = normalize(stream_model())
    info = GraphInfo(m)
    streams = find_streams(info)
    stats = Stats()
    tensors = sorted(STREAM)
    collect_minmax(m, tensors, calib, {}, stats, progress=False, threads=1, channel_tensors=tensors)
    new, rep = residual_equalize(m, info, streams, stats.channel_minmax)
    rng = np.random.default_rng(2)
    for _ in range(3):
        feed = {"raw": rng.uniform(0, 255, (1, 8, 8, 3)).astype(np.float32)}
        np.testing.assert_allclose(ort_reference(new, feed)[0], ort_reference(m, feed)[0], atol=1e-4, rtol=1e-4)
    assert set(rep["channel_scales"]) == STREAM
    # the rewritten stream tensors are the float ones divided by s, so their ranges are the old ones / s
    after = Stats()
    collect_minmax(new, tensors, calib, {}, after, progress=False, threads=1, channel_tensors=tensors)
    for t in tensors:
        s = rep["channel_scales"][t]
        lo, hi = stats.channel_minmax[t]
        np.testing.assert_allclose(after.channel_minmax[t][1], hi / s, rtol=1e-4, atol=1e-4)
    # one factor per channel for the whole stream: its per-channel ranges over all tensors get more even
    before_r = np.max([np.maximum(np.abs(lo), np.abs(hi)) for lo, hi in stats.channel_minmax.values()], axis=0)
    after_r = np.max([np.maximum(np.abs(lo), np.abs(hi)) for lo, hi in after.channel_minmax.values()], axis=0)
    assert _spread(-after_r, after_r) < _spread(-before_r, before_r) / 2
    st = rep["streams"][0]
    assert st["spread_after"] < st["spread_before"] / 2


def test_stream_scales():
    s = stream_scales(np.array([1.0, 4.0, 0.0, 16.0]), np.array([1.0, 1.0, 1.0, 0.0]), alpha=0.5)
    assert s[2] == 1.0 and s[3] == 1.0  # a dead channel or an unread one is left alone
    np.testing.assert_allclose(s[1] / s[0], 2.0)  # sqrt of the range ratio at alpha 0.5
    np.testing.assert_allclose(np.exp(np.mean(np.log(s[:2]))), 1.0)
    full = stream_scales(np.array([1.0, 4.0]), np.array([1.0, 1.0]), alpha=1.0)
    np.testing.assert_allclose(full[1] / full[0], 4.0)


def _cos(a, b):
    return float(np.dot(a.ravel(), b.ravel()) / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.parametrize("dtype", ["w8a8", "asymmetric_quantized-u8"])
def test_quantize_on_and_off(calib, dtype, ort_reference):
    m = stream_model()
    feed = {"raw": np.random.default_rng(3).uniform(0, 255, (1, 8, 8, 3)).astype(np.float32)}
    ref = ort_reference(m, feed)[0]
    on = quantize(m, calib, QuantOptions(dtype=dtype), progress=False)
    off = quantize(m, calib, QuantOptions(dtype=dtype, residual_equalization=False), progress=False)
    assert [set(s["tensors"]) for s in on.report["residual_equalization"]["streams"]] == [STREAM]
    assert "residual_equalization" not in off.report
    # u8 also runs cross-layer equalization (conv -> ReLU -> conv pairs): its factors are merged in
    assert STREAM <= set(channel_scales(on.model)) and not STREAM & set(channel_scales(off.model))
    err_on, err_off = 1 - _cos(ort_reference(on.model, feed)[0], ref), 1 - _cos(ort_reference(off.model, feed)[0], ref)
    assert err_on < err_off  # the 30x channel no longer takes the other channels' levels


def test_option_validated():
    with pytest.raises(ConfigError, match="residual_equalization"):
        QuantOptions(residual_equalization="yes").validate()
