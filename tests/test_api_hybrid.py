"""The RKNN facade's hybrid quantization: step1 files, an edit taking effect in step2, and build(auto_hybrid=True)."""

from __future__ import annotations

import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper

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
    assert all(set(t) == {"units", "layers", "worst_cosine", "met"} for t in r.hybrid_report["trials"])


def _silu_onnx(path):
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array((rng.standard_normal(s) * .4).astype(np.float32), n)
             for n, s in (("w1", (4, 3, 3, 3)), ("w2", (2, 4, 1, 1)))]
    n = helper.make_node
    nodes = [n("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]), n("Sigmoid", ["c1"], ["g1"], name="sig"),
             n("Mul", ["c1", "g1"], ["a1"], name="silu"), n("Conv", ["a1", "w2"], ["y"], name="conv2")]
    g = helper.make_graph(nodes, "silu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 10])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 10])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


def test_step2_keeps_step1s_tflite_pre_activation_points(tmp_path, rknn_log):
    """Step1 made with pre_activation_points='tflite' lists the conv's own output; step2 quantizes with step1's
    setting whatever config() says now (its parameters were made with it), and records it."""
    ds = _dataset(tmp_path)
    r = RKNN()
    assert r.config(mean_values=[127.5] * 3, std_values=[64.0] * 3, target_platform="rk3588",
                    quantized_dtype="w8a8", pre_activation_points="tflite") == 0
    assert r.load_onnx(_silu_onnx(tmp_path / "silu.onnx")) == 0
    out = tmp_path / "hyb"
    out.mkdir()
    assert r.hybrid_quantization_step1(dataset=ds, output_dir=str(out)) == 0
    cfg_path = next(out.glob("*.quantization.cfg"))
    assert "c1" in yaml.safe_load(cfg_path.read_text())["quantize_parameters"]   # the conv's int8 output
    r2 = RKNN()
    assert r2.config(target_platform="rk3588", quantized_dtype="w8a8") == 0       # 'chip', the default
    assert r2.hybrid_quantization_step2(str(next(out.glob("*.model"))), str(next(out.glob("*.data"))),
                                        str(cfg_path)) == 0
    assert "uses step1's quantization settings" in rknn_log.text
    assert r2.export_rknn(str(tmp_path / "h.rknn")) == 0
    meta = read_package(tmp_path / "h.rknn").metadata["quantization"]
    assert meta["pre_activation_points"] == "tflite" and "c1" in meta["tensors"]
