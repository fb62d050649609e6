"""A small deterministic next-token training loop for the tiny pair (length-bucketed batches, pad masked)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from probes.lm.scoring import pad_rows
from probes.progress import progress_bar


@dataclass(frozen=True)
class TrainConfig:
    """One training phase.

    Args:
        epochs: passes over the texts.
        lr: peak AdamW learning rate (linear warm-up, ``constant_steps`` at the peak, cosine decay to
            ``lr * min_lr_ratio``).
        batch_size: texts per step (texts of similar length are batched together).
        warmup: fraction of the steps spent warming up.
        weight_decay: AdamW weight decay on matrices; embeddings and norms are never decayed, so rows of
            tokens that never occur keep their initial values.
        min_lr_ratio: final learning rate as a fraction of ``lr``.
        max_steps: stop after this many steps (0: no limit); the schedule still spans every epoch.
        warmup_steps: warm-up steps (0: ``warmup`` as a fraction of the steps instead).
        constant_steps: steps at the peak learning rate between the warm-up and the cosine decay.
        max_length: tokens kept of each training sequence (None: whole; `encode_texts`).
        betas: AdamW's (beta1, beta2); eps is `ADAM_EPS`.
    """

    epochs: int | float = 10
    lr: float = 3e-3
    batch_size: int = 32
    warmup: float = 0.05
    weight_decay: float = 0.1
    min_lr_ratio: float = 0.1
    max_steps: int = 0
    warmup_steps: int = 0
    constant_steps: int = 0
    max_length: int | None = None
    betas: Sequence[float] = (0.9, 0.98)  # a tuple once made (a recipe file gives a list)

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))  # a YAML or JSON list
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {list(self.betas)}")


def encode_texts(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int | None = None
) -> list[list[int]]:
    """Token ids of each text as a training sequence: the tokenizer's specials (BOS), the text, EOS; the
    first ``max_length`` of them when given (a recipe's `TrainConfig.max_length`)."""
    ids = tokenizer(list(texts), add_special_tokens=True).input_ids
    eos = tokenizer.eos_token_id
    seqs = [seq + [eos] if eos is not None and seq[-1:] != [eos] else seq for seq in ids]
    return [seq[:max_length] for seq in seqs] if max_length else seqs


def epoch_batches(lengths: Sequence[int], batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """Batches of sequence indices: shuffled, then sorted by length within windows of 16 batches."""
    order = torch.randperm(len(lengths), generator=generator).tolist()
    window = batch_size * 16
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    perm = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in perm]


def batch_stream(lengths: Sequence[int], batch_size: int, generator: torch.Generator) -> Iterator[list[int]]:
    """The recipe's batches in training order, epoch after epoch (`epoch_batches`, taken from the end); an
    epoch's batches are drawn from ``generator`` only once its first batch is asked for."""
    while True:
        batches = epoch_batches(lengths, batch_size, generator)
        while batches:
            yield batches.pop()


def collate(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[Int[Tensor, "b s"], Int[Tensor, "b s"]]:
    """Right-padded ``(input_ids, labels)`` (`probes.lm.scoring.pad_rows`); padded label positions are -100
    (ignored by the loss)."""
    input_ids, mask, _ = pad_rows(seqs, pad_id)
    return input_ids, input_ids.masked_fill(mask == 0, -100)


def token_loss(
    logits: Float[Tensor, "b s v"], labels: Int[Tensor, "b s"], weights: Float[Tensor, " b"] | None = None
) -> Float[Tensor, ""]:
    """The batch's next-token cross-entropy, each row's tokens weighted by ``weights`` (its document's loss
    weight), divided by the batch's labelled tokens counted unweighted: ``sum_d w_d sum_t ce_dt / N``.

    At w = 1 this is the recipe's loss (transformers' mean over the labelled positions), and a document of
    weight 0 is dropped in place: its batch, the other documents' terms and the denominator stay as they
    were (bergson's ``weighted_causal_lm_ce``, MAGIC's convention). Dividing by the weighted count instead
    would make every other document's weight depend on w_d, so a metagradient would mix the document's own
    effect with a rescaling of its batch. Logits are taken in float32 from half precision, as transformers
    does; a float64 model stays float64."""
    logits = logits.float() if logits.dtype in (torch.bfloat16, torch.float16) else logits
    targets = labels[:, 1:]
    flat = (logits[:, :-1].flatten(0, 1), targets.flatten())
    if weights is None:
        total = torch.nn.functional.cross_entropy(*flat, ignore_index=-100, reduction="sum")
    else:
        per = torch.nn.functional.cross_entropy(*flat, ignore_index=-100, reduction="none")
        total = (per.view(targets.shape) * weights[:, None].to(per.dtype)).sum()
    return total / (targets != -100).sum()


ADAM_EPS = 1e-8  # AdamW's eps (its betas: TrainConfig.betas)


def decayed(model: torch.nn.Module) -> dict[str, bool]:
    """Per trainable parameter name: does weight decay apply (matrices, but never embeddings, so rows of
    tokens that never occur keep their initial values)."""
    embeddings = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    trainable = ((n, p) for n, p in model.named_parameters() if p.requires_grad)
    return {n: p.ndim >= 2 and id(p) not in embeddings for n, p in trainable}


def param_groups(model: torch.nn.Module, weight_decay: float, params: dict | None = None) -> list[dict]:
    """AdamW groups of ``model``'s parameters (or of ``params``, tensors by the same names, e.g. stacked
    copies): weight decay where `decayed`, none elsewhere."""
    params = params or dict(model.named_parameters())
    flags = decayed(model)
    groups = [[params[n] for n, d in flags.items() if d], [params[n] for n, d in flags.items() if not d]]
    return [{"params": groups[0], "weight_decay": weight_decay}, {"params": groups[1], "weight_decay": 0.0}]


def schedule(cfg: TrainConfig, n: int) -> tuple[int, Callable[[int], float]]:
    """(steps to run, learning-rate factor per step) for ``n`` sequences: linear warm-up, ``constant_steps``
    at the peak, cosine decay to ``min_lr_ratio`` over the rest of every epoch's steps (``max_steps`` stops
    early without changing it)."""
    total = max(1, math.ceil(cfg.epochs * math.ceil(n / cfg.batch_size)))
    warmup = cfg.warmup_steps or max(1, int(cfg.warmup * total))
    decay_from = warmup + cfg.constant_steps

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if step < decay_from:
            return 1.0
        done = (step - decay_from) / max(1, total - decay_from)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * done))

    return (min(total, cfg.max_steps) if cfg.max_steps else total), lr_at


