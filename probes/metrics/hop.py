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
from probes.metrics.ranking import KS, per_query_metrics
from probes.metrics.report import aggregate


def hop_subset(
    scores: Float[Tensor, "q n"] | None,
    below: Bool[Tensor, "q n"],
    own: Bool[Tensor, "q n"],
    functions: Sequence[str],
    ks: Sequence[int] = KS,
) -> dict:
    """``{"count", "micro", "macro"}`` of the queries' rankings of ``below`` among every document not ``own``.

    Args:
        scores: the method's scores of these queries; None for the exact expectation of a random ranking.
        below: the documents of the functions each query's function calls (directly or further down).
        own: the documents of each query's own function, left out of its ranking.
        functions: each query's function (macro = mean over functions).
        ks: cut-offs of recall@k, precision@k, hit@k.
    """
    q = len(functions)
    if (
        below.shape != own.shape
        or below.shape[0] != q
        or (scores is not None and scores.shape != below.shape)
    ):
        raise ValueError(
            f"hop_subset: scores {None if scores is None else tuple(scores.shape)}, "
            f"below {tuple(below.shape)}, own {tuple(own.shape)} and {q} functions must agree"
        )
    if bool((below & own).any()):
        raise ValueError("hop_subset: a document is both the query function's own and one below it")
    per_query: dict[str, Tensor] = {}
    # rows with the same left-out documents share one column selection (one group per function)
    keys, group = (
        torch.unique(own, dim=0, return_inverse=True) if q else (own, torch.zeros(0, dtype=torch.long))
    )
    for g in range(len(keys)):
        rows, cols = (group == g).nonzero().flatten(), (~keys[g]).nonzero().flatten()
        relevant = below[rows][:, cols]
        if scores is None:
            values = random_per_query_metrics(relevant, ks=ks)
        else:
            values = per_query_metrics(scores[rows][:, cols], relevant, ks=ks)
        for name, column in values.items():
            per_query.setdefault(name, torch.full((q,), float("nan"), dtype=torch.float64))[rows] = (
                column.double().cpu()
            )
    report = aggregate(per_query, functions, is_wrapper=torch.ones(q, dtype=torch.bool))
    return {"count": report["count"], "micro": report["micro"], "macro": report["macro"]}
