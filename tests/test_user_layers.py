"""Every per-layer view speaks the user's layer names (issue 20, items 2 and 7): the mapping from a built graph to the
float model's layers (analysis/layer_names.py, from the quantizer's records), and what uses it: `openrknn check` and
the HTML report (one finding per user layer), the perf tables, accuracy_analysis and the GUI layer table (every
layer gets a cosine, split layers included)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest

from gui_models import split_model
from openrknn.analysis.graph_info import node_names
from openrknn.analysis.layer_names import package_layer_names, preprocess_layer
from openrknn.api import RKNN
from openrknn.cli import main
from openrknn.package import read_package, write_package
from openrknn.quant.qdq import NODE_ORIGIN_KEY, node_origins

SPLIT_LAYERS = ("stem_conv", "stem_sigmoid", "stem_mul", "dw_conv", "dw_sigmoid", "dw_mul")


def calibration(folder: Path, n: int = 4, hw: int = 12, seed: int = 7) -> Path:
    import cv2

    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        path = folder / f"calib_{i}.png"
        cv2.imwrite(str(path), rng.integers(0, 256, (hw, hw, 3), dtype=np.uint8))
        lines.append(path.name)
    (folder / "dataset.txt").write_text("\n".join(lines) + "\n")
    return folder / "dataset.txt"


def build_split(folder: Path, method: str = "layer", name: str = "split.rknn") -> Path:
    """split_model (a stem and a depthwise layer range split cuts into parts) as an int8 .rknn for rk1808."""
    folder.mkdir(parents=True, exist_ok=True)
    model = split_model(folder / "split.onnx")
    rknn = RKNN()
    assert rknn.config(std_values=[[255, 255, 255]], target_platform="rk1808", quantized_method=method) == 0
    assert rknn.load_onnx(str(model)) == 0
    assert rknn.build(do_quantization=True, dataset=str(calibration(folder))) == 0
    assert rknn.export_rknn(str(folder / name)) == 0
    rknn.release()
    return folder / name


@pytest.fixture(scope="module")
def split_rknn(tmp_path_factory) -> Path:
    return build_split(tmp_path_factory.mktemp("user_layers"))


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------- the mapping


def test_every_built_node_maps_to_a_layer_of_the_users_model(split_rknn):
    pkg = read_package(split_rknn)
    built, ref = onnx.load_from_string(pkg.model_bytes), onnx.load_from_string(pkg.float_model_bytes)
    assert node_origins(built)  # the quantizer recorded what range split made
    names = package_layer_names(pkg)
    users = {n.name for n in ref.graph.node if not n.name.startswith("openrknn_pre/")} | {preprocess_layer("x")}
    assert {names.of(n) for n in node_names(built)} <= users
    for layer in ("stem_conv", "dw_conv"):
        assert names.parts[layer] == [f"{layer}__split{g}" for g in range(len(names.parts[layer]))]
        assert len(names.parts[layer]) >= 2 and names.folded(layer)
    assert names.of("dw_split_concat") == "dw_mul"  # the concat rebuilding dw_mul's output is part of dw_mul
    assert not names.folded("pw_conv") and names.of("pw_conv") == "pw_conv"
    assert names.of("openrknn_pre/x/transpose") == "x (pre-processing)"
    # a Q/DQ pair belongs to the layer whose tensor it quantizes, a weight's DQ to the layer reading the weight
    qdq = {n.name: n for n in built.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")}
    assert names.of(next(k for k, n in qdq.items() if n.input[0] == "pw__f")) == "pw_conv"
    weight_dq = next(k for k, n in qdq.items() if n.input[0].startswith("wpw"))
    assert names.of(weight_dq) == "pw_conv"


def test_files_without_the_record_map_the_same(split_rknn, tmp_path):
    """Files written before the quantizer recorded its rewrites: matched by tensor, then by the rewrite's names."""
    pkg = read_package(split_rknn)
    built = onnx.load_from_string(pkg.model_bytes)
    kept = [p for p in built.metadata_props if p.key != NODE_ORIGIN_KEY]
    del built.metadata_props[:]
    built.metadata_props.extend(kept)
    old = tmp_path / "old.rknn"
    pkg.model_bytes = built.SerializeToString()
    write_package(old, pkg)
    with_record, without = package_layer_names(read_package(split_rknn)), package_layer_names(read_package(old))
    assert without.layer == with_record.layer


# ---------------------------------------------------------------- check and the report: one finding per layer


def test_check_gives_one_finding_per_user_layer(split_rknn, capsys):
    code, out, _ = _cli(capsys, "check", split_rknn, "--json")
    assert code == 0
    findings = json.loads(out)
    assert "__split" not in json.dumps([{k: v for k, v in f.items() if k != "parts"} for f in findings])
    keys = [(f["rule"], f["layer"]) for f in findings if f["layer"]]
    assert len(keys) == len(set(keys)), keys
    dw = [f for f in findings if f["rule"] == "depthwise-int8"]
    assert [f["layer"] for f in dw] == ["dw_conv"]  # was one warning per part: dw_conv__split0, 1, 2
    assert dw[0]["parts"] == [f"dw_conv__split{g}" for g in range(len(dw[0]["parts"]))] and len(dw[0]["parts"]) > 1
    code, table, _ = _cli(capsys, "check", split_rknn)
    assert "__split" not in table and re.search(r"\d+ errors?, \d+ warnings?, \d+ notes?$", table.strip())


