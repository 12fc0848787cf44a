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


def _dw_pw_model(w1, wdw, wpw, bpw, extra_reader: bool = False) -> onnx.ModelProto:
    """NHWC input -> conv + SiLU ("stem") -> depthwise conv + SiLU ("dw") -> pointwise conv ("out")."""
    inits = [numpy_helper.from_array(np.asarray(a, np.float32), n) for n, a in
             [("w1", w1), ("b1", np.zeros(8)), ("wdw", wdw), ("bdw", np.zeros(8)), ("wpw", wpw), ("bpw", bpw)]]
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
    g = helper.make_graph(nodes, "dw_pw", [helper.make_tensor_value_info("raw", TensorProto.FLOAT, [1, 12, 12, 3])],
                          outputs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def stem_model(extra_reader: bool = False) -> onnx.ModelProto:
    """Like YOLOX-nano's stem: conv + SiLU whose channels span 1000x in range, read by a depthwise conv + SiLU,
    then a pointwise conv. The tiny channels matter: the depthwise weights amplify them."""
    rng = np.random.default_rng(0)
    gain = np.logspace(0, -3, 8)                                  # channel ranges 1 .. 0.001
    w1 = rng.normal(0, 0.02, (8, 3, 3, 3)) * gain[:, None, None, None]
    wdw = rng.normal(0, 1, (8, 1, 3, 3)) / gain[:, None, None, None]
    return _dw_pw_model(w1, wdw, rng.normal(0, 0.5, (4, 8, 1, 1)), np.zeros(4), extra_reader)


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    return read_dataset(write_npy_dataset(tmp_path_factory.mktemp("split"), (12, 12, 3)), SPEC)


def _run(model, feed):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feed)[0]


def _error_against(model, calib):
    """err(result): a QuantResult's mean relative output error against ``model`` in float over the calibration
    feeds."""
    feeds = list(calib)
    ref = [_run(model, f) for f in feeds]

    def err(res):
        return np.mean([np.abs(_run(res.model, f) - y).mean() / np.abs(y).mean() for f, y in zip(feeds, ref)])

    return err


def test_group_channels_cuts_at_the_largest_gaps():
    r = np.array([100.0, 90.0, 80.0, 1.0, 0.9, 0.01])
    groups = group_channels(-0.0 * r, r, max_ratio=16, max_groups=3)
    assert [g.tolist() for g in groups] == [[0, 1, 2], [3, 4], [5]]
    assert group_channels(np.zeros(3), np.array([1.0, 2.0, 3.0])) is None
    # dead (constant zero) channels need no scale of their own: they join the widest group
    assert group_channels(np.zeros(3), np.array([1.0, 2.0, 0.0])) is None
    groups = group_channels(np.zeros(4), np.array([100.0, 0.0, 1.0, 90.0]))
    assert [g.tolist() for g in groups] == [[0, 1, 3], [2]]


def test_a_part_holding_a_rarely_firing_channel_gets_headroom_above_it():
    """A landmark net's ReLU channels that fire on one face in 19 set their narrow part's range and were clipped on
    the next faces (2-16x their calibrated top): such a channel (steadiness under STEADY) widens its part's range
    to HEADROOM times its top, never past the tensor's top; steady parts and the widest keep theirs."""
    from openrknn.quant.algorithms.split import HEADROOM, part_range

    hi = np.array([100.0, 90.0, 2.0, 0.9, 0.5, 0.1])
    lo = np.zeros(6)
    steady = np.array([1.0, 0.9, 0.8, 0.0, 0.6, 0.02])
    assert part_range(lo, hi, np.array([2, 4])) == (0.0, 2.0)
    assert part_range(lo, hi, np.array([2, 4]), steady) == (0.0, 2.0)          # all steady: as calibrated
    assert part_range(lo, hi, np.array([3, 4]), steady) == (0.0, HEADROOM * 0.9)
    assert part_range(lo, hi, np.array([2, 5]), steady) == (0.0, 2.0)          # 8 x 0.1 is inside the steady top
    assert part_range(lo, hi, np.array([0, 1, 3]), steady) == (0.0, 100.0)    # never past the tensor's top
    hi[3] = 20.0
    assert part_range(lo, hi, np.array([3]), steady) == (0.0, 100.0)


