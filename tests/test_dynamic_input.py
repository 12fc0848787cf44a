"""config(dynamic_input=...): one model that takes several input shapes (rknn-toolkit2's option). Built once at the
largest set; every set runs on the simulator as onnxruntime runs the original model at that shape, after export and
load_rknn too; shapes outside the sets, bad sets and models that cannot share one build are refused clearly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import ort_run, write_npy_dataset
from openrknn.api import RKNN
from openrknn.config import make_config
from openrknn.errors import ConfigError

SETS = [[[1, 3, 12, 16]], [[1, 3, 20, 24]], [[1, 3, 8, 8]]]  # the largest, 20x24, is the base


def flattening_model(path, slice_end: int = 0):
    """x [1, 3, H, W] (symbolic H, W) -> Conv 3->8 -> Relu -> flattened to [1, 8, H*W] (the Reshape target computed
    from Shape, so it folds to a constant that follows the size) -> Sigmoid -> back to [1, 8, H, W] -> DepthToSpace
    2: [1, 2, 2H, 2W]. slice_end > 0 also slices the width to [0, slice_end): a no-op the optimiser drops where
    W <= slice_end, a real Slice elsewhere."""
    rng = np.random.default_rng(3)
    n = helper.make_node
    nodes = [n("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), n("Relu", ["c"], ["r"]),
             n("Shape", ["r"], ["shape"]), n("Slice", ["shape", "two", "four"], ["hw"]),
             n("ReduceProd", ["hw"], ["n_pos"], keepdims=1), n("Concat", ["head", "n_pos"], ["flat_shape"], axis=0),
             n("Reshape", ["r", "flat_shape"], ["flat"]), n("Sigmoid", ["flat"], ["soft"]),
             n("Reshape", ["soft", "shape"], ["back"]), n("DepthToSpace", ["back"], ["y"], blocksize=2, mode="CRD")]
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "b"),
             numpy_helper.from_array(np.array([2], np.int64), "two"),
             numpy_helper.from_array(np.array([4], np.int64), "four"),
             numpy_helper.from_array(np.array([1, 8], np.int64), "head")]
    if slice_end:
        nodes.insert(0, n("Slice", ["x_in", "zero", "end", "three"], ["x"]))
        inits += [numpy_helper.from_array(np.array([0], np.int64), "zero"),
                  numpy_helper.from_array(np.array([slice_end], np.int64), "end"),
                  numpy_helper.from_array(np.array([3], np.int64), "three")]
    source = "x_in" if slice_end else "x"
    g = helper.make_graph(nodes, "spatial", [helper.make_tensor_value_info(source, TensorProto.FLOAT,
                                                                           [1, 3, "H", "W"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, "H2", "W2"])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _pixels(shapes, seed: int) -> np.ndarray:
    _, c, h, w = shapes[0]
    return np.random.default_rng(seed).integers(0, 256, (h, w, c)).astype(np.uint8)


def _reference(path, pixels: np.ndarray) -> np.ndarray:
    x = (pixels.astype(np.float32) / 255).transpose(2, 0, 1)[None]
    return ort_run(path, {onnx.load(str(path)).graph.input[0].name: x})[0]


def _cosine(a, b) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _build(path, dataset=None, sets=SETS, **config):
    rk = RKNN(verbose=False)
    assert rk.config(target_platform="rk3588", mean_values=[[0] * 3], std_values=[[255] * 3], dynamic_input=sets,
                     **config) == 0, rk.last_error
    assert rk.load_onnx(str(path)) == 0, rk.last_error  # no input_size_list: loaded at the largest set
    assert rk.build(do_quantization=dataset is not None, dataset=str(dataset) if dataset else None) == 0, \
        rk.last_error
    return rk


@pytest.mark.parametrize("quantized", [False, True])
def test_every_set_runs_as_onnxruntime_runs_the_model_at_that_shape(tmp_path, quantized):
    path = flattening_model(tmp_path / "m.onnx")
    dataset = write_npy_dataset(tmp_path, [20, 24, 3], n=8) if quantized else None  # at the base set
    rk = _build(path, dataset)
    rk.export_rknn(str(tmp_path / "m.rknn"))
    loaded = RKNN(verbose=False)
    assert loaded.load_rknn(str(tmp_path / "m.rknn")) == 0
    for r in (rk, loaded):
        assert r.init_runtime() == 0
        for k, shapes in enumerate(SETS):
            pixels = _pixels(shapes, k)
            want = _reference(path, pixels)
            got = np.asarray(r.inference(inputs=[pixels])[0])
            assert got.shape == want.shape == (1, 2, 2 * shapes[0][2], 2 * shapes[0][3])
            if quantized:
                assert _cosine(got, want) > 0.99
            else:
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        # several sets in one call: each sample on its own set, in order
        mixed = [[_pixels(SETS[0], 5)], [_pixels(SETS[1], 6)], [_pixels(SETS[0], 7)]]
        outs = r._runtime.run_many(mixed)
        assert [o[0].shape[2] for o in outs] == [24, 40, 24]
        r.release()
    rk.release()


def test_the_file_records_each_set_and_info_shows_them(tmp_path):
    from openrknn.package import read_package
    from openrknn.package_info import describe_package

    rk = _build(flattening_model(tmp_path / "m.onnx"))
    rk.export_rknn(str(tmp_path / "m.rknn"))
    rk.release()
    pkg = read_package(str(tmp_path / "m.rknn"))
    entry = pkg.metadata["dynamic_input"]
    assert entry["base"] == 1 and [e["shapes"] for e in entry["sets"]] == SETS
    assert pkg.metadata["inputs"][0]["shape"] == [1, 20, 24, 3]  # the base set is what the file's inputs say
    small = entry["sets"][2]
    assert small["inputs"][0]["shape"] == [1, 8, 8, 3] and small["outputs"][0]["shape"] == [1, 2, 16, 16]
    # the two Reshape targets followed the size: [1, 8, H*W] and back to [1, 8, H, W]
    assert sorted(c["values"] for c in small["patch"]["constants"].values()) == [[1, 8, 8, 8], [1, 8, 64]]
    text = describe_package(pkg)
    assert "input shape sets (3" in text and "[1, 3, 8, 8]: deployed [1, 8, 8, 3] -> [1, 2, 16, 16]" in text
    assert "[1, 3, 20, 24]: deployed [1, 20, 24, 3] -> [1, 2, 40, 48] (built and calibrated here)" in text


def test_a_shape_outside_the_sets_is_refused_with_the_sets_it_takes(tmp_path):
    rk = _build(flattening_model(tmp_path / "m.onnx"))
    rk.init_runtime()
    assert rk.inference(inputs=[np.zeros((10, 10, 3), np.uint8)]) is None
    msg = str(rk.last_error)
    assert "[10, 10, 3]" in msg and "[1, 12, 16, 3], [1, 20, 24, 3], [1, 8, 8, 3]" in msg and "dynamic_input" in msg
    rk.release()


def test_pytorch_models_take_shape_sets_too(tmp_path, torch_mod):
    torch = torch_mod
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 12, 3, padding=1), torch.nn.ReLU(), torch.nn.PixelShuffle(2)).eval()
    torch.jit.trace(net, torch.rand(1, 3, 8, 8)).save(str(tmp_path / "sr.pt"))
    rk = RKNN(verbose=False)
    rk.config(target_platform="rk3588", mean_values=[[0] * 3], std_values=[[255] * 3],
              dynamic_input=[[[1, 3, 8, 8]], [[1, 3, 16, 24]]])
    assert rk.load_pytorch(str(tmp_path / "sr.pt")) == 0, rk.last_error  # no input_size_list needed
    assert rk.build(do_quantization=False) == 0, rk.last_error
    rk.init_runtime()
    for h, w in ((8, 8), (16, 24)):
        pixels = np.random.default_rng(h).integers(0, 256, (h, w, 3)).astype(np.uint8)
        with torch.no_grad():
            want = net(torch.from_numpy(pixels.astype(np.float32) / 255).permute(2, 0, 1)[None]).numpy()
        np.testing.assert_allclose(rk.inference(inputs=[pixels])[0], want, rtol=1e-5, atol=1e-6)
    rk.release()


def test_a_model_whose_structure_follows_the_size_is_refused(tmp_path):
    # the width Slice [0, 16) is a no-op at widths <= 16 (dropped) and a real Slice at 24: no shared build
    path = flattening_model(tmp_path / "m.onnx", slice_end=16)
    with RKNN(verbose=False) as rk:
        rk.config(target_platform="rk3588", dynamic_input=[[[1, 3, 12, 16]], [[1, 3, 20, 24]]])
        assert rk.load_onnx(str(path)) == 0
        assert rk.build(do_quantization=False) != 0
        msg = str(rk.last_error)
    assert "dynamic_input" in msg and "1x3x12x16" in msg and "build one model per shape set" in msg


@pytest.mark.parametrize("bad, says", [
    ([[1, 3, 8, 8]], "is not a list of shapes"),
    ([[[1, 3, 8, 0]]], "not a shape of positive integers"),
    ([[[1, 3, 8, 8]], [[1, 3, 8]]], "every set lists each model input once"),
    ([[[1, 3, 8, 8]], [[1, 3, 8, 8]]], "repeats an earlier set"),
    ("1x3x8x8", "a list of input shape sets"),
])
def test_bad_shape_sets_are_refused_at_config(bad, says):
    with pytest.raises(ConfigError, match=says):
        make_config(dynamic_input=bad)


def test_a_set_the_model_cannot_take_is_refused_naming_it(tmp_path):
    with RKNN(verbose=False) as rk:
        rk.config(target_platform="rk3588",
                  dynamic_input=[[[1, 3, 8, 8], [1, 3, 8, 8]], [[1, 3, 4, 4], [1, 3, 4, 4]]])
        assert rk.load_onnx(str(flattening_model(tmp_path / "m.onnx"))) != 0
        assert "largest shape set" in str(rk.last_error) and "2 shapes" in str(rk.last_error)


def test_batched_and_hybrid_step_builds_say_they_take_one_set(tmp_path):
    path = flattening_model(tmp_path / "m.onnx")
    dataset = write_npy_dataset(tmp_path, [20, 24, 3], n=2)
    with RKNN(verbose=False) as rk:
        rk.config(target_platform="rk3588", dynamic_input=SETS)
        rk.load_onnx(str(path))
        assert rk.build(dataset=str(dataset), rknn_batch_size=2) != 0
        assert "rknn_batch_size" in str(rk.last_error)
        assert rk.hybrid_quantization_step1(dataset=str(dataset), output_dir=str(tmp_path)) != 0
        assert "auto_hybrid=True" in str(rk.last_error)


def test_the_command_line_converts_shape_sets_and_runs_images_of_each(tmp_path, capsys):
    import cv2
    import yaml

    from openrknn.cli import main

    path = flattening_model(tmp_path / "m.onnx")
    spec = {"model": path.name, "output": "m.rknn",
            "config": {"target_platform": "rk3588", "mean_values": [0, 0, 0], "std_values": [255, 255, 255],
                       "dynamic_input": SETS}}
    (tmp_path / "m.yml").write_text(yaml.safe_dump(spec))
    assert main(["convert", str(tmp_path / "m.yml")]) == 0
    assert "input shape sets (3" in (main(["info", str(tmp_path / "m.rknn")]) == 0 and capsys.readouterr().out)
    images = []
    for k, (h, w) in enumerate([(8, 8), (20, 24), (30, 30)]):  # two sets as they are, one resized to the base
        rgb = np.random.default_rng(k).integers(0, 256, (h, w, 3)).astype(np.uint8)
        cv2.imwrite(str(tmp_path / f"i{k}.png"), rgb[:, :, ::-1])
        images.append(rgb)
    assert main(["run", str(tmp_path / "m.rknn"), *(str(tmp_path / f"i{k}.png") for k in range(3)),
                 "--out", str(tmp_path / "out")]) == 0
    for k, side in enumerate((16, 40, 40)):
        assert np.load(tmp_path / "out" / f"i{k}_out0.npy").shape[2] == side
    np.testing.assert_allclose(np.load(tmp_path / "out" / "i0_out0.npy"), _reference(path, images[0]), atol=1e-5)


def test_a_board_through_the_runtime_server_takes_every_set(tmp_path, monkeypatch):
    from test_remote_support import ServerProcess

    path = flattening_model(tmp_path / "m.onnx")
    rk = _build(path)
    rk.export_rknn(str(tmp_path / "m.rknn"))
    rk.release()
    (tmp_path / "server").mkdir()
    srv = ServerProcess(tmp_path / "server")
    try:
        monkeypatch.setenv("OPENRKNN_TOKEN", srv.token)
        monkeypatch.setenv("OPENRKNN_DEVICES", str(srv.folder / "no-devices.json"))
        monkeypatch.setenv("OPENRKNN_ADB", str(srv.folder / "no-adb"))
        r = RKNN(verbose=False)
        assert r.load_rknn(str(tmp_path / "m.rknn")) == 0
        assert r.init_runtime(target="rk3588", device_id=f"127.0.0.1:{srv.port}") == 0, r.last_error
        for k, shapes in enumerate(SETS):
            pixels = _pixels(shapes, k)
            np.testing.assert_allclose(r.inference(inputs=[pixels])[0], _reference(path, pixels), rtol=1e-5,
                                       atol=1e-6)
        assert r.inference(inputs=[np.zeros((10, 10, 3), np.uint8)]) is None
        assert "[1, 8, 8, 3]" in str(r.last_error)
        r.release()
    finally:
        srv.stop()


def test_accuracy_analysis_runs_at_the_set_of_its_sample(tmp_path):
    path = flattening_model(tmp_path / "m.onnx")
    rk = _build(path, write_npy_dataset(tmp_path, [20, 24, 3], n=4))
    rk.init_runtime()
    for k, shapes in enumerate(SETS):
        assert rk.accuracy_analysis(inputs=[_pixels(shapes, k)], output_dir=str(tmp_path / f"aa{k}")) == 0, \
            rk.last_error
        dumps = tmp_path / f"aa{k}" / "dumps"
        _, _, h, w = shapes[0]
        assert np.load(dumps / "y.quant.npy").shape == np.load(dumps / "y.float.npy").shape == (1, 2, 2 * h, 2 * w)
        np.testing.assert_allclose(np.load(dumps / "y.float.npy"), _reference(path, _pixels(shapes, k)), atol=1e-5)
    rk.release()


def test_the_wire_level_patch_writes_what_onnx_reads():
    """runtime/graph_edit.patch_model (the board has no onnx package): dims, initializers and every attribute kind a
    patch carries, read back with onnx."""
    from openrknn.runtime.graph_edit import patch_model

    n = helper.make_node
    nodes = [n("Constant", [], ["c"], name="const", value=numpy_helper.from_array(np.ones(2, np.float32))),
             n("AveragePool", ["x"], ["p"], name="pool", kernel_shape=[2, 2]),
             n("LeakyRelu", ["p"], ["l"], name="leaky", alpha=0.1), n("Reshape", ["l", "shape"], ["y"], name="flat")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 9])],
                          [numpy_helper.from_array(np.array([1, 9], np.int64), "shape")],
                          value_info=[helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, 1, 3, 3])])
    raw = helper.make_model(g).SerializeToString()
    out = onnx.ModelProto()
    out.ParseFromString(patch_model(raw, {"x": [1, 1, 6, 6], "y": [1, 16]},
                                    {"shape": np.array([1, 16], np.int64)},
                                    {"pool": {"kernel_shape": [3, 3]}, "leaky": {"alpha": -0.25},
                                     "const": {"value": np.full(3, 2.0, np.float32)}}))
    onnx.checker.check_model(out)
    graph = out.graph
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == [1, 1, 6, 6]
    assert graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert [d.dim_value for d in graph.output[0].type.tensor_type.shape.dim] == [1, 16] and not graph.value_info
    assert numpy_helper.to_array(graph.initializer[0]).tolist() == [1, 16]
    attrs = {nd.name: {a.name: helper.get_attribute_value(a) for a in nd.attribute} for nd in graph.node}
    assert attrs["pool"]["kernel_shape"] == [3, 3] and abs(attrs["leaky"]["alpha"] + 0.25) < 1e-7
    assert numpy_helper.to_array(attrs["const"]["value"]).tolist() == [2.0, 2.0, 2.0]
    y = ort_run(out, {"x": np.arange(36, dtype=np.float32).reshape(1, 1, 6, 6)})[0]
    assert y.shape == (1, 16)
    with pytest.raises(Exception, match="no initializer or node named"):
        patch_model(raw, {}, {"absent": np.zeros(1, np.float32)}, {})


def test_a_board_without_onnx_runs_every_set(tmp_path, python_subprocess):
    import textwrap

    path = flattening_model(tmp_path / "m.onnx")
    rk = _build(path)
    rk.export_rknn(str(tmp_path / "m.rknn"))
    rk.release()
    for k, shapes in enumerate(SETS):
        np.save(tmp_path / f"in{k}.npy", _pixels(shapes, k))
        np.save(tmp_path / f"want{k}.npy", _reference(path, _pixels(shapes, k)))
    script = tmp_path / "board.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        import numpy as np
        from openrknn.api import RKNN

        rknn = RKNN()
        assert rknn.load_rknn({str(tmp_path / 'm.rknn')!r}) == 0 and rknn.init_runtime() == 0
        for k in range({len(SETS)}):
            out = rknn.inference(inputs=[np.load({str(tmp_path)!r} + f'/in{{k}}.npy')])[0]
            np.testing.assert_allclose(out, np.load({str(tmp_path)!r} + f'/want{{k}}.npy'), rtol=1e-5, atol=1e-6)
        heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnx', 'onnxslim'))
        print('HEAVY', heavy)
        sys.exit(1 if heavy else 0)
    """))
    proc = python_subprocess([script])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_perf_estimates_every_set(tmp_path):
    from openrknn.analysis.package_reports import eval_perf

    rk = _build(flattening_model(tmp_path / "m.onnx"))
    report = eval_perf(rk._package, None, None, False, False)
    by_set = {e["set"]: e for e in report["shape_sets"]}
    assert list(by_set) == ["1x3x12x16", "1x3x20x24", "1x3x8x8"]
    assert by_set["1x3x20x24"]["total_us"] == report["npu_estimate"]["total_us"]  # the base set is the table's
    # the work grows with the pixels: 8x8 < 12x16 < 20x24
    assert by_set["1x3x8x8"]["total_us"] < by_set["1x3x12x16"]["total_us"] < by_set["1x3x20x24"]["total_us"]
    rk.release()


