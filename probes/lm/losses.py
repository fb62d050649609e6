"""Per-example losses (lm, ce, margin) for activation gradients: their sum gives each text its own dL/dh."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from probes.lm.scoring import Tokenized

LOSSES = ("lm", "ce", "margin")


def check_loss(loss: str) -> str:
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    return loss


def lm_loss(
    logits: Float[Tensor, "b s v"], input_ids: Int[Tensor, "b s"], attention_mask: Int[Tensor, "b s"]
) -> Float[Tensor, "b"]:
    """Each text's own next-token cross-entropy, averaged over its real predicted tokens (pads masked)."""
    real = attention_mask.bool()
    predicted = real[:, 1:] & real[:, :-1]
    nll = F.cross_entropy(_upcast(logits[:, :-1]).transpose(1, 2), input_ids[:, 1:], reduction="none")
    nll = torch.where(predicted, nll, torch.zeros((), dtype=nll.dtype, device=nll.device))
    return nll.sum(-1) / predicted.sum(-1).clamp(min=1)


def target_layout(
    items: Sequence[Tokenized], offset: Int[Tensor, "b"]
) -> tuple[Int[Tensor, "b p"], Int[Tensor, "b p"], Bool[Tensor, "b p"]]:
    """For each row: the positions that predict its target tokens, those tokens, and which entries are real
    (rows with shorter targets repeat their first entry, marked not real)."""
    width = max(item.target[1] - item.target[0] for item in items)
    positions = torch.zeros(len(items), width, dtype=torch.long)
    tokens = torch.zeros(len(items), width, dtype=torch.long)
    valid = torch.zeros(len(items), width, dtype=torch.bool)
    for row, (item, start) in enumerate(zip(items, offset.tolist(), strict=True)):
        first, end = item.target
        span = list(range(first, end)) + [first] * (width - (end - first))
        positions[row] = torch.tensor(span) - 1 + start
        tokens[row] = torch.tensor([item.ids[i] for i in span])
        valid[row, : end - first] = True
    device = offset.device
    return positions.to(device), tokens.to(device), valid.to(device)


def ce_loss(
    logits: Float[Tensor, "b p v"], targets: Int[Tensor, "b p"], valid: Bool[Tensor, "b p"]
) -> Float[Tensor, "b"]:
    """Cross-entropy of each text's target tokens given what precedes them, averaged over the target."""
    nll = F.cross_entropy(_upcast(logits).transpose(1, 2), targets, reduction="none")
    nll = torch.where(valid, nll, torch.zeros((), dtype=nll.dtype, device=nll.device))
    return nll.sum(-1) / valid.sum(-1)


def margin_loss(
    logits: Float[Tensor, "b v"], answers: Int[Tensor, "b"], candidate_ids: Int[Tensor, "c"]
) -> Float[Tensor, "b"]:
    """-(logit[answer] - max over the other candidate answers): negative when the answer wins."""
    candidates = _upcast(logits[:, candidate_ids])
    is_answer = candidate_ids[None, :] == answers[:, None]
    if not bool(is_answer.any(-1).all()):
        missing = answers[~is_answer.any(-1)].tolist()
        raise ValueError(
            f"answer token ids {missing} are not among the candidate ids; margin needs them there"
        )
    correct = candidates[is_answer]
    others = candidates.masked_fill(is_answer, float("-inf")).amax(-1)
    return others - correct


def _upcast(x: Tensor) -> Tensor:
    """At least float32 (bf16 logits lose too much in a softmax), float64 kept for exact tests."""
    return x if x.dtype == torch.float64 else x.float()


def text_losses(
    run: Callable[..., object],
    batch: dict[str, Tensor],
    items: Sequence[Tokenized],
    loss: str,
    candidate_ids: Int[Tensor, "c"] | None = None,
) -> tuple[Float[Tensor, "b"], object]:
    """Each text's own loss ("lm", "ce" or "margin") from one model call, and that call's output.

    ``run(**kwargs)`` calls the model on ``batch`` (however the caller feeds it); for "ce" and "margin" it
    gets ``logits_to_keep`` so the vocabulary projection runs only where a target is predicted.
    """
    check_loss(loss)
    if loss == "lm":
        out = run()
        return lm_loss(out.logits, batch["input_ids"], batch["attention_mask"]), out
    positions, tokens, valid = target_layout(items, batch["offset"])
    keep = torch.unique(positions)
    out = run(logits_to_keep=keep)
    rows = torch.arange(len(items), device=keep.device)[:, None]
    logits = out.logits[rows, torch.searchsorted(keep, positions)]
    if loss == "ce":
        return ce_loss(logits, tokens, valid), out
    if candidate_ids is None:
        raise ValueError("loss 'margin' needs candidate_ids (the candidate answers' token ids)")
    return margin_loss(logits[:, 0], tokens[:, 0], candidate_ids.to(logits.device)), out
