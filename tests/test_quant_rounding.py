"""Layer-wise rounding (gptq, adaround): lower layer output error than round-to-nearest on the same grid; wired
into quantize() (gptq by default)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from conftest import write_npy_dataset
from openrknn.errors import ConfigError
from openrknn.quant.algorithms.adaround import optimise_rounding
from openrknn.quant.algorithms.gptq import gptq_rounding
from openrknn.quant.algorithms.rounding import output_error
from openrknn.quant.algorithms.weights import quantize_weight
from openrknn.quant.schemes import get_scheme


def _correlated_inputs(rng, k, n=4000):
    mix = rng.normal(size=(k, k)) / np.sqrt(k) + np.eye(k)
    x = rng.normal(size=(n, k)) @ mix
    return x.T @ x / n


def test_learned_rounding_beats_nearest_shared_G():
    rng = np.random.default_rng(0)
    fmt = get_scheme("asymmetric_quantized-u8").weight  # coarse per-tensor grid: rounding choices matter
    w = rng.normal(size=(16, 36))
    G = _correlated_inputs(rng, 36)
    q0, s, z = quantize_weight(w, None, fmt)
    s_row, z_row = np.full(16, float(s)), np.full(16, int(z))
    q1 = optimise_rounding(w, s_row, z_row, fmt.qmin, fmt.qmax, G, iters=300)
    assert q1.min() >= fmt.qmin and q1.max() <= fmt.qmax
    assert np.abs(q1 - q0).max() <= 1  # floor or ceil only
    assert output_error(w, q1, s_row, z_row, G) < 0.8 * output_error(w, q0, s_row, z_row, G)


def _depthwise_case(seed: int):
    """A depthwise-like layer: 8 channels of 9 taps with ranges over a decade, one G per channel."""
    rng = np.random.default_rng(seed)
    fmt = get_scheme("w8a8").weight
    w = rng.normal(size=(8, 9)) * np.logspace(-1, 0, 8)[:, None]
    G = np.stack([_correlated_inputs(rng, 9, 500) for _ in range(8)])
    q0, s, z = quantize_weight(w, 0, fmt)
    return rng, fmt, w, G, q0, s, z


def test_learned_rounding_per_channel_G_depthwise():
    rng, fmt, w, G, q0, s, z = _depthwise_case(1)
    q1 = optimise_rounding(w, s, z, fmt.qmin, fmt.qmax, G, iters=300)
    assert output_error(w, q1, s, z, G) < output_error(w, q0, s, z, G)


def test_gptq_beats_nearest_shared_G():
    rng = np.random.default_rng(3)
    fmt = get_scheme("asymmetric_quantized-u8").weight
    w = rng.normal(size=(32, 200))
    G = _correlated_inputs(rng, 200)
    q0, s, z = quantize_weight(w, None, fmt)
    s_row, z_row = np.full(32, float(s)), np.full(32, int(z))
    qg = gptq_rounding(w, s_row, z_row, fmt.qmin, fmt.qmax, G)
    assert qg.dtype == np.int64 and qg.shape == w.shape
    assert qg.min() >= fmt.qmin and qg.max() <= fmt.qmax
    assert output_error(w, qg, s_row, z_row, G) < 0.7 * output_error(w, q0, s_row, z_row, G)
    # uncorrelated inputs (G = I): nothing to trade, so gptq is round-to-nearest
    assert np.array_equal(gptq_rounding(w, s_row, z_row, fmt.qmin, fmt.qmax, np.eye(200)), q0)


def test_gptq_per_row_G_and_blocks():
    rng, fmt, w, G, q0, s, z = _depthwise_case(4)
    q1 = gptq_rounding(w, s, z, fmt.qmin, fmt.qmax, G)
    assert output_error(w, q1, s, z, G) < output_error(w, q0, s, z, G)
    # more columns than one block: the lazy block updates must give the unblocked sweep's answer
    from openrknn.quant.algorithms import gptq

    w = rng.normal(size=(6, 300))
    G = _correlated_inputs(rng, 300)
    q0, s, z = quantize_weight(w, 0, fmt)
    blocked = gptq_rounding(w, s, z, fmt.qmin, fmt.qmax, G)
    old = gptq.BLOCK
    try:
        gptq.BLOCK = 10_000
        assert np.array_equal(gptq_rounding(w, s, z, fmt.qmin, fmt.qmax, G), blocked)
    finally:
        gptq.BLOCK = old


def test_gptq_dead_inputs_and_grid_edges():
    """Inputs that are always zero carry no error budget; weights at the grid's ends stay inside it."""
    rng = np.random.default_rng(5)
    fmt = get_scheme("w8a8").weight
    w = rng.normal(size=(4, 12))
    G = _correlated_inputs(rng, 12)
    G[:, 3] = G[3, :] = 0.0
    q0, s, z = quantize_weight(w, 0, fmt)
    q = gptq_rounding(w, s, z, fmt.qmin, fmt.qmax, G)
    assert q.min() >= fmt.qmin and q.max() <= fmt.qmax
    assert output_error(w, q, s, z, G) <= output_error(w, q0, s, z, G)


