"""The one evaluation of a [q, n] score matrix: every metric, every subset and the random expectation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from probes.metrics.expectation import random_per_query_metrics
from probes.metrics.hop import hop_per_query
from probes.metrics.ranking import KS, per_query_metrics
from probes.metrics.report import aggregate

# wrapper queries ranking the documents of the functions they call, their own left out (probes.metrics.hop)
HOP_SUBSET = "wrapper_to_base"
Hop = tuple[Bool[Tensor, "q n"], Bool[Tensor, "q n"]]  # (below, own) of `probes.data.queries.hop_relevance`


def query_metrics(
    scores: Float[Tensor, "q n"] | None,
    relevant: Bool[Tensor, "q n"],
    hop: Hop | None = None,
    ks: Sequence[int] = KS,
    chunk_size: int = 256,
) -> dict[str, Float[Tensor, " q"]]:
    """Every per-query metric: the ranking's ("map", ...) and, given ``hop``, the wrapper→base ranking's
    ("wrapper_to_base/map", ..., NaN on queries with nothing below them). scores None: a random ranking's
    exact expectation."""
    if scores is None:
        out = random_per_query_metrics(relevant, ks=ks)
    else:
        out = per_query_metrics(scores, relevant, ks=ks, chunk_size=chunk_size)
    if hop is not None:
        below, own = hop
        for name, values in hop_per_query(scores, below, own, ks=ks).items():
            out[f"{HOP_SUBSET}/{name}"] = values
    return out


def summarise(
    per_query: Mapping[str, Float[Tensor, " q"]],
    functions: Sequence[str],
    is_wrapper: Bool[Tensor, " q"],
    correct: Bool[Tensor, " q"] | None = None,
) -> dict:
    """The report of ``query_metrics``' values: ``aggregate``'s count/macro/micro/subsets, plus the subset
    "wrapper_to_base" (count, micro, macro over the queries it defines) when the values hold it."""
    ranking = {name: v for name, v in per_query.items() if not name.startswith(f"{HOP_SUBSET}/")}
    report = aggregate(ranking, functions, is_wrapper=is_wrapper, correct=correct)
    hop = {name.split("/", 1)[1]: v.double().cpu() for name, v in per_query.items() if name not in ranking}
    if hop:
        rows = (~torch.isnan(torch.stack(list(hop.values())))).any(dim=0)
        kept = [f for f, keep in zip(functions, rows.tolist(), strict=True) if keep]
        part = aggregate(
            {name: v[rows] for name, v in hop.items()},
            kept,
            is_wrapper=torch.ones(len(kept), dtype=torch.bool),
        )
        report["subsets"][HOP_SUBSET] = {k: part[k] for k in ("count", "micro", "macro")}
    return report


def evaluate(
    scores: Float[Tensor, "q n"],
    relevant: Bool[Tensor, "q n"],
    functions: Sequence[str],
    is_wrapper: Bool[Tensor, " q"],
    correct: Bool[Tensor, " q"] | None = None,
    hop: Hop | None = None,
    ks: Sequence[int] = KS,
    chunk_size: int = 256,
) -> dict:
    """The report of a method's scores: ``{"count", "micro", "macro", "subsets": {"base", "wrapper",
    ["correct", "incorrect",] ["wrapper_to_base"]}}`` (see ``probes.metrics.report.aggregate``)."""
    per_query = query_metrics(scores, relevant, hop, ks=ks, chunk_size=chunk_size)
    return summarise(per_query, functions, is_wrapper, correct)


def random_expectation(
    relevant: Bool[Tensor, "q n"],
    functions: Sequence[str],
    is_wrapper: Bool[Tensor, " q"],
    correct: Bool[Tensor, " q"] | None = None,
    hop: Hop | None = None,
    ks: Sequence[int] = KS,
) -> dict:
    """The report a uniformly random ranking gets on average (each metric's exact closed-form expectation),
    with the keys of ``evaluate``."""
    return summarise(query_metrics(None, relevant, hop, ks=ks), functions, is_wrapper, correct)
