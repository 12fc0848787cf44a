"""The .rknn container: round trip, atomic writes, and every kind of bad file, checked against docs/model-format.md."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
import struct
import subprocess
import sys
import textwrap
import threading
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from openrknn import package
from openrknn.errors import CorruptPackageError, PackageError, PackageVersionError, VendorPackageError
from openrknn.package import (
    FORMAT_VERSION,
    PackageNotFoundError,
    RknnPackage,
    package_to_bytes,
    read_package,
    read_package_bytes,
    write_package,
)
from openrknn.package_info import describe_package, package_summary

REEXPORT = "re-export"


def _tiny_onnx(doc: str = "") -> bytes:
    """A real ONNX payload whose graph input/output names match _meta(); `doc` makes distinct payloads."""
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 4, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["images"], ["output"], name="Relu_0")], "tiny", [x], [y],
                              doc_string=doc)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


def _meta(quantized: bool = True) -> dict:
    meta = {
        "toolkit": "openrknn", "toolkit_version": "0.1.0", "created_utc": "2025-01-31T09:30:00Z",
        "target_platform": ["rk1808"],
        "inputs": [{"name": "images", "shape": [1, 4, 4, 3], "dtype": "uint8", "layout": "nhwc",
                    "model_shape": [1, 3, 4, 4],
                    "preprocess": {"reorder_channel": [2, 1, 0], "mean": [123.675, 116.28, 103.53],
                                   "std": [58.395, 57.12, 57.375], "folded_into": "Conv_0"}}],
        "outputs": [{"name": "output", "shape": [1, 3, 4, 4], "dtype": "float32"}],
        "build": {"do_quantization": quantized, "dataset": "dataset.txt", "optimization_level": 3,
                  "quantized_dtype": "asymmetric_quantized-u8", "reorder_channel": "2 1 0"},
        "quantization": None,
        "source": {"framework": "pytorch", "file": "tiny.pt", "sha256": "c0ffee" + "0" * 58},
    }
    if quantized:
        meta["quantization"] = {
            "dtype": "asymmetric_quantized-u8", "algorithm": "kl_divergence", "method": "channel",
            "tensors": {
                "images": {"dtype": "uint8", "scale": [1.0], "zero_point": [0], "axis": None},
                "Conv_0.weight": {"dtype": "uint8", "scale": [0.01, 0.02, 0.03], "zero_point": [128] * 3, "axis": 0},
                "output": {"dtype": "uint8", "scale": [0.05], "zero_point": [0], "axis": None},
            },
        }
    return meta


def _container(meta_bytes: bytes, payload: bytes, version: int = 1, flags: int = 0, digest: bytes | None = None):
    """A file built from the numbers in docs/model-format.md only, independent of the module's code."""
    if digest is None:
        digest = hashlib.sha256(meta_bytes + payload).digest()
    header = b"ORKNN\x00\r\n" + struct.pack("<IIQQ", version, flags, len(meta_bytes), len(payload)) + digest
    assert len(header) == 64
    return header + meta_bytes + payload


def _meta_json(meta: dict) -> bytes:
    return json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@pytest.fixture()
def good_bytes() -> bytes:
    return _container(_meta_json(_meta()), _tiny_onnx())


# ---------------------------------------------------------------- round trip


def test_round_trip_is_byte_exact_and_matches_the_documented_layout(tmp_path):
    payload, meta = _tiny_onnx(), _meta()
    path = tmp_path / "model.rknn"
    written = write_package(path, RknnPackage(meta, payload))
    data = path.read_bytes()
    assert written == len(data) == 64 + len(_meta_json(meta)) + len(payload)
    assert data == _container(_meta_json(meta), payload)  # a reader written from the doc alone reads it
    assert package_to_bytes(RknnPackage(meta, payload)) == data
    pkg = read_package(path)
    assert pkg.model_bytes == payload
    assert pkg.metadata == meta
    assert onnx.load_model_from_string(pkg.model_bytes).graph.node[0].op_type == "Relu"
    assert read_package(str(path)).metadata == meta  # str and PathLike both accepted


