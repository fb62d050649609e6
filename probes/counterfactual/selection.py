"""Which documents ``remove`` drops for a test function: a method's top k, k random ones, k relevant ones.

A method's scores are ``[q, n]`` per test query; a function has several test queries whose scores may live on
very different scales (one query's gradient norm can be 100x another's), so documents are ranked per query
first and the function's ranking is the sum over its test queries of each document's rank within the query
(average ranks for ties, 1 = lowest score): every query gets one equal vote, and a document near the top for
most of the function's queries beats one that is first for a single query only. Remaining ties are broken by
a seeded permutation (not by corpus order, which often groups a function's documents together).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from probes.metrics.spearman import average_ranks

RANDOM, RELEVANCE = "random", "relevance"  # the controls' rows in the tables


def seeded(seed: int, *parts: object) -> torch.Generator:
    """A generator seeded by ``seed`` and ``parts`` (a function name, k): each draw independent of the others
    and of which methods or functions a run includes."""
    digest = hashlib.sha256(json.dumps([seed, *parts]).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def function_rows(functions: Sequence[str]) -> dict[str, list[int]]:
    """Each function's rows among the test queries (in queries.csv order), functions in first-seen order."""
    rows: dict[str, list[int]] = {}
    for row, function in enumerate(functions):
        rows.setdefault(function, []).append(row)
    return rows


def rank_sum(scores: Float[Tensor, "q n"]) -> Float[Tensor, " n"]:
    """Sum over the queries of each document's rank within that query's scores (1 = lowest, ties averaged)."""
    return average_ranks(scores.T).sum(dim=1)


def top_documents(totals: Float[Tensor, " n"], k: int, generator: torch.Generator) -> list[int]:
    """The ``k`` documents with the highest ``totals`` (ties broken by a permutation drawn from
    ``generator``), as sorted indices."""
    order = torch.randperm(len(totals), generator=generator)
    ranked = order[totals[order].argsort(descending=True, stable=True)]
    return sorted(ranked[:k].tolist())


def method_drop(scores: Float[Tensor, "q n"], k: int, seed: int, function: str) -> list[int]:
    """The k documents a method ranks highest over one function's test queries (``scores``: those rows)."""
    return top_documents(rank_sum(scores.double()), k, seeded(seed, "ties", function, k))


def random_drop(n: int, k: int, seed: int, function: str) -> list[int]:
    """k documents drawn uniformly, seeded by (seed, function, k) only."""
    return sorted(torch.randperm(n, generator=seeded(seed, RANDOM, function, k))[:k].tolist())


def relevance_drop(relevant: Bool[Tensor, "q n"], k: int, seed: int, function: str) -> list[int]:
    """k of the documents relevant to any of the function's test queries (``relevant``: those rows), the
    ones relevant to the most queries first; all of them when there are k or fewer."""
    counts = relevant.double().sum(dim=0)
    chosen = min(k, int((counts > 0).sum()))
    return top_documents(counts, chosen, seeded(seed, RELEVANCE, function, k))


def _cell(stat: dict, percent: bool) -> str:
    if percent:  # accuracy in percentage points
        low, high = (100 * x for x in stat["ci95"])
        return f"{100 * stat['mean']:+.1f} pp [{low:+.1f}, {high:+.1f}]"
    low, high = stat["ci95"]
    return f"{stat['mean']:+.3f} [{low:+.3f}, {high:+.3f}]"


def markdown(report: dict) -> str:
    """One table per k: a row per method, then the random and relevance controls; Δ = baseline - removed
    (positive: removing the documents lowered the function's answers)."""
    base = report["baseline"]
    lines = [
        f"Removal: f_old retrained without each row's k documents per test function, against one retrain on "
        f"all {report['documents']['count']} documents (mean answer log-prob {base['logp']:.3f}, accuracy "
        f"{100 * base['accuracy']:.1f}%). Δ = baseline - removed, averaged over "
        f"{len(report['functions'])} functions, [95% bootstrap CI over functions].",
    ]
    for k, rows in report["k"].items():
        lines += ["", f"### k = {k}", "", "| removed | Δ log-prob | Δ accuracy |", "| --- | --- | --- |"]
        for label, entry in rows.items():
            name = label
            short = entry.get("fewer_than_k")
            if short:
                name += f" (all, fewer than k, for {len(short)} of {len(entry['functions'])} functions)"
            lines.append(f"| {name} | {_cell(entry['logp'], False)} | {_cell(entry['accuracy'], True)} |")
    return "\n".join(lines) + "\n"
