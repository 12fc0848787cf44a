"""vendor-export --layers: the vendor simulator's tensors against openrknn's, layer by layer (vendor/layers.py).

The comparison is tested on dumps written the way rknn-toolkit2's accuracy_analysis writes them (map_name_to_file.txt,
one text file of values per tensor): made from openrknn's own graph (every point equal), from a graph whose one conv
computes differently (that layer is found, the layers after it, fed the dumps' own inputs, are not), and from
another model (refused). With the vendor toolkit installed (CI), rknn-toolkit2 compiles a small SiLU / depthwise /
residual model and its own dumps are compared: every quantization point must hold the same integers off rounding ties.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from openrknn.errors import PackageError
from openrknn.package import read_package
from openrknn.runtime.feeds import prepare_feeds
from openrknn.vendor.layers import compare_layers, summary, summary_lines

from test_vendor import csp_package, tiny_csp, vendor, write_images  # noqa: F401  (fixtures and model builders)


def _feeds(pkg, image: np.ndarray) -> dict:
    m = onnx.load_from_string(pkg.model_bytes)
    inits = {t.name for t in m.graph.initializer}
    names = [i.name for i in m.graph.input if i.name not in inits]
    return dict(zip(names, prepare_feeds([image], pkg.metadata["inputs"])))


def _all_tensors(model: onnx.ModelProto, feeds: dict) -> dict:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for n in m.graph.node:
        for o in n.output:
            if o not in have:
                m.graph.output.append(onnx.helper.make_empty_tensor_value_info(o))
                have.add(o)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def _write_dumps(folder: Path, values: dict, names) -> Path:
    """accuracy_analysis' layout: an index of name -> file, and simulator/<file> with one value per line."""
    (folder / "simulator").mkdir(parents=True)
    lines = ["layer_name    file_name", "-" * 20]
    for k, t in enumerate(names):
        fname = f"t{k}.txt"
        np.savetxt(folder / "simulator" / fname, np.asarray(values[t], np.float64).ravel(), fmt="%.9g")
        lines.append(f"{t}    {fname}")
    (folder / "map_name_to_file.txt").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def csp(csp_package):  # noqa: F811  (the fixture imported above)
    import cv2

    pkg = read_package(csp_package)
    image = cv2.cvtColor(cv2.imread(str(csp_package.parent / "imgs" / "img1.png")), cv2.COLOR_BGR2RGB)[None]
    return pkg, _feeds(pkg, image)


def _dumped(model: onnx.ModelProto) -> list:
    """What the vendor would dump of this graph: the float graph's tensors, so not the QDQ plumbing's own names
    (X__f the unrounded value, X__q its integers, W__dq a weight)."""
    return [o for n in model.graph.node for o in n.output if not o.endswith(("__f", "__q", "__dq"))]


def test_own_values_agree_everywhere(csp, tmp_path):
    pkg, feeds = csp
    m = onnx.load_from_string(pkg.model_bytes)
    values = _all_tensors(m, feeds)
    report = compare_layers(pkg.model_bytes, feeds, _write_dumps(tmp_path / "d", values, _dumped(m)))
    assert report["points"] >= 5
    assert report["differing"] == 0 and report["points_equal"] == report["points"]
    assert report["first_off_tie"] is None
    assert all(r["whole_run_cosine"] > 0.99999 for r in report["rows"])
    text = "\n".join(summary_lines(summary(report)))
    assert "no point differs off a rounding tie" in text


def test_a_layer_computing_differently_is_found_and_does_not_carry(csp, tmp_path):
    """The 'vendor' adds 0.3 to one conv's bias: that conv's point differs off ties; the points after it, fed
    the vendor's own values of their inputs, do not (single-layer isolation), though in a whole run they would."""
    pkg, feeds = csp
    m = onnx.load_from_string(pkg.model_bytes)
    producer = {o: n for n in m.graph.node for o in n.output}
    inits = {t.name: t for t in m.graph.initializer}
    conv = next(n for n in m.graph.node if n.op_type == "Conv"  # the depthwise conv
                and any(a.name == "group" and a.i > 1 for a in n.attribute))
    bias_dq = producer[conv.input[2]]
    q = numpy_helper.to_array(inits[bias_dq.input[0]])
    scale = numpy_helper.to_array(inits[bias_dq.input[1]])
    shifted = q + np.round(0.3 / scale).astype(q.dtype)  # every output of the conv 0.3 higher
    inits[bias_dq.input[0]].CopyFrom(numpy_helper.from_array(shifted, bias_dq.input[0]))
    values = _all_tensors(m, feeds)
    report = compare_layers(pkg.model_bytes, feeds, _write_dumps(tmp_path / "d", values, _dumped(m)))
    rows = {r["tensor"]: r for r in report["rows"]}
    first = report["first_off_tie"]
    assert first is not None and rows[first]["differing"] > rows[first]["at_ties"]
    # every point after it reads the vendor's values of its inputs: its own arithmetic is ours
    order = [r["tensor"] for r in report["rows"] if r["point"]]
    after = order[order.index(first) + 1:]
    assert after and all(rows[t]["differing"] == rows[t]["at_ties"] for t in after)
    assert summary(report)["worst"][0]["tensor"] == first


