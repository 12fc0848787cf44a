"""Memory plan: internal memory equals a brute-force liveness peak, buffers never collide, in-place rules hold."""

from __future__ import annotations

import random

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from openrknn.analysis.memory import eval_memory_report, plan_memory
from openrknn.units import format_bytes


class G:
    """A tiny NCHW graph builder: every op returns its output name."""

    def __init__(self, shape=(1, 8, 16, 16), seed=0):
        self.nodes, self.inits, self.n = [], [], 0
        self.rng = np.random.default_rng(seed)
        self.inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))]

    def _name(self, op):
        self.n += 1
        return f"{op.lower()}{self.n}"

    def op(self, op_type, inputs, **attrs):
        name = self._name(op_type)
        self.nodes.append(helper.make_node(op_type, list(inputs), [name], name=name, **attrs))
        return name

    def const(self, arr):
        name = self._name("w")
        self.inits.append(numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name))
        return name

    def conv(self, x, cin, cout, k=3, s=1, group=1):
        w = self.const(self.rng.standard_normal((cout, cin // group, k, k)))
        return self.op("Conv", [x, w], kernel_shape=[k, k], strides=[s, s], pads=[k // 2] * 4, group=group)

    def model(self, outputs):
        outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs]
        g = helper.make_graph(self.nodes, "g", self.inputs, outs, self.inits)
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


# ---------------------------------------------------------------------------------------------------------------------
VIEWS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity")


def brute_force_peak(model: onnx.ModelProto, bytes_per_value: int) -> int:
    """Independent of the planner: at every node, add up the intermediate tensors produced at or before it and read at
    or after it (graph inputs/outputs and weights excluded; a view's output is its input under another name)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    sizes = {}
    for vi in inferred.graph.value_info:
        sizes[vi.name] = int(np.prod([d.dim_value for d in vi.type.tensor_type.shape.dim])) * bytes_per_value
    nodes = list(model.graph.node)
    alias = {}
    for n in nodes:
        if n.op_type in VIEWS:
            alias[n.output[0]] = alias.get(n.input[0], n.input[0])
    outputs = {alias.get(o.name, o.name) for o in model.graph.output}
    born, last = {}, {}
    for i, n in enumerate(nodes):
        for t in n.input:
            last[alias.get(t, t)] = i
        for t in n.output:
            born.setdefault(alias.get(t, t), i)
    graph_inputs = {i.name for i in model.graph.input}
    peak = 0
    for step in range(len(nodes)):
        live = sum(sizes[t] for t, b in born.items()
                   if t not in outputs and t not in graph_inputs and b <= step <= max(last.get(t, b), b))
        peak = max(peak, live)
    return peak


def assert_no_collisions(plan) -> None:
    for i, a in enumerate(plan.buffers):
        assert a.offset >= 0
        for b in plan.buffers[i + 1:]:
            if a.overlaps_in_time(b):
                assert a.offset + a.size <= b.offset or b.offset + b.size <= a.offset, (a, b)
    assert plan.arena_bytes == max((b.offset + b.size for b in plan.buffers), default=0)


def chain():
    g = G()
    y = g.conv("x", 8, 16)
    y = g.op("Relu", [y])
    y = g.conv(y, 16, 32, s=2)
    y = g.op("Relu", [y])
    y = g.conv(y, 32, 8)
    return g.model([g.conv(y, 8, 4, k=1)])


def branches():
    g = G()
    s = g.conv("x", 8, 16)
    a = g.conv(s, 16, 8, k=1)
    b = g.conv(g.conv(s, 16, 24), 24, 8)
    c = g.op("MaxPool", [s], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])
    cat = g.op("Concat", [a, b, c], axis=1)
    return g.model([g.conv(cat, 32, 4, k=1)])


def residual():
    g = G()
    x = g.conv("x", 8, 16)
    for _ in range(3):
        y = g.op("Relu", [g.conv(x, 16, 16)])
        y = g.conv(y, 16, 16)
        x = g.op("Relu", [g.op("Add", [x, y])])
    return g.model([g.conv(x, 16, 2, k=1)])


def two_scales():
    """A detector-like shape: a downsampled path and an upsampled merge."""
    g = G(shape=(1, 4, 32, 32))
    p3 = g.conv("x", 4, 8)
    p4 = g.conv(p3, 8, 16, s=2)
    p5 = g.conv(p4, 16, 32, s=2)
    scales = g.const([1, 1, 2, 2])
    u = g.op("Resize", [p5, "", scales], mode="nearest")
    m4 = g.conv(g.op("Concat", [u, p4], axis=1), 48, 16)
    u2 = g.op("Resize", [m4, "", scales], mode="nearest")
    m3 = g.conv(g.op("Concat", [u2, p3], axis=1), 24, 8)
    return g.model([g.conv(m3, 8, 3, k=1), g.conv(m4, 16, 3, k=1)])


GRAPHS = {"chain": chain, "branches": branches, "residual": residual, "two_scales": two_scales}


@pytest.mark.parametrize("name", list(GRAPHS))
@pytest.mark.parametrize("quant_dtype,nbytes", [(None, 2), ("w8a8", 1), ("dynamic_fixed_point-i16", 2)])
def test_internal_memory_equals_brute_force_liveness(name, quant_dtype, nbytes):
    model = GRAPHS[name]()
    plan = plan_memory(model, quant_dtype, in_place_ops=False)
    expected = brute_force_peak(model, nbytes)
    assert plan.peak_live_bytes == expected
    assert plan.arena_bytes == expected  # the best-fit plan reaches the liveness bound on these graphs
    assert_no_collisions(plan)


@pytest.mark.parametrize("seed", range(12))
def test_random_dags_plan_is_valid_and_peak_is_exact(seed):
    rnd = random.Random(seed)
    g = G(seed=seed)
    tensors = [(g.conv("x", 8, 8), 8)]
    for _ in range(rnd.randint(6, 16)):
        kind = rnd.choice(["conv", "add", "concat", "relu"])
        a, ca = rnd.choice(tensors)
        if kind == "conv":
            c = rnd.choice([4, 8, 16])
            tensors.append((g.conv(a, ca, c, k=rnd.choice([1, 3])), c))
        elif kind == "add":
            same = [t for t in tensors if t[1] == ca]
            tensors.append((g.op("Add", [a, rnd.choice(same)[0]]), ca))
        elif kind == "concat":
            b, cb = rnd.choice(tensors)
            tensors.append((g.op("Concat", [a, b], axis=1), ca + cb))
        else:
            tensors.append((g.op("Relu", [a]), ca))
    model = g.model([tensors[-1][0]])
    plan = plan_memory(model, "w8a8", in_place_ops=False)
    assert plan.peak_live_bytes == brute_force_peak(model, 1)
    assert plan.arena_bytes >= plan.peak_live_bytes
    assert_no_collisions(plan)
    assert_no_collisions(plan_memory(model, "w8a8"))


def test_in_place_activation_shares_the_conv_buffer():
    g = G()  # x: 8x16x16
    y = g.op("Relu", [g.conv("x", 8, 16)])
    model = g.model([g.conv(y, 16, 4)])
    plan = plan_memory(model, "w8a8")
    # conv out and relu out are one 16*16*16 buffer; without in-place they are two
    assert plan.arena_bytes == 16 * 16 * 16
    assert plan_memory(model, "w8a8", in_place_ops=False).arena_bytes == 2 * 16 * 16 * 16
    assert plan.tensor_buffer[y] == plan.tensor_buffer[model.graph.node[0].output[0]]


def test_in_place_is_refused_when_the_input_is_read_later():
    g = G()
    c = g.conv("x", 8, 8)
    r = g.op("Relu", [c])
    s = g.op("Add", [c, r])  # c still needed after the relu: the relu must not overwrite it
    model = g.model([g.conv(s, 8, 4)])
    plan = plan_memory(model, "w8a8")
    assert plan.tensor_buffer[r] != plan.tensor_buffer[c]
    # the add may overwrite one of its inputs: both die there
    assert plan.tensor_buffer[s] in (plan.tensor_buffer[c], plan.tensor_buffer[r])
    assert plan.arena_bytes == 2 * 8 * 16 * 16
    assert_no_collisions(plan)


def test_graph_input_is_never_overwritten_and_views_share_buffers():
    g = G()
    r = g.op("Relu", ["x"])
    g.inits.append(numpy_helper.from_array(np.array([1, -1], np.int64), "flat_shape"))
    flat = g.op("Reshape", [r, "flat_shape"])
    model = g.model([g.op("Relu", [g.op("Sigmoid", [flat])])])
    plan = plan_memory(model, None)
    assert plan.tensor_buffer["x"] == "<input>"
    assert plan.tensor_buffer[r] not in ("<input>", "")
    assert plan.tensor_buffer[flat] == plan.tensor_buffer[r]
    assert plan.input_bytes == {"x": 8 * 16 * 16 * 2}


def test_qdq_graph_takes_its_dtypes_from_the_quantize_nodes():
    g = G(shape=(1, 8, 4, 4))
    c = g.conv("x", 8, 8)
    scale = g.const(0.1)
    g.inits.append(numpy_helper.from_array(np.array(0, np.uint8), "zp"))
    q = g.op("QuantizeLinear", [c, scale, "zp"])
    dq = g.op("DequantizeLinear", [q, scale, "zp"])
    model = g.model([g.conv(dq, 8, 2)])
    plan = plan_memory(model, None)  # quant_dtype None, but the graph says uint8
    assert [b.size for b in plan.buffers] == [8 * 4 * 4]


def test_eval_memory_report_adds_up(capsys):
    g = G()
    y = g.op("Relu", [g.conv("x", 8, 16)])
    model = g.model([g.conv(y, 16, 4)])
    r = eval_memory_report(model, "rk3588", "w8a8", is_print=True, host_rss_bytes=50 * 2**20)
    w = r["weight"]
    assert w["by_dtype"] == {"int8": 16 * 8 * 9 + 4 * 16 * 9}
    assert w["per_channel_tensors"] == 2 and w["quant_params"] == 2 * (16 + 4)
    assert r["internal"]["total"] == 16 * 16 * 16
    assert r["input"]["total"] == 8 * 16 * 16 and r["output"]["total"] == 4 * 16 * 16
    assert r["total"] == w["total"] + w["quant_param_bytes"] + r["internal"]["total"] + r["input"]["total"] \
        + r["output"]["total"]
    out = capsys.readouterr().out
    # the host process's memory is printed apart, after the board figures, in the one unit convention (decimal)
    npu, host = out.rsplit("=" * 78, 1)
    assert "Internal memory" in npu and "resident" not in npu and "MiB" not in out
    # the weight line is its parts' sum (it left the quantization params out while the total counted them)
    assert f"Weight memory            {format_bytes(w['total'] + w['quant_param_bytes']):>10}" in npu
    assert "52.43 MB (resident set)" in host and "not part of the board estimate" in host
    r1 = eval_memory_report(model, "rk1808", "asymmetric_quantized-u8", is_print=False, host_rss_bytes=None)
    assert r1["weight"]["per_channel_tensors"] == 0  # Toolkit v1 quantizes per layer
    assert "host_rss" in r1 and r1["host_rss"] is None


def test_yolox_nano_plan(real_data):
    model = onnx.load(str(real_data("models/yolox_nano_coco.onnx")))
    plan = plan_memory(model, "w8a8")
    assert_no_collisions(plan)
    flat = plan_memory(model, "w8a8", in_place_ops=False)
    assert plan.arena_bytes < flat.arena_bytes  # in-place SiLU/Add halve a lot of buffers
    assert flat.peak_live_bytes == brute_force_peak(model, 1)
