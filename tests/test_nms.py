"""NMS: exact agreement with a plain greedy loop, class-aware vs agnostic, thresholds, limits, edge cases."""

import numpy as np
import pytest

from openrknn.errors import ConfigError
from openrknn.vision.nms import box_iou, nms, opencv_nms


def reference_nms(boxes, scores, iou_thr, class_ids=None):
    """Textbook greedy NMS, one box at a time."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    kept = []
    for i in order:
        ok = True
        for j in kept:
            if class_ids is not None and class_ids[i] != class_ids[j]:
                continue
            x1, y1 = max(boxes[i][0], boxes[j][0]), max(boxes[i][1], boxes[j][1])
            x2, y2 = min(boxes[i][2], boxes[j][2]), min(boxes[i][3], boxes[j][3])
            inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
            area_i = (boxes[i][2] - boxes[i][0]) * (boxes[i][3] - boxes[i][1])
            area_j = (boxes[j][2] - boxes[j][0]) * (boxes[j][3] - boxes[j][1])
            union = area_i + area_j - inter
            if union > 0 and inter / union > iou_thr:
                ok = False
                break
        if ok:
            kept.append(i)
    return kept


def clustered_boxes(rng, n, clusters=8, size=400.0):
    """Boxes jittered around a few centres, so suppression chains actually occur."""
    centres = rng.uniform(50, size - 50, (clusters, 2))
    c = centres[rng.integers(0, clusters, n)] + rng.normal(0, 12, (n, 2))
    wh = rng.uniform(20, 80, (n, 2))
    boxes = np.concatenate([c - wh / 2, c + wh / 2], axis=1).astype(np.float32)
    scores = rng.uniform(0, 1, n).astype(np.float32)
    return boxes, scores


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("iou_thr", [0.3, 0.5, 0.7])
def test_matches_greedy_reference_agnostic(seed, iou_thr):
    rng = np.random.default_rng(seed)
    boxes, scores = clustered_boxes(rng, 300)
    got = nms(boxes, scores, iou_thr)
    want = reference_nms(boxes.astype(np.float64).tolist(), scores.tolist(), iou_thr)
    assert got.tolist() == want


@pytest.mark.parametrize("seed", range(4))
def test_matches_greedy_reference_class_aware(seed):
    rng = np.random.default_rng(100 + seed)
    boxes, scores = clustered_boxes(rng, 400, clusters=5)
    classes = rng.integers(0, 4, len(boxes))
    got = nms(boxes, scores, 0.45, class_ids=classes)
    want = reference_nms(boxes.astype(np.float64).tolist(), scores.tolist(), 0.45, classes.tolist())
    assert got.tolist() == want


def test_large_candidate_set_uses_blocks_and_stays_exact():
    rng = np.random.default_rng(7)
    boxes, scores = clustered_boxes(rng, 2500, clusters=30, size=800.0)
    got = nms(boxes, scores, 0.5)
    assert got.tolist() == reference_nms(boxes.astype(np.float64).tolist(), scores.tolist(), 0.5)


def test_large_class_aware_set_with_many_classes():
    rng = np.random.default_rng(8)
    boxes, scores = clustered_boxes(rng, 2000, clusters=20, size=600.0)
    classes = rng.integers(0, 30, len(boxes))
    got = nms(boxes, scores, 0.4, class_ids=classes)
    assert got.tolist() == reference_nms(boxes.astype(np.float64).tolist(), scores.tolist(), 0.4, classes.tolist())
    # top-k is taken by score before the class grouping
    top = nms(boxes, scores, 0.4, class_ids=classes, pre_nms_topk=300)
    best = np.argsort(-scores, kind="stable")[:300]
    want = reference_nms(boxes[best].astype(np.float64).tolist(), scores[best].tolist(), 0.4, classes[best].tolist())
    assert top.tolist() == best[want].tolist()


@pytest.mark.parametrize("n", [50, 400])  # the dense path and the blocked pairs path
def test_suppressed_box_does_not_suppress_chain(n):
    # neighbours overlap with IoU 0.6, next-but-one with 1/3; greedy keeps 0, 2, 4, ... because a suppressed box
    # never suppresses (Fast-NMS would keep only box 0); the n-long chain checks that the rounds reach greedy
    x = np.arange(n, dtype=np.float32) * 25.0
    boxes = np.stack([x, np.zeros(n), x + 100, np.full(n, 10)], axis=1).astype(np.float32)
    scores = np.linspace(1.0, 0.5, n).astype(np.float32)
    got = nms(boxes, scores, 0.5)
    assert got.tolist() == reference_nms(boxes.tolist(), scores.tolist(), 0.5)
    assert got.tolist() == list(range(0, n, 2))


def test_class_aware_vs_agnostic():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11]], np.float32)
    scores = np.array([0.9, 0.8], np.float32)
    classes = np.array([0, 1])
    assert nms(boxes, scores, 0.5, class_ids=classes).tolist() == [0, 1]
    assert nms(boxes, scores, 0.5).tolist() == [0]
    assert nms(boxes, scores, 0.5, class_ids=np.array([2, 2])).tolist() == [0]


def test_zero_and_one_box():
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).shape == (0,)
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).dtype == np.int64
    assert nms(np.array([[1, 2, 3, 4]]), np.array([0.1]), 0.5).tolist() == [0]


def test_identical_boxes_keep_the_best_and_ties_keep_input_order():
    boxes = np.tile(np.array([[5, 5, 20, 20]], np.float32), (5, 1))
    assert nms(boxes, np.array([0.1, 0.9, 0.3, 0.9, 0.2]), 0.5).tolist() == [1]


def test_iou_equal_to_threshold_is_not_suppressed():
    boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10]], np.float32)  # IoU = 50 / 150 = 1/3
    scores = np.array([0.9, 0.8])
    assert nms(boxes, scores, 0.34).tolist() == [0, 1]
    assert nms(boxes, scores, 0.33).tolist() == [0]


def test_score_threshold_top_k_and_nan():
    boxes = np.array([[i * 20, 0, i * 20 + 10, 10] for i in range(6)], np.float32)  # no overlaps
    scores = np.array([0.1, 0.9, np.nan, 0.5, 0.7, 0.3], np.float32)
    assert nms(boxes, scores, 0.5).tolist() == [1, 4, 3, 5, 0]
    assert nms(boxes, scores, 0.5, score_thr=0.3).tolist() == [1, 4, 3, 5]
    assert nms(boxes, scores, 0.5, max_det=2).tolist() == [1, 4]
    assert nms(boxes, scores, 0.5, pre_nms_topk=3).tolist() == [1, 4, 3]
    assert nms(boxes, scores, 0.5, max_det=0).tolist() == []


def test_degenerate_boxes_do_not_suppress():
    boxes = np.array([[5, 5, 5, 5], [5, 5, 5, 5], [0, 0, 10, 10]], np.float32)
    assert nms(boxes, np.array([0.9, 0.8, 0.7]), 0.1).tolist() == [0, 1, 2]


def test_box_iou_values():
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [3, 3, 3, 3]], np.float32)
    np.testing.assert_allclose(box_iou(a, b), [[1.0, 1 / 3, 0.0, 0.0]], rtol=1e-6)
    assert box_iou(np.zeros((0, 4)), b).shape == (0, 4)


def test_bad_arguments_raise():
    boxes = np.zeros((2, 4), np.float32)
    with pytest.raises(ConfigError, match="boxes"):
        nms(np.zeros((2, 5)), np.zeros(2), 0.5)
    with pytest.raises(ConfigError, match="scores"):
        nms(boxes, np.zeros(3), 0.5)
    with pytest.raises(ConfigError, match="class_ids"):
        nms(boxes, np.zeros(2), 0.5, class_ids=[0])
    with pytest.raises(ConfigError, match="iou_thr"):
        nms(boxes, np.zeros(2), 1.5)
    with pytest.raises(ConfigError, match="max_det"):
        nms(boxes, np.zeros(2), 0.5, max_det=-1)


# ---------------------------------------------------------------- opencv_nms: the detector's per-frame path

@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("class_aware", [False, True])
def test_opencv_nms_matches_greedy_reference(seed, class_aware):
    """Same rule and order as the textbook loop, including boxes left of / above the origin (OpenCV's class offsets
    would let those meet across classes without the shift) and tied scores."""
    rng = np.random.default_rng(300 + seed)
    boxes, scores = clustered_boxes(rng, 200, clusters=6)
    boxes -= 120.0  # many negative coordinates
    scores = np.round(scores, 1)  # ties
    classes = rng.integers(0, 5, len(boxes)) if class_aware else None
    got = opencv_nms(boxes, scores, 0.45, classes, score_thr=0.05)
    high = np.flatnonzero(scores >= 0.05)  # 0.0 scores (rounded) are below the threshold
    want = reference_nms(boxes[high].astype(np.float64).tolist(), scores[high].tolist(), 0.45,
                         None if classes is None else classes[high].tolist())
    assert got.dtype == np.int64 and got.tolist() == high[want].tolist()


def test_opencv_nms_thresholds_limits_and_empty():
    boxes = np.array([[i * 20, 0, i * 20 + 10, 10] for i in range(6)], np.float32)
    scores = np.array([0.1, 0.9, np.nan, 0.5, 0.7, 0.3], np.float32)
    assert opencv_nms(boxes, scores, 0.5).tolist() == [1, 4, 3, 5, 0]  # no threshold: the numpy path
    assert opencv_nms(boxes, scores, 0.5, score_thr=0.0).tolist() == [1, 4, 3, 5, 0]
    assert opencv_nms(boxes, scores, 0.5, score_thr=0.3).tolist() == [1, 4, 3, 5]  # >= keeps the 0.3 box
    assert opencv_nms(boxes, scores, 0.5, max_det=2).tolist() == [1, 4]
    overlapping = np.array([[0, 0, 10, 10], [5, 0, 15, 10]], np.float32)  # IoU 1/3
    assert opencv_nms(overlapping, np.array([0.9, 0.8], np.float32), 0.34).tolist() == [0, 1]
    assert opencv_nms(overlapping, np.array([0.9, 0.8], np.float32), 0.33).tolist() == [0]
    empty = opencv_nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5, np.zeros(0, np.int64))
    assert empty.shape == (0,) and empty.dtype == np.int64


def test_opencv_nms_with_non_finite_boxes_matches_the_numpy_path():
    """A NaN or infinite coordinate (a broken model's output) must not disturb the other boxes."""
    boxes = np.array([[0, 0, 10, 10], [np.nan, 0, 10, 10], [1, 1, 11, 11], [np.inf, 0, np.inf, 5],
                      [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5], np.float32)
    for classes in (None, np.zeros(5, np.int64)):
        got = opencv_nms(boxes, scores, 0.45, classes, score_thr=0.3)
        assert got.tolist() == nms(boxes, scores, 0.45, classes, score_thr=0.3).tolist()
        assert 0 in got and 4 in got and 2 not in got
