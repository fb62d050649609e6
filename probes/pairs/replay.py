"""f_new's fine-tune as a pure function of (parameters, AdamW state) and a loss weight per document: the
recipe of `probes.pairs.train.train` step for step (its batches for the seed, learning-rate schedule,
gradient clipping, AdamW with its parameter groups, bf16 autocast on a GPU), on parameters held outside the
model, so that a step can be replayed forward and differentiated (MAGIC's metagradients, `metagrad`).

Every operation of a step is the out-of-place form of what ``train`` runs (torch's single-tensor AdamW:
``lerp`` for the first moment, ``addcmul`` for the second, ``addcdiv`` for the update; ``clip_grad_norm_``'s
norm of per-parameter norms), so at w = 1 the replay ends at f_new's weights (tests/test_magic.py: 1e-6 in
float32 on a CPU). Forward, the model runs its own attention with train's mask; differentiated (inside
`Replay.attention`), `probes.lm.causal.explicit_attention`, the only implementation that differentiates
twice (batches are right-padded, so it needs no mask).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor
from torch.func import functional_call

from probes.lm.causal import EXPLICIT_ATTENTION, explicit_attention
from probes.lm.stack import attention_implementation
from probes.pairs.train import ADAM_EPS, TrainConfig, batch_stream, collate, decayed, schedule, token_loss

State = tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]  # (params, exp_avg, exp_avg_sq)
MAX_GRAD_NORM = 1.0  # train's clip_grad_norm_(..., 1.0)


@dataclass
class Replay:
    """The recipe's run on ``seqs``: the model (a copy, in train mode) and, per step, its batch (document
    indices) and learning rate.

    Args:
        model: f_old (copied; its trainable parameters are the replay's initial parameters).
        seqs: every document's token ids, in corpus order (weights index them).
        cfg, seed: the recipe and its data-order seed (`probes.pairs.recipe.pair_recipe`).
        pad_id: the tokenizer's pad id.
        autocast: bf16 autocast in the loss (as `train` runs on a GPU); None = on a GPU.
    """

    model: torch.nn.Module
    seqs: Sequence[Sequence[int]]
    cfg: TrainConfig
    seed: int
    pad_id: int
    autocast: bool | None = None

    def __post_init__(self) -> None:
        # every parameter trains, as in the recipe (a frozen f_old, e.g. a compared pair's, is copied)
        self.model = copy.deepcopy(self.model).train().requires_grad_(True)
        self.device = next(self.model.parameters()).device
        self.buffers = dict(self.model.named_buffers())
        total, lr_at = schedule(self.cfg, len(self.seqs))
        stream = batch_stream(
            [len(s) for s in self.seqs], self.cfg.batch_size, torch.Generator().manual_seed(self.seed)
        )
        self.batches = [next(stream) for _ in range(total)]
        self.lrs = [self.cfg.lr * lr_at(t) for t in range(total)]
        self.decay = {n: self.cfg.weight_decay if d else 0.0 for n, d in decayed(self.model).items()}
        if self.autocast is None:
            self.autocast = self.device.type == "cuda"

    @property
    def steps(self) -> int:
        return len(self.batches)

    def initial(self) -> State:
        """f_old's trainable parameters and AdamW's zero moments."""
        params = {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}
        return (
            params,
            {n: torch.zeros_like(p) for n, p in params.items()},
            {n: torch.zeros_like(p) for n, p in params.items()},
        )

    def inputs(self, t: int) -> tuple[Int[Tensor, "b s"], Int[Tensor, "b s"]]:
        """Step ``t``'s batch, right-padded, on the model's device."""
        ids, labels = collate([self.seqs[i] for i in self.batches[t]], self.pad_id)
        return ids.to(self.device), labels.to(self.device)

    def attention(self):
        """Context: the model runs `explicit_attention` (twice differentiable, batches under vmap)."""
        return attention_implementation(self.model, EXPLICIT_ATTENTION, explicit_attention)

    def loss(self, params: dict[str, Tensor], ids, labels, weights: Float[Tensor, " b"]) -> Tensor:
        """The batch's weighted loss (`token_loss`) at ``params``."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bool(self.autocast)):
            mask = (labels != -100).long()  # train's attention mask (explicit attention needs none)
            kwargs = {"attention_mask": mask, "use_cache": False}
            logits = functional_call(self.model, (params, self.buffers), (ids,), kwargs).logits
        return token_loss(logits, labels, weights)

    def step(
        self, state: State, t: int, ids, labels, weights: Float[Tensor, " b"], traced: bool = False
    ) -> State:
        """One step of the recipe: clipped gradient, then torch's AdamW update with step count ``t + 1``.

        ``traced``: the loss gradient by ``torch.func.grad``, so that torch.func can differentiate the step;
        otherwise by ``torch.autograd.grad``, which gives ``loss.backward()``'s floats in ``train`` (the
        functorch gradient differs from it by ~1e-8, which Adam's first steps amplify to ~1e-6)."""
        params = state[0]
        if traced:
            grads = torch.func.grad(self.loss)(params, ids, labels, weights)
        else:
            leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
            with torch.enable_grad():
                loss = self.loss(leaves, ids, labels, weights)
                grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values())), strict=True))
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads.values()]))
        coef = (MAX_GRAD_NORM / (norm + 1e-6)).clamp(max=1.0)
        clipped = {n: g * coef for n, g in grads.items()}
        return adamw(state, clipped, self.lrs[t], t + 1, self.decay, self.cfg.betas)

    def run(self, state: State, start: int, stop: int, weights: Float[Tensor, " n"]) -> list[State]:
        """The states after steps ``start .. stop - 1`` from ``state`` (the state before step ``start``),
        without autograd; ``weights``: every document's loss weight."""
        out = []
        with torch.no_grad():
            for t in range(start, stop):
                state = self.step(state, t, *self.inputs(t), self.batch_weights(weights, t))
                out.append(state)
        return out

    def batch_weights(self, weights: Float[Tensor, " n"], t: int) -> Float[Tensor, " b"]:
        return weights[torch.tensor(self.batches[t], device=weights.device)].to(self.device)


