"""Range split: an exact graph rewrite that gives channel groups of very different ranges their own scales."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import write_npy_dataset
from openrknn.quant import QuantOptions, quantize
from openrknn.quant.algorithms.split import channel_ranges, group_channels, range_split, split_candidates
from openrknn.quant.dataset import InputSpec, read_dataset
from openrknn.quant.ir import normalize

SPEC = [InputSpec("raw", (1, 12, 12, 3))]


def stem_model(extra_reader: bool = False) -> onnx.ModelProto:
    """Like YOLOX-nano's stem: conv + SiLU whose channels span 1000x in range, read by a depthwise conv + SiLU,
    then a pointwise conv. The tiny channels matter: the depthwise weights amplify them."""
    rng = np.random.default_rng(0)
    gain = np.logspace(0, -3, 8)                                  # channel ranges 1 .. 0.001
    w1 = rng.normal(0, 0.02, (8, 3, 3, 3)) * gain[:, None, None, None]
    wdw = rng.normal(0, 1, (8, 1, 3, 3)) / gain[:, None, None, None]
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in
             [("w1", w1), ("b1", np.zeros(8)), ("wdw", wdw), ("bdw", np.zeros(8)),
              ("wpw", rng.normal(0, 0.5, (4, 8, 1, 1))), ("bpw", np.zeros(4))]]
    n = helper.make_node
    nodes = [n("Transpose", ["raw"], ["x"], perm=[0, 3, 1, 2]),
             n("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]), n("Sigmoid", ["c1"], ["g1"]),
             n("Mul", ["c1", "g1"], ["stem"]),
             n("Conv", ["stem", "wdw", "bdw"], ["c2"], pads=[1, 1, 1, 1], group=8), n("Sigmoid", ["c2"], ["g2"]),
             n("Mul", ["c2", "g2"], ["dw"]),
             n("Conv", ["dw", "wpw", "bpw"], ["out"])]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 12, 12])]
    if extra_reader:  # a non-conv reader of the depthwise output: channels must come back in order
        nodes.append(n("MaxPool", ["dw"], ["pooled"], kernel_shape=[2, 2], strides=[2, 2]))
        outputs.append(helper.make_tensor_value_info("pooled", TensorProto.FLOAT, [1, 8, 6, 6]))
    g = helper.make_graph(nodes, "stem", [helper.make_tensor_value_info("raw", TensorProto.FLOAT, [1, 12, 12, 3])],
                          outputs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    return read_dataset(write_npy_dataset(tmp_path_factory.mktemp("split"), (12, 12, 3)), SPEC)


def _run(model, feed):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feed)[0]


def test_group_channels_cuts_at_the_largest_gaps():
    r = np.array([100.0, 90.0, 80.0, 1.0, 0.9, 0.01])
    groups = group_channels(-0.0 * r, r, max_ratio=16, max_groups=3)
    assert [g.tolist() for g in groups] == [[0, 1, 2], [3, 4], [5]]
    assert group_channels(np.zeros(3), np.array([1.0, 2.0, 3.0])) is None
    # dead (constant zero) channels need no scale of their own: they join the widest group
    assert group_channels(np.zeros(3), np.array([1.0, 2.0, 0.0])) is None
    groups = group_channels(np.zeros(4), np.array([100.0, 0.0, 1.0, 90.0]))
    assert [g.tolist() for g in groups] == [[0, 1, 3], [2]]


@pytest.mark.parametrize("extra_reader", [False, True])
def test_split_is_exact_in_float(calib, extra_reader):
    model = normalize(stem_model(extra_reader))
    cands = split_candidates(model)
    assert cands == ["stem"]
    split, report, parts = range_split(model, channel_ranges(model, cands, calib), max_ratio=16)
    assert set(parts) >= {"stem__split0", "stem__split1", "dw__split0"}
    assert report["tensors"] and report["tensors"][0]["tensor"] == "stem"
    assert sum(report["tensors"][0]["groups"]) == 8
    ops = [n.op_type for n in split.graph.node]
    # conv readers take the group order through permuted weights; any other reader needs the Gather
    assert ops.count("Conv") > 3 and ("Gather" in ops) == extra_reader
    for feed in calib:
        np.testing.assert_allclose(_run(split, feed), _run(model, feed), rtol=1e-4, atol=1e-4)


def test_split_rescues_small_channels_after_quantization(calib):
    model = stem_model()
    feeds = list(calib)
    ref = [_run(model, f) for f in feeds]

    def err(res):
        return np.mean([np.abs(_run(res.model, f) - y).mean() / np.abs(y).mean() for f, y in zip(feeds, ref)])

    on = quantize(model, calib, QuantOptions(dtype="w8a8", bias_correction=False, target="rk3588"), progress=False)
    off = quantize(model, calib, QuantOptions(dtype="w8a8", bias_correction=False, range_split=False,
                                              target="rk3588"), progress=False)
    assert on.report["range_split"]["tensors"]
    assert "stem" not in on.tensors and "stem__split0" in on.tensors
    assert on.tensors["stem__split0"]["scale"] != on.tensors["stem__split1"]["scale"]
    assert "dw" in on.tensors  # consumers' outputs keep their names
    assert err(on) < 0.5 * err(off)


def test_accuracy_analysis_undoes_the_channel_grouping(calib, tmp_path):
    from openrknn.quant.accuracy import accuracy_analysis
    from openrknn.quant.qdq import channel_orders

    model = stem_model()
    res = quantize(model, calib, QuantOptions(dtype="w8a8", target="rk3588"), progress=False)
    assert "dw" in channel_orders(res.model)  # its reader (the pointwise conv) takes the group order
    out = accuracy_analysis(model, res.model, list(calib)[:2], tmp_path, progress=False)
    rows = {r["name"]: r for r in out["layers"]}
    assert rows["dw"]["entire_cos"] > 0.99 and rows["dw"]["single_cos"] > 0.99
    assert rows["out"]["entire_cos"] > 0.99
