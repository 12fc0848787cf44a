"""The main job end to end on the built-in eye detector (small sizes so it runs in well under a minute)."""

from __future__ import annotations

import json

import pytest

from openrknn.cli import main
from openrknn.package import read_package

pytestmark = pytest.mark.slow  # each runs the whole deployment path


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


def test_default_model_finds_the_eyes_through_the_deployment_pipeline(tmp_path):
    """The shipped weights, converted like the demo (float and int8 .rknn), on held-out generated frames."""
    from openrknn.api import RKNN
    from openrknn.vision.demo import SEED_CONFIG, _write_calibration
    from openrknn.vision.detector import Detector, DetectorOptions
    from openrknn.vision.eyes import CLASS_NAMES, DEFAULT_PAD_VALUE, default_weights, sample_at
    from openrknn.vision.yolox.evaluate import evaluate_map
    from openrknn.vision.yolox.export import export_torchscript

    pt = tmp_path / "eye.pt"
    export_torchscript(default_weights(), "nano", 3, 416, pt)
    dataset = _write_calibration(tmp_path / "calib", 32, 416, DEFAULT_PAD_VALUE)
    frames = [sample_at(12345, i, (640, 480)) for i in range(60)]  # the model card's held-out stream
    maps = {}
    for quant in (False, True):
        rk = RKNN()
        assert rk.config(**SEED_CONFIG) == 0
        assert rk.load_pytorch(str(pt), input_size_list=[[3, 416, 416]]) == 0
        assert rk.build(do_quantization=quant, dataset=str(dataset)) == 0 and rk.init_runtime() == 0
        det = Detector(rk, DetectorOptions(score_thr=0.01, pad_value=DEFAULT_PAD_VALUE, class_names=list(CLASS_NAMES)))
        dets = [det.detect(f) for f, _, _ in frames]
        maps[quant] = evaluate_map([(d.boxes, d.scores, d.class_ids) for d in dets],
                                   [(b, c) for _, b, c in frames], 3).map
        det.release()
    assert maps[False] >= 0.9, maps
    assert maps[False] - maps[True] <= 0.01, maps  # int8 within 1 mAP point of float