def test_each_set_exports_to_its_own_tflite(tmp_path, capsys):
    pytest.importorskip("ai_edge_litert")
    from openrknn.cli import main
    from openrknn.runtime.tflite_runner import TfliteRunner

    path = flattening_model(tmp_path / "m.onnx")
    rk = _build(path, write_npy_dataset(tmp_path, [20, 24, 3], n=8), quantized_dtype="w8a8")
    rk.export_rknn(str(tmp_path / "m.rknn"))
    rk.init_runtime()
    assert rk.export_tflite(str(tmp_path / "small.tflite"), shape_set="1x3x8x8") == 0, rk.last_error
    pixels = _pixels(SETS[2], 2)
    got = TfliteRunner(str(tmp_path / "small.tflite")).run([pixels[None]])[0]
    assert _cosine(got, rk.inference(inputs=[pixels])[0]) > 0.999
    assert rk.export_tflite(str(tmp_path / "x.tflite"), shape_set="1x3x9x9") != 0
    assert "1x3x8x8" in str(rk.last_error) and not (tmp_path / "x.tflite").exists()
    rk.release()
    # the command line: --shape-set by label or index
    out = str(tmp_path / "mid.tflite")
    assert main(["export-tflite", str(tmp_path / "m.rknn"), "-o", out, "--shape-set", "0"]) == 0
    got = TfliteRunner(str(tmp_path / "mid.tflite")).run([_pixels(SETS[0], 0)[None]])[0]
    assert np.shape(got) == (1, 2, 24, 32)
    assert _cosine(got, _reference(path, _pixels(SETS[0], 0))) > 0.99


