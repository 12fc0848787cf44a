"""The range choice of a default ('normal') build: min/max or a clipped set, judged on the model's outputs; the
candidates share one session and one bias-correction pass."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from openrknn.quant import QuantOptions, quantize
from openrknn.quant.algorithms import range_choice
from openrknn.quant.algorithms.bias_correction import MeanShiftProbe
from openrknn.quant.ir import GraphInfo, normalize
from openrknn.quant.pipeline import activation_params, weight_params
from openrknn.quant.plan import build_plan
from openrknn.quant.qdq import ActQuant, build_qdq
from openrknn.quant.calibrate import Stats, collect_minmax
from openrknn.quant.schemes import get_scheme


def spiky_model() -> onnx.ModelProto:
    """conv -> cube -> conv + tanh -> conv: the cube of a smooth tensor is heavy-tailed (a few values 40x the
    typical one, as the outlier activations of an attention block are), and the tanh after the next conv saturates
    where they are. Under min/max those few values set the scale and the bulk keeps few levels; clipping them
    costs the output less than it gains."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, s, shape).astype(np.float32), k) for k, shape, s in
             [("w1", (8, 3, 3, 3), 0.4), ("w2", (8, 8, 3, 3), 0.6), ("w3", (4, 8, 1, 1), 0.5)]]
    n = helper.make_node
    nodes = [n("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]), n("Mul", ["c1", "c1"], ["sq"]),
             n("Mul", ["sq", "c1"], ["cube"]), n("Conv", ["cube", "w2"], ["c2"], pads=[1, 1, 1, 1]),
             n("Tanh", ["c2"], ["t2"]), n("Conv", ["t2", "w3"], ["y"])]
    g = helper.make_graph(nodes, "spiky", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _feeds(n: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(0, 1, (1, 3, 16, 16)).astype(np.float32)} for _ in range(n)]


def _parts(model, feeds, dtype="w8a8"):
    m = normalize(model)
    info = GraphInfo(m)
    plan = build_plan(info)
    scheme = get_scheme(dtype)
    stats = Stats()
    collect_minmax(m, plan.sources, feeds, {}, stats, progress=False)
    acts = activation_params(info, plan, stats, scheme, "normal")
    weights = weight_params(info, plan, scheme, True, "minmax")
    return m, info, plan, acts, weights


def test_candidate_session_computes_each_candidate():
    """One session, any candidate: fed min/max's parameters it computes the QDQ graph built from them, and fed
    coarser scales it computes the QDQ graph built from those."""
    feeds = _feeds(3)
    m, info, plan, acts, weights = _parts(spiky_model(), feeds)
    runner = range_choice.CandidateModel(m, plan, acts, weights)
    coarse = {t: ActQuant(a.scale * 4, a.zero_point, a.fmt) for t, a in acts.items()}
    for cand in (acts, coarse):
        want = [ort_outputs(build_qdq(m, plan, cand, weights)[0], f) for f in feeds]
        got = runner.run(feeds, runner.feed(cand, weights, m))
        for g, w in zip(got, want):
            np.testing.assert_allclose(g[0], w[0], rtol=0, atol=2e-3 * np.abs(w[0]).max())


def ort_outputs(model, feed):
    from openrknn.runtime.ort_session import make_session

    return make_session(model, 1).run(None, feed)


def test_choose_keeps_min_max_unless_a_candidate_is_clearly_better():
    feeds = _feeds(4)
    m, info, plan, acts, weights = _parts(spiky_model(), feeds)
    worse = {t: ActQuant(a.scale * 8, a.zero_point, a.fmt) for t, a in acts.items()}
    chosen, losses, _ = range_choice.choose(m, plan, {"normal": acts, "kl_divergence": worse}, weights,
                                         lambda name: None, feeds, 4)
    assert chosen == "normal" and losses["kl_divergence"] > losses["normal"]
    chosen, losses, _ = range_choice.choose(m, plan, {"normal": worse, "mmse": acts}, weights, lambda name: None,
                                         feeds, 4)
    assert chosen == "mmse" and losses["mmse"] < 0.9 * losses["normal"]
    # equal candidates: the default stays
    chosen, _, _ = range_choice.choose(m, plan, {"normal": acts, "mmse": dict(acts)}, weights, lambda name: None,
                                    feeds, 4)
    assert chosen == "normal"


def test_a_sample_is_won_only_by_taking_the_margin_of_its_error_away():
    """PP-OCR small rec's four judged samples (worst-output 1 - cosine) under min/max and under KL ranges, after
    attention became one step: KL takes 11% of the mean error away, all from one sample; on another it is 2% better,
    a draw. Counted as a second win that made KL the choice, and it lost on held-out inputs."""
    normal = np.array([0.035653, 0.014422, 0.100703, 0.001985])
    kl = np.array([0.016578, 0.016143, 0.098918, 0.004333])
    assert kl.mean() <= (1 - range_choice.MARGIN) * normal.mean() and normal.mean() - kl.mean() >= range_choice.MIN_GAIN
    assert range_choice.wins(kl, normal) == 1 < range_choice.MIN_WINS * len(normal)
    assert range_choice.wins(normal / 3, normal) == 4 and range_choice.wins(normal, normal) == 0


def test_a_tiny_loss_is_judged_by_the_share_taken_away():
    """ESRGAN-medium x4's four judged samples (1 - cosine of the upscaled image) under min/max and MSE ranges: MSE
    takes 23% of an error of 6e-5 away, winning on all four, which MIN_GAIN alone could never let through; at
    ordinary losses MIN_GAIN still decides (a classifier at 4e-3 does not switch for a fifth of it)."""
    normal = np.array([1.0674e-4, 3.4563e-5, 5.8952e-5, 2.0670e-5])
    mmse = np.array([7.4941e-5, 2.9976e-5, 5.0752e-5, 1.4150e-5])
    assert normal.mean() < range_choice.TINY_LOSS and normal.mean() - mmse.mean() < range_choice.MIN_GAIN
    assert range_choice.clear_gain(normal.mean(), mmse.mean()) and range_choice.wins(mmse, normal) == 4
    assert not range_choice.clear_gain(normal.mean(), normal.mean() * 0.85)  # under RELATIVE_GAIN
    assert not range_choice.clear_gain(4.4e-3, 4.4e-3 * 0.8) and range_choice.clear_gain(4.4e-3, 3.3e-3)


def test_probe_measures_every_variant_in_one_pass():
    """A probe with variants corrects each one's biases as a probe made for that variant alone would."""
    feeds = _feeds(3)
    m, info, plan, acts, weights = _parts(spiky_model(), feeds)
    coarse = {t: ActQuant(a.scale * 3, a.zero_point, a.fmt) for t, a in acts.items()}

    def measured(probe):
        aug = onnx.ModelProto()
        aug.CopyFrom(m)
        probe.augment(aug)
        from openrknn.runtime.ort_session import make_session

        sess = make_session(aug, 1)
        for f in feeds:
            probe.add(dict(zip(probe.outputs, sess.run(probe.outputs, f))))
        return probe

    both = measured(MeanShiftProbe(info, plan, acts, weights, 8, {"coarse": coarse}))
    alone = measured(MeanShiftProbe(info, plan, coarse, weights, 8))
    for variant, probe in (("coarse", both), ("", alone)):
        for wq in weights.values():
            wq.bias = None
        probe.apply(info, weights, variant)
        if variant:
            got = {k: wq.bias.copy() for k, wq in weights.items()}
        else:
            want = {k: wq.bias.copy() for k, wq in weights.items()}
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-7)


