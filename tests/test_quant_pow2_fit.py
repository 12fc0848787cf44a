"""Power-of-two range fitting (dynamic_fixed_point-i8): the rewrite is exact, the factors lower the grids' rounding
noise, only rescalable tensors are touched, and quantize() wires it in for dfp-i8 only."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import ort_run, write_npy_dataset
from openrknn.errors import ConfigError
from openrknn.quant.algorithms.pow2_fit import _noise, choose_factors, find_fits, pow2_fit
from openrknn.quant.ir import GraphInfo, normalize
from openrknn.quant.plan import build_plan
from openrknn.quant.schemes import get_scheme


def _model(opset: int = 17) -> onnx.ModelProto:
    """x -> conv -> ReLU6 (t1) -> conv -> ReLU (t2) -> conv -> SiLU (t3) -> conv (y, output), plus t2 -> Add.
    Opset < 11: the ReLU6 bounds are Clip attributes, not inputs."""
    rng = np.random.default_rng(0)

    def w(name, cout, cin, k=3):
        return numpy_helper.from_array((rng.normal(size=(cout, cin, k, k)) * 0.4).astype(np.float32), name)

    def b(name, c):
        return numpy_helper.from_array((rng.normal(size=c) * 0.1).astype(np.float32), name)

    inits = [w("w1", 6, 3), b("b1", 6), w("w2", 6, 6), b("b2", 6), w("w3", 4, 6, 1), b("b3", 4), w("w4", 2, 4, 1),
             numpy_helper.from_array(np.float32(0), "lo"), numpy_helper.from_array(np.float32(6), "hi")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["c1", "lo", "hi"], ["t1"]) if opset >= 11 else
             helper.make_node("Clip", ["c1"], ["t1"], min=0.0, max=6.0),
             helper.make_node("Conv", ["t1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["t2"]),
             helper.make_node("Conv", ["t2", "w3", "b3"], ["c3"]),
             helper.make_node("Sigmoid", ["c3"], ["s3"]),
             helper.make_node("Mul", ["c3", "s3"], ["t3"]),
             helper.make_node("Conv", ["t3", "w4"], ["y"]),
             helper.make_node("Add", ["t2", "t2"], ["z"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                           helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], inits)
    if opset < 11:
        g.initializer.pop()  # lo, hi: unused
        g.initializer.pop()
    return normalize(helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)]))


def _with_outputs(model: onnx.ModelProto, names) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names)
    return m


def test_only_rescalable_tensors_are_fitted():
    model = _model()
    info = GraphInfo(model)
    fits = find_fits(info, build_plan(info))
    # t1: conv + Clip, read by a conv. t2 is read by an Add, t3 is a SiLU (not homogeneous), y is an output.
    assert [f.tensors for f in fits] == [["t1"]]
    assert [info.nodes[c].op_type for c in fits[0].clips] == ["Clip"] and len(fits[0].readers) == 1


@pytest.mark.parametrize("opset", [17, 10])
def test_rewrite_is_exact_and_scales_the_tensor(opset):
    model = _model(opset)
    info = GraphInfo(model)
    fits = find_fits(info, build_plan(info))
    new, rep = pow2_fit(model, info, fits, {0: 1.37})
    assert rep["tensors"] == 1 and np.allclose(rep["channel_scales"]["t1"], 1 / 1.37)
    x = {"x": np.random.default_rng(1).uniform(-3, 3, (1, 3, 8, 8)).astype(np.float32)}
    before = ort_run(_with_outputs(model, ["t1"]), x)
    after = ort_run(_with_outputs(new, ["t1"]), x)
    for a, b in zip(before[:2], after[:2]):  # y and z: the function is unchanged
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(after[2], before[2] * 1.37, rtol=1e-5, atol=1e-5)  # ReLU6 became Clip(0, 8.22)
    assert before[2].max() > 6.0 * 0.99  # the clip was active, so its bound had to move too
    if opset >= 11:  # the Clip got its own bound copies: a bound constant shared with other nodes stays as it was
        inits = {i.name: numpy_helper.to_array(i) for i in new.graph.initializer}
        assert np.array_equal(inits["hi"], np.float32(6))


def test_factors_fill_the_grid_and_lower_the_noise():
    fmt = get_scheme("dynamic_fixed_point-i8").act
    wfmt = get_scheme("dynamic_fixed_point-i8").weight
    # a ReLU6 output: 6 on the grid up to 7.94 uses 96 of 127 levels
    assert _noise(np.array([6.0]), fmt) == pytest.approx(1 / 96 ** 2)
    assert _noise(np.array([127 / 16]), fmt) == pytest.approx(1 / 127 ** 2)
    model = _model()
    info = GraphInfo(model)
    fits = find_fits(info, build_plan(info))
    amax = {"t1": 6.0}
    factors = choose_factors(info, fits, amax, fmt, wfmt, per_channel=False)

    def total(f):
        w1 = np.abs(info.const("w1")).max() * f
        w2 = np.abs(info.const("w2")).max() / f
        return _noise(np.array([6.0 * f]), fmt) + _noise(np.array([w1]), wfmt) + _noise(np.array([w2]), wfmt)

    f = factors.get(0, 1.0)
    assert 1.0 <= f < 2.0
    assert total(f) < total(1.0)
    assert total(f) <= min(total(g) for g in np.exp2(np.arange(64) / 64.0)) + 1e-12  # the best on the grid


def test_quantize_uses_it_for_dfp_i8_only(tmp_path):
    from openrknn.quant import QuantOptions, quantize
    from openrknn.quant.dataset import InputSpec, read_dataset

    model = _model()
    data = read_dataset(write_npy_dataset(tmp_path, (1, 3, 8, 8), n=4, seed=3, high=3.0),
                        [InputSpec("x", (1, 3, 8, 8))])
    # round-to-nearest weights: the comparison is about the grids, not about GPTQ's choices on 4 samples
    on = quantize(model, data, QuantOptions(dtype="dynamic_fixed_point-i8", weight_rounding="nearest"),
                  progress=False)
    off = quantize(model, data, QuantOptions(dtype="dynamic_fixed_point-i8", weight_rounding="nearest",
                                             pow2_fit=False), progress=False)
    assert "pow2_fit" not in off.report
    assert on.report["pow2_fit"]["tensors"] == 1 and "pow2_fit" in on.report["stages"]
    # t1 saturates at 6 on this data: on the grid 2^-4 it used 96 levels, multiplied it uses more of the same grid
    assert off.tensors["t1"]["scale"][0] == on.tensors["t1"]["scale"][0] == 2.0 ** -4
    from openrknn.quant.qdq import channel_scales

    f = 1.0 / float(channel_scales(on.model)["t1"][0])  # recorded for accuracy analysis: float = new * (1 / f)
    assert 96 < 6.0 * f / 2.0 ** -4 <= 127.5  # more of the 127 levels, and the ReLU6 top still on the grid
    x = {"x": next(iter(data))["x"]}
    # accuracy analysis compares the rescaled t1 with the float t1 (the factor is recorded in the model)
    from openrknn.analysis.accuracy import accuracy_analysis

    rows = {r["name"]: r for r in accuracy_analysis(model, on.model, [x], tmp_path / "aa", progress=False)["layers"]}
    t1 = ort_run(_with_outputs(model, ["t1"]), x)[2]
    assert rows["t1"]["single_euc"] < 0.02 * np.linalg.norm(t1)  # unscaled it would be off by the factor (~30%)
    for dtype in ("asymmetric_quantized-u8", "w8a8", "dynamic_fixed_point-i16"):
        assert "pow2_fit" not in quantize(model, data, QuantOptions(dtype=dtype), progress=False).report
    with pytest.raises(ConfigError):
        QuantOptions(pow2_fit="yes").validate()


def _stream_model() -> onnx.ModelProto:
    """x -> conv (a), x -> conv (b), s = a + b -> conv (y): a residual stream a, b, s takes one factor."""
    rng = np.random.default_rng(4)
    inits = [numpy_helper.from_array((rng.normal(size=s) * 0.5).astype(np.float32), n)
             for n, s in (("wa", (4, 3, 3, 3)), ("ba", (4,)), ("wb", (4, 3, 1, 1)), ("wc", (2, 4, 1, 1)))]
    nodes = [helper.make_node("Conv", ["x", "wa", "ba"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["x", "wb"], ["b"]),
             helper.make_node("Add", ["a", "b"], ["s"]),
             helper.make_node("Conv", ["s", "wc"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return normalize(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


def test_residual_stream_takes_one_factor():
    model = _stream_model()
    info = GraphInfo(model)
    fits = find_fits(info, build_plan(info))
    assert len(fits) == 1 and sorted(fits[0].tensors) == ["a", "b", "s"] and len(fits[0].producers) == 2
    new, rep = pow2_fit(model, info, fits, {0: 1.6})
    x = {"x": np.random.default_rng(2).normal(size=(1, 3, 6, 6)).astype(np.float32)}
    before = ort_run(_with_outputs(model, ["a", "b", "s"]), x)
    after = ort_run(_with_outputs(new, ["a", "b", "s"]), x)
    np.testing.assert_allclose(after[0], before[0], rtol=1e-4, atol=1e-5)  # y unchanged
    for k in (1, 2, 3):
        np.testing.assert_allclose(after[k], before[k] * 1.6, rtol=1e-4, atol=1e-5)
    assert set(rep["channel_scales"]) == {"a", "b", "s"}
