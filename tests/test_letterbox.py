"""letterbox: output geometry, padding, and box mapping in both directions for every mode and odd sizes."""

import cv2
import numpy as np
import pytest

from openrknn.errors import ConfigError
from openrknn.vision.letterbox import LETTERBOX_MODES, LetterboxTransform, letterbox, letterbox_boxes, unletterbox_boxes

SHAPES = [(480, 640), (37, 53), (333, 500), (1080, 810), (415, 417), (1, 7)]
SIZES = [416, (320, 240), (417, 415), (31, 29)]


@pytest.mark.parametrize("mode", LETTERBOX_MODES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("size", SIZES)
def test_geometry_and_round_trip(mode, shape, size):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, shape + (3,), dtype=np.uint8)
    out, t = letterbox(image, size, mode=mode, pad_value=114)
    w, h = (size, size) if isinstance(size, int) else size
    assert out.shape == (h, w, 3) and out.dtype == np.uint8
    assert t.input_shape == (h, w) and t.input_size == (w, h) and t.orig_shape == shape
    nh, nw = round(shape[0] * t.scale_y), round(shape[1] * t.scale_x)
    assert 0 <= t.pad_left and t.pad_left + nw <= w and 0 <= t.pad_top and t.pad_top + nh <= h
    if mode == "topleft":
        assert (t.pad_left, t.pad_top) == (0, 0)
    if mode == "center":
        assert t.pad_left == (w - nw) // 2 and t.pad_top == (h - nh) // 2
    if mode == "stretch":
        assert (nw, nh, t.pad_left, t.pad_top) == (w, h, 0, 0)
    else:  # aspect kept: one side fills, and the two scales agree up to rounding of one pixel
        assert nw == w or nh == h
        assert abs(t.scale_x - t.scale_y) <= 1.0 / min(shape) + 1e-9

    # every pixel outside the placed image is padding
    mask = np.ones((h, w), bool)
    mask[t.pad_top:t.pad_top + nh, t.pad_left:t.pad_left + nw] = False
    assert (out[mask] == 114).all()

    ih, iw = shape
    x = rng.uniform(0, iw, (20, 2))
    y = rng.uniform(0, ih, (20, 2))
    boxes = np.stack([x.min(1), y.min(1), x.max(1), y.max(1)], axis=1).astype(np.float32)
    back = unletterbox_boxes(letterbox_boxes(boxes, t), t)
    np.testing.assert_allclose(back, boxes, atol=1e-3 * max(shape), rtol=1e-5)


@pytest.mark.parametrize("mode", LETTERBOX_MODES)
def test_mapping_follows_the_pixels(mode):
    # a white rectangle drawn in the original must land where letterbox_boxes says, within a pixel
    image = np.zeros((301, 457, 3), np.uint8)
    x1, y1, x2, y2 = 100, 40, 260, 201  # continuous coordinates: pixels x1..x2-1
    image[y1:y2, x1:x2] = 255
    out, t = letterbox(image, (320, 256), mode=mode, pad_value=0, interpolation="nearest")
    ys, xs = np.nonzero(out[:, :, 0] > 127)
    seen = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
    mapped = letterbox_boxes(np.array([[x1, y1, x2, y2]], np.float32), t)[0]
    np.testing.assert_allclose(seen, mapped, atol=1.0)


def test_center_mode_keeps_exact_size_when_padding_is_odd():
    image = np.zeros((100, 300, 3), np.uint8)  # 416x416: resized to 416x139, 277 rows of padding (odd)
    out, t = letterbox(image, 416, mode="center")
    assert out.shape == (416, 416, 3)
    assert t.pad_top == 138 and (416 - 139 - t.pad_top) == 139


def test_unletterbox_clips_to_the_image():
    image = np.zeros((100, 200, 3), np.uint8)
    _, t = letterbox(image, 416, mode="center")  # rows 104..311 hold the image
    in_padding = np.array([[-50, 0, 500, 100], [10, 350, 50, 400]], np.float32)
    back = unletterbox_boxes(in_padding, t)
    assert back.min() >= 0 and back[:, [0, 2]].max() <= 200 and back[:, [1, 3]].max() <= 100
    np.testing.assert_array_equal(back[0], [0, 0, 200, 0])
    unclipped = unletterbox_boxes(in_padding, t, clip=False)
    assert unclipped[0, 0] < 0


def test_channels_dtypes_and_pad_values():
    gray = np.full((20, 40), 7, np.uint8)
    out, _ = letterbox(gray, 32, mode="topleft", pad_value=9)
    assert out.shape == (32, 32) and out[0, 0] == 7 and out[-1, -1] == 9
    one = np.full((20, 40, 1), 7, np.uint8)
    assert letterbox(one, 32)[0].shape == (32, 32, 1)
    bgr = np.zeros((20, 40, 3), np.float32)
    out, _ = letterbox(bgr, 32, mode="topleft", pad_value=(1.5, 2.5, 3.5))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[-1, -1], [1.5, 2.5, 3.5])
    with pytest.raises(ConfigError, match="pad_value"):
        letterbox(bgr, 32, pad_value=(1, 2))
    with pytest.raises(ConfigError, match="pad_value"):
        letterbox(np.zeros((20, 40, 3), np.uint8), 32, pad_value=300)


def test_input_is_not_modified_and_same_size_is_a_copy():
    image = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    before = image.copy()
    out, t = letterbox(image, 4)
    np.testing.assert_array_equal(out, before)
    out[0, 0, 0] = 200
    np.testing.assert_array_equal(image, before)
    assert (t.scale_x, t.scale_y, t.pad_left, t.pad_top) == (1.0, 1.0, 0, 0)


def test_identity_transform():
    t = LetterboxTransform.identity(50, 80)
    boxes = np.array([[1, 2, 30, 40]], np.float32)
    np.testing.assert_array_equal(unletterbox_boxes(boxes, t), boxes)
    assert t.input_size == (80, 50)


def test_interpolation_is_used():
    image = np.random.default_rng(1).integers(0, 255, (10, 10, 3), dtype=np.uint8)
    a, _ = letterbox(image, 33, interpolation="nearest")
    b, _ = letterbox(image, 33, interpolation=cv2.INTER_CUBIC)
    assert not np.array_equal(a, b)


def test_bad_arguments_raise():
    image = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(ConfigError, match="mode"):
        letterbox(image, 32, mode="centre")
    with pytest.raises(ConfigError, match="size"):
        letterbox(image, (0, 32))
    with pytest.raises(ConfigError, match="size"):
        letterbox(image, "big")
    with pytest.raises(ConfigError, match="interpolation"):
        letterbox(image, 32, interpolation="bilinear")
    with pytest.raises(ConfigError, match="image"):
        letterbox(None, 32)
    with pytest.raises(ConfigError, match="image"):
        letterbox(np.zeros((0, 10, 3), np.uint8), 32)
    with pytest.raises(ConfigError, match="boxes"):
        unletterbox_boxes(np.zeros((2, 3)), LetterboxTransform.identity(5, 5))
