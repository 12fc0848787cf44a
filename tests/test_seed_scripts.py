"""The seed's own scripts, end to end, as separate processes: convert (section 3.2) a YOLOX-nano traced from the
yolox-pytorch reference weights, then the image test (section 4.1) on the loaded .rknn; the raw outputs must equal
torch's and the reference vectors (tests/data/yolox_pytorch_ref) within 1e-4."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from openrknn.api import RKNN
from openrknn.package import read_package

pytestmark = pytest.mark.slow  # separate processes, and a conversion shared by most tests
SCRIPTS = Path(__file__).resolve().parent / "seed_scripts"
IMAGENET_MEAN = [123.675, 116.28, 103.53]
IMAGENET_STD = [58.395, 57.12, 57.375]
STRIDES = (8, 16, 32)
ATOL = 1e-4


@pytest.fixture(scope="module")
def ref(real_data):
    """Function: file name -> path of that yolox_pytorch_ref file."""
    return lambda name: real_data(f"yolox_pytorch_ref/{name}")


@pytest.fixture(scope="module")
def converted(nano_pt, tmp_path_factory, python_subprocess):
    """Run the conversion script once; returns (completed process, .rknn path)."""
    out = tmp_path_factory.mktemp("seed_convert") / "myself_nano.rknn"
    proc = python_subprocess([SCRIPTS / "convert_seed.py", nano_pt, out, out.parent / "JPEGImages.txt"])
    return proc, out


@pytest.fixture(scope="module")
def seed_rknn(converted) -> Path:
    proc, out = converted
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


@pytest.fixture(scope="module")
def loaded_seed_model(seed_rknn):
    rknn = RKNN()
    assert rknn.load_rknn(str(seed_rknn)) == 0
    assert rknn.init_runtime() == 0
    yield rknn
    rknn.release()


def _normalised_nchw(bgr_hwc: np.ndarray) -> np.ndarray:
    """What the training code feeds the network: BGR -> RGB, ImageNet mean/std, NCHW float32."""
    rgb = bgr_hwc[:, :, ::-1].astype(np.float32)
    x = (rgb - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None].astype(np.float32))


def _centred_letterbox_128(img: np.ndarray, size: int = 416):
    """An independent letterbox: keep the aspect ratio, centre, pad with 128."""
    ih, iw = img.shape[:2]
    scale = min(size / iw, size / ih)
    nw, nh = round(iw * scale), round(ih * scale)
    left, top = (size - nw) // 2, (size - nh) // 2
    out = np.full((size, size, 3), 128, np.uint8)
    out[top:top + nh, left:left + nw] = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return out, (nw / iw, nh / ih, left, top)


def _run_image_script(python_subprocess, model: Path, image: Path, out_dir: Path, *extra):
    proc = python_subprocess([SCRIPTS / "image_seed.py", model, image, out_dir, *extra])
    return proc


# ---------------------------------------------------------------- conversion script


def test_convert_script_exits_0_and_records_the_seed_config(converted):
    proc, out = converted
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("done") == 4
    meta = read_package(out).metadata
    assert meta["target_platform"] == ["rk1808"]
    (inp,) = meta["inputs"]
    assert inp["shape"] == [1, 416, 416, 3] and inp["dtype"] == "uint8" and inp["layout"] == "nhwc"
    assert inp["model_shape"] == [1, 3, 416, 416]
    assert inp["preprocess"]["reorder_channel"] == [2, 1, 0]
    assert inp["preprocess"]["mean"] == IMAGENET_MEAN and inp["preprocess"]["std"] == IMAGENET_STD
    assert [o["shape"] for o in meta["outputs"]] == [[1, 8, 52, 52], [1, 8, 26, 26], [1, 8, 13, 13]]
    build = meta["build"]
    assert build["do_quantization"] is False and meta.get("quantization") is None
    assert (build["optimization_level"], build["batch_size"], build["output_optimize"]) == (3, 200, 1)
    assert build["quantize_input_node"] is False and build["force_builtin_perm"] is False
    assert build["pre_compile"] is False
    assert meta["source"]["framework"] == "pytorch"


def test_convert_script_exits_minus_one_when_the_model_is_missing(tmp_path, python_subprocess):
    out = tmp_path / "never.rknn"
    proc = python_subprocess([SCRIPTS / "convert_seed.py", tmp_path / "absent.pt", out])
    assert proc.returncode == 255  # exit(-1)
    assert "model not found" in proc.stdout
    assert not out.exists()


def test_convert_script_exits_with_the_load_error_for_a_state_dict(ref, tmp_path, python_subprocess):
    out = tmp_path / "never.rknn"
    proc = python_subprocess([SCRIPTS / "convert_seed.py", ref("yolox_nano_3cls_seed0.pth"), out])
    assert proc.returncode == 255, proc.stdout + proc.stderr  # exit(ret) with ret == -1
    assert "Load model failed!" in proc.stdout
    assert "torch.jit.trace" in proc.stderr  # the logged reason
    assert not out.exists()


# ---------------------------------------------------------------- the converted model against the references


def test_reference_input_through_pass_through_matches_reference_outputs(loaded_seed_model, ref, nano_pt,
                                                                        torchscript_run):
    x = np.load(ref("input_nchw_float32.npy"))
    outs = loaded_seed_model.inference(inputs=[x], data_type="float32", data_format="nchw", inputs_pass_through=[1])
    torch_outs = torchscript_run(nano_pt, x)
    assert len(outs) == 3
    for k, out in enumerate(outs):
        expected = np.load(ref(f"output{k}.npy"))
        assert out.shape == expected.shape
        np.testing.assert_allclose(out, expected, atol=ATOL, rtol=0)
        np.testing.assert_allclose(out, torch_outs[k], atol=ATOL, rtol=0)


def test_raw_letterboxed_bgr_image_matches_reference_outputs(loaded_seed_model, ref, real_data):
    img = cv2.imread(str(real_data("images/misc/iris_test.jpg")))
    boxed, _ = _centred_letterbox_128(img)
    # the reference input is exactly this image, normalised the training code's way
    np.testing.assert_allclose(_normalised_nchw(boxed), np.load(ref("input_nchw_float32.npy")), atol=1e-6, rtol=0)
    outs = loaded_seed_model.inference(inputs=[boxed])  # uint8 BGR NHWC; the model reorders and normalises
    for k, out in enumerate(outs):
        np.testing.assert_allclose(out, np.load(ref(f"output{k}.npy")), atol=ATOL, rtol=0)


# ---------------------------------------------------------------- image script


def _independent_candidates(outputs, transform):
    """Every anchor's box (original-image pixels, clipped), score and class, decoded from scratch."""
    sx, sy, left, top, (ih, iw) = transform
    boxes, scores, classes = [], [], []
    for out, s in zip(outputs, STRIDES):
        _, c, h, w = out.shape
        p = out[0].reshape(c, -1).astype(np.float64)
        gy, gx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        cx, cy = (p[0] + gx.ravel()) * s, (p[1] + gy.ravel()) * s
        bw, bh = np.exp(p[2]) * s, np.exp(p[3]) * s
        cls_prob = 1 / (1 + np.exp(-p[5:]))
        scores.append(1 / (1 + np.exp(-p[4])) * cls_prob.max(axis=0))
        classes.append(cls_prob.argmax(axis=0))
        b = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
        b[:, 0::2] = np.clip((b[:, 0::2] - left) / sx, 0, iw)
        b[:, 1::2] = np.clip((b[:, 1::2] - top) / sy, 0, ih)
        boxes.append(b)
    return np.concatenate(boxes), np.concatenate(scores), np.concatenate(classes)


