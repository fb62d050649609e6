"""Shared layer maths: selection, normalisation, per-layer similarity, aggregation, val-only weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from baselines_fixtures import make_ctx, micro_corpus
from sklearn.metrics.pairwise import cosine_similarity

from baselines.ops.feature_method import FeatureMethod
from baselines.ops.layers import LayerScorer, Normaliser, aggregate, fit_layer_weights, layer_similarity
from probes.data.queries import make_queries
from probes.lm.layer_ids import hidden_state_ids
from probes.methods import register

pytestmark = pytest.mark.usefixtures("one_thread")


def test_hidden_state_ids():
    assert hidden_state_ids("all_with_embeddings", 4) == [0, 1, 2, 3]
    assert hidden_state_ids("last", 4) == [3]
    assert hidden_state_ids("middle", 17) == [8]  # num_hidden_layers // 2, as the reference scripts
    assert hidden_state_ids(-1, 4) == [3]
    assert hidden_state_ids([0, -2], 4) == [0, 2]  # the embeddings when named
    for bad in (4, [1, 1], [], "first", True):
        with pytest.raises(ValueError, match="layers="):
            hidden_state_ids(bad, 4)


def test_layers_all_included_the_embeddings():
    """Regression: layers='all' read hidden state 0 (the embeddings): at a query's last prompt token one
    token's embedding, the same for every query: a query-independent term in every score."""
    assert hidden_state_ids("all", 4) == [1, 2, 3]
    docs = torch.randn(6, 4, 5, dtype=torch.float64)
    assert LayerScorer("all").fit(docs).chosen == [1, 2, 3]
    assert LayerScorer(None).fit(docs).chosen == [0, 1, 2, 3]  # rows that are not hidden states
    with pytest.raises(ValueError, match="layers=None"):  # never an empty selection (NaN scores)
        LayerScorer("all").fit(docs[:, :1])


def test_center_removes_a_constant_offset_from_each_side():
    """normalize='center': documents lose their corpus mean, queries the mean over all queries, so an offset
    added to every document and another to every query (Δh's context-independent part) changes nothing."""
    g = torch.Generator().manual_seed(5)
    docs = torch.randn(8, 3, 4, generator=g, dtype=torch.float64)
    queries = torch.randn(5, 3, 4, generator=g, dtype=torch.float64)
    offset = 10 * torch.randn(3, 4, generator=g, dtype=torch.float64)
    shift = 10 * torch.randn(3, 4, generator=g, dtype=torch.float64)

    def scores(mode, d, q):
        return LayerScorer("all_with_embeddings", normalize=mode).fit(d, queries=q).score(q[1:4])

    centred = scores("center", docs, queries)
    torch.testing.assert_close(scores("center", docs + offset, queries + shift), centred)
    assert not torch.allclose(scores("none", docs + offset, queries + shift), scores("none", docs, queries))
    q = F.normalize(queries[1:4] - queries.mean(0), dim=-1)
    d = F.normalize(docs - docs.mean(0), dim=-1)
    torch.testing.assert_close(centred, torch.einsum("qld,nld->qn", q, d) / 3)
    with pytest.raises(ValueError, match="center"):
        LayerScorer(normalize="center").fit(docs)


def test_similarity_matches_sklearn_per_layer_and_zero_vectors_give_zero():
    g = torch.Generator().manual_seed(0)
    q, d = (
        torch.randn(3, 2, 5, generator=g, dtype=torch.float64),
        torch.randn(4, 2, 5, generator=g, dtype=torch.float64),
    )
    q[0] = 0
    sims = layer_similarity(q, d, "cosine")
    for layer in range(2):
        expected = cosine_similarity(q[:, layer].numpy(), d[:, layer].numpy())
        np.testing.assert_allclose(sims[layer].numpy(), expected, atol=1e-12)
        np.testing.assert_allclose(layer_similarity(q, d, "dot")[layer].numpy(), q[:, layer] @ d[:, layer].T)
    assert not sims.isnan().any() and (sims[:, 0] == 0).all()