def adamw(
    state: State,
    grads: dict[str, Tensor],
    lr: float,
    step: int,
    decay: dict[str, float],
    betas: tuple[float, float],
) -> State:
    """torch's single-tensor AdamW (``torch.optim.adam._single_tensor_adam``, decoupled weight decay) out of
    place: the same operations in the same order, so the same floats."""
    (beta1, beta2), eps = betas, ADAM_EPS
    bias_correction1, bias_correction2 = 1 - beta1**step, 1 - beta2**step
    step_size, bias_correction2_sqrt = lr / bias_correction1, bias_correction2**0.5
    params, exp_avg, exp_avg_sq = state
    new = {}, {}, {}
    for name, grad in grads.items():
        param = params[name] * (1 - lr * decay[name]) if decay[name] else params[name]
        m = torch.lerp(exp_avg[name], grad, 1 - beta1)
        v = (exp_avg_sq[name] * beta2).addcmul(grad, grad, value=1 - beta2)
        denom = safe_sqrt(v) / bias_correction2_sqrt + eps
        new[0][name], new[1][name], new[2][name] = param.addcdiv(m, denom, value=-step_size), m, v
    return new


def safe_sqrt(v: Tensor) -> Tensor:
    """``sqrt(v)`` (the same floats) whose derivative is 0 instead of inf where v = 0: a parameter whose
    gradient has always been 0 (the embedding row of a token no batch holds) has m = v = 0, and
    differentiating its update must give 0, not 0 x inf = NaN."""
    positive = v > 0
    return torch.where(positive, v, torch.ones_like(v)).sqrt() * positive
