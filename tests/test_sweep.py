"""openrknn.sweep: the sweep file, the work units on the local pool and on Ray (identical tables), resume, a worker
killed mid-task, the Pareto front and the recommended YAML, metrics (mAP@0.5 through pycocotools), `openrknn sweep`
and `openrknn eval`."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

import openrknn
from openrknn.cli import main
from openrknn.errors import ConfigError, DatasetError
from openrknn.sweep import load_sweep_file, parse_sweep, run_sweep
from openrknn.sweep.evaluation import parse_eval
from openrknn.sweep.metrics import Labels, coco_map50, write_coco_labels
from openrknn.sweep.pareto import pareto_front, recommend
from openrknn.sweep.runner import run_eval
from test_stats_cache import _dw_model

TESTS = Path(__file__).resolve().parent


@pytest.fixture
def tiny_sweep(tmp_path):
    """A depthwise model (16x16 input), 4 calibration PNGs, 10 validation images of another size; returns a
    function making the sweep document (overrides merged in) and writing it as sweep.yml."""
    _dw_model(tmp_path / "dw.onnx")
    rng = np.random.default_rng(0)
    (tmp_path / "calib").mkdir()
    (tmp_path / "val").mkdir()
    for i in range(4):
        cv2.imwrite(str(tmp_path / "calib" / f"c{i}.png"), rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    (tmp_path / "calib" / "calib.txt").write_text("".join(f"c{i}.png\n" for i in range(4)))
    for i in range(10):
        cv2.imwrite(str(tmp_path / "val" / f"v{i}.png"), rng.integers(0, 256, (20, 24, 3), dtype=np.uint8))

    def make(sweep=None, evaluation=None) -> Path:
        doc = {"model": "dw.onnx", "config": {"mean_values": [127.5] * 3, "std_values": [64.0] * 3},
               "build": {"dataset": "calib/calib.txt"},
               "sweep": sweep or {"target_platform": ["rk1808", "rk3588"],
                                  "quantized_dtype": ["asymmetric_quantized-u8", "w8a8"],
                                  "quantized_algorithm": ["normal", "kl_divergence"]},
               "evaluation": {"images": "val", "shard_size": 4, "resamples": 50, **(evaluation or {})}}
        path = tmp_path / "sweep.yml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))  # the sweep keys' order is the table's order
        return path

    return make


# ---------------------------------------------------------------- the sweep file


def test_sweep_file_expands_to_the_configurations_each_chip_runs(tiny_sweep):
    spec = load_sweep_file(tiny_sweep())
    labels = [c.label for c in spec.configurations]
    assert labels == ["rk1808 u8 layer normal gptq", "rk1808 u8 layer kl_divergence gptq",
                      "rk3588 w8a8 channel normal gptq", "rk3588 w8a8 channel kl_divergence gptq"]
    assert spec.skipped == ["rk1808 w8a8", "rk3588 asymmetric_quantized-u8"]
    union = load_sweep_file(tiny_sweep([{"target_platform": "rk1808", "quantized_dtype": ["dynamic_fixed_point-i8",
                                                                                        "dynamic_fixed_point-i16"]},
                                        {"target_platform": "rk3588", "quantized_dtype": ["w8a8", "float16"]},
                                        {"target_platform": "rk3588", "quantized_dtype": "w8a8"}]))
    assert [c.label for c in union.configurations] == [
        "rk1808 dfp-i8 layer normal gptq", "rk1808 dfp-i16 layer normal gptq", "rk3588 w8a8 channel normal gptq",
        "rk3588 float16 channel normal gptq"]
    hybrid = load_sweep_file(tiny_sweep({"auto_hybrid": [False, 0.995]})).configurations
    assert [c.auto_hybrid for c in hybrid] == [None, 0.995]
    assert hybrid[1].options["auto_hybrid_cos_thresh"] == 0.995 and "hybrid@0.995" in hybrid[1].label


@pytest.mark.parametrize("sweep, evaluation, key", [
    ({"quantized_algorithm": ["normal", "fast"]}, None, "quantized_algorithm"),
    ({"mean_values": [[0, 0, 0]]}, None, "sweep.mean_values"),
    ({"quantization": ["x"]}, None, "sweep.quantization"),
    ({"quantized_algorithm": []}, None, "sweep.quantized_algorithm"),
    ([{"quantized_algorithm": "normal"}, "kl_divergence"], None, "sweep"),
    ({"auto_hybrid": [2.0]}, None, "sweep.auto_hybrid"),
    ({"target_platform": "rk1808", "quantized_dtype": "w8a8"}, None, "sweep"),
    (None, {"metric": "f1"}, "evaluation.metric"),
    (None, {"metric": "accuracy"}, "evaluation.labels"),
    (None, {"metric": "map50"}, "evaluation.labels"),
    (None, {"labels": "nowhere.json", "metric": "map50"}, "evaluation.labels"),
    (None, {"input": {"resize": "zoom"}}, "evaluation.input.resize"),
    (None, {"shard_size": 0}, "evaluation.shard_size"),
    (None, {"colour": "bgr"}, "evaluation.colour"),
])
def test_bad_sweep_files_name_the_key(tiny_sweep, sweep, evaluation, key):
    with pytest.raises(ConfigError) as e:
        load_sweep_file(tiny_sweep(sweep, evaluation))
    assert e.value.key == key


def test_missing_blocks_and_sets_are_explained(tiny_sweep, tmp_path):
    doc = yaml.safe_load(tiny_sweep().read_text())
    for block in ("sweep", "evaluation"):
        with pytest.raises(ConfigError, match=f"add an? '{block}:' block"):
            parse_sweep({k: v for k, v in doc.items() if k != block}, tmp_path)
    with pytest.raises(DatasetError, match="not found"):
        parse_sweep(dict(doc, evaluation={"images": "missing.txt"}), tmp_path)
    with pytest.raises(ConfigError, match="sweep.*build.*one target"):
        parse_sweep(dict(doc, config=dict(doc["config"], target_platform=["rk3566", "rk3568"]),
                         sweep={"quantized_algorithm": "normal"}), tmp_path)


# ---------------------------------------------------------------- running it


@pytest.mark.slow
def test_local_pool_and_ray_give_identical_tables_and_a_sweep_resumes(tiny_sweep, tmp_path):
    ray = pytest.importorskip("ray")
    path = tiny_sweep()
    local = openrknn.sweep(path, tmp_path / "local", workers=2, progress=False)
    assert local.units_run == 4 * (1 + 3 + 1) and not [r for r in local.rows if r["error"]]
    # kl_divergence reuses the pass 1 its normal sibling computed (same graph, same data)
    assert sum(r["stats_reused"] for r in local.rows) >= 2
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = openrknn.sweep(path, tmp_path / "ray", ray=True, progress=False)
    finally:
        ray.shutdown()
    assert on_ray.executor == "ray" and on_ray.table(measured=False) == local.table(measured=False)
    assert (tmp_path / "ray" / "table.csv").read_text().splitlines()[0] == \
        (tmp_path / "local" / "table.csv").read_text().splitlines()[0]

    # resume: nothing left to do; then a lost shard result and a lost build are redone, nothing else
    again = run_sweep(load_sweep_file(path), tmp_path / "local", workers=2, progress=False)
    assert again.units_run == 0 and again.table(measured=False) == local.table(measured=False)
    key = local.rows[2]["key"]
    res = tmp_path / "local" / "results"
    (res / f"{key}.json").unlink()
    (res / f"{key}.s1.json").unlink()
    assert run_sweep(load_sweep_file(path), tmp_path / "local", workers=2, progress=False).units_run == 1 + 1
    other = local.rows[0]["key"]
    for f in res.glob(f"{other}*"):
        f.unlink()
    (res / f"{key}.json").write_text("{half a fi")  # a crash mid-write of an older version: redone, not trusted
    resumed = run_sweep(load_sweep_file(path), tmp_path / "local", workers=2, progress=False)
    assert resumed.units_run == (1 + 3 + 1) + 1  # the other's build, shards and score; key's score again
    assert resumed.table(measured=False) == local.table(measured=False)


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["local", "ray"])
def test_a_worker_killed_mid_task_is_retried(tiny_sweep, tmp_path, monkeypatch, executor):
    if executor == "ray":
        ray = pytest.importorskip("ray")
    monkeypatch.setenv("SWEEP_CRASH_MARKER", str(tmp_path / "crashed"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    path = tiny_sweep({"target_platform": "rk3588", "quantized_algorithm": ["normal", "kl_divergence"]},
                      {"metric": "top1", "postprocess": "sweep_faults:crash_once"})
    if executor == "ray":
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = openrknn.sweep(path, tmp_path / "out", workers=2, ray=executor == "ray" or None, progress=False)
    finally:
        if executor == "ray":
            ray.shutdown()
    assert (tmp_path / "crashed").exists()  # a worker did die
    assert [r["error"] for r in result.rows] == [None, None]
    assert all(r["samples"] == 10 and 0 <= r["value"] <= 1 for r in result.rows)
    if executor == "local":
        assert result.restarts == 1


@pytest.mark.slow
def test_recommended_yaml_rebuilds_the_same_model_and_accuracy(tiny_sweep, tmp_path):
    path = tiny_sweep({"target_platform": "rk3588", "quantized_method": ["channel", "layer"],
                       "weight_rounding": ["nearest", "gptq"]}, {"tolerance": 0.0})
    result = openrknn.sweep(path, tmp_path / "out", workers=2, progress=False)
    rec = result.recommended["rk3588"]
    front = [r for r in result.rows if r["pareto"]]
    assert rec in front and rec["recommended"]
    assert rec["value"] == max(r["value"] for r in result.rows)  # tolerance 0: the most accurate
    for r in result.rows:  # nothing on the front is beaten on both axes by any row
        if r["pareto"]:
            assert not any(o["value"] >= r["value"] and o["npu_ms"] < r["npu_ms"] for o in result.rows)
    yml = tmp_path / "out" / "recommended-rk3588.yml"
    assert main(["convert", str(yml), "-o", str(tmp_path / "rebuilt.rknn")]) == 0
    assert (tmp_path / "rebuilt.rknn").read_bytes() == (tmp_path / "out" / "recommended-rk3588.rknn").read_bytes()
    metric, _ = run_eval(tmp_path / "rebuilt.rknn", load_sweep_file(path).evaluation, workers=1, progress=False)
    assert metric.value == rec["value"]
    summary = json.loads((tmp_path / "out" / "table.json").read_text())
    assert summary["recommended"] == {"rk3588": rec["key"]}
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Quantization sweep" in html and "data:image/png;base64" in html


# ---------------------------------------------------------------- metrics and the front


def test_a_sweep_keeps_the_models_channel_order(tiny_sweep, tmp_path):
    """reorder_channel is part of the model's contract: every build and the recommended YAML carry it (its list
    form once reached config(), which takes the vendor's string form, and every build failed)."""
    path = tiny_sweep({"target_platform": "rk3588", "quantized_method": ["channel"]})
    doc = yaml.safe_load(path.read_text())
    doc["config"]["reorder_channel"] = "2 1 0"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    result = openrknn.sweep(path, tmp_path / "out", workers=1, progress=False)
    assert [r["error"] for r in result.rows] == [None]
    rec = yaml.safe_load((tmp_path / "out" / "recommended-rk3588.yml").read_text())
    assert rec["config"]["reorder_channel"] == "2 1 0"


