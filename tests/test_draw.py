"""draw_detections: coordinates in the right order, clipping, styles, labels, colours, no mutation."""

import numpy as np
import pytest

from openrknn.errors import ConfigError
from openrknn.vision.detections import Detections
from openrknn.vision.draw import class_colors, draw_detections

RED = (0, 0, 255)


def dets(*boxes, classes=None, scores=None):
    n = len(boxes)
    return Detections(np.array(boxes, np.float32).reshape(n, 4), scores or [0.9] * n, classes or [0] * n)


def test_left_top_right_bottom_order():
    # a wide, short box: x spans 20..180, y spans 100..130 (the seed unpacked it as top, left, ... and drew it
    # transposed)
    image = np.zeros((200, 300, 3), np.uint8)
    out = draw_detections(image, dets([20, 100, 180, 130]), colors=[RED], thickness=1, show_label=False)
    assert tuple(out[115, 20]) == RED  # left edge, mid-height
    assert tuple(out[115, 179]) == RED  # right edge: last pixel column of [20, 180)
    assert tuple(out[129, 100]) == RED  # bottom edge
    assert tuple(out[115, 100]) == (0, 0, 0)  # inside stays clear
    assert tuple(out[60, 115]) == (0, 0, 0)  # where a transposed box would put its edge
    assert tuple(out[150, 20]) == (0, 0, 0)  # below the box


def test_returns_new_image_and_keeps_input():
    image = np.full((50, 60, 3), 30, np.uint8)
    before = image.copy()
    out = draw_detections(image, dets([5, 5, 40, 40]))
    np.testing.assert_array_equal(image, before)
    assert out is not image and not np.array_equal(out, before)
    empty = draw_detections(image, Detections.empty())
    np.testing.assert_array_equal(empty, before)
    assert empty is not image


def test_clipping_and_skipping():
    image = np.zeros((100, 100, 3), np.uint8)
    out = draw_detections(image, dets([-50, -50, 500, 500]), colors=[RED], thickness=1, show_label=False)
    assert tuple(out[50, 0]) == RED and tuple(out[50, 99]) == RED and tuple(out[99, 50]) == RED
    outside = draw_detections(image, dets([200, 200, 300, 300], [np.nan, 0, 10, 10]))
    np.testing.assert_array_equal(outside, image)


def test_ellipse_style():
    image = np.zeros((200, 200, 3), np.uint8)
    out = draw_detections(image, dets([40, 60, 160, 140]), style="ellipse", colors=[RED], thickness=1,
                          show_label=False)
    assert tuple(out[99, 40]) == RED or tuple(out[100, 40]) == RED  # leftmost point of the ellipse
    assert tuple(out[139, 99]) == RED or tuple(out[139, 100]) == RED  # bottom point
    assert tuple(out[139, 41]) == (0, 0, 0)  # box corner stays clear
    box = draw_detections(image, dets([40, 60, 160, 140]), colors=[RED], thickness=1, show_label=False)
    assert tuple(box[139, 41]) == RED


def test_label_is_drawn_above_or_inside():
    image = np.zeros((200, 200, 3), np.uint8)
    plain = draw_detections(image, dets([50, 80, 150, 150]), show_label=False, thickness=1)
    labelled = draw_detections(image, dets([50, 80, 150, 150]), class_names=["eye"], thickness=1)
    assert labelled[60:80, 50:120].any() and not plain[60:79, 50:120].any()
    at_top = draw_detections(image, dets([50, 0, 150, 150]), class_names=["eye"], thickness=1)
    assert at_top[1:15, 52:100].any()  # no room above: inside the box


def test_colours_per_class_and_gray_input():
    gray = np.zeros((100, 200), np.uint8)
    d = dets([10, 10, 90, 90], [110, 10, 190, 90], classes=[0, 1])
    out = draw_detections(gray, d, colors=[(255, 0, 0), (0, 255, 0)], thickness=1, show_label=False)
    assert out.shape == (100, 200, 3)
    assert tuple(out[50, 10]) == (255, 0, 0) and tuple(out[50, 110]) == (0, 255, 0)
    palette = class_colors(5)
    assert len(set(palette)) == 5 and palette == class_colors(5)
    auto = draw_detections(gray, d, thickness=1, show_label=False)
    assert tuple(auto[50, 10]) == class_colors(2)[0] and tuple(auto[50, 110]) == class_colors(2)[1]


def test_bad_arguments_raise():
    with pytest.raises(ConfigError, match="style"):
        draw_detections(np.zeros((5, 5, 3), np.uint8), Detections.empty(), style="circle")
    with pytest.raises(ConfigError, match="image"):
        draw_detections(np.zeros((5, 5, 3), np.float32), Detections.empty())
    with pytest.raises(ConfigError, match="colors"):
        draw_detections(np.zeros((5, 5, 3), np.uint8), dets([0, 0, 3, 3]), colors=[(1, 2)])