def test_metadata_is_normalised_to_json_and_numpy_values_are_stored(tmp_path):
    meta = _meta()
    meta["inputs"][0]["shape"] = (1, 4, 4, 3)
    meta["quantization"]["tensors"]["output"]["scale"] = np.array([0.25], dtype=np.float32)
    meta["quantization"]["tensors"]["output"]["zero_point"] = [np.uint8(3)]
    meta["toolkit_note"] = "unicode ok: 眼睛"
    write_package(tmp_path / "m.rknn", RknnPackage(meta, _tiny_onnx()))
    got = read_package(tmp_path / "m.rknn").metadata
    assert got["inputs"][0]["shape"] == [1, 4, 4, 3]
    assert got["quantization"]["tensors"]["output"]["scale"] == [0.25]
    assert got["quantization"]["tensors"]["output"]["zero_point"] == [3]
    assert got["toolkit_note"] == "unicode ok: 眼睛"


def test_round_trip_of_a_real_model(tmp_path, real_data):
    payload = real_data("models/yolox_nano_coco.onnx").read_bytes()
    write_package(tmp_path / "yolox.rknn", RknnPackage(_meta(), payload))
    assert read_package(tmp_path / "yolox.rknn").model_bytes == payload


def test_overwrite_keeps_the_existing_file_mode(tmp_path):
    path = tmp_path / "m.rknn"
    write_package(path, RknnPackage(_meta(), _tiny_onnx("old")))
    os.chmod(path, 0o640)
    write_package(path, RknnPackage(_meta(), _tiny_onnx("new")))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    assert read_package(path).model_bytes == _tiny_onnx("new")


def test_new_file_gets_normal_permissions_not_the_temp_files_0600(tmp_path):
    path = tmp_path / "m.rknn"
    write_package(path, RknnPackage(_meta(), _tiny_onnx()))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~package._umask()


# ---------------------------------------------------------------- writing errors and atomicity


@pytest.mark.parametrize("change, expect", [
    (lambda m: m.pop("build"), "required key 'build' is missing"),
    (lambda m: m.update(target_platform="rk1808"), "target_platform"),
    (lambda m: m.update(inputs=[]), "inputs must be a non-empty list"),
    (lambda m: m["outputs"].append({"shape": [1]}), "outputs[1].name"),
    (lambda m: m["inputs"][0].update(name="renamed"), "inputs[0].name 'renamed' is not a graph input"),
    (lambda m: m["build"].update(epochs=math.nan), "JSON"),
    (lambda m: m["build"].update(callback=object()), "JSON"),
])
def test_write_refuses_metadata_a_reader_would_refuse(tmp_path, change, expect):
    meta = _meta()
    change(meta)
    with pytest.raises(PackageError, match=expect.replace("[", r"\[").replace("]", r"\]")):
        write_package(tmp_path / "m.rknn", RknnPackage(meta, _tiny_onnx()))
    assert list(tmp_path.iterdir()) == []


def test_write_refuses_an_empty_or_non_bytes_payload(tmp_path):
    with pytest.raises(PackageError, match="empty"):
        write_package(tmp_path / "m.rknn", RknnPackage(_meta(), b""))
    with pytest.raises(PackageError, match="SerializeToString"):
        write_package(tmp_path / "m.rknn", RknnPackage(_meta(), onnx.load_model_from_string(_tiny_onnx())))
    assert list(tmp_path.iterdir()) == []


def test_write_into_a_missing_folder_or_onto_a_folder(tmp_path):
    target = tmp_path / "no" / "such" / "m.rknn"
    with pytest.raises(PackageError, match="does not exist") as err:
        write_package(target, RknnPackage(_meta(), _tiny_onnx()))
    assert str(target.parent) in str(err.value)
    (tmp_path / "dir.rknn").mkdir()
    with pytest.raises(PackageError, match="is a folder"):
        write_package(tmp_path / "dir.rknn", RknnPackage(_meta(), _tiny_onnx()))


class _FailingFile:
    """Wraps the temp file: lets `limit` bytes through, then fails like a full disk (or with `exc`)."""

    def __init__(self, f, limit: int, exc: BaseException):
        self.f, self.left, self.exc = f, limit, exc

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.f.close()

    def write(self, chunk: bytes) -> int:
        if len(chunk) > self.left:
            self.f.write(chunk[: self.left])
            self.f.flush()  # the partial data really reaches the temp file before the failure
            raise self.exc
        self.left -= len(chunk)
        return self.f.write(chunk)

    def __getattr__(self, name):
        return getattr(self.f, name)


