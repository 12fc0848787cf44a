"""Log-mel front ends: the ranges on the way into a Log are cut together, in decades, where the outputs gain
(quant/algorithms/log_ranges.py). A small STFT -> power -> mel -> Log model, as openwakeword, whisper and
WeSpeaker export theirs, on signals whose loudness spans 60 dB."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import write_samples
from openrknn.api import RKNN
from openrknn.metrics import cosine

N, WIN, HOP, BINS, MELS = 4096, 256, 128, 33, 16


def log_mel_model() -> onnx.ModelProto:
    """audio [1, N] -> Conv with windowed cos / sin kernels (real, imag) -> x^2 + y^2 -> mel MatMul -> Clip(1e-10)
    -> Log -> [1, frames, MELS]."""
    t = np.arange(WIN)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * t / WIN)
    k = np.arange(BINS)[:, None]
    real = (np.cos(2 * np.pi * k * t / WIN) * window)[:, None, :].astype(np.float32)
    imag = (-np.sin(2 * np.pi * k * t / WIN) * window)[:, None, :].astype(np.float32)
    centers = np.linspace(0, BINS - 1, MELS + 2)
    mel = np.maximum(0, 1 - np.abs(np.arange(BINS)[:, None] - centers[None, 1:-1]) / (centers[1] - centers[0]))
    inits = [numpy_helper.from_array(real, "w_real"), numpy_helper.from_array(imag, "w_imag"),
             numpy_helper.from_array(mel.astype(np.float32), "mel"),
             numpy_helper.from_array(np.array([1], np.int64), "axis1"),
             numpy_helper.from_array(np.float32(2.0), "two"), numpy_helper.from_array(np.float32(1e-10), "floor")]
    n = helper.make_node
    nodes = [n("Unsqueeze", ["audio", "axis1"], ["a3"]),
             n("Conv", ["a3", "w_real"], ["re"], name="stft_real", strides=[HOP]),
             n("Conv", ["a3", "w_imag"], ["im"], name="stft_imag", strides=[HOP]),
             n("Pow", ["re", "two"], ["re2"], name="re_squared"),
             n("Pow", ["im", "two"], ["im2"], name="im_squared"),
             n("Add", ["re2", "im2"], ["power"], name="power"),
             n("Transpose", ["power"], ["power_t"], perm=[0, 2, 1]),
             n("MatMul", ["power_t", "mel"], ["energies"], name="mel_filter"),
             n("Clip", ["energies", "floor"], ["floored"], name="floor"),
             n("Log", ["floored"], ["log_mel"], name="log")]
    frames = (N - WIN) // HOP + 1
    g = helper.make_graph(nodes, "log_mel", [helper.make_tensor_value_info("audio", TensorProto.FLOAT, [1, N])],
                          [helper.make_tensor_value_info("log_mel", TensorProto.FLOAT, [1, frames, MELS])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def signal(rng: np.random.Generator) -> np.ndarray:
    """Tones in 8 segments whose levels span 60 dB, over a little noise: speech-like loudness."""
    t = np.arange(N) / 16000
    out = np.zeros(N)
    for seg in np.array_split(np.arange(N), 8):
        level = 10 ** rng.uniform(-3, 0)
        for f in rng.uniform(100, 7000, 3):
            out[seg] += level * np.sin(2 * np.pi * f * t[seg] + rng.uniform(0, 6))
    return (out + 1e-4 * rng.standard_normal(N)).astype(np.float32)[None] * 10000


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("logmel")
    onnx.save(log_mel_model(), d / "log_mel.onnx")
    rng = np.random.default_rng(3)
    write_samples(d, [signal(rng) for _ in range(8)])
    return d, [signal(rng) for _ in range(6)]


def _held_out_cosine(setup, dtype: str, target: str, **extra) -> float:
    """Mean held-out cosine to onnxruntime; also checks what the container and `openrknn info` say of the cut."""
    d, held_out = setup
    ref = ort.InferenceSession(str(d / "log_mel.onnx"), providers=["CPUExecutionProvider"])
    rk = RKNN(verbose=False)
    assert rk.config(target_platform=target, quantized_dtype=dtype, **extra) == 0
    assert rk.load_onnx(str(d / "log_mel.onnx")) == 0
    assert rk.build(do_quantization=True, dataset=str(d / "dataset.txt")) == 0, rk.last_error
    assert rk.init_runtime() == 0
    cos = [cosine(ref.run(None, {"audio": x})[0], rk.inference(inputs=[x])[0]) for x in held_out]
    decades = rk._package.metadata["quantization"]["ranges"].get("log_cut_decades")
    assert (decades is None) if extra.get("log_ranges") is False else decades > 0
    assert rk.export_rknn(str(d / "m.rknn")) == 0
    from openrknn.package import read_package
    from openrknn.package_info import describe_package

    text = describe_package(read_package(d / "m.rknn"))
    assert ("ranges into a Log / square root cut by" in text) == (decades is not None)
    rk.release()
    return float(np.mean(cos))


@pytest.mark.parametrize("dtype,target", [("w8a8", "rk3588"), ("asymmetric_quantized-u8", "rk1808")])
def test_the_ranges_into_a_log_are_cut_where_the_outputs_gain(setup, dtype, target):
    plain = _held_out_cosine(setup, dtype, target, log_ranges=False)
    cut = _held_out_cosine(setup, dtype, target)
    assert plain < 0.7           # min/max ranges: every quiet band rounds to zero before the Log (0.53)
    assert cut > 0.75            # 0.81


def test_degrees_follow_squares_and_leave_the_input_alone():
    from openrknn.quant.algorithms.log_ranges import log_groups
    from openrknn.quant.ir import GraphInfo, normalize
    from openrknn.quant.plan import build_plan

    info = GraphInfo(normalize(log_mel_model()))
    plan = build_plan(info)
    acts = {t: None for t in plan.points}
    groups = log_groups(info, plan, acts, set())
    by_tensor = {t: d for g, d in groups.items() for t in plan.groups[g]}
    assert by_tensor["floored"] == by_tensor["power"] == 1.0  # the Log's input and the power: the same scaling
    assert by_tensor["re"] == by_tensor["im"] == 0.5          # amplitudes: squared into the power
    assert not any(t in ("audio", "a3") for t in by_tensor)    # what the user feeds is never cut


def test_a_bad_log_ranges_value_is_refused(rknn_log, logged_errors):
    rk = RKNN()
    assert rk.config(target_platform="rk3588", log_ranges="yes") == -1
    assert "log_ranges" in logged_errors(rknn_log)[-1]


def magnitude_model() -> onnx.ModelProto:
    """audio [1, N] -> the same STFT -> sqrt(re^2 + im^2) -> a 1x1 conv over the bins + Relu -> [1, 8, frames]: an
    STFT magnitude front end as silero-vad exports its own (no Log anywhere)."""
    m = log_mel_model()
    g = m.graph
    keep = [nd for nd in g.node if nd.op_type in ("Unsqueeze", "Conv", "Pow", "Add")]
    w = np.random.default_rng(5).normal(0, 0.3, (8, BINS, 1)).astype(np.float32)
    n = helper.make_node
    nodes = keep + [n("Sqrt", ["power"], ["magnitude"], name="magnitude"),
                    n("Conv", ["magnitude", "enc_w"], ["enc"], name="encoder"), n("Relu", ["enc"], ["features"])]
    frames = (N - WIN) // HOP + 1
    inits = [t for t in g.initializer if t.name not in ("mel", "floor")] + [numpy_helper.from_array(w, "enc_w")]
    graph = helper.make_graph(nodes, "magnitude", list(g.input),
                              [helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, 8, frames])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_the_ranges_into_a_magnitudes_square_root_are_cut_too(tmp_path):
    onnx.save(magnitude_model(), tmp_path / "mag.onnx")
    rng = np.random.default_rng(3)
    write_samples(tmp_path, [signal(rng) for _ in range(8)])
    held_out = [signal(rng) for _ in range(6)]
    ref = ort.InferenceSession(str(tmp_path / "mag.onnx"), providers=["CPUExecutionProvider"])
    result = {}
    for cut in (False, True):
        rk = RKNN(verbose=False)
        assert rk.config(target_platform="rk3588", log_ranges=cut) == 0
        assert rk.load_onnx(str(tmp_path / "mag.onnx")) == 0
        assert rk.build(do_quantization=True, dataset=str(tmp_path / "dataset.txt")) == 0, rk.last_error
        assert rk.init_runtime() == 0
        decades = rk._package.metadata["quantization"]["ranges"].get("log_cut_decades")
        cos = [cosine(ref.run(None, {"audio": x})[0], rk.inference(inputs=[x])[0]) for x in held_out]
        result[cut] = (decades, float(np.mean(cos)))
        rk.release()
    assert result[False][0] is None and result[True][0] > 0
    assert result[True][1] > result[False][1] + 0.01, result


def test_a_normalisations_square_root_starts_no_cut():
    from openrknn.quant.algorithms.log_ranges import log_groups
    from openrknn.quant.ir import GraphInfo, normalize
    from openrknn.quant.plan import build_plan

    n = helper.make_node
    inits = [numpy_helper.from_array(np.float32(2.0), "two"), numpy_helper.from_array(np.float32(1e-5), "eps")]
    nodes = [n("ReduceMean", ["x"], ["mean"], axes=[-1]), n("Sub", ["x", "mean"], ["d"]),
             n("Pow", ["d", "two"], ["d2"]), n("ReduceMean", ["d2"], ["var"], axes=[-1]),
             n("Add", ["var", "eps"], ["ve"]), n("Sqrt", ["ve"], ["std"]), n("Div", ["d", "std"], ["y"])]
    g = helper.make_graph(nodes, "ln", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16])], inits)
    info = GraphInfo(normalize(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])))
    plan = build_plan(info)
    assert log_groups(info, plan, {t: None for t in plan.points}, set()) == {}
