"""The decoder stack of a Hugging Face causal LM: its blocks ``layers``, final ``norm`` and ``rotary_emb``."""

from __future__ import annotations

from torch import nn


def decoder_stack(model, parts: tuple[str, ...] = ("layers",), use: str = "this") -> nn.Module:
    """``model.base_model`` (``model.model`` of a *ForCausalLM), checked to hold a ModuleList ``layers`` of
    decoder blocks and the other ``parts``; raises naming the model and ``use`` (what needs them)."""
    stack = model.base_model
    missing = [part for part in parts if not hasattr(stack, part)]
    if not isinstance(getattr(stack, "layers", None), nn.ModuleList) and "layers" not in missing:
        missing.insert(0, "layers")
    if missing:
        raise TypeError(
            f"{type(model).__name__}: its base model has no {', '.join(map(repr, missing))}; {use} supports "
            "decoder stacks laid out like Llama, OLMo2, Qwen2 and Mistral (a ModuleList 'layers' of blocks, "
            "'norm', 'rotary_emb')"
        )
    return stack
