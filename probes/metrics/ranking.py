"""Per-query retrieval metrics of a [q, n] score matrix, ties broken by document index, in query chunks."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from jaxtyping import Bool, Float
from torch import Tensor

KS = (1, 5, 10, 20, 50)


def metric_names(ks: Sequence[int] = KS) -> list[str]:
    """The keys of ``per_query_metrics`` in order: ``["recall@1", "precision@1", "hit@1", ...]``."""
    names = [f"{name}@{k}" for k in ks for name in ("recall", "precision", "hit")]
    return [*names, "mrr", "map", "auroc"]


def check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    """Validate the cut-offs: distinct positive integers."""
    ks = tuple(ks)
    bad = any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks)
    if not ks or bad or len(set(ks)) < len(ks):
        raise ValueError(f"ks={ks!r}: pass distinct positive integers, e.g. ks=(1, 5, 10, 20, 50)")
    return ks


def warn_no_relevant(relevant: Bool[Tensor, "q n"]) -> None:
    """Warn about rows with no relevant document (all metrics NaN) or only relevant ones (auroc NaN)."""
    counts = relevant.sum(dim=1)
    cases = (
        (counts == 0, "no relevant document", "every metric is"),
        (counts == relevant.shape[1], "only relevant documents", "auroc is"),
    )
    for bad, what, metrics in cases:
        rows = bad.nonzero().flatten().tolist()
        if rows:
            warnings.warn(
                f"{len(rows)} of {len(counts)} queries have {what} (rows {rows[:10]}"
                f"{' ...' if len(rows) > 10 else ''}): {metrics} NaN there and excluded from aggregates",
                stacklevel=3,
            )


def per_query_metrics(
    scores: Float[Tensor, "q n"],
    relevant: Bool[Tensor, "q n"],
    ks: Sequence[int] = KS,
    chunk_size: int = 256,
) -> dict[str, Float[Tensor, " q"]]:
    """Retrieval metrics of every query (row) of ``scores``; higher score = ranked earlier.

    Keys (see ``metric_names``): ``recall@k`` (relevant in the top k / all relevant), ``precision@k``
    (relevant in the top k / k, so k > n caps it below 1 as torchmetrics does), ``hit@k`` (1 if any relevant
    in the top k), ``mrr`` (reciprocal rank of the first relevant), ``map`` (average precision), ``auroc``.
    Equal scores are ordered by document index (a lower index ranks first), so the result is deterministic.

    Each value equals what ``torchmetrics.functional.retrieval`` (``retrieval_recall``,
    ``retrieval_precision``, ``retrieval_hit_rate``, ``retrieval_reciprocal_rank``,
    ``retrieval_average_precision``, ``retrieval_auroc``) returns on that row once scores are replaced by
    their tie-broken rank; those functions take one query per call (about 5 ms a query for all metrics at
    n=3000), so the same formulas run here vectorised over chunks of ``chunk_size`` queries, and the tests
    hold the two equal. Rows with no relevant document get NaN everywhere (a warning says which); rows where
    every document is relevant get NaN auroc. NaN scores are an error.

    Returns float64 tensors of shape [q] on the scores' device.
    """
    ks = check_ks(ks)
    if scores.shape != relevant.shape or scores.ndim != 2 or scores.shape[1] == 0:
        raise ValueError(
            f"scores {tuple(scores.shape)} and relevant {tuple(relevant.shape)} must share one [q, n] "
            "shape with n >= 1"
        )
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size!r}: pass a positive integer (queries per chunk)")
    nan_rows = torch.isnan(scores).any(dim=1).nonzero().flatten().tolist()
    if nan_rows:
        raise ValueError(
            f"scores contain NaN in query row(s) {nan_rows[:10]}{' ...' if len(nan_rows) > 10 else ''} "
            "of the [q, n] matrix: fix the method that produced them (or map NaN to -inf to rank those "
            "documents last)"
        )
    warn_no_relevant(relevant)
    relevant = relevant.to(scores.device)
    chunks = [
        _chunk_metrics(scores[start : start + chunk_size], relevant[start : start + chunk_size], ks)
        for start in range(0, scores.shape[0], chunk_size)
    ]
    if not chunks:
        return {name: scores.new_zeros(0, dtype=torch.float64) for name in metric_names(ks)}
    return {name: torch.cat([chunk[name] for chunk in chunks]) for name in metric_names(ks)}


def _chunk_metrics(scores: Tensor, relevant: Tensor, ks: tuple[int, ...]) -> dict[str, Tensor]:
    """All metrics of one chunk, from the relevance of each rank position."""
    n = scores.shape[1]
    # a stable sort of -scores keeps equal scores in document order: the lower index ranks first
    order = torch.sort(-scores, dim=1, stable=True).indices
    ranked = relevant.gather(1, order).double()  # 1 where the document at that position is relevant
    found = ranked.cumsum(dim=1)  # relevant documents among the top i+1
    total = found[:, -1]
    position = torch.arange(1, n + 1, dtype=torch.float64, device=scores.device)
    out = {}
    for k in ks:
        top = found[:, min(k, n) - 1]
        out[f"recall@{k}"] = top / total
        out[f"precision@{k}"] = top / k
        out[f"hit@{k}"] = (top > 0).double()
    out["mrr"] = 1.0 / position[ranked.argmax(dim=1)]  # argmax: the first maximum
    # row-wise sums, not matmuls: a row's result must not depend on the chunk it sits in
    out["map"] = (found * ranked / position).sum(dim=1) / total  # mean precision at relevant positions
    # the j-th relevant document, at position p_j, has p_j - j irrelevant ones above it: sum p_j - R(R+1)/2
    misordered = (ranked * position).sum(dim=1) - total * (total + 1) / 2
    out["auroc"] = 1.0 - misordered / (total * (n - total))
    empty = total == 0
    return {name: torch.where(empty, torch.nan, value) for name, value in out.items()}