@pytest.mark.parametrize("k", [9, 100, 300])
def test_gptq_factor_is_the_lower_cholesky_factor_of_the_damped_moment(k):
    """M is lower triangular with M^T M = G + damping, one G or a batch of them."""
    from openrknn.quant.algorithms import gptq

    rng = np.random.default_rng(k)
    G = np.stack([_correlated_inputs(rng, k) for _ in range(2)])
    M = gptq._lower_factor(G)
    diag = np.einsum("bii->bi", G)
    H = G + gptq.DAMP * diag.mean(axis=1)[:, None, None] * np.eye(k)  # every input alive: damping only
    assert np.array_equal(M, np.tril(M))
    assert np.all(np.einsum("bii->bi", M) > 0)
    np.testing.assert_allclose(np.swapaxes(M, 1, 2) @ M, H, rtol=1e-10, atol=1e-12 * np.abs(H).max())


@pytest.mark.parametrize("k, rows, dead, wide", [(12, 4, False, False), (200, 32, True, False),
                                                 (300, 6, True, True), (129, 3, False, True)])
def test_gptq_gives_the_textbook_sweeps_integers(k, rows, dead, wide):
    """The nearest-plane sweep over one Cholesky factor rounds every weight as the paper's sweep over the inverse's
    factor does: below, at and across block boundaries, with dead inputs, and with weights pushed past the grid's
    ends (``wide``: the range of the first rows only, so later rows clip)."""
    from openrknn.testing import textbook_gptq

    rng = np.random.default_rng(k + rows)
    fmt = get_scheme("w8a8").weight
    w = rng.normal(size=(rows, k)) * np.logspace(-1, 0, rows)[:, None]
    G = _correlated_inputs(rng, k)
    if dead:
        G[:, 5] = G[5, :] = 0.0
    q0, s, z = quantize_weight(w, 0, fmt)
    if wide:
        s = np.full_like(s, s.min())
    want = textbook_gptq(w, s, z, fmt.qmin, fmt.qmax, G)
    got = gptq_rounding(w, s, z, fmt.qmin, fmt.qmax, G)
    assert np.array_equal(got, want)
    if wide:
        assert (want == fmt.qmin).any() or (want == fmt.qmax).any()  # the clipped case is exercised
    assert not np.array_equal(got, q0)  # and the sweep did move integers off nearest


def _tiny(tmp_path):
    from test_quant_schemes import SPEC, tiny_model

    from openrknn.quant.dataset import read_dataset

    return tiny_model(), read_dataset(write_npy_dataset(tmp_path, (8, 8, 3), n=4, seed=2), SPEC)


@pytest.mark.parametrize("rounding", ["adaround", "gptq"])
def test_quantize_with_layerwise_rounding(tmp_path, rounding):
    from openrknn.quant import QuantOptions, quantize

    model, data = _tiny(tmp_path)
    base = quantize(model, data, QuantOptions(dtype="w8a8", bias_correction=False, weight_rounding="nearest"),
                    progress=False)
    assert "weight_rounding" not in base.report
    res = quantize(model, data, QuantOptions(dtype="w8a8", bias_correction=False, weight_rounding=rounding,
                                             adaround_iters=100), progress=False)
    assert res.report["weight_rounding"]["method"] == rounding
    assert res.report["weight_rounding"]["layers"] >= 6
    assert res.tensors["w1"]["scale"] == base.tensors["w1"]["scale"]  # same grid, other rounding


