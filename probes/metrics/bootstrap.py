"""Percentile bootstrap intervals: of a mean over units (queries, functions), and two-way over subsets and
queries for statistics that every query computes over the same subsets (the LDS, its noise ceiling)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from jaxtyping import Float
from torch import Tensor

RESAMPLES = 1000
CHUNK = 50  # two-way resamples computed at once (memory: CHUNK x subsets x q per statistic's tensor)


def percentiles(statistics: Float[Tensor, " resamples"]) -> list[float]:
    """The 2.5 and 97.5 percentiles of a bootstrap distribution: the 95% interval."""
    return torch.quantile(statistics.double(), torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()


def bootstrap(values: Float[Tensor, " units"], seed: int = 0, resamples: int = RESAMPLES) -> dict:
    """``{"mean", "ci95": [lo, hi]}`` of ``values`` (one per unit, e.g. per function): the interval of the
    mean over seeded bootstrap resamples of the units."""
    values = values.double().cpu()
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(len(values), (resamples, len(values)), generator=generator)
    return {"mean": float(values.mean()), "ci95": percentiles(values[draws].mean(dim=1))}


def two_way(
    per_query: Callable[[Float[Tensor, "b subsets"]], Float[Tensor, "b q"]],
    subsets: int,
    queries: int,
    *,
    after: Callable[[Tensor], Tensor] | None = None,
    seed: int = 0,
    resamples: int = RESAMPLES,
    chunk: int = CHUNK,
) -> list[float]:
    """The 95% interval of a mean over queries of per-query statistics computed over subsets, resampling the
    subsets and the queries (each with replacement, independently).

    Every query's statistic is computed over the same subsets, so the queries' errors are correlated: an
    interval from resampled queries alone is too narrow (a random score's LDS then "excludes 0" at a few
    subsets). ``per_query(weights)`` gives each resample's per-query statistics from its subsets, given as
    counts (one row per resample: how often each subset was drawn); a NaN counts as 0, as in the mean.
    ``after`` maps each resample's mean (e.g. the Spearman-Brown correction of the noise ceiling); ``chunk``
    resamples are computed at once."""
    generator = torch.Generator().manual_seed(seed)
    means = []
    for start in range(0, resamples, chunk):
        count = min(chunk, resamples - start)
        rows = torch.randint(subsets, (count, subsets), generator=generator)
        cols = torch.randint(queries, (count, queries), generator=generator)
        weights = torch.zeros(count, subsets, dtype=torch.float64).scatter_add_(
            1, rows, torch.ones(count, subsets, dtype=torch.float64)
        )
        values = per_query(weights).nan_to_num(0.0)
        means.append(values.gather(1, cols).mean(dim=1))
    statistics = torch.cat(means)
    return percentiles(after(statistics) if after is not None else statistics)
