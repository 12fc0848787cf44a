"""Hybrid quantization: step1 files, step2 edits taking effect (also in a fresh process), bad names/dtypes, auto."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from conftest import write_npy_dataset, write_samples
from openrknn.convert import hybrid as hb
from openrknn.config import make_config
from openrknn.errors import ConfigError
from openrknn.quant import hybrid as hq
from openrknn.convert import BuildOptions, build, load_model

ROOT = Path(__file__).resolve().parents[1]


def outlier_model() -> onnx.ModelProto:
    """conv1 + ReLU whose channel 0 spans ~300x the others; conv2 reads only the small channels. With one scale per
    tensor the small channels of 'r1' lose their resolution, so the output needs 'conv1' in higher precision."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.01, (8, 3, 3, 3))
    w1[0] *= 300.0
    w2 = rng.normal(0, 0.5, (4, 8, 1, 1))
    w2[:, 0] = 0.0
    inits = [numpy_helper.from_array(a.astype(np.float32), k) for k, a in
             [("w1", w1), ("b1", np.zeros(8)), ("w2", w2), ("b2", np.zeros(4))]]
    n = helper.make_node
    nodes = [n("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             n("Relu", ["c1"], ["r1"], name="relu1"),
             n("Conv", ["r1", "w2", "b2"], ["out"], name="conv2")]
    g = helper.make_graph(nodes, "outlier", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("hybrid")
    onnx.save(outlier_model(), d / "outlier.onnx")
    rng = np.random.default_rng(1)
    write_samples(d, [rng.integers(0, 256, (8, 8, 3)).astype(np.float32) for _ in range(8)])
    return d


def _cfg():
    # w8a8: per-channel weights, so no cross-layer equalization hides the outlier channel
    return make_config(target_platform="rk3588", quantized_dtype="w8a8")


def _loaded(d):
    return load_model(d / "outlier.onnx")


def _inits(model: onnx.ModelProto) -> dict:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


@pytest.fixture(scope="module")
def step1(setup):
    out = setup / "s1"
    paths = hb.hybrid_step1(_loaded(setup), _cfg(), str(setup / "dataset.txt"), str(out), progress=False)
    return paths


def test_step1_writes_the_three_files(step1):
    assert [Path(step1[k]).name for k in ("model", "data", "cfg")] == \
        ["outlier.model", "outlier.data", "outlier.quantization.cfg"]
    doc = yaml.safe_load(Path(step1["cfg"]).read_text())
    assert doc["custom_quantize_layers"] == {}
    r1 = doc["quantize_parameters"]["r1"]
    assert r1["kind"] == "activation" and r1["dtype"] == "int8" and r1["method"] == "layer"
    assert r1["min_value"][0] <= 0 < r1["max_value"][0] and len(r1["scale"]) == 1
    w1 = doc["quantize_parameters"]["w1"]
    assert w1["method"] == "channel" and len(w1["scale"]) == 8
    with np.load(step1["data"], allow_pickle=False) as z:  # no pickle, calibration feeds stored losslessly as uint8
        assert z["s0/x"].dtype == np.uint8


def _edit(step1, tmp_path, fn) -> str:
    doc = yaml.safe_load(Path(step1["cfg"]).read_text())
    fn(doc)
    p = tmp_path / "edited.quantization.cfg"
    p.write_text(yaml.safe_dump(doc))
    return str(p)


@pytest.mark.slow
def test_unedited_step2_reproduces_step1_in_a_fresh_process(step1, setup, tmp_path):
    here = hb.hybrid_step2(step1["model"], step1["data"], step1["cfg"], progress=False)
    out = tmp_path / "fresh.onnx"
    code = ("import sys, onnx; from openrknn.convert import hybrid as hb; "
            "r = hb.hybrid_step2(sys.argv[1], sys.argv[2], sys.argv[3], progress=False); "
            "onnx.save(r.model, sys.argv[4])")
    subprocess.run([sys.executable, "-c", code, step1["model"], step1["data"], step1["cfg"], str(out)], check=True,
                   cwd=ROOT, timeout=120)
    a, b = _inits(here.model), _inits(onnx.load(out))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    # ... and equals a plain build from the original model (step1's quantization)

    plain = build(_loaded(setup), _cfg(), BuildOptions(dataset=str(setup / "dataset.txt")))
    c = _inits(plain.model)
    assert c.keys() == a.keys() and all(np.array_equal(a[k], c[k]) for k in a)


def test_edit_one_layer_changes_exactly_that_layer(step1, tmp_path):
    base = hb.hybrid_step2(step1["model"], step1["data"], step1["cfg"], progress=False)
    cfg = _edit(step1, tmp_path, lambda d: d["custom_quantize_layers"].update({"conv1": "int16"}))
    res = hb.hybrid_step2(step1["model"], step1["data"], cfg, progress=False)
    t0, t1 = base.package.metadata["quantization"]["tensors"], res.package.metadata["quantization"]["tensors"]
    changed = {k for k in t0 if t0[k]["dtype"] != t1.get(k, {}).get("dtype")}
    assert changed == {"r1", "w1"} and t1["r1"]["dtype"] == "int16" and t1["w1"]["dtype"] == "int16"
    # the QDQ graph stores r1 in 16 bits; the input and output points keep theirs
    q = {n.output[0]: n for n in res.model.graph.node if n.op_type == "QuantizeLinear"}
    zp = _inits(res.model)
    assert zp[q["r1__q"].input[2]].dtype == np.uint16 and zp[q["out__q"].input[2]].dtype == np.uint8


def test_float16_layer_is_left_unquantized(step1, tmp_path):
    cfg = _edit(step1, tmp_path, lambda d: d["custom_quantize_layers"].update({"relu1": "float16"}))
    res = hb.hybrid_step2(step1["model"], step1["data"], cfg, progress=False)
    tensors = res.package.metadata["quantization"]["tensors"]
    assert "r1" not in tensors and "w1" not in tensors and "out" in tensors and "w2" in tensors
    assert not any(n.output[0] == "r1" and n.op_type == "DequantizeLinear" for n in res.model.graph.node)


def test_edited_scale_is_used_as_given(step1, tmp_path):
    def edit(doc):
        doc["quantize_parameters"]["out"]["scale"] = [0.125]
        doc["quantize_parameters"]["out"]["zero_point"] = [3]
        doc["quantize_parameters"]["w2"]["scale"] = [0.01] * 4
    res = hb.hybrid_step2(step1["model"], step1["data"], _edit(step1, tmp_path, edit), progress=False)
    t = res.package.metadata["quantization"]["tensors"]
    assert t["out"]["scale"] == [0.125] and t["out"]["zero_point"] == [3] and t["w2"]["scale"] == [0.01] * 4
    dq = next(n for n in res.model.graph.node if n.op_type == "DequantizeLinear" and n.output[0] == "out")
    assert float(_inits(res.model)[dq.input[1]]) == 0.125


@pytest.mark.parametrize("edit, needle", [
    (lambda d: d["custom_quantize_layers"].update({"no_such_layer": "int16"}), "no_such_layer"),
    (lambda d: d["custom_quantize_layers"].update({"conv1": "int4"}), "int4"),
    (lambda d: d["quantize_parameters"].update({"ghost": {"scale": [1.0], "zero_point": [0]}}), "ghost"),
    (lambda d: d["quantize_parameters"]["r1"].update({"scale": "big"}), "r1"),
])
def test_bad_cfg_entries_name_the_problem(step1, tmp_path, edit, needle):
    with pytest.raises(ConfigError, match=needle):
        hb.hybrid_step2(step1["model"], step1["data"], _edit(step1, tmp_path, edit), progress=False)


def test_a_missing_cfg_file_is_named_as_missing(step1, tmp_path):
    with pytest.raises(ConfigError, match="no such file; pass the .quantization.cfg"):
        hb.hybrid_step2(step1["model"], step1["data"], str(tmp_path / "edit.cfg"), progress=False)


def test_layer_map_follows_fused_activations():
    lm = hq.layer_map(outlier_model())
    assert lm["conv1"] == ["r1", "w1"] and lm["relu1"] == ["r1", "w1"] and lm["conv2"] == ["out", "w2"]


def test_auto_hybrid_reaches_the_threshold_where_int8_does_not(setup):
    cfg = _cfg()
    res = hb.auto_hybrid(_loaded(setup), cfg, BuildOptions(dataset=str(setup / "dataset.txt")), cos_thresh=0.999,
                         progress=False)
    report = res.hybrid_report
    assert min(report["cosine_before"]) < 0.999 <= min(report["cosine_after"])
    assert report["met"] and report["layers"] == ["conv1"]
    assert res.package.metadata["quantization"]["tensors"]["r1"]["dtype"] == "int16"
    assert res.package.metadata["quantization"]["auto_hybrid"]["layers"] == ["conv1"]


def test_proposal_prefills_the_sensitive_layer(setup, tmp_path):
    paths = hb.hybrid_step1(_loaded(setup), make_config(target_platform="rk3588", quantized_dtype="w8a8",
                                                        auto_hybrid_cos_thresh=0.999),
                            str(setup / "dataset.txt"), str(tmp_path), proposal=True, progress=False)
    assert yaml.safe_load(Path(paths["cfg"]).read_text())["custom_quantize_layers"] == {"conv1": "float16"}


def test_edit_reaches_range_split_parts(tmp_path):
    """A layer whose output range split cut into parts (and the conv reading it) is promoted part by part."""
    from test_quant_split import stem_model

    m = stem_model()  # NHWC input + Transpose there; here an NCHW image input the pre-processing takes over
    del m.graph.node[0]
    m.graph.input[0].CopyFrom(helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12]))
    onnx.save(m, tmp_path / "stem.onnx")
    write_npy_dataset(tmp_path, (12, 12, 3), seed=2, name="d.txt")
    paths = hb.hybrid_step1(load_model(tmp_path / "stem.onnx"), make_config(), str(tmp_path / "d.txt"),
                            str(tmp_path), progress=False)
    doc = yaml.safe_load(Path(paths["cfg"]).read_text())
    parts = [t for t in doc["quantize_parameters"] if t.startswith("stem__split")]
    assert len(parts) > 1, "the stem output should be range-split"
    doc["custom_quantize_layers"] = {parts[0]: "int16"}
    (tmp_path / "e.cfg").write_text(yaml.safe_dump(doc))
    res = hb.hybrid_step2(paths["model"], paths["data"], str(tmp_path / "e.cfg"), progress=False)
    tensors = res.package.metadata["quantization"]["tensors"]
    assert all(tensors[p]["dtype"] == "int16" for p in parts)
    assert tensors["dw"]["dtype"] == "uint8"