@pytest.mark.slow
@pytest.mark.parametrize("route", ["qdq", "ranges"])
def test_rknn_toolkit2_compiles_any_one_set(tmp_path, route):
    """vendor-export of a set other than the base: rknn-toolkit2 compiles that set's graph (our quantization) and
    its simulator agrees with ours at that shape."""
    import json
    import os

    from openrknn.vendor import VendorToolkitError, export_vendor, find_vendor_python

    try:
        vendor = find_vendor_python()
    except VendorToolkitError as e:
        if os.environ.get("CI"):
            pytest.fail(f"CI must install the vendor toolkit (.ci/run: openrknn vendor-setup): {e}")
        pytest.skip(f"vendor toolkit not installed: {e}")
    import cv2

    path = flattening_model(tmp_path / "m.onnx")
    rk = _build(path, write_npy_dataset(tmp_path, [20, 24, 3], n=8))
    rk.export_rknn(str(tmp_path / "m.rknn"))
    rk.release()
    images = []
    for k in range(3):
        cv2.imwrite(str(tmp_path / f"v{k}.png"), _pixels(SETS[2], 10 + k)[:, :, ::-1])
        images.append(tmp_path / f"v{k}.png")
    out = tmp_path / "small.vendor.rknn"
    # the build's .npy calibration samples are at the base set: the vendor's own calibration (the tensors it
    # quantizes that the package does not) takes the validation images, at this set
    export_vendor(tmp_path / "m.rknn", out, validate=images, route=route, shape_set="1x3x8x8", vendor=vendor)
    assert out.read_bytes()[:4] == b"RKNN"
    report = json.loads(Path(str(out) + ".validation.json").read_text())
    assert report["samples"] == 3 and all(o["cosine_min"] >= 0.99 for o in report["outputs"]), report


