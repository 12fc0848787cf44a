"""`openrknn convert / info / run`: YAML conversion (our layout and the vendor's rknn_convert layout), model
inspection, simulator runs saving .npy; every bad input exits 1 with a message and writes nothing."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from openrknn.api import RKNN
from openrknn.cli import main

H, W = 8, 10
MEAN, STD = [10.0, 100.0, 200.0], [2.0, 4.0, 8.0]


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _write_yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _api_build(model: Path, out: Path, loader: str = "onnx", **load_kw) -> Path:
    rknn = RKNN()
    assert rknn.config(mean_values=[MEAN], std_values=[STD], reorder_channel="2 1 0", target_platform="rk1808") == 0
    ret = rknn.load_onnx(str(model)) if loader == "onnx" else rknn.load_pytorch(str(model), **load_kw)
    assert ret == 0
    assert rknn.build(do_quantization=False) == 0
    assert rknn.export_rknn(str(out)) == 0
    rknn.release()
    return out


def _outputs(rknn_path: Path, frame: np.ndarray):
    rknn = RKNN()
    assert rknn.load_rknn(str(rknn_path)) == 0 and rknn.init_runtime() == 0
    out = rknn.inference(inputs=[frame])
    rknn.release()
    return out


@pytest.fixture
def model_rknn(conv_onnx, tmp_path) -> Path:
    return _api_build(conv_onnx(pads=1), tmp_path / "conv.rknn")


# ---------------------------------------------------------------- convert


def test_convert_our_layout(tmp_path, tiny_torch_files, capsys, pixels):
    work = tmp_path / "job"
    (work / "out").mkdir(parents=True)
    shutil.copy(tiny_torch_files["pt"], work / "tiny.pt")
    cfg = _write_yaml(work / "convert.yml", {
        "model": "tiny.pt",  # relative to the YAML file
        "input_size_list": [[3, 16, 20]],
        "output": "out/tiny.rknn",
        "config": {"mean_values": MEAN, "std_values": STD, "reorder_channel": "2 1 0", "target_platform": "rk1808"},
        "build": {"do_quantization": False},
    })
    code, out, err = _cli(capsys, "convert", cfg)
    assert code == 0, err
    target = work / "out" / "tiny.rknn"
    assert target.is_file() and f"wrote {target}" in out
    assert "target platform: rk1808" in out and "2 1 0" in out
    # the same conversion through the API gives the same model outputs
    api = _api_build(work / "tiny.pt", tmp_path / "api.rknn", loader="pytorch", input_size_list=[[3, 16, 20]])
    frame = pixels(16, 20, seed=1)
    np.testing.assert_array_equal(_outputs(target, frame)[0], _outputs(api, frame)[0])


def test_convert_vendor_layout(tmp_path, conv_onnx, capsys, pixels):
    model = conv_onnx(pads=1)
    cfg = _write_yaml(tmp_path / "rknn_convert.yml", {"models": {
        "name": "vendor_style",
        "platform": "onnx",
        "model_file_path": model.name,
        "quantize": False,
        "configs": {"mean_values": [MEAN], "std_values": [STD], "reorder_channel": "2 1 0",
                    "target_platform": "rk1808"},
    }})
    code, out, err = _cli(capsys, "convert", cfg)
    assert code == 0, err
    target = tmp_path / "vendor_style.rknn"
    assert target.is_file()
    api = _api_build(model, tmp_path / "api.rknn")
    frame = pixels(H, W, seed=2)
    np.testing.assert_array_equal(_outputs(target, frame)[0], _outputs(api, frame)[0])


def test_convert_output_option_overrides_the_file(tmp_path, conv_onnx, capsys):
    model = conv_onnx()
    cfg = _write_yaml(tmp_path / "c.yml", {"model": model.name, "output": "ignored.rknn"})
    code, _, err = _cli(capsys, "convert", cfg, "-o", tmp_path / "chosen.rknn")
    assert code == 0, err
    assert (tmp_path / "chosen.rknn").is_file() and not (tmp_path / "ignored.rknn").exists()


def test_convert_with_a_dataset_quantizes_unless_told_not_to(tmp_path, conv_onnx, capsys):
    """A file that names a dataset quantizes, as build() and a sweep file do; do_quantization: false keeps float."""
    from conftest import write_npy_dataset
    from openrknn.package import read_package

    model = conv_onnx()
    write_npy_dataset(tmp_path, (H, W, 3))
    for name, build in (("implied", {"dataset": "dataset.txt"}),
                        ("float", {"dataset": "dataset.txt", "do_quantization": False})):
        cfg = _write_yaml(tmp_path / f"{name}.yml", {"model": model.name, "build": build,
                                                     "config": {"target_platform": "rk3588"}})
        code, out, err = _cli(capsys, "convert", cfg, "-o", tmp_path / f"{name}.rknn")
        assert code == 0, err
    assert read_package(tmp_path / "implied.rknn").metadata["quantization"]["dtype"] == "w8a8"
    assert read_package(tmp_path / "float.rknn").metadata["quantization"] is None


@pytest.mark.parametrize("data, words", [
    ({"model": "conv.onnx", "mean_values": MEAN}, ["mean_values", "put it under 'config:'"]),
    ({"model": "conv.onnx", "do_quantization": False}, ["do_quantization", "put it under 'build:'"]),
    ({"model": "conv.onnx", "config": {"reorder_chanel": "2 1 0"}}, ["reorder_chanel", "'reorder_channel'"]),
    ({"model": "conv.onnx", "config": {"reorder_channel": "2 1 1"}}, ["reorder_channel='2 1 1'", "not a permutation"]),
    ({"model": "conv.onnx", "config": {"target_platform": "rk1809"}}, ["target_platform='rk1809'", "'rk1808'"]),
    ({"model": "conv.onnx", "build": {"rknn_batch": 2}}, ["build.rknn_batch", "'rknn_batch_size'"]),
    ({"models": {"name": "m", "model_file_path": "conv.onnx", "quantise": True}}, ["quantise", "'quantize'"]),
    ({"models": {"name": "m"}}, ["model_file_path"]),
    ({"output": "x.rknn"}, ["model=None"]),
    (["model", "conv.onnx"], ["mapping"]),
])
def test_convert_bad_yaml_exits_1_and_writes_nothing(tmp_path, conv_onnx, capsys, data, words):
    conv_onnx()
    cfg = _write_yaml(tmp_path / "bad.yml", data)
    before = sorted(p.name for p in tmp_path.iterdir())
    code, out, err = _cli(capsys, "convert", cfg)
    assert code == 1
    assert err.startswith("error: ")
    for w in words:
        assert w in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_convert_missing_or_broken_yaml(tmp_path, capsys):
    code, _, err = _cli(capsys, "convert", tmp_path / "absent.yml")
    assert code == 1 and "absent.yml" in err and "does not exist" in err
    broken = tmp_path / "broken.yml"
    broken.write_text("model: [unclosed\n", encoding="utf-8")
    code, _, err = _cli(capsys, "convert", broken)
    assert code == 1 and "not valid YAML" in err


def test_convert_a_model_that_fails_to_load_writes_nothing(tmp_path, conv_onnx, capsys):
    model = conv_onnx()
    cfg = _write_yaml(tmp_path / "c.yml", {"model": model.name, "input_size_list": [[3, 9, 10]],
                                           "output": "out.rknn"})
    code, _, err = _cli(capsys, "convert", cfg)
    assert code == 1 and "[1, 3, 9, 10]" in err
    assert not (tmp_path / "out.rknn").exists()


# ---------------------------------------------------------------- info


def test_info_text(model_rknn, capsys):
    code, out, err = _cli(capsys, "info", model_rknn)
    assert code == 0, err
    size = model_rknn.stat().st_size
    for text in (f"{size:,} bytes", "target platform: rk1808", f"x: deployed [1, {H}, {W}, 3] uint8 nhwc",
                 f"model-side [1, 3, {H}, {W}]", "reorder_channel: 2 1 0", "mean [10, 100, 200]", "std [2, 4, 8]",
                 "y: [1, 2, 8, 10] float32", "optimization_level=3", "do_quantization=False",
                 "quantization:    none (float model)", "source:          onnx"):
        assert text in out, text


def test_info_json(model_rknn, capsys):
    code, out, err = _cli(capsys, "info", model_rknn, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["size_bytes"] == model_rknn.stat().st_size
    assert info["target_platform"] == ["rk1808"]
    (inp,) = info["inputs"]
    assert (inp["name"], inp["shape"], inp["dtype"], inp["layout"]) == ("x", [1, H, W, 3], "uint8", "nhwc")
    assert inp["reorder_channel"] == [2, 1, 0] and inp["mean"] == MEAN and inp["std"] == STD
    assert info["outputs"] == [{"name": "y", "shape": [1, 2, 8, 10], "dtype": "float32"}]
    assert info["build"]["optimization_level"] == 3 and info["build"]["do_quantization"] is False
    assert info["quantization"] is None


@pytest.mark.parametrize("content, words", [
    (b"RKNN\x00\x00\x00\x00" + b"\x01" * 64, "RKNN-Toolkit"),
    (b"", "empty"),
    (b"\x93NUMPY" + b"\x00" * 80, "NumPy"),
])
def test_info_on_files_that_are_not_models(tmp_path, capsys, content, words):
    bad = tmp_path / "bad.rknn"
    bad.write_bytes(content)
    code, out, err = _cli(capsys, "info", bad)
    assert code == 1 and words in err and out == ""
    code, _, err = _cli(capsys, "info", tmp_path / "absent.rknn")
    assert code == 1 and "absent.rknn" in err


# ---------------------------------------------------------------- run


def test_check_names_its_option_for_a_dynamic_input(tmp_path, capsys):
    """An OCR recognizer of any line width: the load error told a `check` user to give input_size_list, an API
    argument the command does not take."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 1, 3, 3), np.float32), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 32, "width"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    conv = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
    path = tmp_path / "rec.onnx"
    onnx.save(helper.make_model(helper.make_graph([conv], "g", [x], [y], [w]),
                                opset_imports=[helper.make_opsetid("", 17)]), str(path))
    code, out, err = _cli(capsys, "check", path, "--target", "rk3588")
    assert code == 1 and "--input-size" in err and "dynamic dimension 3" in err
    code, out, err = _cli(capsys, "check", path, "--target", "rk3588", "--input-size", "1,32,100")
    assert code == 0 and "No findings" in out


