"""Many fine-tunes of one model at once: stacked parameters, one vmapped step for every subset model.

A tiny model's fine-tune is launch-bound on a GPU (a small pair's step runs a few thousand tiny kernels), so
the K models of one chunk share each kernel: their parameters are stacked on a leading dimension and one
``torch.func.vmap`` of the loss gradient runs every model on its own batch. Each model follows
`probes.lm.train_lm.train` exactly (same batches for its seed, schedule, AdamW, per-model gradient clipping,
bf16 autocast on a GPU), which tests/test_counterfactual_retrain.py checks in float64 against ``train`` run
alone. AdamW is elementwise, so one optimiser over the stacked tensors is K independent optimisers.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor
from torch.func import functional_call, grad_and_value, vmap
from tqdm.auto import tqdm

from probes.lm.causal import STACKED_ATTENTION, causal_attention
from probes.lm.patch import attention_implementation
from probes.lm.train_lm import ADAMW, TrainConfig, batch_stream, collate, param_groups, schedule, token_loss

Stacked = dict[str, Tensor]  # parameter name -> [K, *shape]


def stack(model: torch.nn.Module, k: int) -> Stacked:
    """K copies of ``model``'s trainable parameters, stacked. Plain tensors: torch.func computes their
    gradients, and autograd must not track them too (tracked, each step's graph stayed alive through the
    gradients: 1 GB more per step for four tiny models)."""
    return {
        name: p.detach().unsqueeze(0).repeat(k, *[1] * p.ndim)
        for name, p in model.named_parameters()
        if p.requires_grad
    }


def unstack(params: Stacked, index: int) -> dict[str, Tensor]:
    """Model ``index``'s parameters (views) from a stacked dict."""
    return {name: p[index].detach() for name, p in params.items()}


def load_into(model: torch.nn.Module, params: dict[str, Tensor]) -> torch.nn.Module:
    """Copy ``params`` into ``model`` in place (tied weights receive the value once); returns it."""
    own = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in params.items():
            own[name].copy_(value)
    return model


def _token_loss(model, buffers, params, input_ids: Int[Tensor, "b s"], labels: Int[Tensor, "b s"], weights):
    """One model's `token_loss` (the recipe's mean next-token loss; ``weights`` None or per row)."""
    logits = functional_call(model, (params, buffers), (input_ids,), {"use_cache": False}).logits
    return token_loss(logits, labels, weights)


def _step_batch(
    seqs: Sequence[Sequence[int]],
    batches: Sequence[Sequence[int]],
    pad_id: int,
    device,
    row_weights: Sequence[dict[int, float]] | None = None,
) -> tuple[Int[Tensor, "k b s"], Int[Tensor, "k b s"], Float[Tensor, "k b"]]:
    """Every model's batch (document indices) padded to one [K, b, s] block, and each row's loss weight
    (model k's ``row_weights[k][document]``; 1 without weights); missing rows carry no labels.

    Right padding with no attention mask is exact: causal attention never lets a real token see the pad
    after it, and padded positions carry no loss."""
    rows = max(len(b) for b in batches)
    width = max(len(seqs[i]) for b in batches for i in b)
    ids = torch.full((len(batches), rows, width), pad_id, dtype=torch.long)
    labels = torch.full((len(batches), rows, width), -100, dtype=torch.long)
    weights = torch.zeros(len(batches), rows, dtype=torch.float64)
    for k, batch in enumerate(batches):
        block_ids, block_labels = collate([seqs[i] for i in batch], pad_id)
        ids[k, : len(batch), : block_ids.shape[1]] = block_ids
        labels[k, : len(batch), : block_labels.shape[1]] = block_labels
        weights[k, : len(batch)] = torch.tensor([row_weights[k][i] for i in batch]) if row_weights else 1.0
    return ids.to(device), labels.to(device), weights.to(device)