def test_normalisers_fit_on_documents():
    g = torch.Generator().manual_seed(1)
    mix = torch.randn(3, 3, generator=g, dtype=torch.float64)
    docs = torch.randn(500, 2, 3, generator=g, dtype=torch.float64) @ mix + 4.0
    z = Normaliser("zscore").fit(docs)(docs)
    torch.testing.assert_close(z.mean(0), torch.zeros(2, 3, dtype=torch.float64), atol=1e-10, rtol=0)
    torch.testing.assert_close(z.std(0, unbiased=False), torch.ones(2, 3, dtype=torch.float64))
    w = Normaliser("whiten", shrinkage=0.0).fit(docs)(docs)
    for layer in range(2):
        cov = torch.cov(w[:, layer].T)
        torch.testing.assert_close(cov, torch.eye(3, dtype=torch.float64), atol=1e-8, rtol=0)
    flat = torch.zeros(5, 1, 3, dtype=torch.float64)  # constant features: no division by zero
    for mode in ("zscore", "whiten"):
        assert not Normaliser(mode).fit(flat)(flat).isnan().any()
    # a dimension constant over the documents is dropped by z-scoring, not divided by ~0
    assert Normaliser("zscore").fit(flat)(torch.ones(1, 1, 3, dtype=torch.float64)).abs().max() == 0


def test_aggregate_topk_and_weights():
    sims = torch.tensor([[[1.0, -1.0]], [[3.0, 0.0]], [[2.0, 5.0]]], dtype=torch.float64)  # [l=3, q=1, n=2]
    torch.testing.assert_close(aggregate(sims, "mean"), sims.mean(0))
    torch.testing.assert_close(
        aggregate(sims, "topk", topk=2), torch.tensor([[2.5, 2.5]], dtype=torch.float64)
    )
    weights = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(aggregate(sims, "learned", weights=weights), sims[1])


def test_learned_weights_find_the_informative_layer():
    g = torch.Generator().manual_seed(2)
    relevant = torch.rand(20, 30, generator=g) < 0.2
    relevant[:, 0] = True
    noise = torch.randn(3, 20, 30, generator=g, dtype=torch.float64)
    noise[1] += 3 * relevant  # layer 1 separates relevant documents
    weights = fit_layer_weights(noise, relevant, steps=200)
    assert weights.sum().item() == pytest.approx(1.0) and (weights >= 0).all()
    assert weights.argmax().item() == 1 and weights[1] > 0.8


@pytest.mark.parametrize("normalize", ["none", "zscore", "whiten"])
@pytest.mark.parametrize("agg", ["mean", "topk", "learned"])
def test_chunking_and_query_batching_do_not_change_scores(normalize, agg):
    g = torch.Generator().manual_seed(3)
    docs, queries = (
        torch.randn(9, 3, 4, generator=g, dtype=torch.float64),
        torch.randn(5, 3, 4, generator=g).double(),
    )
    relevant = torch.rand(5, 9, generator=g) < 0.4
    relevant[:, 0] = True
    full = LayerScorer(normalize=normalize, aggregate=agg, topk=2, fit_steps=20).fit(docs, queries, relevant)
    chunked = LayerScorer(normalize=normalize, aggregate=agg, topk=2, fit_steps=20, chunk_size=2)
    chunked.fit(docs, queries, relevant)
    expected = full.score(queries)
    torch.testing.assert_close(chunked.score(queries), expected)
    torch.testing.assert_close(torch.cat([full.score(queries[:2]), full.score(queries[2:])]), expected)


@register("test_fixed_features")
class FixedFeatures(FeatureMethod):
    """Serves given tensors as features (a stand-in for a FeatureStore-backed method)."""

    def __init__(self, docs=None, queries=None, **knobs):
        super().__init__(**knobs)
        self.fixed = docs, queries

    def features(self, ctx):
        return self.fixed


def test_learned_weights_see_only_validation_queries():
    """Poison every non-validation query's features with NaN: the weights stay finite and unchanged; they move
    when the validation ids change. The context carries val relevance only, so test relevance cannot leak."""
    corpus = micro_corpus()
    queries = make_queries(corpus, inputs=[1, 2, 3])
    g = torch.Generator().manual_seed(4)
    docs = torch.randn(len(corpus), 3, 4, generator=g, dtype=torch.float64)
    feats = torch.randn(len(queries), 3, 4, generator=g, dtype=torch.float64)
    val_ids = [0, 4, 7]
    poisoned = torch.full_like(feats, float("nan"))
    poisoned[val_ids] = feats[val_ids]

    def weights(query_feats, val):
        method = FixedFeatures(docs, query_feats, aggregate="learned", fit_steps=50)
        method.prepare(make_ctx(corpus, queries, val_ids=val))
        return method.scorer.weights

    clean = weights(feats, val_ids)
    torch.testing.assert_close(weights(poisoned, val_ids), clean)
    assert torch.isfinite(clean).all()
    assert not torch.allclose(weights(feats, [1, 5, 9]), clean)
