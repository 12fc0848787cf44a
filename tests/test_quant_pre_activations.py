"""Pre-activations the chip requantizes: on RKNPU2 a depthwise conv's output before its SiLU is an int8 tensor
(rknn-toolkit2 2.5.0's compiled layers and its simulator's dumps, docs/vendor.md), so the quantizer makes it a
quantization point and picks its range for the activation's output. A conv's output before a standalone Sigmoid is
not (the simulator takes the Sigmoid of the unrounded sum); a build for TFLite requantizes both."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import write_npy_dataset
from openrknn.quant import QuantOptions, quantize
from openrknn.quant.algorithms.activations import LOWEST_CUT, activation_range
from openrknn.quant.dataset import InputSpec, read_dataset
from openrknn.quant.ir import GraphInfo, normalize
from openrknn.quant.plan import build_plan
from openrknn.quant.schemes import TensorFormat
from test_quant_split import stem_model

INT8 = TensorFormat(8, True, False)
rng = np.random.default_rng(3)


def _blocks() -> onnx.ModelProto:
    """NCHW: conv + SiLU ("a"), depthwise conv + SiLU ("b"), depthwise conv + ReLU ("r"), conv + Sigmoid head."""
    n = helper.make_node
    inits = [numpy_helper.from_array(a.astype(np.float32), k) for k, a in [
        ("w1", rng.normal(0, 0.3, (8, 3, 3, 3))), ("wd", rng.normal(0, 0.5, (8, 1, 3, 3))),
        ("wr", rng.normal(0, 0.5, (8, 1, 3, 3))), ("wh", rng.normal(0, 0.3, (2, 8, 1, 1)))]]
    nodes = [n("Conv", ["x", "w1"], ["c1"], pads=[1] * 4), n("Sigmoid", ["c1"], ["s1"]), n("Mul", ["c1", "s1"], ["a"]),
             n("Conv", ["a", "wd"], ["dw"], pads=[1] * 4, group=8), n("Sigmoid", ["dw"], ["s2"]),
             n("Mul", ["dw", "s2"], ["b"]),
             n("Conv", ["b", "wr"], ["dr"], pads=[1] * 4, group=8), n("Relu", ["dr"], ["r"]),
             n("Conv", ["r", "wh"], ["logit"]), n("Sigmoid", ["logit"], ["score"])]
    g = helper.make_graph(nodes, "blocks", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
                          [helper.make_tensor_value_info("score", TensorProto.FLOAT, [1, 2, 12, 12])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_the_plan_requantizes_depthwise_silu_inputs_only():
    info = GraphInfo(normalize(_blocks()))
    plan = build_plan(info, requantized_pre_activations=True)
    assert plan.pre_activations == {"dw": "silu"}
    assert "dw" in plan.points
    # a standard conv's SiLU, a depthwise conv's ReLU and a score head's Sigmoid stay fused, in full precision
    assert {"c1", "dr", "logit"} <= plan.internal and not {"c1", "dr", "logit"} & set(plan.points)
    assert plan.fused["score"] == "Sigmoid"
    assert plan.fused["b"] == "SiLU" and "s2" in plan.internal  # the SiLU itself is still one step
    idealised = build_plan(info)
    assert idealised.pre_activations == {} and {"c1", "dw", "dr", "logit"} <= idealised.internal


def test_activation_range_keeps_the_top_and_the_silu_dip():
    """A SiLU input: with 'normal' the upper end stays the calibrated maximum; the lower end moves up from a far
    outlier (the SiLU is flat there) but never past the SiLU's minimum at -1.28, which our output range holds."""
    x = np.concatenate([rng.normal(0.0, 1.5, 200_000), [-60.0, 12.0]])
    hist, _ = np.histogram(x, bins=2048, range=(x.min(), x.max()))
    lo, hi = activation_range(hist, float(x.min()), float(x.max()), "silu", False, INT8)
    assert hi == float(x.max())
    assert -60.0 < lo <= LOWEST_CUT["silu"]
    lo2, hi2 = activation_range(hist, float(x.min()), float(x.max()), "silu", True, INT8)
    assert hi2 < hi  # with a clipping algorithm the rare top values give way to resolution
    # a sigmoid's input: both tails are flat, the lower end moves well inside the outlier
    lo3, _ = activation_range(hist, float(x.min()), float(x.max()), "sigmoid", False, INT8)
    assert -60.0 < lo3 < -3.0


def test_the_tflite_policy_requantizes_every_conv_before_an_activation_tflite_cannot_fuse():
    """pre_activation_points='tflite' (plan.ALL_PRE_ACTIVATIONS): the standard conv before its SiLU is a
    pre-activation too; the depthwise conv before its ReLU stays fused (TFLite fuses ReLU into a conv)."""
    from openrknn.quant.plan import ALL_PRE_ACTIVATIONS

    plan = build_plan(GraphInfo(normalize(_blocks())), requantized_pre_activations=ALL_PRE_ACTIVATIONS)
    assert plan.pre_activations == {"c1": "silu", "dw": "silu", "logit": "sigmoid"}
    assert "dr" in plan.internal and "dr" not in plan.points