def test_rounding_defaults_and_bad_value(tmp_path):
    from openrknn.quant import QuantOptions, quantize

    assert QuantOptions(algorithm="mmse").resolved_rounding == "gptq"
    assert QuantOptions(algorithm="kl_divergence").resolved_rounding == "gptq"
    assert QuantOptions(algorithm="mmse", weight_rounding="nearest").resolved_rounding == "nearest"
    model, data = _tiny(tmp_path)
    res = quantize(model, data, QuantOptions(dtype="asymmetric_quantized-u8", algorithm="mmse"), progress=False)
    assert res.report["weight_rounding"]["method"] == "gptq"
    w16 = quantize(model, data, QuantOptions(dtype="w16a16i", algorithm="mmse"), progress=False)
    assert "weight_rounding" not in w16.report  # 16-bit weights: nothing to gain
    with pytest.raises(ConfigError, match="weight_rounding"):
        quantize(model, data, QuantOptions(weight_rounding="stochastic"), progress=False)


def test_bias_means_ride_the_rounding_pass(tmp_path, monkeypatch):
    """Bias correction's means measured in the rounding statistics pass give the biases its own pass gives."""
    from openrknn.quant import QuantOptions, quantize
    from openrknn.quant.algorithms import rounding

    model, data = _tiny(tmp_path)
    opts = QuantOptions(dtype="asymmetric_quantized-u8", weight_rounding="gptq")
    shared = quantize(model, data, opts, progress=False)
    solo = rounding.round_weights
    monkeypatch.setattr(rounding, "round_weights", lambda *a: solo(*a[:-1], None))  # no passenger: own pass
    alone = quantize(model, data, opts, progress=False)
    assert shared.report["bias_correction"]["layers"] >= 5
    assert shared.report["bias_correction"]["samples"] == alone.report["bias_correction"]["samples"] == 4
    inits = [{i.name: onnx.numpy_helper.to_array(i) for i in r.model.graph.initializer} for r in (shared, alone)]
    assert inits[0].keys() == inits[1].keys()
    for name, v in inits[0].items():
        np.testing.assert_allclose(v, inits[1][name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_gptq_weighs_the_covariance_when_the_bias_is_corrected():
    """With a large input mean (SiLU outputs), bias correction removes dW . E[x]; what is left is weighed by the
    covariance, and rounding against it leaves less of that error than rounding against E[x x^T]."""
    from openrknn.quant.algorithms.rounding import _Layer

    rng = np.random.default_rng(5)
    fmt = get_scheme("asymmetric_quantized-u8").weight
    mix = rng.normal(size=(36, 36)) / 6 + np.eye(36)
    x = (rng.normal(size=(4000, 36)) @ mix) * 0.5 + rng.uniform(1.0, 3.0, 36)  # correlated, mean >> spread
    w = rng.normal(size=(16, 36))
    q0, s, z = quantize_weight(w, None, fmt)
    s_row, z_row = np.full(16, float(s)), np.full(16, int(z))
    layer = _Layer.__new__(_Layer)
    layer.G, layer.sum, layer.n = (x.T @ x).astype(np.float32), x.sum(axis=0), len(x)
    raw, cov = layer.moment(centred=False), layer.moment(centred=True)
    np.testing.assert_allclose(cov, np.cov(x.T, bias=True), rtol=1e-4, atol=1e-4)
    q_raw = gptq_rounding(w, s_row, z_row, fmt.qmin, fmt.qmax, raw)
    q_cov = gptq_rounding(w, s_row, z_row, fmt.qmin, fmt.qmax, cov)
    left = [output_error(w, q, s_row, z_row, cov) for q in (q0, q_raw, q_cov)]
    assert left[2] < 0.8 * left[1] < 0.8 * left[0]  # measured: 0.0074 against 0.0104 (raw) and 0.0132 (nearest)


@pytest.mark.parametrize("dead,target", [(0.0, "rk3588"), (1.2e-7, "rk3588"), (0.0, "rk1808"), (1.2e-7, "rk1808")])
def test_dead_channel_keeps_its_bias(tmp_path, dead, target):
    """A channel whose weights are zero (pruned, or a stored zero read back as 1.2e-7) beside a bias of a few units:
    its int32 bias at s_in * s_w must still hold the bias, or the NPU (and onnxruntime's QLinearConv) reads a
    fraction of it. The channel's weight scale rises to fit; every channel's output stays within a step. rk1808:
    asymmetric uint8 weights per channel, whose zero point moves with the scale."""
    from onnx import TensorProto, helper, numpy_helper

    from conftest import built_rknn
    from openrknn.metrics import cosine

    rng = np.random.default_rng(3)
    w = rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32)
    w[1] = dead
    b = np.array([0.1, 3.04, -0.2, 0.3], np.float32)
    g = helper.make_graph([helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
                           helper.make_node("Relu", ["c"], ["y"])], "dead",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    path = tmp_path / "dead.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    ds = write_npy_dataset(tmp_path, (8, 8, 3), n=4, seed=5)
    per_channel_u8 = {"quantized_dtype": "asymmetric_quantized-u8", "quantized_method": "channel"} \
        if target == "rk1808" else {}
    rk = built_rknn(path, ds, target_platform=target, mean_values=[[127.5] * 3], std_values=[[127.5] * 3],
                    **per_channel_u8)
    x = rng.integers(0, 256, (1, 8, 8, 3)).astype(np.uint8)
    got = rk.inference([x])[0]
    rk.release()
    xf = (x.astype(np.float32) - 127.5) / 127.5
    import onnxruntime as ort

    want = ort.InferenceSession(str(path)).run(None, {"x": xf.transpose(0, 3, 1, 2).copy()})[0]
    np.testing.assert_allclose(got[0, 1], want[0, 1], atol=0.05)  # the dead channel: its bias, 3.04
    assert cosine(got, want) > 0.999


def test_fc_sigmoid_output_reaches_half(tmp_path):
    """A presence flag (Gemm -> Sigmoid as a model output) calibrated only on negatives (every probability < 0.01):
    its int8 range reaches 0.5, as rknn-toolkit2 sets it, so a positive at run time reads ~0.3, not the few hundredths
    the calibration reached."""
    from onnx import TensorProto, helper, numpy_helper

    from conftest import built_rknn, write_samples

    w = np.concatenate([np.ones(8), -np.ones(8)]).astype(np.float32).reshape(16, 1)  # evidence for, against
    g = helper.make_graph([helper.make_node("Gemm", ["x", "w", "b"], ["z"]), helper.make_node("Sigmoid", ["z"], ["p"])],
                          "flag", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                          [helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, 1])],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([-6.0], np.float32), "b")])
    path = tmp_path / "flag.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    rng = np.random.default_rng(0)
    ds = write_samples(tmp_path, [rng.uniform(0, 1, (1, 16)).astype(np.float32) for _ in range(6)])
    rk = built_rknn(path, ds, target_platform="rk3588")
    seen = [np.ravel(rk.inference([x])[0])[0] for x in [rng.uniform(0, 1, (1, 16)).astype(np.float32)
                                                         for _ in range(6)]]
    positive = np.concatenate([np.full(8, 0.7), np.full(8, 0.05)]).astype(np.float32)[None]  # logit -0.8: 0.31
    high = float(np.ravel(rk.inference([positive])[0])[0])
    rk.release()
    assert max(seen) < 0.05  # what calibration saw: negatives only
    assert abs(high - 1 / (1 + np.exp(0.8))) < 0.01


