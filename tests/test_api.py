"""The RKNN facade: vendor return codes with one clear logged error, call order, lifetime (release, context
manager), logging (verbose, verbose_file), load_rknn + init_runtime, batch, export atomicity."""

from __future__ import annotations

import logging
import socket

import numpy as np
import pytest

from openrknn.api import RKNN
from openrknn.errors import ModelLoadError, RuntimeStateError, VendorPackageError

H, W = 8, 10
MEAN, STD = [10.0, 100.0, 200.0], [2.0, 4.0, 8.0]


def _loaded(path, **config) -> RKNN:
    rknn = RKNN()
    assert rknn.config(**config) == 0
    assert rknn.load_onnx(str(path)) == 0
    return rknn


@pytest.fixture
def built(conv_onnx):
    rknn = _loaded(conv_onnx(pads=1), reorder_channel="2 1 0", mean_values=[MEAN], std_values=[STD])
    assert rknn.build(do_quantization=False) == 0
    yield rknn
    rknn.release()


# ---------------------------------------------------------------- return codes and call order


def test_success_returns_zero_and_logs_no_error(conv_onnx, tmp_path, pixels, rknn_log, logged_errors):
    rknn = _loaded(conv_onnx(), mean_values=[MEAN])
    assert rknn.build(do_quantization=False) == 0
    assert rknn.export_rknn(str(tmp_path / "m.rknn")) == 0
    assert rknn.init_runtime() == 0
    out = rknn.inference(inputs=[pixels(H, W)])
    assert isinstance(out, list) and all(isinstance(o, np.ndarray) for o in out)
    assert out[0].dtype == np.float32 and out[0].shape == (1, 2, 6, 8)
    assert logged_errors(rknn_log) == []
    assert rknn.last_error is None
    rknn.release()


def test_failure_returns_minus_one_with_one_logged_error(tmp_path, rknn_log, logged_errors):
    rknn = RKNN()
    assert rknn.load_onnx(str(tmp_path / "missing.onnx")) == -1
    errors = logged_errors(rknn_log)
    assert len(errors) == 1 and errors[0].startswith("load_onnx: ") and "missing.onnx" in errors[0]
    assert isinstance(rknn.last_error, ModelLoadError)
    rknn.release()


def test_errors_are_printed_vendor_style_on_stderr(tmp_path, capsys):
    rknn = RKNN()
    assert rknn.load_onnx(str(tmp_path / "missing.onnx")) == -1
    err = capsys.readouterr().err
    assert "E openrknn: load_onnx: " in err
    rknn.release()


def test_build_before_load(rknn_log, logged_errors):
    rknn = RKNN()
    assert rknn.build(do_quantization=False) == -1
    assert "call a loader first (load_onnx, load_pytorch, load_tflite" in logged_errors(rknn_log)[-1]
    assert isinstance(rknn.last_error, RuntimeStateError)
    rknn.release()


def test_export_and_init_runtime_before_build(conv_onnx, tmp_path, rknn_log, logged_errors):
    rknn = _loaded(conv_onnx())
    assert rknn.export_rknn(str(tmp_path / "m.rknn")) == -1
    assert "build() first" in logged_errors(rknn_log)[-1]
    assert not (tmp_path / "m.rknn").exists()
    assert rknn.init_runtime() == -1
    assert "init_runtime() needs a model" in logged_errors(rknn_log)[-1]
    rknn.release()


def test_inference_before_init_runtime_returns_none(built, pixels, rknn_log, logged_errors):
    assert built.inference(inputs=[pixels(H, W)]) is None
    assert "init_runtime() first" in logged_errors(rknn_log)[-1]
    assert isinstance(built.last_error, RuntimeStateError)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("device", ["none", "refused"])
def test_init_runtime_with_a_board_target_but_no_board_says_how_boards_connect(built, tmp_path, monkeypatch, device,
                                                                               rknn_log, logged_errors):
    from openrknn.runtime import devices

    monkeypatch.setenv(devices.DEVICES_ENV, str(tmp_path / "devices.json"))  # no devices file: hermetic
    device_id = None if device == "none" else f"127.0.0.1:{_free_port()}"
    assert built.init_runtime(target="rk1808", device_id=device_id) == -1
    msg = logged_errors(rknn_log)[-1]
    assert msg.startswith("init_runtime: ") and "unexpectedly" not in msg
    assert "openrknn serve" in msg  # what to start on the board
    if device_id:
        assert device_id in msg
    assert built.init_runtime() == 0  # the simulator still works afterwards


