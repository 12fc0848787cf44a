"""TFLite's custom TFLite_Detection_PostProcess (the last op of every SSD / EfficientDet-Lite from TensorFlow's object
detection API and Model Maker): load_tflite reads it as ONNX ops (anchor decode, best class, NonMaxSuppression, the
kept boxes padded to the op's fixed count), on files written here with TFLite's own custom-op encoding (FlexBuffer
options), against LiteRT running the same file; the w8a8 build exports to TFLite again."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import write_samples
from openrknn.api import RKNN
from openrknn.errors import ModelLoadError

ANCHORS, CLASSES, MOST = 60, 3, 8


def _options(**over) -> bytes:
    from flatbuffers import flexbuffers

    opts = {"max_detections": MOST, "max_classes_per_detection": 1, "detections_per_class": 5,
            "use_regular_nms": False, "nms_score_threshold": 0.6, "nms_iou_threshold": 0.5, "num_classes": CLASSES,
            "y_scale": 10.0, "x_scale": 10.0, "h_scale": 5.0, "w_scale": 5.0}
    opts.update(over)
    return flexbuffers.Dumps({k: v for k, v in opts.items() if v is not None})


def _write(path: Path, options: bytes, seed: int = 0) -> Path:
    """box encodings [1, N, 4] and class logits [1, N, 1 + C] in (background first) -> LOGISTIC -> the custom op with
    N constant anchors (y, x, h, w) -> boxes [1, D, 4], classes [1, D], scores [1, D], count [1]."""
    from openrknn.export.tflite.writer import Model, serialize

    rng = np.random.default_rng(seed)
    m = Model()
    enc = m.add_tensor("box_encodings", (1, ANCHORS, 4), np.float32)
    logits = m.add_tensor("class_logits", (1, ANCHORS, CLASSES + 1), np.float32)
    scores = m.add_tensor("class_scores", (1, ANCHORS, CLASSES + 1), np.float32)
    m.add_op("LOGISTIC", [logits], [scores])
    anchors = np.concatenate([rng.uniform(.2, .8, (ANCHORS, 2)), rng.uniform(.1, .4, (ANCHORS, 2))], 1)
    outs = [m.add_tensor("detection_boxes", (1, MOST, 4), np.float32),
            m.add_tensor("detection_classes", (1, MOST), np.float32),
            m.add_tensor("detection_scores", (1, MOST), np.float32),
            m.add_tensor("num_detections", (1,), np.float32)]
    op = m.add_op("CUSTOM", [enc, scores, m.add_const("anchors", anchors.astype(np.float32))], outs)
    op.custom, op.custom_options = "TFLite_Detection_PostProcess", options
    m.inputs, m.outputs = [enc.index, logits.index], [t.index for t in outs]
    path.write_bytes(serialize(m))
    return path


def _sample(rng) -> list:
    return [rng.normal(0, 1, (1, ANCHORS, 4)).astype(np.float32),
            rng.normal(-2.5, 1.5, (1, ANCHORS, CLASSES + 1)).astype(np.float32)]


def _litert(path: Path, x: list) -> list:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(str(path))
    it.allocate_tensors()
    for d, v in zip(it.get_input_details(), x):
        it.set_tensor(d["index"], v)
    it.invoke()
    return [it.get_tensor(d["index"]) for d in it.get_output_details()]


@pytest.mark.parametrize("regular", [False, True])
def test_the_detection_postprocess_loads_as_litert_runs_it(tmp_path, regular):
    path = _write(tmp_path / "ssd_tail.tflite", _options(use_regular_nms=regular))
    rk = RKNN()
    assert rk.config(target_platform="rk3588") == 0
    assert rk.load_tflite(str(path)) == 0, rk.last_error
    assert rk.build(do_quantization=False) == 0, rk.last_error
    assert rk.init_runtime() == 0
    rng = np.random.default_rng(1)
    counts = []
    for _ in range(8):
        x = _sample(rng)
        want, got = _litert(path, x), rk.inference(inputs=x)
        assert [np.shape(g) for g in got] == [(1, MOST, 4), (1, MOST), (1, MOST), (1,)]
        n = int(want[3][0])
        np.testing.assert_array_equal(got[3], want[3])
        for w, g in zip(want[:3], got[:3]):  # LiteRT leaves the slots past the count as they were; ours are zeros
            np.testing.assert_allclose(g[:, :n], w[:, :n], rtol=1e-5, atol=1e-5)
            assert not np.any(g[:, n:])
        counts.append(n)
    assert min(counts) > 0 and max(counts) <= MOST and len(set(counts)) > 1   # some found, not always the same
    rk.release()


def test_its_w8a8_build_exports_and_litert_agrees_with_the_simulator(tmp_path):
    """The export writes the decode and NMS back as TFLite builtins (one NMS, the kept rows sliced at its count,
    padded to the fixed count again); fed the same features, LiteRT and the simulator keep the same boxes."""
    from openrknn.package import read_package
    from openrknn.runtime.simulator import Simulator
    from openrknn.runtime.tflite_runner import TfliteRunner

    path = _write(tmp_path / "ssd_tail.tflite", _options())
    rng = np.random.default_rng(2)
    dataset = write_samples(tmp_path, [tuple(_sample(rng)) for _ in range(6)], ("e", "l"))
    rk = RKNN()
    assert rk.config(target_platform="rk3588") == 0
    assert rk.load_tflite(str(path)) == 0, rk.last_error
    assert rk.build(do_quantization=True, dataset=str(dataset)) == 0, rk.last_error
    assert rk.export_rknn(str(tmp_path / "ssd_tail.rknn")) == 0
    assert rk.export_tflite(str(tmp_path / "export.tflite"), input_dtype="float32") == 0, rk.last_error
    rk.release()
    pkg = read_package(tmp_path / "ssd_tail.rknn")
    sim, runner = Simulator(pkg.model_bytes, pkg.metadata), TfliteRunner(str(tmp_path / "export.tflite"),
                                                                          delegate=None)
    same = 0
    for _ in range(8):
        x = _sample(rng)
        ours, theirs = sim.run(x), runner.run(x)
        assert [np.shape(t) for t in theirs] == [(1, MOST, 4), (1, MOST), (1, MOST), (1,)]
        same += all(np.allclose(a, b, atol=1e-5) for a, b in zip(ours, theirs))
    assert same >= 7, same      # a tie of two int8 scores may order two boxes differently


def test_options_the_loader_cannot_follow_are_named(tmp_path):
    from openrknn.convert.loaders import load_tflite

    with pytest.raises(ModelLoadError, match="reports 2 classes per detection"):
        load_tflite(_write(tmp_path / "two.tflite", _options(max_classes_per_detection=2)))
    with pytest.raises(ModelLoadError, match="lacks the options y_scale"):
        load_tflite(_write(tmp_path / "no_scale.tflite", _options(y_scale=None)))
