"""The RKNN facade's hybrid quantization: step1 files, an edit taking effect in step2, and build(auto_hybrid=True)."""

from __future__ import annotations

import numpy as np
import yaml

from openrknn.api import RKNN
from openrknn.package import read_package


def _dataset(tmp_path, n=6, hw=(8, 10)):
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        np.save(tmp_path / f"s{i}.npy", rng.integers(0, 256, (*hw, 3)).astype(np.float32))
        lines.append(f"s{i}.npy")
    (tmp_path / "dataset.txt").write_text("\n".join(lines) + "\n")
    return str(tmp_path / "dataset.txt")


def test_step1_then_edited_step2_keeps_that_layer_out_of_int8(conv_onnx, tmp_path):
    ds = _dataset(tmp_path)
    r = RKNN()
    assert r.config(mean_values=[127.5] * 3, std_values=[64.0] * 3) == 0
    assert r.load_onnx(str(conv_onnx())) == 0
    out = tmp_path / "hyb"
    out.mkdir()
    assert r.hybrid_quantization_step1(dataset=ds, output_dir=str(out)) == 0
    cfg_path = next(out.glob("*.quantization.cfg"))
    model_path, data_path = next(out.glob("*.model")), next(out.glob("*.data"))
    doc = yaml.safe_load(cfg_path.read_text())
    assert "relu_out" in doc["quantize_parameters"]  # every quantized tensor is listed with its parameters
    doc["custom_quantize_layers"] = {"relu_out": "float16"}
    cfg_path.write_text(yaml.safe_dump(doc))
    r2 = RKNN()
    assert r2.hybrid_quantization_step2(str(model_path), str(data_path), str(cfg_path)) == 0
    assert r2.export_rknn(str(tmp_path / "h.rknn")) == 0
    meta = read_package(tmp_path / "h.rknn").metadata["quantization"]
    assert meta["overrides"] and set(meta["overrides"].values()) == {"float"}
    assert "relu_out" not in meta["tensors"]  # that tensor is no longer quantized, the others still are
    assert "w2" in meta["tensors"]
    bad = dict(doc, custom_quantize_layers={"no_such_layer": "float16"})
    cfg_path.write_text(yaml.safe_dump(bad))
    assert r2.hybrid_quantization_step2(str(model_path), str(data_path), str(cfg_path)) == -1
    assert "no_such_layer" in str(r2.last_error)


def test_auto_hybrid_build_and_refusal_without_quantization(conv_onnx, tmp_path):
    ds = _dataset(tmp_path)
    r = RKNN()
    assert r.config(mean_values=[127.5] * 3, std_values=[64.0] * 3, auto_hybrid_cos_thresh=0.999) == 0
    assert r.load_onnx(str(conv_onnx())) == 0
    assert r.build(do_quantization=False, auto_hybrid=True) == -1
    assert r.build(do_quantization=True, dataset=ds, auto_hybrid=True) == 0
    assert r.hybrid_report is not None and "layers" in r.hybrid_report