@pytest.mark.parametrize("extra_reader", [False, True])
def test_split_is_exact_in_float(calib, extra_reader):
    model = normalize(stem_model(extra_reader))
    cands = split_candidates(model)
    # the depthwise output is remappable only when convs alone read it
    assert cands == {"stem": [] if extra_reader else ["dw"]}
    split, report, parts = range_split(model, channel_ranges(model, list(cands), calib), max_ratio=16)
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
    err = _error_against(model, calib)

    on = quantize(model, calib, QuantOptions(dtype="w8a8", bias_correction=False, target="rk3588"), progress=False)
    off = quantize(model, calib, QuantOptions(dtype="w8a8", bias_correction=False, range_split=False,
                                              target="rk3588"), progress=False)
    assert on.report["range_split"]["tensors"]
    assert "stem" not in on.tensors and "stem__split0" in on.tensors
    assert on.tensors["stem__split0"]["scale"] != on.tensors["stem__split1"]["scale"]
    assert "dw" in on.tensors  # consumers' outputs keep their names
    assert err(on) < 0.5 * err(off)


def _spread_weights(decades: float):
    """Stem, depthwise and pointwise weights whose stem channel ranges span 1 .. 10^-decades; the depthwise weights
    amplify the narrow channels back to the others' size."""
    rng = np.random.default_rng(0)
    gain = np.logspace(0, -decades, 8)
    return (rng.normal(0, 0.02, (8, 3, 3, 3)) * gain[:, None, None, None],
            rng.normal(0, 1, (8, 1, 3, 3)) / gain[:, None, None, None],
            rng.normal(0, 0.5, (8, 8, 1, 1)), np.zeros(8))


def csp_model(decades: float = 3.0) -> onnx.ModelProto:
    """Like a CSPNeXt block (RTMDet): the stem's output is read by a depthwise conv + SiLU -> pointwise conv branch
    and by the residual Add that closes the block."""
    model = _dw_pw_model(*_spread_weights(decades))
    g = model.graph
    g.node[-1].output[0] = "branch"
    g.node.append(helper.make_node("Add", ["stem", "branch"], ["out"]))
    g.output[0].CopyFrom(helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 8, 12, 12]))
    return model


def test_a_tensor_a_residual_add_reads_too_is_split_for_its_depthwise_reader(calib):
    model = normalize(csp_model())
    assert list(split_candidates(model)) == ["stem"]
    split, report, parts = range_split(model, channel_ranges(model, ["stem"], calib), max_ratio=8)
    # at most two parts, and the Add reads them joined back in channel order at the whole tensor's range
    assert report["tensors"][0]["tensor"] == "stem" and len(report["tensors"][0]["groups"]) == 2
    assert parts["stem__split_cat"] == ("stem", None, None)
    made = {o: n for n in split.graph.node for o in n.output}
    assert made["stem"].op_type == "Gather" and made["stem__split_cat"].op_type == "Concat"
    assert sorted(n.op_type for n in split.graph.node if "stem" in n.input) == ["Add"]
    for feed in calib:
        np.testing.assert_allclose(_run(split, feed), _run(model, feed), rtol=1e-4, atol=1e-4)

    err = _error_against(model, calib)
    opts = dict(dtype="w8a8", bias_correction=False, target="rk3588")
    on = quantize(model, calib, QuantOptions(**opts), progress=False)
    off = quantize(model, calib, QuantOptions(**opts, range_split=False), progress=False)
    assert on.tensors["stem__split0"]["scale"] != on.tensors["stem__split1"]["scale"]
    # the joined tensor keeps the scale the unsplit one had
    assert on.tensors["stem__split_cat"]["scale"] == pytest.approx(off.tensors["stem"]["scale"], rel=1e-6)
    assert err(on) < 0.5 * err(off)


def test_a_tensor_a_plain_conv_reads_beside_its_depthwise_reader_is_left_whole():
    model = csp_model()
    g = model.graph
    g.initializer.append(numpy_helper.from_array(np.full((8, 8, 1, 1), 0.1, np.float32), "wl"))
    g.node.insert(len(g.node) - 1, helper.make_node("Conv", ["stem", "wl"], ["lateral"]))
    g.node[-1].input[0] = "lateral"
    assert split_candidates(normalize(model)) == {}


