"""Per-example losses (lm, ce, margin) for activation gradients: their sum gives each text its own dL/dh."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn
from torch.nn.attention import sdpa_kernel
from torch.nn.modules import module as module_hooks
from torch.utils.checkpoint import checkpoint

from probes.lm.backend import DEFAULT, PassOptions
from probes.lm.compiled import compiled
from probes.lm.scoring import ATTENTION_BACKENDS, Tokenized, last_position, to_device

LOSSES = ("lm", "ce", "margin")


def check_loss(loss: str) -> str:
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    return loss


# Logit elements (rows x positions x vocabulary) one chunk of the fast "lm" loss may hold: 2**27 is 512 MiB of
# fp32 logits; a chunk's backward holds a few such copies (bf16 logits, fp32 upcast, log-softmax, its
# gradient), ~2 GiB at any batch size. Llama-3.2's 128k vocabulary at 256 rows: 4 positions a chunk. A batch
# whose single position exceeds the budget still runs one position at a time.
LOGIT_BUDGET = 2**27


def reference_lm_loss(
    logits: Float[Tensor, "b s v"], input_ids: Int[Tensor, "b s"], attention_mask: Int[Tensor, "b s"]
) -> Float[Tensor, "b"]:
    """Each text's next-token cross-entropy averaged over its real predicted tokens, from its full logits:
    the definition `lm_loss` computes in chunks."""
    real = attention_mask.bool()
    predicted = real[:, 1:] & real[:, :-1]
    nll = F.cross_entropy(_upcast(logits[:, :-1]).transpose(1, 2), input_ids[:, 1:], reduction="none")
    nll = torch.where(predicted, nll, torch.zeros((), dtype=nll.dtype, device=nll.device))
    return nll.sum(-1) / predicted.sum(-1).clamp(min=1)


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
    gradient) run fused (`probes.lm.compiled`).
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
    logits = _upcast(head(hidden))
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
    log_probs = _upcast(F.linear(hidden, weight)).log_softmax(-1)
    picked = -log_probs.gather(-1, targets[..., None])[..., 0]
    keep = predicted.to(log_probs.dtype)
    grad_logits = (
        log_probs.exp().scatter_add(-1, targets[..., None], -torch.ones_like(picked)[..., None])
        * keep[..., None]
    )
    return (picked * keep).sum(-1), grad_logits.to(hidden.dtype) @ weight


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
    nll = F.cross_entropy(_upcast(logits).transpose(1, 2), targets, reduction="none")
    nll = torch.where(valid, nll, torch.zeros((), dtype=nll.dtype, device=nll.device))
    return nll.sum(-1) / valid.sum(-1)


def margin_loss(
    logits: Float[Tensor, "b v"], answers: Int[Tensor, "b"], candidate_ids: Int[Tensor, "c"]
) -> Float[Tensor, "b"]:
    """``-answer_margin`` over the candidate answers' logits: negative when the answer wins."""
    candidates = _upcast(logits[:, candidate_ids])
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


def _upcast(x: Tensor) -> Tensor:
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
    options: PassOptions = DEFAULT,
) -> tuple[Float[Tensor, "b"], object]:
    """Each text's own loss ("lm", "ce" or "margin") from one call of ``model``, and that call's output.

    ``run(**kwargs)`` calls ``model`` on ``batch`` (however the caller feeds it). The reference backend
    (``options``) takes the full logits of that call. The fast one passes ``logits_to_keep``
    so the vocabulary projection runs only where a target is predicted ("ce", "margin"), or only at the last
    position (`probes.lm.scoring.last_position`; "lm", with ``output_hidden_states=True``: `lm_loss` projects
    the final hidden state itself, in chunks of at most `LOGIT_BUDGET` logits, compiled with
    ``options.compile``).
    Attention runs on `probes.lm.scoring.ATTENTION_BACKENDS` (its backward follows the forward's kernel).
    """
    check_loss(loss)
    if not options.fast:
        return _reference_text_losses(run, batch, items, loss, candidate_ids)
    if loss == "lm":
        head = lm_head(model)
        out = run(logits_to_keep=last_position(batch["input_ids"]), output_hidden_states=True)
        rows, vocab = batch["input_ids"].shape[0], head.weight.shape[0]
        chunk = max(1, LOGIT_BUDGET // (rows * vocab))
        ids, mask = batch["input_ids"], batch["attention_mask"]
        return lm_loss(head, out.hidden_states[-1], ids, mask, chunk, options.compile), out
    positions, tokens, valid = target_layout(items, batch["offset"], batch["input_ids"].device)
    keep = torch.unique(positions)
    out = run(logits_to_keep=keep)
    rows = torch.arange(len(items), device=keep.device)[:, None]
    logits = out.logits[rows, torch.searchsorted(keep, positions)]
    return _target_loss(logits, tokens, valid, loss, candidate_ids), out


def _reference_text_losses(run, batch, items, loss, candidate_ids) -> tuple[Float[Tensor, "b"], object]:
    """`text_losses` from the model's full logits, read where the definitions say."""
    out = run(output_hidden_states=True)
    if loss == "lm":
        return reference_lm_loss(out.logits, batch["input_ids"], batch["attention_mask"]), out
    positions, tokens, valid = target_layout(items, batch["offset"], batch["input_ids"].device)
    rows = torch.arange(len(items), device=positions.device)[:, None]
    return _target_loss(out.logits[rows, positions], tokens, valid, loss, candidate_ids), out


def _target_loss(logits, tokens, valid, loss, candidate_ids) -> Float[Tensor, "b"]:
    """The "ce" or "margin" loss of the logits at each row's target positions."""
    if loss == "ce":
        return ce_loss(logits, tokens, valid)
    if candidate_ids is None:
        raise ValueError("loss 'margin' needs candidate_ids (the candidate answers' token ids)")
    return margin_loss(logits[:, 0], tokens[:, 0], candidate_ids.to(logits.device))