def test_activation_range_for_hardswish_cuts_only_its_flat_part():
    """HardSwish is zero below -3: the lower end moves up from a far outlier to no higher than -3."""
    x = np.concatenate([rng.normal(0.0, 1.5, 200_000), [-40.0, 9.0]])
    hist, _ = np.histogram(x, bins=2048, range=(x.min(), x.max()))
    lo, hi = activation_range(hist, float(x.min()), float(x.max()), "hardswish", False, INT8)
    assert hi == float(x.max()) and -40.0 < lo <= LOWEST_CUT["hardswish"] == -3.0


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    return read_dataset(write_npy_dataset(tmp_path_factory.mktemp("pre"), (12, 12, 3)),
                        [InputSpec("raw", (1, 12, 12, 3))])


def _producers(model: onnx.ModelProto) -> dict:
    return {o: n.op_type for n in model.graph.node for o in n.output}


@pytest.mark.parametrize("act", ["silu", "sigmoid", "hardswish"])
def test_the_range_errors_are_the_bin_by_bin_sum(act):
    """_RangeErrors' level runs from arithmetic and prefix sums give what quantizing every bin centre gives:
    sum over bins of count * (f(dequant(quant(c))) - f(c))^2, for many ranges at once, empty bins included."""
    from openrknn.quant.algorithms.activations import ACTIVATIONS, _RangeErrors, _centers
    from openrknn.quant.schemes import qparams

    x = np.concatenate([rng.normal(0.3, 2.0, 30_000), [-40.0, 9.0]])
    lo, hi = float(x.min()), float(x.max())
    hist = np.histogram(x, bins=1024, range=(lo, hi))[0].astype(np.float64)
    hist[::7] = 0.0
    los, his = np.linspace(lo, -1.0, 40), np.linspace(hi, hi / 2, 40)
    got = _RangeErrors(hist, lo, hi, act, INT8, len(los))(los, his)
    f, c = ACTIVATIONS[act], _centers(lo, hi, hist.size)
    s, z = qparams(los, his, INT8)
    for k in range(len(los)):
        q = np.clip(np.round(c / s[k]) + z[k], INT8.qmin, INT8.qmax)
        want = np.sum(hist * (f((q - z[k]) * float(s[k])) - f(c)) ** 2)
        assert got[k] == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_the_searches_on_a_thread_pool_give_the_ranges_of_one_by_one():
    """pipeline.search_pre_activations runs every search the candidate sets need at once; each range is the one
    activation_range gives alone (the clipped-top search for kl/mmse, the kept-top one for normal)."""
    from openrknn.quant.calibrate import Stats
    from openrknn.quant.pipeline import search_pre_activations
    from openrknn.quant.plan import ALL_PRE_ACTIVATIONS
    from openrknn.quant.schemes import get_scheme

    info = GraphInfo(normalize(_blocks()))
    plan = build_plan(info, requantized_pre_activations=ALL_PRE_ACTIVATIONS)  # a SiLU's and a Sigmoid's input
    stats = Stats()
    for t, (mu, sd) in {"dw": (0.5, 2.0), "logit": (-1.0, 3.0), "c1": (0.0, 1.0)}.items():
        x = rng.normal(mu, sd, 50_000)
        stats.minmax[t] = (float(x.min()), float(x.max()))
        stats.hist[t] = np.histogram(x, bins=2048, range=stats.minmax[t])[0]
    scheme = get_scheme("w8a8")
    searched = {}
    search_pre_activations(info, plan, stats, scheme, ["normal", "kl_divergence", "mmse"], searched, threads=2)
    fmt = TensorFormat(8, True, False)
    assert set(searched) == {(t, clip) for t in ("c1", "dw", "logit") for clip in (False, True)}
    for (t, clip), got in searched.items():
        assert got == activation_range(stats.hist[t], *stats.minmax[t], plan.pre_activations[t], clip, fmt)
    assert searched[("dw", True)] != searched[("dw", False)]  # the clipped search did move the top


def test_rk3588_builds_store_the_depthwise_output_before_its_silu_as_integers(calib):
    model = stem_model()
    rk3588 = quantize(model, calib, QuantOptions(dtype="w8a8", target="rk3588", range_split=False), progress=False)
    rk1808 = quantize(model, calib, QuantOptions(target="rk1808", range_split=False), progress=False)
    sig_in = {n.output[0]: n.input[0] for n in rk3588.model.graph.node if n.op_type == "Sigmoid"}
    prod = _producers(rk3588.model)
    assert prod[sig_in["g2"]] == "DequantizeLinear" and "c2" in rk3588.tensors  # the depthwise conv's output
    assert prod[sig_in["g1"]] == "Conv" and "c1" not in rk3588.tensors  # a standard conv's: fused in float
    assert "c2" not in rk1808.tensors  # RKNPU1: not measured, kept as before
    # its range is chosen for the SiLU: the dip at -1.28 stays representable, the top is the calibrated maximum
    t = rk3588.tensors["c2"]
    lo = (-128 - t["zero_point"][0]) * t["scale"][0]
    assert lo <= LOWEST_CUT["silu"] + t["scale"][0]