def test_a_sweep_ships_a_two_file_models_weights(tiny_sweep, tmp_path):
    """A Darknet model is two files: the workers get the weights too (named where the loader looks), the results'
    key covers them and the recommended YAML names them (the workers once got the .cfg alone)."""
    from loader_models import write_darknet

    nets = tmp_path / "nets"
    nets.mkdir()
    files = write_darknet(nets)
    files["weights"].rename(nets / "trained.weights")  # not beside the .cfg under its name: given in the YAML
    path = tiny_sweep({"target_platform": "rk3588", "quantized_method": ["channel"]})
    doc = yaml.safe_load(path.read_text())
    doc.update(model="nets/tiny.cfg", weights="nets/trained.weights")
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    result = openrknn.sweep(path, tmp_path / "out", workers=1, progress=False)
    assert [r["error"] for r in result.rows] == [None]
    rec = yaml.safe_load((tmp_path / "out" / "recommended-rk3588.yml").read_text())
    assert Path(rec["weights"]).name == "trained.weights"


def test_pareto_front_and_recommendation():
    rows = [dict(label=n, value=v, npu_ms=t) for n, v, t in
            [("a", 0.90, 1.0), ("b", 0.95, 2.0), ("c", 0.94, 3.0), ("d", 0.99, 5.0), ("e", math.nan, 0.5),
             ("f", 0.95, 2.0)]]
    front = pareto_front(rows)
    assert [rows[i]["label"] for i in front] == ["a", "b", "f", "d"]  # c is beaten by b; NaN never on the front
    assert rows[recommend(rows, front, 0.0)]["label"] == "d"
    assert rows[recommend(rows, front, 0.05)]["label"] == "b"  # fastest within 0.05 of the best; ties by label
    assert rows[recommend(rows, front, 0.2)]["label"] == "a"