def test_report_design_check_names_user_layers(split_rknn, tmp_path):
    from openrknn.analysis.report import findings_section
    from openrknn.analysis.package_reports import check

    findings = check(read_package(split_rknn))
    html = findings_section(findings).html
    summary = re.search(r"<p>(.*?)</p>", html).group(1)
    assert not re.search(r"\b1 (errors|warnings|notes)\b", summary), summary  # "1 notes"
    visible = re.sub(r"<details>.*?</details>", "", html)  # the parts are listed only when expanded
    assert "__split" not in visible and "dw_conv (Conv)" in visible
    assert "<code>dw_conv__split0</code>" in html


# ---------------------------------------------------------------- perf tables


def test_perf_prints_the_layer_table_in_user_names_without_debug(split_rknn, capsys):
    code, out, _ = _cli(capsys, "perf", split_rknn, "--runs", "1")
    assert code == 0
    table = out.split("Top op types")[0]
    assert re.search(r"^\s+\d+\s+stem_conv\s+Conv\s", table, re.M), table  # no per-layer table without --debug
    assert "__split" not in table and "pw_conv" in table
    code, debug, _ = _cli(capsys, "perf", split_rknn, "--runs", "1", "--debug")
    assert "  - stem_conv__split0" in debug.split("Top op types")[0]


def test_user_layer_rows_add_up_the_parts(split_rknn):
    from openrknn.analysis.package_reports import eval_perf

    report = eval_perf(read_package(split_rknn), None, None, perf_debug=True, is_print=False)
    users = {r["name"]: r for r in report["user_layers"]}
    parts = {r["name"]: r for r in report["layers"]}
    stem = users["stem_conv"]
    assert stem["npu_us"] == pytest.approx(sum(parts[p]["npu_us"] for p in stem["parts"]), abs=0.2)
    assert all(parts[p]["layer"] == "stem_conv" for p in stem["parts"])
    assert users["stem_sigmoid"]["unit"] == "fused" and users["stem_sigmoid"]["fused_into"] == "stem_mul"
    # the rows add up to the NPU time and the float tail the board's CPU runs after it (the output's float Concat)
    est = report["npu_estimate"]
    assert est["tail_layers"] == 3 and {r["unit"] for r in users.values() if r["name"] == "swap_concat"} == {"tail"}
    assert est["total_us"] + est["tail_us"] == pytest.approx(sum(r["npu_us"] for r in users.values()), abs=1.0)


# ---------------------------------------------------------------- accuracy: every layer gets a cosine


def test_gui_layer_table_gives_every_quantized_layer_a_cosine(split_rknn, tmp_path):
    from openrknn.gui.layers import fold_parts, keepable_layers, layer_rows, measure_accuracy, merge_accuracy

    pkg = read_package(split_rknn)
    rows = layer_rows(pkg.model_bytes, pkg.metadata["quantization"], pkg.float_model_bytes)
    image = np.random.default_rng(3).integers(0, 256, (1, 12, 12, 3), dtype=np.uint8)
    merge_accuracy(rows, measure_accuracy(pkg, [image], tmp_path))
    folded = {r["name"]: r for r in fold_parts(rows, keepable_layers(pkg.float_model_bytes))}
    missing = [n for n, r in folded.items() if r["quantized"] and r["cosine"] is None]
    assert not missing, missing  # the stem (parts feeding the depthwise parts directly) had none
    for layer in SPLIT_LAYERS:
        assert folded[layer]["parts"] and folded[layer]["cosine"] is not None
    text = (tmp_path / "error_analysis.txt").read_text()
    assert "stem_mul" in text and "__split" not in "".join(line.split()[0] for line in text.splitlines()
                                                           if not line.startswith("#"))


@pytest.mark.slow
def test_yolox_nano_u8_speaks_the_users_layers(real_data, tmp_path):
    """The model of the issue: YOLOX-nano COCO, u8 rk1808, calibrated on a few COCO photos."""
    import cv2

    from openrknn.analysis.package_reports import check, eval_memory, eval_perf
    from openrknn.gui.layers import fold_parts, keepable_layers, layer_rows, measure_accuracy, merge_accuracy

    images = sorted(Path(real_data("images/coco/000000000139.jpg")).parent.glob("*.jpg"))[:4]
    (tmp_path / "dataset.txt").write_text("\n".join(map(str, images)) + "\n")
    rknn = RKNN()
    assert rknn.config(target_platform="rk1808", quantized_method="layer", quant_img_RGB2BGR=True) == 0
    assert rknn.load_onnx(str(real_data("models/yolox_nano_coco.onnx"))) == 0
    assert rknn.build(do_quantization=True, dataset=str(tmp_path / "dataset.txt")) == 0
    pkg = rknn._package
    names = package_layer_names(pkg)
    assert sum(names.folded(layer) for layer in names.parts) > 10  # range split did cut layers into parts

    rows = layer_rows(pkg.model_bytes, pkg.metadata["quantization"], pkg.float_model_bytes)
    image = cv2.resize(cv2.imread(str(images[-1])), (416, 416))
    merge_accuracy(rows, measure_accuracy(pkg, [image], tmp_path / "acc"))
    folded = fold_parts(rows, keepable_layers(pkg.float_model_bytes))
    assert not [r["name"] for r in folded if "__split" in r["name"] or "_split_concat" in r["name"]]
    assert not [r["name"] for r in folded if r["cosine"] is None]  # 63 of 366 had none

    findings = check(pkg)
    keys = [(f.rule, f.layer) for f in findings if f.layer]
    assert len(keys) == len(set(keys)) and not [k for k in keys if "__split" in k[1]]
    perf = eval_perf(pkg, None, None, perf_debug=True, is_print=False)
    assert not [r["name"] for r in perf["user_layers"] if "__split" in r["name"]]
    mem = eval_memory(pkg, None, is_print=False)
    assert mem["input"]["total"] == 416 * 416 * 3  # the uint8 NHWC frame the application feeds
    assert "__split" not in mem["internal"]["peak_layer"]
    rknn.release()