def _image(path: Path, h: int, w: int, seed: int) -> Path:
    cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))
    return path


def test_run_saves_the_api_outputs(model_rknn, tmp_path, capsys):
    a = _image(tmp_path / "a.png", 30, 40, seed=1)  # stretched to 10x8 by default
    b = _image(tmp_path / "b.png", H, W, seed=2)
    npy = tmp_path / "c.npy"
    np.save(npy, np.random.default_rng(3).integers(0, 256, (1, H, W, 3), dtype=np.uint8))
    out_dir = tmp_path / "outs"
    code, out, err = _cli(capsys, "run", model_rknn, a, b, npy, "--out", out_dir)
    assert code == 0, err
    assert sorted(p.name for p in out_dir.iterdir()) == ["a_out0.npy", "b_out0.npy", "c_out0.npy"]
    # default channel order: RGB (the model was not built with quant_img_RGB2BGR)
    rgb = [cv2.resize(cv2.imread(str(a)), (W, H), interpolation=cv2.INTER_LINEAR)[:, :, ::-1],
           cv2.imread(str(b))[:, :, ::-1], np.load(npy)]
    for name, frame in zip("abc", rgb):
        np.testing.assert_array_equal(np.load(out_dir / f"{name}_out0.npy"), _outputs(model_rknn, frame)[0])
    assert "channel order fed: RGB" in out
    # -o names the output as in every other command (convert, report, export-tflite, vendor-export, sweep)
    code, out, err = _cli(capsys, "run", model_rknn, a, "-o", tmp_path / "short")
    assert code == 0 and [p.name for p in (tmp_path / "short").iterdir()] == ["a_out0.npy"], err


