"""Spelled-out normalisations (LayerNorm, RMSNorm) are one quantization step from x to z, as the NPU runs them."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from openrknn.graph.norms import find_norm_regions
from openrknn.quant.ir import GraphInfo, normalize
from openrknn.quant.plan import _dynamic_tensors, build_plan

T, C = 6, 16
n = helper.make_node


def _layer_norm(x: str, style: str) -> list:
    """LayerNorm of x over its last axis, then gamma and beta, as two exporters write it."""
    if style == "torch":  # ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt, Div
        return [n("ReduceMean", [x, "last"], ["mu"]), n("Sub", [x, "mu"], ["d"]), n("Pow", ["d", "two"], ["d2"]),
                n("ReduceMean", ["d2", "last"], ["var"]), n("Add", ["var", "eps"], ["ve"]), n("Sqrt", ["ve"], ["sd"]),
                n("Div", ["d", "sd"], ["nrm"]), n("Mul", ["nrm", "gamma"], ["g"]), n("Add", ["g", "beta"], ["z"])]
    # jax2tf: E[x^2] - E[x]^2 with ReduceSum, a floor at 0, Sqrt and Reciprocal
    return [n("ReduceSum", [x, "last"], ["s1"]), n("Mul", [x, x], ["sq"]), n("ReduceSum", ["sq", "last"], ["s2"]),
            n("Mul", ["s2", "inv_c"], ["ex2"]), n("Mul", ["s1", "inv_c"], ["mu"]), n("Mul", ["mu", "mu"], ["mu2"]),
            n("Sub", ["ex2", "mu2"], ["var"]), n("Max", ["zero", "var"], ["vpos"]), n("Add", ["vpos", "eps"], ["ve"]),
            n("Sqrt", ["ve"], ["sd"]), n("Reciprocal", ["sd"], ["rs"]), n("Mul", ["rs", "gamma"], ["rg"]),
            n("Sub", [x, "mu"], ["d"]), n("Mul", ["d", "rg"], ["g"]), n("Add", ["g", "beta"], ["z"])]


def model(style: str, visible: str = "") -> onnx.ModelProto:
    """x [1, T, C] -> MatMul (+ an offset: the rows have a large mean against their spread) -> LayerNorm ->
    MatMul -> y. ``visible``: an inner tensor of the LayerNorm also made a graph output."""
    rng = np.random.default_rng(0)
    consts = {"w1": rng.normal(0, 0.3, (C, C)), "off": np.full((C,), 30.0), "w2": rng.normal(0, 0.3, (C, 4)),
              "last": np.array([-1], np.int64), "two": np.float32(2), "eps": np.float32(1e-5),
              "inv_c": np.float32(1 / C), "zero": np.float32(0), "gamma": rng.uniform(0.5, 1.5, (C,)),
              "beta": rng.normal(0, 0.1, (C,))}
    inits = [numpy_helper.from_array(np.asarray(v) if np.asarray(v).dtype == np.int64 else
                                     np.asarray(v, np.float32), k) for k, v in consts.items()]
    nodes = [n("MatMul", ["x", "w1"], ["h"]), n("Add", ["h", "off"], ["a"])] + _layer_norm("a", style) + \
        [n("MatMul", ["z", "w2"], ["y"])]
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, T, 4])]
    if visible:
        outs.append(helper.make_tensor_value_info(visible, TensorProto.FLOAT, None))
    g = helper.make_graph(nodes, "ln", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, T, C])], outs,
                          inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def _regions(m: onnx.ModelProto):
    info = GraphInfo(normalize(m))
    return info, find_norm_regions(info.nodes, _dynamic_tensors(info), set(info.output_set), info.const)


@pytest.mark.parametrize("style", ["torch", "jax2tf"])
def test_a_spelled_out_layer_norm_is_one_region_and_one_quantization_step(style):
    info, regions = _regions(model(style))
    assert [(r.x, r.z) for r in regions] == [("a", "z")]
    assert {"mu", "var", "sd", "d", "g"} <= regions[0].inner
    plan = build_plan(info)
    assert "z" in plan.points and not regions[0].inner & set(plan.points)


def test_a_region_whose_inside_is_read_elsewhere_stops_before_it():
    info, regions = _regions(model("torch", visible="sd"))  # the spread is a graph output: not hidden
    assert not regions or all("sd" not in r.inner for r in regions)


@pytest.mark.parametrize("style", ["torch", "jax2tf"])
def test_a_layer_norm_of_rows_with_a_large_mean_survives_int8(style, tmp_path):
    """Rounded step by step, E[x^2] - E[x]^2 loses the spread of rows whose mean is large; left whole it does not."""
    from openrknn.api import RKNN

    m = model(style)
    onnx.save(m, tmp_path / "ln.onnx")
    rng = np.random.default_rng(1)
    for k in range(8):
        np.save(tmp_path / f"{k}.npy", rng.normal(0, 1, (1, T, C)).astype(np.float32))
    (tmp_path / "ds.txt").write_text("".join(f"{k}.npy\n" for k in range(8)))
    rk = RKNN(verbose=False)
    rk.config(target_platform="rk3588", quantized_dtype="w8a8")
    assert rk.load_onnx(str(tmp_path / "ln.onnx")) == 0
    assert rk.build(do_quantization=True, dataset=str(tmp_path / "ds.txt")) == 0, rk.last_error
    assert rk.init_runtime() == 0
    ref = ort.InferenceSession(str(tmp_path / "ln.onnx"), providers=["CPUExecutionProvider"])
    cos = []
    for k in range(16):
        x = rng.normal(0, 1, (1, T, C)).astype(np.float32)
        a, b = ref.run(None, {"x": x})[0].ravel(), np.asarray(rk.inference(inputs=[x])[0]).ravel()
        cos.append(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    assert np.mean(cos) > 0.995, cos  # step by step: jax2tf 0.953 (torch's centred form: 0.998 either way)


def _gelu_tanh(x: str) -> list:
    """GELU's tanh form as tf2onnx writes a Keras GELU: 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))."""
    return [n("Mul", ["half", x], ["gh"]), n("Pow", [x, "three"], ["g3"]), n("Mul", ["g3", "k1"], ["gk"]),
            n("Add", [x, "gk"], ["ga"]), n("Mul", ["ga", "k2"], ["gs"]), n("Tanh", ["gs"], ["gt"]),
            n("Add", ["one", "gt"], ["g1"]), n("Mul", ["gh", "g1"], ["act"])]