def test_one_shape_exports_say_which_set_they_took(tmp_path, rknn_log, monkeypatch):
    from openrknn.export.tflite import export_tflite
    from openrknn.package import read_package
    from openrknn.vendor import VendorToolkitError, export_vendor

    pytest.importorskip("tflite")
    rk = _build(flattening_model(tmp_path / "m.onnx"), write_npy_dataset(tmp_path, [20, 24, 3], n=4))
    rk.export_rknn(str(tmp_path / "m.rknn"))
    rk.release()
    pkg = read_package(str(tmp_path / "m.rknn"))
    export_tflite(pkg, str(tmp_path / "m.tflite"))
    monkeypatch.setenv("OPENRKNN_VENDOR_PYTHON", str(tmp_path / "no-python"))
    with pytest.raises(VendorToolkitError):
        export_vendor(pkg, tmp_path / "v.rknn")
    notes = [r.getMessage() for r in rknn_log.records if "covers the base shape set 1x3x20x24" in r.getMessage()]
    assert len(notes) == 2 and "--shape-set" in notes[0] and "--shape-set" in notes[1]


def test_a_model_of_two_inputs_takes_sets_that_differ_in_one(tmp_path):
    """An image of any set's size and a size vector [1, 2] (a DETR's original-size input): each set lists both."""
    rng = np.random.default_rng(5)
    n = helper.make_node
    nodes = [n("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), n("ReduceMean", ["c"], ["m"], axes=[2, 3], keepdims=0),
             n("MatMul", ["s", "k"], ["z"]), n("Add", ["m", "z"], ["y"])]
    g = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "H", "W"]),
                                         helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
                          [numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w"),
                           numpy_helper.from_array(rng.normal(0, 0.01, (2, 8)).astype(np.float32), "k")])
    path = tmp_path / "two.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    sets = [[[1, 3, 8, 8], [1, 2]], [[1, 3, 16, 12], [1, 2]]]
    rk = RKNN(verbose=False)
    assert rk.config(target_platform="rk3588", mean_values=[[0] * 3, [0]], std_values=[[255] * 3, [1]],
                     dynamic_input=sets) == 0
    assert rk.load_onnx(str(path)) == 0, rk.last_error
    assert rk.build(do_quantization=False) == 0, rk.last_error
    rk.init_runtime()
    size = np.array([[480.0, 640.0]], np.float32)
    for k, shapes in enumerate(sets):
        pixels = _pixels(shapes, k)
        want = ort_run(path, {"x": (pixels.astype(np.float32) / 255).transpose(2, 0, 1)[None], "s": size})[0]
        np.testing.assert_allclose(rk.inference(inputs=[pixels, size])[0], want, rtol=1e-5, atol=1e-5)
    rk.release()


