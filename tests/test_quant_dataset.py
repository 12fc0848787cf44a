"""dataset.txt reader: decoding rules and the errors that name the bad line."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

from openrknn.errors import DatasetError
from openrknn.quant.dataset import InputSpec, read_dataset

SPEC = [InputSpec("img", (1, 8, 12, 3))]


def _png(path, h=8, w=12, bgr=(10, 20, 30)):
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = bgr
    cv2.imwrite(str(path), img)
    return path


def test_images_decoded_rgb_by_default_and_bgr_on_request(tmp_path, caplog):
    _png(tmp_path / "a.png")
    ds = tmp_path / "dataset.txt"
    ds.write_text("# calibration\n\na.png  # trailing comment\n")
    with caplog.at_level(logging.INFO, logger="openrknn"):
        data = read_dataset(ds, SPEC)
    (feed,) = list(data)
    assert feed["img"].shape == (1, 8, 12, 3) and feed["img"].dtype == np.float32
    assert feed["img"][0, 0, 0].tolist() == [30, 20, 10]  # RGB, raw 0..255, no mean/std
    assert "decoded as RGB" in caplog.text
    (feed,) = list(read_dataset(ds, SPEC, rgb2bgr=True))
    assert feed["img"][0, 0, 0].tolist() == [10, 20, 30]
    assert len(data) == 1 and data.paths == [(tmp_path / "a.png",)]


def test_resize_warns_once_naming_sizes(tmp_path, caplog):
    for k in range(3):
        _png(tmp_path / f"{k}.png", h=20, w=30)
    ds = tmp_path / "d.txt"
    ds.write_text("0.png\n1.png\n2.png\n")
    with caplog.at_level(logging.WARNING, logger="openrknn"):
        data = read_dataset(ds, SPEC)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "30x20" in warnings[0].getMessage() and "12x8" in warnings[0].getMessage()
    assert all(f["img"].shape == (1, 8, 12, 3) for f in data)


def test_npy_with_and_without_batch_dim_and_multi_input(tmp_path):
    np.save(tmp_path / "a.npy", np.ones((8, 12, 3), np.float32))
    np.save(tmp_path / "b.npy", np.full((1, 4), 2.0))
    specs = [SPEC[0], InputSpec("vec", (1, 4))]
    ds = tmp_path / "d.txt"
    ds.write_text("a.npy b.npy\n")
    (feed,) = list(read_dataset(ds, specs))
    assert feed["img"].shape == (1, 8, 12, 3) and feed["vec"].tolist() == [[2, 2, 2, 2]]
    assert feed["vec"].dtype == np.float32


def test_epochs_cycle_and_default_uses_every_line(tmp_path):
    for k in range(3):
        _png(tmp_path / f"{k}.png")
    ds = tmp_path / "d.txt"
    ds.write_text("0.png\n1.png\n2.png\n")
    assert len(read_dataset(ds, SPEC)) == 3
    data = read_dataset(ds, SPEC, batch_size=4, epochs=2)
    assert len(data) == 8 and [p[0].name for p in data.paths][:4] == ["0.png", "1.png", "2.png", "0.png"]
    assert len(list(data)) == 8 and len(list(data)) == 8  # re-iterable
    assert [len(b) for b in data.batches()] == [4, 4]


@pytest.mark.parametrize("content,setup,needle", [
    ("missing.png\n", None, ":1: file 'missing.png' not found"),
    ("\n# c\nbad.png\n", "bad", ":3: cannot decode image"),
    ("a.npy\n", "npy", ":1: 'a.npy' holds an array of shape [5, 5, 3]"),
    ("ok.png ok.png\n", "ok", ":1: found 2 path(s) but the model has 1 input(s) (img)"),
    ("# only comments\n\n", None, "lists no samples"),
])
def test_bad_datasets_name_the_line(tmp_path, content, setup, needle):
    if setup == "bad":
        (tmp_path / "bad.png").write_bytes(b"not an image at all")
    elif setup == "npy":
        np.save(tmp_path / "a.npy", np.zeros((5, 5, 3)))
    elif setup == "ok":
        _png(tmp_path / "ok.png")
    ds = tmp_path / "d.txt"
    ds.write_text(content)
    with pytest.raises(DatasetError) as ei:
        read_dataset(ds, SPEC)
    assert needle in str(ei.value)
    if ":" in needle[:3]:
        assert str(ds) in str(ei.value)


def test_missing_dataset_file(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        read_dataset(tmp_path / "nope.txt", SPEC)


def test_wrong_npy_shape_names_expected_shapes(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((3, 12, 8)))  # width and height swapped as well
    ds = tmp_path / "d.txt"
    ds.write_text("a.npy\n")
    with pytest.raises(DatasetError) as ei:
        read_dataset(ds, SPEC)
    msg = str(ei.value)
    assert "[3, 12, 8]" in msg and "[8, 12, 3]" in msg and "[1, 8, 12, 3]" in msg


def test_nchw_npy_files_as_rknn_toolkit2_writes_them_are_transposed(tmp_path, caplog):
    """rknn-toolkit2 reads an NCHW model's .npy calibration files as NCHW (its accuracy_analysis refuses anything
    else), so a user's vendor dataset holds [1, C, H, W] arrays: read as such, transposed, and logged."""
    img = np.arange(8 * 12 * 3, dtype=np.float32).reshape(1, 8, 12, 3)
    np.save(tmp_path / "a.npy", img.transpose(0, 3, 1, 2))
    np.save(tmp_path / "b.npy", img[0].transpose(2, 0, 1))
    np.save(tmp_path / "c.npy", img)
    ds = tmp_path / "d.txt"
    ds.write_text("a.npy\nb.npy\nc.npy\n")
    with caplog.at_level(logging.INFO, logger="openrknn"):
        feeds = list(read_dataset(ds, SPEC))
    assert all(np.array_equal(f["img"], img) for f in feeds)
    assert "2 .npy file(s) hold NCHW" in caplog.text
    # where NHWC can be what the array holds (here C = H = W), it is read as NHWC, as inference() takes it
    square = np.arange(27, dtype=np.float32).reshape(1, 3, 3, 3)
    np.save(tmp_path / "s.npy", square)
    ds.write_text("s.npy\n")
    (feed,) = list(read_dataset(ds, [InputSpec("img", (1, 3, 3, 3))]))
    assert np.array_equal(feed["img"], square)


def test_accuracy_analysis_reads_an_nchw_npy_as_the_vendor_asks_for_it(tmp_path):
    """rknn-toolkit2's accuracy_analysis refuses anything but NCHW .npy inputs for an NCHW model; a user's call
    carried over gives the same analysis as with the NHWC array."""
    from conftest import built_rknn, make_conv_onnx, write_npy_dataset

    path = make_conv_onnx(tmp_path / "m.onnx", hw=(8, 10))
    r = built_rknn(path, write_npy_dataset(tmp_path, (1, 8, 10, 3)), target_platform="rk3588")
    img = np.random.default_rng(3).uniform(0, 255, (1, 8, 10, 3)).astype(np.float32)
    np.save(tmp_path / "nhwc.npy", img)
    np.save(tmp_path / "nchw.npy", img.transpose(0, 3, 1, 2))
    reports = []
    for name in ("nhwc", "nchw"):
        assert r.accuracy_analysis(inputs=[str(tmp_path / f"{name}.npy")], output_dir=str(tmp_path / name)) == 0, \
            r.last_error
        reports.append((tmp_path / name / "error_analysis.txt").read_text())
    assert reports[0] == reports[1] and "1 input(s), 3 layers" in reports[0]
    r.release()
