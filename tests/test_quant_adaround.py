"""Learned rounding: lower layer output error than round-to-nearest on the same grid; wired into quantize()."""

from __future__ import annotations

import numpy as np

from openrknn.quant.algorithms.adaround import optimise_rounding, output_error
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


def test_learned_rounding_per_channel_G_depthwise():
    rng = np.random.default_rng(1)
    fmt = get_scheme("w8a8").weight
    w = rng.normal(size=(8, 9)) * np.logspace(-1, 0, 8)[:, None]
    G = np.stack([_correlated_inputs(rng, 9, 500) for _ in range(8)])
    q0, s, z = quantize_weight(w, 0, fmt)
    q1 = optimise_rounding(w, s, z, fmt.qmin, fmt.qmax, G, iters=300)
    assert output_error(w, q1, s, z, G) < output_error(w, q0, s, z, G)


def test_quantize_with_adaround(tmp_path):
    from test_quant_schemes import SPEC, tiny_model

    from openrknn.quant import QuantOptions, quantize
    from openrknn.quant.dataset import read_dataset

    rng = np.random.default_rng(2)
    for k in range(4):
        np.save(tmp_path / f"{k}.npy", rng.uniform(0, 255, (8, 8, 3)).astype(np.float32))
    (tmp_path / "d.txt").write_text("".join(f"{k}.npy\n" for k in range(4)))
    data = read_dataset(tmp_path / "d.txt", SPEC)
    model = tiny_model()
    base = quantize(model, data, QuantOptions(dtype="w8a8", bias_correction=False), progress=False)
    res = quantize(model, data, QuantOptions(dtype="w8a8", bias_correction=False, adaround=True, adaround_iters=100),
                   progress=False)
    assert res.report["adaround"]["layers"] >= 6
    assert res.tensors["w1"]["scale"] == base.tensors["w1"]["scale"]  # same grid, other rounding
