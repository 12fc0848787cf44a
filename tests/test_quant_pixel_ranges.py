"""An image input's first quantization point covers every pixel value 0..255, not only those calibration saw.

Calibrated on dim images (pixels 30..199), the old range clipped every brighter pixel of a real input and put the
raw pixels between levels; the point now takes the range the pre-processing gives pixels 0 and 255. Inputs whose
calibration samples are not 8-bit pixels (features, spectrograms) keep their calibrated range."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import built_rknn, write_samples
from openrknn.metrics import cosine

H = W = 16
MEAN = [123.675, 116.28, 103.53]
STD = [58.395, 57.12, 57.375]


def _conv_model(path, pads):
    """x [1, 3, H, W] -> Conv 3x3 (pads 0: mean/std fold into it; pads 1: they stay before it) -> Relu."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32)
    b = (rng.standard_normal(8) * 0.1).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[pads] * 4),
             helper.make_node("Relu", ["y"], ["z"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, H, W])],
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def _dim_images(n=4, lo=30, hi=200, seed=1):
    rng = np.random.default_rng(seed)
    return [rng.integers(lo, hi, (1, H, W, 3)).astype(np.uint8) for _ in range(n)]


def _input_point(rk):
    """(name, scale, zero point) of the first point, as the package records it (the tensor that leaves the
    pre-processing: its name starts with the input's)."""
    tensors = rk._package.metadata["quantization"]["tensors"]
    name = next(t for t, q in tensors.items() if q["kind"] == "activation" and t.startswith("openrknn_pre/x/"))
    return name, float(tensors[name]["scale"][0]), int(tensors[name]["zero_point"][0])


@pytest.mark.parametrize("target,dtype,zp", [("rk3588", "w8a8", -128), ("rk1808", "asymmetric_quantized-u8", 0)])
def test_raw_pixels_take_all_256_levels(tmp_path, target, dtype, zp):
    """mean/std folded into the first conv: the point is the raw pixel, [0, 255] on scale 1, each pixel a level."""
    ds = write_samples(tmp_path, _dim_images())
    rk = built_rknn(_conv_model(tmp_path / "m.onnx", 0), ds, target_platform=target, quantized_dtype=dtype,
                    mean_values=[MEAN], std_values=[STD])
    try:
        _, scale, got_zp = _input_point(rk)
        assert scale == pytest.approx(1.0, abs=1e-6)
        assert got_zp == zp
    finally:
        rk.release()


def test_normalized_point_spans_what_pixels_0_and_255_become(tmp_path):
    """A padded conv takes the std but not the mean (a padded border would read the mean as a value): the point is
    pixel - mean, over the widest channel extremes 0 - 123.675 and 255 - 103.53, not the dim images' narrower
    range."""
    ds = write_samples(tmp_path, _dim_images())
    rk = built_rknn(_conv_model(tmp_path / "m.onnx", 1), ds, target_platform="rk3588", quantized_dtype="w8a8",
                    mean_values=[MEAN], std_values=[STD])
    try:
        name, scale, zp = _input_point(rk)
        assert name.endswith("/model_input")
        lo, hi = 0 - max(MEAN), 255 - min(MEAN)
        assert scale == pytest.approx((hi - lo) / 255, rel=1e-3)
        assert (-128 - zp) * scale == pytest.approx(lo, abs=scale)
    finally:
        rk.release()


def test_a_bright_image_is_not_clipped_after_dim_calibration(tmp_path):
    """The point of it: calibrated on dim images, a full-range image still comes out close to the float model.
    Its pixels above 199 were cut to 199 before (cosine 0.987-0.991 on three such images; now 0.998-0.999: what
    remains is the conv output's range, which the dim images set)."""
    path = _conv_model(tmp_path / "m.onnx", 1)
    ds = write_samples(tmp_path, _dim_images())
    cfg = dict(target_platform="rk3588", mean_values=[MEAN], std_values=[STD])
    rk = built_rknn(path, ds, quantized_dtype="w8a8", **cfg)
    ref = built_rknn(path, None, **cfg)
    try:
        bright = np.random.default_rng(7).integers(0, 256, (1, H, W, 3)).astype(np.uint8)
        got, want = rk.inference(inputs=[bright])[0], ref.inference(inputs=[bright])[0]
        assert cosine(want, got) > 0.995
    finally:
        rk.release()
        ref.release()


def test_feature_inputs_keep_their_calibrated_range(tmp_path):
    """A 4-D float input calibrated on non-integer values (a feature map, not pixels) keeps its own range: the
    pixel range would spend the 256 levels on [0, 255] for values in [0.5, 3.5]."""
    rng = np.random.default_rng(2)
    samples = [(rng.random((1, H, W, 3)) * 3 + 0.5).astype(np.float32) for _ in range(4)]
    ds = write_samples(tmp_path, samples)
    rk = built_rknn(_conv_model(tmp_path / "m.onnx", 1), ds, target_platform="rk3588", quantized_dtype="w8a8")
    try:
        _, scale, _ = _input_point(rk)
        assert scale < 4.0 / 255
    finally:
        rk.release()


