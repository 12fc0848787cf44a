"""UNIDIRECTIONAL_SEQUENCE_LSTM in load_tflite (TensorFlow Lite Micro's MNIST LSTM reads an image as 28 steps of 28
pixels so): one ONNX LSTM over the whole sequence, the file's gate order i, f, c, o put in ONNX's i, o, f, c, the
peepholes in ONNX's i, o, f. Each file is written here, with its states as variable tensors, and compared with LiteRT
on the same file; variants ONNX's LSTM cannot express are refused by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import built_rknn, write_samples
from openrknn.errors import ModelLoadError
from openrknn.frontends.tflite import load_tflite
from openrknn.metrics import cosine

T, I, H, K = 6, 5, 4, 3  # steps, features, hidden units, classes


def _write(path: Path, peephole: bool = False, cifg: bool = False, act: int = 4) -> Path:
    """x [1, T, I] -> LSTM (hidden H, the whole sequence) -> the last step -> FULLY_CONNECTED -> SOFTMAX [1, K]."""
    from openrknn.export.tflite.writer import Model, serialize

    rng = np.random.default_rng(4)
    m = Model()

    def const(name, shape, scale=0.6):
        return m.add_const(name, (rng.standard_normal(shape) * scale).astype(np.float32))

    x = m.add_tensor("x", [1, T, I], np.float32)
    m.inputs = [x.index]
    gates = "ifco"
    ins = [x] + [None if cifg and g == "i" else const(f"in_{g}", (H, I)) for g in gates]
    ins += [None if cifg and g == "i" else const(f"rec_{g}", (H, H)) for g in gates]
    ins += [const(f"peep_{g}", (H,)) if peephole and not (cifg and g == "i") else None for g in "ifo"]
    ins += [None if cifg and g == "i" else const(f"bias_{g}", (H,), 0.3) for g in gates]
    ins += [None, None]  # no projection
    states = [m.add_tensor("h_state", [1, H], np.float32), m.add_tensor("c_state", [1, H], np.float32)]
    for s in states:
        s.variable = True
    ins += states + [None] * 4  # no layer norms
    seq = m.add_tensor("seq", [1, T, H], np.float32)
    m.add_op("UNIDIRECTIONAL_SEQUENCE_LSTM", ins, [seq], ("UnidirectionalSequenceLSTMOptions", {
        "FusedActivationFunction": act, "CellClip": 0.0, "ProjClip": 0.0, "TimeMajor": False}))
    last = m.add_tensor("last", [1, 1, H], np.float32)
    m.add_op("STRIDED_SLICE", [seq, m.add_const("b", np.array([0, T - 1, 0], np.int32)),
                               m.add_const("e", np.array([1, T, H], np.int32)),
                               m.add_const("s", np.array([1, 1, 1], np.int32))], [last],
             ("StridedSliceOptions", {"BeginMask": 0, "EndMask": 0}))
    logits = m.add_tensor("logits", [1, K], np.float32)
    m.add_op("FULLY_CONNECTED", [last, const("fc", (K, H)), const("fc_b", (K,), 0.1)], [logits],
             ("FullyConnectedOptions", {"FusedActivationFunction": 0}))
    p = m.add_tensor("p", [1, K], np.float32)
    m.add_op("SOFTMAX", [logits], [p], ("SoftmaxOptions", {"Beta": 1.0}))
    m.outputs = [p.index]
    path.write_bytes(serialize(m))
    return path


def _sequences(n: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1, 1, (1, T, I)).astype(np.float32) for _ in range(n)]


def _litert(path: Path, xs: list) -> list:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    out = []
    for x in xs:
        it.reset_all_variables()  # LiteRT carries the states between invokes; each sequence starts from zeros
        it.set_tensor(it.get_input_details()[0]["index"], x)
        it.invoke()
        out.append(it.get_tensor(it.get_output_details()[0]["index"]).copy())
    return out


@pytest.mark.parametrize("peephole,act", [(False, 4), (True, 4), (False, 1)])
def test_load_tflite_computes_what_litert_computes(tmp_path, peephole, act):
    path = _write(tmp_path / "lstm.tflite", peephole=peephole, act=act)
    loaded = load_tflite(path)
    assert [n.op_type for n in loaded.model.graph.node].count("LSTM") == 1
    assert any("starts every inference" in note for note in loaded.notes)
    xs = _sequences(5, 1)
    want = _litert(path, xs)
    r = built_rknn(path, loader="tflite", target_platform="rk3588")
    got = [np.asarray(r.inference(inputs=[x])[0]).reshape(w.shape) for x, w in zip(xs, want)]
    assert max(float(np.abs(g - w).max()) for g, w in zip(got, want)) < 1e-5
    r.release()


def test_an_int8_build_keeps_the_classes(tmp_path):
    path = _write(tmp_path / "lstm.tflite", peephole=True)
    xs = _sequences(20, 2)
    want = _litert(path, xs)
    r = built_rknn(path, write_samples(tmp_path, _sequences(16, 3)), loader="tflite", target_platform="rk3588")
    got = [np.asarray(r.inference(inputs=[x])[0]).reshape(w.shape) for x, w in zip(xs, want)]
    assert sum(int(g.argmax() == w.argmax()) for g, w in zip(got, want)) >= 19
    assert np.mean([cosine(g, w) for g, w in zip(got, want)]) > 0.999
    # and its export runs on LiteRT as the simulator runs it
    from openrknn.runtime.tflite_runner import TfliteRunner

    assert r.export_tflite(str(tmp_path / "out.tflite"), input_dtype="float32") == 0, r.last_error
    runner = TfliteRunner(str(tmp_path / "out.tflite"), delegate=None)
    assert min(cosine(runner.run([x])[0], g) for x, g in zip(xs, got)) > 0.999
    r.release()


def test_an_lstm_without_input_gate_is_refused_by_name(tmp_path):
    with pytest.raises(ModelLoadError, match="CIFG"):
        load_tflite(_write(tmp_path / "cifg.tflite", cifg=True))
    with pytest.raises(ModelLoadError, match="RELU6 cell activation"):
        load_tflite(_write(tmp_path / "relu6.tflite", act=3))
