"""Activation range searches: the KL threshold's coverage floor, on histograms with known tails."""

import numpy as np

from openrknn.quant.algorithms import activations as act
from openrknn.quant.schemes import TensorFormat

U8 = TensorFormat(8, False, False)


def _hist(bulk: int, tail: int, nb: int = 2048, seed: int = 0) -> tuple:
    """Counts over [0, 20]: a half-normal bulk below ~3 and ``tail`` values spread over 10..20."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([np.abs(rng.normal(0, 1, bulk)), rng.uniform(10, 20, tail)])
    hist, _ = np.histogram(x, bins=nb, range=(0.0, 20.0))
    return hist, 0.0, 20.0


def test_kl_keeps_a_tail_heavier_than_the_coverage_floor():
    """0.02% of the values lie far out (a detector's object activations): the TensorRT search alone cuts them all,
    the floor keeps the range out to where 99.99% of the values are covered."""
    hist, lo, hi = _hist(200_000, 40)
    plain = act._kl_threshold_bins(hist, U8.levels) * (hi - lo) / hist.size
    _, top = act.kl_range(hist, lo, hi, U8)
    covered = hist[: int(round(top / (hi - lo) * hist.size))].sum() / hist.sum()
    assert plain < 10.0  # the plain search clips the whole tail
    assert top > 10.0 and covered >= act.KL_MIN_COVERAGE


def test_kl_still_clips_a_tail_lighter_than_the_floor():
    """Four stray values in 200,000 are below the floor: the KL threshold is used as found."""
    hist, lo, hi = _hist(200_000, 4)
    _, top = act.kl_range(hist, lo, hi, U8)
    assert top < 10.0
    assert top == act._kl_threshold_bins(hist, U8.levels) * (hi - lo) / hist.size


def test_coverage_bins():
    hist = np.array([50, 30, 0, 19, 1, 0, 0])
    assert act._coverage_bins(hist, 0.5) == 1
    assert act._coverage_bins(hist, 0.99) == 4
    assert act._coverage_bins(hist, 1.0) == 5  # up to the last occupied bin, not the empty ones past it
    assert act._coverage_bins(np.zeros(8), 0.9999) == 8