def _fail_mid_write(monkeypatch, exc: BaseException):
    real_fdopen = os.fdopen
    monkeypatch.setattr(package.os, "fdopen", lambda fd, *a, **k: _FailingFile(real_fdopen(fd, *a, **k), 100, exc))


def _raise(exc):
    def fail(*args, **kwargs):
        raise exc
    return fail


@pytest.mark.parametrize("failure", ["mid_write_enospc", "mid_write_interrupt", "fsync", "replace"])
@pytest.mark.parametrize("existing", [False, True])
def test_failed_write_leaves_no_partial_or_temp_file(tmp_path, monkeypatch, failure, existing):
    path = tmp_path / "model.rknn"
    if existing:
        write_package(path, RknnPackage(_meta(), _tiny_onnx("original model")))
    before = path.read_bytes() if existing else None
    if failure == "mid_write_enospc":
        _fail_mid_write(monkeypatch, OSError(28, "No space left on device"))
    elif failure == "mid_write_interrupt":
        _fail_mid_write(monkeypatch, KeyboardInterrupt())
    elif failure == "fsync":
        monkeypatch.setattr(package.os, "fsync", _raise(OSError(5, "Input/output error")))
    else:
        monkeypatch.setattr(package.os, "replace", _raise(OSError(13, "Permission denied")))
    expected = KeyboardInterrupt if failure == "mid_write_interrupt" else PackageError
    with pytest.raises(expected) as err:
        write_package(path, RknnPackage(_meta(), _tiny_onnx() * 4))
    monkeypatch.undo()
    if expected is PackageError:
        assert "nothing was written" in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["model.rknn"] if existing else [])
    if existing:
        assert path.read_bytes() == before
        assert read_package(path).model_bytes == _tiny_onnx("original model")


# ---------------------------------------------------------------- reading: not an openrknn package


def test_missing_file_is_a_file_not_found_package_error(tmp_path):
    path = tmp_path / "nope.rknn"
    with pytest.raises(PackageNotFoundError) as err:
        read_package(path)
    assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, PackageError)
    assert str(path) in str(err.value) and err.value.filename == str(path)


def test_reading_a_folder(tmp_path):
    with pytest.raises(PackageError, match="is a folder"):
        read_package(tmp_path)


def test_vendor_file_with_only_a_version_word(tmp_path):
    path = tmp_path / "vendor.rknn"
    path.write_bytes(b"RKNN" + b"\x00" * 4 + struct.pack("<Q", 6) + os.urandom(200))
    with pytest.raises(VendorPackageError) as err:
        read_package(path)
    msg = str(err.value)
    for words in ("vendor", "version word 6", "only the vendor", "re-convert the original .pt/.onnx with openrknn"):
        assert words in msg
    assert str(path) in msg


def test_vendor_toolkit2_file_names_toolkit_version_and_target():
    model = b"\x14\x00\x00\x00RKNN" + os.urandom(300)
    trailer = json.dumps({"version": "2.3.0+81f21f4d", "target_platform": ["rk3588"],
                          "ori_network_platform": "onnx"}).encode()
    data = (b"RKNN\x00\x00\x00\x00" + struct.pack("<QQ", 6, len(model)) + b"\x00" * 40 + model
            + struct.pack("<Q", len(trailer)) + trailer)
    with pytest.raises(VendorPackageError) as err:
        read_package_bytes(data, source="yolox_rk3588.rknn")
    msg = str(err.value)
    assert "yolox_rk3588.rknn" in msg and "version word 6" in msg
    assert "RKNN-Toolkit 2.3.0+81f21f4d" in msg and "rk3588" in msg and "converted from onnx" in msg


@pytest.mark.parametrize("data, expect", [
    (b"CYPTRKNN" + b"\x00" * 40, "encrypted"),
    (b"\x1c\x00\x00\x00RKNN" + b"\x00" * 40, "FlatBuffers"),
    (b"RKNN", "vendor model"),
])
def test_other_vendor_forms(data, expect):
    with pytest.raises(VendorPackageError, match=expect):
        read_package_bytes(data)


def test_empty_file(tmp_path):
    (tmp_path / "e.rknn").write_bytes(b"")
    with pytest.raises(CorruptPackageError, match=r"empty \(0 bytes\)") as err:
        read_package(tmp_path / "e.rknn")
    assert REEXPORT in str(err.value)


