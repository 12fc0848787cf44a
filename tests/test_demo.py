"""The main job end to end on the built-in eye detector (small sizes so it runs in well under a minute)."""

from __future__ import annotations

import json

from openrknn.cli import main
from openrknn.package import read_package


def test_demo_runs_the_whole_path_and_finds_the_eyes(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--calib-images", "16", "--test-images", "12"]) == 0
    printed = capsys.readouterr().out
    assert str(out / "report.html") in printed
    pkg = read_package(out / "eye_yolox_nano.rknn")
    assert pkg.metadata["quantization"]["dtype"] == "asymmetric_quantized-u8"
    assert pkg.metadata["inputs"][0]["preprocess"]["reorder_channel"] == [2, 1, 0]
    report = (out / "report.html").read_text()
    for title in ("Float vs int8", "Per-stage timings", "Detections", "Speed (eval_perf)", "Memory (eval_memory)"):
        assert title in report
    dets = json.loads((out / "detections.json").read_text())
    assert len(dets["results"]) == 12 and sum(len(r["detections"]) for r in dets["results"]) >= 12
    assert len(list((out / "images").glob("*.png"))) == 8
