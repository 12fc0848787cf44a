"""The one conversion core: the RKNN facade, `openrknn convert`, the GUI and the demo write byte-identical .rknn files
for the same model, config and calibration data; hybrid step 1/2 honour and record the quantizer options."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from openrknn.api import RKNN
from openrknn.cli import main
from openrknn.package import read_package


def _api_build(model: Path, config: dict, dataset: Path, out: Path, input_size_list=None) -> bytes:
    rk = RKNN()
    assert rk.config(**config) == 0
    load = rk.load_pytorch(str(model), input_size_list=input_size_list) if model.suffix == ".pt" \
        else rk.load_onnx(str(model))
    assert load == 0
    assert rk.build(do_quantization=True, dataset=str(dataset)) == 0 and rk.export_rknn(str(out)) == 0
    rk.release()
    return out.read_bytes()


def _cli_build(model: Path, config: dict, dataset: Path, out: Path, input_size_list=None) -> bytes:
    spec = {"model": str(model), "output": str(out), "config": config,
            "build": {"do_quantization": True, "dataset": str(dataset)}}
    if input_size_list:
        spec["input_size_list"] = input_size_list
    yml = out.with_suffix(".yml")
    yml.write_text(yaml.safe_dump(spec))
    assert main(["convert", str(yml)]) == 0
    return out.read_bytes()


def _gui_build(model: Path, config: dict, dataset: Path, workdir: Path, input_size: str = "") -> bytes:
    pytest.importorskip("fastapi")
    from test_gui_api import Client, build_and_wait

    from openrknn.gui.app import GuiSettings
    from openrknn.gui.server import BackgroundServer

    server = BackgroundServer(GuiSettings(port=0, workdir=workdir))
    server.start()
    try:
        client = Client(server.url).open_session()
        assert client.json("POST", "/api/model/path", {"path": str(model)})[0] == 200
        assert client.json("POST", "/api/dataset/path", {"path": str(dataset)})[0] == 200
        _, events = build_and_wait(client, {"config": config, "do_quantization": True, "input_size": input_size,
                                            "output_name": "gui.rknn"})
        assert not [e for e in events if e["type"] == "failure"], events
        session = server.app.state.store.get(client.token)
        return (session.outputs / "gui.rknn").read_bytes()
    finally:
        server.stop()


@pytest.mark.slow
def test_api_cli_gui_and_demo_write_the_same_bytes(tmp_path, capsys):
    from openrknn.vision.demo import SEED_CONFIG

    demo = tmp_path / "demo"
    assert main(["demo", "--out", str(demo), "--calib-images", "8", "--test-images", "2"]) == 0
    capsys.readouterr()
    pt, dataset = demo / "eye_yolox_nano.pt", demo / "calibration" / "dataset.txt"
    from_demo = (demo / "eye_yolox_nano.rknn").read_bytes()
    size = [[3, 416, 416]]
    from_api = _api_build(pt, SEED_CONFIG, dataset, tmp_path / "api.rknn", size)
    from_cli = _cli_build(pt, SEED_CONFIG, dataset, tmp_path / "cli.rknn", size)
    from_gui = _gui_build(pt, SEED_CONFIG, dataset, tmp_path / "gui_work", "3,416,416")
    meta = read_package(tmp_path / "api.rknn").metadata
    assert meta["quantization"]["calibration_samples"] == 8
    assert meta["source"]["file"] == "eye_yolox_nano.pt" and meta["build"]["dataset"] == "dataset.txt"
    assert from_api == from_demo, "API and demo differ"
    assert from_cli == from_demo, "CLI and demo differ"
    assert from_gui == from_demo, "GUI and demo differ"


def test_the_same_build_twice_is_byte_identical(conv_onnx, tmp_path):
    """No timestamp and no folder names in the file: a rebuild from a copy in another folder gives the same bytes."""
    import shutil

    a = tmp_path / "a"
    a.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        np.save(a / f"s{i}.npy", rng.integers(0, 256, (8, 10, 3)).astype(np.float32))
    (a / "dataset.txt").write_text("".join(f"s{i}.npy\n" for i in range(3)))
    shutil.copytree(a, tmp_path / "b")
    model = conv_onnx()
    copy = tmp_path / "b" / model.name
    shutil.copy(model, copy)
    cfg = {"mean_values": [127.5] * 3, "std_values": [64.0] * 3}
    first = _api_build(model, cfg, a / "dataset.txt", tmp_path / "a.rknn")
    second = _api_build(copy, cfg, tmp_path / "b" / "dataset.txt", tmp_path / "b.rknn")
    assert first == second


@pytest.mark.parametrize("options", [{"weight_rounding": "nearest", "range_remap": False},
                                     {"weight_rounding": "gptq", "range_remap": True}])
def test_hybrid_steps_honour_and_record_the_quantizer_options(conv_onnx, tmp_path, options):
    """Step 1 quantizes with config()'s weight rounding and range remap, step 2 reuses them (its parameters were made
    with them), both equal a plain build() with the same options, and the file records them."""
    ds = tmp_path / "dataset.txt"
    rng = np.random.default_rng(1)
    for i in range(4):
        np.save(tmp_path / f"s{i}.npy", rng.integers(0, 256, (8, 10, 3)).astype(np.float32))
    ds.write_text("".join(f"s{i}.npy\n" for i in range(4)))
    model = conv_onnx()
    cfg = {"mean_values": [127.5] * 3, "std_values": [64.0] * 3, **options}

    plain = RKNN()
    assert plain.config(**cfg) == 0 and plain.load_onnx(str(model)) == 0
    assert plain.build(do_quantization=True, dataset=str(ds)) == 0
    plain_q = plain._package.metadata["quantization"]

    rk = RKNN()
    assert rk.config(**cfg) == 0 and rk.load_onnx(str(model)) == 0
    out = tmp_path / "hybrid"
    assert rk.hybrid_quantization_step1(dataset=str(ds), output_dir=str(out)) == 0
    files = {p.suffix: p for p in out.iterdir()}
    rk2 = RKNN()  # a fresh object: step 2 takes step 1's settings from its files
    assert rk2.hybrid_quantization_step2(str(files[".model"]), str(files[".data"]), str(files[".cfg"])) == 0
    q = rk2._package.metadata["quantization"]
    expected_rounding = "nearest" if options["weight_rounding"] == "nearest" else "gptq"
    assert q["weight_rounding"] == plain_q["weight_rounding"] == expected_rounding
    assert q["range_remap"] is plain_q["range_remap"] is options["range_remap"]
    for name, t in plain_q["tensors"].items():  # the same integers' parameters as the plain build
        assert json.dumps(q["tensors"][name], sort_keys=True) == json.dumps(t, sort_keys=True), name