def test_unknown_keyword_is_refused_by_name(conv_onnx, rknn_log, logged_errors):
    rknn = _loaded(conv_onnx())
    assert rknn.build(do_quantisation=False) == -1  # a typo must not fall back to the default (quantize)
    msg = logged_errors(rknn_log)[-1]
    assert "do_quantisation" in msg and "do_quantization" in msg
    assert rknn._package is None
    rknn.release()


def test_get_sdk_version_names_the_toolkit_and_simulator():
    rknn = RKNN()
    version = rknn.get_sdk_version()
    assert "openrknn" in version and "onnxruntime" in version
    rknn.release()


# ---------------------------------------------------------------- load_rknn + init_runtime


def test_load_rknn_then_init_runtime_gives_the_build_time_outputs(built, tmp_path, pixels):
    path = tmp_path / "model.rknn"
    assert built.export_rknn(str(path)) == 0
    assert built.init_runtime() == 0
    fed = pixels(H, W, seed=3)
    after_build = built.inference(inputs=[fed])
    other = RKNN()
    assert other.load_rknn(str(path)) == 0
    assert other.init_runtime() == 0  # the vendor's simulator refuses this
    np.testing.assert_array_equal(other.inference(inputs=[fed])[0], after_build[0])
    assert other.build(do_quantization=False) == -1  # a loaded .rknn is already built
    other.release()


@pytest.mark.parametrize("junk", [b"\x00" * 4 + b"\x01\x00\x00\x00\x00\x00\x00\x00" + b"junk" * 64,
                                  np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes(), b""])
def test_load_rknn_of_a_vendor_file(tmp_path, rknn_log, logged_errors, junk):
    path = tmp_path / "vendor.rknn"
    path.write_bytes(b"RKNN" + junk)
    rknn = RKNN()
    assert rknn.load_rknn(str(path)) == 0  # as with the vendor's toolkit: a board runs it (init_runtime(target))
    assert rknn.init_runtime() == -1  # the simulator cannot
    msg = logged_errors(rknn_log)[-1]
    assert "vendor" in msg and "RKNN-Toolkit" in msg and "re-convert" in msg and str(path) in msg
    assert "init_runtime(target=" in msg
    assert isinstance(rknn.last_error, VendorPackageError)
    assert rknn.build(do_quantization=False) == -1  # and nothing else treats it as an openrknn model
    rknn.release()


def test_load_rknn_of_a_missing_or_truncated_file(built, tmp_path, rknn_log, logged_errors):
    rknn = RKNN()
    assert rknn.load_rknn(str(tmp_path / "absent.rknn")) == -1
    assert "absent.rknn" in logged_errors(rknn_log)[-1]
    path = tmp_path / "m.rknn"
    assert built.export_rknn(str(path)) == 0
    path.write_bytes(path.read_bytes()[:-10])
    assert rknn.load_rknn(str(path)) == -1
    assert "truncated" in logged_errors(rknn_log)[-1]
    rknn.release()


# ---------------------------------------------------------------- lifetime


def test_release_frees_the_session(built, pixels, rknn_log, logged_errors):
    assert built.init_runtime() == 0
    sim = built._runtime
    assert sim.session is not None
    built.release()
    assert sim.session is None and built._runtime is None
    assert built.inference(inputs=[pixels(H, W)]) is None
    assert "init_runtime() first" in logged_errors(rknn_log)[-1]
    built.release()  # twice is harmless


def test_context_manager_releases(conv_onnx, pixels):
    log = logging.getLogger("openrknn")
    before = list(log.handlers)
    with RKNN() as rknn:
        assert len(log.handlers) > len(before)
        assert rknn.load_onnx(str(conv_onnx())) == 0
        assert rknn.build(do_quantization=False) == 0
        assert rknn.init_runtime() == 0
        sim = rknn._runtime
        assert rknn.inference(inputs=[pixels(H, W)]) is not None
    assert sim.session is None
    assert log.handlers == before  # its console handler is gone too


def test_init_runtime_twice_replaces_the_session(built):
    assert built.init_runtime() == 0
    first = built._runtime
    assert built.init_runtime() == 0
    assert first.session is None and built._runtime is not first


# ---------------------------------------------------------------- logging


def test_verbose_file_gets_debug_lines(conv_onnx, tmp_path):
    log_path = tmp_path / "build.log"
    rknn = RKNN(verbose=False, verbose_file=str(log_path))
    assert rknn.config(mean_values=[MEAN]) == 0
    assert rknn.load_onnx(str(conv_onnx())) == 0
    assert rknn.build(do_quantization=False) == 0
    assert rknn.load_onnx(str(tmp_path / "missing.onnx")) == -1
    rknn.release()
    text = log_path.read_text(encoding="utf-8")
    assert " DEBUG openrknn: config: " in text
    assert " INFO " in text and "build done" in text
    assert " ERROR openrknn: load_onnx: " in text


