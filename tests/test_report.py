"""HTML report: escaping, embedded images, standard sections on a real built model."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from openrknn.analysis.report import RawHTML, Section, model_report, table, write_report


def _tiny_model(path):
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
                           helper.make_node("Relu", ["c"], ["y"], name="relu")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])], [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_table_escapes_text_but_keeps_raw_html():
    html = table(["a", "b"], [("<script>", RawHTML("<b>x</b>"))])
    assert "&lt;script&gt;" in html and "<b>x</b>" in html


def test_write_report_embeds_images_and_is_readable(tmp_path):
    png = tmp_path / "p.png"
    import cv2

    cv2.imwrite(str(png), np.zeros((4, 4, 3), np.uint8))
    out = write_report(tmp_path / "r" / "report.html", "T <1>", "sub", [Section("S", "<p>hi</p>", [str(png)])])
    text = out.read_text()
    assert "data:image/png;base64," in text and "T &lt;1&gt;" in text
    assert (out.stat().st_mode & 0o044) == 0o044  # not a private temp file
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def test_model_report_has_the_standard_sections(tmp_path):
    from openrknn.api import RKNN

    src = tmp_path / "m.onnx"
    _tiny_model(str(src))
    r = RKNN()
    r.config(mean_values=[127.5] * 3, std_values=[127.5] * 3, target_platform="rk3588")
    assert r.load_onnx(str(src)) == 0 and r.build(do_quantization=False) == 0
    path = model_report(r._package, tmp_path / "report.html")
    text = path.read_text()
    for title in ("Model", "Speed (eval_perf)", "Memory (eval_memory)", "NPU design check"):
        assert f"<h2>{title}</h2>" in text
    assert text.count("data:image/png;base64,") == 2  # the perf and memory charts
    r.release()


def test_the_speed_section_shows_the_float_tail_apart_from_the_npu_time():
    from openrknn.analysis.report import perf_section

    perf = {"target": "rk3588", "quantized_dtype": "w8a8", "top_op_types": [],
            "npu_estimate": {"total_us": 4687.9, "fps": 213.3, "gmacs": 0.578, "tail_us": 922.7, "tail_layers": 6}}
    text = perf_section(perf, None).html
    assert "4.69 ms" in text and "0.923 ms, 6 layer(s) after the last int8 outputs" in text
    perf["npu_estimate"].update(tail_us=0.0, tail_layers=0)
    assert "float tail" not in perf_section(perf, None).html
