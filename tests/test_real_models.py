"""Real models (the committed test data, tests/data): build float, export, load the .rknn back in a NEW process, run
the simulator on five real images each, and compare with torch / onnxruntime on the original model (1e-4 absolute).

Each model is fed what its deployment feeds (uint8 NHWC pixels in the documented channel order) and the built model
applies its documented pre-processing; the reference gets the same pixels normalised by hand."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import cv2
import numpy as np
import pytest

from openrknn.api import RKNN
from openrknn.package import read_package
from openrknn.vision.letterbox import letterbox

pytestmark = pytest.mark.slow  # four real models, each also run in a new process
ATOL = 1e-4
IMAGENET_MEAN, IMAGENET_STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]


@dataclass(frozen=True)
class Spec:
    model: str
    loader: str  # "pytorch" | "onnx"
    hw: tuple  # network input (height, width)
    images: tuple  # paths under images/
    fit: str  # "crop" (short side 256, centre crop), "letterbox_topleft_114", "stretch"
    feed_order: str  # channel order of the pixels fed to the built model: "rgb" | "bgr"
    model_order: str  # channel order the network was trained on
    mean: List[float]
    std: List[float]
    input_size_list: Optional[list] = None


COCO5 = tuple(f"coco/{n}" for n in ("000000000139.jpg", "000000000285.jpg", "000000000632.jpg", "000000000724.jpg",
                                    "000000000776.jpg"))
SPECS = {
    "mobilenet_v2": Spec("mobilenet_v2_imagenet.pt", "pytorch", (224, 224),
                         tuple(f"imagenet/{n}" for n in ("ILSVRC2012_val_00000011.JPEG", "ILSVRC2012_val_00000665.JPEG",
                                                         "ILSVRC2012_val_00001123.JPEG", "ILSVRC2012_val_00001129.JPEG",
                                                         "ILSVRC2012_val_00001284.JPEG")),
                         "crop", "rgb", "rgb", IMAGENET_MEAN, IMAGENET_STD, [[3, 224, 224]]),
    "yolox_nano": Spec("yolox_nano_coco.onnx", "onnx", (416, 416), COCO5, "letterbox_topleft_114", "bgr", "bgr",
                       [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]),
    "nanodet_m": Spec("nanodet_m_coco.onnx", "onnx", (416, 416), COCO5[::-1], "stretch", "bgr", "bgr",
                      [103.53, 116.28, 123.675], [57.375, 57.12, 58.395]),
    # fed OpenCV BGR frames; reorder_channel '2 1 0' gives the RGB the network was trained on
    "ultraface": Spec("ultraface_rfb320.onnx", "onnx", (240, 320),
                      tuple(f"misc/{n}" for n in ("1face.png", "3faces.png", "messi5.jpg", "zidane.jpg", "bus.jpg")),
                      "stretch", "bgr", "rgb", [127.0] * 3, [128.0] * 3),
}


def _fit(bgr: np.ndarray, spec: Spec) -> np.ndarray:
    h, w = spec.hw
    if spec.fit == "crop":
        ih, iw = bgr.shape[:2]
        s = 256 / min(ih, iw)
        r = cv2.resize(bgr, (round(iw * s), round(ih * s)), interpolation=cv2.INTER_LINEAR)
        top, left = (r.shape[0] - h) // 2, (r.shape[1] - w) // 2
        return np.ascontiguousarray(r[top:top + h, left:left + w])
    if spec.fit == "letterbox_topleft_114":
        return letterbox(bgr, (w, h), mode="topleft", pad_value=114)[0]
    return cv2.resize(bgr, (w, h), interpolation=cv2.INTER_LINEAR)


def _pixels(spec: Spec, real_data) -> np.ndarray:
    """[N, H, W, 3] uint8 in the spec's feed order."""
    frames = []
    for rel in spec.images:
        img = cv2.imread(str(real_data(f"images/{rel}")), cv2.IMREAD_COLOR)
        assert img is not None, rel
        fitted = _fit(img, spec)
        frames.append(fitted[:, :, ::-1] if spec.feed_order == "rgb" else fitted)
    return np.ascontiguousarray(np.stack(frames))