def _iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.mark.parametrize("image", ["iris_test.jpg", "bus.jpg"])  # square (no padding) and portrait (side bars)
def test_image_script_outputs_equal_torch_and_detections_are_right(seed_rknn, real_data, ref, nano_pt,
                                                                   torchscript_run, tmp_path, python_subprocess,
                                                                   image):
    img_path = real_data(f"images/misc/{image}")
    thresh = 0.25
    proc = _run_image_script(python_subprocess, seed_rknn, img_path, tmp_path, str(thresh))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    img = cv2.imread(str(img_path))
    boxed, (sx, sy, left, top) = _centred_letterbox_128(img)
    fed = np.load(tmp_path / "input.npy")
    np.testing.assert_array_equal(fed, boxed)  # centred, pad 128, INTER_LINEAR
    if image == "bus.jpg":
        assert left > 0 and (fed[:, :left] == 128).all()
    outs = [np.load(tmp_path / f"output{k}.npy") for k in range(3)]
    torch_outs = torchscript_run(nano_pt, _normalised_nchw(boxed))
    for out, expected in zip(outs, torch_outs):
        np.testing.assert_allclose(out, expected, atol=ATOL, rtol=0)
    if image == "iris_test.jpg":
        for k, out in enumerate(outs):
            np.testing.assert_allclose(out, np.load(ref(f"output{k}.npy")), atol=ATOL, rtol=0)

    dets = json.loads((tmp_path / "detections.json").read_text())
    boxes, scores, classes = _independent_candidates(torch_outs, (sx, sy, left, top, img.shape[:2]))
    assert dets, "the lowered threshold must leave detections to check"
    assert len(dets) <= int((scores >= thresh).sum())
    names = ("iris", "pupil", "shut-eye")
    for d in dets:
        assert d["score"] >= thresh - 1e-4 and d["class_name"] == names[d["class_id"]]
        box = np.array(d["box"])
        assert 0 <= box[0] < box[2] <= img.shape[1] and 0 <= box[1] < box[3] <= img.shape[0]
        # the detection is one of the anchors, decoded and mapped back independently
        match = (np.abs(boxes - box).max(axis=1) < 0.02) & (np.abs(scores - d["score"]) < 2e-4) & (
            classes == d["class_id"])
        assert match.any(), d
    for i, a in enumerate(dets):  # class-aware NMS at the script's 0.3
        for b in dets[i + 1:]:
            if a["class_id"] == b["class_id"]:
                assert _iou(a["box"], b["box"]) <= 0.3 + 1e-3
    drawn = cv2.imread(str(tmp_path / "result.jpg"))
    assert drawn.shape == img.shape and np.abs(drawn.astype(int) - img).max() > 50


def test_image_script_with_the_seed_threshold_runs(seed_rknn, real_data, tmp_path, python_subprocess):
    proc = _run_image_script(python_subprocess, seed_rknn, real_data("images/misc/iris_test_eye.jpg"),
                             tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "outputs: [[1, 8, 52, 52], [1, 8, 26, 26], [1, 8, 13, 13]]" in proc.stdout
    assert json.loads((tmp_path / "detections.json").read_text()) == []  # random weights never reach 0.7


def test_image_script_exits_minus_one_for_a_missing_model(tmp_path, real_data, python_subprocess):
    proc = _run_image_script(python_subprocess, tmp_path / "absent.rknn", real_data("images/misc/iris_test.jpg"),
                             tmp_path / "out")
    assert proc.returncode == 255
    assert "Load RKNN model failed!" in proc.stdout and "absent.rknn" in proc.stderr
    assert not (tmp_path / "out").exists()