def test_coco_map50_through_pycocotools(tmp_path):
    pytest.importorskip("pycocotools")
    gt = [[[10, 10, 50, 50, 0], [60, 60, 90, 90, 1]], [[0, 0, 20, 20, 0]]]
    exact = [[[*b[:4], 0.9, b[4]] for b in img] for img in gt]
    assert coco_map50(gt, exact) == pytest.approx(1.0)
    half = [exact[0], []]  # class 0: one of two found at the top score -> AP 0.5; class 1 found -> 1.0
    assert coco_map50(gt, half) == pytest.approx(0.75, abs=0.01)
    wrong_class = [[[*b[:4], 0.9, 1 - b[4]] for b in img] for img in gt]
    assert coco_map50(gt, wrong_class) == 0.0
    shifted = [[[b[0] + 15, b[1], b[2] + 15, b[3], 0.9, b[4]] for b in img] for img in gt]  # IoU < 0.5
    assert coco_map50(gt, shifted) == 0.0
    # COCO JSON round trip: the 80-class ids map back to detector class indices
    write_coco_labels(tmp_path / "gt.json", ["a.jpg", "b.jpg"], [(100, 100), (40, 40)],
                      [[[10, 10, 50, 50, 0], [60, 60, 90, 90, 12]], []])
    doc = json.loads((tmp_path / "gt.json").read_text())
    assert [a["category_id"] for a in doc["annotations"]] == [1, 14]  # COCO ids skip 12: class 12 is id 14
    labels = Labels(str(tmp_path / "gt.json"), "map50")
    assert labels.for_names(["a.jpg"]) == [[[10, 10, 50, 50, 0], [60, 60, 90, 90, 12]]]
    with pytest.raises(ConfigError, match="no COCO 'images' entry"):
        labels.for_names(["c.jpg"])


