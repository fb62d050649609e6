"""Per-example losses (lm, ce, margin) for activation gradients: their sum gives each text its own dL/dh."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn
from torch.nn.attention import sdpa_kernel

from probes.lm.scoring import ATTENTION_BACKENDS, Tokenized, to_device

LOSSES = ("lm", "ce", "margin")


def check_loss(loss: str) -> str:
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    return loss


def reference_lm_loss(
    logits: Float[Tensor, "b s v"], input_ids: Int[Tensor, "b s"], attention_mask: Int[Tensor, "b s"]
) -> Float[Tensor, "b"]:
    """Each text's next-token cross-entropy averaged over its real predicted tokens, from its full logits:
    the definition `probes.features.fast.losses.lm_loss` computes in chunks."""
    real = attention_mask.bool()
    predicted = real[:, 1:] & real[:, :-1]
    nll = F.cross_entropy(upcast(logits[:, :-1]).transpose(1, 2), input_ids[:, 1:], reduction="none")
    nll = torch.where(predicted, nll, torch.zeros((), dtype=nll.dtype, device=nll.device))
    return nll.sum(-1) / predicted.sum(-1).clamp(min=1)


def lm_head(model) -> nn.Module:
    """The model's LM head; raises for models whose logits are not exactly ``head(final hidden state)``."""
    config = model.config
    for key, plain in (("final_logit_softcapping", None), ("logit_scale", None), ("logits_scaling", 1.0)):
        if getattr(config, key, plain) != plain:
            raise TypeError(
                f"{type(model).__name__} transforms its logits ({key}={getattr(config, key)}) after the LM "
                "head, which the 'lm' loss does not reproduce; it supports plain heads (Llama, OLMo2, Qwen2, "
                "Mistral)"
            )
    return model.get_output_embeddings()


def target_layout(
    items: Sequence[Tokenized], offset: Int[Tensor, "b"], device: str | torch.device
) -> tuple[Int[Tensor, "b p"], Int[Tensor, "b p"], Bool[Tensor, "b p"]]:
    """For each row: the positions that predict its target tokens, those tokens, and which entries are real
    (rows with shorter targets repeat their first entry, marked not real); built on the host from the CPU
    ``offset``, then moved to ``device``."""
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
    return to_device(positions, device), to_device(tokens, device), to_device(valid, device)


def ce_loss(
    logits: Float[Tensor, "b p v"], targets: Int[Tensor, "b p"], valid: Bool[Tensor, "b p"]
) -> Float[Tensor, "b"]:
    """Cross-entropy of each text's target tokens given what precedes them, averaged over the target."""
    nll = F.cross_entropy(upcast(logits).transpose(1, 2), targets, reduction="none")
    nll = torch.where(valid, nll, torch.zeros((), dtype=nll.dtype, device=nll.device))
    return nll.sum(-1) / valid.sum(-1)


def margin_loss(
    logits: Float[Tensor, "b v"], answers: Int[Tensor, "b"], candidate_ids: Int[Tensor, "c"]
) -> Float[Tensor, "b"]:
    """``-answer_margin`` over the candidate answers' logits: negative when the answer wins."""
    candidates = upcast(logits[:, candidate_ids])
    is_answer = candidate_ids[None, :] == answers[:, None]
    if not bool(is_answer.any(-1).all()):
        missing = answers[~is_answer.any(-1)].tolist()
        raise ValueError(
            f"answer token ids {missing} are not among the candidate ids; margin needs them there"
        )
    return -answer_margin(candidates, is_answer.int().argmax(-1))


def answer_margin(logits: Float[Tensor, "b c"], answer: Int[Tensor, "b"]) -> Float[Tensor, "b"]:
    """The one margin: the answer's logit minus the largest logit among the other candidates (``logits``
    over the candidate answers, ``answer`` the index of each row's answer among them); positive when the
    answer wins."""
    correct = logits.gather(1, answer[:, None])[:, 0]
    others = logits.scatter(1, answer[:, None], float("-inf"))
    return correct - others.amax(1)


def upcast(x: Tensor) -> Tensor:
    """At least float32 (bf16 logits lose too much in a softmax), float64 kept for exact tests."""
    return x if x.dtype == torch.float64 else x.float()


@sdpa_kernel(ATTENTION_BACKENDS)
def text_losses(
    model,
    run: Callable[..., object],
    batch: dict[str, Tensor],
    items: Sequence[Tokenized],
    loss: str,
    candidate_ids: Int[Tensor, "c"] | None = None,
) -> tuple[Float[Tensor, "b"], object]:
    """Each text's own loss ("lm", "ce" or "margin") from one call of ``model``, and that call's output: the
    reference computation, from the model's full logits read where the definitions say.

    ``run(**kwargs)`` calls ``model`` on ``batch`` (however the caller feeds it). The fast backend computes
    the same losses without the full logits (`probes.features.fast.losses.text_losses`). Attention runs on
    `probes.lm.scoring.ATTENTION_BACKENDS` (its backward follows the forward's kernel).
    """
    check_loss(loss)
    out = run(output_hidden_states=True)
    if loss == "lm":
        return reference_lm_loss(out.logits, batch["input_ids"], batch["attention_mask"]), out
    positions, tokens, valid = target_layout(items, batch["offset"], batch["input_ids"].device)
    rows = torch.arange(len(items), device=positions.device)[:, None]
    return target_loss(out.logits[rows, positions], tokens, valid, loss, candidate_ids), out


def target_loss(logits, tokens, valid, loss, candidate_ids) -> Float[Tensor, "b"]:
    """The "ce" or "margin" loss of the logits at each row's target positions."""
    if loss == "ce":
        return ce_loss(logits, tokens, valid)
    if candidate_ids is None:
        raise ValueError("loss 'margin' needs candidate_ids (the candidate answers' token ids)")
    return margin_loss(logits[:, 0], tokens[:, 0], candidate_ids.to(logits.device))