def test_a_layer_norm_before_a_spelled_out_gelu_is_still_one_step():
    """The largest closed region from x runs on through the GELU after it, whose own fused step claims its output;
    the LayerNorm must stop at the GELU's input rather than be dropped (LEADER's 24 norms were quantized step by
    step: its stem's cosine 0.94 in that one layer)."""
    m = model("torch")
    g = m.graph
    nodes = [nd for nd in g.node if nd.op_type != "MatMul" or nd.output[0] != "y"]
    nodes += _gelu_tanh("z") + [n("MatMul", ["act", "w2"], ["y"])]
    del g.node[:]
    g.node.extend(nodes)
    for k, v in {"half": 0.5, "three": 3.0, "k1": 0.044715, "k2": 0.7978845608, "one": 1.0}.items():
        g.initializer.append(numpy_helper.from_array(np.array(v, np.float32), k))
    info = GraphInfo(normalize(m))
    plan = build_plan(info)
    ln_inner = {"mu", "d", "d2", "var", "ve", "sd", "nrm", "g"}
    assert plan.fused.get("act") == "GeluTanh"
    assert "z" in plan.points and "act" in plan.points
    assert not ln_inner & set(plan.points), sorted(ln_inner & set(plan.points))
    assert not {"gh", "g3", "gt", "g1"} & set(plan.points)
