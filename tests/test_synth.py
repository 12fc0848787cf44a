"""The synthetic eye generator: determinism, label sanity, dataset files."""

import json

import cv2
import numpy as np
import pytest

from openrknn.errors import ConfigError, DatasetError
from openrknn.vision.eyes import CLASS_NAMES, generate_sample, read_dataset, sample_at, write_dataset


def _inside(inner, outer, tol=0.0):
    return (inner[0] >= outer[0] - tol and inner[1] >= outer[1] - tol
            and inner[2] <= outer[2] + tol and inner[3] <= outer[3] + tol)


def test_same_seed_same_sample_and_different_seed_differs():
    a = generate_sample(np.random.default_rng(5), (200, 150))
    b = generate_sample(np.random.default_rng(5), (200, 150))
    c = generate_sample(np.random.default_rng(6), (200, 150))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    img, boxes, classes = a
    assert img.shape == (150, 200, 3) and img.dtype == np.uint8
    assert boxes.dtype == np.float32 and boxes.shape[1] == 4 and classes.dtype == np.int64


def test_labels_are_sane_over_many_samples():
    seen = np.zeros(len(CLASS_NAMES), int)
    for i in range(40):
        img, boxes, classes = sample_at(3, i, (192, 144))
        h, w = img.shape[:2]
        assert len(boxes) >= 1, f"sample {i} has no labelled eye"
        assert np.all(boxes[:, [0, 1]] >= 0) and np.all(boxes[:, 2] <= w) and np.all(boxes[:, 3] <= h)
        assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
        assert set(classes.tolist()) <= {0, 1, 2}
        seen += np.bincount(classes, minlength=3)
        irises = boxes[classes == 0]
        for pupil in boxes[classes == 1]:
            assert any(_inside(pupil, iris) for iris in irises), f"sample {i}: pupil {pupil} outside every iris"
        # at most two eyes per image: <= 2 irises, <= 2 shut eyes, <= 2 eyes in total
        assert (classes == 0).sum() + (classes == 2).sum() <= 2
    assert np.all(seen > 3), f"each class should appear across 40 samples, counts {seen}"


def test_open_eye_iris_box_is_the_visible_disk():
    # an iris is round but the lids cover part of it: its box is never taller than it is wide by much
    for i in range(20):
        _, boxes, classes = sample_at(11, i, (256, 256))
        for b in boxes[classes == 0]:
            assert (b[3] - b[1]) <= (b[2] - b[0]) * 1.15 + 2


def test_sample_at_is_independent_of_order():
    a = sample_at(9, 4, 128)
    sample_at(9, 1, 128)
    b = sample_at(9, 4, 128)
    np.testing.assert_array_equal(a[0], b[0])


def test_too_small_size_is_refused():
    with pytest.raises(ConfigError, match="size"):
        generate_sample(np.random.default_rng(0), 32)


def test_write_and_read_dataset(tmp_path):
    out = write_dataset(tmp_path / "eyes", 3, seed=21, size=(160, 120))
    lines = (out / "dataset.txt").read_text().splitlines()
    assert lines == ["eye_00000.png", "eye_00001.png", "eye_00002.png"]
    meta = json.loads((out / "labels.json").read_text())
    assert meta["classes"] == list(CLASS_NAMES) and meta["seed"] == 21
    paths, boxes, classes = read_dataset(out)
    for i, p in enumerate(paths):
        img = cv2.imread(str(p))
        ref_img, ref_boxes, ref_classes = sample_at(21, i, (160, 120))
        np.testing.assert_array_equal(img, ref_img)  # PNG is lossless
        np.testing.assert_allclose(boxes[i], ref_boxes, atol=0.01)
        np.testing.assert_array_equal(classes[i], ref_classes)
    assert not list(out.glob("*.tmp"))


def test_read_dataset_missing_labels(tmp_path):
    with pytest.raises(DatasetError, match="labels.json"):
        read_dataset(tmp_path)
    with pytest.raises(DatasetError):
        write_dataset(tmp_path, 0, 1)
