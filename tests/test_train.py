"""Training pieces of the default eye detector: pre-processing, box decoding, SimOTA assignment, a smoke run."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from openrknn.vision.yolox.decode import decode_yolox  # noqa: E402
from openrknn.vision.yolox.model import YoloBody  # noqa: E402
from openrknn.vision.yolox.train import (  # noqa: E402
    MEAN_RGB,
    STD_RGB,
    flatten_outputs,
    init_detector,
    make_batch,
    preprocess,
    save_weights_atomic,
    simota_assign,
    yolox_loss,
)


def test_preprocess_is_letterbox_pad128_rgb_meanstd():
    img = np.zeros((50, 100, 3), np.uint8)
    img[:] = (10, 20, 30)  # BGR
    x, tf = preprocess(img, 64)
    assert x.shape == (3, 64, 64) and x.dtype == np.float32
    assert tf.pad_top == 16 and tf.pad_left == 0
    np.testing.assert_allclose(x[:, 32, 32], (np.array([30, 20, 10]) - MEAN_RGB) / STD_RGB, rtol=1e-6)
    np.testing.assert_allclose(x[:, 0, 0], (128 - MEAN_RGB) / STD_RGB, rtol=1e-6)


def test_training_box_decoding_matches_deployment_decoder():
    rng = np.random.default_rng(0)
    maps = [rng.normal(0, 1, (1, 8, 64 // s, 64 // s)).astype(np.float32) for s in (8, 16, 32)]
    preds, centres, strides = flatten_outputs([torch.from_numpy(m) for m in maps])
    ref = decode_yolox(maps, 64, num_classes=3, layout="maps")
    np.testing.assert_allclose(preds[0, :, :4].numpy(), ref.boxes, rtol=1e-5, atol=1e-4)
    assert centres.shape == (64 + 16 + 4, 2) and strides.tolist()[:1] == [8.0]


def test_simota_assigns_anchors_near_each_box_to_it():
    # anchors of one 64x64 image; predictions equal to the ground truth where they lie inside it
    maps = [torch.zeros(1, 8, 64 // s, 64 // s) for s in (8, 16, 32)]
    preds, centres, strides = flatten_outputs(maps)
    gt = torch.tensor([[4.0, 4.0, 28.0, 28.0], [36.0, 36.0, 60.0, 60.0]])
    cls = torch.tensor([0, 2])
    pred_boxes = gt[0].repeat(len(centres), 1)
    right = centres[:, 0] > 32
    pred_boxes[right] = gt[1]
    fg, gt_idx, iou = simota_assign(pred_boxes, preds[0, :, 4], preds[0, :, 5:], centres, strides, gt, cls, 3)
    assert fg.sum() >= 2 and len(gt_idx) == int(fg.sum()) and set(gt_idx.tolist()) == {0, 1}
    # every positive is a candidate of the box it was given to: inside it or within 2.5 strides of its centre
    for c, s, g in zip(centres[fg], strides[fg], gt[gt_idx]):
        inside = bool(g[0] < c[0] < g[2] and g[1] < c[1] < g[3])
        near = bool(torch.all((c - (g[:2] + g[2:]) / 2).abs() < 2.5 * s))
        assert inside or near
    # predictions copied from the box they sit in: the left half goes to box 0, the right half to box 1
    assert torch.all((centres[fg][:, 0] > 32) == (gt_idx == 1))
    assert torch.all(iou > 0.99)


@pytest.mark.slow
def test_smoke_training_lowers_the_loss(tmp_path):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = YoloBody(3, "nano")
    init_detector(model)
    model.train()
    x, targets = make_batch(np.random.default_rng(1), 2, 128)
    assert all(t.shape[1] == 5 and len(t) for t in targets)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(20):  # the same batch: the loss must fall
        loss, parts = yolox_loss(model(x), targets, 3)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        assert parts["num_fg"] >= 1 and np.isfinite(losses[-1])
    assert np.mean(losses[-3:]) < 0.85 * np.mean(losses[:3]), losses
    out = tmp_path / "w.pth"
    save_weights_atomic(model.state_dict(), out)
    again = YoloBody(3, "nano")
    again.load_state_dict(torch.load(out, weights_only=True), strict=True)
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.slow
def test_shipped_default_weights_load_and_find_eyes():
    from openrknn.vision.eyes import DEFAULT_WEIGHTS, sample_at
    from openrknn.vision.yolox.train import evaluate_model

    assert DEFAULT_WEIGHTS.is_file(), f"{DEFAULT_WEIGHTS} is missing: it is committed with the code"
    assert DEFAULT_WEIGHTS.stat().st_size <= 4 * 1024 * 1024
    torch.set_num_threads(1)
    model = YoloBody(3, "nano")
    model.load_state_dict(torch.load(DEFAULT_WEIGHTS, map_location="cpu", weights_only=True), strict=True)
    samples = [sample_at(777, i, (640, 480)) for i in range(16)]  # a stream never used in training
    res = evaluate_model(model, [s[0] for s in samples], [s[1] for s in samples], [s[2] for s in samples])
    # the model card's >= 0.9 is measured on 200 images; 16 are noisier, so this guards against a broken file only
    assert res.map >= 0.8, res.as_dict()
