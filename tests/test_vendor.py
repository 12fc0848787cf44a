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
    openrknn's simulator computes (mean/std applied here as the vendor's config would): the box part exactly; the
    score part within two output steps, the cost of the int8 quantizer the vendor needs before its sigmoid."""
    import onnxruntime as ort

    from openrknn.runtime.simulator import Simulator
    from openrknn.vendor.export import run_post

    pkg = read_package(tiny_package)
    vm = prepare(pkg, "qdq")
    x = rng.integers(0, 256, (1, 16, 16, 3)).astype(np.uint8)
    ours = Simulator(pkg.model_bytes, pkg.metadata).run([x])[0]
    sess = ort.InferenceSession(vm.onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    nchw = x.transpose(0, 3, 1, 2).astype(np.float32)
    mean = np.asarray(vm.mean_values[0], np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(vm.std_values[0], np.float32).reshape(1, -1, 1, 1)
    raw = sess.run(vm.outputs, {vm.input_names[0]: (nchw - mean) / std})
    final = run_post(vm.post, vm.outputs, raw)[0]
    np.testing.assert_allclose(final[:, :4], ours[:, :4], atol=1e-4)
    step = 1 / 255
    np.testing.assert_allclose(final[:, 4:], ours[:, 4:], atol=2 * step)
    assert not np.allclose(final[:, 4:], ours[:, 4:], atol=1e-6)  # the quantizer is really there


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