def test_a_flags_logit_is_never_clipped():
    """The logit of a flag (MatMul -> bias Add -> Sigmoid as a model output, as TensorFlow writes a dense layer) is
    exempt from every clipping search (range choice's KL / MSE sets, kl_divergence, mmse): calibration images of one
    class leave the other class in a thin tail, and clipping it capped that class's probability (a hand-landmark
    model's handedness, its logit cut to [-0.03, 1.76] from [-2.55, 1.90], read 0.49 for 0.01 without a hand)."""
    from onnx import TensorProto, helper, numpy_helper

    from openrknn.quant.ir import GraphInfo, normalize
    from openrknn.quant.pipeline import _clip_exempt
    from openrknn.quant.plan import build_plan

    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["z"]),
                           helper.make_node("Sigmoid", ["z"], ["p"])],
                          "flag", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                          [helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, 1])],
                          [numpy_helper.from_array(np.full((16, 1), 0.1, np.float32), "w"),
                           numpy_helper.from_array(np.array([0.5], np.float32), "b")])
    info = GraphInfo(normalize(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])))
    plan = build_plan(info)
    # the host computes the output Sigmoid, and the bias Add before it joins its float tail: the MatMul's output is
    # the last int8 tensor, the logit without its bias
    assert plan.host_sigmoids == {"p": "z"} and "z" in plan.float_tail
    assert "m" in plan.points and plan.group_of["m"] in _clip_exempt(info, plan)


