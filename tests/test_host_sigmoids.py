"""An output Sigmoid computed on the host in float from int8 logits (quant/plan.py host_sigmoids,
quant/algorithms/host_sigmoids.py): always where it reads a point anyway, for a score head the chip would fuse where
that rounds the probabilities closer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import write_npy_dataset
from openrknn.errors import ConfigError
from openrknn.quant import QuantOptions, quantize
from openrknn.quant.algorithms.host_sigmoids import head_errors
from openrknn.quant.dataset import InputSpec, read_dataset
from openrknn.quant.ir import GraphInfo, normalize
from openrknn.quant.plan import build_plan

SIDE = 16


def _init(name, arr):
    return numpy_helper.from_array(np.asarray(arr, np.float32), name)


def score_model(head_bias: float, head_gain: float, concat_logits: bool = False, with_boxes: bool = False,
                as_rows: bool = False) -> onnx.ModelProto:
    """x [1, 3, 16, 16] -> stem conv + ReLU -> score conv (4 channels, bias ``head_bias``, weights x ``head_gain``)
    -> Sigmoid -> output 'scores' [1, 4, 8, 8]. concat_logits: two score convs joined by a Concat before the Sigmoid
    (yolo26n's class logits: the Sigmoid reads a point). with_boxes: the output is Concat(box conv, scores) (YOLOX's
    head). as_rows: the scores are reshaped and transposed to 'rows' [1, 64, 4], one row per cell (NanoDet's)."""
    rng = np.random.default_rng(5)
    n = helper.make_node
    inits = [_init("w_stem", rng.normal(0, 0.5, (8, 3, 3, 3))), _init("b_stem", rng.normal(0, 0.1, 8)),
             _init("w_cls", rng.normal(0, head_gain, (4, 8, 1, 1))), _init("b_cls", np.full(4, head_bias)),
             _init("w_cls2", rng.normal(0, head_gain, (4, 8, 1, 1))), _init("b_cls2", np.full(4, head_bias)),
             _init("w_box", rng.normal(0, 2.0, (4, 8, 1, 1))), _init("b_box", rng.normal(0, 4.0, 4))]
    nodes = [n("Conv", ["x", "w_stem", "b_stem"], ["stem_c"], pads=[1, 1, 1, 1], strides=[2, 2]),
             n("Relu", ["stem_c"], ["stem"]),
             n("Conv", ["stem", "w_cls", "b_cls"], ["logits"])]
    if concat_logits:
        nodes += [n("Conv", ["stem", "w_cls2", "b_cls2"], ["logits2"]),
                  n("Concat", ["logits", "logits2"], ["joined"], axis=1),
                  n("Sigmoid", ["joined"], ["scores"])]
        channels = 8
    else:
        nodes.append(n("Sigmoid", ["logits"], ["scores"]))
        channels = 4
    out = "scores"
    if as_rows:
        inits.append(numpy_helper.from_array(np.array([1, 4, 64], np.int64), "flat_shape"))
        nodes += [n("Reshape", ["scores", "flat_shape"], ["flat"]), n("Transpose", ["flat"], ["rows"], perm=[0, 2, 1])]
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, SIDE, SIDE])
        rows = helper.make_tensor_value_info("rows", TensorProto.FLOAT, [1, 64, 4])
        g = helper.make_graph(nodes, "rows", [x], [rows], inits)
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    if with_boxes:
        nodes += [n("Conv", ["stem", "w_box", "b_box"], ["boxes"]), n("Concat", ["boxes", "scores"], ["det"], axis=1)]
        out, channels = "det", channels + 4
    g = helper.make_graph(nodes, "scores", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, SIDE, SIDE])],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, channels, 8, 8])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    return read_dataset(write_npy_dataset(tmp_path_factory.mktemp("calib"), (1, 3, SIDE, SIDE), n=10, high=1.0),
                        [InputSpec("x", (1, 3, SIDE, SIDE))])


def _run(model: onnx.ModelProto, feed) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]


def _error(model: onnx.ModelProto, q: onnx.ModelProto, calib) -> float:
    return float(np.mean([np.mean((_run(q, f) - _run(model, f)) ** 2) for f in calib]))


def _on_unit_grid(x: np.ndarray) -> bool:
    return bool(np.allclose(x * 255, np.round(x * 255), atol=1e-3))


