"""Wiring tests for the board's NPU adapter: a stand-in `rknnlite.api` module (rknn-toolkit-lite2 installs only on
aarch64 boards) records the calls and returns arrays; the tests check the calls, the core mask and the host tail."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
from onnx import TensorProto, helper

from openrknn.errors import NotSupportedError, RuntimeStateError
from openrknn.runtime import npu_lite


class StandInLite:
    calls: list = []
    fail = {}

    def __init__(self, verbose=False):
        StandInLite.calls.append(("RKNNLite",))

    def load_rknn(self, path):
        StandInLite.calls.append(("load_rknn", path))
        return StandInLite.fail.get("load_rknn", 0)

    def init_runtime(self, core_mask=0):
        StandInLite.calls.append(("init_runtime", core_mask))
        return StandInLite.fail.get("init_runtime", 0)

    def inference(self, inputs, data_format="nhwc"):
        StandInLite.calls.append(("inference", [a.shape for a in inputs], data_format))
        return [np.full((1, 2), 1.5, np.float32), np.full((1, 3), 0.25, np.float32)]

    def release(self):
        StandInLite.calls.append(("release",))


@pytest.fixture
def stand_in(monkeypatch):
    api = types.ModuleType("rknnlite.api")
    api.RKNNLite = StandInLite
    monkeypatch.setitem(sys.modules, "rknnlite", types.ModuleType("rknnlite"))
    monkeypatch.setitem(sys.modules, "rknnlite.api", api)
    StandInLite.calls, StandInLite.fail = [], {}
    return StandInLite


def test_wiring_load_init_run_release(stand_in):
    m = npu_lite.NpuLiteModel("/models/a.rknn", core_mask="0_1_2")
    outs = m.run([np.zeros((1, 8, 8, 3), np.uint8)])
    m.release()
    m.release()  # twice is harmless
    assert [c[0] for c in stand_in.calls] == ["RKNNLite", "load_rknn", "init_runtime", "inference", "release"]
    assert stand_in.calls[2] == ("init_runtime", 7)
    assert [o.tolist() for o in outs] == [[[1.5, 1.5]], [[0.25, 0.25, 0.25]]]
    with pytest.raises(RuntimeStateError, match="released"):
        m.run([np.zeros((1, 8, 8, 3), np.uint8)])


def test_wiring_host_tail_turns_vendor_outputs_into_model_outputs(stand_in):
    g = helper.make_graph([helper.make_node("Concat", ["a", "b"], ["y"], axis=1)], "post",
                          [helper.make_tensor_value_info("a", TensorProto.FLOAT, None),
                           helper.make_tensor_value_info("b", TensorProto.FLOAT, None)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    post = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    post.ir_version = 8
    m = npu_lite.NpuLiteModel("/models/a.rknn", post=post.SerializeToString())
    (y,) = m.run([np.zeros((1, 8, 8, 3), np.uint8)])
    assert y.tolist() == [[1.5, 1.5, 0.25, 0.25, 0.25]]


@pytest.mark.parametrize("step", ["load_rknn", "init_runtime"])
def test_wiring_failures_release_and_explain(stand_in, step):
    stand_in.fail[step] = -1
    with pytest.raises(RuntimeStateError, match=step):
        npu_lite.NpuLiteModel("/models/a.rknn")
    assert stand_in.calls[-1] == ("release",)


def test_missing_rknnlite_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "rknnlite", None)
    with pytest.raises(NotSupportedError, match="rknn-toolkit-lite2"):
        npu_lite.NpuLiteModel("/models/a.rknn")


@pytest.mark.parametrize("value, mask", [("auto", 0), ("0", 1), ("2", 4), ("0_1", 3), ("all", 0xFFFF), (6, 6),
                                         ("0x3", 3)])
def test_core_masks(value, mask):
    assert npu_lite.parse_core_mask(value) == mask


@pytest.mark.parametrize("value", ["3cores", -1, 0x10000])
def test_bad_core_masks(value):
    with pytest.raises(NotSupportedError, match="core mask"):
        npu_lite.parse_core_mask(value)


def test_vendor_file_detection():
    assert npu_lite.is_vendor_file(b"RKNN\x00\x00\x00\x00rest")
    assert npu_lite.is_vendor_file(b"CYPTRKNN....")
    assert not npu_lite.is_vendor_file(b"ORKNN\x00\r\n" + bytes(56))
