"""`openrknn detect` and `openrknn yolox export` end to end on real images, plus their bad inputs."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from openrknn.api import RKNN
from openrknn.cli import main


@pytest.fixture(scope="module")
def coco_rknn(real_data, tmp_path_factory):
    """yolox_nano_coco.onnx as a float .rknn (official export: BGR, 0..255, mean 0 / std 1)."""
    path = tmp_path_factory.mktemp("det") / "yolox_nano_coco.rknn"
    r = RKNN()
    assert r.config(mean_values=[0, 0, 0], std_values=[1, 1, 1]) == 0
    assert r.load_onnx(str(real_data("models/yolox_nano_coco.onnx"))) == 0
    assert r.build(do_quantization=False) == 0 and r.export_rknn(str(path)) == 0
    r.release()
    return path


def _detect(*args) -> int:
    return main(["detect", *map(str, args)])


def test_detect_image_finds_dog_bicycle_car(coco_rknn, real_data, tmp_path):
    out = tmp_path / "out"
    assert _detect(coco_rknn, real_data("images/misc/dog.jpg"), "--out", out, "--letterbox", "topleft") == 0
    res = json.loads((out / "detections.json").read_text())
    found = {d["class_name"]: d["score"] for d in res["results"][0]["detections"]}
    for name, score in (("dog", 0.86), ("bicycle", 0.80), ("car", 0.80)):
        assert abs(found[name] - score) < 0.03, found
    coco = json.loads((out / "coco_results.json").read_text())
    assert {c["category_id"] for c in coco} >= {18, 2, 3}  # COCO ids of dog, bicycle, car
    assert (out / "dog.jpg").is_file() and set(res["timings"]) >= {"pre_ms", "inference_ms", "post_ms", "fps"}


def test_detect_folder_and_video(coco_rknn, real_data, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    img = cv2.resize(cv2.imread(str(real_data("images/misc/bus.jpg"))), (320, 240))
    for i in range(2):
        cv2.imwrite(str(frames / f"f{i}.png"), img)
    assert _detect(coco_rknn, frames, "--out", tmp_path / "fo", "--letterbox", "topleft") == 0
    assert sorted(p.name for p in (tmp_path / "fo").glob("*.jpg")) == ["f0.jpg", "f1.jpg"]
    clip = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 10, (320, 240))
    for k in range(5):
        writer.write(np.roll(img, 8 * k, axis=1))
    writer.release()
    assert _detect(coco_rknn, clip, "--out", tmp_path / "vo", "--letterbox", "topleft") == 0
    res = json.loads((tmp_path / "vo" / "detections.json").read_text())
    assert len(res["results"]) == 5 and all(r["detections"] for r in res["results"])
    cap = cv2.VideoCapture(str(tmp_path / "vo" / "annotated.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 5


@pytest.mark.parametrize("case", ["corrupt_image_in_folder", "empty_folder", "unreadable_video", "missing"])
def test_detect_bad_sources_fail_clearly_and_write_nothing(coco_rknn, tmp_path, capsys, case):
    src = tmp_path / "src"
    if case == "corrupt_image_in_folder":
        src.mkdir()
        cv2.imwrite(str(src / "a.png"), np.zeros((32, 32, 3), np.uint8))
        (src / "b.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    elif case == "empty_folder":
        src.mkdir()
    elif case == "unreadable_video":
        src = tmp_path / "broken.mp4"
        src.write_bytes(b"\x00" * 1000)
    out = tmp_path / "out"
    assert _detect(coco_rknn, src, "--out", out) == 1
    err = capsys.readouterr().err
    assert "error:" in err and "source" in err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if ".staging" in p.name]


@pytest.mark.slow
def test_yolox_export_cli_round_trip_and_mismatch(real_data, tmp_path, capsys):
    pth = real_data("yolox_pytorch_ref/yolox_nano_3cls_seed0.pth")
    out = tmp_path / "nano.pt"
    assert main(["yolox", "export", "--weights", str(pth), "--phi", "nano", "--num-classes", "3", "-o", str(out)]) == 0
    assert out.is_file() and "max |difference|" in capsys.readouterr().out
    bad = tmp_path / "bad.pt"
    assert main(["yolox", "export", "--weights", str(pth), "--phi", "nano", "--num-classes", "80", "-o",
                 str(bad)]) == 1
    err = capsys.readouterr().err
    assert "num_classes=3" in err and not bad.exists()
