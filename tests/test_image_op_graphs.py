"""Image-processing graphs written with plain ONNX operators (the kind Kazuhito00/onnx-cv-graph ships: a whole
graph of Mul / Clip / Transpose with its settings as [1]-shaped inputs or constants) build as onnxruntime runs them.
Both cases below failed on real files of that repository."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import built_rknn, ort_run, write_samples

F = TensorProto.FLOAT


def exposure_model(path) -> None:
    """y = clip(x * exposure, 0, 1) with the clip's bounds stored as [1]-shaped initializers, as torch exports them."""
    g = helper.make_graph(
        [helper.make_node("Mul", ["input", "exposure"], ["scaled"]),
         helper.make_node("Clip", ["scaled", "lo", "hi"], ["output"])], "exposure",
        [helper.make_tensor_value_info("input", F, [1, 3, 6, 8]), helper.make_tensor_value_info("exposure", F, [1])],
        [helper.make_tensor_value_info("output", F, [1, 3, 6, 8])],
        [numpy_helper.from_array(np.zeros(1, np.float32), "lo"), numpy_helper.from_array(np.ones(1, np.float32), "hi")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_a_clip_with_one_element_bounds_quantizes(tmp_path):
    exposure_model(tmp_path / "exposure.onnx")
    rng = np.random.default_rng(3)
    pics = [rng.integers(0, 256, (6, 8, 3), dtype=np.uint8) for _ in range(4)]
    gain = np.array([1.5], np.float32)
    ds = write_samples(tmp_path, [(p, gain) for p in pics], prefixes=("p", "g"))
    rk = built_rknn(tmp_path / "exposure.onnx", ds, mean_values=[[0, 0, 0], [0]], std_values=[[255] * 3, [1]])
    for p in pics:
        want = ort_run(tmp_path / "exposure.onnx", {"input": (p / np.float32(255)).transpose(2, 0, 1)[None],
                                                     "exposure": gain})[0]
        got = rk.inference(inputs=[p, gain])[0]
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 1.5 / 255 + 1e-6  # one output step: the range is [0, 1]
        assert got.max() <= 1.0 + 1e-6  # the clip is kept
    rk.release()


@pytest.mark.parametrize("quantize", [False, True])
def test_a_channel_last_input_transposed_straight_to_the_output_builds(tmp_path, quantize):
    """hwc_to_chw: an [N, H, W, 3] input whose only node is Transpose(0, 3, 1, 2) writing the graph output. The
    pre-processing takes that Transpose's place, so the output needs a node of its own to keep its name."""
    g = helper.make_graph([helper.make_node("Transpose", ["input"], ["output"], perm=[0, 3, 1, 2])], "hwc_to_chw",
                          [helper.make_tensor_value_info("input", F, [1, 6, 8, 3])],
                          [helper.make_tensor_value_info("output", F, [1, 3, 6, 8])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "t.onnx")
    rng = np.random.default_rng(4)
    pics = [rng.integers(0, 256, (6, 8, 3), dtype=np.uint8) for _ in range(3)]
    ds = write_samples(tmp_path, pics) if quantize else None
    rk = built_rknn(tmp_path / "t.onnx", ds, mean_values=[[0, 0, 0]], std_values=[[255] * 3])
    for p in pics:
        got = rk.inference(inputs=[p])[0]
        np.testing.assert_allclose(got, p.transpose(2, 0, 1)[None] / 255, atol=0.5 / 255 + 1e-6 if quantize else 1e-6)
    rk.release()