def test_a_tensor_other_ops_read_too_needs_a_wider_spread_to_be_split(calib):
    """Channel ranges 10x apart: enough for a tensor only depthwise convs read, not for one a residual Add reads
    too (its split adds the join's two ops and helps one reader)."""
    for model, split in ((_dw_pw_model(*_spread_weights(1.0)), True), (csp_model(1.0), False)):
        model = normalize(model)
        report = range_split(model, channel_ranges(model, ["stem"], calib), max_ratio=8)[1]
        assert bool(report["tensors"]) == split


def test_tflite_pre_activation_points_are_split_with_their_silu(calib):
    """pre_activation_points='tflite': the stem conv's own output (before its SiLU) is an int8 point; when range
    split cuts the SiLU output into channel groups, that point is cut into the same groups, each with its range."""
    model = stem_model()
    err = _error_against(model, calib)

    chip = quantize(model, calib, QuantOptions(dtype="w8a8", bias_correction=False, target="rk3588"), progress=False)
    tfl = quantize(model, calib, QuantOptions(dtype="w8a8", bias_correction=False, target="rk3588",
                                              pre_activation_points="tflite"), progress=False)
    assert not any(t.startswith("c1") for t in chip.tensors)          # the chip applies the SiLU inside the conv
    assert {"c1__split0", "c1__split1"} <= set(tfl.tensors) and "c1" not in tfl.tensors
    assert tfl.tensors["c1__split0"]["scale"] != tfl.tensors["c1__split1"]["scale"]
    # the depthwise conv's own output is cut into parts too, as on the chip
    assert any(t.startswith("c2__split") for t in tfl.tensors) and any(t.startswith("c2__split") for t in chip.tensors)
    assert err(tfl) < 1.5 * err(chip)


