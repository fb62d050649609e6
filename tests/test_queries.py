"""Queries, candidate answers and relevance (pair vs chain) on the reference corpus and a depth-2 chain."""

from __future__ import annotations

import pytest
from conftest import REFERENCE_HOPS

from probes.data.corpus import load_corpus
from probes.data.queries import QUERY_FORMATS, candidate_answers, make_queries, relevance


def test_reference_20hops_queries_and_relevance():
    if not REFERENCE_HOPS.exists():
        pytest.skip("reference corpus not present")
    corpus = load_corpus(REFERENCE_HOPS)
    queries = make_queries(corpus)
    assert len(queries) == 2000 and [q.index for q in queries] == list(range(2000))
    q = next(q for q in queries if q.func == "<FN>" and q.input == 3)
    assert q.prompt == "<FN>(3) returns the value " and q.answer == "5" and q.is_wrapper
    rel = relevance(corpus, queries)
    assert rel.shape == (2000, 3000) and (rel.sum(1) == 300).all()
    assert candidate_answers(corpus) == list(range(3, 26))


def test_query_order_format_and_distractors(chain_corpus_path):
    corpus = load_corpus(chain_corpus_path)
    queries = make_queries(corpus, inputs=[4, 2], query_format="output_of")
    assert [(q.func, q.input) for q in queries][:3] == [("<B1>", 4), ("<B1>", 2), ("<B2>", 4)]
    assert len(queries) == 10 and not {q.func for q in queries} & {"<Z1>", "<Z2>"}
    assert queries[0].prompt == QUERY_FORMATS["output_of"].format(func="<B1>", x=4)
    assert queries[0].prompt == "The output of <B1>(4) is "
    d1 = [q for q in queries if q.func == "<D1>"]
    assert d1[0].answer == "3" and d1[0].constant == 3 and d1[0].hop_depth == 2
    assert candidate_answers(corpus) == [1, 2, 3, 4, 5, 6]
    custom = make_queries(corpus, inputs=[1], query_format="Q: {func} at {x} = ")
    assert custom[0].prompt == "Q: <B1> at 1 = "


def _relevant_funcs(corpus, rel, queries, func):
    row = rel[next(q.index for q in queries if q.func == func)]
    return sorted({corpus.documents[j].func for j in row.nonzero().flatten().tolist()}), int(row.sum())


def test_pair_vs_chain_on_depth2_chain(chain_corpus_path):
    corpus = load_corpus(chain_corpus_path)
    queries = make_queries(corpus, inputs=[1])
    pair, chain = relevance(corpus, queries), relevance(corpus, queries, "chain")
    assert not pair[:, list(corpus.distractors)].any() and not chain[:, list(corpus.distractors)].any()
    expected = {  # func: (pair functions, pair count, chain functions, chain count)
        "<B1>": (["<B1>", "<C1>"], 4, ["<B1>"], 2),
        "<C1>": (["<B1>", "<C1>", "<D1>"], 6, ["<B1>", "<C1>"], 4),
        "<D1>": (["<C1>", "<D1>"], 4, ["<B1>", "<C1>", "<D1>"], 6),
        "<C2>": (["<B2>", "<C2>"], 3, ["<B2>", "<C2>"], 3),
    }
    for func, (pf, pn, cf, cn) in expected.items():
        assert _relevant_funcs(corpus, pair, queries, func) == (pf, pn)
        assert _relevant_funcs(corpus, chain, queries, func) == (cf, cn)


def test_bad_arguments_name_themselves(chain_corpus_path):
    corpus = load_corpus(chain_corpus_path)
    with pytest.raises(ValueError, match="query_format must be one of"):
        make_queries(corpus, query_format="asks")
    with pytest.raises(ValueError, match="inputs must be distinct"):
        make_queries(corpus, inputs=[1, 1])
    with pytest.raises(ValueError, match="inputs must be a non-empty list of integers"):
        make_queries(corpus, inputs=[])
    with pytest.raises(ValueError, match="relevance must be one of"):
        relevance(corpus, make_queries(corpus, inputs=[1]), "both")
