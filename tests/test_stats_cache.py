"""Calibration statistics shared between builds (openrknn.quant.stats_cache): a cached build is byte-identical to an
uncached one, passes are reused only when graph, feeds and request match, and a folder store is shared between
processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from openrknn.config import make_config
from openrknn.convert import BuildOptions, build, load_model
from openrknn.package import package_to_bytes
from openrknn.quant.calibrate import Stats
from openrknn.quant.stats_cache import DirStore, StatsCache, decode_stats, encode_stats


def _dw_model(path: Path) -> Path:
    """x [1,3,16,16] -> conv 3->8 (channel gains 0.05..20, so range split has work) -> relu -> depthwise 3x3 ->
    relu -> conv 1x1 8->4 -> y."""
    rng = np.random.default_rng(3)
    gains = np.geomspace(0.05, 20, 8).astype(np.float32)
    w1 = (rng.standard_normal((8, 3, 3, 3)) * 0.2).astype(np.float32) * gains[:, None, None, None]
    wd = (rng.standard_normal((8, 1, 3, 3)) * 0.3).astype(np.float32)
    w2 = (rng.standard_normal((4, 8, 1, 1)) * 0.3).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (wd, "wd"), (w2, "w2"))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "wd"], ["d1"], name="dw", kernel_shape=[3, 3], pads=[1] * 4, group=8),
             helper.make_node("Relu", ["d1"], ["r2"], name="relu2"),
             helper.make_node("Conv", ["r2", "w2"], ["y"], name="conv2", kernel_shape=[1, 1])]
    graph = helper.make_graph(nodes, "dw", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture
def dw_setup(tmp_path):
    model = load_model(_dw_model(tmp_path / "dw.onnx"))
    rng = np.random.default_rng(0)
    for i in range(4):
        np.save(tmp_path / f"s{i}.npy", rng.integers(0, 256, (16, 16, 3)).astype(np.float32))
    (tmp_path / "dataset.txt").write_text("".join(f"s{i}.npy\n" for i in range(4)))
    return model, str(tmp_path / "dataset.txt")


def _build(loaded, dataset, cache=None, **config):
    cfg = make_config(mean_values=[127.5] * 3, std_values=[64.0] * 3, **config)
    result = build(loaded, cfg, BuildOptions(dataset=dataset, stats_cache=cache), progress=False)
    return package_to_bytes(result.package), result.quant_report


SWEEP = [dict(target_platform="rk1808", quantized_algorithm=a, quantized_method=m)
         for m in ("layer", "channel") for a in ("normal", "kl_divergence", "mmse")]


def test_cached_builds_are_byte_identical_and_share_passes(dw_setup):
    loaded, dataset = dw_setup
    cache = StatsCache()
    for config in SWEEP:
        plain, _ = _build(loaded, dataset, None, **config)
        cached, report = _build(loaded, dataset, cache, **config)
        assert cached == plain, config
    # per method: one pass 1 shared by normal / kl / mmse, one pass 2 shared by kl / mmse, and normal's range choice
    # histograms (on its own few samples: a pass of its own)
    assert cache.misses == 2 * 3
    assert cache.hits == 2 * 1 + 2 * 2
    assert report["stages"]["minmax_pass"] == 0.0  # the last build reused both passes and says so


def test_other_data_or_graph_is_not_reused(dw_setup, tmp_path):
    loaded, dataset = dw_setup
    cache = StatsCache()
    _build(loaded, dataset, cache, quantized_algorithm="normal")
    (tmp_path / "two.txt").write_text("s0.npy\ns1.npy\n")
    fewer, _ = _build(loaded, str(tmp_path / "two.txt"), cache, quantized_algorithm="normal")
    assert cache.hits == 0 and cache.misses == 2 * 2  # pass 1 and the range choice's histograms, per dataset
    assert fewer == _build(loaded, str(tmp_path / "two.txt"), None, quantized_algorithm="normal")[0]
    # the RGB2BGR flag changes the decoded feeds of images only: .npy feeds are the same, so the pass is reused
    _build(loaded, dataset, cache, quantized_algorithm="normal", quant_img_RGB2BGR=True)
    assert cache.hits == 2
    # other mean/std: another float graph, another pass
    cfg = make_config(mean_values=[0.0] * 3, std_values=[1.0] * 3)
    build(loaded, cfg, BuildOptions(dataset=dataset, stats_cache=cache), progress=False)
    assert cache.misses == 3 * 2


def test_stats_round_trip_exactly():
    rng = np.random.default_rng(1)
    s = Stats(minmax={"a": (-0.1234567891234, 3.5), "b/c": (0.0, 1e-30)},
              channel_mean={"a": rng.standard_normal(5).astype(np.float32)},
              channel_minmax={"a": (rng.standard_normal(4), rng.standard_normal(4))},
              channel_samples={"a": rng.standard_normal((4, 9)).astype(np.float32)},
              hist={"a": rng.integers(0, 99, 2048)}, samples=7, seconds={"minmax_pass": 0.5})
    back = decode_stats(encode_stats(s))
    assert back.minmax == s.minmax and back.samples == 7 and back.seconds == s.seconds
    for field in ("channel_mean", "channel_samples", "hist"):
        a, b = getattr(s, field)["a"], getattr(back, field)["a"]
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert all(np.array_equal(x, y) for x, y in zip(s.channel_minmax["a"], back.channel_minmax["a"]))


_CHILD = """
import sys
from openrknn.config import make_config
from openrknn.convert import BuildOptions, build, load_model
from openrknn.quant.stats_cache import DirStore, StatsCache
cache = StatsCache(DirStore(sys.argv[2]))
cfg = make_config(mean_values=[127.5] * 3, std_values=[64.0] * 3, quantized_algorithm=sys.argv[4])
build(load_model(sys.argv[1]), cfg, BuildOptions(dataset=sys.argv[3], stats_cache=cache), progress=False)
print(cache.hits, cache.misses)
"""


@pytest.mark.slow
def test_folder_store_is_shared_between_processes(dw_setup, tmp_path):
    _, dataset = dw_setup
    store = tmp_path / "stats"
    runs = []
    for alg in ("kl_divergence", "mmse"):
        out = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "dw.onnx"), str(store), dataset, alg],
                             capture_output=True, text=True, check=True)
        runs.append(out.stdout.split()[-2:])
    assert runs == [["0", "2"], ["2", "0"]]
    assert len(DirStore(store)) == 2


def test_calibration_sessions_take_the_worker_thread_budget(monkeypatch, tmp_path):
    """A sweep worker sets OPENRKNN_THREADS; calibration passes (threads=0) follow it instead of the idle cores."""
    from openrknn.quant import calibrate

    model = onnx.load(str(_dw_model(tmp_path / "dw.onnx")))
    monkeypatch.setattr(calibrate, "auto_threads", lambda: 7)
    monkeypatch.setenv("OPENRKNN_THREADS", "1")
    assert calibrate.make_session(model).get_session_options().intra_op_num_threads == 1
    monkeypatch.delenv("OPENRKNN_THREADS")
    assert calibrate.make_session(model).get_session_options().intra_op_num_threads == 7
    assert calibrate.make_session(model, 2).get_session_options().intra_op_num_threads == 2
