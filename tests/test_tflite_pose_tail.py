"""A MoveNet-style decode inside a TFLite file (TF Hub's movenet_singlepose int8 model ends so): a heat map from a
conv, weighted by a rank-3 activation, flattened, ARG_MAX per channel, the row and column by FLOOR_DIV, PACKed into
GATHER_ND indices, the picked values UNPACKed and PACKed again. load_tflite must give LiteRT's result on the same
file, a quantized build must keep the peaks, and its export_tflite must run on LiteRT as the simulator does."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from conftest import built_rknn, write_samples
from openrknn.frontends.tflite import load_tflite
from openrknn.metrics import cosine

S, C, K = 6, 4, 3  # map side, input channels, heat map channels (keypoints)


def _write(path: Path) -> Path:
    from openrknn.export.tflite.writer import Model, serialize

    rng = np.random.default_rng(11)
    m = Model()

    def t(name, shape, dtype=np.float32):
        return m.add_tensor(name, shape, dtype)

    def i32(name, arr):
        return m.add_const(name, np.asarray(arr, np.int32))

    x = t("x", [1, S, S, C])
    m.inputs = [x.index]
    heat = t("heat", [1, S, S, K])
    m.add_op("CONV_2D", [x, m.add_const("w", rng.normal(0, .5, (K, 1, 1, C)).astype(np.float32)),
                         m.add_const("b", np.zeros(K, np.float32))], [heat],
             ("Conv2DOptions", {"Padding": 0, "StrideW": 1, "StrideH": 1, "FusedActivationFunction": 0,
                                "DilationWFactor": 1, "DilationHFactor": 1}))
    # a weight map of rank 3 ([H, W, K], as MoveNet's distance map) multiplies the rank-4 heat map
    ramp = t("ramp", [1, S, S, K])
    m.add_op("CONV_2D", [x, m.add_const("w2", np.abs(rng.normal(0, .3, (K, 1, 1, C))).astype(np.float32)),
                         m.add_const("b2", np.ones(K, np.float32))], [ramp],
             ("Conv2DOptions", {"Padding": 0, "StrideW": 1, "StrideH": 1, "FusedActivationFunction": 1,
                                "DilationWFactor": 1, "DilationHFactor": 1}))
    ramp3 = t("ramp3", [S, S, K])
    m.add_op("RESHAPE", [ramp, i32("s3", [S, S, K])], [ramp3])
    weighted = t("weighted", [1, S, S, K])
    m.add_op("MUL", [heat, ramp3], [weighted], ("MulOptions", {"FusedActivationFunction": 0}))
    flat = t("flat", [1, S * S, K])
    m.add_op("RESHAPE", [weighted, i32("sflat", [1, S * S, K])], [flat])
    peak = t("peak", [1, K], np.int32)
    m.add_op("ARG_MAX", [flat, i32("axis", 1)], [peak], ("ArgMaxOptions", {"OutputType": 2}))
    row = t("row", [1, K], np.int32)
    m.add_op("FLOOR_DIV", [peak, i32("side", S)], [row])
    back = t("back", [1, K], np.int32)
    m.add_op("MUL", [row, i32("side2", S)], [back], ("MulOptions", {"FusedActivationFunction": 0}))
    col = t("col", [1, K], np.int32)
    m.add_op("SUB", [peak, back], [col], ("SubOptions", {"FusedActivationFunction": 0}))
    # a floor division of negative numbers (rounds down, not toward zero)
    shifted = t("shifted", [1, K], np.int32)
    m.add_op("SUB", [peak, i32("twenty", 20)], [shifted], ("SubOptions", {"FusedActivationFunction": 0}))
    below = t("below", [1, K], np.int32)
    m.add_op("FLOOR_DIV", [shifted, i32("seven", 7)], [below])
    flat_row, flat_col = t("flat_row", [K], np.int32), t("flat_col", [K], np.int32)
    m.add_op("RESHAPE", [row, i32("sk", [K])], [flat_row])
    m.add_op("RESHAPE", [col, i32("sk2", [K])], [flat_col])
    index = t("index", [K, 4], np.int32)
    m.add_op("PACK", [i32("batch", np.zeros(K)), flat_row, flat_col, i32("chan", np.arange(K))], [index],
             ("PackOptions", {"ValuesCount": 4, "Axis": 1}))
    picked = t("picked", [K], np.float32)
    m.add_op("GATHER_ND", [heat, index], [picked])
    pairs = t("pairs", [K, 2], np.int32)
    m.add_op("PACK", [flat_row, flat_col], [pairs], ("PackOptions", {"ValuesCount": 2, "Axis": 1}))
    rows_again, cols_again = t("rows_again", [K], np.int32), t("cols_again", [K], np.int32)
    m.add_op("UNPACK", [pairs], [rows_again, cols_again], ("UnpackOptions", {"Num": 2, "Axis": 1}))
    where = t("where", [2, K], np.int32)
    m.add_op("PACK", [cols_again, rows_again], [where], ("PackOptions", {"ValuesCount": 2, "Axis": 0}))
    m.outputs = [picked.index, where.index, below.index]
    path.write_bytes(serialize(m))
    return path


def _litert(path: Path, x: np.ndarray) -> list:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return [it.get_tensor(d["index"]) for d in it.get_output_details()]


def _inputs(n: int) -> list:
    """Maps with one clear spot per keypoint (the peaks a quantized build must find again)."""
    rng = np.random.default_rng(3)
    out = []
    for _ in range(n):
        x = rng.uniform(0, .2, (1, S, S, C)).astype(np.float32)
        for c in range(C):
            x[0, rng.integers(S), rng.integers(S), c] = 3.0
        out.append(x)
    return out


def test_pose_tail_loads_as_litert_runs_it(tmp_path):
    import onnxruntime as ort

    path = _write(tmp_path / "pose_tail.tflite")
    model = load_tflite(path).model
    sess = ort.InferenceSession(model.SerializeToString())
    below = []
    for x in _inputs(6):
        want = _litert(path, x)
        got = sess.run(None, {sess.get_inputs()[0].name: x})
        np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[2], want[2])
        below.append(want[2])
    assert (np.concatenate(below) < 0).any(), "the floor division of negatives is not exercised"


def test_pose_tail_quantized_build_keeps_the_peaks(tmp_path):
    path = _write(tmp_path / "pose_tail.tflite")
    samples = [x[0] for x in _inputs(8)]
    ds = write_samples(tmp_path, samples)
    r = built_rknn(path, ds, loader="tflite", target_platform="rk3588", mean_values=[[0] * C],
                   std_values=[[1] * C])
    found = 0
    for x in _inputs(6):
        want = _litert(path, x)
        got = r.inference(inputs=[x[0]], data_format="nhwc")
        found += int(np.array_equal(got[1], want[1]))
    assert found >= 5, f"the int8 build found the float peaks on {found} of 6 maps"
    # exported back to TFLite with our scales (GATHER_ND at the computed peaks), it runs as the simulator does
    out = tmp_path / "pose_tail_int8.tflite"
    assert r.export_tflite(str(out), input_dtype="float32") == 0, r.last_error
    for x in _inputs(6):
        ours = r.inference(inputs=[x[0]], data_format="nhwc")
        theirs = _litert(out, x)
        np.testing.assert_array_equal(theirs[1], ours[1])
        assert cosine(theirs[0], ours[0]) > 0.999
    r.release()
