"""Spearman's rank correlation per column, plain and with weighted rows (a bootstrap resample of the rows as
counts: a row drawn twice is two tied rows), both with average ranks for ties."""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor


def average_ranks(values: Float[Tensor, "rows q"]) -> Float[Tensor, "rows q"]:
    """1-based ranks of each column's values in float64, tied values sharing the average of their ranks."""
    columns = values.double().T.contiguous()  # [q, m]: searchsorted works along the last dimension
    ordered = columns.sort(dim=1).values
    below = torch.searchsorted(ordered, columns, side="left")
    up_to = torch.searchsorted(ordered, columns, side="right")
    # the tied block occupies 0-based positions below .. up_to - 1; its average 1-based rank:
    return ((below + up_to + 1).double() / 2).T


def spearman_columns(a: Float[Tensor, "subsets q"], b: Float[Tensor, "subsets q"]) -> Float[Tensor, " q"]:
    """Spearman's rank correlation of each column of ``a`` with the same column of ``b`` (float64), ties
    taking their average rank; NaN for a column where either side is constant or holds a NaN."""
    _check(a, b)
    return weighted_spearman(a, b, torch.ones(1, a.shape[0], dtype=torch.float64))[0]


def weighted_spearman(
    a: Float[Tensor, "subsets q"], b: Float[Tensor, "subsets q"], weights: Float[Tensor, "r subsets"]
) -> Float[Tensor, "r q"]:
    """`spearman_columns` of the rows repeated ``weights[i]`` times (integer counts), for each row of weights:
    the Spearman correlation of every bootstrap resample of the rows without sorting again."""
    _check(a, b)
    undefined = torch.isnan(a).any(dim=0) | torch.isnan(b).any(dim=0)
    weights = weights.double()
    ra, rb = (_weighted_ranks(torch.nan_to_num(x.double(), nan=0.0), weights) for x in (a, b))
    total = weights.sum(dim=1)[:, None, None]
    w = weights[:, :, None]
    ra, rb = ra - (w * ra).sum(dim=1, keepdim=True) / total, rb - (w * rb).sum(dim=1, keepdim=True) / total
    spread = ((w * ra.square()).sum(dim=1) * (w * rb.square()).sum(dim=1)).sqrt()
    flat = undefined[None] | (spread <= 1e-9 * total[:, :, 0].square())  # constant: ranks all alike
    rho = (w * ra * rb).sum(dim=1) / torch.where(flat, 1.0, spread)
    return torch.where(flat, math.nan, rho.clamp(-1.0, 1.0))


def _weighted_ranks(values: Float[Tensor, "m q"], weights: Float[Tensor, "r m"]) -> Float[Tensor, "r m q"]:
    """Average 1-based ranks of each row of ``values`` among the rows counted ``weights`` times each."""
    order = values.argsort(dim=0)  # [m, q]
    ordered = values.gather(0, order)
    group = torch.zeros_like(order)  # tied values share a group, numbered in sorted order
    group[1:] = (ordered[1:] != ordered[:-1]).long().cumsum(dim=0)
    count = weights[:, order]  # [r, m, q]: each sorted position's count
    per_group = torch.zeros_like(count).scatter_add_(1, group.expand_as(count), count)
    below = per_group.cumsum(dim=1) - per_group
    rank = (below + (per_group + 1) / 2).gather(1, group.expand_as(count))  # per sorted position
    return torch.empty_like(rank).scatter_(1, order.expand_as(rank), rank)


def _check(a: Tensor, b: Tensor) -> None:
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"Spearman needs two [m, q] tensors of one shape, got {a.shape} and {b.shape}")
