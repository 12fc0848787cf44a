"""DETR-family decoders (RT-DETR, D-FINE, DEIM): the inverse sigmoid of a sigmoid folds to a Clip of its input, a
float16 guard Clip(-65504, 65504) does not become the int8 range, and a model's non-image input (the original image
size) takes placeholder mean / std the way rknn-toolkit2 counts them."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import ort_run, write_samples
from openrknn.api import RKNN
from openrknn.graph import fold
from openrknn.graph.optimize import optimize

n = helper.make_node
Q, D = 64, 16  # queries, features
RNG = np.random.default_rng(3)


def _inverse_sigmoid(s: str, eps: float = 1e-5, one: str = "one", clamp01: bool = True) -> list:
    """torch: x = x.clamp(0, 1); log(x.clamp(min=eps) / (1 - x).clamp(min=eps)), as the exporters write it."""
    nodes = [n("Clip", [s, "zero", "one"], ["s01"])] if clamp01 else []
    x = "s01" if clamp01 else s
    return nodes + [n("Clip", [x, f"eps{eps}"], ["num"]), n("Sub", [one, x], ["rest"]),
                    n("Clip", ["rest", f"eps{eps}"], ["den"]), n("Div", ["num", "den"], ["ratio"]),
                    n("Log", ["ratio"], ["logit"])]


def decoder(eps: float = 1e-5, one: str = "one", clamp01: bool = True, guard: bool = True) -> onnx.ModelProto:
    """queries [1, Q, D] -> reference logits a (MatMul, spanning about [-9, 9]) -> sigmoid (also read by a second
    head, as a decoder's query position head reads it) -> inverse sigmoid -> + a small refinement -> 'refined'
    (the logits the next layer's sigmoid takes). A hidden state clamped to float16's range -> 'hidden'."""
    w = RNG.normal(0, 1.0, (D, 4)).astype(np.float32)
    inits = {"w_ref": w * (6.0 / np.abs(w).sum(0).max() * 2.0), "w_delta": RNG.normal(0, 0.1, (D, 4)),
             "w_pos": RNG.normal(0, 0.5, (4, D)), "w_h": RNG.normal(0, 0.5, (D, D)),
             "w_out": RNG.normal(0, 0.5, (D, 8)),
             "zero": 0.0, "one": 1.0, "two": 2.0, f"eps{eps}": eps, "lo": -65504.0, "hi": 65504.0}
    nodes = [n("MatMul", ["q", "w_ref"], ["a"]), n("Sigmoid", ["a"], ["s"]), *_inverse_sigmoid("s", eps, one, clamp01),
             n("MatMul", ["q", "w_delta"], ["delta"]), n("Add", ["logit", "delta"], ["refined"]),
             n("MatMul", ["s", "w_pos"], ["pos"]), n("MatMul", ["q", "w_h"], ["h0"]), n("Add", ["h0", "pos"], ["h1"]),
             n("Clip", ["h1", "lo", "hi"] if guard else ["h1"], ["h"]), n("MatMul", ["h", "w_out"], ["hidden"])]
    g = helper.make_graph(nodes, "decoder", [helper.make_tensor_value_info("q", TensorProto.FLOAT, [1, Q, D])],
                          [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in ("refined", "hidden")],
                          [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _queries(k: int) -> np.ndarray:
    return np.random.default_rng(10 + k).normal(0, 1, (1, Q, D)).astype(np.float32)


def _ops(m: onnx.ModelProto) -> list:
    return [node.op_type for node in m.graph.node]


@pytest.mark.parametrize("clamp01", [True, False])
def test_inverse_sigmoid_of_a_sigmoid_becomes_a_clip_of_its_input(clamp01):
    m = decoder(clamp01=clamp01)
    folded = optimize(m, 2)
    assert "Log" not in _ops(folded) and "Div" not in _ops(folded)
    assert _ops(folded).count("Sigmoid") == 1  # the second head still reads the sigmoid
    q = _queries(0)
    want, got = ort_run(m, {"q": q}), ort_run(folded, {"q": q})
    a = (q @ numpy_helper.to_array(next(i for i in m.graph.initializer if i.name == "w_ref")))
    assert np.abs(a).max() > 8  # the test spans the saturated ends, where float32's sigmoid is itself inexact
    for u, v in zip(want, got):
        np.testing.assert_allclose(v, u, atol=2e-3)


@pytest.mark.parametrize("change", ["eps", "one", "no_sigmoid"])
def test_other_logs_are_left_alone(change):
    if change == "no_sigmoid":
        m = decoder()
        for node in m.graph.node:
            if node.op_type == "Sigmoid":
                node.op_type = "Relu"  # log(max(r, e) / max(1 - r, e)) of a ReLU is no identity
    else:
        m = decoder(eps=0.1) if change == "eps" else decoder(one="two")
    assert fold.logit_of_sigmoid(m) == 0
    assert "Log" in _ops(m)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    d = tmp_path_factory.mktemp("detr")
    return write_samples(d, [_queries(k) for k in range(8)])


def _int8_cosines(model: onnx.ModelProto, dataset, tmp_path) -> list:
    path = tmp_path / "decoder.onnx"
    onnx.save(model, path)
    rk = RKNN(verbose=False)
    rk.config(target_platform="rk3588", quantized_dtype="w8a8")
    assert rk.load_onnx(str(path)) == 0, rk.last_error
    assert rk.build(do_quantization=True, dataset=str(dataset)) == 0, rk.last_error
    rk.init_runtime()
    cos = []
    for k in range(20, 24):
        q = _queries(k)
        for u, v in zip(ort_run(model, {"q": q}), rk.inference(inputs=[q])):
            u, v = u.ravel(), np.asarray(v, np.float32).ravel()
            cos.append(float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v) + 1e-12)))
    rk.release()
    return cos


def test_int8_decoder_keeps_its_logits_and_its_guarded_state(dataset, tmp_path, monkeypatch):
    cos = _int8_cosines(decoder(), dataset, tmp_path)
    assert min(cos) >= 0.998, cos
    # without the fold the logits come back through an int8 sigmoid: the ends of the range are lost
    monkeypatch.setattr(fold, "logit_of_sigmoid", lambda model: 0)
    refined = _int8_cosines(decoder(), dataset, tmp_path)[0::2]
    assert min(refined) < 0.95, refined


def test_guard_clip_at_float16s_range_is_not_the_int8_range(dataset, tmp_path):
    """Clip(-65504, 65504) taken as the tensor's minimum made one int8 step 513 wide: every value rounded to 0."""
    guarded = _int8_cosines(decoder(), dataset, tmp_path)[1::2]
    assert min(guarded) >= 0.999, guarded


def _with_size_input(tmp_path):
    """An image and its original size [1, 2] int64 (the DETR postprocessor's orig_target_sizes)."""
    nodes = [n("Cast", ["size"], ["sizef"], to=TensorProto.FLOAT),
             n("ReduceMean", ["img"], ["m"], axes=[2, 3], keepdims=0),
             n("Mul", ["m", "k"], ["mk"]), n("Concat", ["mk", "sizef"], ["out"], axis=1)]
    g = helper.make_graph(nodes, "sizes", [helper.make_tensor_value_info("img", TensorProto.FLOAT, [1, 3, 8, 8]),
                                           helper.make_tensor_value_info("size", TensorProto.INT64, [1, 2])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(np.ones((1, 1), np.float32), "k")])
    path = tmp_path / "sizes.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize("mean,std", [([0, 0], [1, 1]), ([0], [1])])
def test_a_size_input_takes_placeholder_mean_std_as_the_vendor_counts_them(tmp_path, mean, std):
    rk = RKNN(verbose=False)
    rk.config(mean_values=[[0, 0, 0], mean], std_values=[[255, 255, 255], std], target_platform="rk3588")
    assert rk.load_onnx(str(_with_size_input(tmp_path))) == 0
    assert rk.build(do_quantization=False) == 0, rk.last_error
    rk.init_runtime()
    img = np.full((1, 8, 8, 3), 51, np.uint8)
    out = np.asarray(rk.inference(inputs=[img, np.array([[640, 480]], np.int64)])[0])
    np.testing.assert_allclose(out.ravel(), [0.2, 0.2, 0.2, 640, 480], rtol=1e-5)
    rk.release()


def test_a_size_input_refuses_mean_std_that_would_be_dropped(tmp_path):
    rk = RKNN(verbose=False)
    rk.config(mean_values=[[0, 0, 0], [5, 5]], std_values=[[255, 255, 255], [1, 1]], target_platform="rk3588")
    assert rk.load_onnx(str(_with_size_input(tmp_path))) == 0
    assert rk.build(do_quantization=False) != 0
    assert "input 1 ('size', shape [1, 2]) is not a 4-D image input" in str(rk.last_error)
    assert "give [0]" in str(rk.last_error)