def test_an_output_sigmoid_that_reads_a_point_is_the_hosts():
    info = GraphInfo(normalize(score_model(0.0, 1.0, concat_logits=True)))
    for policy in (False, True):
        plan = build_plan(info, requantized_pre_activations=policy)
        assert plan.host_sigmoids == {"scores": "joined"}
        assert "scores" in plan.float_tail and "scores" not in plan.points
        # the Concat it reads joins the float tail as a decode step: each conv's logits keep their own scale
        assert {"logits", "logits2"} <= set(plan.points) and plan.group_of["logits"] != plan.group_of["logits2"]


def test_a_score_head_is_fused_unless_asked_for_the_host():
    info = GraphInfo(normalize(score_model(0.0, 1.0)))
    plan = build_plan(info, requantized_pre_activations=True)
    assert plan.host_sigmoids == {} and "logits" in plan.internal and "scores" in plan.points
    assert plan.unit_ranges["scores"] == (0.0, 1.0)
    plan = build_plan(info, requantized_pre_activations=True, host_heads=frozenset({"scores"}))
    assert plan.host_sigmoids == {"scores": "logits"} and plan.host_heads == {"scores"}
    assert "logits" in plan.points and "scores" in plan.float_tail and "scores" not in plan.unit_ranges
    # a build for TFLite keeps a conv's Sigmoid as its int8 LOGISTIC (reading the conv's pre-activation point)
    from openrknn.quant.plan import ALL_PRE_ACTIVATIONS

    tflite = build_plan(info, requantized_pre_activations=ALL_PRE_ACTIVATIONS)
    assert tflite.host_sigmoids == {} and tflite.pre_activations == {"logits": "sigmoid"} and "scores" in tflite.points


def test_head_errors_favour_the_host_for_small_probabilities_and_the_chip_for_wide_logits():
    rng = np.random.default_rng(0)
    small = rng.normal(-6.0, 1.0, 20000)  # probabilities around 0.0025: a few steps of 1/255 at most
    host, chip = head_errors(small, 255, (0.0, 1.0))
    assert host < 0.1 * chip
    wide = np.concatenate([rng.uniform(-40, -10, 20000), rng.normal(0.0, 2.0, 5000)])  # 0.16 a logit step
    host_wide, chip_wide = head_errors(wide, 255, (0.0, 1.0))
    assert chip_wide < host_wide
    # without a fixed grid (RKNPU1) the chip's grid is the probabilities' own range: finer for small ones
    host_free, chip_free = head_errors(small, 255, None)
    assert chip_free < chip and host_free == host


def test_auto_moves_a_head_of_small_probabilities_to_the_host_and_it_rounds_closer(calib):
    model = score_model(-6.0, 0.3)
    auto = quantize(model, calib, QuantOptions(dtype="w8a8", target="rk3588"), progress=False)
    chip = quantize(model, calib, QuantOptions(dtype="w8a8", target="rk3588", host_sigmoid_heads="none"),
                    progress=False)
    heads = auto.report["host_sigmoids"]["heads"]
    assert heads["scores"]["host"] and heads["scores"]["host_mse"] < heads["scores"]["chip_mse"]
    assert "host_sigmoids" not in chip.report
    assert "logits" in auto.tensors and "scores" not in auto.tensors and "scores" in chip.tensors
    assert not _on_unit_grid(_run(auto.model, next(iter(calib))))
    assert _error(model, auto.model, calib) < 0.5 * _error(model, chip.model, calib)


def test_on_rknpu1_the_chips_grid_is_the_probabilities_own_range(calib):
    """RK1808 calibrates a Sigmoid's output like any point: small probabilities get a fine grid of their own, and
    the chip keeps the head."""
    res = quantize(score_model(-6.0, 0.3), calib, QuantOptions(dtype="asymmetric_quantized-u8", target="rk1808"),
                   progress=False)
    head = res.report["host_sigmoids"]["heads"]["scores"]
    assert not head["host"] and head["chip_mse"] < head["host_mse"]
    assert res.tensors["scores"]["scale"][0] * 255 < 0.1  # not the [0, 1] grid


def test_auto_keeps_a_head_of_wide_logits_on_the_chip(calib):
    model = score_model(0.0, 8.0)
    res = quantize(model, calib, QuantOptions(dtype="w8a8", target="rk3588"), progress=False)
    assert not res.report["host_sigmoids"]["heads"]["scores"]["host"]
    assert "scores" in res.tensors and "logits" not in res.tensors
    assert _on_unit_grid(_run(res.model, next(iter(calib))))


