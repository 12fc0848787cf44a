"""YOLOX decoding (both layouts), postprocess_yolox edge cases, and the Detections container."""

import json
import math

import numpy as np
import pytest

from openrknn.errors import ConfigError
from openrknn.vision.detections import COCO80_CATEGORY_IDS, Detections
from openrknn.vision.letterbox import LetterboxTransform, letterbox
from openrknn.vision.yolox.decode import decode_yolox, postprocess_yolox

def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def logit(p):
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def empty_maps(nc=3, size=(416, 416), strides=(8, 16, 32), background=-8.0):
    """Raw per-level maps in which every anchor is confidently background."""
    w, h = size
    maps = []
    for s in strides:
        m = np.zeros((1, 5 + nc, math.ceil(h / s), math.ceil(w / s)), np.float32)
        m[0, 4:] = background
        maps.append(m)
    return maps


def maps_to_flat(maps):
    """The official export's layout from raw maps: [1, N, C], level-major, scores through a sigmoid."""
    flat = np.concatenate([m.reshape(m.shape[1], -1) for m in maps], axis=1).T.copy()
    flat[:, 4:] = sigmoid(flat[:, 4:])
    return flat[None]


def reference_decode(maps, size):
    """One anchor at a time: (boxes xyxy, obj, class scores) for all anchors, level by level, row-major."""
    _, h_in = size  # strides follow from the height; the width must agree
    boxes, objs, clss = [], [], []
    for m in maps:
        _, _, h, w = m.shape
        stride = h_in / h
        for gy in range(h):
            for gx in range(w):
                v = m[0, :, gy, gx].astype(np.float64)
                cx, cy = (v[0] + gx) * stride, (v[1] + gy) * stride
                bw, bh = math.exp(v[2]) * stride, math.exp(v[3]) * stride
                boxes.append([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2])
                objs.append(1 / (1 + math.exp(-v[4])))
                clss.append([1 / (1 + math.exp(-c)) for c in v[5:]])
    return np.array(boxes), np.array(objs), np.array(clss)


def place(maps, level, gx, gy, reg=(0.5, 0.5, 1.0, 1.0), obj=4.0, cls_logits=(5.0, -5.0, -5.0)):
    m = maps[level]
    m[0, :4, gy, gx] = reg
    m[0, 4, gy, gx] = obj
    m[0, 5:, gy, gx] = cls_logits


def test_single_anchor_box_is_exact_in_both_layouts():
    maps = empty_maps()
    place(maps, 1, gx=10, gy=4, reg=(0.25, 0.75, math.log(3.0), math.log(2.0)), obj=3.0, cls_logits=(-6, 2.0, -6))
    cx, cy, bw, bh = (0.25 + 10) * 16, (0.75 + 4) * 16, 3.0 * 16, 2.0 * 16
    expected = [cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2]
    for outputs in (maps, maps_to_flat(maps)):
        dec = decode_yolox(outputs, 416, num_classes=3, score_thr=0.5)
        assert len(dec) == 1 and dec.num_anchors == 3549
        assert dec.anchor_index.tolist() == [52 * 52 + 4 * 26 + 10]
        np.testing.assert_allclose(dec.boxes[0], expected, rtol=1e-5)
        np.testing.assert_allclose(dec.objectness[0], sigmoid(3.0), rtol=1e-5)
        np.testing.assert_allclose(dec.scores[0, 1], sigmoid(3.0) * sigmoid(2.0), rtol=1e-5)