def test_range_split_gives_each_part_of_a_requantized_output_its_own_range(calib):
    """YOLOX's pattern: range split cuts a conv output read by a depthwise conv + SiLU; the depthwise conv is cut
    into parts, and each part's requantized output gets the range of its own channels."""
    model = stem_model()
    feeds = list(calib)
    res = quantize(model, calib, QuantOptions(dtype="w8a8", target="rk3588", bias_correction=False), progress=False)
    assert res.report["range_split"]["tensors"]
    parts = sorted(t for t in res.tensors if t.startswith("c2__split"))
    assert len(parts) >= 2 and len({res.tensors[t]["scale"][0] for t in parts}) == len(parts)
    import onnxruntime as ort

    def run(m, f):
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, f)[0]

    cos = [float(np.dot(a.ravel(), b.ravel()) / np.linalg.norm(a) / np.linalg.norm(b))
           for a, b in ((run(res.model, f), run(model, f)) for f in feeds)]
    assert min(cos) > 0.99


def test_rknpu2_runs_a_range_split_remap_as_its_own_layer(calib):
    """Range split's remap (x -> k x + b per part, read by the concat) after a depthwise conv + SiLU: the idealised
    plan folds it into the SiLU's output quantizer; rknn-toolkit2 compiles it as a layer of its own after the
    SiLU's int8 output, so on RKNPU2 each part's SiLU output is a quantization point with the range of its own
    channels, and the remapped part another."""
    from openrknn.quant.algorithms.split import channel_ranges, range_split
    from test_quant_split import _dw_samples, remap_model

    model = normalize(remap_model())
    ranges = channel_ranges(model, ["stem", "dw"], calib)
    samples = {"dw": _dw_samples(model, calib)}
    split, report, parts = range_split(model, ranges, samples=samples, requantized_pre_activations=True)
    assert report["tensors"][0]["remapped"] == ["dw"]
    chip = build_plan(GraphInfo(split), requantized_pre_activations=True)
    idealised = build_plan(GraphInfo(split))
    silu_parts = [t for t in parts if t.startswith("dw__split") and t.count("__") == 1 and
                  any(o.startswith(t + "__") for o in parts)]  # the parts a remap follows
    assert silu_parts and all(chip.fused[t] == "SiLU" and t in chip.points for t in silu_parts)
    assert all(t in idealised.internal for t in silu_parts)
    remapped = [t for t in chip.points if chip.fused.get(t) == "affine"]
    assert remapped and all(idealised.fused[t] == "SiLU+affine" for t in remapped)
    # built for rk3588, each part's SiLU output gets the range of its own channels (they span 50x)
    res = quantize(remap_model(), calib, QuantOptions(dtype="w8a8", target="rk3588"), progress=False)
    scales = {res.tensors[t]["scale"][0] for t in res.tensors if t.startswith("dw__split") and t.count("__") == 1}
    assert len(scales) >= 2


def _with_learnable_affine(model: onnx.ModelProto) -> onnx.ModelProto:
    """PP-LCNet's pattern: a scalar multiply and add (a "learnable affine block") after the depthwise SiLU."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    n = helper.make_node
    m.graph.initializer.extend([numpy_helper.from_array(np.array(1.5, np.float32), "lab_k"),
                                numpy_helper.from_array(np.array(0.25, np.float32), "lab_b")])
    nodes = list(m.graph.node)
    for node in nodes:
        node.input[:] = ["lab" if t == "dw" and node.op_type == "Conv" else t for t in node.input]
    at = next(i for i, node in enumerate(nodes) if node.output[0] == "dw") + 1
    nodes[at:at] = [n("Mul", ["dw", "lab_k"], ["lab_m"]), n("Add", ["lab_m", "lab_b"], ["lab"])]
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return m


def test_a_learnable_affine_before_the_remap_stays_with_its_activation(calib):
    """The remap rule must find range split's remap behind a model's own scalar affine (PP-OCRv4/v5 failed to
    build before): the tensor entering the remap is the point, the activation and the affine before it one step."""
    from test_quant_split import remap_model

    model = _with_learnable_affine(remap_model())
    res = quantize(model, calib, QuantOptions(dtype="w8a8", target="rk3588"), progress=False)
    assert res.report["range_split"]["tensors"][0].get("remapped") == ["lab"]
    entering = [t for t in res.tensors if t.startswith("lab__split") and t.count("__") == 1]
    assert entering and not any(t.startswith("dw__split") for t in res.tensors)  # the SiLU + affine: one step
    import onnxruntime as ort

    def run(m, f):
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, f)[0]

    for f in calib:
        a, b = run(res.model, f), run(model, f)
        assert float(np.dot(a.ravel(), b.ravel()) / np.linalg.norm(a) / np.linalg.norm(b)) > 0.99
