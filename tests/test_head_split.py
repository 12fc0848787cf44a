"""Head split (quant/algorithms/head_split.py): a conv whose output channels are read in groups of very different
ranges, directly by a channel Split or after a bilinear Resize by channel Slices (M-LSD's head: its centre logits
beside displacement maps twenty times wider), gets one conv per group, so each group has its own int8 scale. The
rewrite is exact; the narrow group's int8 map comes out far closer to the float one than with one shared scale."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import write_samples
from openrknn.api import RKNN
from openrknn.metrics import cosine

H = W = 16


def head_model(split: bool) -> onnx.ModelProto:
    """x [1, 3, 16, 16] -> conv + ReLU (8 features) -> head conv (6 channels: channel 0 a narrow logit map, 1-4 wide
    displacement maps, 5 unused). split: a channel Split [1, 4, 1] reads it; else a bilinear Resize x2 (constant
    sizes) and Slices cut out channel 0 (-> Sigmoid) and channels 1-4, on axes (0, 2, 3, 1) as tf2onnx writes them."""
    rng = np.random.default_rng(4)
    w_head = rng.normal(0, 0.3, (6, 8, 1, 1)).astype(np.float32)
    w_head[1:5] *= 20.0
    i64 = lambda v, name: numpy_helper.from_array(np.asarray(v, np.int64), name)  # noqa: E731
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(w_head, "w_head"),
             numpy_helper.from_array(rng.normal(0, 0.1, 6).astype(np.float32), "b_head")]
    n = helper.make_node
    nodes = [n("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), n("Relu", ["c"], ["f"]),
             n("Conv", ["f", "w_head", "b_head"], ["head"])]
    if split:
        inits.append(i64([1, 4, 1], "sizes"))
        nodes += [n("Split", ["head", "sizes"], ["logit", "disp", "unused"], axis=1), n("Sigmoid", ["logit"], ["p"]),
                  n("Relu", ["unused"], ["unused_relu"])]
        outs = [("p", [1, 1, H, W]), ("disp", [1, 4, H, W]), ("unused_relu", [1, 1, H, W])]
    else:
        whole = 2 ** 31
        inits += [i64([1, 6, 2 * H, 2 * W], "up_sizes"), i64([0, 0, 0, 0], "s0"), i64([whole] * 3 + [1], "e0"),
                  i64([0, 0, 0, 1], "s1"), i64([whole] * 3 + [5], "e1"), i64([0, 2, 3, 1], "axes")]
        nodes += [n("Resize", ["head", "", "", "up_sizes"], ["up"], mode="linear",
                    coordinate_transformation_mode="half_pixel"),
                  n("Slice", ["up", "s0", "e0", "axes"], ["logit"]), n("Sigmoid", ["logit"], ["p"]),
                  n("Slice", ["up", "s1", "e1", "axes"], ["disp"])]
        outs = [("p", [1, 1, 2 * H, 2 * W]), ("disp", [1, 4, 2 * H, 2 * W])]
    g = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, H, W])],
                          [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in outs],
                          inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _samples(rng, n):
    return [rng.uniform(0, 1, (1, H, W, 3)).astype(np.float32) for _ in range(n)]


@pytest.fixture(scope="module", params=[False, True], ids=["resize_slices", "split"])
def setup(request, tmp_path_factory):
    d = tmp_path_factory.mktemp("head_split")
    onnx.save(head_model(request.param), d / "m.onnx")
    write_samples(d, _samples(np.random.default_rng(1), 8))
    return d, request.param


def _build(d, **config):
    rk = RKNN(verbose=False)
    assert rk.config(target_platform="rk3588", quantized_dtype="w8a8", mean_values=[[0] * 3],
                     std_values=[[1] * 3], **config) == 0
    assert rk.load_onnx(str(d / "m.onnx")) == 0, rk.last_error
    assert rk.build(do_quantization=True, dataset=str(d / "dataset.txt")) == 0, rk.last_error
    assert rk.init_runtime() == 0
    return rk


def test_each_group_gets_its_own_conv_and_scale(setup):
    d, split = setup
    rk = _build(d)
    report = rk._build.quant_report["head_split"]
    assert report["heads"][0]["groups"] == ([1, 4, 1] if split else [1, 4])
    convs = [n for n in rk._build.model.graph.node if n.op_type == "Conv" and "__split" in n.name]
    assert len(convs) == (3 if split else 2)
    resizes = [n for n in rk._build.model.graph.node if n.op_type == "Resize"]
    assert len(resizes) == (0 if split else 2)  # one copy per group
    ref = ort.InferenceSession(str(d / "m.onnx"), providers=["CPUExecutionProvider"])
    # measured with TFLite's points: on RKNPU2 a Split whose part goes to a Sigmoid is one conv per part anyway
    # (quant/plan.py, as rknn-toolkit2 compiles it), so there the build without head split is as good
    with_split = without = chip_without = 0.0
    cut = _build(d, pre_activation_points="tflite")
    plain = _build(d, range_split=False, pre_activation_points="tflite")  # range_split=False: no head split either
    chip_plain = _build(d, range_split=False)
    for x in _samples(np.random.default_rng(9), 4):
        want = ref.run(None, {"x": x.transpose(0, 3, 1, 2)})
        with_split += cosine(cut.inference(inputs=[x])[0], want[0]) / 4
        without += cosine(plain.inference(inputs=[x])[0], want[0]) / 4
        chip_without += cosine(chip_plain.inference(inputs=[x])[0], want[0]) / 4
    # the narrow map: 255 levels of its own against a few of the displacement maps' range
    assert with_split >= 0.999 and 1 - without > 5 * (1 - with_split), (with_split, without)
    assert (chip_without >= 0.999) == split, chip_without
    for r in (rk, cut, plain, chip_plain):
        r.release()


def test_the_float_graph_is_unchanged(setup):
    """A float build (no rewrite) and the float model under the rewrite compute the same as onnxruntime."""
    from openrknn.quant.algorithms.head_split import find_heads, split_heads
    from openrknn.quant.ir import GraphInfo, normalize

    d, _ = setup
    model = normalize(onnx.load(str(d / "m.onnx")))
    info = GraphInfo(model)
    heads = find_heads(info)
    ranges = {y: (np.array([-1.0] + [-20.0] * 5), np.array([1.0] + [20.0] * 5)) for y in heads}
    rewritten, report, _, _ = split_heads(model, info, heads, ranges, 8.0)
    assert report["heads"]
    a = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(rewritten.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(3).uniform(0, 1, (1, 3, H, W)).astype(np.float32)
    for p, q in zip(a.run(None, {"x": x}), b.run(None, {"x": x})):
        np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-5)


def test_groups_of_similar_ranges_are_left_alone(setup):
    from openrknn.quant.algorithms.head_split import find_heads, split_heads
    from openrknn.quant.ir import GraphInfo, normalize

    d, _ = setup
    model = normalize(onnx.load(str(d / "m.onnx")))
    info = GraphInfo(model)
    heads = find_heads(info)
    ranges = {y: (np.full(6, -5.0), np.full(6, 5.0)) for y in heads}
    same, report, parts, _ = split_heads(model, info, heads, ranges, 8.0)
    assert same is model and report == {} and parts == {}
