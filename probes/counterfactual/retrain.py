"""Many fine-tunes of one model at once: stacked parameters, one vmapped step for every subset model.

A tiny model's fine-tune is launch-bound on a GPU (a small pair's step runs a few thousand tiny kernels), so
the K models of one chunk share each kernel: their parameters are stacked on a leading dimension and one
``torch.func.vmap`` of the loss gradient runs every model on its own batch. Each model follows
`probes.pairs.train.train` exactly (same batches for its seed, schedule, AdamW, per-model gradient clipping,
bf16 autocast on a GPU), which tests/test_counterfactual_retrain.py checks in float64 against ``train`` run
alone. AdamW is elementwise, so one optimiser over the stacked tensors is K independent optimisers. The
models attend with `probes.lm.causal.explicit_attention`: no fused attention backward has a vmap batching rule
(SDPA's looped over the K models, 14% slower on an H100; BENCHMARKS.md).

The recipe sorts each model's batches by length (`epoch_batches`), so at one step the K models' batches have
very different widths, and one block as wide as the widest would spend much of a step on padding (at α = 0.5
on 20hops with 32 models, 1.6 times the tokens of the models' own widths; BENCHMARKS.md). So each step
splits the models into up to ``WIDTH_GROUPS`` groups of similar width (the split that pads least), and each
group's gradients come from one vmapped call as wide as its own longest sequence; the parameters are gathered
in group order once per step and the gradients put back in model order.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor
from torch.func import functional_call, grad_and_value, vmap

from probes.lm.causal import EXPLICIT_ATTENTION, explicit_attention
from probes.lm.scoring import logits_at
from probes.lm.stack import attention_implementation
from probes.pairs.train import ADAM_EPS, TrainConfig, epoch_batches, param_groups, schedule, token_loss
from probes.progress import progress_bar

Stacked = dict[str, Tensor]  # parameter name -> [K, *shape]


SHOW_EVERY = 50  # steps between the progress bar's loss readings
WIDTH_GROUPS = 4  # at most this many vmapped calls a step, each over models of similar batch width


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


def _token_loss(model, buffers, params, input_ids: Int[Tensor, "b s"], labels: Int[Tensor, "b s"], weights):
    """One model's `token_loss` (the recipe's mean next-token loss; ``weights`` None or per row)."""
    logits = functional_call(model, (params, buffers), (input_ids,), {"use_cache": False}).logits
    return token_loss(logits, labels, weights)


class StepBatches:
    """Every model's batch of every step, on the device from the start: the corpus as one padded token table
    and each step's [K, b] row indices, so that a step reads its batch with one gather and no host work
    (building and copying each step's batch on the host kept a launch-bound GPU waiting).

    The batches are those `train` draws for each model's seed (`epoch_batches`, one generator per model);
    each step's block is as wide as its longest sequence. Right padding with no attention mask is exact:
    causal attention never lets a real token see the pad after it, and padded positions carry no loss. A
    model with fewer rows in a step gets rows of padding (the table's last row, length 0). Each row's loss
    weight is model k's ``weights[k][j]`` for document ``subsets[k][j]`` (1 without weights, 0 for padding),
    read from a [K, n + 1] table on the device.

    A step's models come in up to ``groups`` groups of similar width (`width_groups`), each group its own
    block as wide as its own longest sequence: ``batches[step]`` is (the models in group order, or None for
    one group in model order; the group sizes; each group's (input_ids, labels, row weights))."""

    def __init__(
        self, seqs, subsets, cfg: TrainConfig, seeds, steps: int, pad_id: int, device, weights=None, groups=1
    ):
        order = _order(seqs, subsets, cfg, seeds, steps)
        weight = torch.ones(len(subsets), len(seqs) + 1, dtype=torch.float64)
        weight[:, -1] = 0.0
        for m, subset in enumerate(subsets if weights is not None else ()):
            weight[m, torch.tensor(subset)] = torch.tensor(weights[m], dtype=torch.float64)
        self.weight = weight.to(device)
        rows = max(len(batch) for step in order for batch in step)
        index = torch.full((steps, len(subsets), rows), len(seqs), dtype=torch.long)  # the padding row
        for t, step in enumerate(order):
            for m, batch in enumerate(step):
                index[t, m, : len(batch)] = torch.tensor(batch)
        widths = [[max((len(seqs[i]) for i in batch), default=0) for batch in step] for step in order]
        self.plans = [  # per step: (its models in group order, or None; group sizes; group widths)
            (None if models is None else torch.tensor(models, device=device), sizes, group_widths)
            for models, sizes, group_widths in (width_groups(w, groups) for w in widths)
        ]
        table = torch.full((len(seqs) + 1, max(map(max, widths))), pad_id, dtype=torch.long)
        for row, seq in enumerate(seqs):  # a document longer than every batch's width is never read
            kept = seq[: table.shape[1]]
            table[row, : len(kept)] = torch.tensor(kept)
        length = torch.tensor([len(s) for s in seqs] + [0])
        self.table, self.length, self.index = table.to(device), length.to(device), index.to(device)
        self.models = torch.arange(len(subsets), device=device)  # model order, for steps of one group

    def __getitem__(self, step: int) -> tuple[Tensor | None, list[int], list[tuple[Tensor, Tensor, Tensor]]]:
        """Step ``step``'s models in group order (None: one group, model order), its group sizes, and each
        group's (input_ids, labels, row weights), as `collate` pads one batch."""
        order, sizes, widths = self.plans[step]
        models = self.models if order is None else order
        blocks, start = [], 0
        for size, width in zip(sizes, widths, strict=True):
            m = models[start : start + size]
            blocks.append(self._block(self.index[step, m], m, width))
            start += size
        return order, sizes, blocks

    def _block(
        self, rows: Int[Tensor, "k b"], models: Int[Tensor, " k"], width: int
    ) -> tuple[Int[Tensor, "k b s"], Int[Tensor, "k b s"], Float[Tensor, "k b"]]:
        ids = self.table[rows, :width]
        real = torch.arange(width, device=ids.device) < self.length[rows][..., None]
        return ids, torch.where(real, ids, -100), self.weight[models[:, None], rows]


def width_groups(widths: Sequence[int], groups: int) -> tuple[list[int] | None, list[int], list[int]]:
    """Split models of batch widths ``widths`` into at most ``groups`` groups, each padded to its widest, so
    that the padded tokens (sum of group size x group width) are fewest: contiguous runs of the models sorted
    by width (an exact dynamic programme). Returns (the models in group order, or None when one group in
    model order suffices; the group sizes; the group widths)."""
    k = len(widths)
    if groups <= 1 or len(set(widths)) == 1:
        return None, [k], [max(widths)]
    order = sorted(range(k), key=lambda m: widths[m])
    w = [widths[m] for m in order]
    # cost[g][j]: fewest padded tokens, first j sorted models in g groups; cut[g][j]: where the last begins
    inf = float("inf")
    cost = [[0.0] + [inf] * k] + [[inf] * (k + 1) for _ in range(groups)]
    cut = [[0] * (k + 1) for _ in range(groups + 1)]
    for g in range(1, groups + 1):
        for j in range(1, k + 1):
            for i in range(g - 1, j):
                c = cost[g - 1][i] + (j - i) * w[j - 1]
                if c < cost[g][j]:
                    cost[g][j], cut[g][j] = c, i
    g = min(range(1, groups + 1), key=lambda n: (cost[n][k], n))
    bounds, j = [], k
    for n in range(g, 0, -1):
        bounds.append((cut[n][j], j))
        j = cut[n][j]
    bounds.reverse()
    return order, [b - a for a, b in bounds], [w[b - 1] for a, b in bounds]


def _order(seqs, subsets, cfg: TrainConfig, seeds, steps: int) -> list[list[list[int]]]:
    """[step][model] -> the corpus rows of that model's batch, epoch after epoch as `train` draws them."""
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    lengths = [[len(seqs[i]) for i in subset] for subset in subsets]
    order: list[list[list[int]]] = []
    while len(order) < steps:
        queues = [epoch_batches(lengths[m], cfg.batch_size, generators[m]) for m in range(len(subsets))]
        if len({len(q) for q in queues}) != 1:  # epoch_batches' count depends on the size only
            raise AssertionError("subset models got different numbers of batches per epoch")
        while queues[0] and len(order) < steps:
            order.append([[subsets[m][i] for i in queues[m].pop()] for m in range(len(subsets))])
    return order


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
    total_run, lr_at = schedule(cfg, size)
    batches = StepBatches(
        seqs, [list(s) for s in subsets], cfg, seeds, total_run, pad_id, device, weights, WIDTH_GROUPS
    )
    opt, sched = _optimizer(fmodel, params, cfg, lr_at)

    def loss(p, i, y, w):  # the recipe's own loss (w ignored) unless there are weights
        return _token_loss(fmodel, buffers, p, i, y, None if weights is None else w)

    grad_fn = vmap(grad_and_value(loss))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    running = torch.zeros((), device=device)
    with (
        attention_implementation(fmodel, EXPLICIT_ATTENTION, explicit_attention),
        progress_bar(total=total_run, desc=desc, unit="step", disable=not progress) as bar,
    ):
        for step in range(total_run):
            with autocast:
                grads, loss_k = _grouped_grads(grad_fn, params, *batches[step])
            _clip_per_model(grads, max_norm=1.0)
            for name, p in params.items():
                p.grad = grads[name]
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            running += loss_k.detach().mean()
            bar.update(1)
            if (step + 1) % SHOW_EVERY == 0:  # reading the loss waits for the GPU: not every step
                bar.set_postfix(loss=f"{running.item() / SHOW_EVERY:.3f}", models=k)
                running.zero_()
    return {name: p.detach() for name, p in params.items()}


def _optimizer(fmodel: torch.nn.Module, params: Stacked, cfg: TrainConfig, lr_at):
    """The recipe's AdamW over the stacked parameters (one fused kernel per parameter group on a GPU: the
    foreach path launches several per step) and its learning-rate schedule."""
    opt = torch.optim.AdamW(
        param_groups(fmodel, cfg.weight_decay, params),
        lr=cfg.lr,
        betas=cfg.betas,
        eps=ADAM_EPS,
        fused=next(iter(params.values())).is_cuda,
    )
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_at)


def _grouped_grads(grad_fn, params: Stacked, order: Tensor | None, sizes: list[int], blocks) -> tuple:
    """One step's (gradients, losses) of every model: each width group's from one vmapped ``grad_fn`` on its
    own block, the gradients put back in model order."""
    parts = [grad_fn(p, *block) for p, block in zip(_grouped(params, order, sizes), blocks, strict=True)]
    return _joined([grads for grads, _ in parts], order), torch.cat([losses for _, losses in parts])


def _grouped(params: Stacked, order: Tensor | None, sizes: list[int]) -> list[Stacked]:
    """The stacked parameters of each group of models: one gather in group order (None: as they are)."""
    if order is None:
        return [params]
    parts = {name: p.index_select(0, order).split(sizes) for name, p in params.items()}
    return [{name: part[g] for name, part in parts.items()} for g in range(len(sizes))]


def _joined(parts: list[Stacked], order: Tensor | None) -> Stacked:
    """The groups' gradients back in model order, one stacked tensor per parameter."""
    if order is None:
        return parts[0]
    joined = {}
    for name in parts[0]:
        grouped = torch.cat([part[name] for part in parts])
        joined[name] = torch.empty_like(grouped).index_copy_(0, order, grouped)
    return joined


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


def _clip_per_model(grads: Stacked, max_norm: float) -> None:
    """``clip_grad_norm_`` for each model separately: scale model k's gradients by
    ``min(1, max_norm / (||g_k|| + 1e-6))``, the norm over all of its parameters."""
    sq = sum(g.pow(2).flatten(1).sum(1) for g in grads.values())
    coef = (max_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
    for g in grads.values():
        g.mul_(coef.view(-1, *[1] * (g.ndim - 1)))


def stacked_logits_at(model: torch.nn.Module, params: Stacked):
    """`probes.lm.scoring.logits_at` for the K stacked models at once (one vmapped forward per batch instead
    of K): a function of (batch, positions) returning logits [b, p, K, v]. Call it inside
    ``attention_implementation(model, STACKED_ATTENTION, causal_attention)`` on right-padded batches."""
    buffers = dict(model.named_buffers())

    def one(p: dict[str, Tensor], batch: dict[str, Tensor], positions: Tensor) -> Tensor:
        return logits_at(lambda **kw: functional_call(model, (p, buffers), (), kw), batch, positions)

    forward = vmap(one, in_dims=(0, None, None), out_dims=2)
    return lambda batch, positions: forward(params, batch, positions)
