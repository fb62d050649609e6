"""Causal patching: the cached candidate-batched forward against a hooked full forward; method invariants."""

from __future__ import annotations

import pytest
import torch
from lm_fixtures import CANDIDATES, make_micro_model, make_tokenizer, micro_rows, perturb

from baselines.ops.patch import make_patcher, num_blocks, resolve_layer
from baselines.patching import gate_masks
from probes.data.corpus import corpus_from_rows
from probes.data.queries import make_queries, relevance
from probes.features.backend import PassOptions
from probes.features.extract import query_inputs
from probes.features.losses import answer_margin
from probes.features.store import FeatureStore
from probes.lm.layer_ids import hidden_state_ids
from probes.lm.load import load_pair
from probes.lm.scoring import answer_token_ids, tokenize
from probes.methods import AttributionContext, build_method

BLOCKS = 3


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """f_new = f_old with perturbed embeddings and blocks; final norm and lm_head shared (so a full gate at
    the last layer must give exactly f_new's logits)."""
    root = tmp_path_factory.mktemp("patching_pair")
    tokenizer = make_tokenizer(root / "old")
    make_tokenizer(root / "new")
    model = make_micro_model(len(tokenizer), seed=0, num_hidden_layers=BLOCKS)
    model.save_pretrained(root / "old")
    perturb(model.model.layers, scale=0.3, seed=1)
    perturb(model.model.embed_tokens, scale=0.3, seed=2)
    model.save_pretrained(root / "new")
    return load_pair(root / "old", root / "new", dtype="float64")


@pytest.fixture(scope="module")
def setup(pair, tmp_path_factory):
    corpus = corpus_from_rows(micro_rows())
    queries = make_queries(corpus, inputs=[1, 2, 3, 12])
    candidate_ids = answer_token_ids(pair.tokenizer, CANDIDATES)
    texts, targets = query_inputs(queries)
    store = FeatureStore(pair, corpus.texts, texts, targets, candidate_ids, batch_size=3)
    val = torch.tensor([0, 1])
    val_relevant = relevance(corpus, queries)[val]
    return AttributionContext(corpus, queries, candidate_ids, pair, store, val, val_relevant)


def scores(ctx, ids=None, **options):
    method = build_method("patching", **options)
    method.prepare(ctx)
    return method.score(torch.arange(len(ctx.queries)) if ids is None else ids)


def hooked_logits(model, tokenizer, prompt, layer, state, candidate_ids):
    """Independent reference: a full forward, a hook overwriting the last token's state at ``layer``."""
    blocks = num_blocks(model)
    target = model.model.embed_tokens if layer == 0 else model.model.norm if layer == blocks else None
    target = model.model.layers[layer - 1] if target is None else target

    def hook(module, args, output):
        hidden = (output[0] if isinstance(output, tuple) else output).clone()
        hidden[0, -1] = state
        return hidden

    handle = target.register_forward_hook(hook)
    try:
        ids = torch.tensor([tokenize(tokenizer, [prompt], as_prompt=True)[0].ids])
        return model(input_ids=ids).logits[0, -1, candidate_ids]
    finally:
        handle.remove()


@pytest.mark.parametrize("backend", ["fast", "reference"])
@pytest.mark.parametrize("layer", [0, "middle", 2, "last"])
def test_batched_forward_matches_hooked_full_forward(pair, layer, backend):
    prompts = ["<FN>(3) returns the value ", "<JN>(12) returns the value ", "<GN>(7) returns the value "]
    candidate_ids = answer_token_ids(pair.tokenizer, CANDIDATES)
    patcher = make_patcher(pair.old, pair.tokenizer, candidate_ids, layer, PassOptions(backend))
    prefixes = patcher.prefixes(prompts, batch_size=2)
    assert sorted(r for p in prefixes for r in p.rows.tolist()) == [0, 1, 2]
    generator = torch.Generator().manual_seed(0)
    for prefix in prefixes:
        # several candidates per prompt, rows repeated and interleaved
        rows = torch.arange(len(prefix.rows)).repeat(3)
        states = torch.randn(len(rows), pair.old.config.hidden_size, generator=generator, dtype=torch.float64)
        got = patcher.logits(prefix, rows, states)
        for i, row in enumerate(rows.tolist()):
            prompt = prompts[int(prefix.rows[row])]
            want = hooked_logits(pair.old, pair.tokenizer, prompt, patcher.layer, states[i], candidate_ids)
            torch.testing.assert_close(got[i], want, rtol=1e-10, atol=1e-10)
            # the same candidate alone, its prompt given as one int (the prefix is then shared, not gathered)
            alone = patcher.logits(prefix, row, states[i : i + 1].expand(2, -1))
            torch.testing.assert_close(alone, want.expand(2, -1), rtol=1e-10, atol=1e-10)
        # f_old's own state reproduces f_old's logits
        own = patcher.logits(prefix, torch.arange(len(prefix.rows)), prefix.old)
        torch.testing.assert_close(own, prefix.logits, rtol=1e-10, atol=1e-10)


