"""A conditioning branch runs on the host in float (quant/plan.py host_conditioning).

The model is a diffusion denoiser in small: beside the noisy image it takes the noise level sigma, one number, and
embeds it as the Sin and Cos of log(sigma) times frequencies up to 250 (the sinusoidal embedding of EDM and
consistency models), an MLP on that, added to the first conv's features; the image is scaled by 1 / sqrt(sigma^2 +
0.25) on the way in. Quantizing the Sin's input to int8 puts several radians in one step."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import write_samples
from openrknn.analysis.perf import estimate_perf
from openrknn.api import RKNN
from openrknn.metrics import cosine
from openrknn.quant import plan as plan_module
from openrknn.quant.ir import GraphInfo, normalize
from openrknn.quant.plan import build_plan

C, F, S = 8, 16, 16  # feature channels, embedding frequencies, image side


def denoiser(sigma_shape=(1,)) -> onnx.ModelProto:
    rng = np.random.default_rng(0)

    def const(name, a):
        return numpy_helper.from_array(np.asarray(a, np.float32), name)

    inits = [const("k", 250.0), const("freqs", (0.5 ** np.arange(F))[None]), const("half", 0.25),
             const("W", rng.standard_normal((2 * F, C)) * 0.3), const("b", rng.standard_normal(C) * 0.1),
             const("w1", rng.standard_normal((C, 1, 3, 3)) * 0.4), const("w2", rng.standard_normal((1, C, 3, 3)) * 0.2),
             numpy_helper.from_array(np.array([1, C, 1, 1], np.int64), "emb_shape"),
             numpy_helper.from_array(np.array([1, 1, 1, 1], np.int64), "one_shape"),
             numpy_helper.from_array(np.array([1], np.int64), "axis1")]
    n = helper.make_node
    nodes = [
        # the noise-level embedding: Sin and Cos of log(sigma) * 250 * frequencies, an MLP, one value per channel
        n("Log", ["sigma"], ["log_sigma"]), n("Mul", ["log_sigma", "k"], ["c_noise"]),
        n("Unsqueeze", ["c_noise", "axis1"], ["c_noise_col"]), n("Mul", ["c_noise_col", "freqs"], ["phase"]),
        n("Sin", ["phase"], ["sin"]), n("Cos", ["phase"], ["cos"]), n("Concat", ["sin", "cos"], ["fourier"], axis=1),
        n("Gemm", ["fourier", "W", "b"], ["emb_lin"], name="emb_mlp"), n("Sigmoid", ["emb_lin"], ["emb_gate"]),
        n("Mul", ["emb_lin", "emb_gate"], ["emb_act"]), n("Reshape", ["emb_act", "emb_shape"], ["emb"]),
        # the input scaling c_in = 1 / sqrt(sigma^2 + 0.25)
        n("Mul", ["sigma", "sigma"], ["sigma2"]), n("Add", ["sigma2", "half"], ["var"]), n("Sqrt", ["var"], ["std"]),
        n("Reciprocal", ["std"], ["c_in"]), n("Reshape", ["c_in", "one_shape"], ["c_in4"]),
        n("Mul", ["noisy", "c_in4"], ["scaled"]),
        n("Conv", ["scaled", "w1"], ["feat"], pads=[1, 1, 1, 1], name="conv1"), n("Add", ["feat", "emb"], ["cond"]),
        n("Relu", ["cond"], ["act"]), n("Conv", ["act", "w2"], ["out"], pads=[1, 1, 1, 1], name="conv2")]
    g = helper.make_graph(nodes, "denoiser", [helper.make_tensor_value_info("noisy", TensorProto.FLOAT, [1, 1, S, S]),
                                              helper.make_tensor_value_info("sigma", TensorProto.FLOAT,
                                                                            list(sigma_shape))],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 1, S, S])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _samples(rng, n):
    """(noisy image, sigma) pairs as a sampler makes them: sigma log-uniform over EDM's 0.002..80, the image that
    much noise."""
    out = []
    for _ in range(n):
        sigma = np.float32(np.exp(rng.uniform(np.log(0.002), np.log(80.0))))
        out.append(((rng.standard_normal((1, 1, S, S)) * sigma).astype(np.float32), np.array([sigma], np.float32)))
    return out


def test_plan_keeps_the_branch_float_and_quantizes_what_it_hands_over():
    info = GraphInfo(normalize(denoiser()))
    plan = build_plan(info)
    points = set(plan.points)
    for t in ("phase", "sin", "cos", "fourier", "emb_lin", "log_sigma", "c_in", "sigma"):
        assert t not in points, t
    assert {"emb", "c_in4", "feat", "scaled"} <= points  # what the NPU reads, and its own tensors
    assert "emb_mlp" not in {info.nodes[w.node].name for w in plan.weighted}  # the host's Gemm keeps float weights
    assert "conv1" in {info.nodes[w.node].name for w in plan.weighted}


def test_no_branch_without_a_large_input():
    """Every input a few numbers (a tabular MLP, or this model fed a 1x1 image): nothing is moved to the host."""
    m = denoiser()
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 1
    m.graph.input[0].type.tensor_type.shape.dim[3].dim_value = 1
    m.graph.output[0].type.tensor_type.shape.dim[2].dim_value = 1
    m.graph.output[0].type.tensor_type.shape.dim[3].dim_value = 1
    info = GraphInfo(normalize(m))
    assert plan_module.host_conditioning(info) == set()
    assert "phase" in build_plan(info).points


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("conditioning")
    path = d / "denoiser.onnx"
    onnx.save(denoiser(), path)
    rng = np.random.default_rng(1)
    dataset = write_samples(d, _samples(rng, 16), prefixes=("noisy_", "sigma_"))
    return path, dataset, _samples(rng, 12)


def _held_out_cosine(path, dataset, held_out) -> tuple:
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rk = RKNN(verbose=False)
    assert rk.config(target_platform="rk3588", quantized_dtype="w8a8") == 0
    assert rk.load_onnx(str(path)) == 0, rk.last_error
    assert rk.build(do_quantization=True, dataset=str(dataset)) == 0, rk.last_error
    assert rk.init_runtime() == 0
    cos = [cosine(ref.run(None, {"noisy": x, "sigma": s})[0],
                  rk.inference(inputs=[x, s], data_format=["nchw", "nhwc"])[0]) for x, s in held_out]
    return float(np.mean(cos)), rk


def test_int8_build_keeps_the_noise_level_embedding(built, monkeypatch):
    path, dataset, held_out = built
    cos, rk = _held_out_cosine(path, dataset, held_out)
    est = estimate_perf(onnx.load_from_string(rk._package.model_bytes), "rk3588", "w8a8")
    rk.release()
    monkeypatch.setattr(plan_module, "host_conditioning", lambda info, dyn=None: set())
    cos_npu, rk = _held_out_cosine(path, dataset, held_out)  # the branch quantized like the rest
    rk.release()
    assert cos > 0.99 and cos_npu < 0.9, (cos, cos_npu)
    # the estimate puts the branch on the board's CPU (before the NPU runs), the convs on the NPU
    units = {r.op_type: r.unit for r in est.rows if r.op_type in ("Sin", "Cos", "Gemm", "Log", "Conv")}
    assert units == {"Sin": "CPU", "Cos": "CPU", "Gemm": "CPU", "Log": "CPU", "Conv": "NPU"}, units


def test_branch_exports_to_tflite_as_float_ops_and_matches_the_simulator(built, tmp_path):
    """The export writes the branch as float TFLite ops (its Gemm with its float weights), QUANTIZE where it hands
    over, and LiteRT computes what the simulator does."""
    from openrknn.runtime.tflite_runner import TfliteRunner

    path, dataset, held_out = built
    _, rk = _held_out_cosine(path, dataset, held_out[:1])
    out = tmp_path / "denoiser.tflite"
    assert rk.export_tflite(str(out), input_dtype="float32") == 0, rk.last_error
    runner = TfliteRunner(str(out), delegate=None)
    for x, s in held_out:
        ours = rk.inference(inputs=[x, s], data_format=["nchw", "nhwc"])[0]
        theirs = runner.run([x.transpose(0, 2, 3, 1), s])[0]
        assert cosine(ours, theirs.reshape(ours.shape)) > 0.9999
    rk.release()


def test_vendor_export_reads_float_samples_as_floats_and_names_the_branch(built):
    """The vendor bridge's samples: a noise level of 0.3 rounded to a byte became 0 (its log -inf, and calibrating
    the vendor's tensors crashed on the NaN); rknn-toolkit2 quantizes the host's branch, which the export says."""
    from openrknn.vendor.export import _host_branch, read_samples

    path, dataset, held_out = built
    _, rk = _held_out_cosine(path, dataset, held_out[:1])
    samples = read_samples([dataset], rk._package.metadata)
    first = [np.load(dataset.parent / f) for f in dataset.read_text().split("\n")[0].split()]
    assert [a.dtype for a in samples[0][1]] == [np.float32, np.float32]
    np.testing.assert_array_equal(samples[0][1][0], first[0].transpose(0, 2, 3, 1))  # NHWC, as fed
    np.testing.assert_array_equal(samples[0][1][1], first[1])
    note = _host_branch(rk._package)
    assert "run quantized in the vendor file" in note and "Log" in note, note
    rk.release()


def test_check_places_the_branch_on_the_host_before_and_after_the_build(built, tmp_path, capsys):
    """`openrknn check` on the .onnx and on the built .rknn: the branch's Log, Sin and Cos are no NPU -> CPU -> NPU
    round trip (one note says where they run), as the build places them."""
    import json

    from openrknn.cli import main

    path, dataset, held_out = built
    _, rk = _held_out_cosine(path, dataset, held_out[:1])
    built_file = tmp_path / "denoiser.rknn"
    assert rk.export_rknn(str(built_file)) == 0
    rk.release()
    for model in (path, built_file):
        capsys.readouterr()
        assert main(["check", str(model), "--target", "rk3588", "--json"]) == 0
        findings = json.loads(capsys.readouterr().out)
        support = [f for f in findings if f["rule"] == "op-support"]
        assert [f["severity"] for f in support] == ["info"], support
        assert "Sin" in support[0]["why"] and "before the NPU" in support[0]["why"]


def test_info_names_the_branch_the_host_computes(built, tmp_path):
    """`openrknn info` on the built file says which inputs' branch runs on the host, and how many layers it has."""
    from openrknn.package import read_package
    from openrknn.package_info import describe_package

    path, dataset, held_out = built
    _, rk = _held_out_cosine(path, dataset, held_out[:1])
    out = tmp_path / "denoiser.rknn"
    assert rk.export_rknn(str(out)) == 0
    rk.release()
    text = describe_package(read_package(out), str(out))
    assert "computed from sigma on the host CPU in float before the NPU" in text, text