@pytest.mark.parametrize("target, dtype", [("rk3588", "w8a8"), ("rk1808", "asymmetric_quantized-u8")])
def test_every_unit_float_is_the_float_model_through_splits_and_corrections(tmp_path, target, dtype):
    """Auto hybrid's estimates switch units to float on the built QDQ graph. With the build's rewritten float weights
    (QuantResult.float_weights) that covers range-split parts (the remap after an activation on RKNPU2 too), the
    split and permuted weights and the biases bias correction moved: every unit float is the float model, and
    quantizing one unit alone moves the output. Before, half the points of a split model stayed quantized."""
    from test_quant_split import stem_model

    m = stem_model()
    del m.graph.node[0]
    m.graph.input[0].CopyFrom(helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12]))
    onnx.save(m, tmp_path / "stem.onnx")
    write_npy_dataset(tmp_path, (12, 12, 3), seed=2, name="d.txt")
    cfg = make_config(target_platform=target, quantized_dtype=dtype)
    plain = build(load_model(tmp_path / "stem.onnx"), cfg, BuildOptions(dataset=str(tmp_path / "d.txt")))
    tensors = plain.package.metadata["quantization"]["tensors"]
    assert any("__split" in t and v["kind"] == "weight" for t, v in tensors.items())
    assert any(v["kind"] == "bias" for v in tensors.values())
    units, switch = hb._switchable(plain.float_model, plain.model, tensors, weights=plain.float_weights)
    switched = {t for members in switch.members.values() for t in members}
    assert {t for t, v in tensors.items() if v["kind"] in ("activation", "weight", "bias")} - switched <= {"x"}
    rng = np.random.default_rng(3)
    feeds = [{"x": rng.integers(0, 256, (1, 12, 12, 3)).astype(np.float32)} for _ in range(3)]
    ref = hq.run_outputs(plain.float_model, feeds)
    for got, want in zip(switch.run(feeds, list(units)), ref):
        np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-4)
    quantized = hq.run_outputs(plain.model, feeds)
    for got, want in zip(switch.run(feeds), quantized):
        np.testing.assert_array_equal(got[0], want[0])
    falls = hq.damage(switch, ref, feeds, progress=False)
    assert max(falls.values()) > 1e-6


