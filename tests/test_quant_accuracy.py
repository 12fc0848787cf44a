"""accuracy_analysis: the vendor-style per-layer report, plot and bounded dumps."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import write_npy_dataset
from openrknn.quant import QuantOptions, quantize
from openrknn.analysis.accuracy import accuracy_analysis
from test_quant_schemes import SPEC, tiny_model  # noqa: F401  (shared tiny model)
from openrknn.quant.dataset import read_dataset


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    data = read_dataset(write_npy_dataset(tmp_path_factory.mktemp("acc"), (8, 8, 3), n=4), SPEC)
    model = tiny_model()
    res = quantize(model, data, QuantOptions(dtype="asymmetric_quantized-u8", range_split=False), progress=False)
    return model, res, list(data)


def test_report_files_and_rows(setup, tmp_path):
    model, res, feeds = setup
    out = accuracy_analysis(model, res.model, feeds[:2], tmp_path / "aa", progress=False)
    txt = (tmp_path / "aa" / "error_analysis.txt").read_text()
    assert "entire_cos" in txt and "single_cos" in txt
    names = [r["name"] for r in out["layers"]]
    # every quantization point is a row, in topological order; internal conv outputs are not
    for t in ("x", "r1", "silu", "pool", "cat", "feat", "box", "cls", "det", "logits"):
        assert t in names, t
    assert "c1" not in names and names.index("r1") < names.index("silu") < names.index("feat")
    rows = {r["name"]: r for r in out["layers"]}
    assert rows["x"]["entire_cos"] == pytest.approx(rows["x"]["single_cos"])  # first layer: same input
    for r in out["layers"]:
        assert -1 <= r["entire_cos"] <= 1.000001 and r["entire_euc"] >= 0
        assert r["single_cos"] >= 0.95  # each layer alone is close to float
    assert out["outputs"]["logits"] > 0.98
    png = tmp_path / "aa" / "cosine_by_layer.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    dumps = sorted((tmp_path / "aa" / "dumps").glob("*.npy"))
    assert len(dumps) == 2 * len(out["dumped"]) and out["dumped"]
    a = np.load(tmp_path / "aa" / "dumps" / "feat.float.npy")
    assert a.shape == (1, 8, 4, 4)


def test_single_mode_isolates_a_layer(setup, tmp_path):
    """Entire-mode error accumulates; single-mode error of a deep layer is its own, so never much worse."""
    model, res, feeds = setup
    out = accuracy_analysis(model, res.model, feeds, tmp_path / "aa", progress=False)
    rows = {r["name"]: r for r in out["layers"]}
    assert rows["logits"]["single_euc"] <= rows["logits"]["entire_euc"] * 1.5 + 1e-6


def test_split_parts_are_not_rows(setup, tmp_path):
    """Range split adds tensors the float model does not have: analysis compares what both compute."""
    model, _, feeds = setup
    res = quantize(model, feeds_to_data(feeds, tmp_path), QuantOptions(dtype="w8a8", range_split_ratio=2.0),
                   progress=False)
    parts = [t for t in res.tensors if "__split" in t]
    assert parts
    out = accuracy_analysis(model, res.model, feeds[:1], tmp_path / "aa", progress=False)
    names = {r["name"] for r in out["layers"]}
    assert not names & set(parts) and "silu" in names and "logits" in names


def test_dump_limit_is_respected(setup, tmp_path):
    model, res, feeds = setup
    out = accuracy_analysis(model, res.model, feeds[:1], tmp_path / "aa", dump_limit_mb=0.001, progress=False)
    total = sum(p.stat().st_size for p in (tmp_path / "aa").rglob("*.npy"))
    assert total <= 0.001 * 1024 * 1024 + 2 * 128 * len(out["dumped"])  # npy headers
    assert out["skipped_dumps"]
    assert "skipped" in (tmp_path / "aa" / "error_analysis.txt").read_text()


def test_float16_model_has_entire_mode_only(setup, tmp_path):
    model, _, feeds = setup
    from openrknn.quant.dataset import CalibrationData  # noqa: F401

    res = quantize(model, feeds_to_data(feeds, tmp_path), QuantOptions(dtype="float16"), progress=False)
    out = accuracy_analysis(model, res.model, feeds[:1], tmp_path / "aa", progress=False)
    assert out["layers"] and all(r["single_cos"] is None for r in out["layers"])
    assert out["outputs"]["logits"] > 0.999


def feeds_to_data(feeds, folder):
    for k, f in enumerate(feeds):
        np.save(folder / f"{k}.npy", f["raw"])
    (folder / "d.txt").write_text("".join(f"{k}.npy\n" for k in range(len(feeds))))
    return read_dataset(folder / "d.txt", SPEC)
