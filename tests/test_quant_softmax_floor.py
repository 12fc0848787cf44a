"""A Softmax's input range starts SOFTMAX_SPAN below the smallest row maximum calibration saw: a classifier whose
logits reach far below its winners (hand-gesture-recognition's fingertip-history MLP: -315 against winners near 0)
keeps its close decisions, since values that far below their row's maximum weigh nothing in the softmax (under
e^-40)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from conftest import write_samples
from openrknn.api import RKNN
from openrknn.quant.calibrate import SOFTMAX_SPAN, softmax_floor
from openrknn.quant.ir import GraphInfo, normalize
from openrknn.quant.pipeline import softmax_inputs
from openrknn.quant.plan import build_plan

D, K = 16, 4


def _classifier(path, also_output: bool = False):
    """x [1, D] -> MatMul -> logits [1, K] -> Softmax: logit k is feature k, except that feature K (an evidence
    against class 3, as a trained head has) takes 64 times itself off class 3."""
    w = np.zeros((D, K), np.float32)
    w[np.arange(K), np.arange(K)] = 1.0
    w[K, 3] = -64.0
    nodes = [helper.make_node("MatMul", ["x", "w"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["p"], axis=-1)]
    outs = [helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, K])]
    if also_output:
        outs.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, K]))
    g = helper.make_graph(nodes, "cls", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, D])], outs,
                          [numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def _samples(n: int, seed: int) -> list:
    """Logits within a few units of each other, and on every third sample class 3 200 to 300 below the rest (a
    sample that is clearly not that class); the features themselves stay within [-4, 5]."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1.0, (n, 1, D)).clip(-4, 4).astype(np.float32)
    x[:, 0, K] = 0.0
    x[::3, 0, K] = rng.uniform(3.2, 4.7, len(x[::3]))
    return list(x)


def test_the_floor_is_the_span_below_the_smallest_row_maximum():
    assert softmax_floor(-315.0, 2.5) == 2.5 - SOFTMAX_SPAN
    assert softmax_floor(-3.0, 2.5) == -3.0  # a range already above the floor stays
    assert softmax_floor(-3.0, np.inf) == -3.0


def test_only_tensors_read_by_softmax_alone_get_the_floor(tmp_path):
    for also_output, want in ((False, {"logits": (1,)}), (True, {})):
        info = GraphInfo(normalize(onnx.load(str(_classifier(tmp_path / "c.onnx", also_output)))))
        assert softmax_inputs(info, build_plan(info)) == want


def test_int8_keeps_the_close_decisions(tmp_path):
    import onnxruntime as ort

    path = _classifier(tmp_path / "cls.onnx")
    ds = write_samples(tmp_path, _samples(30, 1))
    r = RKNN(verbose=False)
    assert r.config(target_platform="rk3588") == 0
    assert r.load_onnx(str(path)) == 0
    assert r.build(do_quantization=True, dataset=str(ds)) == 0, r.last_error
    assert r.init_runtime() == 0
    sess = ort.InferenceSession(str(path))
    worst = 0.0
    for x in _samples(60, 7):
        want = sess.run(None, {"x": x})[0]
        got = r.inference(inputs=[x])[0]
        worst = max(worst, float(np.abs(np.asarray(got).reshape(want.shape) - want).max()))
    r.release()
    # a range from the most negative logit (about -300) rounds the logits in steps of about 1.2
    assert worst < 0.05, worst
