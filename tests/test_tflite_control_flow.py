"""TFLite files with an IF (onnx-tf writes ONNX Ifs so: openWakeWord's hey_jarvis.tflite, whose verifier network
runs only when the first score reaches 0.5) and comparison / logical / select ops: load_tflite runs both branches
and keeps each output with a Where on the condition, as load_onnx does with an If on data. Files written here with
two extra subgraphs (the writer's Model.subgraphs), checked against LiteRT on the same file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import built_rknn, write_samples
from openrknn.errors import ModelLoadError
from openrknn.frontends.tflite import load_tflite
from openrknn.metrics import cosine

D = 8
FC = ("FullyConnectedOptions", {"FusedActivationFunction": 0})


def _write(path: Path, failing_branch: bool = False) -> Path:
    """x [1, D] -> p1 = LOGISTIC(FC(x, w1)) -> GREATER_EQUAL(p1, 0.5) -> IF: then LOGISTIC(FC(x, w2)) with w2 handed
    to the branch as an input (as onnx-tf does), else p1 * 1 -> SELECT_V2(NOT_EQUAL(p, 0), p, 0) -> y.
    ``failing_branch``: the then branch reshapes x to twice its size, which cannot run."""
    from openrknn.export.tflite.writer import Model, serialize

    rng = np.random.default_rng(4)
    m = Model()
    x = m.add_tensor("x", (1, D), np.float32)
    l1, p1 = m.add_tensor("l1", (1, 1), np.float32), m.add_tensor("p1", (1, 1), np.float32)
    m.add_op("FULLY_CONNECTED", [x, m.add_const("w1", rng.normal(0, .5, (1, D)).astype(np.float32)), None], [l1], FC)
    m.add_op("LOGISTIC", [l1], [p1])
    fire = m.add_tensor("fire", (1, 1), np.bool_)
    m.add_op("GREATER_EQUAL", [p1, m.add_const("half", np.array(0.5, np.float32))], [fire])
    w2 = m.add_const("w2", rng.normal(0, .5, (1, D)).astype(np.float32))
    p = m.add_tensor("p", (1, 1), np.float32)
    m.add_op("IF", [fire, x, p1, w2], [p], ("IfOptions", {"ThenSubgraphIndex": 1, "ElseSubgraphIndex": 2}))
    nonzero, y = m.add_tensor("nonzero", (1, 1), np.bool_), m.add_tensor("y", (1, 1), np.float32)
    zero = m.add_const("zero", np.zeros((1, 1), np.float32))
    m.add_op("NOT_EQUAL", [p, zero], [nonzero])
    m.add_op("SELECT_V2", [nonzero, p, zero], [y])
    m.inputs, m.outputs = [x.index], [y.index]

    then = Model()
    tx, tp1, tw = (then.add_tensor("x", (1, D), np.float32), then.add_tensor("p1", (1, 1), np.float32),
                   then.add_tensor("w2", (1, D), np.float32))
    p2 = then.add_tensor("p2", (1, 1), np.float32)
    if failing_branch:
        then.add_op("RESHAPE", [tx, then.add_const("shape", np.array([1, 1, 2 * D], np.int32))], [p2])
    else:
        l2 = then.add_tensor("l2", (1, 1), np.float32)
        then.add_op("FULLY_CONNECTED", [tx, tw, None], [l2], FC)
        then.add_op("LOGISTIC", [l2], [p2])
    then.inputs, then.outputs = [tx.index, tp1.index, tw.index], [p2.index]

    other = Model()
    ex, ep1, ew = (other.add_tensor("x", (1, D), np.float32), other.add_tensor("p1", (1, 1), np.float32),
                   other.add_tensor("w2", (1, D), np.float32))
    kept = other.add_tensor("kept", (1, 1), np.float32)
    other.add_op("MUL", [ep1, other.add_const("one", np.array(1.0, np.float32))], [kept], ("MulOptions", {}))
    other.inputs, other.outputs = [ex.index, ep1.index, ew.index], [kept.index]
    m.subgraphs = [then, other]
    path.write_bytes(serialize(m))
    return path


def _inputs(k: int, seed: int = 0):
    return [np.random.default_rng(seed + i).normal(0, 1.5, (1, D)).astype(np.float32) for i in range(k)]


def test_an_if_loads_as_both_branches_and_matches_litert(tmp_path):
    from openrknn.runtime.tflite_runner import TfliteRunner

    path = _write(tmp_path / "verifier.tflite")
    loaded = load_tflite(path)
    assert any(note.startswith("IF ") and "both branches" in note for note in loaded.notes)
    assert not any("only the main subgraph" in note for note in loaded.notes)
    runner = TfliteRunner(str(path), delegate=None)
    xs = _inputs(30)
    refs = [runner.run([x])[0] for x in xs]
    p1 = [float(1 / (1 + np.exp(-x @ np.random.default_rng(4).normal(0, .5, (1, D)).T)).ravel()[0]) for x in xs]
    assert 5 < sum(v >= 0.5 for v in p1) < 25  # both branches are taken among these inputs
    rk = built_rknn(path, loader="tflite", target_platform="rk3588")
    for x, ref in zip(xs, refs):
        np.testing.assert_allclose(rk.inference(inputs=[x])[0].reshape(ref.shape), ref, rtol=1e-5, atol=1e-6)
    rk.release()
    write_samples(tmp_path, _inputs(16, seed=100))
    rk = built_rknn(path, tmp_path / "dataset.txt", loader="tflite", target_platform="rk3588", quantized_dtype="w8a8")
    ours = np.concatenate([rk.inference(inputs=[x])[0].ravel() for x in xs])
    assert cosine(ours, np.concatenate([r.ravel() for r in refs])) > 0.99
    rk.release()


def test_an_if_whose_branch_cannot_run_is_refused_with_what_to_do(tmp_path):
    path = _write(tmp_path / "failing.tflite", failing_branch=True)
    with pytest.raises(ModelLoadError, match="an IF's two branches cannot both run.*cut it before the IF"):
        load_tflite(path)
