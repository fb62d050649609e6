"""The fast backend's losses: logits only where a loss reads them, the "lm" loss in chunks, a fused head.

They equal the reference definitions in `probes.features.losses` (tests/test_lm_backend.py, float64, 1e-10).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn
from torch.nn.attention import sdpa_kernel
from torch.nn.modules import module as module_hooks
from torch.utils.checkpoint import checkpoint

from probes.features.fast.compiled import compiled
from probes.features.losses import check_loss, lm_head, target_layout, target_loss, upcast
from probes.lm.scoring import ATTENTION_BACKENDS, Tokenized, last_position

# Logit elements (rows x positions x vocabulary) one chunk of the fast "lm" loss may hold: 2**27 is 512 MiB of
# fp32 logits; a chunk's backward holds a few such copies (bf16 logits, fp32 upcast, log-softmax, its
# gradient), ~2 GiB at any batch size. Llama-3.2's 128k vocabulary at 256 rows: 4 positions a chunk. A batch
# whose single position exceeds the budget still runs one position at a time.
LOGIT_BUDGET = 2**27


def lm_loss(
    head: nn.Module,
    hidden: Float[Tensor, "b s d"],
    input_ids: Int[Tensor, "b s"],
    attention_mask: Int[Tensor, "b s"],
    chunk: int,
    compile: bool = False,
) -> Float[Tensor, "b"]:
    """Each text's own next-token cross-entropy, averaged over its real predicted tokens (pads masked), from
    the final hidden state through the LM ``head``, ``chunk`` positions at a time.

    Full-vocabulary logits never exist for the whole batch, nor are they kept for the backward. Through a
    frozen, unobserved Linear head (`_fusable`) each chunk's gradient w.r.t. its hidden states is computed
    with its loss (`HeadNLL`): two head GEMMs per position. Otherwise (a trainable head, or hooks that must
    see its calls, as per-example parameter gradients do) each chunk runs under activation checkpointing and
    its logits are recomputed in the backward: three. ``compile``: each chunk's head, upcast, softmax (and
    gradient) run fused (`probes.features.fast.compiled`).
    """
    real = attention_mask.bool()
    predicted = real[:, 1:] & real[:, :-1]
    width = input_ids.shape[1]
    fused = torch.is_grad_enabled() and hidden.requires_grad and _fusable(head)
    if fused:
        fn = compiled(_chunk_nll_and_grad) if compile else _chunk_nll_and_grad
    else:
        nll = compiled(_chunk_nll) if compile else _chunk_nll
    sums = []
    # a one-token batch still runs one (empty) chunk, so the loss stays in the graph with a zero gradient
    for start in range(0, max(width - 1, 1), chunk):
        args = (
            hidden[:, start : min(start + chunk, width - 1)].contiguous(),  # one GEMM, not b small ones
            input_ids[:, start + 1 : start + 1 + chunk],
            predicted[:, start : start + chunk],
        )
        if fused:
            sums.append(HeadNLL.apply(fn, head.weight, *args))
        else:
            # a linear map and a softmax: nothing random to replay
            sums.append(checkpoint(nll, head, *args, use_reentrant=False, preserve_rng_state=False))
    return torch.stack(sums).sum(0) / predicted.sum(-1).clamp(min=1)


HOOK_KINDS = ("forward", "forward_pre", "backward", "backward_pre")  # a module's own and torch's global hooks


def _fusable(head: nn.Module) -> bool:
    """Whether ``head``'s calls may skip autograd (`HeadNLL`): a bias-free Linear whose weight needs no
    gradient and that no hook observes."""
    hooked = any(
        getattr(head, f"_{kind}_hooks") or getattr(module_hooks, f"_global_{kind}_hooks")
        for kind in HOOK_KINDS
    )
    return type(head) is nn.Linear and head.bias is None and not head.weight.requires_grad and not hooked


class HeadNLL(torch.autograd.Function):
    """Each text's summed cross-entropy over one chunk through a frozen head, its gradient w.r.t. the
    chunk's hidden states computed in the same pass (softmax - one-hot, times the head weight) and kept:
    the backward scales it by each text's incoming gradient instead of recomputing the logits.

    A text's loss depends on its own rows only, so d(loss_b)/d(hidden_b) times the upstream gradient of
    loss_b is the whole gradient of row b."""

    @staticmethod
    def forward(ctx, fn, weight, hidden, targets, predicted):
        nll, grad = fn(weight, hidden, targets, predicted)
        ctx.save_for_backward(grad)
        return nll

    @staticmethod
    def backward(ctx, grad_nll):
        (grad,) = ctx.saved_tensors
        return None, None, (grad * grad_nll[:, None, None]).to(grad.dtype), None, None


def _chunk_nll(
    head: nn.Module,
    hidden: Float[Tensor, "b c d"],
    targets: Int[Tensor, "b c"],
    predicted: Bool[Tensor, "b c"],
) -> Float[Tensor, "b"]:
    """Summed cross-entropy of one chunk of positions, logits upcast to at least fp32.

    The head sees [b, c, d] (per-example parameter gradients hook it per text); the cross-entropy runs on the
    logits flattened to [b * c, v], whose kernel reduces each row over the vocabulary in parallel (the
    [b, v, c] class-dimension layout reduced a chunk of few positions several times slower; BENCHMARKS.md)."""
    logits = upcast(head(hidden))
    nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape)
    return torch.where(predicted, nll, torch.zeros((), dtype=nll.dtype, device=nll.device)).sum(-1)


def _chunk_nll_and_grad(
    weight: Float[Tensor, "v d"],
    hidden: Float[Tensor, "b c d"],
    targets: Int[Tensor, "b c"],
    predicted: Bool[Tensor, "b c"],
) -> tuple[Float[Tensor, "b"], Float[Tensor, "b c d"]]:
    """`_chunk_nll` through the head ``weight``, and each text's gradient of its sum w.r.t. ``hidden``: the
    logits' gradient (softmax - one-hot at predicted positions, at least fp32) in ``hidden``'s dtype, times
    ``weight``, as autograd computes it."""
    log_probs = upcast(F.linear(hidden, weight)).log_softmax(-1)
    picked = -log_probs.gather(-1, targets[..., None])[..., 0]
    keep = predicted.to(log_probs.dtype)
    grad_logits = (
        log_probs.exp().scatter_add(-1, targets[..., None], -torch.ones_like(picked)[..., None])
        * keep[..., None]
    )
    return (picked * keep).sum(-1), grad_logits.to(hidden.dtype) @ weight


@sdpa_kernel(ATTENTION_BACKENDS)
def text_losses(
    model,
    run: Callable[..., object],
    batch: dict[str, Tensor],
    items: Sequence[Tokenized],
    loss: str,
    candidate_ids: Int[Tensor, "c"] | None = None,
    compile: bool = False,
) -> tuple[Float[Tensor, "b"], object]:
    """`probes.features.losses.text_losses` without the full logits: ``run`` gets ``logits_to_keep`` so the
    vocabulary projection runs only where a target is predicted ("ce", "margin"), or only at the last
    position ("lm", with ``output_hidden_states=True``: `lm_loss` projects the final hidden state itself, in
    chunks of at most `LOGIT_BUDGET` logits, compiled with ``compile``)."""
    check_loss(loss)
    if loss == "lm":
        head = lm_head(model)
        out = run(logits_to_keep=last_position(batch["input_ids"]), output_hidden_states=True)
        rows, vocab = batch["input_ids"].shape[0], head.weight.shape[0]
        chunk = max(1, LOGIT_BUDGET // (rows * vocab))
        ids, mask = batch["input_ids"], batch["attention_mask"]
        return lm_loss(head, out.hidden_states[-1], ids, mask, chunk, compile), out
    positions, tokens, valid = target_layout(items, batch["offset"], batch["input_ids"].device)
    keep = torch.unique(positions)
    out = run(logits_to_keep=keep)
    rows = torch.arange(len(items), device=keep.device)[:, None]
    logits = out.logits[rows, torch.searchsorted(keep, positions)]
    return target_loss(logits, tokens, valid, loss, candidate_ids), out