def test_bypass_with_float_weights_restores_the_float_function():
    """Sensitivity puts a unit's weights back in float too: float_weights finds the weights the QDQ graph rounded
    from the float model's values, and bypassing every activation and those weights gives the float outputs back;
    bypassing activations alone does not (per-tensor u8 weights of the outlier conv stay rounded)."""
    from openrknn.quant import QuantOptions, quantize

    model = outlier_model()
    rng = np.random.default_rng(2)
    feeds = [{"x": rng.normal(0, 1, (1, 3, 8, 8)).astype(np.float32)} for _ in range(4)]
    q = quantize(model, feeds, QuantOptions(dtype="asymmetric_quantized-u8", equalization=False,
                                            bias_correction=False), progress=False)
    weights = hq.float_weights(model, q.model, ["w1", "w2", "not_a_weight"])
    assert sorted(weights) == ["w1", "w2"]
    np.testing.assert_array_equal(weights["w1"], numpy_helper.to_array(model.graph.initializer[0]))
    acts = [t for t, v in q.tensors.items() if v["kind"] == "activation"]
    ref = hq.run_outputs(model, feeds)
    all_float = hq.run_outputs(hq.bypass(q.model, acts + ["w1", "w2"], weights), feeds)
    acts_only = hq.run_outputs(hq.bypass(q.model, acts), feeds)
    # what remains is the graph input's own uint8 rounding and the int32 bias
    err_all = max(float(np.abs(a[0] - r[0]).max()) for r, a in zip(ref, all_float))
    err_acts = max(float(np.abs(b[0] - r[0]).max()) for r, b in zip(ref, acts_only))
    assert err_all < 5e-3 and err_acts > 3 * err_all