def test_empty_gate_scores_zero(setup):
    assert torch.equal(scores(setup, percentile=0.0), torch.zeros(len(setup.queries), len(setup.corpus)))


def test_full_gate_at_last_layer_reproduces_f_new(setup):
    got = scores(setup, percentile=100.0, layer="last")
    torch.testing.assert_close(got, torch.ones_like(got), rtol=0, atol=1e-5)


def test_full_gate_scores_every_document_alike(setup):
    got = scores(setup, percentile=100.0, layer=1)
    torch.testing.assert_close(got, got[:, :1].expand_as(got), rtol=0, atol=1e-6)


def test_batch_size_invariance(setup):
    ids = torch.tensor([5, 0, 3, 9, 2])
    reference = scores(setup, ids, batch_size=10_000, prefix_batch_size=64)
    for batch_size, prefix_batch_size in ((1, 1), (7, 2)):
        got = scores(setup, ids, batch_size=batch_size, prefix_batch_size=prefix_batch_size)
        torch.testing.assert_close(got, reference, rtol=0, atol=1e-6)
    # scoring a subset gives the same rows
    torch.testing.assert_close(scores(setup, ids[1:3]), reference[1:3], rtol=0, atol=1e-6)


def test_permuting_documents_permutes_columns(setup):
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    rows = micro_rows()
    corpus = corpus_from_rows([rows[i] for i in perm.tolist()])
    texts, targets = query_inputs(setup.queries)
    store = FeatureStore(setup.pair, corpus.texts, texts, targets, setup.candidate_ids, batch_size=4)
    ctx = AttributionContext(
        corpus,
        setup.queries,
        setup.candidate_ids,
        setup.pair,
        store,
        setup.val_ids,
        setup.val_relevant[:, perm],
    )
    torch.testing.assert_close(
        scores(ctx, percentile=30.0), scores(setup, percentile=30.0)[:, perm], rtol=0, atol=1e-6
    )


def test_gate_masks_pick_the_largest_magnitudes():
    attribution = torch.tensor([[0.1, -3.0, 2.0, 0.5], [4.0, 0.0, -0.2, 1.0]], dtype=torch.float64)
    assert not gate_masks(attribution, 0.0).any() and gate_masks(attribution, 100.0).all()
    assert gate_masks(attribution, 50.0).tolist() == [[False, True, True, False], [True, False, False, True]]


def test_margin_is_answer_minus_best_other():
    logits = torch.tensor([[1.0, 3.0, 2.0], [5.0, 0.0, 4.0]])
    assert answer_margin(logits, torch.tensor([1, 2])).tolist() == [1.0, -1.0]


@pytest.mark.parametrize(
    ("option", "value"),
    [("percentile", 120.0), ("pooling", "last"), ("batch_size", 0), ("gate", "sum"), ("preset", "paper")],
)
def test_bad_option_is_named(option, value):
    with pytest.raises(ValueError, match=option):
        build_method("patching", **{option: value})


def test_gate_per_position_or_of_means(setup):
    """The default gate ranks dimensions by the pooled per-position Δh_t ⊙ g_t, "of_means" (and the seed
    preset) by Δh̄ ⊙ ḡ: the masks follow the FeatureStore's matching features."""
    store, layer = setup.features, BLOCKS // 2
    for gate, attribution in (
        ("per_position", store.attributions("docs", "mean")[:, layer]),
        (
            "of_means",
            (store.hidden("new", "docs", "mean") - store.hidden("old", "docs", "mean"))[:, layer]
            * store.grads("docs", "mean")[:, layer],
        ),
    ):
        method = build_method("patching", gate=gate, percentile=30.0)
        method.prepare(setup)
        assert torch.equal(method.masks, gate_masks(attribution.float(), 30.0))
    seed = build_method("patching", preset="seed")
    assert (seed.gate, seed.layer, seed.percentile, seed.pooling) == ("of_means", "middle", 10.0, "mean")
    with pytest.raises(ValueError, match="preset='seed' fixes percentile"):
        build_method("patching", preset="seed", percentile=20.0)


def test_layer_resolvers_agree(pair):
    """Patching's layer and the feature methods' layers name the same hidden state."""
    states = num_blocks(pair.old) + 1
    for spec in ("middle", "last", 0, 2, -1, -2):
        assert [resolve_layer(pair.old, spec)] == hidden_state_ids(spec, states)
