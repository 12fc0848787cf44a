"""Real models end to end on the bench's split (bench/quant_accuracy.py, pointed at the committed test data):
MobileNetV2 (ImageNet) keeps its top-1 when quantized, YOLOX-nano's output cosine rises with range split's remap."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bench(real_data):
    pytest.importorskip("torch")
    sys.path.insert(0, str(ROOT / "bench"))
    import quant_accuracy  # the bench's float-model helper (the stand-in for build())

    for model in ("mobilenet_v2_imagenet.pt", "yolox_nano_coco.onnx"):
        real_data(f"models/{model}")
    shared, quant_accuracy.DATA = quant_accuracy.DATA, real_data.root  # the bench reads ../shared/data by default
    yield quant_accuracy
    quant_accuracy.DATA = shared


def test_mobilenet_w8a8_top1_agreement(bench, tmp_path):
    import torch

    torch.set_num_threads(1)
    from openrknn.quant import QuantOptions, quantize
    from openrknn.quant.dataset import read_dataset

    model, inputs = bench.float_model("mobilenet")
    calib, evals = bench.split("mobilenet")
    ds, rgb2bgr = bench.write_dataset("mobilenet", calib[:8], tmp_path)
    data = read_dataset(ds, inputs, rgb2bgr=rgb2bgr)
    res = quantize(model, data, QuantOptions(dtype="w8a8", threads=1), progress=False)
    f_sess, q_sess = bench.session(model, 1), bench.session(res.model, 1)
    agree, cos = 0, []
    for p in evals[:6]:
        x, _ = bench.model_input("mobilenet", p)
        a = f_sess.run(None, {inputs[0].name: x})[0].ravel()
        b = q_sess.run(None, {inputs[0].name: x})[0].ravel()
        agree += int(a.argmax() == b.argmax())
        cos.append(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    assert agree >= 5, f"top-1 agreement {agree}/6"
    assert np.mean(cos) > 0.98


def test_mobilenet_u8_default_meets_the_per_tensor_targets(bench, tmp_path):
    """The RKNPU1 default (asymmetric_quantized-u8, per-tensor, normal, GPTQ rounding) on the bench's split: 20
    calibration images, 20 held-out: top-1 agreement >= 19/20 and output cosine >= 0.99 (issue 8's targets;
    round-to-nearest gets 18/20 and 0.989 here)."""
    import torch

    torch.set_num_threads(1)
    from openrknn.quant import QuantOptions, quantize
    from openrknn.quant.dataset import read_dataset

    model, inputs = bench.float_model("mobilenet")
    calib, evals = bench.split("mobilenet")
    ds, rgb2bgr = bench.write_dataset("mobilenet", calib, tmp_path)
    data = read_dataset(ds, inputs, rgb2bgr=rgb2bgr)
    res = quantize(model, data, QuantOptions(dtype="asymmetric_quantized-u8", target="rk1808", threads=1),
                   progress=False)
    assert res.report["weight_rounding"]["method"] == "gptq"
    f_sess, q_sess = bench.session(model, 1), bench.session(res.model, 1)
    agree, cos = 0, []
    for p in evals:
        x, _ = bench.model_input("mobilenet", p)
        a = f_sess.run(None, {inputs[0].name: x})[0].ravel()
        b = q_sess.run(None, {inputs[0].name: x})[0].ravel()
        agree += int(a.argmax() == b.argmax())
        cos.append(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    cos = float(np.mean(cos))  # as the bench reports it
    assert agree >= 19, f"top-1 agreement {agree}/20"
    assert cos >= 0.99, f"output cosine {cos:.4f}"


def test_mobilenet_dfp_i8_pow2_fit_raises_the_cosine(bench, tmp_path):
    """dynamic_fixed_point-i8 on the bench split: fitting ranges to their power-of-two grids (the default) lifts
    the output cosine over the plain build (measured 0.967 -> 0.972), keeping top-1 on 17 of the 20 held-out images
    (the committed MobileNetV2 weights are the originals rounded to float16 with 7 mantissa bits: with the float32
    originals the fit build keeps 19, the plain one 17 either way)."""
    import torch

    torch.set_num_threads(1)
    from openrknn.quant import QuantOptions, quantize
    from openrknn.quant.dataset import read_dataset

    model, inputs = bench.float_model("mobilenet")
    calib, evals = bench.split("mobilenet")
    ds, rgb2bgr = bench.write_dataset("mobilenet", calib, tmp_path)
    data = read_dataset(ds, inputs, rgb2bgr=rgb2bgr)
    f_sess = bench.session(model, 1)
    feeds = [{inputs[0].name: bench.model_input("mobilenet", p)[0]} for p in evals]
    ref = [f_sess.run(None, f)[0].ravel() for f in feeds]
    cos = {}
    for fit in (False, True):
        res = quantize(model, data, QuantOptions(dtype="dynamic_fixed_point-i8", target="rk1808", threads=1,
                                                 pow2_fit=fit), progress=False)
        q_sess = bench.session(res.model, 1)
        out = [q_sess.run(None, f)[0].ravel() for f in feeds]
        cos[fit] = float(np.mean([a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) for a, b in zip(ref, out)]))
        if fit:
            assert res.report["pow2_fit"]["tensors"] >= 20
            assert sum(int(a.argmax() == b.argmax()) for a, b in zip(ref, out)) >= 17
    assert cos[True] > cos[False] + 0.002, cos


def test_yolox_w8a8_part_remap_raises_the_cosine(bench, tmp_path):
    """The RKNPU2 default (w8a8) on YOLOX-nano: range split's part remap stretches the narrow channel groups of the
    first depthwise output (input.15) onto the widest one's range; the output cosine on held-out images rises
    (measured on the bench's whole split: 0.966 -> 0.978)."""
    from openrknn.quant import QuantOptions, quantize
    from openrknn.quant.dataset import read_dataset

    model, inputs = bench.float_model("yolox")
    calib, evals = bench.split("yolox")
    ds, rgb2bgr = bench.write_dataset("yolox", calib, tmp_path)
    data = read_dataset(ds, inputs, rgb2bgr=rgb2bgr)
    f_sess = bench.session(model, 1)
    feeds = [{inputs[0].name: bench.model_input("yolox", p)[0]} for p in evals[:8]]
    ref = [f_sess.run(None, f)[0].ravel() for f in feeds]
    cos = {}
    for remap in (False, True):
        res = quantize(model, data, QuantOptions(dtype="w8a8", target="rk3588", threads=1, range_remap=remap),
                       progress=False)
        remapped = [t for e in res.report["range_split"]["tensors"] for t in e.get("remapped", [])]
        assert ("input.15" in remapped) == remap
        q_sess = bench.session(res.model, 1)
        outs = [q_sess.run(None, f)[0].ravel() for f in feeds]
        cos[remap] = float(np.mean([a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) for a, b in zip(ref, outs)]))
    assert cos[True] > cos[False] + 0.005, cos