def test_float_weights_skips_a_weight_the_quantizer_rewrote():
    """An equalized (rescaled) weight no longer matches the float model's values: putting those back would change
    the function, so it is left out."""
    from openrknn.quant import QuantOptions, quantize

    model = outlier_model()
    rng = np.random.default_rng(3)
    feeds = [{"x": rng.normal(0, 1, (1, 3, 8, 8)).astype(np.float32)} for _ in range(4)]
    q = quantize(model, feeds, QuantOptions(dtype="asymmetric_quantized-u8", equalization=True), progress=False)
    assert q.report["equalization"]["pairs"] == 1
    assert hq.float_weights(model, q.model, ["w1", "w2"]) == {}


def test_select_takes_the_graph_order_prefix_when_it_is_shorter(setup, monkeypatch):
    """A sensitivity ranking that misjudges the early layer (as single-layer bypass does when errors compound) would
    need every layer; the graph-order prefix (the input's pre-processing, then conv1) needs two, so it wins. Then
    the pruning finds conv1 alone enough: the pre-processing unit only came with the prefix."""
    cfg = _cfg()
    plain = build(_loaded(setup), cfg, BuildOptions(dataset=str(setup / "dataset.txt")))
    tensors = plain.package.metadata["quantization"]["tensors"]
    feeds = [{"x": np.load(setup / f"{k}.npy")[None]} for k in range(4)]
    monkeypatch.setattr(hq, "damage", lambda model, *a, **k: {u: (1.0 if u == "conv2" else 0.0)
                                                              for u in model.units})
    picked, detail = hb._select(plain.float_model, plain.model, tensors, feeds, 0.997, progress=False)
    assert detail["order_kind"] == "graph order" and detail["found"]["graph order"] == 2
    first = detail["orders"]["graph order"][0]
    assert picked == ["conv1"] and detail["pruned"] == [first] and detail["order"][:2] == ["conv1", first]
    monkeypatch.undo()
    picked, detail = hb._select(plain.float_model, plain.model, tensors, feeds, 0.997, progress=False)
    assert detail["order_kind"] == "sensitivity" and picked == ["conv1"]  # the measured ranking finds it alone


def _chain_select(monkeypatch, needed: set, sens: dict):
    """_select on a chain of ten one-layer units u0..u9 whose estimate meets the threshold once every unit of
    ``needed`` is float; damage as given."""
    names = [f"u{i}" for i in range(10)]
    nodes = [helper.make_node("Relu", [f"t{i}"], [f"t{i + 1}"], name=u) for i, u in enumerate(names)]
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("t0", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("t10", TensorProto.FLOAT, [1, 4])])

    class Switch:
        units = names

        def run(self, feeds, float_units=(), workers=1):
            return [[np.float32(0.995 if needed <= set(float_units) else 0.9)]]

    monkeypatch.setattr(hb, "_switchable", lambda *a, **k: ({u: [u] for u in names}, Switch()))
    monkeypatch.setattr(hq, "damage", lambda *a, **k: dict(sens))
    monkeypatch.setattr(hq, "output_cosines", lambda ref, outs: [float(outs[0][0])])
    table = ({u: [u] for u in names}, {u: [u] for u in names})
    return hb._select(helper.make_model(g), None, {}, [{}], 0.99, progress=False, reference=[[0]], table=table)


def test_select_searches_a_later_order_only_where_it_can_beat_the_best_prefix(monkeypatch):
    """The graph order is searched only when its longest prefix that could beat the ranking's meets the threshold:
    no estimate run against a one-unit prefix, one run where that prefix falls short, and where it meets, the
    whole order's search (which wins here with four units against the ranking's ten)."""
    def graph_runs(detail):
        return sorted(int(k.split(":")[1]) for k in detail["estimate"] if k.startswith("graph order"))

    sens = {f"u{i}": (1.0 if i == 3 else 0.1 / (i + 1)) for i in range(10)}
    picked, detail = _chain_select(monkeypatch, {"u3"}, sens)
    assert picked == ["u3"] and list(detail["found"]) == ["sensitivity"] and graph_runs(detail) == []
    sens = {f"u{i}": (0.9 if i == 3 else 1.0 if i in (5, 7) else 0.1 / (i + 1)) for i in range(10)}  # u3 third
    picked, detail = _chain_select(monkeypatch, {"u3"}, sens)
    assert detail["found"] == {"sensitivity": 3} and graph_runs(detail) == [2]
    assert picked == ["u3"] and detail["order_kind"] == "sensitivity"
    sens = {f"u{i}": (0.0 if i == 3 else 1.0 - i / 10) for i in range(10)}  # u3 ranked last
    picked, detail = _chain_select(monkeypatch, {"u3"}, sens)
    assert detail["order_kind"] == "graph order" and detail["found"] == {"sensitivity": 10, "graph order": 4}
    assert graph_runs(detail) == [3, 4, 5, 9]
    assert picked == ["u3"] and detail["pruned"] == ["u2", "u1", "u0"]  # the prefix's other units were not needed


