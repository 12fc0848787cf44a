"""Vendor export: the job format, the graph surgery, the runner on old Pythons, and real rknn-toolkit2 builds.

The real-toolkit tests need the vendor venv (`openrknn vendor-setup`, or OPENRKNN_VENDOR_PYTHON). They skip on a
developer machine without it and FAIL under CI (CI=true), where .ci/run installs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from openrknn.api import RKNN
from openrknn.package import read_package
from openrknn.vendor import VendorToolkitError, find_vendor_python
from openrknn.vendor.job import ValidateSpec, VendorJob
from openrknn.vendor.prepare import activation_ranges, prepare
from openrknn.vendor.export import RUNNER

rng = np.random.default_rng(0)


def _conv(name, x, cin, cout, k=3):
    w = numpy_helper.from_array((rng.standard_normal((cout, cin, k, k)) * 0.3).astype(np.float32), name + "_w")
    b = numpy_helper.from_array((rng.standard_normal(cout) * 0.1).astype(np.float32), name + "_b")
    return helper.make_node("Conv", [x, name + "_w", name + "_b"], [name], pads=[k // 2] * 4), [w, b]


def tiny_detector(path: Path) -> Path:
    """conv-relu -> two heads: 'box' (pixel scale, linear) and 'score' (sigmoid), concatenated like a detector."""
    n1, i1 = _conv("c1", "x", 3, 8)
    nodes = [n1, helper.make_node("Relu", ["c1"], ["r1"])]
    nb, ib = _conv("box", "r1", 8, 4, 1)
    ns, is_ = _conv("cls", "r1", 8, 2, 1)
    nodes += [nb, helper.make_node("Mul", ["box", "k"], ["box_px"]), ns,
              helper.make_node("Sigmoid", ["cls"], ["score"]),
              helper.make_node("Concat", ["box_px", "score"], ["y"], axis=1)]
    k = numpy_helper.from_array(np.float32(40.0), "k")
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], i1 + ib + is_ + [k])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def tiny_csp(path: Path) -> Path:
    """SiLU blocks as in YOLOX: conv-SiLU, conv-SiLU, a depthwise conv-SiLU whose output a residual Add joins with
    the first SiLU output (which a conv also reads: the pattern the vendor compiler crashed on), then a conv."""
    def silu(x, y):
        return [helper.make_node("Sigmoid", [x], [x + "_sig"]), helper.make_node("Mul", [x, x + "_sig"], [y])]

    n1, i1 = _conv("c1", "x", 3, 8)
    n2, i2 = _conv("c2", "a", 8, 8, 1)
    w3 = numpy_helper.from_array((rng.standard_normal((8, 1, 3, 3)) * 0.5).astype(np.float32), "dw_w")
    b3 = numpy_helper.from_array((rng.standard_normal(8) * 0.1).astype(np.float32), "dw_b")
    n3 = helper.make_node("Conv", ["b", "dw_w", "dw_b"], ["dw"], pads=[1] * 4, group=8)
    n4, i4 = _conv("head", "d", 8, 4, 1)
    nodes = [n1, *silu("c1", "a"), n2, *silu("c2", "b"), n3, *silu("dw", "c"),
             helper.make_node("Add", ["a", "c"], ["d"]), n4]
    g = helper.make_graph(nodes, "csp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                          [helper.make_tensor_value_info("head", TensorProto.FLOAT, None)], i1 + i2 + [w3, b3] + i4)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def write_images(folder: Path, n: int = 6) -> Path:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for k in range(n):
        p = folder / f"img{k}.png"
        yy, xx = np.mgrid[0:16, 0:16]
        img = np.stack([(xx * 15 + k * 20) % 256, (yy * 15) % 256, ((xx + yy) * 8 + k * 30) % 256], -1)
        cv2.imwrite(str(p), img.astype(np.uint8))
        lines.append(p.name)
    (folder / "dataset.txt").write_text("\n".join(lines) + "\n")
    return folder / "dataset.txt"


@pytest.fixture(scope="module")
def tiny_package(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("vendor_tiny")
    model = tiny_detector(d / "tiny.onnx")
    ds = write_images(d / "imgs")
    rknn = RKNN()
    rknn.config(mean_values=[[10, 20, 30]], std_values=[[50, 60, 70]], target_platform="rk3588")
    assert rknn.load_onnx(str(model)) == 0
    assert rknn.build(do_quantization=True, dataset=str(ds)) == 0
    assert rknn.export_rknn(str(d / "tiny.rknn")) == 0
    rknn.release()
    return d / "tiny.rknn"


@pytest.fixture(scope="module")
def csp_package(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("vendor_csp")
    model = tiny_csp(d / "csp.onnx")
    ds = write_images(d / "imgs")
    rknn = RKNN()
    rknn.config(mean_values=[[0, 0, 0]], std_values=[[255, 255, 255]], target_platform="rk3588")
    assert rknn.load_onnx(str(model)) == 0
    assert rknn.build(do_quantization=True, dataset=str(ds)) == 0
    assert rknn.export_rknn(str(d / "csp.rknn")) == 0
    rknn.release()
    return d / "csp.rknn"


@pytest.fixture(scope="module")
def hybrid_package(tmp_path_factory, csp_package) -> Path:
    """The CSP model through our hybrid quantization: the SiLU output 'b' kept in 16 bits."""
    import yaml

    d = tmp_path_factory.mktemp("vendor_hybrid")
    rknn = RKNN()
    rknn.config(mean_values=[[0, 0, 0]], std_values=[[255, 255, 255]], target_platform="rk3588")
    assert rknn.load_onnx(str(csp_package.parent / "csp.onnx")) == 0
    assert rknn.hybrid_quantization_step1(dataset=str(csp_package.parent / "imgs" / "dataset.txt"),
                                          output_dir=str(d)) == 0
    cfg = next(d.glob("*.quantization.cfg"))
    doc = yaml.safe_load(cfg.read_text())
    doc["custom_quantize_layers"] = {"b": "int16"}
    cfg.write_text(yaml.safe_dump(doc))
    r2 = RKNN()
    assert r2.hybrid_quantization_step2(str(next(d.glob("*.model"))), str(next(d.glob("*.data"))), str(cfg)) == 0
    assert r2.export_rknn(str(d / "hybrid.rknn")) == 0
    return d / "hybrid.rknn"


def tiny_recurrent(path: Path) -> Path:
    """A CRNN in small: conv-relu over a 16-pixel-high strip, its columns as a sequence into an LSTM whose node
    spells out layout=0 (as PyTorch's export of a two-layer LSTM does), a linear head per step."""
    n1, i1 = _conv("c1", "x", 3, 4)
    w = numpy_helper.from_array((rng.standard_normal((1, 32, 64)) * 0.2).astype(np.float32), "lstm_w")
    r = numpy_helper.from_array((rng.standard_normal((1, 32, 8)) * 0.2).astype(np.float32), "lstm_r")
    head = numpy_helper.from_array((rng.standard_normal((8, 5)) * 0.5).astype(np.float32), "head_w")
    shape = numpy_helper.from_array(np.array([64, 16], np.int64), "seq_shape")
    nodes = [n1, helper.make_node("Relu", ["c1"], ["r1"]), helper.make_node("Reshape", ["r1", "seq_shape"], ["f"]),
             helper.make_node("Transpose", ["f"], ["seq"], perm=[1, 0]),
             helper.make_node("Unsqueeze", ["seq", "one"], ["seq3"]),
             helper.make_node("LSTM", ["seq3", "lstm_w", "lstm_r"], ["h"], hidden_size=8, layout=0),
             helper.make_node("Squeeze", ["h", "one"], ["h2"]), helper.make_node("MatMul", ["h2", "head_w"], ["y"])]
    one = numpy_helper.from_array(np.array([1], np.int64), "one")
    g = helper.make_graph(nodes, "crnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], i1 + [w, r, head, shape, one])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


# ---------------------------------------------------------------- job format


def test_job_round_trips_through_json():
    job = VendorJob(toolkit="rknn-toolkit2", route="ranges", model="m.onnx", config={"target_platform": "rk3588"},
                    inputs=["x"], input_size_list=[[1, 3, 8, 8]], outputs=["y"], export="v.rknn", dataset="d.txt",
                    ranges={"t": [-1.0, 2.0]}, validate=ValidateSpec([["a.npy"]], ["a"], "out"))
    back = VendorJob.from_json(job.to_json())
    assert back == job and isinstance(back.validate, ValidateSpec)


@pytest.mark.parametrize("change, message", [({"toolkit": "rknn-toolkit3"}, "toolkit"),
                                             ({"route": "magic"}, "route"),
                                             ({"route": "ranges", "dataset": None}, "dataset")])
def test_job_refuses_bad_values(change, message):
    base = dict(toolkit="rknn-toolkit2", route="qdq", model="m.onnx", config={}, inputs=["x"],
                input_size_list=[[1, 3, 8, 8]], outputs=["y"], export="v.rknn")
    with pytest.raises(ValueError, match=message):
        VendorJob(**{**base, **change})


def test_job_refuses_another_version():
    text = json.dumps({"version": 99})
    with pytest.raises(ValueError, match="version"):
        VendorJob.from_json(text)


# ---------------------------------------------------------------- graph surgery


def test_prepare_moves_preprocessing_to_config_and_cuts_the_mixed_tail(tiny_package):
    pkg = read_package(tiny_package)
    vm = prepare(pkg, "qdq")
    g = vm.onnx_model.graph
    assert [d.dim_value for d in g.input[0].type.tensor_type.shape.dim] == [1, 3, 16, 16]  # NCHW for the vendor
    assert not any(n.op_type == "Transpose" for n in g.node)
    assert vm.mean_values == [[10.0, 20.0, 30.0]] or vm.std_values != [[1.0, 1.0, 1.0]]
    # box and score parts keep their own scales: they are separate vendor outputs, the Concat runs on the host
    assert len(vm.outputs) == 2 and vm.post is not None
    assert [n.op_type for n in vm.post.graph.node] == ["Concat"]
    # int8 storage, same grid
    zps = [numpy_helper.to_array(t) for t in g.initializer if t.name.endswith("__zp")]
    assert all(z.dtype != np.uint8 for z in zps)


def test_prepared_graph_plus_tail_equals_the_package(tiny_package):
    """The vendor's model (QDQ, int8 storage, cut input pre-processing) followed by the host tail computes what
    openrknn's simulator computes (mean/std applied here as the vendor's config would). Route qdq needs an int8
    quantizer before the score head's sigmoid, which the package has not (the chip computes the conv and its sigmoid
    as one step, quant/plan.py): the boxes agree exactly, the scores within that one rounding of the logit."""
    import onnxruntime as ort

    from openrknn.runtime.simulator import Simulator
    from openrknn.vendor.export import run_post

    pkg = read_package(tiny_package)
    sig_inputs = {n.input[0] for n in onnx.load_from_string(pkg.model_bytes).graph.node if n.op_type == "Sigmoid"}
    producers = {o: n.op_type for n in onnx.load_from_string(pkg.model_bytes).graph.node for o in n.output}
    assert sig_inputs and all(producers[t] == "Conv" for t in sig_inputs)
    vm = prepare(pkg, "qdq")
    made = {o: n for n in vm.onnx_model.graph.node for o in n.output}
    sig = next(n for n in vm.onnx_model.graph.node if n.op_type == "Sigmoid")
    assert made[sig.input[0]].op_type == "DequantizeLinear"
    step = float(numpy_helper.to_array(next(i for i in vm.onnx_model.graph.initializer
                                            if i.name == made[sig.input[0]].input[1])))
    x = rng.integers(0, 256, (1, 16, 16, 3)).astype(np.uint8)
    ours = Simulator(pkg.model_bytes, pkg.metadata).run([x])[0]
    sess = ort.InferenceSession(vm.onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    nchw = x.transpose(0, 3, 1, 2).astype(np.float32)
    mean = np.asarray(vm.mean_values[0], np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(vm.std_values[0], np.float32).reshape(1, -1, 1, 1)
    raw = sess.run(vm.outputs, {vm.input_names[0]: (nchw - mean) / std})
    final = run_post(vm.post, vm.outputs, raw)[0]
    # the boxes: equal, but for a value on an exact tie between two levels, which may round either way: the vendor
    # graph stores int8 and onnxruntime's int8 and uint8 conv kernels part at a tie (here, since the input point's
    # range became the pixels' whole range, 1 box value of 1024, whose conv sum is 79.5 levels)
    box_step = np.abs(np.diff(np.unique(ours[:, :4]))).min()
    apart = np.abs(final[:, :4] - ours[:, :4])
    assert np.all((apart <= 1e-4) | (np.abs(apart - box_step) <= 1e-4))
    assert np.count_nonzero(apart > 1e-4) <= apart.size // 100
    out_step = np.abs(np.diff(np.unique(ours[:, 4:]))).min()  # the scores' own int8 step
    np.testing.assert_allclose(final[:, 4:], ours[:, 4:], atol=0.25 * step / 2 + out_step + 1e-6)


def test_route_ranges_strips_qdq_and_keeps_every_range(tiny_package):
    pkg = read_package(tiny_package)
    ranges, wide = activation_ranges(onnx.load_from_string(pkg.model_bytes))
    vm = prepare(pkg, "ranges")
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in vm.onnx_model.graph.node)
    assert set(vm.ranges) == set(ranges) and not wide
    for lo, hi in vm.ranges.values():
        assert lo <= 0.0 <= hi  # asymmetric int8 ranges always hold zero


# ---------------------------------------------------------------- finding the vendor Python


def test_missing_vendor_python_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("OPENRKNN_VENDOR_PYTHON", str(tmp_path / "nope" / "python"))
    with pytest.raises(VendorToolkitError, match="vendor-setup"):
        find_vendor_python()


def test_python_without_the_toolkit_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("OPENRKNN_VENDOR_PYTHON", sys.executable)  # ours: no rknn.api, on purpose
    with pytest.raises(VendorToolkitError, match="cannot import the vendor toolkit.*vendor-setup"):
        find_vendor_python()


def test_no_venv_and_no_variable_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.delenv("OPENRKNN_VENDOR_PYTHON", raising=False)
    monkeypatch.setenv("OPENRKNN_CACHE", str(tmp_path))
    with pytest.raises(VendorToolkitError, match="openrknn vendor-setup"):
        find_vendor_python()


def test_cli_vendor_export_missing_toolkit_exits_1(monkeypatch, tmp_path, tiny_package, capsys):
    from openrknn.cli import main

    monkeypatch.setenv("OPENRKNN_VENDOR_PYTHON", str(tmp_path / "missing"))
    assert main(["vendor-export", str(tiny_package), "-o", str(tmp_path / "v.rknn")]) == 1
    assert "vendor-setup" in capsys.readouterr().err
    assert not (tmp_path / "v.rknn").exists()


# ---------------------------------------------------------------- the runner on the vendor's Pythons (wiring)

STAND_IN = textwrap.dedent('''
    import json, os
    CALLS = os.environ["STAND_IN_CALLS"]
    class RKNN(object):
        def __init__(self, verbose=False, verbose_file=None):
            self.log("RKNN", {"verbose_file": verbose_file})
        def log(self, name, kwargs):
            with open(CALLS, "a") as f:
                f.write(json.dumps([name, kwargs]) + "\\n")
        def config(self, **kw): self.log("config", kw); return 0
        def load_onnx(self, **kw): self.log("load_onnx", kw); return 0
        def build(self, **kw): self.log("build", kw); return 0
        def export_rknn(self, path): self.log("export_rknn", {"path": path}); open(path, "wb").write(b"RKNN"); return 0
        def release(self): self.log("release", {})
''')


def _python(version: str) -> str:
    path = Path(f"/root/.pyenv/versions/{version}/bin/python")
    if path.exists():
        return str(path)
    found = subprocess.run(["sh", "-c", f"command -v python{version.rsplit('.', 1)[0]}"], capture_output=True,
                           text=True).stdout.strip()
    return found


@pytest.mark.parametrize("version", ["3.6.15", "3.8.18"])
def test_wiring_runner_drives_the_api_on_old_pythons(tmp_path, version):
    """Wiring test with a stand-in `rknn.api` (rknn-toolkit 1.7.x needs Python 3.6-3.8, not installable here): the
    runner script parses and drives load -> build -> export on that interpreter and reports through its result."""
    py = _python(version)
    if not py:
        pytest.skip(f"no Python {version} on this machine (pyenv)")
    pkg = tmp_path / "stand_in" / "rknn"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "api.py").write_text(STAND_IN)
    job = VendorJob(toolkit="rknn-toolkit", route="qdq", model="m.onnx", config={"target_platform": ["rk1808"]},
                    inputs=["x"], input_size_list=[[3, 8, 8]], outputs=["y"], export="v.rknn")
    work = tmp_path / "job"
    work.mkdir()
    (work / "job.json").write_text(job.to_json())
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "stand_in"), "STAND_IN_CALLS": str(tmp_path / "calls")}
    proc = subprocess.run([py, str(RUNNER), str(work / "job.json")], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((work / "result.json").read_text())
    assert result["ok"] and result["python"].startswith(version.rsplit(".", 1)[0])
    calls = [json.loads(line)[0] for line in (tmp_path / "calls").read_text().splitlines()]
    assert calls == ["RKNN", "config", "load_onnx", "build", "export_rknn", "release"]
    assert (work / "v.rknn").read_bytes() == b"RKNN"


# ---------------------------------------------------------------- the real rknn-toolkit2


@pytest.fixture(scope="module")
def vendor():
    try:
        return find_vendor_python()
    except VendorToolkitError as e:
        if os.environ.get("CI"):
            pytest.fail(f"CI must install the vendor toolkit (.ci/run: openrknn vendor-setup): {e}")
        pytest.skip(f"vendor toolkit not installed: {e}")


@pytest.mark.slow
@pytest.mark.parametrize("route", ["qdq", "ranges"])
def test_vendor_compiles_our_quantization(vendor, tiny_package, tmp_path, route):
    """rknn-toolkit2 compiles the tiny detector through each route; its simulator agrees with openrknn's on every
    output (the box/score split survives), the vendor file is a vendor model and the validation files exist."""
    from openrknn.vendor import export_vendor

    imgs = sorted((tiny_package.parent / "imgs").glob("*.png"))
    out = tmp_path / "tiny.vendor.rknn"
    res = export_vendor(tiny_package, out, validate=imgs[:3], validate_out=tmp_path / "val", route=route,
                        dataset=tiny_package.parent / "imgs" / "dataset.txt", vendor=vendor)
    assert out.read_bytes()[:4] == b"RKNN" and res.route == route
    assert res.post_path and Path(res.post_path).exists()
    report = json.loads(Path(str(out) + ".validation.json").read_text())
    assert report["samples"] == 3
    for o in report["outputs"]:
        assert o["cosine_min"] >= 0.99, report
    assert sorted(p.name for p in (tmp_path / "val").iterdir()) == ["img0_0.npy", "img1_0.npy", "img2_0.npy"]


@pytest.mark.slow
@pytest.mark.parametrize("route", ["qdq", "ranges"])
def test_vendor_compiles_silu_blocks_with_our_ranges_everywhere(vendor, csp_package, tmp_path, route):
    """The SiLU/CSP pattern compiles through both routes. Route qdq: every pre-activation carries an int8 quantizer
    with our range. Route ranges: every tensor of the vendor's cfg gets a range from us (none left to its own
    calibration) and every weight lands on our integers."""
    from openrknn.vendor import export_vendor

    imgs = sorted((csp_package.parent / "imgs").glob("*.png"))
    res = export_vendor(csp_package, tmp_path / "csp.vendor.rknn", validate=imgs[:3], route=route,
                        dataset=csp_package.parent / "imgs" / "dataset.txt", vendor=vendor)
    c = res.carried
    if route == "qdq":
        # c1, c2: the standard convs' SiLU inputs; dw's is already the package's (rk3588 requantizes it, plan.py)
        assert c["preactivations_quantized"] == 2
    else:
        assert c["cfg_vendor_only"] == [] and c["cfg_ours"] == c["cfg_tensors"]
        assert c["weights_pinned"] == c["weights"] == 4
        assert c["openrknn_extra_ranges"] >= 3
    assert sum(c["layer_dtypes"].values()) > 0 and "FLOAT16" not in c["layer_dtypes"] or route == "qdq"
    for o in res.validation["outputs"]:
        assert o["cosine_min"] >= 0.99, res.validation


@pytest.mark.slow
def test_silu_inputs_without_samples_fail_with_what_to_give(vendor, csp_package, tmp_path, monkeypatch):
    """No calibration samples (the package keeps only its dataset's name, not found from this folder): the SiLU
    inputs reach the vendor float, it refuses their float16 layers, and the error says what to give."""
    from openrknn.vendor import export_vendor
    from openrknn.vendor.env import VendorToolkitError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(VendorToolkitError, match=r"2 SiLU input\(s\).*no range.*--dataset FILE \(this model was "
                                                 r"built with 'dataset.txt'\)"):
        export_vendor(csp_package, tmp_path / "csp.vendor.rknn", vendor=vendor)
    assert not (tmp_path / "csp.vendor.rknn").exists()


@pytest.mark.slow
def test_hybrid_16_bit_layer_is_16_bit_in_the_vendor_file(vendor, hybrid_package, csp_package, tmp_path):
    """A layer our hybrid keeps in 16 bits: route qdq refuses the model, route ranges names it in the vendor's
    custom_quantize_layers by our tensor name and the compiled layer that makes it is INT16; so is the layer that
    reads it (the depthwise conv making 'dw'), which reads all 16 bits as openrknn's simulator does."""
    from openrknn.errors import NotSupportedError
    from openrknn.vendor import export_vendor

    ds = csp_package.parent / "imgs" / "dataset.txt"
    with pytest.raises(NotSupportedError, match="out of int8"):
        export_vendor(hybrid_package, tmp_path / "q.rknn", route="qdq", dataset=ds, vendor=vendor)
    res = export_vendor(hybrid_package, tmp_path / "h.rknn", route="auto", dataset=ds, vendor=vendor)
    assert res.route == "ranges" and sorted(res.vendor["custom_layers"]) == ["b", "dw"]
    assert res.carried["wide_layers"] == {"b": "INT16", "dw": "INT16"}


# ---------------------------------------------------------------- openrknn's ranges for the vendor's extra tensors


def test_extra_ranges_cover_the_unquantized_tensors(csp_package):
    from openrknn.vendor.export import read_samples
    from openrknn.vendor.extra_ranges import compute

    pkg = read_package(csp_package)
    ours, _ = activation_ranges(onnx.load_from_string(pkg.model_bytes))
    samples = read_samples([csp_package.parent / "imgs" / "dataset.txt"], pkg.metadata)
    extra = compute(pkg, samples, skip=list(ours))
    # the depthwise conv's output before its SiLU is the package's own (rk3588 requantizes it, plan.py); the
    # standard convs' pre-activations are what only the vendor's qdq route quantizes
    assert "dw" in ours
    assert extra.preactivations == {"c1": "silu", "c2": "silu"}
    assert not set(extra.ranges) & set(ours) and set(extra.preactivations) <= set(extra.ranges)
    for t in extra.preactivations:
        lo, hi = extra.ranges[t]
        assert lo < 0 < hi


def test_extra_ranges_of_a_model_whose_input_is_quantized_directly(tmp_path):
    """Features in (no pixels, no pre-processing: the package quantizes the graph input itself, as openWakeWord's
    embedding model's): the float graph names that input after its dequantized value, and the samples still feed it
    (they were fed by the metadata's name and refused)."""
    from conftest import write_samples
    from openrknn.vendor.export import read_samples
    from openrknn.vendor.extra_ranges import compute

    w = numpy_helper.from_array((rng.standard_normal((16, 8)) * 0.3).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["feat", "w"], ["h"]), helper.make_node("Tanh", ["h"], ["y"])],
                          "feat", [helper.make_tensor_value_info("feat", TensorProto.FLOAT, [1, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(tmp_path / "feat.onnx"))
    ds = write_samples(tmp_path, [rng.standard_normal((1, 16)).astype(np.float32) for _ in range(4)])
    rknn = RKNN()
    assert rknn.config(target_platform="rk3588") == 0 and rknn.load_onnx(str(tmp_path / "feat.onnx")) == 0
    assert rknn.build(do_quantization=True, dataset=str(ds)) == 0 and rknn.export_rknn(str(tmp_path / "f.rknn")) == 0
    rknn.release()
    pkg = read_package(tmp_path / "f.rknn")
    extra = compute(pkg, read_samples([ds], pkg.metadata))
    assert extra.samples == 4 and extra.ranges


def test_qdq_route_quantizes_every_preactivation(csp_package):
    from openrknn.vendor.prepare import quantize_preactivations

    pkg = read_package(csp_package)
    vm = prepare(pkg, "qdq", {"c1": (-3.0, 5.0), "c2": (-2.0, 4.0)})
    assert vm.preactivations == 2  # 'dw' (depthwise) is already the package's
    prod = {o: n for n in vm.onnx_model.graph.node for o in n.output}
    for t in ("c1", "c2", "dw"):
        assert prod[t].op_type == "DequantizeLinear"  # the SiLU reads an int8 tensor on our range
    model = onnx.load_from_string(pkg.model_bytes)
    added, missing = quantize_preactivations(model, {})
    assert added == [] and sorted(missing) == ["c1", "c2"]  # no samples, no ranges: left, and said so


def test_weight_scales_are_ours_per_channel(csp_package):
    from openrknn.vendor.prepare import weight_scales

    model = onnx.load_from_string(read_package(csp_package).model_bytes)
    scales = weight_scales(model)
    assert len(scales) == 4 and all(len(v) in (4, 8) for v in scales.values())


def _runner():
    import importlib.util

    spec = importlib.util.spec_from_file_location("openrknn_vendor_runner", RUNNER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_runner_maps_vendor_copies_to_our_tensors():
    run = _runner()
    ranges = {"out": [0, 1], "pool": [0, 2]}
    assert run._our_name("out", ranges) == "out"
    assert run._our_name("out_int8", ranges) == "out"
    assert run._our_name("pool_mp#1", ranges) == "pool"
    assert run._our_name("other", ranges) is None
    # copies made by its layout rewrites: reshapes, transposes, channel splits, a range-split part's op merged back
    ranges.update({"linear_37.tmp_1": [0, 3], "add__split0": [0, 4], "p2o.Slice.13": [0, 5]})
    assert run._our_name("linear_37.tmp_1_sw-rs_sw_sw", ranges) == "linear_37.tmp_1"
    assert run._our_name("out-rs", ranges) == "out"
    assert run._our_name("p2o.Slice.13_rs", ranges) == "p2o.Slice.13"
    assert run._our_name("pool_split_o1", ranges) == "pool" and run._our_name("pool_split", ranges) == "pool"
    ranges.update({"add__split1": [0, 4], "mul__split0": [0, 1], "mul__split1": [0, 9]})
    assert run._our_name("add__split0-split", ranges) == "add__split0"   # the parts share one range
    assert run._our_name("mul__split0-split", ranges) is None            # they do not: the vendor's own
    assert run._our_name("gemm_input_reshape_arg_token_19_tp_rs", ranges) is None
    assert run._our_name("_rs", ranges) is None


def test_runner_pins_weights_only_when_they_are_still_ours(tmp_path):
    """Weights the vendor left as we gave them get our symmetric grid; weights it changed (a Mul folded into the
    conv: their range is no longer a multiple of our scale) are left to it and listed."""
    import pickle

    run = _runner()
    s = [0.01, 0.02]
    table = {"w_ours": {"min": [-1.27, -1.0], "max": [0.5, 2.54], "ori_min": [-1.27, -1.0], "ori_max": [0.5, 2.54],
                        "scale": [0.007, 0.014], "zero_point": [30, -50]},
             "w_folded": {"min": [-50.8, -40.0], "max": [20.1, 101.7], "ori_min": [-50.8, -40.0],
                          "ori_max": [20.1, 101.7], "scale": [1.0, 1.0], "zero_point": [0, 0]}}
    data = tmp_path / "m.data"
    data.write_bytes(pickle.dumps({"quant_tab": table}))
    result = {}
    out = run._pin_weights(str(data), str(tmp_path / "m2.data"), {"w_ours": s, "w_folded": s}, result)
    pinned = pickle.loads(Path(out).read_bytes())["quant_tab"]
    assert pinned["w_ours"]["zero_point"] == [0, 0] and pinned["w_ours"]["scale"] == s
    assert pinned["w_ours"]["min"] == [-1.28, -2.56] and pinned["w_ours"]["max"] == [1.27, 2.54]
    assert pinned["w_folded"]["scale"] == [1.0, 1.0]
    assert result["weights_pinned"] == 1 and result["weights_not_pinned"] == ["w_folded"]


def test_layer_table_is_read_from_the_vendor_log():
    from openrknn.vendor.export import layer_table

    text = "\n".join([
        "D RKNN: [00:00:01.000] ID   OpType   DataType Target InputShape   OutputShape   Cycles   RW(KB)   FullName",
        "D RKNN: [00:00:01.000] 0    InputOperator      INT8     CPU    \\      (1,3,16,16)    0/0/0    0    "
        "InputOperator:x",
        "\x1b[0mD RKNN: [00:00:01.000] 1    ConvExSwish        INT8     NPU    (1,3,16,16),(8,3,3,3),(8)    (1,8,16,16)"
        "    266/2304/2304    2    Conv:Conv_0   ",
        "D RKNN: [00:00:01.000] 2    exSwish            INT16    NPU    (1,8,16,16)    (1,8,16,16)    0/0/0    0    "
        "exSwish:Mul_5_2exswish",
        "D RKNN: [00:00:01.001] 1   ConvExSwish  x   INT8   NC1HWC2   (1,3,16,16)  (1,1,16,16,3)  | 0x0 0x300 0x300",
    ])
    rows = layer_table(text)
    assert [(r["id"], r["op"], r["dtype"], r["name"]) for r in rows] == [
        (0, "InputOperator", "INT8", "InputOperator:x"), (1, "ConvExSwish", "INT8", "Conv:Conv_0"),
        (2, "exSwish", "INT16", "exSwish:Mul_5_2exswish")]


_EDIT_CFG = """
import json, sys
sys.path.insert(0, sys.argv[1])
import runner
result = {}
runner._edit_cfg(sys.argv[2], sys.argv[3], {"a": [0.0, 1.0]}, {}, result)
print(json.dumps(result["cfg_edited"]))
"""


def test_runner_writes_the_vendors_untouched_floats_back_exactly(vendor, tmp_path):
    """Step 2 refuses a cfg whose ori_min/ori_max differ from step 1's in the last bit ("not allowed to be
    modified"); ruamel's own writer for the floats it loaded moves 5.960464477539063e-08 by one ulp (YOLOX-nano's
    sigmoid outputs after range choice hit it), so the runner writes every float as its exact repr."""
    import subprocess

    cfg = tmp_path / "m.quantization.cfg"
    cfg.write_text("custom_quantize_layers: {}\nquantize_parameters:\n"
                   "    a:\n        qtype: asym\n        min:\n        -   5.960464477539063e-08\n"
                   "        max:\n        -   0.9955098032951355\n        scale: []\n        zero_point: []\n"
                   "        ori_min:\n        -   5.960464477539063e-08\n        ori_max:\n"
                   "        -   0.9955098032951355\n")
    out = tmp_path / "edited.cfg"
    runner_dir = Path(__file__).resolve().parents[1] / "openrknn" / "vendor"
    done = subprocess.run([vendor.python, "-c", _EDIT_CFG, str(runner_dir), str(cfg), str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert "5.960464477539063e-08" in text and "5.960464477539062e-08" not in text
    assert "0.9955098032951355" in text


_EDIT_CFG_CUSTOM = """
import json, sys
sys.path.insert(0, sys.argv[1])
import runner
result = {}
runner._edit_cfg(sys.argv[2], sys.argv[3], {}, {"a": "int16", "gone": "int16", "absent": "int16"}, result,
                 made={"a"})
print(json.dumps(result))
"""


def test_runner_leaves_out_custom_layers_the_vendor_folded_away(vendor, tmp_path):
    """MobileNetV2's auto hybrid promoted a range-split part whose channels are all zero: the vendor's step 1 folds
    that branch into a constant but still lists the tensor in its cfg, and step 2 then refuses the name ("Invalid
    operands name"). Only tensors step 1's graph still computes are written; the rest are reported (and the export
    notes them as folded)."""
    import json
    import subprocess

    entry = ("        qtype: asym\n        min:\n        -   0.0\n        max:\n        -   1.0\n"
             "        scale: []\n        zero_point: []\n")
    cfg = tmp_path / "m.quantization.cfg"
    cfg.write_text("custom_quantize_layers: {}\nquantize_parameters:\n    a:\n" + entry + "    gone:\n" + entry)
    out = tmp_path / "edited.cfg"
    runner_dir = Path(__file__).resolve().parents[1] / "openrknn" / "vendor"
    done = subprocess.run([vendor.python, "-c", _EDIT_CFG_CUSTOM, str(runner_dir), str(cfg), str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["custom_layers"] == ["a"] and sorted(result["custom_not_in_cfg"]) == ["absent", "gone"]
    text = out.read_text()
    assert "a: int16" in text and "gone: int16" not in text


def test_a_recurrent_nodes_default_layout_is_left_out_and_batch_first_refused(tmp_path):
    from openrknn.errors import NotSupportedError
    from openrknn.vendor.prepare import recurrent_layouts

    m = onnx.load(str(tiny_recurrent(tmp_path / "crnn.onnx")))
    assert recurrent_layouts(m) == 1
    assert [a.name for n in m.graph.node if n.op_type == "LSTM" for a in n.attribute] == ["hidden_size"]
    lstm = next(n for n in m.graph.node if n.op_type == "LSTM")
    lstm.attribute.append(helper.make_attribute("layout", 1))
    with pytest.raises(NotSupportedError, match="batch_first=False"):
        recurrent_layouts(m)


@pytest.mark.slow
def test_vendor_compiles_an_lstm_that_spells_out_its_layout(vendor, tmp_path):
    """rknn-toolkit2 rebuilt the LSTM for its simulator in an older opset and refused the attribute ("Unrecognized
    attribute: layout for operator LSTM"): a Khmer CRNN exported from PyTorch failed in vendor-export."""
    from openrknn.vendor import export_vendor

    ds = write_images(tmp_path / "imgs")
    rknn = RKNN()
    rknn.config(mean_values=[[0, 0, 0]], std_values=[[255, 255, 255]], target_platform="rk3588")
    assert rknn.load_onnx(str(tiny_recurrent(tmp_path / "crnn.onnx"))) == 0
    assert rknn.build(do_quantization=True, dataset=str(ds)) == 0
    assert rknn.export_rknn(str(tmp_path / "crnn.rknn")) == 0
    rknn.release()
    imgs = sorted((tmp_path / "imgs").glob("*.png"))
    out = tmp_path / "crnn.vendor.rknn"
    export_vendor(tmp_path / "crnn.rknn", out, validate=imgs[:2], validate_out=tmp_path / "val", route="qdq",
                  dataset=ds, vendor=vendor)
    report = json.loads(Path(str(out) + ".validation.json").read_text())
    assert report["outputs"][0]["cosine_min"] >= 0.99, report


def test_pixel_samples_stay_bytes_for_the_vendor(csp_package):
    """Images (whole numbers in 0..255) are handed to the vendor as the uint8 a board is fed, PNG for its
    calibration; no host branch to warn about in an image model."""
    from openrknn.vendor.export import _host_branch, read_samples

    pkg = read_package(csp_package)
    samples = read_samples([csp_package.parent / "imgs" / "dataset.txt"], pkg.metadata)
    assert all(a.dtype == np.uint8 for _stem, arrays in samples for a in arrays)
    assert _host_branch(pkg) == ""