def timestep_denoiser() -> onnx.ModelProto:
    """A DDPM-style denoiser in small: an int64 timestep (0..999) cast to float, its Sin and Cos at 16 frequencies
    (an int8 step of t x 1 is 8 radians), a Gemm, added onto the first conv's features."""
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array((0.5 ** np.arange(F))[None].astype(np.float32), "freqs"),
             numpy_helper.from_array((rng.standard_normal((2 * F, C)) * 0.3).astype(np.float32), "W"),
             numpy_helper.from_array((rng.standard_normal((C, 1, 3, 3)) * 0.4).astype(np.float32), "w1"),
             numpy_helper.from_array((rng.standard_normal((1, C, 3, 3)) * 0.2).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array([1, C, 1, 1], np.int64), "emb_shape"),
             numpy_helper.from_array(np.array([1], np.int64), "axis1")]
    n = helper.make_node
    nodes = [n("Unsqueeze", ["t", "axis1"], ["t_col"]), n("Cast", ["t_col"], ["t_f"], to=TensorProto.FLOAT),
             n("Mul", ["t_f", "freqs"], ["phase"]), n("Sin", ["phase"], ["sin"]), n("Cos", ["phase"], ["cos"]),
             n("Concat", ["sin", "cos"], ["fourier"], axis=1), n("Gemm", ["fourier", "W"], ["emb_lin"]),
             n("Reshape", ["emb_lin", "emb_shape"], ["emb"]),
             n("Conv", ["noisy", "w1"], ["feat"], pads=[1, 1, 1, 1]), n("Add", ["feat", "emb"], ["cond"]),
             n("Relu", ["cond"], ["act"]), n("Conv", ["act", "w2"], ["out"], pads=[1, 1, 1, 1])]
    g = helper.make_graph(nodes, "timestep", [helper.make_tensor_value_info("noisy", TensorProto.FLOAT, [1, 1, S, S]),
                                              helper.make_tensor_value_info("t", TensorProto.INT64, [1])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 1, S, S])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_an_integer_timestep_branch_is_the_hosts_too(tmp_path, monkeypatch):
    path = tmp_path / "timestep.onnx"
    onnx.save(timestep_denoiser(), path)
    info = GraphInfo(normalize(timestep_denoiser()))
    assert {"t_f", "phase", "sin", "cos"} <= plan_module.host_conditioning(info)
    rng = np.random.default_rng(3)

    def samples(n):
        return [(rng.standard_normal((1, 1, S, S)).astype(np.float32), rng.integers(0, 1000, (1,)).astype(np.int64))
                for _ in range(n)]

    dataset = write_samples(tmp_path, samples(16), prefixes=("noisy_", "t_"))
    held_out = samples(10)
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    cos = {}
    for host in (True, False):
        if not host:
            monkeypatch.setattr(plan_module, "host_conditioning", lambda info, dyn=None: set())
        rk = RKNN(verbose=False)
        assert rk.config(target_platform="rk3588", quantized_dtype="w8a8") == 0
        assert rk.load_onnx(str(path)) == 0, rk.last_error
        assert rk.build(do_quantization=True, dataset=str(dataset)) == 0, rk.last_error
        assert rk.init_runtime() == 0
        cos[host] = float(np.mean([cosine(ref.run(None, {"noisy": x, "t": t})[0],
                                          rk.inference(inputs=[x, t], data_format=["nchw", "nhwc"])[0])
                                   for x, t in held_out]))
        if host:
            est = estimate_perf(onnx.load_from_string(rk._package.model_bytes), "rk3588", "w8a8")
            assert {r.op_type: r.unit for r in est.rows if r.op_type in ("Sin", "Gemm")} == {"Sin": "CPU",
                                                                                           "Gemm": "CPU"}
        rk.release()
    assert cos[True] > 0.99 and cos[False] < 0.9, cos