def _hardswish_affine_model() -> onnx.ModelProto:
    """PP-LCNetV3's block: conv -> HardSwish -> learnable scalar affine (x * k + b) -> depthwise conv -> HardSwish
    -> affine -> pointwise conv; the stem's channels span 1000x in range, so range split cuts them."""
    rng = np.random.default_rng(4)
    gain = np.logspace(0, -3, 8)
    arrays = [("w1", rng.normal(0, 0.3, (8, 3, 3, 3)) * gain[:, None, None, None]), ("b1", np.zeros(8)),
              ("wdw", rng.normal(0, 1, (8, 1, 3, 3)) / gain[:, None, None, None]), ("bdw", np.zeros(8)),
              ("wpw", rng.normal(0, 0.5, (4, 8, 1, 1))), ("k", 1.3), ("b", 0.05)]
    inits = [numpy_helper.from_array(np.asarray(a, np.float32), n) for n, a in arrays]
    n = helper.make_node
    nodes = [n("Transpose", ["raw"], ["x"], perm=[0, 3, 1, 2]),
             n("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]), n("HardSwish", ["c1"], ["h1"]),
             n("Mul", ["h1", "k"], ["s1"]), n("Add", ["s1", "b"], ["stem"]),
             n("Conv", ["stem", "wdw", "bdw"], ["c2"], pads=[1, 1, 1, 1], group=8), n("HardSwish", ["c2"], ["h2"]),
             n("Mul", ["h2", "k"], ["s2"]), n("Add", ["s2", "b"], ["dw"]),
             n("Conv", ["dw", "wpw"], ["out"])]
    g = helper.make_graph(nodes, "lcnet", [helper.make_tensor_value_info("raw", TensorProto.FLOAT, [1, 12, 12, 3])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 12, 12])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_tflite_pre_activation_points_before_hardswish_and_an_affine_are_split(calib):
    """The same with HardSwish and a scalar affine after it (PP-OCRv5 det's blocks): the requantized conv output is
    found through the affine and cut into the split's groups; the remap after the depthwise HardSwish is absorbed."""
    model = _hardswish_affine_model()
    res = quantize(model, calib, QuantOptions(dtype="w8a8", bias_correction=False, target="rk3588",
                                              pre_activation_points="tflite"), progress=False)
    assert res.report["range_split"]["tensors"]
    assert {"c1__split0", "c1__split1"} <= set(res.tensors)
    assert _error_against(model, calib)(res) < 0.05


def test_accuracy_analysis_undoes_the_channel_grouping(calib, tmp_path):
    from openrknn.analysis.accuracy import accuracy_analysis
    from openrknn.quant.qdq import channel_orders

    model = stem_model()
    res = quantize(model, calib, QuantOptions(dtype="w8a8", target="rk3588"), progress=False)
    assert "dw" in channel_orders(res.model)  # its reader (the pointwise conv) takes the group order
    out = accuracy_analysis(model, res.model, list(calib)[:2], tmp_path, progress=False)
    rows = {r["name"]: r for r in out["layers"]}
    assert rows["dw"]["entire_cos"] > 0.99 and rows["dw"]["single_cos"] > 0.99
    assert rows["out"]["entire_cos"] > 0.99


def test_accuracy_analysis_has_a_row_for_the_split_tensor(calib, tmp_path):
    """The split point exists in the quantized graph only as parts that feed the next split layer directly; its row
    takes the parts' channels back (issue 20: 63 YOLOX-nano layers showed no cosine)."""
    import onnxruntime as ort

    from openrknn.analysis.accuracy import accuracy_analysis
    from openrknn.metrics import cosine
    from openrknn.quant.qdq import channel_parts, node_outputs, with_outputs

    model = stem_model()
    res = quantize(model, calib, QuantOptions(dtype="w8a8", target="rk3588"), progress=False)
    assert "stem" not in node_outputs(res.model)
    feed = next(iter(calib))
    out = accuracy_analysis(model, res.model, [feed], tmp_path, progress=False)
    rows = {r["name"]: r for r in out["layers"]}
    stem = rows["stem"]
    assert stem["layer"] == "Mul_3" and len(stem["parts"]) >= 2  # the user's node (unnamed: graph_info's name)
    assert stem["single_cos"] > 0.99
    so = ort.SessionOptions()
    so.log_severity_level = 3
    want = ort.InferenceSession(with_outputs(model, ["stem"]).SerializeToString(), so,
                                providers=["CPUExecutionProvider"]).run(["stem"], feed)[0]
    got = ort.InferenceSession(with_outputs(res.model, stem["parts"]).SerializeToString(), so,
                               providers=["CPUExecutionProvider"]).run(stem["parts"], feed)
    whole = np.zeros_like(want)
    for p, values in zip(stem["parts"], got):
        whole[:, channel_parts(res.model)[p][1]] = values
    assert stem["entire_cos"] == pytest.approx(cosine(want, whole), abs=1e-6)
    assert "Mul_3" in (tmp_path / "error_analysis.txt").read_text()


def remap_model() -> onnx.ModelProto:
    """conv + SiLU -> depthwise conv + SiLU whose outputs span 50x in range -> pointwise conv whose weights
    amplify the narrow channels (as YOLOX-nano's first depthwise -> pointwise pair does)."""
    rng = np.random.default_rng(1)
    gain = np.logspace(0, -1.7, 8)
    w1 = rng.normal(0, 0.3, (8, 3, 3, 3))
    wdw = rng.normal(0, 1, (8, 1, 3, 3)) * gain[:, None, None, None]
    wpw = rng.normal(0, 0.5, (4, 8, 1, 1)) / gain[None, :, None, None]
    return _dw_pw_model(w1, wdw, wpw, rng.normal(0, 0.1, 4))


def _dw_samples(model, calib):
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.append(helper.make_tensor_value_info("dw", TensorProto.FLOAT, None))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.concatenate([sess.run(["dw"], f)[0] for f in calib])
    return np.moveaxis(x, 1, 0).reshape(x.shape[1], -1)


def test_remap_is_exact_in_float_and_fused_into_the_parts(calib):
    from openrknn.quant.ir import GraphInfo
    from openrknn.quant.plan import build_plan

    model = normalize(remap_model())
    assert split_candidates(model) == {"stem": ["dw"]}
    ranges = channel_ranges(model, ["stem", "dw"], calib)
    split, report, parts = range_split(model, ranges, samples={"dw": _dw_samples(model, calib)})
    assert report["tensors"][0]["remapped"] == ["dw"]
    factor, offset = report["channel_affine"]["dw"]
    assert factor.min() < 0.2 and factor.max() == 1.0  # narrow groups stretched, the widest left alone
    assert report["pooled"] and all(p.startswith("dw__split") for p in report["pooled"][0])
    # every remapped part covers the widest part's range
    stretched = [r for r in parts.values() if r[2] is not None]
    assert len(stretched) >= 2 and len({tuple(np.round(r[2], 5)) for r in stretched}) <= 2
    for feed in calib:
        np.testing.assert_allclose(_run(split, feed), _run(model, feed), rtol=1e-4, atol=1e-4)
    # the NPU folds x * k + b into the part's output quantizer: no requantization before it
    plan = build_plan(GraphInfo(split))
    muls = [n.output[0] for n in split.graph.node if n.name.endswith("_remap_mul")]
    assert muls and all(m in plan.internal or plan.fused.get(m, "").endswith("+affine") for m in muls)
    assert not any(t.endswith("__split0") and t.startswith("dw") and t in plan.points for t in plan.points
                   if t + "__scaled" in {o for n in split.graph.node for o in n.output})


@pytest.mark.parametrize("dtype", ["w8a8", "asymmetric_quantized-u8"])
def test_remap_cuts_quantization_error(calib, dtype):
    model = remap_model()
    err = _error_against(model, calib)

    opts = dict(dtype=dtype, target="rk3588" if dtype == "w8a8" else "rk1808")
    on = quantize(model, calib, QuantOptions(**opts), progress=False)
    off = quantize(model, calib, QuantOptions(range_remap=False, **opts), progress=False)
    assert on.report["range_split"]["tensors"][0].get("remapped") == ["dw"]
    assert not any(t.get("remapped") for t in off.report.get("range_split", {}).get("tensors", []))
    assert err(on) < 0.7 * err(off)


def test_remap_pools_histograms_for_clipping_algorithms(calib):
    """mmse (and kl_divergence) pick the stretched parts' one range from their summed histograms (the concat's
    distribution), not as the widest of each part's own pick, which would undo the clipping."""
    from openrknn.quant.algorithms.activations import mmse_range
    from openrknn.quant.calibrate import Stats
    from openrknn.quant.ir import GraphInfo
    from openrknn.quant.pipeline import activation_params
    from openrknn.quant.plan import build_plan
    from openrknn.quant.schemes import get_scheme

    model = normalize(remap_model())
    split, report, parts = range_split(model, channel_ranges(model, ["stem", "dw"], calib),
                                       samples={"dw": _dw_samples(model, calib)})
    info = GraphInfo(split)
    plan = build_plan(info)
    pool = report["pooled"][0]
    assert len(pool) >= 2
    stats = Stats(minmax={t: (-0.3, 1.0) for t in plan.sources}, pooled=[pool])
    lo, hi = parts[pool[0]][2]
    bins = np.arange(2048)
    for k, t in enumerate(pool):
        stats.minmax[t] = (lo, hi)
        # one part: many values with a decaying tail; the others: a few values around half the range
        stats.hist[t] = 1e5 * np.exp(-bins / 60.0) if k == 0 else np.where((bins >= 1000) & (bins < 1200), 0.05, 0)
    scheme = get_scheme("w8a8")
    acts = activation_params(info, plan, stats, scheme, "mmse")
    pooled = mmse_range(np.sum([stats.hist[t] for t in pool], 0), lo, hi, scheme.act)
    widest = max(mmse_range(stats.hist[t], lo, hi, scheme.act)[1] for t in pool)
    assert pooled[1] < 0.8 * widest
    assert len({acts[t].scale for t in pool}) == 1
    assert acts[pool[0]].scale == pytest.approx((pooled[1] - pooled[0]) / 255, rel=0.05)


def test_accuracy_analysis_undoes_the_remap(calib, tmp_path):
    from openrknn.analysis.accuracy import accuracy_analysis
    from openrknn.quant.qdq import channel_offsets, channel_scales

    model = remap_model()
    res = quantize(model, calib, QuantOptions(dtype="w8a8", target="rk3588"), progress=False)
    assert "dw" in channel_scales(res.model) and "dw" in channel_offsets(res.model)
    out = accuracy_analysis(model, res.model, list(calib)[:2], tmp_path, progress=False)
    rows = {r["name"]: r for r in out["layers"]}
    assert rows["dw"]["entire_cos"] > 0.99 and rows["dw"]["single_cos"] > 0.99
    assert rows["out"]["entire_cos"] > 0.99


def test_plan_folds_a_scalar_scale_and_shift_into_the_activation():
    from openrknn.quant.ir import GraphInfo
    from openrknn.quant.plan import build_plan

    n = helper.make_node
    inits = [numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w"),
             numpy_helper.from_array(np.array(2.0, np.float32), "k"),
             numpy_helper.from_array(np.array([0.5], np.float32), "b"),
             numpy_helper.from_array(np.ones((1, 4, 1, 1), np.float32), "wide")]
    nodes = [n("Conv", ["x", "w"], ["c"]), n("Sigmoid", ["c"], ["g"]), n("Mul", ["c", "g"], ["silu"]),
             n("Mul", ["silu", "k"], ["scaled"]), n("Add", ["scaled", "b"], ["shifted"]),
             n("Mul", ["shifted", "wide"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])], inits)
    plan = build_plan(GraphInfo(normalize(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))))
    assert {"c", "g", "silu", "scaled"} <= plan.internal
    assert plan.fused["shifted"] == "SiLU+affine" and "shifted" in plan.points
    assert "y" in plan.points and "y" not in plan.fused  # a per-channel multiply is an op of its own


