"""The real COCO YOLOX-nano export through onnxruntime: our pipeline against a plain reference implementation."""

import math

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from openrknn.vision.letterbox import letterbox
from openrknn.vision.nms import box_iou
from openrknn.vision.yolox.decode import postprocess_yolox

SIZE = 416
SCORE_THR, NMS_THR = 0.3, 0.45


@pytest.fixture(scope="module")
def session(real_data):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(real_data("models/yolox_nano_coco.onnx")), opts, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def labels(real_data):
    return real_data("coco_80_labels.txt").read_text().split("\n")


def run(session, bgr_416):
    x = np.ascontiguousarray(bgr_416.transpose(2, 0, 1)[None], dtype=np.float32)  # BGR 0..255 NCHW, no scaling
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def reference_detect(session, image):
    """Official-style preprocessing and a plain loop post-processing, independent of openrknn."""
    h, w = image.shape[:2]
    r = min(SIZE / h, SIZE / w)
    canvas = np.full((SIZE, SIZE, 3), 114, np.uint8)
    resized = cv2.resize(image, (int(w * r), int(h * r)), interpolation=cv2.INTER_LINEAR)
    canvas[: resized.shape[0], : resized.shape[1]] = resized
    out = run(session, canvas)[0]

    cands = []
    row = 0
    for stride in (8, 16, 32):
        n = SIZE // stride
        for gy in range(n):
            for gx in range(n):
                v = out[row].astype(np.float64)
                row += 1
                cls = int(np.argmax(v[5:]))
                score = v[4] * v[5 + cls]
                if score < SCORE_THR:
                    continue
                cx, cy = (v[0] + gx) * stride, (v[1] + gy) * stride
                bw, bh = math.exp(v[2]) * stride, math.exp(v[3]) * stride
                cands.append((score, cls, [cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2]))
    assert row == len(out)

    cands.sort(key=lambda c: -c[0])
    kept = []
    for score, cls, box in cands:
        if all(c != cls or box_iou_plain(box, b) <= NMS_THR for _, c, b in kept):
            kept.append((score, cls, box))
    dets = []
    for score, cls, (x1, y1, x2, y2) in kept:
        box = [min(max(x1 / r, 0), w), min(max(y1 / r, 0), h), min(max(x2 / r, 0), w), min(max(y2 / r, 0), h)]
        dets.append((cls, score, box))
    return dets


def box_iou_plain(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def ours(session, image, layout="flat"):
    x, t = letterbox(image, SIZE, mode="topleft", pad_value=114)
    out = run(session, x)
    if layout == "maps":  # the same prediction in the seed's layout: three raw [1, 85, h, w] maps
        raw = out[0].copy()
        raw[:, 4:] = np.log(np.clip(raw[:, 4:], 1e-7, 1 - 1e-7) / np.clip(1 - raw[:, 4:], 1e-7, 1))
        sizes = [SIZE // s for s in (8, 16, 32)]
        splits = np.cumsum([n * n for n in sizes])[:-1]
        out = [p.T.reshape(1, 85, n, n) for p, n in zip(np.split(raw, splits), sizes)]
    return postprocess_yolox(out, t, num_classes=80, score_thr=SCORE_THR, nms_thr=NMS_THR, layout=layout)


def assert_matches_reference(dets, ref):
    assert len(dets) == len(ref), (dets, ref)
    ious = box_iou(dets.boxes, np.array([b for _, _, b in ref], np.float32))
    for i in range(len(dets)):
        j = int(np.argmax(ious[i]))
        assert ious[i, j] >= 0.9
        assert dets.class_ids[i] == ref[j][0]
        assert abs(dets.scores[i] - ref[j][1]) <= 0.02


def find(dets, labels, name):
    idx = [i for i in range(len(dets)) if labels[dets.class_ids[i]] == name]
    return dets.select(idx)


@pytest.mark.parametrize("layout", ["flat", "maps"])
def test_dog(session, labels, layout, real_data):
    image = cv2.imread(str(real_data("images/misc/dog.jpg")))
    dets = ours(session, image, layout)
    top3 = {labels[c]: s for c, s in zip(dets.class_ids[:3].tolist(), dets.scores[:3].tolist())}
    assert set(top3) == {"dog", "bicycle", "car"}
    for name, score in (("dog", 0.86), ("bicycle", 0.80), ("car", 0.80)):
        assert abs(top3[name] - score) <= 0.02, (name, top3[name])
    assert_matches_reference(dets, reference_detect(session, image))
    # the dog stands in the lower-left half of the 768x576 photo
    dog = find(dets, labels, "dog").boxes[0]
    assert dog[0] < 384 and dog[3] > 288 and dog[2] <= 768 and dog[3] <= 576


@pytest.mark.parametrize("layout", ["flat", "maps"])
def test_bus(session, labels, layout, real_data):
    image = cv2.imread(str(real_data("images/misc/bus.jpg")))
    dets = ours(session, image, layout)
    assert labels[dets.class_ids[0]] == "bus" and abs(dets.scores[0] - 0.91) <= 0.02
    persons = find(dets, labels, "person")
    assert len(persons) >= 3 and (persons.scores >= 0.5).sum() >= 3
    assert_matches_reference(dets, reference_detect(session, image))


def test_centre_letterbox_gives_the_same_objects(session, labels, real_data):
    # the model was trained with top-left padding, but the box mapping must hold for any placement: bus.jpg is tall,
    # so centring shifts it 52 input pixels (135 image pixels) right, which a wrong mapping would not undo
    image = cv2.imread(str(real_data("images/misc/bus.jpg")))
    x, t = letterbox(image, SIZE, mode="center", pad_value=114)
    assert t.pad_left == 52
    dets = postprocess_yolox(run(session, x), t, num_classes=80, score_thr=0.5)
    ref = ours(session, image)
    ref = ref.select(ref.scores >= 0.5)
    assert sorted(dets.class_ids.tolist()) == sorted(ref.class_ids.tolist()) == [0, 0, 0, 5]
    ious = box_iou(dets.boxes, ref.boxes)
    same_class = dets.class_ids[:, None] == ref.class_ids[None, :]
    assert (np.where(same_class, ious, 0).max(axis=1) >= 0.85).all()
