"""Calibration threads: the idle cores measured now, not the load average (which counts our own recent work)."""

from __future__ import annotations

import os

import pytest

from openrknn.quant import calibrate


@pytest.fixture(autouse=True)
def _fresh_cache():
    calibrate._IDLE_CACHE.clear()
    yield
    calibrate._IDLE_CACHE.clear()


def test_threads_follow_the_idle_cores(monkeypatch):
    cores = os.cpu_count() or 1
    assert 1 <= calibrate.auto_threads() <= cores
    calibrate._IDLE_CACHE.clear()
    monkeypatch.setattr(calibrate, "_idle_cores_now", lambda c: c * 0.5)  # half the machine busy right now
    assert calibrate.auto_threads() == max(1, round(cores * 0.5))
    calibrate._IDLE_CACHE.clear()
    monkeypatch.setattr(calibrate, "_idle_cores_now", lambda c: 0.2)  # all busy: one thread, never zero
    assert calibrate.auto_threads() == 1


def test_falls_back_to_the_load_average(monkeypatch):
    cores = os.cpu_count() or 1
    monkeypatch.setattr(calibrate, "_idle_cores_now", lambda c: None)
    monkeypatch.setattr(os, "getloadavg", lambda: (cores + 3.0, 0.0, 0.0))
    assert calibrate.auto_threads() == 1  # everything busy: one thread, never zero
    calibrate._IDLE_CACHE.clear()
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert calibrate.auto_threads() == cores


def test_measurement_is_cached(monkeypatch):
    calls = []
    monkeypatch.setattr(calibrate, "_idle_cores_now", lambda c: calls.append(c) or 1.0)
    for _ in range(5):
        calibrate.auto_threads()
    assert len(calls) == 1  # one 50 ms measurement per two seconds, not one per session


def test_proc_stat_reading_is_sane():
    if not os.path.exists("/proc/stat"):
        pytest.skip("no /proc/stat on this system")
    idle = calibrate._idle_cores_now(os.cpu_count() or 1)
    assert idle is not None and 0.0 <= idle <= (os.cpu_count() or 1) + 1e-9


def test_run_ahead_keeps_order_and_results():
    seen = []

    def run(i, x):
        seen.append(i)
        return x * 10 + i

    out = list(calibrate.run_ahead(iter([3, 5, 7]), run))
    assert out == [(3, 30), (5, 51), (7, 72)]
    assert seen == [0, 1, 2]
    assert list(calibrate.run_ahead([], run)) == []


def test_run_ahead_raises_the_workers_error_and_stops_early():
    def run(i, x):
        if x == "bad":
            raise ValueError("cannot read sample 2")
        return x

    steps = calibrate.run_ahead(["a", "b", "bad", "c"], run)
    assert next(steps) == ("a", "a") and next(steps) == ("b", "b")
    with pytest.raises(ValueError, match="sample 2"):
        next(steps)
    # a caller that stops early leaves no thread behind: the generator closes its pool
    steps = calibrate.run_ahead(range(100), lambda i, x: x)
    assert next(steps) == (0, 0)
    steps.close()