def test_run_reads_an_nchw_npy_as_build_does(model_rknn, tmp_path, capsys):
    """The NCHW .npy rknn-toolkit2 asks for (and build's calibration reads): the same outputs as its NHWC form (it
    failed with advice to pass data_format='nchw', which the command has no option for)."""
    frame = np.random.default_rng(5).integers(0, 256, (1, H, W, 3), dtype=np.uint8)
    np.save(tmp_path / "nhwc.npy", frame)
    np.save(tmp_path / "nchw.npy", frame.transpose(0, 3, 1, 2))
    code, out, err = _cli(capsys, "run", model_rknn, tmp_path / "nhwc.npy", tmp_path / "nchw.npy", "-o", tmp_path / "o")
    assert code == 0, err
    np.testing.assert_array_equal(np.load(tmp_path / "o" / "nchw_out0.npy"), np.load(tmp_path / "o" / "nhwc_out0.npy"))


def test_run_bgr_feeds_opencv_order(model_rknn, tmp_path, capsys):
    b = _image(tmp_path / "b.png", H, W, seed=4)
    code, out, err = _cli(capsys, "run", model_rknn, b, "--bgr", "--out", tmp_path / "o")
    assert code == 0, err
    np.testing.assert_array_equal(np.load(tmp_path / "o" / "b_out0.npy"), _outputs(model_rknn, cv2.imread(str(b)))[0])
    assert "channel order fed: BGR" in out


