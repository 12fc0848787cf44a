"""The simulator runtime: runs a package on onnxruntime, checks inputs, configurable threads, and imports neither
torch, onnx nor the builder (a board installs numpy + onnxruntime only)."""

from __future__ import annotations

import textwrap

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from openrknn.convert import BuildOptions, build
from openrknn.config import make_config
from openrknn.errors import CorruptPackageError, InferenceInputError, RuntimeStateError
from openrknn.frontends.onnx import load_onnx
from openrknn.package import RknnPackage, read_package, write_package
from openrknn.runtime.feeds import prepare_feeds
from openrknn.runtime.simulator import Simulator

H, W = 8, 10
MEAN, STD = [10.0, 100.0, 200.0], [2.0, 4.0, 8.0]


def _package(path, **config) -> RknnPackage:
    return build(load_onnx(path), make_config(**config), BuildOptions(do_quantization=False)).package


@pytest.fixture
def pkg(conv_onnx) -> RknnPackage:
    return _package(conv_onnx(pads=1), reorder_channel="2 1 0", mean_values=[MEAN], std_values=[STD])


def test_simulator_runs_a_package_like_the_reference(conv_onnx, pixels, ort_reference, reference_normalise):
    path = conv_onnx(pads=1)
    built = _package(path, reorder_channel="2 1 0", mean_values=[MEAN], std_values=[STD])
    sim = Simulator(built.model_bytes, built.metadata)
    fed = pixels(H, W, seed=1)
    out = sim.run([fed])
    assert isinstance(out, list) and len(out) == 1 and out[0].dtype == np.float32
    expected = ort_reference(path, {"x": reference_normalise(fed, MEAN, STD, [2, 1, 0])})[0]
    np.testing.assert_allclose(out[0], expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("threads", [1, 2])
def test_thread_count_is_configurable(pkg, threads):
    sim = Simulator(pkg.model_bytes, pkg.metadata, threads=threads)
    assert sim.session.get_session_options().intra_op_num_threads == threads


def test_thread_count_from_the_environment(pkg, monkeypatch):
    monkeypatch.setenv("OPENRKNN_THREADS", "2")
    assert Simulator(pkg.model_bytes, pkg.metadata).session.get_session_options().intra_op_num_threads == 2


def test_released_simulator_refuses_to_run(pkg, pixels):
    sim = Simulator(pkg.model_bytes, pkg.metadata)
    sim.release()
    with pytest.raises(RuntimeStateError, match="init_runtime"):
        sim.run([pixels(H, W)])
    with pytest.raises(RuntimeStateError):
        sim.run_feeds({"x": np.zeros((1, H, W, 3), np.float32)})


def test_run_feeds_takes_graph_ready_tensors(pkg, pixels):
    sim = Simulator(pkg.model_bytes, pkg.metadata)
    fed = pixels(H, W, seed=2)
    np.testing.assert_array_equal(sim.run_feeds({"x": fed.astype(np.float32)})[0], sim.run([fed])[0])


def test_metadata_that_does_not_match_the_graph_is_refused(pkg):
    meta = dict(pkg.metadata)
    meta["inputs"] = [dict(pkg.metadata["inputs"][0], name="images")]
    with pytest.raises(CorruptPackageError, match=r"\['x'\].*\['images'\]"):
        Simulator(pkg.model_bytes, meta)


def _raw_input_model(path):
    """A non-image (rank-2) input: fed as is, no layout change, no pre-processing."""
    w = numpy_helper.from_array(np.arange(40, dtype=np.float32).reshape(10, 4) / 10, "w")
    g = helper.make_graph([helper.make_node("MatMul", ["feat", "w"], ["y"])], "mm",
                          [helper.make_tensor_value_info("feat", TensorProto.FLOAT, [1, 10])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def test_raw_inputs_are_fed_unchanged(tmp_path, ort_reference):
    path = _raw_input_model(tmp_path / "mm.onnx")
    pkg = _package(path)
    meta = pkg.metadata["inputs"][0]
    assert meta["layout"] == "raw" and meta["preprocess"] is None and meta["dtype"] == "float32"
    sim = Simulator(pkg.model_bytes, pkg.metadata)
    x = np.linspace(-1, 1, 10, dtype=np.float32).reshape(1, 10)
    expected = ort_reference(path, {"feat": x})[0]
    np.testing.assert_allclose(sim.run([x])[0], expected, atol=1e-6, rtol=0)
    np.testing.assert_allclose(sim.run([x[0]])[0], expected, atol=1e-6, rtol=0)  # without the batch dim
    with pytest.raises(InferenceInputError, match=r"\[1, 10\]"):
        sim.run([np.zeros((1, 11), np.float32)])


def test_prepare_feeds_undoes_normalisation_for_pass_through(pkg, pixels, reference_normalise):
    fed = pixels(H, W, seed=3)
    raw = prepare_feeds([fed], pkg.metadata["inputs"])[0]
    normalised = reference_normalise(fed, MEAN, STD, [2, 1, 0])
    back = prepare_feeds([normalised], pkg.metadata["inputs"], data_type="float32", data_format="nchw",
                         pass_through=[1])[0]
    assert raw.dtype == back.dtype == np.float32 and raw.shape == back.shape == (1, H, W, 3)
    np.testing.assert_allclose(back, raw, atol=1e-3, rtol=0)


def test_a_feed_already_in_the_models_layout_is_named(pkg, pixels):
    """An array given with data_format='nchw' that is already the deployed [N, H, W, C] (an audio model's 4-D cache
    input, which the user passes as the model takes it) is refused with the format that fits; 'nhwc' takes it."""
    fed = pixels(H, W, seed=5)
    with pytest.raises(InferenceInputError, match="already the model's own layout: pass data_format='nhwc'"):
        prepare_feeds([fed], pkg.metadata["inputs"], data_format="nchw")
    assert prepare_feeds([fed], pkg.metadata["inputs"], data_format="nhwc")[0].shape == (1, H, W, 3)
    with pytest.raises(InferenceInputError, match="It looks NCHW"):
        prepare_feeds([fed.transpose(0, 3, 1, 2)], pkg.metadata["inputs"], data_format="nhwc")


def test_runtime_imports_neither_torch_onnx_nor_builder(pkg, tmp_path, pixels, python_subprocess):
    model = tmp_path / "m.rknn"
    write_package(model, pkg)
    fed = pixels(H, W, seed=4)
    np.save(tmp_path / "in.npy", fed)
    expected = Simulator(pkg.model_bytes, pkg.metadata).run([fed])[0]
    np.save(tmp_path / "expected.npy", expected)
    script = tmp_path / "board.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        import numpy as np
        from openrknn.package import read_package
        from openrknn.runtime.simulator import Simulator
        from openrknn.api import RKNN

        pkg = read_package({str(model)!r})
        out = Simulator(pkg.model_bytes, pkg.metadata).run([np.load({str(tmp_path / 'in.npy')!r})])
        rknn = RKNN()
        assert rknn.load_rknn({str(model)!r}) == 0 and rknn.init_runtime() == 0
        out2 = rknn.inference(inputs=[np.load({str(tmp_path / 'in.npy')!r})])
        np.testing.assert_array_equal(out[0], np.load({str(tmp_path / 'expected.npy')!r}))
        np.testing.assert_array_equal(out2[0], out[0])
        heavy = sorted(m for m in sys.modules
                       if m.split('.')[0] in ('torch', 'onnx', 'onnxslim') or m in ('openrknn.convert',
                       'openrknn.frontends', 'openrknn.graph', 'openrknn.quant'))
        print('HEAVY', heavy)
        sys.exit(1 if heavy else 0)
    """))
    proc = python_subprocess([script])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_package_read_back_runs_identically(pkg, tmp_path, pixels):
    write_package(tmp_path / "m.rknn", pkg)
    back = read_package(tmp_path / "m.rknn")
    fed = pixels(H, W, seed=5)
    np.testing.assert_array_equal(Simulator(back.model_bytes, back.metadata).run([fed])[0],
                                  Simulator(pkg.model_bytes, pkg.metadata).run([fed])[0])


def test_many_frames_run_concurrently_and_come_back_stacked(pkg, pixels):
    """inference() on k frames at once (a batch array) and run_many() over samples: every core runs frames, the
    outputs are those of one-frame runs, in order."""
    sim = Simulator(pkg.model_bytes, pkg.metadata, threads=2)
    frames = [pixels(H, W, seed=10 + i) for i in range(5)]
    one_by_one = [sim.run([f])[0] for f in frames]
    stacked = sim.run([np.concatenate([f.reshape(1, H, W, 3) for f in frames])])
    assert sim.workers == 2 and sim._frame_session is not None  # the concurrent path ran
    assert stacked[0].shape == (5,) + one_by_one[0].shape[1:]
    np.testing.assert_allclose(stacked[0], np.concatenate(one_by_one), rtol=1e-6, atol=1e-6)
    times = []
    many = sim.run_many([[f] for f in frames], times_ms=times)
    assert len(many) == 5 and len(times) == 5 and all(t > 0 for t in times)
    for got, want in zip(many, one_by_one):
        np.testing.assert_allclose(got[0], want, rtol=1e-6, atol=1e-6)
    with pytest.raises(InferenceInputError, match=r"k x 1 frames"):
        sim.run([np.zeros((2, H + 1, W, 3), np.uint8)])
    sim.release()
    assert sim._pool is None


def test_many_frames_need_the_same_count_on_every_input(two_input_onnx):
    built = _package(two_input_onnx)
    sim = Simulator(built.model_bytes, built.metadata, threads=2)
    metas = built.metadata["inputs"]
    one = [np.zeros(m["shape"], np.uint8 if m["layout"] == "nhwc" else np.dtype(m["dtype"])) for m in metas]
    two = [np.concatenate([a, a]) for a in one]
    assert [o.shape[0] for o in sim.run(two)] == [2 * o.shape[0] for o in sim.run(one)]
    with pytest.raises(InferenceInputError, match="same number"):
        sim.run([two[0], one[1]])


def test_frames_use_every_core_by_default(pkg, monkeypatch):
    import os

    monkeypatch.delenv("OPENRKNN_THREADS", raising=False)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert Simulator(pkg.model_bytes, pkg.metadata).workers == cores
    monkeypatch.setenv("OPENRKNN_THREADS", "3")
    assert Simulator(pkg.model_bytes, pkg.metadata).workers == 3
    assert Simulator(pkg.model_bytes, pkg.metadata, threads=2).workers == 2
