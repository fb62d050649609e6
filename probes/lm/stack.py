"""The decoder stack of a Hugging Face causal LM: its blocks ``layers``, final ``norm`` and ``rotary_emb``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from torch import Tensor, nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS


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


@contextmanager
def edited_hidden_state(
    model, layer: int, edit: Callable[[Tensor], Tensor], use: str = "this"
) -> Iterator[None]:
    """Inside the block, the model's hidden state ``layer`` (as in ``output_hidden_states``: 0 = embeddings,
    L = after the final norm) is ``edit(state)``; everything above runs from it. The hook goes in on entering
    and out on leaving, also after an error."""
    stack = decoder_stack(model, ("layers", "norm"), use)
    if not 0 <= layer <= len(stack.layers):
        raise ValueError(f"layer {layer} is out of range: hidden states run 0..{len(stack.layers)}")

    def swap_input(module, args, kwargs):
        if args:
            return (edit(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": edit(kwargs["hidden_states"])}

    if layer < len(stack.layers):
        handle = stack.layers[layer].register_forward_pre_hook(swap_input, with_kwargs=True)
    else:  # the final norm's output: the LM head may read only some positions of it (logits_to_keep)
        handle = stack.norm.register_forward_hook(lambda module, args, output: edit(output))
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def attention_implementation(model, name: str, function) -> Iterator[None]:
    """Inside the block, ``model`` runs its attention with ``function``, known to transformers as ``name``
    only there: the entry goes into transformers' attention table on entering and out on leaving, and the
    model gets its own implementation back, also after an error."""
    table = ALL_ATTENTION_FUNCTIONS
    previous_function = table.get(name)
    previous = model.config._attn_implementation
    table[name] = function
    try:
        model.set_attn_implementation(name)
        yield
    finally:
        model.set_attn_implementation(previous)
        if previous_function is None:
            del table[name]
        else:
            table[name] = previous_function
