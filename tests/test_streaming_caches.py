"""A streaming model's states as extra inputs, some of them 5-D (GTCRN's conv and transformer caches): the shapes
load as given, and float and int8 builds run frame by frame through the public API."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import ort_run, write_samples
from openrknn.api import RKNN

FRAME, CACHE = [1, 8, 1, 2], [2, 1, 4, 4, 3]


def streaming_model(path):
    """frame [1, 8, 1, 2] and cache [2, 1, 4, 4, 3] -> out = frame + the cache's mean; next cache = 0.5 cache +
    the frame's mean (the state a stream carries)."""
    n = helper.make_node
    nodes = [n("ReduceMean", ["cache"], ["c_mean"], keepdims=0), n("Add", ["frame", "c_mean"], ["out"]),
             n("ReduceMean", ["frame"], ["f_mean"], keepdims=0), n("Mul", ["cache", "half"], ["c_half"]),
             n("Add", ["c_half", "f_mean"], ["cache_out"])]
    g = helper.make_graph(nodes, "stream", [helper.make_tensor_value_info("frame", TensorProto.FLOAT, FRAME),
                                            helper.make_tensor_value_info("cache", TensorProto.FLOAT, CACHE)],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, FRAME),
                           helper.make_tensor_value_info("cache_out", TensorProto.FLOAT, CACHE)],
                          [numpy_helper.from_array(np.float32(0.5), "half")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _frames(k: int, reach: float = 1.0):
    return [np.random.default_rng(k).uniform(-reach, reach, FRAME).astype(np.float32)]


@pytest.mark.parametrize("dtype", [None, "w8a8"])
def test_five_dim_caches_load_build_and_stream(tmp_path, dtype):
    path = streaming_model(tmp_path / "stream.onnx")
    samples, state = [], np.zeros(CACHE, np.float32)  # calibrated on states as a stream carries them
    for k in range(24):
        frame = _frames(k)[0]
        samples.append((frame, state))
        state = ort_run(path, {"frame": frame, "cache": state})[1]
    dataset = write_samples(tmp_path, samples, prefixes=("f", "c"))
    rk = RKNN(verbose=False)
    # the frame is [N, F, T, 2] as the model takes it: stated channel-last, so it is fed as is
    rk.config(target_platform="rk3588", input_layout="nhwc#nchw", **({"quantized_dtype": dtype} if dtype else {}))
    assert rk.load_onnx(str(path), input_size_list=[FRAME, CACHE]) == 0, rk.last_error
    assert rk.build(do_quantization=dtype is not None, dataset=str(dataset)) == 0, rk.last_error
    rk.init_runtime()
    state = ref_state = np.zeros(CACHE, np.float32)
    for k in range(100, 106):  # within the calibrated ranges: int8's error is then its rounding, not a clipped tail
        frame = _frames(k, 0.5)[0]
        out, state = (np.asarray(a) for a in rk.inference(inputs=[frame, state]))
        want, ref_state = ort_run(path, {"frame": frame, "cache": ref_state})
        assert out.shape == tuple(FRAME) and state.shape == tuple(CACHE)
        np.testing.assert_allclose(out, want, atol=1e-5 if dtype is None else 0.03)  # int8: about 2 steps
        np.testing.assert_allclose(state, ref_state, atol=1e-5 if dtype is None else 0.03)
    rk.release()


def test_a_shape_of_the_wrong_rank_is_still_refused(tmp_path):
    rk = RKNN(verbose=False)
    rk.config(target_platform="rk3588")
    wrong = [1, 2, 1, 4, 4, 3]
    assert rk.load_onnx(str(streaming_model(tmp_path / "stream.onnx")), input_size_list=[FRAME, wrong]) != 0
    assert "is not a shape of positive integers" in str(rk.last_error)
