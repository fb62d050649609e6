"""Feature methods (repsim, delta_h, act_grad, attr_weighted) on a micro pair via the real FeatureStore."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from baselines_fixtures import doc_queries, make_ctx, micro_corpus, shuffled_corpus
from lm_fixtures import CANDIDATES, make_micro_pair

from probes.data.queries import make_queries
from probes.features.extract import query_inputs
from probes.features.store import FeatureStore
from probes.lm.load import load_pair
from probes.lm.scoring import tokenize
from probes.methods import build_method

pytestmark = pytest.mark.usefixtures("one_thread")

FEATURE_METHODS = ["repsim", "delta_h", "act_grad", "attr_weighted"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return make_micro_pair(tmp_path_factory.mktemp("pair"))


@pytest.fixture(scope="module")
def pair(dirs):
    return load_pair(*dirs, dtype="float64", corpus=micro_corpus(), candidates=CANDIDATES)


def context(corpus, queries, pair, batch_size=4):
    ctx = make_ctx(corpus, queries, pair=pair)
    texts, targets = query_inputs(queries)
    ctx.features = FeatureStore(
        pair, corpus.texts, texts, targets, ctx.candidate_ids, batch_size=batch_size, progress=False
    )
    return ctx


def run(name, ctx, ids=None, **options):
    method = build_method(name, **options)
    method.prepare(ctx)
    return method, method.score(torch.arange(len(ctx.queries)) if ids is None else ids)


@pytest.mark.parametrize("name", FEATURE_METHODS)
def test_batch_size_chunking_and_query_batching_invariance(name, pair):
    corpus = micro_corpus()
    queries = make_queries(corpus, inputs=[1, 2, 3])
    method, scores = run(name, context(corpus, queries, pair, batch_size=5), aggregate="topk", topk=2)
    assert scores.shape == (len(queries), len(corpus)) and torch.isfinite(scores).all()
    _, other = run(name, context(corpus, queries, pair, batch_size=1), aggregate="topk", topk=2, chunk_size=2)
    torch.testing.assert_close(other, scores)
    ids = torch.arange(len(queries))
    torch.testing.assert_close(torch.cat([method.score(ids[:4]), method.score(ids[4:])]), scores)


@pytest.mark.parametrize("name", FEATURE_METHODS)
def test_permuting_documents_permutes_columns(name, pair):
    corpus = micro_corpus()
    shuffled, perm = shuffled_corpus(corpus, seed=1)
    queries = make_queries(corpus, inputs=[1, 2])
    options = dict(normalize="whiten", layers=[1, 2])
    _, base = run(name, context(corpus, queries, pair), **options)
    _, moved = run(name, context(shuffled, make_queries(shuffled, inputs=[1, 2]), pair), **options)
    torch.testing.assert_close(moved, base[:, perm])


def test_repsim_query_equal_to_document_ranks_it_first(pair):
    corpus = micro_corpus()
    queries = doc_queries(corpus)
    _, scores = run("repsim", context(corpus, queries, pair), query_pooling="mean", doc_pooling="mean")
    others = scores.masked_fill(torch.eye(len(corpus), dtype=torch.bool), float("-inf"))
    assert (scores.diagonal() > others.max(1).values).all()
    torch.testing.assert_close(scores.diagonal(), torch.ones(len(corpus), dtype=scores.dtype))


@pytest.mark.parametrize("normalize", ["none", "zscore", "whiten"])
def test_delta_h_with_identical_checkpoints_is_zero_and_deterministic(dirs, normalize):
    corpus = micro_corpus()
    same = load_pair(dirs[0], dirs[0], dtype="float64", corpus=corpus, candidates=CANDIDATES)
    queries = make_queries(corpus, inputs=[1, 2])
    _, scores = run("delta_h", context(corpus, queries, same), normalize=normalize)
    assert not scores.isnan().any() and (scores == 0).all()
    _, again = run("delta_h", context(corpus, queries, same), normalize=normalize)
    assert torch.equal(again, scores)  # all ties: the metrics rank them by document index


@pytest.mark.parametrize("layer", ["last", "middle"])
def test_reference_preset_reproduces_the_reference_scripts(pair, layer):
    """The reference Δh / RepSim scripts, re-done by hand: right-padded batches, doc = mean of h over the
    attention mask (BOS included), query = the prompt's last non-pad token, one hidden state, cosine."""
    corpus = micro_corpus()
    queries = make_queries(corpus, inputs=[1, 2])
    index = -1 if layer == "last" else pair.new.config.num_hidden_layers // 2
    tok = pair.tokenizer

    def states(model, texts):
        enc = tok(texts, padding=True, return_tensors="pt")
        hidden = model(**enc, output_hidden_states=True).hidden_states[index]
        mask = enc["attention_mask"]
        mean = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return mean, hidden[torch.arange(len(texts)), mask.sum(1) - 1]

    prompts = [q.prompt for q in queries]
    (doc_new, _), (_, q_new) = states(pair.new, corpus.texts), states(pair.new, prompts)
    (doc_old, _), (_, q_old) = states(pair.old, corpus.texts), states(pair.old, prompts)
    expected = {
        "repsim": F.normalize(q_new, dim=-1) @ F.normalize(doc_new, dim=-1).T,
        "delta_h": F.normalize(q_new - q_old, dim=-1) @ F.normalize(doc_new - doc_old, dim=-1).T,
    }
    for name, reference in expected.items():
        _, scores = run(name, context(corpus, queries, pair), preset="reference", reference_layer=layer)
        torch.testing.assert_close(scores, reference)


