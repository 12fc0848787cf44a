"""torch.export archives (.pt2, torch.export.save): load_pytorch takes their input shapes from the archive, traces
their graph for torch's TorchScript exporter, and falls back to torch's own exporter of exported programs (with
onnxscript) where that one cannot write the graph (nn.MultiheadAttention's decomposition)."""

from __future__ import annotations

import numpy as np
import pytest

from openrknn.api import RKNN

torch = pytest.importorskip("torch")
nn = torch.nn

from test_traced_transformers import PatchAttention, _runs_as_torch  # noqa: E402  (after torch's skip)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.GroupNorm(2, 8)

    def forward(self, x):
        return nn.functional.gelu(self.norm(self.conv(x)))


def _saved(module, path, shape=(1, 3, 32, 32)):
    torch.manual_seed(0)
    module = module.eval()
    torch.export.save(torch.export.export(module, (torch.rand(*shape),)), str(path))
    return module


def _x(shape=(1, 3, 32, 32)):
    return np.random.default_rng(1).normal(0, 1, shape).astype(np.float32)


def _refused(path, sizes) -> str:
    rk = RKNN(verbose=False)
    assert rk.load_pytorch(str(path), input_size_list=sizes) == -1
    return str(rk.last_error)


def test_an_exported_program_loads_with_the_shapes_it_was_exported_with(tmp_path):
    torch.manual_seed(0)
    module = _saved(Net(), tmp_path / "net.pt2")
    rk = RKNN(verbose=False)
    rk.config(target_platform="rk3588")
    assert rk.load_pytorch(str(tmp_path / "net.pt2"), input_size_list=None) == 0, rk.last_error
    assert rk._loaded.notes[0].startswith("torch.export program exported to ONNX opset 17")
    _runs_as_torch(rk, module, _x())


def test_an_exported_program_refuses_shapes_it_was_not_exported_with(tmp_path):
    torch.manual_seed(0)
    _saved(Net(), tmp_path / "net.pt2")
    assert "does not run on inputs of shape [[1, 3, 48, 48]]" in _refused(tmp_path / "net.pt2", [[1, 3, 48, 48]])


def test_an_exported_attention_goes_through_torchs_own_exporter(tmp_path):
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    module = _saved(PatchAttention(), tmp_path / "attention.pt2", (1, 3, 64, 64))
    rk = RKNN(verbose=False)
    rk.config(target_platform="rk3588")
    assert rk.load_pytorch(str(tmp_path / "attention.pt2"), input_size_list=None) == 0, rk.last_error
    assert "dynamo exporter" in rk._loaded.notes[0]
    _runs_as_torch(rk, module, _x((1, 3, 64, 64)))


def test_without_onnxscript_an_exported_attention_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr("openrknn.frontends.pytorch._has_onnxscript", lambda: False)
    torch.manual_seed(0)
    _saved(PatchAttention(), tmp_path / "attention.pt2", (1, 3, 64, 64))
    assert "pip install onnxscript" in _refused(tmp_path / "attention.pt2", None)


def test_the_default_exporters_file_of_a_gelu_net_loads(tmp_path):
    """torch.onnx.export's default (dynamo, opset 18+) writes the GELU and the GroupNorm as single ops."""
    pytest.importorskip("onnxscript")
    import onnx

    torch.manual_seed(0)
    module = Net().eval()
    torch.onnx.export(module, (torch.rand(1, 3, 32, 32),), str(tmp_path / "net.onnx"), input_names=["x"])
    ops = {n.op_type for n in onnx.load(str(tmp_path / "net.onnx")).graph.node}
    assert "Gelu" in ops
    rk = RKNN(verbose=False)
    rk.config(target_platform="rk3588")
    assert rk.load_onnx(str(tmp_path / "net.onnx")) == 0, rk.last_error
    _runs_as_torch(rk, module, _x())


def test_the_cli_converts_an_exported_program_without_input_sizes(tmp_path, capsys):
    import yaml

    from openrknn.cli import main

    torch.manual_seed(0)
    module = _saved(Net(), tmp_path / "net.pt2")
    (tmp_path / "convert.yml").write_text(yaml.safe_dump({
        "model": "net.pt2", "output": "net.rknn", "config": {"target_platform": "rk3588"},
        "build": {"do_quantization": False}}))
    assert main(["convert", str(tmp_path / "convert.yml")]) == 0, capsys.readouterr().err
    rk = RKNN(verbose=False)
    assert rk.load_rknn(str(tmp_path / "net.rknn")) == 0 and rk.init_runtime() == 0
    x = np.random.default_rng(1).normal(0, 1, (1, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(rk.inference(inputs=[x], data_format="nchw")[0], want, rtol=1e-4, atol=1e-5)