def _model_input(pixels: np.ndarray, spec: Spec) -> np.ndarray:
    """What the original network takes: model channel order, (x - mean) / std, NCHW float32."""
    x = pixels.astype(np.float64)
    if spec.feed_order != spec.model_order:
        x = x[..., ::-1]
    x = (x - np.asarray(spec.mean)) / np.asarray(spec.std)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2).astype(np.float32))


def _reference(spec: Spec, path: Path, x: np.ndarray, torchscript_run, ort_reference) -> List[List[np.ndarray]]:
    per_image = []
    for i in range(x.shape[0]):
        if spec.loader == "pytorch":
            per_image.append(torchscript_run(path, x[i:i + 1]))
        else:
            import onnx

            name = onnx.load(str(path), load_external_data=False).graph.input[0].name
            per_image.append(ort_reference(path, {name: x[i:i + 1]}))
    return per_image


RUNNER = textwrap.dedent("""
    # A fresh process: load the exported file and run it, as a user would on another machine.
    import sys
    import numpy as np
    from openrknn.api import RKNN

    model, frames_path, out_path = sys.argv[1:4]
    frames = np.load(frames_path)
    rknn = RKNN()
    assert rknn.load_rknn(model) == 0, "load_rknn failed"
    assert rknn.init_runtime() == 0, "init_runtime failed"
    results = {}
    for i, frame in enumerate(frames):
        outs = rknn.inference(inputs=[frame])
        assert outs is not None, "inference failed"
        for k, o in enumerate(outs):
            results[f"{i}_{k}"] = o
    np.savez(out_path, **results)
    rknn.release()
    print("ran", len(frames), "frames")
""")


@pytest.fixture(scope="module")
def runner_script(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("runner") / "run_rknn.py"
    path.write_text(RUNNER)
    return path


@pytest.mark.parametrize("key", list(SPECS))
def test_real_model_round_trip_matches_the_original(key, real_data, tmp_path, runner_script, python_subprocess,
                                                    ort_reference, request):
    spec = SPECS[key]
    torchscript_run = request.getfixturevalue("torchscript_run") if spec.loader == "pytorch" else None
    model_path = real_data(f"models/{spec.model}")

    rknn = RKNN()
    config = {"mean_values": [spec.mean], "std_values": [spec.std], "target_platform": "rk3588"}
    if spec.feed_order != spec.model_order:
        config["reorder_channel"] = "2 1 0"
    assert rknn.config(**config) == 0
    if spec.loader == "pytorch":
        assert rknn.load_pytorch(model=str(model_path), input_size_list=spec.input_size_list) == 0
    else:
        assert rknn.load_onnx(model=str(model_path)) == 0
    assert rknn.build(do_quantization=False) == 0
    out_file = tmp_path / f"{key}.rknn"
    assert rknn.export_rknn(str(out_file)) == 0
    rknn.release()

    meta = read_package(out_file).metadata
    h, w = spec.hw
    assert meta["inputs"][0]["shape"] == [1, h, w, 3] and meta["inputs"][0]["dtype"] == "uint8"

    pixels = _pixels(spec, real_data)
    assert pixels.shape == (5, h, w, 3)
    np.save(tmp_path / "frames.npy", pixels)
    proc = python_subprocess([runner_script, out_file, tmp_path / "frames.npy", tmp_path / "outs.npz"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = np.load(tmp_path / "outs.npz")

    expected = _reference(spec, model_path, _model_input(pixels, spec), torchscript_run, ort_reference)
    assert [o["name"] for o in meta["outputs"]] and len(meta["outputs"]) == len(expected[0])
    for i, outs in enumerate(expected):
        for k, ref in enumerate(outs):
            mine = got[f"{i}_{k}"]
            assert mine.shape == ref.shape, (key, i, k)
            np.testing.assert_allclose(mine, ref, atol=ATOL, rtol=0, err_msg=f"{key} image {i} output {k}")
    # the images differ, so the comparison is not between constants
    assert np.abs(expected[0][0] - expected[1][0]).max() > 1e-2