def test_remap_check_weighs_the_remaps_on_the_model_outputs(calib):
    """Remaps are made only when, together, they lower the model's output error enough (remap_check); a check
    that says no leaves the split as it was without them."""
    from openrknn.quant.algorithms.split import remap_check

    model = normalize(remap_model())
    ranges = channel_ranges(model, ["stem", "dw"], calib)
    samples = {"dw": _dw_samples(model, calib)}
    seen = {}

    def confirm(proposed):
        seen.update(proposed)
        return remap_check(model, proposed, ranges, calib)

    split, report, _ = range_split(model, ranges, samples=samples, confirm=confirm)
    check = report["remap_check"]
    assert set(seen) == {"dw"} and check["made"] and report["tensors"][0]["remapped"] == ["dw"]
    assert check["output_error_grouped"] < 0.5 * check["output_error_shared"]
    _, report, _ = range_split(model, ranges, samples=samples, confirm=lambda p: (False, {"made": False}))
    assert not any(t.get("remapped") for t in report["tensors"]) and not report["channel_affine"]
    made, _ = remap_check(model, seen, ranges, calib, min_drop=1.0)  # a drop no model can reach
    assert not made


def test_the_quantized_graph_records_what_range_split_made(calib):
    """Every node range split adds names the float node it was made from, and every part tensor names the float
    tensor and channels it holds (issue 20: per-layer views speak the user's layer names from these records)."""
    import onnxruntime as ort

    from openrknn.quant.qdq import channel_parts, node_origins, with_outputs

    model = normalize(stem_model())
    float_nodes = {n.name: n for n in model.graph.node}
    split, report, _ = range_split(model, channel_ranges(model, ["stem"], calib), max_ratio=16)
    origins, parts = report["node_origins"], report["channel_parts"]
    added = [n.name for n in split.graph.node if n.name not in float_nodes]
    assert added and sorted(origins) == sorted(added)
    assert {float_nodes[o].op_type for o in origins.values()} == {"Conv", "Sigmoid", "Mul"}
    # the parts of the split point and of the depthwise output hold their channels; the split point's, all of them
    # once, values unchanged
    assert {t for t, _ in parts.values()} == {"stem", "dw"}
    stem = sorted(p for p, (t, _) in parts.items() if t == "stem")
    assert len(stem) >= 2 and sorted(np.concatenate([parts[p][1] for p in stem]).tolist()) == list(range(8))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    feed = next(iter(calib))
    want = ort.InferenceSession(with_outputs(model, ["stem"]).SerializeToString(), so,
                                providers=["CPUExecutionProvider"]).run(["stem"], feed)[0]
    got = ort.InferenceSession(with_outputs(split, stem).SerializeToString(), so,
                               providers=["CPUExecutionProvider"]).run(stem, feed)
    for p, values in zip(stem, got):
        np.testing.assert_array_equal(values, want[:, parts[p][1]])

    # the quantizer writes both records into the QDQ graph it returns
    res = quantize(model, calib, QuantOptions(dtype="w8a8", target="rk3588"), progress=False)
    made = [n.name for n in res.model.graph.node
            if n.op_type not in ("QuantizeLinear", "DequantizeLinear") and n.name not in float_nodes]
    assert made and sorted(node_origins(res.model)) == sorted(made)
    assert {t for t, _ in channel_parts(res.model).values()} >= {"stem"}
