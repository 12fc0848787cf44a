"""A Softmax's int8 output scale is 1/N for a whole number N: onnxruntime's int8 Softmax kernel (the simulator's)
multiplies the probabilities by floor(1 / scale) rather than dividing by the scale, so on a calibrated scale such as
0.0039106 (1/255.71) it put 1.7% of a text recognizer's probabilities one level low. On 1/N the kernel computes what
the scale says: every output is round(p / scale) + zero point of the exact softmax of its int8 input."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import write_samples
from openrknn.api import RKNN
from openrknn.quant.qdq import with_outputs
from openrknn.quant.schemes import whole_reciprocal_scale
from openrknn.runtime.feeds import prepare_feeds
from openrknn.runtime.ort_session import make_session

D, K = 8, 40


def _classifier(path):
    """x [1, 6, D] -> MatMul -> logits [1, 6, K] -> Softmax over the K classes (six rows of a recognizer)."""
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((D, K)) * 1.5).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["p"], axis=-1)]
    g = helper.make_graph(nodes, "rec", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, D])],
                          [helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, 6, K])],
                          [numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


@pytest.mark.parametrize("scale", [0.003910630941390991, 1 / 255, 1 / 127, 0.001, 0.0172, 1 / 256])
def test_the_scale_has_a_whole_reciprocal_and_never_cuts_the_range(scale):
    s = whole_reciprocal_scale(scale)
    n = np.floor(np.float32(1.0) / np.float32(s))
    assert n == np.floor(1.0 / scale)                  # N = floor(1 / scale): the range widens, never narrows
    assert abs(s * n - 1.0) < 1e-6                      # s is 1/N up to a float32 rounding
    assert s >= scale * (1 - 1e-6)


def _points(pkg):
    """(logits point, probabilities point) of the built graph with their (scale, zero point)."""
    g = onnx.load_from_string(pkg.model_bytes).graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    q = {n.input[0]: n for n in g.node if n.op_type == "QuantizeLinear"}
    producer = {o: n for n in g.node for o in n.output}
    soft = next(n for n in g.node if n.op_type == "Softmax")
    logits_dq = producer[soft.input[0]]
    p_q = q[soft.output[0]]
    grid = lambda n: (float(inits[n.input[1]]), int(inits[n.input[2]]))  # noqa: E731
    return (logits_dq.input[0], grid(logits_dq)), (p_q.output[0], grid(p_q))


@pytest.mark.parametrize("target,dtype", [("rk3588", "w8a8"), ("rk1808", "asymmetric_quantized-u8")])
def test_the_simulator_gives_the_exact_int8_softmax(tmp_path, target, dtype):
    path = _classifier(tmp_path / "rec.onnx")
    rng = np.random.default_rng(1)
    ds = write_samples(tmp_path, [rng.normal(0, 1, (1, 6, D)).astype(np.float32) for _ in range(12)])
    r = RKNN(verbose=False)
    assert r.config(target_platform=target, quantized_dtype=dtype) == 0
    assert r.load_onnx(str(path)) == 0
    assert r.build(do_quantization=True, dataset=str(ds)) == 0, r.last_error
    pkg = r._package
    (logits, (ls, lz)), (probs, (ps, pz)) = _points(pkg)
    assert np.floor(np.float32(1.0) / np.float32(ps)) * ps == pytest.approx(1.0, abs=1e-6)
    sess = make_session(with_outputs(onnx.load_from_string(pkg.model_bytes), [logits, probs]).SerializeToString())
    name = sess.get_inputs()[0].name
    seen = 0
    for _ in range(8):
        x = rng.normal(0, 1.2, (1, 6, D)).astype(np.float32)
        lq, pq = sess.run([logits, probs], {name: prepare_feeds([x], pkg.metadata["inputs"])[0]})
        v = (lq.astype(np.float64) - lz) * ls
        p = np.exp(v - v.max(axis=-1, keepdims=True))
        p /= p.sum(axis=-1, keepdims=True)
        want = np.clip(np.rint(p / ps) + pz, np.iinfo(pq.dtype).min, np.iinfo(pq.dtype).max)
        # the kernel's float rounding may land a value sitting on a rounding tie on its other side
        near_tie = np.abs(np.abs(p / ps - np.floor(p / ps)) - 0.5) < 1e-4
        assert np.array_equal(pq[~near_tie], want[~near_tie])
        seen += int((pq > pz).sum())
    r.release()
    assert seen > 100   # the probabilities are not all in the zero level