@pytest.mark.parametrize("need, builds, k", [(4, [4, 3], 4), (3, [4, 3], 3), (2, [4, 3], 3), (7, [4, 6, 9, 7], 7),
                                             (11, [4, 6, 9, 10], 10)])
def test_confirm_searches_between_the_estimate_and_the_first_build_that_meets(monkeypatch, need, builds, k):
    """Real builds start at the estimate's prefix and grow by half until one meets the threshold, then search down
    only to one unit fewer than the estimate's (a real build beats its estimate by one unit at most), so a build
    that meets at once costs one more, and none is made below that. When none meets, every unit is promoted (here:
    10)."""
    order = [f"u{i}" for i in range(10)]
    made = []

    class Made:
        def __init__(self, n):
            self.model = n

    def make(overrides):
        made.append(len(overrides))
        return Made(len(overrides))

    monkeypatch.setattr(hq, "run_outputs", lambda model, *a, **kw: [model])
    monkeypatch.setattr(hq, "output_cosines", lambda ref, outs: [0.995 if outs[0] >= need else 0.98])
    trials = []
    got, (result, cos) = hb._confirm(order, 4, {u: [u + "_t"] for u in order}, "int16", make, [[0]], [{}], 0.99,
                                     trials=trials)
    assert made == builds and got == k and result.model == k
    assert trials == [(n, 0.995 if n >= need else 0.98) for n in builds]
    if need == 2:  # an estimate of one unit that a build confirms: no build below it (none with nothing promoted)
        need, made[:] = 1, []
        assert hb._confirm(order, 1, {u: [u + "_t"] for u in order}, "int16", make, [[0]], [{}], 0.99)[0] == 1
        assert made == [1]


def test_prune_drops_the_units_the_others_make_unnecessary():
    """A ranking prefix holds every unit ranked above the last one needed; the pruning tries the least damage per
    layer first and keeps a unit out only where the estimate still meets the threshold."""
    need = {"score_a", "score_b"}           # each output needs its own unit; "wide" helps neither

    def estimate(units):
        calls.append(list(units))
        return 0.995 if need <= set(units) else 0.97

    calls = []
    size = {"score_a": 3, "wide": 1, "score_b": 3, "tail": 1}
    sens = {"score_a": 0.9, "wide": 0.5, "score_b": 0.6, "tail": 0.05}
    kept, dropped, runs = hb._prune(["score_a", "wide", "score_b", "tail"], size, sens, estimate, 0.99)
    assert kept == ["score_a", "score_b"] and dropped == ["tail", "wide"] and runs == 4
    assert calls[0] == ["score_a", "wide", "score_b"]       # tail first: the least damage per layer
    # a prefix whose every unit is needed stays as it is; a single unit is never tried
    assert hb._prune(["score_a", "score_b"], size, sens, estimate, 0.99)[:2] == (["score_a", "score_b"], [])
    calls.clear()
    assert hb._prune(["score_a"], size, sens, estimate, 0.99) == (["score_a"], [], 0) and not calls


def test_prune_spends_at_most_its_estimate_runs(monkeypatch):
    monkeypatch.setattr(hb, "PRUNE_TRIES", 2)
    units = [f"u{i}" for i in range(6)]
    kept, dropped, runs = hb._prune(units, dict.fromkeys(units, 1), {u: i for i, u in enumerate(units)},
                                    lambda us: 1.0, 0.99)
    assert runs == 2 and dropped == ["u0", "u1"] and kept == units[2:]


def test_report_names_the_automatic_choice(setup):
    from openrknn.analysis.report import hybrid_sections

    res = hb.auto_hybrid(_loaded(setup), _cfg(), BuildOptions(dataset=str(setup / "dataset.txt")), cos_thresh=0.999,
                         progress=False)
    report = res.hybrid_report
    (section,) = hybrid_sections(res.package)
    assert "Chosen automatically: 1 layer(s) (conv1)" in section.html and report["selection"] in section.html
    # every real build is listed, the chosen one the fewest layers that met the threshold
    trials = report["trials"]
    assert report["builds"] == 1 + len(trials)
    assert min(t["layers"] for t in trials if t["met"]) == len(report["layers"]) == 1
    assert all(t["met"] == (t["worst_cosine"] >= 0.999) for t in trials)
    assert "Real builds tried" in section.html and "1 layer(s): " in section.html