def test_a_second_object_does_not_silence_the_first_verbose_file(tmp_path):
    log_path = tmp_path / "first.log"
    first = RKNN(verbose_file=str(log_path))
    second = RKNN()
    assert first.config(mean_values=[MEAN]) == 0
    first.release()
    second.release()
    assert " DEBUG openrknn: config: " in log_path.read_text(encoding="utf-8")


def test_each_error_is_printed_once_with_two_objects_alive(tmp_path, capsys):
    first, second = RKNN(), RKNN()
    assert first.load_onnx(str(tmp_path / "missing.onnx")) == -1
    assert capsys.readouterr().err.count("E openrknn: load_onnx: ") == 1
    first.release()
    second.release()


def test_verbose_prints_debug_on_the_console(conv_onnx, capsys):
    rknn = RKNN(verbose=True)
    assert rknn.config(mean_values=[MEAN]) == 0
    assert "D openrknn: config: " in capsys.readouterr().err
    rknn.release()
    quiet = RKNN()
    assert quiet.config(mean_values=[MEAN]) == 0
    assert quiet.load_onnx(str(conv_onnx())) == 0
    assert capsys.readouterr().err == ""  # info and debug stay off the console by default
    quiet.release()


# ---------------------------------------------------------------- batch and export


def test_rknn_batch_size_2_runs_two_frames(conv_onnx, pixels):
    path = conv_onnx(pads=1)
    single = _loaded(path, mean_values=[MEAN], std_values=[STD])
    assert single.build(do_quantization=False) == 0 and single.init_runtime() == 0
    batched = _loaded(path, mean_values=[MEAN], std_values=[STD])
    assert batched.build(do_quantization=False, rknn_batch_size=2) == 0 and batched.init_runtime() == 0
    frames = pixels(H, W, n=2, seed=4)
    out = batched.inference(inputs=[frames])
    assert out[0].shape == (2, 2, 8, 10)
    for i in range(2):
        np.testing.assert_array_equal(out[0][i:i + 1], single.inference(inputs=[frames[i:i + 1]])[0])
    assert batched.inference(inputs=[frames[:1]]) is None  # one frame for a 2-frame model is an error
    assert batched._package.metadata["build"]["rknn_batch_size"] == 2
    single.release()
    batched.release()


def test_rknn_batch_size_is_in_the_recorded_shapes(conv_onnx):
    rknn = _loaded(conv_onnx(pads=1))
    assert rknn.build(do_quantization=False, rknn_batch_size=2) == 0
    meta = rknn._package.metadata
    assert meta["inputs"][0]["shape"] == [2, H, W, 3]
    assert meta["outputs"][0]["shape"] == [2, 2, H, W]
    rknn.release()


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2"])
def test_bad_rknn_batch_size(conv_onnx, bad, rknn_log, logged_errors):
    rknn = _loaded(conv_onnx())
    assert rknn.build(do_quantization=False, rknn_batch_size=bad) == -1
    assert "rknn_batch_size" in logged_errors(rknn_log)[-1] and repr(bad) in logged_errors(rknn_log)[-1]
    rknn.release()


def test_export_into_a_missing_folder_leaves_nothing(built, tmp_path, rknn_log, logged_errors):
    out = tmp_path / "out"
    out.mkdir()
    target = out / "no_such_dir" / "model.rknn"
    assert built.export_rknn(str(target)) == -1
    msg = logged_errors(rknn_log)[-1]
    assert "does not exist" in msg and "no_such_dir" in msg
    assert not target.parent.exists()
    assert list(out.iterdir()) == []


def test_export_overwrites_atomically(built, tmp_path):
    (tmp_path / "out").mkdir()
    target = tmp_path / "out" / "model.rknn"
    target.write_bytes(b"old")
    assert built.export_rknn(str(target)) == 0
    assert target.read_bytes()[:8] == b"ORKNN\x00\r\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.rknn"]  # no temp file left


def test_verbose_shows_the_traceback_of_an_unexpected_failure(conv_onnx, capsys, monkeypatch):
    """A bug of ours is one line by default and its whole traceback with verbose=True, as the message promises."""
    import openrknn.convert as convert

    def broken(*args, **kwargs):
        raise RuntimeError("inner failure for the test")

    monkeypatch.setattr(convert, "build", broken)
    for verbose in (False, True):
        rknn = RKNN(verbose=verbose)
        assert rknn.load_onnx(str(conv_onnx())) == 0
        assert rknn.build(do_quantization=False) == -1
        err = capsys.readouterr().err
        assert "build failed unexpectedly: RuntimeError: inner failure for the test" in err
        assert ("Traceback (most recent call last)" in err and "in broken" in err) is verbose
        rknn.release()
