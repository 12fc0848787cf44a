"""A narrow Concat input that other layers also read keeps its own scale (quant/algorithms/concat_inputs.py).

The model has DeepCut's shape in small: a narrow feature (an embedding, +-1) is joined by a Concat to a wide one
(+-100) and also read by a layer of its own. Sharing the Concat's scale leaves that layer three or four integer steps
of its input."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import built_rknn, write_samples
from openrknn.api import RKNN
from openrknn.metrics import cosine
from openrknn.quant.algorithms.concat_inputs import ConcatInputScales, narrow_inputs
from openrknn.quant.ir import GraphInfo, normalize
from openrknn.quant.plan import build_plan

D = 16


def concat_model(narrow_has_reader: bool = True, wide: float = 25.0) -> onnx.ModelProto:
    """x [1, D] -> wide = x @ Wb (+-4 ``wide``), narrow = x @ We (+-1) -> Concat -> @ Wc -> joined; and, when
    ``narrow_has_reader``, narrow @ Wd -> own (the narrow feature's other reader)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((D, D)) * wide).astype(np.float32), "Wb"),
             numpy_helper.from_array((rng.standard_normal((D, D)) * 0.25).astype(np.float32), "We"),
             numpy_helper.from_array((rng.standard_normal((2 * D, 4)) * 0.1).astype(np.float32), "Wc"),
             numpy_helper.from_array(rng.standard_normal((D, 4)).astype(np.float32), "Wd")]
    n = helper.make_node
    nodes = [n("MatMul", ["x", "Wb"], ["wide"], name="wide"), n("MatMul", ["x", "We"], ["narrow"], name="narrow"),
             n("Concat", ["wide", "narrow"], ["joined_in"], name="join", axis=1),
             n("MatMul", ["joined_in", "Wc"], ["joined"], name="head")]
    outputs = [helper.make_tensor_value_info("joined", TensorProto.FLOAT, [1, 4])]
    if narrow_has_reader:
        nodes.append(n("MatMul", ["narrow", "Wd"], ["own"], name="reader"))
        outputs.append(helper.make_tensor_value_info("own", TensorProto.FLOAT, [1, 4]))
    g = helper.make_graph(nodes, "concat_inputs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, D])],
                          outputs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _samples(rng, n):
    return [rng.uniform(-1, 1, (1, D)).astype(np.float32) for _ in range(n)]


def _build(d, path, monkeypatch, detach: bool) -> RKNN:
    if not detach:
        monkeypatch.setattr(ConcatInputScales, "enabled", lambda self, state: False)
    rk = built_rknn(path, d / "dataset.txt", target_platform="rk3588", quantized_dtype="w8a8")
    monkeypatch.undo()
    return rk


def _scale(rk: RKNN, tensor: str) -> float:
    return float(np.ravel(rk._package.metadata["quantization"]["tensors"][tensor]["scale"])[0])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("concat_inputs")
    rng = np.random.default_rng(1)
    write_samples(d, _samples(rng, 12))
    return d, _samples(rng, 8)


def test_narrow_shared_input_gets_its_own_scale_and_its_reader_gains(data, tmp_path, monkeypatch):
    d, held_out = data
    path = tmp_path / "m.onnx"
    onnx.save(concat_model(), path)
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    refs = [ref.run(None, {"x": x}) for x in held_out]
    cos, concat_scale = {}, {}
    for detach in (False, True):
        rk = _build(d, path, monkeypatch, detach)
        outs = [rk.inference(inputs=[x]) for x in held_out]
        cos[detach] = [float(np.mean([cosine(r[k], o[k]) for r, o in zip(refs, outs)])) for k in range(2)]
        scales = {t: _scale(rk, t) for t in ("narrow", "joined_in")}
        if detach:
            assert scales["narrow"] < scales["joined_in"] / 8, scales  # its own, finer scale
        else:
            assert scales["narrow"] == scales["joined_in"], scales  # one shared scale
        concat_scale[detach] = scales["joined_in"]
        rk.release()
    assert concat_scale[True] == concat_scale[False]  # the concatenated tensor keeps its scale
    # the narrow feature's own reader: a few integer steps of its input when shared, all of them when detached
    assert cos[False][1] < 0.95 and cos[True][1] > 0.995, cos
    # the concatenated path rounds the narrow part as coarsely either way (one more rounding when detached)
    assert cos[True][0] > cos[False][0] - 0.002, cos


def test_detached_concat_exports_to_tflite_and_matches_the_simulator(data, tmp_path, monkeypatch):
    from openrknn.runtime.tflite_runner import TfliteRunner

    d, held_out = data
    path = tmp_path / "m.onnx"
    onnx.save(concat_model(), path)
    rk = _build(d, path, monkeypatch, True)
    out = tmp_path / "m.tflite"
    assert rk.export_tflite(str(out), input_dtype="float32") == 0, rk.last_error
    runner = TfliteRunner(str(out), delegate=None)
    for x in held_out:
        ours, theirs = rk.inference(inputs=[x]), runner.run([x])
        assert all(cosine(a, b) > 0.999 for a, b in zip(ours, theirs))
    rk.release()


def test_concat_as_only_reader_keeps_one_scale(data, tmp_path, monkeypatch):
    """The Concat output's scale rounds a narrow input read by nothing else anyway: no second scale for it."""
    d, _ = data
    path = tmp_path / "m.onnx"
    onnx.save(concat_model(narrow_has_reader=False), path)
    rk = _build(d, path, monkeypatch, True)
    assert _scale(rk, "narrow") == _scale(rk, "joined_in")
    rk.release()


def test_narrow_inputs_threshold():
    """Only inputs at most 1/8 of their group's range are detached; YOLOX's concat inputs are 1.0-1.8x."""
    info = GraphInfo(normalize(concat_model()))
    plan = build_plan(info)
    minmax = {"wide": (-100.0, 100.0), "narrow": (-1.0, 1.0)}
    assert [(o, t) for o, t, _ in narrow_inputs(info, plan, minmax)] == [("joined_in", "narrow")]
    assert narrow_inputs(info, plan, {"wide": (-10.0, 10.0), "narrow": (-2.0, 2.0)}) == []  # 5x: kept together
    # the detached plan: two groups, the concat output measured (no longer derived from its inputs)
    detached = build_plan(info, detached=frozenset({("joined_in", "narrow")}))
    assert detached.group_of["narrow"] != detached.group_of["joined_in"]
    assert detached.group_of["wide"] == detached.group_of["joined_in"]
    assert "joined_in" not in detached.derived and "joined_in" in plan.derived


def test_sixteen_bit_points_detach_from_a_range_ratio_sixteen_bits_cannot_hold(data, tmp_path, monkeypatch):
    """A diffusion UNet's first conv (a range of 6) meets its decoder's last features (4e9) in a skip Concat: one
    shared 16-bit scale left the conv a step of 6e4, all its values zero. 16-bit points detach at the 8-bit ratio:
    three bits lost is three bits lost."""
    d, held_out = data
    path = tmp_path / "m.onnx"
    onnx.save(concat_model(wide=2.5e6), path)
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    refs = [ref.run(None, {"x": x})[1] for x in held_out]  # the narrow feature's own reader
    own = {}
    for detach in (False, True):
        if not detach:
            monkeypatch.setattr(ConcatInputScales, "enabled", lambda self, state: False)
        rk = built_rknn(path, d / "dataset.txt", target_platform="rk3588", quantized_dtype="w16a16i")
        monkeypatch.undo()
        own[detach] = float(np.mean([cosine(r, rk.inference(inputs=[x])[1]) for r, x in zip(refs, held_out)]))
        if detach:
            assert _scale(rk, "narrow") < _scale(rk, "joined_in") / 1e5
        rk.release()
    assert own[False] < 0.5 and own[True] > 0.998, own  # a held-out value or two past the calibrated range