@pytest.mark.slow
def test_eval_yolox_map50_on_real_images(real_data, tmp_path, capsys):
    """The float YOLOX-nano scored against its own detections: exactly 1.0 whether the labels come from 'float' or
    from a COCO JSON of those detections; 4 shards over 2 workers give the single-worker result."""
    pytest.importorskip("pycocotools")
    model = real_data("models/yolox_nano_coco.onnx")
    images = sorted(Path(real_data("images/coco")).glob("*.jpg"))[:12]
    (tmp_path / "val.txt").write_text("".join(f"{p}\n" for p in images))
    spec_yml = tmp_path / "c.yml"
    spec_yml.write_text(yaml.safe_dump({"model": str(model), "output": str(tmp_path / "f.rknn"),
                                        "config": {"mean_values": [0, 0, 0], "std_values": [1, 1, 1]}}))
    assert main(["convert", str(spec_yml)]) == 0
    block = {"images": str(tmp_path / "val.txt"), "metric": "map50", "labels": "float", "shard_size": 3,
             "score_thr": 0.05, "class_agnostic": True}
    one, merged = run_eval(tmp_path / "f.rknn", parse_eval(block, tmp_path), workers=1, progress=False)
    assert one.value == 1.0 and one.samples == 12 and sum(len(r) for r in merged["ref"]) > 20
    write_coco_labels(tmp_path / "gt.json", merged["name"], merged["size"], merged["ref"])
    two, _ = run_eval(tmp_path / "f.rknn", parse_eval(dict(block, labels=str(tmp_path / "gt.json")), tmp_path),
                      workers=2, progress=False)
    assert two.value == pytest.approx(1.0)
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "f.rknn"), str(tmp_path / "val.txt"), "--metric", "map50", "--labels",
                 str(tmp_path / "gt.json"), "--workers", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["value"] == pytest.approx(1.0)


