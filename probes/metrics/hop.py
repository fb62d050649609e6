"""The hop subset: how well wrapper queries retrieve the documents of the functions they call.

A wrapper's own documents name it; the documents of the function it wraps (its base) do not, so a method
that matches function tokens finds the former and misses the latter. This report ranks, for each wrapper
query, only the documents that are NOT about the queried function itself, and counts as relevant the
documents of every function below it on its call chain.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from probes.metrics.expectation import random_per_query_metrics
from probes.metrics.ranking import KS, check_ks, metric_names, per_query_metrics


def hop_per_query(
    scores: Float[Tensor, "q n"] | None,
    below: Bool[Tensor, "q n"],
    own: Bool[Tensor, "q n"],
    ks: Sequence[int] = KS,
) -> dict[str, Float[Tensor, " q"]]:
    """Per query, the metrics of its ranking of ``below`` among every document not ``own`` (float64; NaN on
    the queries with nothing below them, which are not in the subset).

    Args:
        scores: the method's scores of these queries; None for the exact expectation of a random ranking.
        below: the documents of the functions each query's function calls (directly or further down).
        own: the documents of each query's own function, left out of its ranking.
        ks: cut-offs of recall@k, precision@k, hit@k.
    """
    q = len(below)
    if below.shape != own.shape or (scores is not None and scores.shape != below.shape):
        raise ValueError(
            f"hop subset: scores {None if scores is None else tuple(scores.shape)}, "
            f"below {tuple(below.shape)} and own {tuple(own.shape)} must agree"
        )
    if bool((below & own).any()):
        raise ValueError("hop subset: a document is both the query function's own and one below it")
    per_query = {
        name: torch.full((q,), float("nan"), dtype=torch.float64) for name in metric_names(check_ks(ks))
    }
    hop = below.any(dim=1)
    if not hop.any():
        return per_query
    # rows with the same left-out documents share one column selection (one group per function)
    keys, group = torch.unique(own[hop], dim=0, return_inverse=True)
    for g in range(len(keys)):
        rows, cols = hop.nonzero().flatten()[group == g], (~keys[g]).nonzero().flatten()
        relevant = below[rows][:, cols]
        if scores is None:
            values = random_per_query_metrics(relevant, ks=ks)
        else:
            values = per_query_metrics(scores[rows][:, cols], relevant, ks=ks)
        for name, column in values.items():
            per_query[name][rows.cpu()] = column.double().cpu()
    return per_query