def test_dumps_of_another_model_are_refused(csp, tmp_path):
    pkg, feeds = csp
    folder = _write_dumps(tmp_path / "d", {"not_ours": np.zeros(4)}, ["not_ours"])
    with pytest.raises(PackageError, match="none of the vendor's dumped tensors"):
        compare_layers(pkg.model_bytes, feeds, folder)
    m = onnx.load_from_string(pkg.model_bytes)
    some = next(o for o in _dumped(m) if o in {n.output[0] for n in m.graph.node if n.op_type == "Conv"})
    folder = _write_dumps(tmp_path / "e", {some: np.zeros(7)}, [some])
    with pytest.raises(PackageError, match="7 values, openrknn's"):
        compare_layers(pkg.model_bytes, feeds, folder)
    with pytest.raises(PackageError, match="map_name_to_file"):
        compare_layers(pkg.model_bytes, feeds, tmp_path)


def test_layers_needs_a_validation_sample(csp_package, tmp_path):  # noqa: F811
    from openrknn.vendor import export_vendor

    with pytest.raises(PackageError, match="--validate"):
        export_vendor(csp_package, tmp_path / "v.rknn", layers=True)
    assert not (tmp_path / "v.rknn").exists()


@pytest.mark.slow
def test_vendor_dumps_hold_our_integers(vendor, csp_package, tmp_path):  # noqa: F811
    """rknn-toolkit2 compiles the SiLU / depthwise / residual model through the bridge; its accuracy_analysis dumps,
    layer by layer, hold openrknn's integers on every quantization point off rounding ties."""
    from openrknn.vendor import export_vendor

    imgs = sorted((csp_package.parent / "imgs").glob("*.png"))
    out = tmp_path / "csp.vendor.rknn"
    res = export_vendor(csp_package, out, validate=imgs[:2], dataset=csp_package.parent / "imgs" / "dataset.txt",
                        vendor=vendor, layers=True)
    layers = res.validation["layers"]
    assert layers["points"] >= 5, layers
    assert layers["first_off_tie"] is None, layers["worst"]
    assert layers["differing"] == layers["at_ties"]
    full = json.loads(Path(str(out) + ".layers.json").read_text())
    assert len(full["rows"]) == layers["tensors"]
    assert json.loads(Path(str(out) + ".validation.json").read_text())["layers"]["points"] == layers["points"]


def test_a_model_with_a_loop_is_refused_before_any_work(tmp_path):
    """rknn-toolkit2 refuses a Loop in its build ("will cause the graph to be a dynamic graph"); the bridge says so
    first, naming the loop, instead of failing in its own calibration of the vendor's extra tensors."""
    from openrknn.errors import NotSupportedError
    from openrknn.vendor import export_vendor
    from test_quant_control_flow import loop_model

    onnx.save(loop_model(), str(tmp_path / "loop.onnx"))
    from openrknn.api import RKNN

    rk = RKNN(verbose=False)
    assert rk.config(target_platform="rk3588") == 0 and rk.load_onnx(str(tmp_path / "loop.onnx")) == 0
    assert rk.build(do_quantization=False) == 0 and rk.export_rknn(str(tmp_path / "loop.rknn")) == 0
    rk.release()
    with pytest.raises(NotSupportedError, match="Loop .*Cut the model before the loop"):
        export_vendor(tmp_path / "loop.rknn", tmp_path / "v.rknn")
    assert not (tmp_path / "v.rknn").exists()


@pytest.mark.slow
def test_route_qdq_says_it_has_no_layer_comparison(vendor, csp_package, tmp_path):  # noqa: F811
    """rknn-toolkit2's accuracy_analysis refuses a QDQ model without a board ("The QAT model need set 'target'"):
    route qdq compiles and validates as before and says why there is no layer table."""
    from openrknn.vendor import export_vendor

    imgs = sorted((csp_package.parent / "imgs").glob("*.png"))
    res = export_vendor(csp_package, tmp_path / "q.rknn", validate=imgs[:1], route="qdq", vendor=vendor, layers=True)
    assert res.route == "qdq" and res.validation["outputs"] and "layers" not in res.validation
    assert any("--layers" in n and "board" in n for n in res.notes)
    assert not (tmp_path / "q.rknn.layers.json").exists()