@pytest.mark.parametrize("name", ["yolox_nano_coco.onnx", "ultraface_rfb320.onnx"])
def test_onnx_file_says_use_load_onnx(name, real_data):
    with pytest.raises(CorruptPackageError) as err:
        read_package(real_data(f"models/{name}"))
    msg = str(err.value)
    assert "not an openrknn .rknn package" in msg and "ONNX model" in msg and "load_onnx" in msg


@pytest.mark.slow
def test_torchscript_file_says_use_load_pytorch(real_data):
    pytest.importorskip("torch")
    with pytest.raises(CorruptPackageError, match="TorchScript.*load_pytorch"):
        read_package(real_data("models/mobilenet_v2_imagenet.pt"))


@pytest.mark.parametrize("name, kind", [("bus.jpg", "JPEG image"), ("1face.png", "PNG image")])
def test_image_file(name, kind, real_data):
    with pytest.raises(CorruptPackageError, match=kind + ".*not models"):
        read_package(real_data(f"images/misc/{name}"))


def test_torch_save_checkpoint_and_pickle(tmp_path):
    ckpt = tmp_path / "weights.pth"
    with zipfile.ZipFile(ckpt, "w") as z:
        z.writestr("weights/data.pkl", b"\x80\x02}q\x00.")
        z.writestr("weights/data/0", b"\x00" * 16)
    with pytest.raises(CorruptPackageError, match=r"torch\.save\(\) checkpoint.*torch\.jit\.trace"):
        read_package(ckpt)
    with pytest.raises(CorruptPackageError, match="pickle.*never loads pickles"):
        read_package_bytes(b"\x80\x04\x95" + b"\x00" * 30)


@pytest.mark.parametrize("data, expect", [
    (b"\x93NUMPY\x01\x00" + b"\x00" * 60, "NumPy"),
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:00\n", "git lfs pull"),
    (b"hello world, not a model at all" * 3, "unknown format"),
])
def test_other_foreign_files(data, expect):
    with pytest.raises(CorruptPackageError, match=expect):
        read_package_bytes(data)


def test_text_mode_copy_is_recognised(good_bytes):
    with pytest.raises(CorruptPackageError, match="text mode"):
        read_package_bytes(good_bytes.replace(b"\r\n", b"\n", 1))  # CRLF -> LF
    with pytest.raises(CorruptPackageError, match="text mode"):
        read_package_bytes(good_bytes[:6] + b"\r\r\n" + good_bytes[8:])  # LF -> CRLF


# ---------------------------------------------------------------- reading: damaged openrknn packages


