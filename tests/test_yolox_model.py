"""YoloBody must be a drop-in for yolox-pytorch's: same state-dict keys/shapes per phi, same outputs on its weights."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from openrknn.errors import ConfigError
from openrknn.vision.yolox.export import build_random_yolox
from openrknn.vision.yolox.model import YoloBody

PHIS = ("nano", "tiny", "s", "m", "l", "x")
# From the reference README: parameters + BN running mean/var, without num_batches_tracked.
README_COUNTS = {"nano": 912_536, "tiny": 5_050_776, "s": 8_961_560, "m": 25_325_208, "l": 54_218_776,
                 "x": 99_098_264}


@pytest.fixture(autouse=True)
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def meta_model(phi: str, **kw) -> YoloBody:
    # The meta device gives shapes without allocating x's 99M parameters.
    with torch.device("meta"):
        return YoloBody(3, phi, **kw)


@pytest.mark.parametrize("phi", PHIS)
def test_state_dict_keys_and_shapes_match_reference(phi, real_data):
    ref = json.loads(real_data("yolox_pytorch_ref/yolox_pytorch_state_dict_keys.json").read_text())[phi]
    got = [[k, list(v.shape)] for k, v in meta_model(phi).state_dict().items()]
    assert [k for k, _ in got] == [k for k, _ in ref]  # same keys, same order
    assert got == ref


@pytest.mark.parametrize("phi", PHIS)
def test_parameter_counts_match_readme(phi):
    sd = meta_model(phi).state_dict()
    assert sum(v.numel() for k, v in sd.items() if not k.endswith("num_batches_tracked")) == README_COUNTS[phi]


def test_depthwise_default_and_override():
    assert any(".dconv." in k for k in meta_model("nano").state_dict())
    assert not any(".dconv." in k for k in meta_model("s").state_dict())
    assert any(".dconv." in k for k in meta_model("s", depthwise=True).state_dict())
    assert not any(".dconv." in k for k in meta_model("nano", depthwise=False).state_dict())


def test_bn_eps_and_momentum_follow_reference():
    bns = [m for m in meta_model("nano").modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.eps == 1e-3 and m.momentum == 0.03 for m in bns)


def test_reference_weights_reproduce_reference_outputs(real_data):
    model = YoloBody(3, "nano")
    state = torch.load(real_data("yolox_pytorch_ref/yolox_nano_3cls_seed0.pth"), map_location="cpu",
                       weights_only=True)
    model.load_state_dict(state, strict=True)
    model.eval()
    x = torch.from_numpy(np.load(real_data("yolox_pytorch_ref/input_nchw_float32.npy")))
    with torch.no_grad():
        outs = model(x)
    assert isinstance(outs, tuple) and len(outs) == 3
    for i, out in enumerate(outs):
        ref = np.load(real_data(f"yolox_pytorch_ref/output{i}.npy"))
        assert out.shape == ref.shape
        assert np.abs(out.numpy() - ref).max() <= 1e-4


@pytest.mark.slow
def test_output_layout_and_trace_non_square():
    torch.manual_seed(0)
    model = YoloBody(5, "nano").eval()
    x = torch.randn(1, 3, 96, 160)
    with torch.no_grad():
        traced = torch.jit.trace(model, x)
        eager, jit = model(x), traced(x)
    assert [tuple(o.shape) for o in eager] == [(1, 10, 12, 20), (1, 10, 6, 10), (1, 10, 3, 5)]
    assert isinstance(jit, tuple) and len(jit) == 3
    for a, b in zip(eager, jit):
        assert torch.allclose(a, b, atol=1e-6)
    # channel layout: [reg(4), obj(1), cls(nc)] -> obj channel equals the obj predictor's output at stride 8
    with torch.no_grad():
        fpn = model.backbone(x)
        reg_feat = model.head.reg_convs[0](model.head.stems[0](fpn[0]))
        obj = model.head.obj_preds[0](reg_feat)
    assert torch.allclose(eager[0][:, 4:5], obj, atol=1e-6)


def test_relu_variant_same_keys_and_different_outputs():
    # Random BN statistics: with default init (mean 0, var 1) every map is nearly constant and both acts agree.
    silu, relu = build_random_yolox("nano", 3, seed=0), YoloBody(3, "nano", act="relu")
    assert [(k, v.shape) for k, v in silu.state_dict().items()] == [(k, v.shape) for k, v in relu.state_dict().items()]
    assert not any(isinstance(m, torch.nn.SiLU) for m in relu.modules())
    assert any(isinstance(m, torch.nn.ReLU) for m in relu.modules())
    relu.load_state_dict(silu.state_dict(), strict=True)
    silu.eval(), relu.eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = silu(x), relu(x)
    assert [o.shape for o in a] == [o.shape for o in b]
    assert all(torch.isfinite(o).all() for o in b)
    assert max(float((p - q).abs().max()) for p, q in zip(a, b)) > 1e-3


@pytest.mark.parametrize("kwargs, key", [
    ({"num_classes": 3, "phi": "small"}, "phi"),
    ({"num_classes": 3, "phi": "s", "act": "gelu"}, "act"),
    ({"num_classes": 0, "phi": "s"}, "num_classes"),
    ({"num_classes": 2.0, "phi": "s"}, "num_classes"),
])
def test_bad_constructor_arguments(kwargs, key):
    with pytest.raises(ConfigError) as err:
        YoloBody(**kwargs)
    assert err.value.key == key
    assert repr(kwargs[key]) in str(err.value)