def test_attr_weighted_of_means_is_delta_h_times_grad_and_one_ig_step_is_plain(pair):
    corpus = micro_corpus()
    queries = make_queries(corpus, inputs=[1, 2])
    ctx = context(corpus, queries, pair)
    store = ctx.features
    options = dict(layers=[1, 2], similarity="dot", product="of_means")
    method, plain = run("attr_weighted", ctx, **options)
    docs, qs = method.features(ctx)
    delta_d = store.hidden("new", "docs", "mean") - store.hidden("old", "docs", "mean")
    torch.testing.assert_close(docs, delta_d * store.grads("docs", "mean"))
    delta_q = store.hidden("new", "queries") - store.hidden("old", "queries")
    torch.testing.assert_close(qs, delta_q * store.grads("queries"))
    _, one_step = run("attr_weighted", ctx, **options, ig_steps=1, ig_batch_size=3)
    torch.testing.assert_close(one_step, plain)
    _, more = run("attr_weighted", ctx, **options, ig_steps=4)
    assert torch.isfinite(more).all() and not torch.allclose(more, plain)


def reference_attributions(pair, items, loss_of):
    """Per text, one plain full forward of each checkpoint and one backward: (h_new - h_old) ⊙ dL/dh at every
    position and layer, then the mean over the text's tokens: [n, l, d]."""
    out = []
    for item in items:
        ids = torch.tensor([item.ids])
        old = pair.old(input_ids=ids, output_hidden_states=True).hidden_states
        embeds = pair.new.get_input_embeddings()(ids).detach().requires_grad_(True)  # frozen weights
        run_new = pair.new(inputs_embeds=embeds, output_hidden_states=True)
        grads = torch.autograd.grad(loss_of(item, run_new.logits[0]), run_new.hidden_states)
        per_layer = [
            ((h - o) * g)[0].mean(0) for h, o, g in zip(run_new.hidden_states, old, grads, strict=True)
        ]
        out.append(torch.stack(per_layer))
    return torch.stack(out)


def test_attr_weighted_multiplied_pooled_means_not_positions(pair):
    """Regression: attr_weighted was mean(Δh) ⊙ mean(g); by default it is now mean_t(Δh_t ⊙ g_t), checked
    against a brute-force float64 reference on both sides (documents: their LM loss; queries: the answer's
    cross-entropy, query_pooling='mean'); per position and of means differ."""
    corpus = micro_corpus()
    queries = make_queries(corpus, inputs=[1, 2])
    ctx = context(corpus, queries, pair, batch_size=3)
    method = build_method("attr_weighted", query_pooling="mean")
    docs, qs = method.features(ctx)
    texts, targets = query_inputs(queries)

    def lm(item, logits):
        return F.cross_entropy(logits[:-1], torch.tensor(item.ids[1:]))

    def answer(item, logits):
        start, end = item.target
        return F.cross_entropy(logits[start - 1 : end - 1], torch.tensor(item.ids[start:end]))

    with torch.enable_grad():
        ref_docs = reference_attributions(pair, tokenize(pair.tokenizer, corpus.texts), lm)
        ref_queries = reference_attributions(pair, tokenize(pair.tokenizer, texts, targets), answer)
    torch.testing.assert_close(docs, ref_docs, rtol=1e-7, atol=1e-12)
    torch.testing.assert_close(qs, ref_queries, rtol=1e-7, atol=1e-12)
    of_means, _ = build_method("attr_weighted", query_pooling="mean", product="of_means").features(ctx)
    assert not torch.allclose(of_means, docs)


def test_attr_weighted_integrated_gradients_per_position(pair):
    """One integrated-gradient step per position is the plain per-position attribution."""
    corpus = micro_corpus()
    queries = make_queries(corpus, inputs=[1, 2])
    ctx = context(corpus, queries, pair)
    _, plain = run("attr_weighted", ctx, layers=[1, 2], similarity="dot")
    _, one_step = run("attr_weighted", ctx, layers=[1, 2], similarity="dot", ig_steps=1, ig_batch_size=3)
    torch.testing.assert_close(one_step, plain)