# ---------------------------------------------------------------- the command line


@pytest.mark.slow
def test_sweep_and_eval_commands(tiny_sweep, tmp_path, capsys):
    path = tiny_sweep({"target_platform": "rk1808", "quantized_algorithm": ["normal", "mmse"]})
    assert main(["sweep", str(path), "-o", str(tmp_path / "out"), "--workers", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "recommended for rk1808" in out and (tmp_path / "out" / "recommended-rk1808.rknn").is_file()
    assert main(["eval", str(tmp_path / "out" / "recommended-rk1808.rknn"), str(tmp_path / "val"),
                 "--shard-size", "4", "--workers", "2"]) == 0
    assert "cosine 0.99" in capsys.readouterr().out


def test_command_errors(tiny_sweep, tmp_path, capsys):
    assert main(["sweep", str(tmp_path / "nope.yml")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["sweep", str(tiny_sweep()), "--workers", "0"]) == 1
    assert "--workers=0" in capsys.readouterr().err
    (tmp_path / "bad.rknn").write_bytes(b"not a model")
    assert main(["eval", str(tmp_path / "bad.rknn"), str(tmp_path / "val")]) == 1
    assert "error:" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "bad.rknn"), str(tmp_path / "val"), "--metric", "iou"]) == 1
    assert "evaluation.metric" in capsys.readouterr().err


def test_a_task_submitted_to_a_pool_a_dead_worker_broke_runs_on_the_next_pool(monkeypatch):
    """A worker can die between one wait and the next submit: the submit finds the pool broken (CI saw
    BrokenProcessPool escape from submit). The task is kept, and the restart sends it as its first attempt."""
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool

    from openrknn.sweep import executors

    class Pool:
        def __init__(self, broken):
            self.broken = broken

        def submit(self, fn, name, args):
            if self.broken:
                raise BrokenProcessPool("a child process terminated abruptly")
            f = Future()
            f.set_result(("ran", name, args))
            return f

        def shutdown(self, wait=True, cancel_futures=False):
            pass

    pools = [Pool(broken=True), Pool(broken=False)]
    monkeypatch.setattr(executors.LocalPool, "_start", lambda self: pools.pop(0))
    pool = executors.LocalPool(2, ctx=None)
    tid = pool.submit("eval", 7)
    got = pool.wait()
    assert got == [] and pool.restarts == 1 and pool._tasks[tid]["attempts"] == 1  # sent once, on the new pool
    assert pool.wait() == [(tid, True, ("ran", "eval", (7,)))]