def test_truncated_at_several_offsets(good_bytes):
    meta_len = len(_meta_json(_meta()))
    for cut in (1, 5, 8, 11, 12, 40, 63):
        with pytest.raises(CorruptPackageError, match=f"has {cut} bytes, shorter than the 64-byte header") as err:
            read_package_bytes(good_bytes[:cut], source="cut.rknn")
        assert REEXPORT in str(err.value) and "cut.rknn" in str(err.value)
    for cut in (64, 64 + meta_len // 2, 64 + meta_len, 64 + meta_len + 1, len(good_bytes) - 1):
        with pytest.raises(CorruptPackageError) as err:
            read_package_bytes(good_bytes[:cut])
        msg = str(err.value)
        assert "truncated" in msg and f"announces {len(good_bytes)} bytes" in msg
        assert f"the file has {cut} ({len(good_bytes) - cut} missing)" in msg and "not fully copied" in msg


@pytest.mark.parametrize("where", ["payload", "metadata", "digest"])
def test_one_flipped_byte_fails_the_checksum(good_bytes, where):
    offset = {"payload": len(good_bytes) - 5, "metadata": 64 + 3, "digest": 40}[where]
    data = bytearray(good_bytes)
    data[offset] ^= 0x01
    with pytest.raises(CorruptPackageError, match="failed its checksum") as err:
        read_package_bytes(bytes(data))
    assert REEXPORT in str(err.value)


def test_trailing_byte(tmp_path, good_bytes):
    (tmp_path / "t.rknn").write_bytes(good_bytes + b"\n")
    with pytest.raises(CorruptPackageError, match="1 unexpected trailing bytes") as err:
        read_package(tmp_path / "t.rknn")
    assert f"has {len(good_bytes) + 1}" in str(err.value)


def test_newer_format_version_says_upgrade(good_bytes):
    newer = _container(_meta_json(_meta()), _tiny_onnx(), version=99)
    for data in (newer, newer[:12], newer[:40]):  # a newer layout may differ: version is checked before sizes
        with pytest.raises(PackageVersionError) as err:
            read_package_bytes(data)
        msg = str(err.value)
        assert "format version 99" in msg and f"up to {FORMAT_VERSION}" in msg and "upgrade openrknn" in msg


def test_unknown_flags_and_version_zero():
    with pytest.raises(PackageVersionError, match="flags 0x00000004.*upgrade openrknn"):
        read_package_bytes(_container(_meta_json(_meta()), b"x", flags=4))
    with pytest.raises(CorruptPackageError, match="format version 0"):
        read_package_bytes(_container(_meta_json(_meta()), b"x", version=0))


def test_empty_payload_is_corrupt():
    with pytest.raises(CorruptPackageError, match="empty payload"):
        read_package_bytes(_container(_meta_json(_meta()), b""))


@pytest.mark.parametrize("meta_bytes, expect", [
    (b'{"toolkit": "openrknn", ', "not valid UTF-8 JSON"),
    (b"\xff\xfe{}", "not valid UTF-8 JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (json.dumps({k: v for k, v in _meta().items() if k not in ("inputs", "build")}).encode(),
     "required key 'inputs' is missing; required key 'build' is missing"),
])
def test_bad_metadata_with_a_valid_checksum(meta_bytes, expect):
    with pytest.raises(CorruptPackageError, match=expect.replace("(", r"\(")):
        read_package_bytes(_container(meta_bytes, b"x"))


def test_unknown_metadata_keys_are_kept_not_refused():
    meta = dict(_meta(), future_key={"a": 1})
    assert read_package_bytes(_container(_meta_json(meta), _tiny_onnx())).metadata["future_key"] == {"a": 1}


# ---------------------------------------------------------------- describe / summary


def test_describe_package_lists_everything(tmp_path):
    payload = _tiny_onnx()
    path = tmp_path / "tiny.rknn"
    size = write_package(path, RknnPackage(_meta(), payload))
    text = describe_package(read_package(path), str(path))
    for expected in (
        str(path), f"({size:,} bytes)", f"{size / 1e3:.1f} kB", "format version 1", "openrknn 0.1.0",
        "2025-01-31T09:30:00Z", "rk1808",
        "images: deployed [1, 4, 4, 3] uint8 nhwc; model-side [1, 3, 4, 4]",
        "reorder_channel: 2 1 0 (swaps RGB <-> BGR)", "mean [123.675, 116.28, 103.53]",
        "std [58.395, 57.12, 57.375]", "yes, into Conv_0",
        "output: [1, 3, 4, 4] float32", "do_quantization=True", "dataset='dataset.txt'", "optimization_level=3",
        "dtype asymmetric_quantized-u8, algorithm kl_divergence, method channel, weight rounding nearest",
        "3 quantized tensors: 2 activations, 1 weight (1 per-channel), 0 biases",
        "pytorch tiny.pt (sha256 c0ffee0000000000...)",
        f"{len(payload)} B, sha256 {hashlib.sha256(payload).hexdigest()[:16]}",
    ):
        assert expected in text, f"{expected!r} missing from:\n{text}"


def test_describe_float_model_and_minimal_metadata():
    meta = {k: _meta(quantized=False)[k] for k in package.REQUIRED_KEYS}
    meta["inputs"] = [{"name": "x"}]
    text = describe_package(RknnPackage(meta, b"abc"))
    assert "(in memory)" in text and "none (float model)" in text and "source:          unknown" in text
    assert "x: deployed ? ? ?" in text and "reorder_channel: none" in text and "folded into the model: no" in text


def test_package_summary_is_json_and_consistent():
    payload = _tiny_onnx()
    s = package_summary(RknnPackage(_meta(), payload))
    assert json.loads(json.dumps(s)) == s
    assert s["size_bytes"] == len(package_to_bytes(RknnPackage(_meta(), payload)))
    assert s["payload_sha256"] == hashlib.sha256(payload).hexdigest()
    assert s["quantization"] == {"dtype": "asymmetric_quantized-u8", "algorithm": "kl_divergence",
                                 "method": "channel", "weight_rounding": "nearest",  # not recorded: older file
                                 "ranges": {},  # not recorded either
                                 "pre_activation_points": "chip",  # nor this: the chip's, as every file then
                                 "quantized_tensors": 3, "activations": 2, "weights": 1, "biases": 0,
                                 "per_channel_tensors": 1}
    assert s["inputs"][0]["folded_into"] == "Conv_0" and s["outputs"][0]["name"] == "output"


# ---------------------------------------------------------------- board-side imports


def test_package_module_works_without_onnx_or_torch(tmp_path):
    """A board has numpy + onnxruntime only: reading must not import (or need) onnx, torch or the quantizer."""
    path = tmp_path / "board.rknn"
    write_package(path, RknnPackage(_meta(), _tiny_onnx()))
    script = textwrap.dedent(f"""
        import sys

        class Block:  # behave as if these packages were not installed
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("onnx", "torch"):
                    raise ImportError("blocked for this test: " + name)
                return None

        sys.meta_path.insert(0, Block())
        import openrknn.package as p
        pkg = p.read_package({str(path)!r})
        print("READ", pkg.metadata["toolkit"], len(pkg.model_bytes))
        bad = sorted(m for m in sys.modules if m.split(".")[0] in ("onnx", "torch", "onnxruntime")
                     or m.startswith(("openrknn.quant", "openrknn.frontends", "openrknn.package_info")))
        print("IMPORTED", bad)
    """)
    out = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    assert "IMPORTED []" in out.stdout
    assert f"READ openrknn {len(_tiny_onnx())}" in out.stdout


def test_float_reference_section_round_trips_and_is_checked(tmp_path):
    model, ref = _tiny_onnx(), _tiny_onnx() + b""
    pkg = RknnPackage(metadata=_meta(), model_bytes=model, float_model_bytes=ref)
    path = tmp_path / "q.rknn"
    write_package(path, pkg)
    back = read_package(path)
    assert back.model_bytes == model and back.float_model_bytes == ref
    assert "payload_sections" not in back.metadata
    # sections that do not add up to the payload are corruption, not a silent mis-split
    meta = dict(_meta(), payload_sections={"model": len(model) + 1, "float_reference": len(ref)})
    data = _container(_meta_json(meta), model + ref)
    with pytest.raises(CorruptPackageError, match="payload_sections must be sizes that add up"):
        read_package_bytes(data)


# ---------------------------------------------------------------- hostile inputs: special files, limits, schema


def _finishes(fn, seconds: float = 10.0):
    """fn()'s exception (or None) if it returns within `seconds`; a blocked call fails the test, never hangs it."""
    box: dict = {}

    def call():
        try:
            fn()
        except BaseException as e:  # noqa: B902 - handed back to the test
            box["error"] = e
        box["done"] = True

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(seconds)
    assert box.get("done"), f"still blocked after {seconds} s"
    return box.get("error")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs and /dev/zero (POSIX)")
def test_special_files_are_refused_without_blocking_or_reading(tmp_path):
    fifo = tmp_path / "pipe.rknn"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.rknn"
    zero.symlink_to("/dev/zero")
    loop = tmp_path / "loop.rknn"
    loop.symlink_to(loop)
    cases = [(fifo, r"is a named pipe \(FIFO\), not a regular file"),
             (zero, r"zero.rknn \(a link to /dev/zero\) is a character device"),
             (tmp_path, "is a folder"),
             (loop, "cannot open"),
             (str(tmp_path / "a\x00b.rknn"), "contains a NUL byte"),
             (str(tmp_path / ("n" * 5000)), "too long")]
    for path, expect in cases:
        err = _finishes(lambda path=path: read_package(path))
        assert isinstance(err, PackageError), (path, err)
        assert re.search(expect, str(err)), (expect, str(err))


def _with_meta(meta: dict, payload: bytes | None = None) -> bytes:
    return _container(_meta_json(meta), _tiny_onnx() if payload is None else payload)


def _edited(edit) -> dict:
    meta = _meta()
    edit(meta)
    return meta


@pytest.mark.parametrize("meta_bytes, field", [
    (b"[" * 100_000 + b"]" * 100_000, "nested deeper than 32"),
    (b'{"a":' * 5000 + b"1" + b"}" * 5000, "nested deeper than 32"),
    (_meta_json(_meta()).replace(b'"optimization_level":3', b'"optimization_level":NaN'), "NaN"),
    (_meta_json(_edited(lambda m: m["build"].update(rknn_batch_size="x"))), "build.rknn_batch_size"),
    (_meta_json(_edited(lambda m: m["build"].update(rknn_batch_size={}))), "build.rknn_batch_size"),
    (_meta_json(_edited(lambda m: m["build"].update(rknn_batch_size=-1))), "build.rknn_batch_size"),
    (_meta_json(_edited(lambda m: m["build"].update(rknn_batch_size=True))), "build.rknn_batch_size"),
    (_meta_json(_edited(lambda m: m["inputs"][0].update(shape=[1, 4, 4]))), r"inputs\[0\].shape must be 4 dim"),
    (_meta_json(_edited(lambda m: m["inputs"][0].update(shape=[1, True, 4, 3]))), r"inputs\[0\].shape"),
    (_meta_json(_edited(lambda m: m["inputs"][0].update(shape=[1, 2 ** 70, 4, 3]))), r"inputs\[0\].shape"),
    (_meta_json(_edited(lambda m: m["inputs"][0].update(layout="nchw"))), r"inputs\[0\].layout must be 'nhwc'"),
    (_meta_json(_edited(lambda m: m["inputs"][0].update(dtype="object"))), r"inputs\[0\].dtype must be one of"),
    (_meta_json(_edited(lambda m: m["inputs"][0]["preprocess"].update(mean=[1, 2]))),
     r"inputs\[0\].preprocess.mean must be 1 or 3 values"),
    (_meta_json(_edited(lambda m: m["inputs"][0]["preprocess"].update(reorder_channel=[0, 0, 1]))),
     r"reorder_channel must be a permutation"),
    (_meta_json(_edited(lambda m: m["inputs"].append(dict(m["inputs"][0])))), "inputs must be a list of distinct"),
    (_meta_json(_edited(lambda m: m["quantization"]["tensors"]["images"].update(zero_point=[0.5]))),
     r"quantization.tensors\['images'\].zero_point"),
    (_meta_json(_edited(lambda m: m["quantization"].update(ranges="kl"))), "quantization.ranges must be an object"),
    (_meta_json(_edited(lambda m: m["quantization"].update(ranges={"log_cut_decades": "2"}))),
     "quantization.ranges.log_cut_decades must be a finite number"),
    (_meta_json(_edited(lambda m: m["quantization"].update(pre_activation_points="npu"))),
     "quantization.pre_activation_points must be 'chip' or 'tflite'"),
    (_meta_json(_edited(lambda m: m.update(source="a.pt"))), "source must be an object or null"),
    (_meta_json(_edited(lambda m: m.update(payload_sections={"model": True, "float_reference": True}))),
     "payload_sections must be an object"),
])
def test_metadata_edited_under_a_valid_checksum_is_refused_naming_the_field(meta_bytes, field):
    with pytest.raises(CorruptPackageError, match=field) as err:
        read_package_bytes(_container(meta_bytes, _tiny_onnx()))
    assert "re-export it" in str(err.value)


def test_metadata_length_over_the_cap_is_refused_before_reading_it(monkeypatch):
    monkeypatch.setattr(package, "MAX_METADATA_BYTES", 100)
    with pytest.raises(CorruptPackageError, match="declares .* bytes of metadata, more than the 100"):
        read_package_bytes(_with_meta(_meta()))


@pytest.mark.parametrize("payload, expect", [
    (b"\x00" * 64, "not an ONNX model"),
    (os.urandom(256), "not an ONNX model"),
    (_tiny_onnx()[:-3], "not an ONNX model"),
    (_tiny_onnx().replace(b"images", b"im\xffges"), "not UTF-8"),
    (_tiny_onnx().replace(b"images", b"pixels"), r"inputs\[0\].name 'images' is not a graph input"),
])
def test_payload_that_is_not_the_described_onnx_model_is_corrupt(payload, expect):
    with pytest.raises(CorruptPackageError, match=expect):
        read_package_bytes(_with_meta(_meta(), payload))


def test_vendor_trailer_nested_too_deep_still_names_the_vendor_file():
    trailer = b"[" * 50_000 + b"]" * 50_000
    model = b"\x14\x00\x00\x00RKNN" + b"\x00" * 64
    data = (b"RKNN\x00\x00\x00\x00" + struct.pack("<QQ", 6, len(model)) + b"\x00" * 40 + model
            + struct.pack("<Q", len(trailer)) + trailer)
    with pytest.raises(VendorPackageError, match="format version word 6"):
        read_package_bytes(data)


def test_optional_fields_are_honoured_and_running_needs_only_what_it_uses(tmp_path, rknn_log):
    """An input without shape/layout/dtype reads, describes and loads; init_runtime says what is missing."""
    from openrknn.api import RKNN

    meta = {k: _meta(quantized=False)[k] for k in package.REQUIRED_KEYS}
    meta["inputs"] = [{"name": "images"}]
    path = tmp_path / "minimal.rknn"
    path.write_bytes(_with_meta(meta))
    assert "images: deployed ? ? ?" in describe_package(read_package(path), str(path))
    r = RKNN()
    try:
        assert r.load_rknn(str(path)) == 0, r.last_error
        assert r.init_runtime() != 0
        assert isinstance(r.last_error, CorruptPackageError)
        assert "inputs[0] ('images') has no 'shape'" in str(r.last_error)
    finally:
        r.release()
    assert "failed unexpectedly" not in rknn_log.text


def test_a_graph_onnxruntime_cannot_open_or_run_is_corrupt_not_internal(tmp_path):
    """Valid framing, valid metadata, but onnxruntime refuses the graph: CorruptPackageError at init_runtime."""
    from openrknn.api import RKNN

    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 4, 4, 3])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 4, 4])
    bad_op = helper.make_graph([helper.make_node("NoSuchOp", ["images"], ["output"])], "g", [x], [y])
    wrong_type = helper.make_graph([helper.make_node("Identity", ["images"], ["output"])], "g",
                                   [helper.make_tensor_value_info("images", TensorProto.INT64, [1, 4, 4, 3])],
                                   [helper.make_tensor_value_info("output", TensorProto.INT64, [1, 4, 4, 3])])
    cases = ((bad_op, "onnxruntime cannot open the model"), (wrong_type, "the graph takes tensor\\(int64"))
    for graph, expect in cases:
        payload = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()
        path = tmp_path / "bad.rknn"
        path.write_bytes(_with_meta(_meta(quantized=False), payload))
        r = RKNN()
        try:
            assert r.load_rknn(str(path)) == 0
            assert r.init_runtime() != 0
            assert isinstance(r.last_error, CorruptPackageError), r.last_error
            assert re.search(expect, str(r.last_error)), str(r.last_error)
        finally:
            r.release()