def test_a_host_head_beside_boxes_builds_with_range_choice_and_score_bias(calib):
    """YOLOX's layout: Concat(boxes, Sigmoid(head)). The head's logits are then a part the range choice measures,
    and score bias correction reads them from its runs (they were once dropped from its list and misaligned)."""
    model = score_model(-5.0, 0.5, with_boxes=True)
    res = quantize(model, calib, QuantOptions(dtype="w8a8", target="rk3588", host_sigmoid_heads="all"),
                   progress=False)
    assert "score_bias_correction" in res.report and "logits" in res.tensors
    from openrknn.quant.qdq import with_outputs

    feed = next(iter(calib))
    sess = ort.InferenceSession(with_outputs(res.model, ["logits"]).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    det, q_logits = sess.run(["det", "logits"], feed)
    # the scores are the float Sigmoid of the int8 logits, nothing rounded after it
    np.testing.assert_allclose(det[:, 4:], 1.0 / (1.0 + np.exp(-q_logits)), rtol=1e-5, atol=1e-7)


def test_an_override_on_a_host_sigmoid_applies_to_its_logits(calib):
    model = score_model(-6.0, 0.3)
    res = quantize(model, calib, QuantOptions(dtype="w8a8", target="rk3588", host_sigmoid_heads="all",
                                              overrides={"scores": "int16"}), progress=False)
    assert res.tensors["logits"]["dtype"] == "int16"


def test_bad_host_sigmoid_heads_values_are_refused():
    from openrknn.api import RKNN

    with pytest.raises(ConfigError, match="host_sigmoid_heads"):
        QuantOptions(host_sigmoid_heads="cpu").validate()
    rknn = RKNN(verbose=False)
    assert rknn.config(host_sigmoid_heads="sometimes") != 0
    assert "host_sigmoid_heads" in str(rknn.last_error) and "auto" in str(rknn.last_error)
    assert rknn.config(host_sigmoid_heads="none") == 0


def test_through_the_api_the_package_and_openrknn_info_say_which_sigmoids_the_host_computes(tmp_path):
    """A user's build: the simulator's scores are the host's float Sigmoid (off the 1/255 grid, closer to the float
    model), and `openrknn info` names the Sigmoid the host computes."""
    from conftest import built_rknn
    from openrknn.package import read_package
    from openrknn.package_info import describe_package

    path = tmp_path / "scores.onnx"
    model = score_model(-6.0, 0.3)
    onnx.save(model, path)
    data = write_npy_dataset(tmp_path, (1, SIDE, SIDE, 3), n=10, high=1.0)
    rk = built_rknn(path, data, target_platform="rk3588", quantized_dtype="w8a8")
    x = np.random.default_rng(2).uniform(0, 1, (1, SIDE, SIDE, 3)).astype(np.float32)
    got = rk.inference(inputs=[x])[0]
    ref = _run(model, {"x": x.transpose(0, 3, 1, 2)})
    assert not _on_unit_grid(got) and np.abs(got - ref).max() < 1e-3
    out = tmp_path / "scores.rknn"
    assert rk.export_rknn(str(out)) == 0
    rk.release()
    text = describe_package(read_package(str(out)))
    assert "1 output Sigmoid on the host CPU in float from int8 logits: scores" in text


def test_a_host_sigmoid_moves_after_the_layout_ops_before_its_output(calib, monkeypatch):
    """The layout ops between a host Sigmoid and its output move the int8 logits on the NPU, each on the logits'
    grid, and the board's CPU computes the Sigmoid alone: the same outputs, the vendor bridge's host tail and the
    perf estimate's float tail one Sigmoid."""
    from openrknn.analysis.perf import estimate_perf
    from openrknn.quant.algorithms import host_sigmoids
    from openrknn.vendor.prepare import split_float_tail

    model = score_model(-6.0, 0.3, as_rows=True)
    opts = QuantOptions(dtype="w8a8", target="rk3588", host_sigmoid_heads="all")
    res = quantize(model, calib, opts, progress=False)
    producer = {o: n for n in res.model.graph.node for o in n.output}
    sigmoid = producer["rows"]
    assert sigmoid.op_type == "Sigmoid" and producer[sigmoid.input[0]].op_type == "DequantizeLinear"
    q = producer[producer[sigmoid.input[0]].input[0]]
    assert q.op_type == "QuantizeLinear" and producer[q.input[0]].op_type == "Transpose"
    transpose = producer[q.input[0]]
    assert producer[transpose.input[0]].op_type == "DequantizeLinear"  # the Reshape's int8 output, dequantized
    for name in (sigmoid.input[0], transpose.input[0]):
        assert res.tensors[name]["scale"] == res.tensors["logits"]["scale"]  # the logits' own grid
        assert res.tensors[name]["zero_point"] == res.tensors["logits"]["zero_point"]
    tail = onnx.ModelProto()
    tail.CopyFrom(res.model)
    assert [n.op_type for n in split_float_tail(tail)[1].graph.node] == ["Sigmoid"]
    est = estimate_perf(res.model, "rk3588", "w8a8")
    assert [r.op_type for r in est.rows if r.unit == "tail"] == ["Sigmoid"]
    assert {r.op_type: r.unit for r in est.rows}["Transpose"] == "NPU"
    monkeypatch.setattr(host_sigmoids, "sink_past_layout", lambda *a: 0)
    kept = quantize(model, calib, opts, progress=False)
    assert {o: n for n in kept.model.graph.node for o in n.output}["rows"].op_type == "Transpose"
    for feed in calib:
        np.testing.assert_array_equal(_run(res.model, feed), _run(kept.model, feed))


def test_hybrid_steps_edit_the_logits_that_the_layout_ops_carry(tmp_path):
    """Step1's cfg lists the logits point, not the layout ops' copies of it (they have no parameters of their own);
    step2 applies an edit of the logits to every copy, promotes the logits when a copy is named in
    custom_quantize_layers, and refuses a scale edit of a copy with the point to edit instead."""
    import yaml

    from openrknn.api import RKNN
    from openrknn.package import read_package

    onnx.save(score_model(-6.0, 0.3, as_rows=True), tmp_path / "rows.onnx")
    data = write_npy_dataset(tmp_path, (1, SIDE, SIDE, 3), n=10, high=1.0)
    r = RKNN()
    assert r.config(target_platform="rk3588", quantized_dtype="w8a8", host_sigmoid_heads="all") == 0
    assert r.load_onnx(str(tmp_path / "rows.onnx")) == 0
    assert r.hybrid_quantization_step1(dataset=data, output_dir=str(tmp_path)) == 0
    files = [str(tmp_path / f"rows.{ext}") for ext in ("model", "data", "quantization.cfg")]
    doc = yaml.safe_load(Path(files[2]).read_text())
    params = doc["quantize_parameters"]
    assert "logits" in params and not any(name.endswith("__logits") for name in params)

    def step2(edited: dict):
        Path(files[2]).write_text(yaml.safe_dump(edited, sort_keys=False))
        r2 = RKNN()
        rc = r2.hybrid_quantization_step2(*files)
        if rc != 0:
            return rc, r2, None
        assert r2.export_rknn(str(tmp_path / "h.rknn")) == 0
        return rc, r2, read_package(str(tmp_path / "h.rknn")).metadata["quantization"]["tensors"]

    scale = params["logits"]["scale"][0] * 1.5
    rc, _, tensors = step2({**doc, "quantize_parameters": {**params, "logits": {**params["logits"],
                                                                                 "scale": [scale]}}})
    assert rc == 0
    copies = [name for name, t in tensors.items() if t.get("follows") == "logits"]
    assert sorted(copies) == ["flat__logits", "rows__logits"]
    assert all(tensors[c]["scale"] == [pytest.approx(scale)] for c in copies + ["logits"])
    rc, _, tensors = step2({**doc, "custom_quantize_layers": {"rows__logits": "int16"}})
    assert rc == 0 and {tensors[name]["dtype"] for name in ["logits"] + copies} == {"int16"}
    copy = {**params["logits"], "scale": [scale]}
    rc, r2, _ = step2({**doc, "quantize_parameters": {**params, "flat__logits": copy}})
    assert rc == -1 and "edit 'logits'" in str(r2.last_error)
    # a cfg that lists the copies unedited (written before they were left out) still builds
    rc, _, _ = step2({**doc, "quantize_parameters": {**params, "flat__logits": params["logits"]}})
    assert rc == 0


def test_a_scale_given_for_a_host_sigmoids_output_is_not_put_on_its_logits(calib):
    """A scale given for the Sigmoid's output (a source model's, an older hybrid cfg's) is on the probabilities'
    [0, 1] grid: with the Sigmoid on the host its logits are the point, and keep a range of their own."""
    model = score_model(-6.0, 0.3)
    free = quantize(model, calib, QuantOptions(dtype="w8a8", target="rk3588", host_sigmoid_heads="all"),
                    progress=False)
    given = quantize(model, calib, QuantOptions(dtype="w8a8", target="rk3588", host_sigmoid_heads="all",
                                                fixed={"scores": (np.array([1 / 255]), np.array([-128]))}),
                     progress=False)
    assert given.tensors["logits"]["scale"] == pytest.approx(free.tensors["logits"]["scale"])
    assert given.tensors["logits"]["scale"] != pytest.approx([1 / 255])
