"""The hop subset: wrapper queries ranking the documents below them, their own function's documents out."""

from __future__ import annotations

import pytest
import torch
from jaxtyping import TypeCheckError

from probes.data.corpus import load_corpus
from probes.data.queries import hop_relevance, make_queries
from probes.metrics import (
    HOP_SUBSET,
    evaluate,
    hop_per_query,
    per_query_metrics,
    random_expectation,
    random_per_query_metrics,
)


def test_hop_relevance_follows_the_chain(chain_corpus_path):
    corpus = load_corpus(chain_corpus_path)
    queries = make_queries(corpus, inputs=[1])
    below, own = hop_relevance(corpus, queries)
    docs = {name: set(f.documents) for name, f in corpus.functions.items()}
    for query, b, o in zip(queries, below, own, strict=True):
        assert set(o.nonzero().flatten().tolist()) == docs[query.func]
        expected = set().union(*(docs[f] for f in corpus.chain(query.func)[1:]))
        assert set(b.nonzero().flatten().tolist()) == expected
        assert bool(b.any()) == query.is_wrapper
    distractors = list(corpus.distractors)
    assert not below[:, distractors].any() and not own[:, distractors].any()


def hop_subset(scores, below, own, functions):
    """The wrapper→base subset of the one evaluation (every query here has documents below it)."""
    args = (below | own, functions, torch.ones(len(functions), dtype=torch.bool))
    hop = (below, own)
    report = random_expectation(*args, hop=hop) if scores is None else evaluate(scores, *args, hop=hop)
    return report["subsets"][HOP_SUBSET]


def _reference(scores, below, own):
    """Per query: drop its own documents' columns, then the plain per-query metrics."""
    rows = [per_query_metrics(s[~o][None], b[~o][None]) for s, b, o in zip(scores, below, own, strict=True)]
    return {name: torch.cat([r[name] for r in rows]) for name in rows[0]}


def test_hop_subset_equals_dropping_own_columns_per_query():
    torch.manual_seed(0)
    q, n = 9, 40
    functions = ["<A>"] * 3 + ["<B>"] * 4 + ["<C>"] * 2
    own = torch.zeros(q, n, dtype=torch.bool)
    below = torch.zeros(q, n, dtype=torch.bool)
    for i, f in enumerate(functions):  # each function: its own 6 documents, 5 documents below it
        start = {"<A>": 0, "<B>": 12, "<C>": 24}[f]
        own[i, start : start + 6] = True
        below[i, start + 6 : start + 11] = True
    scores = torch.randn(q, n)
    scores[own] += 10.0  # own documents first: they must not count against the documents below
    reference = _reference(scores, below, own)
    report = hop_subset(scores, below, own, functions)
    assert report["count"] == q
    assert report["micro"]["map"] == pytest.approx(reference["map"].double().mean().item())
    per_function = [
        reference["map"][[i for i, f in enumerate(functions) if f == g]].mean() for g in ("<A>", "<B>", "<C>")
    ]
    assert report["macro"]["map"] == pytest.approx(torch.stack(per_function).double().mean().item())
    # the own documents on top would ruin the plain ranking, not this one
    plain = per_query_metrics(scores, below)["map"].mean().item()
    assert plain < report["micro"]["map"]


def test_hop_subset_random_is_the_expectation_over_the_remaining_documents():
    own = torch.zeros(2, 10, dtype=torch.bool)
    own[:, :4] = True
    below = torch.zeros(2, 10, dtype=torch.bool)
    below[:, 4:6] = True
    report = hop_subset(None, below, own, ["<A>", "<A>"])
    expected = random_per_query_metrics(below[:1, 4:])  # 6 documents left, 2 relevant
    assert report["micro"]["map"] == pytest.approx(expected["map"].item())
    assert report["micro"]["recall@5"] == pytest.approx(5 / 6)


def test_hop_subset_refuses_overlap_and_bad_shapes():
    below = torch.zeros(1, 4, dtype=torch.bool)
    below[0, 0] = True
    with pytest.raises(ValueError, match="both"):
        hop_subset(None, below, below.clone(), ["<A>"])
    with pytest.raises((ValueError, TypeCheckError)):  # jaxtyping checks the shapes first in the tests
        hop_per_query(torch.zeros(2, 4), below, ~below)


def test_queries_with_nothing_below_are_outside_the_hop_subset():
    own = torch.zeros(3, 8, dtype=torch.bool)
    own[:, :2] = True
    below = torch.zeros(3, 8, dtype=torch.bool)
    below[1:, 2:4] = True  # query 0 is a base query: nothing below it
    scores = torch.arange(8.0).flip(0).expand(3, 8)
    per_query = hop_per_query(scores, below, own, ks=(1,))
    assert torch.isnan(per_query["map"][0]) and per_query["map"][1:].tolist() == [1.0, 1.0]
    report = evaluate(
        scores, below | own, ["<B>", "<W>", "<W>"], torch.tensor([False, True, True]), hop=(below, own)
    )
    hop = report["subsets"][HOP_SUBSET]
    assert hop["count"] == 2 and hop["macro"]["map"] == 1.0 and hop["micro"]["recall@1"] == 0.5
