"""Integrated gradients along h_old -> h_new at one layer: f_new run on from a replaced hidden state."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from probes.features.backend import DEFAULT, PassOptions, pass_for
from probes.features.pooling import Pooler
from probes.lm.scoring import Tokenized, collate, length_batches, pad_id, tokenize
from probes.lm.stack import edited_hidden_state
from probes.progress import progress_bar


def riemann_path_mean(
    grad_fn: Callable[[Tensor], Tensor], start: Tensor, end: Tensor, steps: int, group: int | None = None
) -> Tensor:
    """``(1/K) sum_{k=1..K} grad(start + (k/K)(end - start))``: the right Riemann sum of the path integral
    ``int_0^1 grad(start + a(end - start)) da``. Times ``end - start`` it is integrated gradients; K = 1 is
    the plain gradient at ``end``; exact for any K when the gradient is constant along the path.

    ``grad_fn`` takes ``group`` states stacked on a new leading axis (default: all K at once) and returns
    their gradients stacked the same way, so one call can evaluate several steps as one batch.
    """
    if steps < 1:
        raise ValueError(f"integrated gradients needs steps >= 1, got {steps}")
    alphas = torch.arange(1, steps + 1, dtype=start.dtype, device=start.device) / steps
    total = torch.zeros_like(start)
    for chunk in alphas.split(group or steps):
        states = start + chunk.view(-1, *[1] * start.dim()) * (end - start)
        total += grad_fn(states).sum(0)
    return total / steps


def replaced_hidden_state(model, layer: int, state: Float[Tensor, "b s d"]):
    """Inside the block, the model's hidden state ``layer`` (as in ``output_hidden_states``: 0 = embeddings,
    L = after the final norm) is ``state``; everything above runs from it, everything below is ignored."""
    return edited_hidden_state(model, layer, lambda _: state, "integrated gradients")


def text_loss(
    model,
    batch: dict[str, Tensor],
    items: Sequence[Tokenized],
    loss: str,
    candidate_ids: Int[Tensor, "c"] | None = None,
    options: PassOptions = DEFAULT,
) -> Float[Tensor, "b"]:
    """Each text's own loss, as `probes.features.extract.gradient_features` defines it ("lm", "ce" or
    "margin"), computed as ``options``' backend computes it, from a forward with the batch's attention
    mask."""
    kwargs = dict(attention_mask=batch["attention_mask"], position_ids=batch["position_ids"], use_cache=False)
    return pass_for(options).text_losses(
        model,
        lambda **kw: model(input_ids=batch["input_ids"], **kwargs, **kw),
        batch,
        items,
        loss,
        candidate_ids,
    )[0]


def path_gradient(
    model,
    batch: dict[str, Tensor],
    items: Sequence[Tokenized],
    layer: int,
    start: Float[Tensor, "b s d"],
    end: Float[Tensor, "b s d"],
    steps: int,
    loss: str,
    candidate_ids: Int[Tensor, "c"] | None = None,
    group: int | None = None,
    options: PassOptions = DEFAULT,
) -> Float[Tensor, "b s d"]:
    """Mean gradient of each text's loss w.r.t. hidden state ``layer`` along ``start -> end`` (all tokens),
    ``group`` steps per forward/backward pass (default: all of them)."""

    def grad_at(states: Tensor) -> Tensor:
        # k interpolated states of the whole batch run as one batch of k * b rows
        k = states.shape[0]
        state = states.flatten(0, 1).detach().requires_grad_(True)
        repeated = {key: value.repeat(k, *[1] * (value.dim() - 1)) for key, value in batch.items()}
        with torch.enable_grad(), replaced_hidden_state(model, layer, state):
            value = text_loss(model, repeated, list(items) * k, loss, candidate_ids, options).sum()
            (grad,) = torch.autograd.grad(value, state)
        return grad.view(states.shape)

    return riemann_path_mean(grad_at, start, end, steps, group)


def integrated_gradients(
    old,
    new,
    tokenizer,
    texts: Sequence[str],
    *,
    layers: Sequence[int],
    steps: int,
    targets: Sequence[tuple[int, int]] | None = None,
    loss: str = "lm",
    candidate_ids: Int[Tensor, "c"] | None = None,
    pooling: str = "last",
    times_delta: bool = False,
    batch_size: int = 16,
    progress: bool = True,
    options: PassOptions = DEFAULT,
) -> Float[Tensor, "n l d"]:
    """Pooled path-mean gradients ``g_IG`` of f_new's loss at each of ``layers``, where hidden state l runs
    from f_old's to f_new's (all positions) while f_new computes everything above it. ``Δh_l ⊙ g_IG_l`` is the
    K-step integrated-gradients attribution; K = 1 gives f_new's plain activation gradient. ``times_delta``:
    pool the per-position attribution ``Δh_l,t ⊙ g_IG_l,t`` instead of the gradient alone. ``options``: the
    backend of the losses (`probes.features.backend`)."""
    items = tokenize(tokenizer, texts, targets)
    device = next(new.parameters()).device
    out_dtype = torch.float64 if next(new.parameters()).dtype == torch.float64 else torch.float32
    out = torch.empty(len(texts), len(layers), new.config.hidden_size, dtype=out_dtype)
    batches = length_batches([len(item.ids) for item in items], batch_size)
    for index in progress_bar(
        batches, desc=f"integrated gradients (K={steps})", disable=not progress, leave=False
    ):
        chunk = [items[i] for i in index]
        batch = collate(chunk, pad_id(tokenizer), "right", device)
        kwargs = dict(
            attention_mask=batch["attention_mask"], position_ids=batch["position_ids"], use_cache=False
        )
        with torch.inference_mode():
            h_old = old(input_ids=batch["input_ids"], output_hidden_states=True, **kwargs).hidden_states
            h_new = new(input_ids=batch["input_ids"], output_hidden_states=True, **kwargs).hidden_states
        pool = Pooler(chunk, batch["offset"], pooling, out_dtype, device)
        for j, layer in enumerate(layers):
            start, end = h_old[layer].clone(), h_new[layer].clone()  # out of inference mode for autograd
            grad = path_gradient(
                new, batch, chunk, layer, start, end, steps, loss, candidate_ids, options=options
            )
            out[index, j] = pool((end - start) * grad if times_delta else grad).cpu()
    return out