FLOAT16_127_5 = 1 / float(np.float16(1 / 127.5))  # 127.50194: 1 / 127.5 stored as float16


@pytest.mark.parametrize("mean,std,kind", [(0.0, 1.0, "exact"), (0.0, 255.0, "exact"), (127.0, 128.0, "exact"),
                                           (123.675, 58.395, "shifted"), (FLOAT16_127_5, FLOAT16_127_5, "shifted"),
                                           (FLOAT16_127_5, FLOAT16_127_5 * 1000, "shifted"),  # values near 1e-3
                                           (127.5, 127.5, "spread")])
def test_the_levels_are_an_affine_image_of_the_pixels(mean, std, kind):
    """The range on which the pixels' levels are as nearly an affine image of the pixels as can be: an integer mean
    puts every pixel on its own level (no error at all); a mean like ImageNet's, or MoveNet's x / 127.5 - 1 with
    its float16 constant (inside the model), on a grid as fine as the pixels' shifted by a fraction of a level:
    each pixel is the same fraction off, which is a brightness change, not noise. A mean of 127.5 with a std of
    127.5 puts every pixel of such a grid exactly on a tie, and round-half-even would merge them in pairs: the range
    widens until they spread (rms error 0.29 of a level, one pixel in 256 merged)."""
    from openrknn.quant.pixel_ranges import grid_range
    from openrknn.quant.schemes import get_scheme, qparams

    fmt = get_scheme("w8a8").act
    values = (np.arange(256) - mean) / std
    lo, hi = grid_range(values, values[0], values[-1], fmt)
    assert lo <= values[0] and hi >= values[-1]  # every pixel inside
    scale, zp = (float(v) for v in qparams(lo, hi, fmt))
    x = values / scale + zp
    levels = np.round(x)
    assert np.all((levels >= fmt.qmin) & (levels <= fmt.qmax))
    off = levels - x
    rms = float(np.sqrt(np.mean(off ** 2)))
    assert np.count_nonzero(np.abs(x - np.floor(x) - 0.5) < 1e-3) < 8  # (almost) no pixel on a tie
    if kind == "exact":
        assert rms < 1e-4 and len(np.unique(levels)) == 256
    elif kind == "shifted":  # one level per pixel, each the same fraction of a level off
        assert np.all(np.diff(levels) == 1)
        assert np.ptp(off) < 0.02 and rms > 0.1
    else:
        assert rms < 0.3 and len(np.unique(levels)) >= 254


def test_inputs_that_are_not_pixels_are_left_alone():
    """Only integer samples in 0..255 count as pixels: features, negative values and fractions do not."""
    from openrknn.quant.pixel_ranges import pixel_inputs

    pixels = {"a": np.array([[0.0, 17.0, 255.0]], np.float32)}
    assert pixel_inputs([pixels], ["a"])[0] == ["a"]
    assert pixel_inputs([{"a": np.array([0.5, 3.0], np.float32)}], ["a"])[0] == []
    assert pixel_inputs([{"a": np.array([-1.0, 3.0], np.float32)}], ["a"])[0] == []
    assert pixel_inputs([{"a": np.array([0.0, 256.0], np.float32)}], ["a"])[0] == []
    assert pixel_inputs([pixels, {"a": np.array([0.25], np.float32)}], ["a"])[0] == []  # any sample decides


def test_info_says_how_the_input_is_quantized(tmp_path):
    """`openrknn info` names the input's first quantized tensor and the values its levels span, so the user sees
    the pixels' range kept whole; a float build has none."""
    from openrknn.package_info import describe_package, package_summary

    path = _conv_model(tmp_path / "m.onnx", 0)
    rk = built_rknn(path, write_samples(tmp_path, _dim_images()), target_platform="rk3588", quantized_dtype="w8a8",
                    mean_values=[MEAN], std_values=[STD])
    flt = built_rknn(path, None, target_platform="rk3588", mean_values=[MEAN], std_values=[STD])
    try:
        point = package_summary(rk._package)["inputs"][0]["first_point"]
        assert point["tensor"] == _input_point(rk)[0]
        assert (point["dtype"], point["scale"], point["zero_point"]) == ("int8", 1.0, -128)
        assert point["range"] == [0.0, 255.0]
        assert f"first quantized at {point['tensor']}: int8, scale 1, zero point -128: levels span [0, 255]" in \
            describe_package(rk._package)
        assert package_summary(flt._package)["inputs"][0]["first_point"] is None
        assert "first quantized at" not in describe_package(flt._package)
    finally:
        rk.release()
        flt.release()


def test_the_report_says_it_too(tmp_path):
    """The HTML report's model section carries the same line as `openrknn info`."""
    from openrknn.analysis.report import model_section

    rk = built_rknn(_conv_model(tmp_path / "m.onnx", 0), write_samples(tmp_path, _dim_images()),
                    target_platform="rk3588", quantized_dtype="w8a8", mean_values=[MEAN], std_values=[STD])
    try:
        html = model_section(rk._package).html
        assert "first quantized at" in html and "scale 1, zero point -128, levels span [0, 255]" in html
    finally:
        rk.release()
