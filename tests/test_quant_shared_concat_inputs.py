"""A tensor that several Concats join keeps a scale of its own at each (algorithms/concat_inputs.py). Concat inputs
share the output's scale, so one tensor in two Concats linked both into one scale group: AGLLNet (a low-light
enhancer) joins its attention map to ten tensors in seven Concats, and the chain put its input image on a scale four
times the image's range (23.0 dB against the float picture; rknn-toolkit2 36.9, openrknn now 39)."""

from __future__ import annotations

import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper

from conftest import write_samples
from openrknn.api import RKNN

C, H, W = 3, 8, 8


def _model(path):
    """s = clip(conv(x), 0, 1) joins r = Relu(conv(x)), also within [0, 1], in one Concat (read by a MaxPool: 'near')
    and a wide map of [0, about 4] in another, which a conv reads ('far')."""
    rng = np.random.default_rng(2)
    n = helper.make_node
    inits = [numpy_helper.from_array((rng.standard_normal((C, C, 1, 1)) * 2).astype(np.float32), "w_s"),
             numpy_helper.from_array((np.abs(rng.standard_normal((C, C, 1, 1))) * 0.3).astype(np.float32), "w_r"),
             numpy_helper.from_array((np.abs(rng.standard_normal((C, C, 1, 1))) * 1.3).astype(np.float32), "w_w"),
             numpy_helper.from_array((rng.standard_normal((C, 2 * C, 1, 1)) * 0.3).astype(np.float32), "w_f"),
             numpy_helper.from_array(np.zeros(1, np.float32), "zero"), numpy_helper.from_array(np.ones(1, np.float32),
                                                                                             "one")]
    nodes = [n("Conv", ["x", "w_s"], ["cs"]), n("Clip", ["cs", "zero", "one"], ["s"]),
             n("Conv", ["x", "w_r"], ["cr"]), n("Relu", ["cr"], ["r"]),
             n("Conv", ["x", "w_w"], ["cw"]), n("Relu", ["cw"], ["wide"]),
             n("Concat", ["s", "r"], ["c1"], axis=1), n("MaxPool", ["c1"], ["near"], kernel_shape=[1, 1]),
             n("Concat", ["s", "wide"], ["c2"], axis=1), n("Conv", ["c2", "w_f"], ["far"])]
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, H, W])],
                          [helper.make_tensor_value_info("near", TensorProto.FLOAT, [1, 2 * C, H, W]),
                           helper.make_tensor_value_info("far", TensorProto.FLOAT, [1, C, H, W])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_a_tensor_in_two_concats_does_not_chain_their_scales(tmp_path, monkeypatch):
    path = _model(tmp_path / "m.onnx")
    rng = np.random.default_rng(5)
    pics = [rng.uniform(0, 1, (H, W, C)).astype(np.float32) for _ in range(8)]
    ds = write_samples(tmp_path, pics[:6])
    monkeypatch.chdir(tmp_path)
    rk = RKNN(verbose=False)
    assert rk.config(target_platform="rk3588") == 0 and rk.load_onnx(str(path)) == 0
    assert rk.hybrid_quantization_step1(dataset=str(ds), proposal=False) == 0
    ranges = {k: (v["min_value"][0], v["max_value"][0]) for k, v in
              yaml.safe_load((tmp_path / "m.quantization.cfg").read_text())["quantize_parameters"].items()
              if v.get("kind") == "activation"}
    assert ranges["c2"][1] > 4  # the wide concat
    # the near concat keeps the range of the values it holds, not the far one's through s
    assert ranges["c1"][1] < 1.01 and ranges["s"][1] < 1.01 and ranges["r"][1] < 1.01, ranges
    rk.release()
