"""Scaled dot-product attention is one quantization step on RKNPU2 (rknn-toolkit2's exSDPAttention): its scores and
probabilities are never integers; only q, k, v and its output are."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from openrknn.graph.attention import find_attention_regions
from openrknn.quant.ir import GraphInfo, normalize
from openrknn.quant.plan import ALL_PRE_ACTIVATIONS, _dynamic_tensors, build_plan

T, C = 192, 16
n = helper.make_node


def model(style: str, visible: str = "") -> onnx.ModelProto:
    """x [1, T, C] -> q, k, v projections -> attention over the T positions -> y.
    'torch': softmax(q k^T / sqrt(C) + bias) v (a constant bias table added to the scores, as position biases are);
    'ultralytics': v^T softmax((q^T k) * scale)^T, as YOLO11's C2PSA block writes it. ``visible``: an inner tensor
    also made a graph output (a model that returns its attention maps)."""
    rng = np.random.default_rng(0)
    # q and k small against v: scores of spread ~1, probabilities spread over the positions, as attention over an
    # image's cells mostly is
    consts = {"wq": rng.normal(0, 0.25, (C, C)), "wk": rng.normal(0, 0.25, (C, C)), "wv": rng.normal(0, 0.5, (C, C))}
    consts.update(scale=np.float32(1 / np.sqrt(C)), root=np.float32(np.sqrt(C)),
                  bias=rng.normal(0, 0.5, (T, T)))
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in consts.items()]
    inits.append(numpy_helper.from_array(np.array([1, T, T], np.int64), "shape"))
    nodes = [n("MatMul", ["x", "wq"], ["q"]), n("MatMul", ["x", "wk"], ["k"]), n("MatMul", ["x", "wv"], ["v"])]
    if style == "torch":
        nodes += [n("Transpose", ["k"], ["kt"], perm=[0, 2, 1]), n("MatMul", ["q", "kt"], ["scores"]),
                  n("Div", ["scores", "root"], ["scaled"]), n("Add", ["scaled", "bias"], ["biased"]),
                  n("Softmax", ["biased"], ["probs"], axis=-1), n("MatMul", ["probs", "v"], ["att"])]
    elif style == "opset11":  # a Softmax of opset 11 upgraded: over a Flatten of the scores, reshaped back
        nodes += [n("Transpose", ["k"], ["kt"], perm=[0, 2, 1]), n("MatMul", ["q", "kt"], ["scores"]),
                  n("Mul", ["scores", "scale"], ["scaled"]), n("Flatten", ["scaled"], ["flat"], axis=2),
                  n("Softmax", ["flat"], ["flat_probs"], axis=-1), n("Reshape", ["flat_probs", "shape"], ["probs"]),
                  n("MatMul", ["probs", "v"], ["att"])]
    else:
        # q, k, v channels first ([1, C, T], as the block's conv makes them)
        nodes += [n("Transpose", ["q"], ["qc"], perm=[0, 2, 1]), n("Transpose", ["k"], ["kc"], perm=[0, 2, 1]),
                  n("Transpose", ["v"], ["vc"], perm=[0, 2, 1]), n("Transpose", ["qc"], ["qt"], perm=[0, 2, 1]),
                  n("MatMul", ["qt", "kc"], ["scores"]),
                  n("Mul", ["scores", "scale"], ["scaled"]), n("Softmax", ["scaled"], ["probs"], axis=-1),
                  n("Transpose", ["probs"], ["probs_t"], perm=[0, 2, 1]), n("MatMul", ["vc", "probs_t"], ["att_t"]),
                  n("Transpose", ["att_t"], ["att"], perm=[0, 2, 1])]
    nodes.append(n("Identity", ["att"], ["y"]))
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, T, C])]
    if visible:
        outs.append(helper.make_tensor_value_info(visible, TensorProto.FLOAT, None))
    g = helper.make_graph(nodes, "attention", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, T, C])],
                          outs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _regions(m: onnx.ModelProto):
    info = GraphInfo(normalize(m))
    return info, find_attention_regions(info.nodes, _dynamic_tensors(info), set(info.output_set), info.const)


@pytest.mark.parametrize("style, inner", [("torch", {"scores", "scaled", "biased", "probs"}),
                                          ("ultralytics", {"scores", "scaled", "probs", "probs_t"}),
                                          ("opset11", {"scores", "scaled", "flat", "flat_probs", "probs"})])
def test_an_attention_is_one_region_and_one_quantization_step_on_rknpu2(style, inner):
    info, regions = _regions(model(style))
    assert len(regions) == 1 and regions[0].inner == inner
    plan = build_plan(info, requantized_pre_activations=True)
    assert not inner & set(plan.points), sorted(inner & set(plan.points))
    assert {"q", "k", "v"} <= set(plan.points)


@pytest.mark.parametrize("policy", [False, ALL_PRE_ACTIVATIONS])
def test_elsewhere_the_probabilities_stay_a_quantization_point(policy):
    """RKNPU1 (not measured: no fused attention assumed) and TFLite's int8 ops (SOFTMAX puts out int8) keep them."""
    info, _ = _regions(model("torch"))
    assert "probs" in build_plan(info, requantized_pre_activations=policy).points


def test_an_attention_whose_probabilities_are_read_elsewhere_is_not_fused():
    info, regions = _regions(model("torch", visible="probs"))  # the attention map is also an output
    assert regions == []
    assert "probs" in build_plan(info, requantized_pre_activations=True).points


@pytest.mark.parametrize("style", ["torch", "ultralytics"])
def test_attention_over_many_positions_keeps_its_probabilities(style, tmp_path, monkeypatch):
    """Over 192 positions most probabilities are a level or two of an int8 grid; in one fused step they are not
    rounded at all, and the output's error to the float model is well under half of the step-by-step one's (measured
    0.0006 against 0.0016)."""
    from conftest import built_rknn, write_samples

    m = model(style)
    onnx.save(m, tmp_path / "att.onnx")
    rng = np.random.default_rng(1)
    dataset = write_samples(tmp_path, [rng.normal(0, 1, (1, T, C)).astype(np.float32) for _ in range(8)])
    ref = ort.InferenceSession(str(tmp_path / "att.onnx"), providers=["CPUExecutionProvider"])
    xs = [rng.normal(0, 1, (1, T, C)).astype(np.float32) for _ in range(8)]

    def w8a8_cosine() -> float:
        rk = built_rknn(tmp_path / "att.onnx", dataset, target_platform="rk3588", quantized_dtype="w8a8")
        cos = []
        for x in xs:
            a, b = ref.run(None, {"x": x})[0].ravel(), np.asarray(rk.inference(inputs=[x])[0]).ravel()
            cos.append(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
        rk.release()
        return float(np.mean(cos))

    fused = w8a8_cosine()
    monkeypatch.setattr("openrknn.quant.plan.find_attention_regions", lambda *a, **k: [])
    step_by_step = w8a8_cosine()
    assert fused > 0.999 and 1 - fused < 0.5 * (1 - step_by_step), (fused, step_by_step)
