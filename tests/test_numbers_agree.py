"""The figures `info`, `perf`, `detect`, the report and the GUI show agree (issue 20, items 4 and 6): one count of
per-channel tensors, the caller's buffers in their deployed size (checked against sizes computed by hand), one unit
convention, the host process's memory apart from the board's, and one definition of "inference time"."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from test_user_layers import build_split
from openrknn.analysis.memory import eval_memory_report, io_bytes
from openrknn.analysis.package_reports import eval_memory, eval_perf, model_facts
from openrknn.cli import main
from openrknn.package import read_package
from openrknn.package_info import describe_package, package_summary
from openrknn.runtime.simulator import Simulator
from openrknn.timing import WARMUP_RUNS
from openrknn.units import format_bytes

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    folder = tmp_path_factory.mktemp("numbers")
    return {method: build_split(folder / method, method) for method in ("layer", "channel")}


# ---------------------------------------------------------------- 6. per-channel tensors: one count


@pytest.mark.parametrize("method", ["layer", "channel"])
def test_info_and_perf_count_per_channel_tensors_alike(builds, method, capsys):
    pkg = read_package(builds[method])
    info = package_summary(pkg)["quantization"]
    memory = eval_memory(pkg, None, is_print=False)["weight"]
    model, chip, qd = model_facts(pkg)
    from_graph = eval_memory_report(model, chip, qd, is_print=False)["weight"]  # the QDQ graph's own count
    weights = info["weights"]
    assert weights == sum(n.op_type == "Conv" for n in model.graph.node)  # one per conv (split parts included)
    expected = 0 if method == "layer" else weights  # "614 quantized tensors (188 per-channel)" for a per-layer build
    assert info["per_channel_tensors"] == memory["per_channel_tensors"] == from_graph["per_channel_tensors"] == expected
    assert info["quantized_tensors"] == info["activations"] + info["weights"] + info["biases"]
    text = describe_package(pkg)
    assert f"{info['weights']} weights ({expected} per-channel), {info['biases']} biases" in text
    main(["perf", str(builds[method]), "--runs", "1"])
    assert f"{expected} per-channel tensors" in capsys.readouterr().out


# ---------------------------------------------------------------- 4. memory figures, by hand


def test_input_buffer_is_the_deployed_uint8_frame():
    """416x416x3 uint8 NHWC is 519,168 bytes (the report said 1014.0 KB, twice that)."""
    metas = [{"name": "images", "shape": [1, 416, 416, 3], "dtype": "uint8"}]
    assert io_bytes(metas) == {"images": 519_168}
    assert format_bytes(519_168) == "519.2 kB"


def test_memory_report_of_a_package_adds_up_by_hand(builds):
    pkg = read_package(builds["layer"])
    r = eval_memory(pkg, None, is_print=False)
    assert r["input"]["per_input"] == {"x": 12 * 12 * 3}  # the fed frame, [1, 12, 12, 3] uint8, read as is
    # [1, 576] as the NPU stores it: the flatten after the last quantization point runs in float16
    assert r["output"]["per_output"] == {"out": 4 * 12 * 12 * 2}
    w = r["weight"]
    # weights stored in int8: the stem conv 8x3x3x3, the depthwise conv 8x1x3x3, the pointwise conv 4x8x1x1
    assert w["by_dtype"]["int8"] == 8 * 3 * 9 + 8 * 9 + 4 * 8
    assert r["total"] == w["total"] + w["quant_param_bytes"] + r["internal"]["total"] + r["input"]["total"] + \
        r["output"]["total"]


def test_host_memory_is_kept_apart_from_the_npu_figures(builds, capsys):
    from openrknn.analysis.report import memory_section

    pkg = read_package(builds["layer"])
    sim = Simulator(pkg.model_bytes, pkg.metadata)
    r = eval_memory(pkg, sim, is_print=True)
    out = capsys.readouterr().out
    assert r["host_rss"] > 0 and r["total"] < r["host_rss"]  # the board figures hold no host memory
    board, host = out.rsplit("=" * 78, 1)
    assert "resident" not in board and format_bytes(r["host_rss"]) in host
    html = memory_section(r, None).html
    table, note = html.split("</table>", 1)
    assert format_bytes(r["host_rss"]) not in table and format_bytes(r["host_rss"]) in note


# ---------------------------------------------------------------- 4. one unit convention


def test_every_size_uses_decimal_units(builds, capsys, tmp_path):
    assert [format_bytes(n) for n in (999, 1_000, 519_168, 5_208_442, 2_000_000_000)] == \
        ["999 B", "1.0 kB", "519.2 kB", "5.21 MB", "2.00 GB"]
    # the GUI's JavaScript formats with the same rule (decimal, kB / MB)
    js = (ROOT / "openrknn/gui/static/app.js").read_text()
    fmt = re.search(r"function fmtBytes\(n\) \{(.*?)\n\}", js, re.S).group(1)
    assert "1e3" in fmt and "1e6" in fmt and "kB" in fmt and "MB" in fmt and "1024" not in fmt
    path = builds["layer"]
    size = path.stat().st_size
    main(["info", str(path)])
    info = capsys.readouterr().out
    assert f"{format_bytes(size)} ({size:,} bytes)" in info
    main(["perf", str(path), "--runs", "1"])
    perf = capsys.readouterr().out
    main(["report", str(path), "-o", str(tmp_path / "r.html")])
    report = (tmp_path / "r.html").read_text()
    assert format_bytes(size) in report
    for text in (info, perf, report):
        text = re.sub(r"data:[\w/+.-]+;base64,[\w+/=]+", "", text)  # an embedded image's base64 may spell "KB"
        assert not re.search(r"\b(MiB|KiB|GiB|KB)\b", text)


# ---------------------------------------------------------------- 6. detect and perf time the same thing


class CountingRuntime:
    """A Simulator that counts the inferences it runs."""

    def __init__(self, sim):
        self.sim, self.calls = sim, 0

    def run(self, *args, **kwargs):
        self.calls += 1
        return self.sim.run(*args, **kwargs)


def test_perf_times_the_users_runtime_warm(builds):
    """eval_perf's host time is an inference through the runtime the user runs (not the profiler's session),
    after the warm-up runs, median: what detect reports per frame."""
    pkg = read_package(builds["layer"])
    runtime = CountingRuntime(Simulator(pkg.model_bytes, pkg.metadata))
    report = eval_perf(pkg, runtime, None, perf_debug=False, is_print=False, runs=3)
    host = report["host_measured"]
    assert runtime.calls == WARMUP_RUNS + 3 and host["runs"] == 3 and host["warmup"] == WARMUP_RUNS
    assert host["total_us"] > 0 and host["profiled_total_us"] > 0


def test_detector_is_warm_before_its_first_frame(tmp_path):
    """A single-image `detect` timed onnxruntime's first run (buffers allocated, threads started): 70 ms where
    `perf` said 37 ms. The detector now runs one untimed inference when it opens."""
    from gui_models import tiny_yolox
    from openrknn.api import RKNN
    from openrknn.vision.detector import DetectorOptions, open_detector

    rknn = RKNN()
    assert rknn.load_onnx(str(tiny_yolox(tmp_path / "tiny_yolox.onnx"))) == 0
    assert rknn.build(do_quantization=False) == 0 and rknn.export_rknn(str(tmp_path / "tiny.rknn")) == 0
    rknn.release()
    detector = open_detector(tmp_path / "tiny.rknn", DetectorOptions())
    runtime = detector.rknn._runtime
    counting = CountingRuntime(runtime)
    detector.rknn._runtime = counting
    try:
        assert detector.times.summary()["frames"] == 0
        detector.detect(np.full((32, 32, 3), 128, np.uint8))
        assert counting.calls == 1 and len(detector.times.infer_ms) == 1  # timed: the second inference overall
    finally:
        detector.rknn._runtime = runtime
        detector.release()
    assert WARMUP_RUNS >= 1