def _geometries_model():
    """Convs of every geometry the patch sampler handles, on an odd-sized input: padded 3x3, stride 2 with uneven
    pads, a dilated depthwise conv, a padded 1x1; then a Gemm (whose input is fetched whole)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(11)

    def w(name, *shape):
        return numpy_helper.from_array(rng.normal(size=shape).astype(np.float32) * 0.3, name)

    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], strides=[2, 2], pads=[0, 1, 1, 0]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("Conv", ["r2", "w3"], ["c3"], group=8, dilations=[2, 2], pads=[2, 2, 2, 2]),
             helper.make_node("Conv", ["c3", "w4"], ["c4"], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c4"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "w5"], ["y"], transB=1)]
    g = helper.make_graph(nodes, "geometries", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 17, 19])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
                          [w("w1", 8, 3, 3, 3), w("w2", 8, 8, 3, 3), w("w3", 8, 1, 3, 3), w("w4", 4, 8, 1, 1),
                           w("w5", 5, 4)])
    return onnx.shape_inference.infer_shapes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


def test_patches_gathered_in_the_graph_are_the_ones_taken_from_whole_inputs():
    """The rounding pass gathers each conv's sampled pixels in the graph (a large input's whole feature maps would
    dwarf all else it holds); the statistics must be exactly those of patches cut from whole fetched inputs."""
    from openrknn.quant import QuantOptions
    from openrknn.quant.algorithms import rounding
    from openrknn.quant.ir import GraphInfo, normalize
    from openrknn.quant.plan import build_plan

    m = normalize(_geometries_model())
    info = GraphInfo(m)
    plan = build_plan(info)
    rng = np.random.default_rng(3)
    data = [{"x": rng.normal(size=(1, 3, 17, 19)).astype(np.float32)} for _ in range(3)]

    def statistics(gathered: bool):
        layers = [rounding._Layer(info, w) for w in plan.weighted]
        layers = [la for la in layers if la.ok]
        gathers = rounding._in_graph_patches(info, layers) if gathered else None
        rounding._statistics_pass(m, layers, data, QuantOptions(), 3, 0, None, gathers, "gptq", False)
        return layers, gathers

    (inside, gathers), (whole, _) = statistics(True), statistics(False)
    assert gathers is not None and len(gathers) == 4 and len(inside) == 5  # four convs gathered, the Gemm whole
    for a, b in zip(inside, whole):
        assert a.n == b.n > 0
        np.testing.assert_array_equal(a.G, b.G, err_msg=a.w.w)
        np.testing.assert_array_equal(a.sum, b.sum, err_msg=a.w.w)


def test_a_stored_shape_the_graph_contradicts_falls_back_to_whole_inputs(monkeypatch):
    """Gathering needs each conv input's stored shape; where one is wrong the first run fails, and the pass is made
    again from whole inputs, with the same statistics."""
    from openrknn.quant import QuantOptions
    from openrknn.quant.algorithms import rounding
    from openrknn.quant.ir import GraphInfo, normalize
    from openrknn.quant.plan import build_plan

    m = normalize(_geometries_model())
    info = GraphInfo(m)
    plan = build_plan(info)
    data = [{"x": np.random.default_rng(4).normal(size=(1, 3, 17, 19)).astype(np.float32)}]
    w = next(w for w in plan.weighted if w.w == "w2")
    true = info.shape[w.x]
    info.shape[w.x] = true[:2] + (true[2] + 1, true[3])  # one row more than the graph computes
    layers = [la for la in (rounding._Layer(info, w) for w in plan.weighted) if la.ok]
    calls = []
    real = rounding._statistics_pass
    monkeypatch.setattr(rounding, "_statistics_pass", lambda *a: calls.append(a[7]) or real(*a))
    rounding._collect(m, info, layers, data, QuantOptions(), 1, 0, None, "gptq", False)
    assert calls[0] is not None and calls[1] is None  # tried in the graph, then made from whole inputs
    info.shape[w.x] = true
    whole = [la for la in (rounding._Layer(info, w) for w in plan.weighted) if la.ok]
    real(m, whole, data, QuantOptions(), 1, 0, None, None, "gptq", False)
    for a, b in zip(layers, whole):
        assert a.n == b.n > 0
        np.testing.assert_array_equal(a.G, b.G, err_msg=a.w.w)