@pytest.mark.parametrize("name", ["act_grad", "attr_weighted"])
def test_span_query_pooling_of_gradients_gave_all_zero_scores(name):
    """Regression: query_pooling='span' pooled dL/dh over the answer's own positions, exactly 0 under causal
    attention (the answer loss is read before the answer): every score was 0. Refused at construction."""
    with pytest.raises(ValueError, match=f"{name}.*query_pooling='span'.*position before the answer"):
        build_method(name, query_pooling="span")


@pytest.mark.parametrize("name", ["repsim", "delta_h"])
@pytest.mark.parametrize("layers", [0, [0, 2], "all_with_embeddings"])
def test_embeddings_at_the_last_query_token_are_refused(name, layers):
    with pytest.raises(ValueError, match="embeddings.*query-independent"):
        build_method(name, layers=layers)
    build_method(name, layers=layers, query_pooling="mean")  # in context, not one token's embedding


def test_a_negative_index_naming_the_embeddings_is_refused_at_prepare(pair):
    corpus = micro_corpus()
    queries = make_queries(corpus, inputs=[1])
    method = build_method("repsim", layers=[-3])  # 3 hidden states: -3 is 0
    with pytest.raises(ValueError, match="embeddings"):
        method.prepare(context(corpus, queries, pair))


def test_documents_are_mean_pooled_by_default():
    for name in FEATURE_METHODS:
        assert build_method(name).settings["doc_pooling"] == "mean"
        assert build_method(name).settings["layers"] == "all"


@pytest.mark.parametrize("name", FEATURE_METHODS)
def test_seed_preset_is_the_literal_plan_setting(name, pair):
    method = build_method(name, preset="seed")
    s = method.settings
    assert (s["query_pooling"], s["layers"], s["aggregate"], s["similarity"]) == (
        "last",
        "all",
        "mean",
        "cosine",
    )
    gradient = name in ("act_grad", "attr_weighted")
    assert s["doc_pooling"] == ("penultimate" if gradient else "last")  # the last token's gradient is 0
    if name == "attr_weighted":
        assert s["product"] == "of_means" and s["ig_steps"] == 0
    with pytest.raises(ValueError, match="preset='seed' fixes query_pooling"):
        build_method(name, preset="seed", query_pooling="mean")
    corpus = micro_corpus()
    queries = make_queries(corpus, inputs=[1, 2])
    method.prepare(context(corpus, queries, pair))
    scores = method.score(torch.arange(len(queries)))
    assert torch.isfinite(scores).all() and scores.abs().sum() > 0


def test_penultimate_document_gradients_are_not_zero_and_last_are(pair):
    corpus = micro_corpus()
    ctx = context(corpus, make_queries(corpus, inputs=[1]), pair)
    assert ctx.features.grads("docs", "last").abs().max() == 0
    assert (ctx.features.grads("docs", "penultimate")[:, 1:].flatten(1).abs().amax(1) > 0).all()


@pytest.mark.parametrize("name", ["act_grad", "attr_weighted"])
def test_margin_loss_and_learned_weights(name, pair):
    """The margin loss is not the answer's cross-entropy (their query gradients differ), and the learned
    layer weights are a convex combination that moved away from the uniform start."""
    corpus = micro_corpus()
    queries = make_queries(corpus, inputs=[1, 2, 3])
    ctx = context(corpus, queries, pair)
    method, scores = run(name, ctx, loss="margin", aggregate="learned", fit_steps=30)
    weights = method.scorer.weights
    assert (
        torch.isfinite(scores).all() and weights.sum().item() == pytest.approx(1.0) and (weights >= 0).all()
    )
    assert not torch.allclose(weights, torch.full_like(weights, 1 / len(weights)))
    margin, ce = (ctx.features.grads("queries", "last", loss) for loss in ("margin", "ce"))
    assert not torch.allclose(margin, ce, rtol=1e-3, atol=0)
    _, ce_scores = run(name, ctx, loss="ce", aggregate="learned", fit_steps=30)
    assert not torch.allclose(scores, ce_scores)


def test_integrated_gradients_are_computed_once_for_tuning_points_that_share_them(pair, monkeypatch):
    """Tuning points that differ only in scoring knobs reuse the path gradients in ctx.memo: the same scores
    as computed alone, and no second integrated-gradient pass."""
    import baselines.attr_weighted as attr_weighted

    corpus = micro_corpus()
    queries = make_queries(corpus, inputs=[1, 2])
    calls = []
    real = attr_weighted.integrated_gradients
    monkeypatch.setattr(
        attr_weighted, "integrated_gradients", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    ctx = context(corpus, queries, pair)
    _, first = run("attr_weighted", ctx, layers=[1], ig_steps=2, normalize="none")
    _, centred = run("attr_weighted", ctx, layers=[1], ig_steps=2, normalize="center")
    assert len(calls) == 2  # documents and queries, once
    _, alone = run(
        "attr_weighted", context(corpus, queries, pair), layers=[1], ig_steps=2, normalize="center"
    )
    torch.testing.assert_close(centred, alone)
    assert len(calls) == 4 and not torch.allclose(first, centred)