def _subset_size(subsets: Sequence[Sequence[int]], seeds: Sequence[int]) -> int:
    """The one size of the subsets (a ValueError for empty or unequal subsets, or a seed count that
    differs)."""
    sizes = {len(s) for s in subsets}
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError(
            f"train_stacked: subsets must be non-empty and of one size, got sizes {sorted(sizes)}"
        )
    if len(seeds) != len(subsets):
        raise ValueError(f"train_stacked: {len(subsets)} subsets but {len(seeds)} seeds")
    return sizes.pop()


def train_stacked(
    model: torch.nn.Module,
    seqs: Sequence[Sequence[int]],
    subsets: Sequence[Sequence[int]],
    seeds: Sequence[int],
    cfg: TrainConfig,
    *,
    pad_id: int,
    desc: str = "retrain",
    progress: bool = True,
    weights: Sequence[Sequence[float]] | None = None,
) -> Stacked:
    """Fine-tune K copies of ``model`` at once, copy k on ``seqs[subsets[k]]`` with data-order seed
    ``seeds[k]``; returns the K trained parameter sets stacked (``model`` itself is left unchanged).

    Copy k equals ``train(copy of model, [seqs[i] for i in subsets[k]], cfg, seed=seeds[k], weights=
    weights[k])`` (``weights[k][j]``: document ``subsets[k][j]``'s loss weight). Subsets must have one size
    (they share one learning-rate schedule and so one step count)."""
    k, size = len(subsets), _subset_size(subsets, seeds)
    fmodel = copy.deepcopy(model).train()
    device = next(fmodel.parameters()).device
    params = stack(fmodel, k)
    buffers = dict(fmodel.named_buffers())
    views = [list(subset) for subset in subsets]
    lengths = [[len(seqs[i]) for i in view] for view in views]
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    total_run, lr_at = schedule(cfg, size)
    opt = torch.optim.AdamW(param_groups(fmodel, cfg.weight_decay, params), lr=cfg.lr, **ADAMW)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    row_weights = (
        None if weights is None else [dict(zip(views[m], weights[m], strict=True)) for m in range(k)]
    )

    def loss(p, i, y, w):  # the recipe's own loss (w ignored) unless there are weights
        return _token_loss(fmodel, buffers, p, i, y, None if weights is None else w)

    grad_fn = vmap(grad_and_value(loss))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    streams = [batch_stream(lengths[m], cfg.batch_size, generators[m]) for m in range(k)]
    with (
        attention_implementation(fmodel, STACKED_ATTENTION, causal_attention),
        tqdm(total=total_run, desc=desc, unit="step", disable=not progress, dynamic_ncols=True) as bar,
    ):
        for _ in range(total_run):
            batches = [[views[m][i] for i in next(streams[m])] for m in range(k)]
            input_ids, labels, w = _step_batch(seqs, batches, pad_id, device, row_weights)
            with autocast:
                grads, loss = grad_fn(params, input_ids, labels, w)
            _clip_per_model(grads, max_norm=1.0)
            for name, p in params.items():
                p.grad = grads[name]
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            bar.update(1)
            bar.set_postfix(loss=f"{loss.mean().item():.3f}", models=k)
    return {name: p.detach() for name, p in params.items()}


def _clip_per_model(grads: Stacked, max_norm: float) -> None:
    """``clip_grad_norm_`` for each model separately: scale model k's gradients by
    ``min(1, max_norm / (||g_k|| + 1e-6))``, the norm over all of its parameters."""
    sq = sum(g.pow(2).flatten(1).sum(1) for g in grads.values())
    coef = (max_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
    for g in grads.values():
        g.mul_(coef.view(-1, *[1] * (g.ndim - 1)))


def stacked_outputs(
    model: torch.nn.Module, params: Stacked, evaluate, *, progress: bool = False
) -> list[Float[Tensor, "..."]]:
    """``evaluate(model_k)`` for each of the K parameter sets, loaded one after another into a copy."""
    work = copy.deepcopy(model).eval()
    k = next(iter(params.values())).shape[0]
    out = []
    for index in tqdm(range(k), desc="evaluate", disable=not progress, leave=False):
        out.append(evaluate(load_into(work, unstack(params, index))))
    return out