@pytest.mark.parametrize("case, words", [
    ("missing", "not found"),
    ("corrupt", "could not be decoded"),
    ("size", "--resize"),
    ("npy_shape", "[1, 8, 10, 3]"),
    ("two_files", "2 file(s)"),
    ("text", "give an image"),
])
def test_run_bad_inputs_exit_1_and_write_nothing(model_rknn, tmp_path, capsys, case, words):
    good = _image(tmp_path / "good.png", H, W, seed=5)
    args = []
    if case == "missing":
        args = [tmp_path / "nope.jpg"]
    elif case == "corrupt":
        (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
        args = [tmp_path / "corrupt.jpg"]
    elif case == "size":
        args = [_image(tmp_path / "big.png", 20, 20, seed=6), "--resize", "none"]
    elif case == "npy_shape":
        np.save(tmp_path / "bad.npy", np.zeros((1, 9, 10, 3), np.uint8))
        args = [tmp_path / "bad.npy"]
    elif case == "two_files":
        args = [f"{good},{good}"]
    elif case == "text":
        (tmp_path / "notes.txt").write_text("hello")
        args = [tmp_path / "notes.txt"]
    out_dir = tmp_path / "outs"
    code, out, err = _cli(capsys, "run", model_rknn, good, *args, "--out", out_dir)  # the good one comes first
    assert code == 1
    assert err.startswith("error: ") and words in err, err
    assert not out_dir.exists()


def test_run_on_a_vendor_model(tmp_path, capsys):
    vendor = tmp_path / "vendor.rknn"
    vendor.write_bytes(b"RKNN\x00\x00\x00\x00" + b"\x01" * 64)
    img = _image(tmp_path / "a.png", H, W, seed=7)
    code, _, err = _cli(capsys, "run", vendor, img, "--out", tmp_path / "o")
    assert code == 1 and "RKNN-Toolkit" in err and not (tmp_path / "o").exists()


def test_no_command_prints_help(capsys):
    code, out, _ = _cli(capsys)
    assert code == 2 and "convert" in out and "info" in out and "run" in out


def test_console_entry_point(model_rknn, python_subprocess):
    # `python -m openrknn` and the installed `openrknn` script are the same main()
    proc = python_subprocess(["-m", "openrknn", "info", model_rknn, "--json"])
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["inputs"][0]["shape"] == [1, H, W, 3]
    script = Path(sys.executable).parent / "openrknn"
    if script.exists():
        import subprocess

        done = subprocess.run([str(script), "info", str(model_rknn.parent / "absent.rknn")], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 1 and "absent.rknn" in done.stderr


def test_main_in_process_leaves_the_logger_as_it_found_it(tmp_path, capsys):
    """openrknn.cli.main called from a script (or a test) attaches its console handler for the command only: a later
    RKNN() must still see a logger without it (an RKNN's own handler comes and goes with it)."""
    import gc
    import logging

    gc.collect()  # an RKNN of an earlier test still waiting in a reference cycle keeps the console attached
    log = logging.getLogger("openrknn")
    before = list(log.handlers)
    assert main(["info", str(tmp_path / "missing.rknn")]) == 1  # fails, and still detaches
    capsys.readouterr()
    assert log.handlers == before