def test_splits_of_convs_sharing_one_bias_initializer_do_not_collide(calib):
    """Exporters store one zero bias for every conv of a width (torch.onnx with random or BN-folded weights): two
    split tensors cut into different groups must each get their own slices of it."""
    rng = np.random.default_rng(1)
    n = helper.make_node
    inits, nodes, outs = [numpy_helper.from_array(np.zeros(8, np.float32), "zero_bias")], [
        n("Transpose", ["raw"], ["x"], perm=[0, 3, 1, 2])], []
    for k, gain in enumerate((np.logspace(0, -3, 8), np.logspace(-3, 0, 8)[[0, 7, 1, 6, 2, 5, 3, 4]])):
        inits += [numpy_helper.from_array((rng.normal(0, 0.02, (8, 3, 3, 3)) * gain[:, None, None, None])
                                          .astype(np.float32), f"w{k}"),
                  numpy_helper.from_array((rng.normal(0, 1, (8, 1, 3, 3)) / gain[:, None, None, None])
                                          .astype(np.float32), f"wdw{k}"),
                  numpy_helper.from_array(rng.normal(0, 0.5, (4, 8, 1, 1)).astype(np.float32), f"wpw{k}")]
        nodes += [n("Conv", ["x", f"w{k}", "zero_bias"], [f"c{k}"], pads=[1, 1, 1, 1]),
                  n("Relu", [f"c{k}"], [f"stem{k}"]),
                  n("Conv", [f"stem{k}", f"wdw{k}", "zero_bias"], [f"d{k}"], pads=[1, 1, 1, 1], group=8),
                  n("Relu", [f"d{k}"], [f"dw{k}"]), n("Conv", [f"dw{k}", f"wpw{k}"], [f"out{k}"])]
        outs.append(helper.make_tensor_value_info(f"out{k}", TensorProto.FLOAT, [1, 4, 12, 12]))
    g = helper.make_graph(nodes, "shared", [helper.make_tensor_value_info("raw", TensorProto.FLOAT, [1, 12, 12, 3])],
                          outs, inits)
    model = normalize(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    cands = split_candidates(model)
    assert set(cands) == {"stem0", "stem1"}
    split, report, _ = range_split(model, channel_ranges(model, list(cands), calib), max_ratio=16)
    groups = {e["tensor"]: e["groups"] for e in report["tensors"]}
    assert set(groups) == {"stem0", "stem1"} and groups["stem0"] != groups["stem1"]
    names = [t.name for t in split.graph.initializer]
    assert len(names) == len(set(names))
    for feed in calib:
        for got, want in zip(_run_all(split, feed), _run_all(model, feed)):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def _run_all(model, feed):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feed)


