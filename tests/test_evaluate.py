"""mAP@0.5 on hand-made cases whose answer is known."""

import numpy as np
import pytest

from openrknn.errors import ConfigError
from openrknn.vision.yolox.evaluate import average_precision, evaluate_map

A = np.array([[0, 0, 10, 10]], np.float32)
B = np.array([[20, 20, 40, 40]], np.float32)


def _det(boxes, scores, classes):
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32), np.asarray(classes)


def test_perfect_detections_give_one():
    gt = [(np.vstack([A, B]), np.array([0, 1])), (A + 5, np.array([2]))]
    dets = [_det(np.vstack([A, B]), [0.9, 0.8], [0, 1]), _det(A + 5, [0.7], [2])]
    res = evaluate_map(dets, gt, 3)
    assert res.map == pytest.approx(1.0)
    np.testing.assert_allclose(res.ap, [1, 1, 1])


def test_one_missed_box_halves_recall():
    gt = [(np.vstack([A, B]), np.array([0, 0]))]
    res = evaluate_map([_det(A, [0.9], [0])], gt, 1)
    assert res.ap[0] == pytest.approx(0.5)


def test_false_positive_ranked_first_costs_precision():
    gt = [(A, np.array([0]))]
    fp_first = evaluate_map([_det(np.vstack([B, A]), [0.9, 0.5], [0, 0])], gt, 1)
    assert fp_first.ap[0] == pytest.approx(0.5)  # TP arrives at precision 1/2
    fp_last = evaluate_map([_det(np.vstack([B, A]), [0.1, 0.5], [0, 0])], gt, 1)
    assert fp_last.ap[0] == pytest.approx(1.0)  # a FP below every TP does not lower the envelope


def test_duplicates_wrong_class_and_low_iou_are_false_positives():
    gt = [(A, np.array([0]))]
    dup = evaluate_map([_det(np.vstack([A, A]), [0.6, 0.9], [0, 0])], gt, 1)
    assert dup.ap[0] == pytest.approx(1.0)  # the best one matches, the duplicate only follows it
    wrong = evaluate_map([_det(A, [0.9], [1])], gt, 2)
    assert wrong.ap[0] == 0.0 and np.isnan(wrong.ap[1]) and wrong.map == 0.0
    shifted = A + np.array([6, 0, 6, 0], np.float32)  # IoU 4*10 / (160) = 0.25
    assert evaluate_map([_det(shifted, [0.9], [0])], gt, 1).ap[0] == 0.0


def test_images_do_not_share_ground_truth():
    gt = [(A, np.array([0])), (np.zeros((0, 4)), np.zeros(0, np.int64))]
    res = evaluate_map([_det(np.zeros((0, 4)), [], []), _det(A, [0.9], [0])], gt, 1)
    assert res.ap[0] == 0.0


def test_classes_without_ground_truth_are_left_out_of_the_mean():
    gt = [(A, np.array([0]))]
    res = evaluate_map([_det(A, [0.9], [0])], gt, 3)
    assert res.map == pytest.approx(1.0) and np.isnan(res.ap[1]) and np.isnan(res.ap[2])
    assert res.as_dict(["a", "b", "c"])["per_class"]["b"]["ap"] is None


def test_average_precision_all_point_interpolation():
    # ranked TP, FP, TP with 2 ground truths: recall .5,.5,1 precision 1,.5,.667 -> .5*1 + .5*.667
    assert average_precision(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])) == pytest.approx(0.5 + 1 / 3)


def test_mismatched_inputs_raise():
    with pytest.raises(ConfigError):
        evaluate_map([], [(A, np.array([0]))], 1)
    with pytest.raises(ConfigError):
        evaluate_map([_det(A, [0.9, 0.8], [0, 0])], [(A, np.array([0]))], 1)