def test_eval_perf_at_the_set_of_its_inputs_and_npy_samples_of_another_set(tmp_path):
    path = flattening_model(tmp_path / "m.onnx")
    rk = _build(path)
    rk.init_runtime()
    report = rk.eval_perf(inputs=[_pixels(SETS[2], 0)], is_print=False)
    assert report["npu_estimate"]["total_us"] == {e["set"]: e for e in report["shape_sets"]}["1x3x8x8"]["total_us"]
    rk.release()
    with RKNN(verbose=False) as rk:
        rk.config(target_platform="rk3588", dynamic_input=SETS)
        rk.load_onnx(str(path))
        assert rk.build(dataset=str(write_npy_dataset(tmp_path, [8, 8, 3], n=2))) != 0  # samples of a smaller set
        assert "calibrates at the largest set, 1x3x20x24" in str(rk.last_error)


def test_a_set_whose_values_leave_the_calibrated_ranges_is_named(tmp_path, rknn_log):
    """A softmax over the positions: at 8x8 its values are several times those at 20x24, where the build calibrated.
    The build says which tensors of which set reach past their range, the file keeps it and info shows it; the
    sigmoid twin, whose ranges do not follow the size, reports none."""
    import cv2

    from openrknn.package_info import describe_package

    for k in range(6):
        cv2.imwrite(str(tmp_path / f"c{k}.png"), _pixels(SETS[1], 20 + k))
    (tmp_path / "images.txt").write_text("".join(f"c{k}.png\n" for k in range(6)))
    soft = flattening_model(tmp_path / "sigmoid.onnx")
    m = onnx.load(str(soft))
    node = next(n for n in m.graph.node if n.op_type == "Sigmoid")
    node.op_type = "Softmax"
    node.attribute.append(helper.make_attribute("axis", 2))
    onnx.save(m, str(tmp_path / "softmax.onnx"))
    found = {}
    for name in ("sigmoid", "softmax"):
        rk = _build(tmp_path / f"{name}.onnx", tmp_path / "images.txt")
        found[name] = {e["shapes"][0][2]: e.get("clipped") for e in rk._package.metadata["dynamic_input"]["sets"]}
        text = describe_package(rk._package)
        rk.release()
    assert found["sigmoid"] == {12: [], 20: None, 8: []}  # checked at both other sets, nothing past its range
    assert found["softmax"][20] is None and {c["tensor"] for c in found["softmax"][8]} >= {"soft"}
    assert min(c["factor"] for c in found["softmax"][8]) >= 1.25
    assert "reach past their quantized range, worst" in text
    said = [r.getMessage() for r in rknn_log.records]
    assert any("at 1x3x8x8" in m and "reach past their quantized range" in m for m in said)


