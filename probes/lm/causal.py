"""Causal attention without a mask for right-padded batches, as a transformers attention implementation:
one for forwards of models stacked under vmap (the stacked models' outputs), and one from explicit scores
whose backward vmap also batches and which differentiates twice (stacked retrains, metagradients)."""

from __future__ import annotations

import torch

STACKED_ATTENTION = "probes_stacked_causal"
EXPLICIT_ATTENTION = "probes_explicit_causal"


def causal_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **_):
    """Causal attention for forwards of models stacked under vmap (transformers passes no mask to an
    implementation it does not know, and none is needed: batches are right-padded, so a real token never sees
    a pad).

    On a GPU, scaled_dot_product_attention, whose CUDA kernels fold vmap's dimension into the batch; on a CPU
    its fused kernel has no batching rule (vmap would loop over the models), so `explicit_attention`. No
    fused backward has one on any device, so training under vmap takes `explicit_attention` throughout."""
    if not query.is_cuda:
        return explicit_attention(module, query, key, value, attention_mask, scaling)
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


def explicit_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **_):
    """Causal attention from explicit scores, on any device: plain matmuls and a softmax, so it batches
    under vmap and differentiates twice (the fused kernels' backward does not). The softmax is in float32
    from half precision and in the input's precision otherwise (transformers' eager attention takes it in
    float32 even for a float64 model)."""
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    scores = (query @ key.transpose(2, 3)) * scaling
    rows, cols = scores.shape[-2:]
    future = torch.ones(rows, cols, dtype=torch.bool, device=scores.device).triu(cols - rows + 1)
    half = query.dtype in (torch.bfloat16, torch.float16)
    weights = scores.masked_fill(future, float("-inf")).softmax(-1, dtype=torch.float32 if half else None)
    return (weights.to(query.dtype) @ value).transpose(1, 2).contiguous(), None
