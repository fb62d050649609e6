"""The linear datamodeling score (LDS, TRAK): how well summed attributions rank retrained models' outputs.

For subsets m of the training documents (masks [M, n]) and a model retrained on each, a method's prediction
for query j is the sum of its scores over the subset's documents; the LDS of query j is the Spearman
correlation, over the M subsets, between that prediction and the retrained model's output (the correct
answer's log-probability). The noise ceiling is the same correlation between the outputs of two retrainings
of the same subsets with different seeds: no attribution can be expected to predict better than that.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from jaxtyping import Bool, Float
from torch import Tensor

if TYPE_CHECKING:
    from probes.counterfactual.ground_truth import GroundTruth

MIN_REPEATS = 3  # fewer repeated subsets give no usable noise-ceiling correlation


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
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(
            f"spearman_columns needs two [m, q] tensors of one shape, got {a.shape} and {b.shape}"
        )
    undefined = torch.isnan(a).any(dim=0) | torch.isnan(b).any(dim=0)
    ra, rb = (average_ranks(torch.nan_to_num(x.double(), nan=0.0)) for x in (a, b))
    ra, rb = ra - ra.mean(dim=0), rb - rb.mean(dim=0)
    spread = (ra.square().sum(dim=0) * rb.square().sum(dim=0)).sqrt()
    undefined |= spread == 0  # a constant column's ranks are all equal: exactly zero after centring
    rho = (ra * rb).sum(dim=0) / torch.where(undefined, 1.0, spread)
    return torch.where(undefined, math.nan, rho.clamp(-1.0, 1.0))


def lds_per_query(
    scores: Float[Tensor, "q n"], masks: Bool[Tensor, "subsets n"], outputs: Float[Tensor, "subsets q"]
) -> Float[Tensor, " q"]:
    """Each query's LDS: Spearman over the M subsets between ``masks @ scores.T`` (the summed scores of each
    subset's documents, float64) and ``outputs``; NaN where the prediction is constant over the subsets
    (e.g. a method that scores every document of a query alike)."""
    if scores.shape[1] != masks.shape[1] or scores.shape[0] != outputs.shape[1]:
        raise ValueError(
            f"scores {tuple(scores.shape)} do not fit masks {tuple(masks.shape)} and outputs "
            f"{tuple(outputs.shape)} (scores [q, n], masks [M, n], outputs [M, q])"
        )
    predicted = masks.double() @ scores.double().cpu().T
    return spearman_columns(predicted, outputs.double().cpu())


def summarise_lds(
    per_query: Float[Tensor, " q"], functions: Sequence[str], seed: int = 0, resamples: int = 1000
) -> dict:
    """``{"mean", "macro", "ci95": [lo, hi], "undefined"}`` of per-query correlations.

    An undefined (NaN) query counts as correlation 0 in every mean: a method that cannot rank the subsets
    for a query (constant prediction) predicts nothing there, and leaving it out would reward methods that
    abstain on their hard queries. ``undefined`` says how many there were. ``macro`` is the mean over
    ``functions`` (one per query) of each function's mean; ``ci95`` the 2.5 and 97.5 percentiles of the
    mean over ``resamples`` bootstrap resamples of the queries (seeded, so a rerun reports the same).
    """
    if len(functions) != len(per_query) or len(per_query) == 0:
        raise ValueError(
            f"summarise_lds needs one function per query and a query: {len(functions)} functions, "
            f"{len(per_query)} queries"
        )
    values = per_query.double().cpu()
    undefined = torch.isnan(values)
    values = torch.where(undefined, 0.0, values)
    groups: dict[str, list[int]] = {}
    for row, function in enumerate(functions):
        groups.setdefault(function, []).append(row)
    macro = torch.stack([values[rows].mean() for rows in groups.values()]).mean()
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(len(values), (resamples, len(values)), generator=generator)
    means = values[draws].mean(dim=1)
    low, high = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return {
        "mean": float(values.mean()),
        "macro": float(macro),
        "ci95": [low, high],
        "undefined": int(undefined.sum()),
    }


def noise_ceiling(gt: GroundTruth, functions: Sequence[str]) -> dict | None:
    """`summarise_lds` of the per-query Spearman between the outputs of the repeated subsets and their
    repeats (another training seed): the LDS an attribution can be expected to reach at most. None with
    fewer than MIN_REPEATS repeats."""
    if len(gt.repeat_index) < MIN_REPEATS:
        return None
    per_query = spearman_columns(gt.outputs[gt.repeat_index].double(), gt.repeat_outputs.double())
    return summarise_lds(per_query, functions)
