"""A transformer traced in eval mode without gradients records torch's fused inference kernels
(aten::_transformer_encoder_layer_fwd, aten::_native_multi_head_attention), which torch's TorchScript exporter
cannot write: load_pytorch writes them as the ops they compute, so the .pt loads, runs as torch runs it, and
builds in int8 with the attention recognised."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import write_samples
from openrknn.api import RKNN

torch = pytest.importorskip("torch")
nn = torch.nn


class PatchEncoder(nn.Module):
    """Patches of a 64 x 64 image -> two encoder layers -> mean-pooled classes: a ViT in miniature."""

    def __init__(self, activation: str, norm_first: bool):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 8, 8)
        layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, activation=activation, dropout=0.0,
                                           norm_first=norm_first)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        tokens = self.stem(x).flatten(2).transpose(1, 2)
        return self.head(self.encoder(tokens).mean(1))


class PatchAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 8, 8)
        self.attention = nn.MultiheadAttention(32, 4, batch_first=True)

    def forward(self, x):
        tokens = self.stem(x).flatten(2).transpose(1, 2)
        return self.attention(tokens, tokens, tokens, need_weights=False)[0]


def _traced(module, path, fused: str):
    torch.manual_seed(0)
    module = module.eval()
    with torch.no_grad():
        traced = torch.jit.trace(module, torch.zeros(1, 3, 64, 64))
    assert any(fused in n.kind() for n in traced.inlined_graph.nodes()), "the fast path was not traced"
    traced.save(str(path))
    return module


def _loaded(path):
    rk = RKNN(verbose=False)
    rk.config(target_platform="rk3588")
    assert rk.load_pytorch(str(path), input_size_list=[[1, 3, 64, 64]]) == 0, rk.last_error
    return rk


def _runs_as_torch(rk, module, x):
    assert rk.build(do_quantization=False) == 0 and rk.init_runtime() == 0
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(rk.inference(inputs=[x], data_format="nchw")[0], want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("make, fused", [
    (lambda: PatchEncoder("relu", False), "transformer_encoder_layer_fwd"),
    (lambda: PatchEncoder("gelu", True), "transformer_encoder_layer_fwd"),
    (PatchAttention, "native_multi_head_attention"),
])
def test_a_traced_fused_kernel_loads_and_runs_as_torch_runs_it(tmp_path, make, fused):
    torch.manual_seed(0)
    module = _traced(make(), tmp_path / "fused.pt", fused)
    _runs_as_torch(_loaded(tmp_path / "fused.pt"), module,
                   np.random.default_rng(1).normal(0, 1, (1, 3, 64, 64)).astype(np.float32))


def test_a_traced_fused_encoder_keeps_its_attentions_and_gelus_whole_in_int8(tmp_path):
    """The written-out attentions and GELUs are the chains the quantizer keeps as one step each (the scores and
    probabilities never rounded to 8 bits, the GELU one activation), and the int8 build runs."""
    from openrknn.graph.attention import find_attention_regions
    from openrknn.quant.ir import GraphInfo, normalize
    from openrknn.quant.plan import _dynamic_tensors, _regions

    torch.manual_seed(0)
    _traced(PatchEncoder("gelu", False), tmp_path / "enc.pt", "transformer_encoder_layer_fwd")
    info = GraphInfo(normalize(_loaded(tmp_path / "enc.pt")._loaded.model))
    keep = set(info.output_set)
    assert len(find_attention_regions(info.nodes, _dynamic_tensors(info), keep, info.const)) == 2
    assert [r.name for r in _regions(info, keep)] == ["Gelu", "Gelu"]
    rng = np.random.default_rng(2)
    write_samples(tmp_path, [rng.normal(0, 1, (1, 3, 64, 64)).astype(np.float32) for _ in range(4)], name="ds.txt")
    rk = RKNN(verbose=False)
    rk.config(target_platform="rk3588", quantized_dtype="w8a8")
    assert rk.load_pytorch(str(tmp_path / "enc.pt"), input_size_list=[[1, 3, 64, 64]]) == 0, rk.last_error
    assert rk.build(do_quantization=True, dataset=str(tmp_path / "ds.txt")) == 0, rk.last_error
    assert rk.init_runtime() == 0
    out = rk.inference(inputs=[rng.normal(0, 1, (1, 3, 64, 64)).astype(np.float32)], data_format="nchw")
    assert out is not None and np.isfinite(out[0]).all()


class Masked(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.inner, self.kind = PatchEncoder("relu", False), kind

    def forward(self, x):
        tokens = self.inner.stem(x).flatten(2).transpose(1, 2)
        if self.kind == "padding":
            pad = torch.zeros(tokens.shape[:2], dtype=torch.bool)
            pad[:, -3:] = True
            return self.inner.encoder(tokens, src_key_padding_mask=pad)
        if self.kind == "causal":
            return self.inner.encoder(tokens, mask=nn.Transformer.generate_square_subsequent_mask(64), is_causal=True)
        return self.inner.encoder(tokens, mask=torch.triu(torch.ones(64, 64, dtype=torch.bool), 1))


@pytest.mark.parametrize("kind", ["padding", "causal", "bool"])
def test_a_fused_encoder_with_a_mask_runs_as_torch_runs_it(tmp_path, kind):
    torch.manual_seed(0)
    module = Masked(kind).eval()
    with torch.no_grad():
        traced = torch.jit.trace(module, torch.zeros(1, 3, 64, 64), check_trace=False)
    assert any("transformer_encoder_layer_fwd" in n.kind() for n in traced.inlined_graph.nodes())
    traced.save(str(tmp_path / "masked.pt"))
    _runs_as_torch(_loaded(tmp_path / "masked.pt"), module,
                   np.random.default_rng(1).normal(0, 1, (1, 3, 64, 64)).astype(np.float32))


def test_a_traced_encoder_taking_tokens_loads_with_its_own_3d_shape(tmp_path):
    """input_size_list=[[1, tokens, width]]: a shape below 4-D is taken without its batch dim ([3, H, W]) unless the
    model only runs on it as given, as a bare encoder does."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, dropout=0.0)
    encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    with torch.no_grad():
        torch.jit.trace(encoder, torch.zeros(1, 16, 32)).save(str(tmp_path / "tokens.pt"))
    rk = RKNN(verbose=False)
    rk.config(target_platform="rk3588")
    assert rk.load_pytorch(str(tmp_path / "tokens.pt"), input_size_list=[[1, 16, 32]]) == 0, rk.last_error
    _runs_as_torch(rk, encoder, np.random.default_rng(1).normal(0, 1, (1, 16, 32)).astype(np.float32))


def test_a_transformer_traced_with_gradients_on_is_refused_saying_how_to_trace_it(tmp_path):
    """Traced with gradients on, nn.MultiheadAttention records its slow path, which torch's TorchScript exporter
    cannot write (a transpose of unknown rank): the error says to trace under torch.no_grad()."""
    torch.manual_seed(0)
    module = PatchEncoder("gelu", False).eval()
    torch.jit.trace(module, torch.zeros(1, 3, 64, 64), check_trace=False).save(str(tmp_path / "slow.pt"))
    rk = RKNN(verbose=False)
    assert rk.load_pytorch(str(tmp_path / "slow.pt"), input_size_list=[[1, 3, 64, 64]]) == -1
    assert "torch.no_grad()" in str(rk.last_error) and "load_onnx()" in str(rk.last_error)