def test_default_build_clips_where_outliers_rule_and_reports_it():
    feeds = _feeds(8)
    res = quantize(spiky_model(), feeds, QuantOptions(dtype="w8a8", target="rk3588"), progress=False)
    choice = res.report["range_choice"]
    assert set(choice["losses"]) == {"normal", "kl_divergence", "mmse"}
    assert choice["chosen"] != "normal" and choice["losses"][choice["chosen"]] < 0.9 * choice["losses"]["normal"]
    off = quantize(spiky_model(), feeds, QuantOptions(dtype="w8a8", target="rk3588", range_choice=False),
                   progress=False)
    assert "range_choice" not in off.report
    # the kept candidate is what the model holds: on held-out inputs its outputs too are closer than min/max's
    held = _feeds(8, seed=9)
    ref = [ort_outputs(spiky_model(), f) for f in held]

    def err(model):
        return range_choice.output_loss([ort_outputs(model, f) for f in held], ref)

    assert err(res.model) < err(off.model)


def hardswish_model() -> onnx.ModelProto:
    """conv -> HardSwish -> conv -> Tanh -> conv: the HardSwish output is heavy-tailed (most values near zero, a
    few channels far out, as in PP-LCNet backbones); the Tanh's is bounded."""
    rng = np.random.default_rng(2)
    w1 = rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32)
    w1[0] *= 12  # one channel far out
    inits = [numpy_helper.from_array(w1, "w1"),
             numpy_helper.from_array(rng.normal(0, 0.4, (8, 8, 3, 3)).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.normal(0, 0.5, (4, 8, 1, 1)).astype(np.float32), "w3")]
    n = helper.make_node
    nodes = [n("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]), n("HardSwish", ["c1"], ["h1"]),
             n("Conv", ["h1", "w2"], ["c2"], pads=[1, 1, 1, 1]), n("Tanh", ["c2"], ["t2"]),
             n("Conv", ["t2", "w3"], ["y"])]
    g = helper.make_graph(nodes, "hswish", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_clipped_ranges_on_hardswish_outputs_only_are_a_candidate():
    """Range choice also judges KL clipping on the HardSwish outputs alone, min/max elsewhere (the layout
    detector's backbone wants its HardSwish tails clipped and its score maps not)."""
    from openrknn.quant.pipeline import KL_ON_HARDSWISH, _clipped_where

    feeds = _feeds(8)
    res = quantize(hardswish_model(), feeds, QuantOptions(dtype="w8a8", target="rk3588"), progress=False)
    assert KL_ON_HARDSWISH in res.report["range_choice"]["losses"]
    m, info, plan, acts, _ = _parts(hardswish_model(), feeds)
    clipped = {t: ActQuant(a.scale / 2, a.zero_point, a.fmt) for t, a in acts.items()}
    mixed = _clipped_where(info, plan, acts, clipped, ("HardSwish",))
    hswish = {t for t in plan.points if plan.fused.get(t) == "HardSwish" or
              (info.producer.get(t) is not None and info.nodes[info.producer[t]].op_type == "HardSwish")}
    assert hswish
    for t in acts:
        assert mixed[t] is (clipped[t] if plan.group_of[t] in {plan.group_of[h] for h in hswish} else acts[t])
    assert _clipped_where(info, plan, acts, clipped, ("Softsign",)) is None


def two_head_model() -> onnx.ModelProto:
    """Two heads on one input: spiky_model's path ('spiky') and a cube of another conv ('power')."""
    spiky = spiky_model()
    rng = np.random.default_rng(3)
    g = spiky.graph
    g.node[-1].output[0] = "spiky"
    g.initializer.append(numpy_helper.from_array(rng.normal(0, 0.4, (4, 3, 3, 3)).astype(np.float32), "wb"))
    n = helper.make_node
    g.node.extend([n("Conv", ["x", "wb"], ["cb"], pads=[1, 1, 1, 1]), n("Mul", ["cb", "cb"], ["cb2"]),
                   n("Mul", ["cb2", "cb"], ["power"])])
    del g.output[:]
    g.output.extend([helper.make_tensor_value_info(o, TensorProto.FLOAT, [1, 4, 16, 16]) for o in ("spiky", "power")])
    return spiky


def test_each_output_takes_another_candidates_ranges_for_its_own_layers_only():
    """The model-wide choice kept a set whose 'spiky' head has scales 8x too coarse; the other candidate has the
    calibrated ones. Per output, 'spiky' takes them for its own layers; 'power', equal under both, keeps its own,
    and computes exactly as before."""
    feeds = _feeds(4)
    m, info, plan, acts, weights = _parts(two_head_model(), feeds)
    spiky = set(private_of(two_head_model(), "spiky"))
    coarse = {t: ActQuant(a.scale * 8, a.zero_point, a.fmt) if t in spiky else a for t, a in acts.items()}
    candidates = {"normal": coarse, "mmse": acts}
    runner = range_choice.CandidateModel(m, plan, coarse, weights)
    ref_sess = range_choice.reference_session(m, runner)
    switched = []
    final, parts = range_choice.choose_per_output(m, plan, info, "normal", candidates, weights, lambda name: None,
                                                  lambda name, inputs: switched.append((name, inputs)), runner,
                                                  ref_sess, feeds)
    assert parts == {"spiky": "mmse"}
    assert {t for t in final if final[t] is not coarse[t]} == spiky & set(acts)
    assert switched[-1] == ("mmse", spiky)  # the switched layers get that candidate's bias corrections
    held = _feeds(6, seed=9)
    ref = [ref_sess.run(runner.measured, f) for f in held]
    before = runner.run(held, runner.feed(coarse, weights, m))
    after = runner.run(held, runner.feed(final, weights, m))
    k = runner.measured.index("spiky")
    assert range_choice.output_loss([[o[k]] for o in after], [[r[k]] for r in ref]) < \
        0.5 * range_choice.output_loss([[o[k]] for o in before], [[r[k]] for r in ref])
    p = runner.measured.index("power")
    for a, b in zip(after, before):
        np.testing.assert_array_equal(a[p], b[p])
    # a candidate no output prefers by the margins changes nothing
    final, parts = range_choice.choose_per_output(m, plan, info, "normal", {"normal": acts, "mmse": dict(acts)},
                                                  weights, lambda name: None, lambda name, inputs: None, runner,
                                                  ref_sess, feeds)
    assert parts == {} and final == acts


def private_of(model: onnx.ModelProto, output: str):
    m = normalize(model)
    info = GraphInfo(m)
    plan = build_plan(info)
    groups = range_choice.private_groups(info, plan, [o.name for o in m.graph.output])
    return [t for g in groups.get(output, []) for t in plan.groups[g]]


def test_private_groups_are_the_layers_that_reach_one_output_only():
    spiky, power = private_of(two_head_model(), "spiky"), private_of(two_head_model(), "power")
    assert not set(spiky) & set(power)
    assert {"cb", "cb2"} <= set(power) and {"cube", "t2", "spiky"} <= set(spiky), (spiky, power)
    # a model with one output: every group is its own
    m = normalize(spiky_model())
    plan = build_plan(GraphInfo(m))
    assert sorted(range_choice.private_groups(GraphInfo(m), plan, ["y"])["y"]) == sorted(plan.groups)