@pytest.mark.parametrize("damage, says", [
    (lambda d: d.update(base=7), "dynamic_input.base"),
    (lambda d: d["sets"][0].pop("inputs"), "has no 'inputs'"),
    (lambda d: d["sets"][0].update(patch=[]), "patch"),
    (lambda d: d["sets"][0].update(clipped=[{"tensor": 3}]), "clipped"),
])
def test_a_damaged_shape_set_record_is_refused_on_read(tmp_path, damage, says):
    from openrknn.errors import PackageError
    from openrknn.package import read_package, write_package

    rk = _build(flattening_model(tmp_path / "m.onnx"))
    pkg = rk._package
    rk.release()
    damage(pkg.metadata["dynamic_input"])
    with pytest.raises(PackageError, match=says):
        write_package(tmp_path / "bad.rknn", pkg)  # the writer runs the reader's checks: nothing half-valid is written
        read_package(tmp_path / "bad.rknn")


def test_the_html_report_lists_the_sets_and_each_sets_speed(tmp_path):
    from openrknn.analysis.report import model_report

    rk = _build(flattening_model(tmp_path / "m.onnx"))
    html_text = model_report(rk._package, tmp_path / "report.html").read_text()
    rk.release()
    assert "Input shape sets (dynamic_input)" in html_text and "Every input shape set" in html_text
    for label in ("1x3x12x16", "1x3x20x24", "1x3x8x8"):
        assert html_text.count(f"<td>{label}</td>") == 2  # in the model's table and the speed table
    assert "built and calibrated here" in html_text and "NPU estimate (board-free), set 1x3x20x24" in html_text
