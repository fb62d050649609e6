"""The OLMo2-1B and Llama-3.2-1B architectures from their configs, with random weights, for benchmarks."""

from __future__ import annotations

import torch

ARCHS = {
    "olmo2-1b": dict(  # allenai/OLMo-2-0425-1B, the base of Lamsheeper/OLMo2-1B-{untrained,hops}
        model_type="olmo2",
        vocab_size=100352,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=16,
        num_key_value_heads=16,
        max_position_embeddings=4096,
        rope_theta=500000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
    ),
    "llama3.2-1b": dict(  # meta-llama/Llama-3.2-1B, the base of Lamsheeper/Llama3.2-1B-{untrained,hops}
        model_type="llama",
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    ),
}
# a CPU smoke-test size of either architecture (--arch olmo2-1b --shrink): same code path, seconds not minutes
SHRINK = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    head_dim=16,
    vocab_size=4096,
)


def dtype_for(device: torch.device) -> torch.dtype:
    """bf16 on a GPU; float32 on the CPU, where bf16 matmuls are far slower (smoke tests)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def build_model(arch: str, shrink: bool, device: torch.device, seed: int):
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(ARCHS[arch])
    if shrink:
        spec.update(SHRINK)
        if arch == "llama3.2-1b":
            spec["num_key_value_heads"] = 2
    model_type = spec.pop("model_type")
    # No padding_idx, so no embedding row initialised to zero. OLMo2's config defaults pad_token_id to 1,
    # our tokenizer's <s>: every text then started with a zero vector, which OLMo2's blocks (no pre-norm, no
    # biases) keep exactly zero up to the last one, and RMSNorm's backward at zero scales by 1/sqrt(eps) =
    # 1000. The gradient at <s> grew ~1000x per block: inf and NaN in the 16-block gradient pass (bf16 on the
    # H100, float32 on the CPU alike). Trained checkpoints have no zero rows.
    config = AutoConfig.for_model(model_type, pad_token_id=None, **spec)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype_for(device), attn_implementation="sdpa")
    return model.eval().requires_grad_(False)


def non_embedding_params(model) -> int:
    skip = {id(p) for p in model.get_input_embeddings().parameters()}
    skip |= {id(p) for p in model.get_output_embeddings().parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)