def test_switchable_model_matches_the_qdq_graph_and_its_bypass():
    """One session for every estimate: with every unit on it computes the QDQ graph exactly, and with a unit off
    it computes what bypassing that unit's activations and weights computes."""
    from openrknn.quant import QuantOptions, quantize

    model = outlier_model()
    rng = np.random.default_rng(4)
    feeds = [{"x": rng.normal(0, 1, (1, 3, 8, 8)).astype(np.float32)} for _ in range(3)]
    q = quantize(model, feeds, QuantOptions(dtype="asymmetric_quantized-u8", equalization=False), progress=False)
    acts = [t for t, v in q.tensors.items() if v["kind"] == "activation" and t != "x"]
    weights = hq.float_weights(model, q.model, ["w1", "w2"])
    units = {"a": [acts[0], "w1"], "b": acts[1:] + ["w2"]}
    sw = hq.SwitchableModel(q.model, units, weights)
    for got, want in zip(sw.run(feeds), hq.run_outputs(q.model, feeds)):
        np.testing.assert_array_equal(got[0], want[0])
    for off in ("a", "b"):
        want = hq.run_outputs(hq.bypass(q.model, units[off], weights), feeds)
        for got, w in zip(sw.run(feeds, [off]), want):
            np.testing.assert_allclose(got[0], w[0], rtol=0, atol=1e-5)
    assert not np.allclose(sw.run(feeds, ["a"])[0][0], sw.run(feeds)[0][0])
    ref = hq.run_outputs(model, feeds)
    sens = hq.damage(sw, ref, feeds, progress=False)
    assert set(sens) == {"a", "b"} and sens["a"] > 0
    every = min(hq.output_cosines(ref, sw.run(feeds, ["a", "b"])))
    # the ranking's units ran side by side: the same falls as run alone
    for u, others in (("a", ["b"]), ("b", ["a"])):
        assert sens[u] == pytest.approx(every - min(hq.output_cosines(ref, sw.run(feeds, others))), abs=1e-12)
    # feeds run side by side on the one session give the outputs of running them one by one, bit for bit
    for parallel, serial in ((sw.run(feeds, ["a"], workers=3), sw.run(feeds, ["a"])),
                             (hq.run_outputs(q.model, feeds, workers=2), hq.run_outputs(q.model, feeds))):
        assert len(parallel) == len(feeds)
        for got, want in zip(parallel, serial):
            np.testing.assert_array_equal(got[0], want[0])


