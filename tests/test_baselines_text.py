"""Text baselines (random, BM25, edit distance): invariances; a query equal to a document ranks it first."""

from __future__ import annotations

import bm25s
import pytest
import torch
from baselines_fixtures import doc_queries, make_ctx, micro_corpus, shuffled_corpus
from lm_fixtures import CANDIDATES, make_micro_pair

from probes.data.queries import make_queries
from probes.lm.load import load_pair
from probes.methods import build_method

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT_METHODS = ["random", "bm25", "edit_distance"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    corpus = micro_corpus()
    return load_pair(*make_micro_pair(tmp_path_factory.mktemp("pair")), corpus=corpus, candidates=CANDIDATES)


def prepared(name, corpus, queries, pair, **options):
    method = build_method(name, **options)
    method.prepare(make_ctx(corpus, queries, pair=pair))
    return method


@pytest.mark.parametrize("name", TEXT_METHODS)
def test_batching_does_not_change_scores(name, pair):
    corpus = micro_corpus()
    queries = make_queries(corpus, inputs=[1, 2, 3])
    method = prepared(name, corpus, queries, pair)
    ids = torch.arange(len(queries))
    full = method.score(ids)
    assert full.shape == (len(queries), len(corpus)) and torch.isfinite(full).all()
    torch.testing.assert_close(torch.cat([method.score(ids[:5]), method.score(ids[5:])]), full)
    torch.testing.assert_close(method.score(ids.flip(0)), full.flip(0))


@pytest.mark.parametrize("name", ["bm25", "edit_distance"])
def test_permuting_documents_permutes_columns(name, pair):
    corpus = micro_corpus()
    shuffled, perm = shuffled_corpus(corpus, seed=0)
    queries = make_queries(corpus, inputs=[1, 2])
    ids = torch.arange(len(queries))
    base = prepared(name, corpus, queries, pair).score(ids)
    moved = prepared(name, shuffled, make_queries(shuffled, inputs=[1, 2]), pair)
    # the shuffled corpus orders its functions the same way, so query i is the same query in both
    torch.testing.assert_close(moved.score(ids), base[:, perm])


@pytest.mark.parametrize("name", ["bm25", "edit_distance"])
def test_query_equal_to_document_ranks_it_first(name, pair):
    corpus = micro_corpus()
    queries = doc_queries(corpus)
    scores = prepared(name, corpus, queries, pair).score(torch.arange(len(queries)))
    others = scores.masked_fill(torch.eye(len(corpus), dtype=torch.bool), float("-inf"))
    assert (scores.diagonal() > others.max(1).values).all()


@pytest.mark.parametrize("variant", ["lucene", "bm25+"])
def test_bm25_matrix_equals_bm25s_per_query_scores(variant, pair):
    corpus = micro_corpus()
    queries = make_queries(corpus, inputs=[1, 2])
    scores = prepared("bm25", corpus, queries, pair, variant=variant).score(torch.arange(len(queries)))
    index = bm25s.BM25(method=variant)
    index.index(
        [[str(i) for i in pair.tokenizer.encode(t, add_special_tokens=False)] for t in corpus.texts],
        show_progress=False,
    )
    for row, query in enumerate(queries):
        tokens = [
            str(i) for i in pair.tokenizer.encode(query.prompt + query.answer, add_special_tokens=False)
        ]
        expected = index.get_scores([t for t in tokens if t in index.vocab_dict])
        torch.testing.assert_close(scores[row], torch.from_numpy(expected).float())


def levenshtein(a: list[int], b: list[int]) -> int:
    """Textbook dynamic programme: insertions, deletions and substitutions each cost 1."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def test_edit_distance_is_minus_normalised_levenshtein(pair):
    corpus = micro_corpus()
    queries = doc_queries(corpus)[:3]
    scores = prepared("edit_distance", corpus, queries, pair).score(torch.arange(len(queries)))
    ids = [pair.tokenizer.encode(t, add_special_tokens=False) for t in corpus.texts]
    want = torch.tensor([[-levenshtein(ids[q], d) / max(len(ids[q]), len(d)) for d in ids] for q in range(3)])
    torch.testing.assert_close(scores, want.float())
    assert (scores.argmax(1) == torch.arange(3)).all() and (scores < 0).sum() >= 3 * (len(corpus) - 1)


def test_random_rows_depend_on_seed_and_query_only(pair):
    corpus = micro_corpus()
    queries = make_queries(corpus, inputs=[1, 2])
    a = prepared("random", corpus, queries, pair, seed=1).score(torch.tensor([3]))
    b = prepared("random", corpus, queries, pair, seed=1).score(torch.tensor([0, 3]))[1:]
    c = prepared("random", corpus, queries, pair, seed=2).score(torch.tensor([3]))
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)