def test_info_prints_one_error_line_never_a_traceback(tmp_path, capsys):
    from openrknn.cli import main

    deep = tmp_path / "deep.rknn"
    deep.write_bytes(_container(b"[" * 100_000 + b"]" * 100_000, _tiny_onnx()))
    paths = [deep, tmp_path]
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.rknn")
        paths.append(tmp_path / "pipe.rknn")
    for path in paths:
        for extra in ([], ["--json"]):
            code = _finishes(lambda args=["info", str(path), *extra]: sys.exit(main(args)))
            err = capsys.readouterr().err
            assert isinstance(code, SystemExit) and code.code == 1, (path, err)
            assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="counts bytes read with /proc/self/io (Linux)")
def test_reading_reads_each_byte_of_the_file_at_most_once(tmp_path, good_bytes):
    def bytes_read() -> int:
        return int(Path("/proc/self/io").read_text().split("rchar:")[1].split()[0])

    samples = {"good.rknn": good_bytes, "trunc.rknn": good_bytes[:100], "foreign.rknn": os.urandom(300_000),
               "huge_meta_len.rknn": good_bytes[:16] + struct.pack("<Q", 1 << 60) + good_bytes[24:]}
    for name, data in samples.items():
        path = tmp_path / name
        path.write_bytes(data)
        before = bytes_read()
        try:
            read_package(path)
        except PackageError:
            pass
        extra = bytes_read() - before - len(data)
        assert extra < 512, f"{name}: read {extra} bytes more than the file holds"  # 512: /proc/self/io itself