def test_split_slices_a_prelu_slope_with_its_channels(calib):
    """A conv + PRelu (per-channel slope, as TFLite models carry it) split into channel groups: each part's PRelu
    takes its own channels' slopes (MediaPipe's iris_landmark failed in onnxruntime: 28 slopes for a 32-channel
    part), and the split graph computes what the original does."""
    rng = np.random.default_rng(5)
    gain = np.logspace(0, -3, 8)
    n = helper.make_node
    inits = [numpy_helper.from_array((rng.normal(0, 0.02, (8, 3, 3, 3)) * gain[:, None, None, None])
                                     .astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(0, 0.01, 8).astype(np.float32), "b"),
             numpy_helper.from_array(rng.uniform(0.05, 0.5, (8, 1, 1)).astype(np.float32), "slope"),
             numpy_helper.from_array((rng.normal(0, 1, (8, 1, 3, 3)) / gain[:, None, None, None])
                                     .astype(np.float32), "wdw"),
             numpy_helper.from_array(rng.uniform(0.05, 0.5, (1, 8, 1, 1)).astype(np.float32), "slope2"),
             numpy_helper.from_array(rng.normal(0, 0.5, (4, 8, 1, 1)).astype(np.float32), "wpw")]
    nodes = [n("Transpose", ["raw"], ["x"], perm=[0, 3, 1, 2]),
             n("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), n("PRelu", ["c", "slope"], ["stem"]),
             n("Conv", ["stem", "wdw"], ["d"], pads=[1, 1, 1, 1], group=8), n("PRelu", ["d", "slope2"], ["dw"]),
             n("Conv", ["dw", "wpw"], ["out"])]
    g = helper.make_graph(nodes, "prelu", [helper.make_tensor_value_info("raw", TensorProto.FLOAT, [1, 12, 12, 3])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 12, 12])], inits)
    model = normalize(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    assert "stem" in split_candidates(model)
    split, report, _ = range_split(model, channel_ranges(model, ["stem"], calib), max_ratio=16)
    assert [e["tensor"] for e in report["tensors"]] == ["stem"]
    for feed in calib:
        np.testing.assert_allclose(_run(split, feed), _run(model, feed), rtol=1e-4, atol=1e-5)
