""".pth -> TorchScript export: strict loading with helpful errors, trace verified, atomic write."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from openrknn.errors import ConfigError, ModelLoadError
from openrknn.vision.yolox.export import build_random_yolox, describe_state_dict, export_torchscript
from openrknn.vision.yolox.model import YoloBody

SIZE = (96, 128)


@pytest.fixture(autouse=True)
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture(scope="module")
def nano_model():
    return build_random_yolox("nano", 3, seed=7)


@pytest.fixture
def nano_pth(tmp_path, nano_model):
    path = tmp_path / "nano_3cls.pth"
    torch.save(nano_model.state_dict(), path)
    return path


def test_build_random_is_deterministic_and_non_trivial():
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a, b, c = (build_random_yolox("nano", 2, seed=s)(x) for s in (1, 1, 2))
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert all(not torch.allclose(p, q) for p, q in zip(a, c))
    assert all(float(o.std()) > 0.05 for o in a)  # not a constant map


@pytest.mark.slow
def test_export_round_trip(tmp_path, nano_pth, nano_model):
    out = tmp_path / "sub" / "nano.pt"
    info = export_torchscript(nano_pth, "nano", 3, SIZE, out)
    assert out.is_file()
    assert [p.name for p in out.parent.iterdir()] == ["nano.pt"]  # no temp file left behind
    assert info["out"] == str(out)
    assert info["input_shape"] == [1, 3, 96, 128]
    assert info["output_shapes"] == [[1, 8, 12, 16], [1, 8, 6, 8], [1, 8, 3, 4]]
    assert 0.0 <= info["max_abs_diff"] <= 1e-5
    assert info["params"] == sum(p.numel() for p in nano_model.parameters())
    loaded = torch.jit.load(str(out))
    x = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        for a, b in zip(nano_model(x), loaded(x)):
            assert float((a - b).abs().max()) <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("wrap", ["model", "state_dict", "module_prefix"])
def test_checkpoint_wrappers_accepted(tmp_path, nano_model, wrap):
    sd = nano_model.state_dict()
    if wrap == "module_prefix":
        obj = {f"module.{k}": v for k, v in sd.items()}
    else:
        obj = {wrap: sd, "epoch": 12}
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    info = export_torchscript(path, "nano", 3, 64, tmp_path / "w.pt")
    assert info["output_shapes"][0] == [1, 8, 8, 8]


@pytest.mark.slow
def test_reference_pth_exports_to_reference_outputs(tmp_path, real_data):
    out = tmp_path / "ref.pt"
    export_torchscript(real_data("yolox_pytorch_ref/yolox_nano_3cls_seed0.pth"), "nano", 3, 416, out)
    x = torch.from_numpy(np.load(real_data("yolox_pytorch_ref/input_nchw_float32.npy")))
    with torch.no_grad():
        outs = torch.jit.load(str(out))(x)
    for i, o in enumerate(outs):
        assert np.abs(o.numpy() - np.load(real_data(f"yolox_pytorch_ref/output{i}.npy"))).max() <= 1e-4


@pytest.mark.slow
def test_relu_export(tmp_path, nano_pth):
    info = export_torchscript(nano_pth, "nano", 3, 64, tmp_path / "relu.pt", act="relu")
    assert info["act"] == "relu"
    graph = str(torch.jit.load(str(tmp_path / "relu.pt")).inlined_graph)
    assert "relu" in graph and "silu" not in graph


def test_wrong_num_classes(tmp_path, nano_pth):
    out = tmp_path / "x.pt"
    with pytest.raises(ModelLoadError) as err:
        export_torchscript(nano_pth, "nano", 80, 64, out)
    msg = str(err.value)
    assert "6 shape mismatches" in msg  # cls_preds weight + bias at three levels
    assert "head.cls_preds.0.weight: model (80, 64, 1, 1) vs file (3, 64, 1, 1)" in msg
    assert "this file looks like phi='nano', num_classes=3" in msg
    assert not out.exists()


def test_wrong_phi(tmp_path, nano_pth):
    with pytest.raises(ModelLoadError) as err:
        export_torchscript(nano_pth, "s", 3, 64, tmp_path / "x.pt")
    msg = str(err.value)
    assert "missing keys (first 10)" in msg and "unexpected keys (first 10)" in msg
    assert "this file looks like phi='nano', num_classes=3" in msg
    assert len(msg.splitlines()) < 50  # capped lists, not a wall of 600 keys


def test_wrong_phi_tiny_file(tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save(build_random_yolox("tiny", 4, seed=0).state_dict(), path)
    with pytest.raises(ModelLoadError, match=r"looks like phi='tiny', num_classes=4"):
        export_torchscript(path, "s", 4, 64, tmp_path / "x.pt")


def test_describe_depthwise_override():
    with torch.device("meta"):
        sd = YoloBody(3, "s", depthwise=True).state_dict()
    assert describe_state_dict(sd) == {"phi": "s", "num_classes": 3, "depthwise": True}


def test_unknown_phi_is_config_error(nano_pth, tmp_path):
    with pytest.raises(ConfigError, match="phi='small'"):
        export_torchscript(nano_pth, "small", 3, 64, tmp_path / "x.pt")


@pytest.mark.parametrize("kind", ["text", "list", "not_tensors", "empty",
                                  pytest.param("torchscript", marks=pytest.mark.slow)])
def test_not_a_state_dict(tmp_path, kind, nano_model):
    path = tmp_path / f"{kind}.pth"
    if kind == "text":
        path.write_text("this is not a checkpoint\n")
        expected = "not a readable PyTorch state dict"
    elif kind == "list":
        torch.save([torch.zeros(2)], path)
        expected = "holds a list, not a state dict"
    elif kind == "not_tensors":
        torch.save({"epoch": 3, "lr": 0.01}, path)
        expected = "not a state dict: 2 entries are not name -> tensor"
    elif kind == "empty":
        torch.save({}, path)
        expected = "not a state dict"
    else:
        torch.jit.trace(nano_model, torch.zeros(1, 3, 64, 64)).save(str(path))
        expected = "already a TorchScript model"
    with pytest.raises(ModelLoadError, match=expected):
        export_torchscript(path, "nano", 3, 64, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="weights file not found: .*nope.pth"):
        export_torchscript(tmp_path / "nope.pth", "nano", 3, 64, tmp_path / "x.pt")


@pytest.mark.parametrize("size", [100, (64, 50), (64,), 0])
def test_bad_size(tmp_path, nano_pth, size):
    with pytest.raises(ConfigError, match="size="):
        export_torchscript(nano_pth, "nano", 3, size, tmp_path / "x.pt")