def test_real_maps_match_reference_loop_and_flat_layout(real_data):
    maps = [np.load(real_data(f"yolox_pytorch_ref/output{i}.npy")) for i in range(3)]
    dec = decode_yolox(maps, (416, 416), num_classes=3)
    boxes, obj, cls = reference_decode(maps, (416, 416))
    assert len(dec) == 3549
    np.testing.assert_allclose(dec.boxes, boxes, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(dec.objectness, obj, rtol=1e-5)
    np.testing.assert_allclose(dec.class_scores, cls, rtol=1e-5)
    flat = decode_yolox(maps_to_flat(maps), 416)
    np.testing.assert_allclose(flat.boxes, dec.boxes, rtol=1e-6)
    np.testing.assert_allclose(flat.class_scores, dec.class_scores, rtol=1e-6)


def test_non_square_input_strides_and_prefilter():
    rng = np.random.default_rng(3)
    size = (320, 192)  # width, height
    maps = [rng.normal(0, 2, (1, 7, math.ceil(192 / s), math.ceil(320 / s))).astype(np.float32) for s in (8, 16, 32)]
    full = decode_yolox(maps, size)
    boxes, obj, cls = reference_decode(maps, size)
    np.testing.assert_allclose(full.boxes, boxes, rtol=1e-5, atol=1e-3)
    best = obj * cls.max(axis=1)
    part = decode_yolox(maps, size, score_thr=0.4)
    assert part.anchor_index.tolist() == np.flatnonzero(best >= 0.4).tolist()
    np.testing.assert_array_equal(part.boxes, full.boxes[part.anchor_index])
    with pytest.raises(ConfigError, match="input size"):
        decode_yolox(maps, (192, 320))  # width and height swapped


def test_input_size_not_divisible_by_32():
    size = (420, 420)  # maps of ceil(420 / s): 53, 27, 14
    maps = empty_maps(nc=1, size=size)
    assert [m.shape[2] for m in maps] == [53, 27, 14]
    assert decode_yolox(maps, size).num_anchors == 53 * 53 + 27 * 27 + 14 * 14
    assert decode_yolox(maps_to_flat(maps), size).num_anchors == 53 * 53 + 27 * 27 + 14 * 14


def test_strides_argument_and_p6_flat():
    maps = empty_maps(nc=2, size=(256, 256), strides=(8, 16, 32, 64))
    assert decode_yolox(maps_to_flat(maps), 256).num_anchors == 32 * 32 + 16 * 16 + 8 * 8 + 4 * 4
    maps3 = empty_maps(nc=2, size=(256, 256))
    assert decode_yolox(maps3, 256, strides=(8, 16, 32)).num_anchors == 1344
    with pytest.raises(ConfigError, match="strides"):
        decode_yolox(maps3, 256, strides=(8, 16))


def test_contract_errors_are_loud():
    maps = empty_maps()
    with pytest.raises(ConfigError, match="num_classes"):
        decode_yolox(maps, 416, num_classes=80)
    raw_flat = np.concatenate([m.reshape(8, -1) for m in maps], axis=1).T[None]  # flat but never activated
    with pytest.raises(ConfigError, match="scores_activated"):
        decode_yolox(raw_flat, 416)
    assert len(decode_yolox(raw_flat, 416, scores_activated=False)) == 3549
    with pytest.raises(ConfigError, match="layout"):
        decode_yolox(maps, 416, layout="nhwc")
    with pytest.raises(ConfigError, match="batch"):
        decode_yolox(np.zeros((2, 3549, 8), np.float32), 416)
    with pytest.raises(ConfigError, match="N=3000"):
        decode_yolox(np.zeros((1, 3000, 8), np.float32), 416)
    with pytest.raises(ConfigError):
        decode_yolox([np.zeros((1, 8, 52, 52)), np.zeros((1, 9, 26, 26))], 416)


def test_grid_cache_is_read_only_and_reused():
    from openrknn.vision.yolox import decode as mod

    maps = empty_maps()
    decode_yolox(maps, 416)
    hits = mod._anchor_grid.cache_info().hits
    decode_yolox(maps, 416)
    assert mod._anchor_grid.cache_info().hits == hits + 1
    grid = mod._anchor_grid(((2, 3, 8),))
    # cell gx = 1, gy = 1 of a 2 x 3 map at stride 8: origin x, y, x, y, the stride, the signed half-stride
    np.testing.assert_array_equal(grid[4], [8, 8, 8, 8, 8, -4, -4, 4, 4])
    with pytest.raises(ValueError):
        grid[0, 0] = 5


def test_float16_and_huge_log_sizes_stay_finite():
    maps = empty_maps()
    place(maps, 0, 3, 3, reg=(0, 0, 500.0, 500.0))
    dec = decode_yolox([m.astype(np.float16) for m in maps], 416, score_thr=0.5)
    assert len(dec) == 1 and np.isfinite(dec.boxes).all()


def test_postprocess_zero_one_and_many():
    t = LetterboxTransform(0.5, 0.5, 0, 8, (800, 832), (416, 416), "center")
    maps = empty_maps()
    none = postprocess_yolox(maps, t, num_classes=3)
    assert len(none) == 0 and none.boxes.shape == (0, 4) and none.class_ids.dtype == np.int64

    place(maps, 0, gx=20, gy=20)  # cx = cy = 164, w = h = e * 8
    one = postprocess_yolox(maps, t, num_classes=3)
    assert len(one) == 1 and one.boxes.shape == (1, 4) and one.class_ids.tolist() == [0]
    assert (one.boxes.dtype, one.scores.dtype, one.class_ids.dtype) == (np.float32, np.float32, np.int64)
    half = math.e * 8 / 2
    np.testing.assert_allclose(one.boxes[0], [(164 - half) / 0.5, (164 - half - 8) / 0.5,
                                              (164 + half) / 0.5, (164 + half - 8) / 0.5], rtol=1e-5)
    np.testing.assert_allclose(one.scores[0], sigmoid(4.0) * sigmoid(5.0), rtol=1e-5)

    # neighbouring anchors predicting (almost) the same box as the first one
    place(maps, 0, gx=21, gy=20, reg=(-0.5, 0.5, 1.0, 1.0), obj=3.0)  # same class: suppressed
    place(maps, 0, gx=22, gy=20, reg=(-1.6, 0.5, 1.0, 1.0), obj=3.0, cls_logits=(-5, 5, -5))  # other class
    place(maps, 2, gx=2, gy=2, cls_logits=(-5, -5, 5))  # far away
    aware = postprocess_yolox(maps, t)
    agnostic = postprocess_yolox(maps, t, class_agnostic=True)
    assert sorted(aware.class_ids.tolist()) == [0, 1, 2]
    assert sorted(agnostic.class_ids.tolist()) == [0, 2]
    assert len(postprocess_yolox(maps, t, nms_thr=1.0)) == 4
    assert len(postprocess_yolox(maps, t, max_det=2)) == 2
    assert np.all(np.diff(aware.scores) <= 0)


def test_postprocess_multi_label_and_thresholds():
    maps = empty_maps()
    place(maps, 1, gx=5, gy=5, obj=6.0, cls_logits=(3.0, 2.0, -6.0))
    single = postprocess_yolox(maps, input_size=416)
    multi = postprocess_yolox(maps, input_size=416, multi_label=True)
    assert single.class_ids.tolist() == [0]
    assert multi.class_ids.tolist() == [0, 1]
    np.testing.assert_array_equal(multi.boxes[0], multi.boxes[1])
    assert len(postprocess_yolox(maps, input_size=416, score_thr=0.99)) == 0
    with pytest.raises(ConfigError, match="input_size"):
        postprocess_yolox(maps)
    t = LetterboxTransform.identity(320, 320)
    with pytest.raises(ConfigError, match="input_size"):
        postprocess_yolox(maps, t)  # maps are for 416, transform says 320


def test_postprocess_drops_boxes_lying_in_the_padding():
    image = np.zeros((100, 416, 3), np.uint8)
    _, t = letterbox(image, 416, mode="center")  # image rows 158..257
    maps = empty_maps()
    place(maps, 0, gx=20, gy=2)  # a box around y = 20: all padding
    place(maps, 0, gx=20, gy=26)  # a box around y = 212: in the image
    dets = postprocess_yolox(maps, t)
    assert len(dets) == 1 and 0 <= dets.boxes[0, 1] < dets.boxes[0, 3] <= 100


def test_detections_json_coco_and_select():
    d = Detections(np.array([[1.234, 2, 11, 22], [5, 5, 6, 8]]), [0.9, 0.5], [2, 0])
    assert d.boxes.dtype == np.float32 and d.class_ids.dtype == np.int64 and len(d) == 2
    items = json.loads(d.to_json(class_names=["a", "b", "c"]))
    assert items[0] == {"box": [1.23, 2.0, 11.0, 22.0], "score": 0.9, "class_id": 2, "class_name": "c"}
    back = Detections.from_list(items)
    np.testing.assert_allclose(back.boxes, d.boxes, atol=0.01)
    coco = d.to_coco(image_id=7, category_ids=COCO80_CATEGORY_IDS)
    assert coco[0]["category_id"] == 3 and coco[0]["image_id"] == 7
    np.testing.assert_allclose(coco[0]["bbox"], [1.23, 2.0, 9.77, 20.0], atol=0.011)
    assert d.to_coco(1)[1]["category_id"] == 0
    assert d.select([1]).scores.tolist() == [0.5] and len(d.select(d.scores > 2)) == 0
    assert d.select(np.array([1, 0])).sorted().scores.tolist() == pytest.approx([0.9, 0.5])
    assert len(Detections.empty()) == 0 and Detections.from_list([]).boxes.shape == (0, 4)
    assert len(COCO80_CATEGORY_IDS) == 80
    with pytest.raises(ConfigError):
        Detections(np.zeros((2, 4)), [0.1], [0, 1])
    with pytest.raises(ConfigError):
        Detections(np.zeros((1, 4)), [0.1], [0.5])
    with pytest.raises(ConfigError, match="category_ids"):
        d.to_coco(1, category_ids=[1])
