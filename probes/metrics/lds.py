"""The linear datamodeling score (LDS, TRAK): how well summed attributions rank retrained models' outputs.

For subsets m of the training documents (masks [M, n]) and models retrained on each, a method's prediction
for query j is the sum of its scores over the subset's documents; the LDS of query j is the Spearman
correlation, over the M subsets, between that prediction and the retrained models' output (the correct
answer's log-probability, averaged over the seeds a subset was retrained with). The noise ceiling is the
correlation of two such seed means over the same subsets: the split-half correlation of the seeds, corrected
to the number of seeds averaged by Spearman-Brown. Every interval resamples subsets and queries together.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from probes.metrics.bootstrap import CHUNK, RESAMPLES, two_way
from probes.metrics.spearman import spearman_columns, weighted_spearman

MIN_SUBSETS = 3  # fewer replicated subsets give no usable noise-ceiling correlation
MAX_SPLITS = 6  # split-half correlations averaged for the ceiling (a seeded sample beyond; each costs an LDS)


def _resampled(
    a: Float[Tensor, "*groups subsets q"],
    b: Float[Tensor, "*groups subsets q"],
    weights: Float[Tensor, "r subsets"],
) -> Float[Tensor, "r *groups q"]:
    """`weighted_spearman` of every group of ``a`` and ``b`` (the groups' columns side by side)."""
    columns = [x.movedim(-2, 0).reshape(x.shape[-2], -1) for x in (a, b)]  # [subsets, groups * q]
    return weighted_spearman(*columns, weights).view(len(weights), *a.shape[:-2], a.shape[-1])


def predictions(scores: Float[Tensor, "q n"], masks: Bool[Tensor, "subsets n"]) -> Float[Tensor, "subsets q"]:
    """Each subset's summed scores per query (float64, CPU): the method's prediction of the outputs."""
    if scores.shape[1] != masks.shape[1]:
        raise ValueError(
            f"scores {tuple(scores.shape)} do not fit masks {tuple(masks.shape)} "
            "(scores [q, n], masks [M, n])"
        )
    return masks.double().cpu() @ scores.double().cpu().T


def lds_per_query(
    scores: Float[Tensor, "q n"], masks: Bool[Tensor, "subsets n"], outputs: Float[Tensor, "subsets q"]
) -> Float[Tensor, " q"]:
    """Each query's LDS: Spearman over the M subsets between ``masks @ scores.T`` and ``outputs`` (the seed
    mean); NaN where the prediction is constant over the subsets (e.g. a method that scores every document
    of a query alike)."""
    if scores.shape[0] != outputs.shape[1]:
        raise ValueError(f"scores {tuple(scores.shape)} do not fit outputs {tuple(outputs.shape)} ([M, q])")
    return spearman_columns(predictions(scores, masks), outputs.double().cpu())


def lds(
    scores: Float[Tensor, "q n"],
    masks: Bool[Tensor, "subsets n"],
    outputs: Float[Tensor, "subsets q"],
    functions: Sequence[str],
    *,
    seed: int = 0,
    resamples: int = RESAMPLES,
) -> tuple[Float[Tensor, " q"], dict]:
    """(`lds_per_query`, its summary ``{"mean", "macro", "ci95": [lo, hi], "undefined"}``).

    An undefined (NaN) query counts as correlation 0 in every mean: a method that cannot rank the subsets
    for a query predicts nothing there, and leaving it out would reward methods that abstain on their hard
    queries. ``macro`` is the mean over ``functions`` (one per query) of each function's mean; ``ci95`` the
    two-way bootstrap interval of the mean (subsets and queries resampled, seeded)."""
    per_query = lds_per_query(scores, masks, outputs)
    predicted, target = predictions(scores, masks), outputs.double().cpu()
    interval = two_way(
        lambda weights: _resampled(predicted, target, weights),
        len(target),
        target.shape[1],
        seed=seed,
        resamples=resamples,
    )
    return per_query, {**_means(per_query, functions), "ci95": interval}


def _means(per_query: Float[Tensor, " q"], functions: Sequence[str]) -> dict:
    if len(functions) != len(per_query) or len(per_query) == 0:
        raise ValueError(
            f"the LDS needs one function per query and a query: {len(functions)} functions, "
            f"{len(per_query)} queries"
        )
    undefined = torch.isnan(per_query)
    values = torch.where(undefined, 0.0, per_query.double())
    groups: dict[str, list[int]] = {}
    for row, function in enumerate(functions):
        groups.setdefault(function, []).append(row)
    macro = torch.stack([values[rows].mean() for rows in groups.values()]).mean()
    return {"mean": float(values.mean()), "macro": float(macro), "undefined": int(undefined.sum())}


def half_splits(k: int, seed: int = 0, limit: int = MAX_SPLITS) -> list[tuple[list[int], list[int]]]:
    """Disjoint halves (A, B) of ``k`` seeds, ``k // 2`` each (one seed left out when k is odd): every
    unordered split, or a seeded sample of ``limit`` of them."""
    half, found = k // 2, []
    for a in combinations(range(k), half):
        rest = [i for i in range(k) if i not in a]
        found += [(list(a), list(b)) for b in combinations(rest, half) if a < b]
    if len(found) > limit:
        chosen = torch.randperm(len(found), generator=torch.Generator().manual_seed(seed))[:limit]
        found = [found[i] for i in sorted(chosen.tolist())]
    return found


def spearman_brown(r: Tensor, factor: float) -> Tensor:
    """The reliability of a mean of ``factor`` times as many seeds as the halves that correlate at ``r``;
    -1 where r is at or below the formula's pole (-1 / (factor - 1))."""
    denominator = 1 + (factor - 1) * r
    return torch.where(denominator > 0, factor * r / denominator.clamp_min(1e-12), -1.0).clamp(-1.0, 1.0)


def noise_ceiling(
    replicates: Float[Tensor, "subsets seeds q"],
    functions: Sequence[str],
    *,
    seeds: int | None = None,
    seed: int = 0,
    resamples: int = RESAMPLES,
) -> dict | None:
    """The expected correlation of two independent means of ``seeds`` retrains (default: all of
    ``replicates``' seeds) over the same subsets: the reliability of the outputs the LDS reads (an exact
    predictor of the expected output would correlate with one such mean at about its square root).

    Per query, the Spearman correlation over the subsets between the means of two disjoint halves of the
    seeds (`half_splits`, averaged); the mean over queries (NaN as 0) then corrected by Spearman-Brown from
    the halves' size to ``seeds``. ``{"mean", "macro", "ci95", "undefined", "split_half", "seeds",
    "splits"}``; ``ci95`` resamples subsets and queries (`two_way`). None with fewer than MIN_SUBSETS
    replicated subsets or fewer than 2 seeds each."""
    count, k, queries = replicates.shape
    if count < MIN_SUBSETS or k < 2:
        return None
    seeds = seeds or k
    splits = half_splits(k, seed)
    halves = replicates.double().cpu()
    a = torch.stack([halves[:, part].mean(dim=1) for part, _ in splits])  # [splits, subsets, q]
    b = torch.stack([halves[:, part].mean(dim=1) for _, part in splits])

    def split_half(weights: Float[Tensor, "r subsets"]) -> Float[Tensor, "r q"]:
        """Each query's split-half correlation, averaged over the splits (NaN if any split's is)."""
        rho = _resampled(a, b, weights)  # [r, splits, q]
        return torch.where(rho.isnan().any(dim=1), math.nan, rho.mean(dim=1))

    factor = seeds / (k // 2)
    means = _means(split_half(torch.ones(1, count))[0], functions)
    interval = two_way(
        split_half,
        count,
        queries,
        after=lambda x: spearman_brown(x, factor),
        seed=seed,
        resamples=resamples,
        chunk=max(1, CHUNK // len(splits)),
    )
    corrected = {key: float(spearman_brown(torch.tensor(means[key]), factor)) for key in ("mean", "macro")}
    return {
        **corrected,
        "ci95": interval,
        "undefined": means["undefined"],
        "split_half": means["mean"],
        "seeds": seeds,
        "splits": len(splits),
    }