def _batch_loss(model, input_ids: Tensor, labels: Tensor, weights: Sequence[float] | None) -> Tensor:
    """transformers' own loss of the batch (``weights`` None, the recipe as it built f_new), else
    `token_loss` with these row weights."""
    mask = (labels != -100).long()
    if weights is None:
        return model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
    w = torch.tensor(weights, dtype=torch.float64, device=input_ids.device)
    return token_loss(model(input_ids=input_ids, attention_mask=mask).logits, labels, w)


def train(
    model: PreTrainedModel,
    seqs: Sequence[Sequence[int]],
    cfg: TrainConfig,
    *,
    pad_id: int,
    seed: int,
    desc: str = "train",
    on_epoch: Callable[[int, float], None] | None = None,
    progress: bool = True,
    weights: Sequence[float] | None = None,
) -> list[float]:
    """Train ``model`` in place on ``seqs`` (full-sequence next-token loss); returns the mean loss per epoch.

    Deterministic for a seed on CPU: the data order comes from a seeded generator, dropout is off.
    ``on_epoch(epoch, mean_loss)`` runs after each epoch (the model in eval mode meanwhile). ``weights``: a
    loss weight per sequence (`token_loss`; 0 drops a sequence in place, keeping the batches of the run on
    every sequence); None = transformers' own loss, the recipe as it built f_new.
    """
    if not seqs:
        raise ValueError(f"train({desc}): no training sequences")
    generator = torch.Generator().manual_seed(seed)
    lengths = [len(s) for s in seqs]
    steps_per_epoch = math.ceil(len(seqs) / cfg.batch_size)
    total_run, lr_at = schedule(cfg, len(seqs))
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=ADAM_EPS)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    device = next(model.parameters()).device
    # bf16 autocast on a GPU (weights and optimiser state stay fp32); plain fp32 on a CPU
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    model.train()
    curve: list[float] = []
    step, epoch_loss, epoch_n = 0, 0.0, 0
    stream = batch_stream(lengths, cfg.batch_size, generator)
    with progress_bar(total=total_run, desc=desc, unit="step", disable=not progress) as bar:
        while step < total_run:
            batch = next(stream)
            input_ids, labels = (t.to(device) for t in collate([seqs[i] for i in batch], pad_id))
            with autocast:
                rows = None if weights is None else [weights[i] for i in batch]
                loss = _batch_loss(model, input_ids, labels, rows)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            epoch_loss, epoch_n = epoch_loss + loss.item(), epoch_n + 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", epoch=f"{step / steps_per_epoch:.1f}")
            if step % steps_per_epoch == 0 or step == total_run:
                curve.append(epoch_loss / epoch_n)
                epoch_loss, epoch_n = 0.0, 0
                if on_epoch is not None:
                    model.eval()
                    on_epoch(len(curve), curve[-1])
                    model.train()
    model.eval()
    return curve
