"""ONNX forms of the fused transformer kernels that torch's inference fast path records in a trace.

Traced in eval mode without gradients, nn.TransformerEncoderLayer (batch_first, ReLU or GELU) runs as one fused
kernel, aten::_transformer_encoder_layer_fwd, and nn.MultiheadAttention as aten::_native_multi_head_attention;
the TorchScript records those, and torch's TorchScript-to-ONNX exporter has no mapping for either, so a traced
transformer did not load. Here each is written out as the ops the layer computes in its slow path: the packed
q / k / v projection split per head, softmax(q k^T / sqrt(d)) v (the chain graph/attention.py recognises as
one attention), the output projection, the residual adds, LayerNormalization and the feed-forward block.
"""

from __future__ import annotations

import math

ENCODER_LAYER = "aten::_transformer_encoder_layer_fwd"
ATTENTION = "aten::_native_multi_head_attention"


def _const(g, value, dtype=None):
    import torch

    return g.op("Constant", value_t=torch.tensor(value, dtype=dtype))


def _linear(g, x, weight, bias):
    """x @ weight^T + bias (constant folding takes the transpose into the weight)."""
    return g.op("Add", g.op("MatMul", x, g.op("Transpose", weight, perm_i=[1, 0])), bias)


def _split3(g, t, embed: int, axis: int):
    import torch

    return g.op("Split", t, _const(g, [embed] * 3, torch.int64), axis_i=axis, outputs=3)


def _attention(g, q, k, v, embed: int, heads: int, proj_weight, proj_bias, mask=None, mask_type=None):
    """[B, S, E] projected queries, keys, values -> the heads' attention, merged and projected: [B, S, E]."""
    import torch

    depth = embed // heads

    def split_heads(t):  # [B, S, E] -> [B, heads, S, depth]
        return g.op("Transpose", g.op("Reshape", t, _const(g, [0, -1, heads, depth], torch.int64)),
                    perm_i=[0, 2, 1, 3])

    scores = g.op("MatMul", split_heads(q), g.op("Transpose", split_heads(k), perm_i=[0, 1, 3, 2]))
    scores = _masked(g, g.op("Mul", scores, _const(g, 1.0 / math.sqrt(depth), torch.float32)), mask, mask_type)
    probs = g.op("Softmax", scores, axis_i=-1)
    merged = g.op("Transpose", g.op("MatMul", probs, split_heads(v)), perm_i=[0, 2, 1, 3])
    merged = g.op("Reshape", merged, _const(g, [0, -1, embed], torch.int64))
    return _linear(g, merged, proj_weight, proj_bias)


def _masked(g, scores, mask, mask_type):
    """The scores [B, heads, Sq, Sk] with the fused kernel's mask applied: mask_type 0 an attention mask [Sq, Sk],
    1 a key padding mask [B, Sk], 2 both merged [B, heads, Sq, Sk]; a float mask is added (the layers turn a bool
    one into -inf where True before the kernel), a bool one masks where True."""
    import torch
    from torch.onnx import symbolic_helper as sh

    if mask is None or sh._is_none(mask):
        return scores
    kind = sh._maybe_get_const(mask_type, "i")
    if kind not in (0, 1, 2):
        raise RuntimeError(f"a fused attention with a mask of type {kind} has no ONNX form here; export the "
                           "nn.Module with torch.onnx.export(model, x, 'model.onnx') and use load_onnx()")
    if kind == 1:
        mask = g.op("Unsqueeze", mask, _const(g, [1, 2], torch.int64))
    if mask.type().scalarType() == "Bool":
        return g.op("Where", mask, _const(g, float("-inf"), torch.float32), scores)
    return g.op("Add", scores, mask)


def encoder_layer(g, src, embed_dim, num_heads, qkv_weight, qkv_bias, proj_weight, proj_bias, use_gelu, norm_first,
                  eps, norm_weight_1, norm_bias_1, norm_weight_2, norm_bias_2, ffn_weight_1, ffn_bias_1,
                  ffn_weight_2, ffn_bias_2, mask=None, mask_type=None):
    """nn.TransformerEncoderLayer's forward (batch_first: src is [B, S, E])."""
    import torch
    from torch.onnx import symbolic_helper as sh

    embed, heads = sh._get_const(embed_dim, "i", "embed_dim"), sh._get_const(num_heads, "i", "num_heads")
    gelu, first = sh._get_const(use_gelu, "b", "use_gelu"), sh._get_const(norm_first, "b", "norm_first")
    epsilon = sh._get_const(eps, "f", "eps")

    def norm(x, weight, bias):
        return g.op("LayerNormalization", x, weight, bias, axis_i=-1, epsilon_f=epsilon)

    def self_attention(x):
        q, k, v = _split3(g, _linear(g, x, qkv_weight, qkv_bias), embed, -1)
        return _attention(g, q, k, v, embed, heads, proj_weight, proj_bias, mask, mask_type)

    def feed_forward(x):
        h = _linear(g, x, ffn_weight_1, ffn_bias_1)
        if gelu:  # the exact GELU, as the spelled form an opset-17 exporter writes
            erf = g.op("Erf", g.op("Div", h, _const(g, math.sqrt(2.0), torch.float32)))
            h = g.op("Mul", g.op("Mul", h, g.op("Add", erf, _const(g, 1.0, torch.float32))),
                     _const(g, 0.5, torch.float32))
        else:
            h = g.op("Relu", h)
        return _linear(g, h, ffn_weight_2, ffn_bias_2)

    if first:
        x = g.op("Add", src, self_attention(norm(src, norm_weight_1, norm_bias_1)))
        return g.op("Add", x, feed_forward(norm(x, norm_weight_2, norm_bias_2)))
    x = norm(g.op("Add", src, self_attention(src)), norm_weight_1, norm_bias_1)
    return norm(g.op("Add", x, feed_forward(x)), norm_weight_2, norm_bias_2)


def multi_head_attention(g, query, key, value, embed_dim, num_head, qkv_weight, qkv_bias, proj_weight, proj_bias,
                         mask=None, need_weights=True, average_attn_weights=True, mask_type=None):
    """nn.MultiheadAttention's forward (batch_first) when the trace kept no attention weights."""
    import torch
    from torch.onnx import symbolic_helper as sh

    if sh._maybe_get_const(need_weights, "b") is True:
        raise RuntimeError("a MultiheadAttention whose fused form returns its attention weights has no ONNX form "
                           "here; call it with need_weights=False, or export the nn.Module with "
                           "torch.onnx.export(model, x, 'model.onnx') and use load_onnx()")
    embed, heads = sh._get_const(embed_dim, "i", "embed_dim"), sh._get_const(num_head, "i", "num_head")
    wq, wk, wv = _split3(g, qkv_weight, embed, 0)
    bq, bk, bv = _split3(g, qkv_bias, embed, 0)
    out = _attention(g, _linear(g, query, wq, bq), _linear(g, key, wk, bk), _linear(g, value, wv, bv), embed,
                     heads, proj_weight, proj_bias, mask, mask_type)
    return out, g.op("Constant", value_t=torch.zeros(0))  # the weights it did not keep


def register(opset: int) -> None:
    """Make torch's TorchScript exporter write the fused kernels as above (at ``opset``). The registration is the
    process's: any later torch.onnx.export(..., dynamo=False) there writes them so too, where it had no form."""
    from torch.onnx import register_custom_op_symbolic

    register_custom_op_symbolic(ENCODER_LAYER, encoder_layer, opset)
    register_custom_op_symbolic(ATTENTION, multi_head_attention, opset)