def test_float_weights_reads_a_matmul_weights_channel_axis():
    """A MatMul weight [K, N] is quantized per output channel along its last axis (the DequantizeLinear's axis 1),
    not its first: PP-OCRv3's recognizer ([120, 360] weights) made auto hybrid fail with a broadcast error."""
    from onnx import TensorProto, helper

    from openrknn.quant import QuantOptions, quantize

    rng = np.random.default_rng(4)
    w = (rng.standard_normal((6, 10)) * np.logspace(-2, 0, 10)).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "mm",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 10])],
                          [numpy_helper.from_array(w, "w")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    feeds = [{"x": rng.standard_normal((1, 4, 6)).astype(np.float32)} for _ in range(4)]
    q = quantize(model, feeds, QuantOptions(dtype="w8a8", method="channel", target="rk3588"), progress=False)
    scale = numpy_helper.to_array([t for t in q.model.graph.initializer if t.name == "w__scale"][0])
    assert scale.shape == (10,)
    weights = hq.float_weights(model, q.model, ["w"])
    assert sorted(weights) == ["w"]
    np.testing.assert_array_equal(weights["w"], w)


def test_side_by_side_runs_follow_the_idle_cores_up_to_a_cap(monkeypatch):
    """Each run side by side holds its own activations: a 64-core machine gets MAX_PARALLEL_RUNS, a busy one 1."""
    from openrknn.quant import calibrate

    monkeypatch.setattr(calibrate, "auto_threads", lambda: 64)
    assert hq.run_workers() == hq.MAX_PARALLEL_RUNS
    monkeypatch.setattr(calibrate, "auto_threads", lambda: 1)
    assert hq.run_workers() == 1


def test_an_index_output_is_judged_by_the_scores_it_picks_from():
    """ddddocr's recognizer ends in ArgMax -> Transpose: the cosine of two index vectors jumps as single indices
    flip (0.75, 0.96, 1.0 as layers are promoted), so auto hybrid measures the scores the indices come from."""
    n = helper.make_node
    g = helper.make_graph(
        [n("Relu", ["x"], ["scores"]), n("ArgMax", ["scores"], ["idx"], axis=1, keepdims=0),
         n("Transpose", ["idx"], ["labels"], perm=[1, 0]), n("Sigmoid", ["x"], ["prob"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5, 3])],
        [helper.make_tensor_value_info("labels", TensorProto.INT64, [3, 1]),
         helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 5, 3])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    assert hq.scored_outputs(model) == ["scores", "prob"]
    del model.graph.output[0]
    assert hq.scored_outputs(model) is None  # no index output: the graph outputs as they are


def test_outputs_a_topk_picks_are_judged_by_its_sorted_scores():
    """A DETR's postprocessor: TopK over the flattened class scores; labels = index mod classes and boxes gathered at
    index // classes, both in score order. Two near-equal scores that swap move whole rows (cosine 0.76 / 0.85 on
    DEIMv2 with every detection intact), so auto hybrid measures the sorted scores, once."""
    n = helper.make_node
    g = helper.make_graph(
        [n("Sigmoid", ["logits"], ["p"]), n("Flatten", ["p"], ["flat"], axis=1),
         n("TopK", ["flat", "k"], ["scores", "idx"]), n("Mod", ["idx", "classes"], ["labels"]),
         n("Div", ["idx", "classes"], ["query"]), n("Unsqueeze", ["query", "last"], ["q3"]),
         n("Tile", ["q3", "reps"], ["q4"]), n("GatherElements", ["boxes_in", "q4"], ["boxes"], axis=1)], "g",
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 6, 3]),
         helper.make_tensor_value_info("boxes_in", TensorProto.FLOAT, [1, 6, 4])],
        [helper.make_tensor_value_info(o, t, None) for o, t in (("labels", TensorProto.INT64),
                                                                 ("boxes", TensorProto.FLOAT),
                                                                 ("scores", TensorProto.FLOAT))],
        [numpy_helper.from_array(np.array([4], np.int64), "k"),
         numpy_helper.from_array(np.array(3, np.int64), "classes"),
         numpy_helper.from_array(np.array([2], np.int64), "last"),
         numpy_helper.from_array(np.array([1, 1, 4], np.int64), "reps")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    assert hq.scored_outputs(model) == ["scores"]
    del model.graph.output[2]  # no graph output holds the sorted scores: the outputs as they are
    assert hq.scored_outputs(model) is None


def _grouped_model() -> onnx.ModelProto:
    """Two conv+ReLU branches a Concat joins (one scale group), then a conv -> Sigmoid score map (one layer on the
    chip) carried to the output by a Reshape, a Transpose and a Reshape (the sigmoid's group)."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, s).astype(np.float32), k) for k, s in
             [("wa", (4, 3, 3, 3)), ("wb", (4, 3, 3, 3)), ("ws", (2, 8, 1, 1))]]
    inits.append(numpy_helper.from_array(np.array([1, 2, 64], np.int64), "shape"))
    inits.append(numpy_helper.from_array(np.array([1, 128], np.int64), "flat"))
    n = helper.make_node
    nodes = [n("Conv", ["x", "wa"], ["a"], pads=[1, 1, 1, 1], name="conv_a"), n("Relu", ["a"], ["ra"], name="relu_a"),
             n("Conv", ["x", "wb"], ["b"], pads=[1, 1, 1, 1], name="conv_b"), n("Relu", ["b"], ["rb"], name="relu_b"),
             n("Concat", ["ra", "rb"], ["c"], axis=1, name="cat"),
             n("Conv", ["c", "ws"], ["s"], name="conv_s"), n("Sigmoid", ["s"], ["p"], name="sig"),
             n("Reshape", ["p", "shape"], ["r"], name="reshape"), n("Transpose", ["r"], ["t"], perm=[0, 2, 1],
                                                                     name="transpose"),
             n("Reshape", ["t", "flat"], ["out"], name="flatten")]
    g = helper.make_graph(nodes, "grouped", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 128])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_layers_a_scale_group_ties_together_are_one_unit(setup, tmp_path):
    """The quantizer gives a scale group one format whichever member is asked, so auto hybrid promotes whole groups:
    the two convs a concat joins together, a score map's conv (its sigmoid fused) with the layout ops that carry it. The
    report counts every layer that ends up 16-bit, data movement included, and names units after a layer that
    computes."""
    onnx.save(_grouped_model(), tmp_path / "grouped.onnx")
    plain = build(load_model(tmp_path / "grouped.onnx"), _cfg(), BuildOptions(dataset=str(setup / "dataset.txt")))
    tensors = plain.package.metadata["quantization"]["tensors"]
    units, unit_layers = hb._unit_table(plain.float_model, tensors)
    group_of, _ = hq.scale_groups(plain.float_model, requantized_pre_activations=True)
    owner = {}
    for unit, names in units.items():
        for t in names:
            if hq.override_name(t) in group_of:
                assert owner.setdefault(group_of[hq.override_name(t)], unit) == unit  # no group split across units
    by_layer = {n: u for u, members in unit_layers.items() for n in members}
    assert sorted(by_layer) == ["cat", "conv_a", "conv_b", "conv_s", "flatten", "openrknn_pre/x/transpose",
                                "reshape", "transpose"]
    assert by_layer["conv_a"] == by_layer["conv_b"] == by_layer["cat"] == "conv_a"
    assert by_layer["conv_s"] == by_layer["reshape"] == by_layer["transpose"] == by_layer["flatten"] == "conv_s"
    assert not {"cat", "reshape", "transpose", "flatten"} & set(units)

    res = hb.auto_hybrid(load_model(tmp_path / "grouped.onnx"), _cfg(),
                         BuildOptions(dataset=str(setup / "dataset.txt")), cos_thresh=0.99999, progress=False)
    report = res.hybrid_report
    assert report["units_total"] == 8 and report["units"]
    assert report["layers"] == [n for u in report["units"] for n in unit_layers[u]]
    records = res.package.metadata["quantization"]["tensors"]
    for unit in report["units"]:  # a promoted unit's points are all promoted, none left behind in its group
        assert all(records[p]["dtype"] == "int16" for t in units[unit] for p in hq.every_part(t, records)
                   if records[p]["kind"] == "activation")


def test_select_weighs_a_unit_by_its_layers(setup, tmp_path, monkeypatch):
    """Ranked by damage alone, the four-layer score-map unit comes first; weighed per layer it comes after the
    one-layer units. The prefix chosen is the one with the fewest layers among the orders tried."""
    onnx.save(_grouped_model(), tmp_path / "grouped.onnx")
    plain = build(load_model(tmp_path / "grouped.onnx"), _cfg(), BuildOptions(dataset=str(setup / "dataset.txt")))
    tensors = plain.package.metadata["quantization"]["tensors"]
    units, unit_layers = hb._unit_table(plain.float_model, tensors)
    sizes = {u: len(m) for u, m in unit_layers.items()}
    big = max(sizes, key=sizes.get)
    monkeypatch.setattr(hq, "damage", lambda model, *a, **k: {u: (1.0 if u == big else 0.9) for u in model.units})
    feeds = [{"x": np.load(setup / f"{k}.npy")[None]} for k in range(4)]
    picked, detail = hb._select(plain.float_model, plain.model, tensors, feeds, 0.99999, progress=False,
                                table=(units, unit_layers))
    orders = detail["orders"]
    assert orders["sensitivity"][0] == big and orders["sensitivity per layer"][-1] == big
    cost = {kd: sum(sizes[u] for u in orders[kd][:k]) for kd, k in detail["found"].items()}
    assert sum(sizes[u] for u in picked) == min(cost.values())
    assert picked == orders[detail["order_kind"]][:len(picked)]


def _leaky_model() -> onnx.ModelProto:
    """x -> conv -> LeakyRelu -> conv -> out (8x8, 3 -> 4 -> 4 channels)."""
    rng = np.random.default_rng(6)
    inits = [numpy_helper.from_array((rng.standard_normal(s) * .4).astype(np.float32), n)
             for n, s in (("w1", (4, 3, 3, 3)), ("w2", (4, 4, 1, 1)))]
    n = helper.make_node
    nodes = [n("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             n("LeakyRelu", ["c1"], ["a1"], name="leaky", alpha=0.1), n("Conv", ["a1", "w2"], ["out"], name="conv2")]
    g = helper.make_graph(nodes, "leaky", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("points", ["chip", "tflite"])
def test_units_follow_the_builds_pre_activation_points(setup, tmp_path, points):
    """The chip applies LeakyRelu inside its conv: conv1 and its activation are one layer, promoted through the
    activation's point. A pre_activation_points='tflite' build has conv1's own output as a point: two layers."""
    onnx.save(_leaky_model(), tmp_path / "leaky.onnx")
    cfg = make_config(target_platform="rk3588", quantized_dtype="w8a8", pre_activation_points=points)
    plain = build(load_model(tmp_path / "leaky.onnx"), cfg, BuildOptions(dataset=str(setup / "dataset.txt")))
    tensors = plain.package.metadata["quantization"]["tensors"]
    units, unit_layers = hb._unit_table(plain.float_model, tensors, hb._unit_policy(cfg))
    if points == "chip":   # one layer, promoted through its activation's point and its weight
        assert "c1" not in tensors and units["conv1"] == ["a1", "w1"] and "leaky" not in unit_layers
    else:                  # two layers: the conv with its own output, the activation with its output
        assert "c1" in tensors and units["conv1"] == ["c1", "w1"] and units["leaky"] == ["a1"]
    assert sum(len(v) for v in unit_layers.values()) == len({n for v in unit_layers.values() for n in v})


@pytest.mark.parametrize("decode", [False, True])
def test_select_prunes_unless_the_model_decodes_step_by_step(setup, tmp_path, monkeypatch, decode):
    """A decode loop's outputs on a few calibration samples cannot judge a unit unneeded: no pruning there."""
    from test_quant_control_flow import loop_model

    onnx.save(loop_model(decode), tmp_path / "loop.onnx")
    plain = build(load_model(tmp_path / "loop.onnx"), _cfg(), BuildOptions(dataset=str(setup / "dataset.txt")))
    tensors = plain.package.metadata["quantization"]["tensors"]
    feeds = [{"x": np.load(setup / f"{k}.npy")[None]} for k in range(4)]
    calls, prune = [], hb._prune
    monkeypatch.setattr(hb, "_prune", lambda *a: calls.append(a) or prune(*a))
    picked, detail = hb._select(plain.float_model, plain.model, tensors, feeds, 0.99999, progress=False)
    assert picked and bool(calls) == (not decode)
    if decode:
        assert detail["pruned"] == []
