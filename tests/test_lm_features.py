"""Hidden and gradient features on a float64 micro Llama: invariances and independent references."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from lm_fixtures import CANDIDATES, QUERIES, TEXTS, build_tokenizer, exact_float64, make_micro_model

from probes.features import extract as features
from probes.features.extract import (
    FeatureSpec,
    compute_features,
    gradient_features,
    hidden_features,
    query_inputs,
)
from probes.features.losses import margin_loss
from probes.lm import scoring
from probes.lm.scoring import answer_token_ids, length_batches, tokenize

MULTI = ("<GN>(3) returns the value 5", (8, 27))  # a 3-token target "the value 5"


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    model = exact_float64(make_micro_model(len(tokenizer), initializer_range=0.2))
    return model, tokenizer, answer_token_ids(tokenizer, CANDIDATES)


def queries():
    texts, spans = query_inputs(QUERIES)
    return texts, spans


def reference_hidden(model, item, pooling):
    """One text, no padding, no position_ids: the model's own forward, pooled by hand."""
    states = model(input_ids=torch.tensor([item.ids]), output_hidden_states=True).hidden_states
    start, end = item.target or (0, len(item.ids))
    if pooling == "last":
        return torch.stack([h[0, (item.target[0] if item.target else len(item.ids)) - 1] for h in states])
    if pooling == "span":
        return torch.stack([h[0, start:end].mean(0) for h in states])
    return torch.stack([h[0].mean(0) for h in states])


@pytest.mark.parametrize("pooling", ["last", "mean", "span"])
@pytest.mark.parametrize("with_targets", [False, True])
def test_hidden_matches_one_text_at_a_time(lm, pooling, with_targets):
    model, tokenizer, _ = lm
    texts, targets = queries() if with_targets else (list(TEXTS), None)
    items = tokenize(tokenizer, texts, targets)
    expected = torch.stack([reference_hidden(model, item, pooling) for item in items])
    for side in ("right", "left"):
        got = hidden_features(
            model, tokenizer, texts, targets=targets, pooling=pooling, batch_size=3, padding_side=side
        )
        assert got.dtype == torch.float64 and got.shape == (len(texts), 3, 32)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)


def test_query_last_equals_prompt_alone(lm):
    model, tokenizer, _ = lm
    texts, targets = queries()
    teacher_forced = hidden_features(model, tokenizer, texts, targets=targets)
    prompts = hidden_features(model, tokenizer, [q.prompt for q in QUERIES])
    torch.testing.assert_close(teacher_forced, prompts, rtol=0, atol=1e-10)


def test_permuting_texts_permutes_rows_and_layers_subset(lm):
    model, tokenizer, _ = lm
    full = hidden_features(model, tokenizer, list(TEXTS), pooling="mean", batch_size=4)
    perm = torch.randperm(len(TEXTS)).tolist()
    permuted = hidden_features(model, tokenizer, [TEXTS[i] for i in perm], pooling="mean", batch_size=4)
    torch.testing.assert_close(permuted, full[perm], rtol=0, atol=1e-10)
    subset = hidden_features(model, tokenizer, list(TEXTS), pooling="mean", layers=(0, -1))
    torch.testing.assert_close(subset, full[:, [0, 2]], rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="index 5 is out of range"):
        hidden_features(model, tokenizer, list(TEXTS), layers=(5,))


def test_mean_of_one_token_text_is_last(lm):
    model, _, _ = lm
    tokenizer = build_tokenizer(bos=False)
    assert len(tokenizer.encode("5")) == 1
    mean, last = (hidden_features(model, tokenizer, ["5", "<GN>"], pooling=p) for p in ("mean", "last"))
    torch.testing.assert_close(mean, last, rtol=0, atol=0)


def test_nan_names_the_text(lm):
    model, tokenizer, _ = lm
    broken = copy.deepcopy(model)
    broken.get_input_embeddings().weight.data[tokenizer.convert_tokens_to_ids("always")] = float("nan")
    with pytest.raises(FloatingPointError, match=r"text 3 \('<JN> maps any input"):
        hidden_features(broken, tokenizer, list(TEXTS), batch_size=2)


def _loss(model, item, loss, candidates, module, shift):
    """The loss of one text with ``shift`` added to ``module``'s output, computed directly from the logits."""
    ids, target = item.ids, item.target
    handle = module.register_forward_hook(lambda _module, _args, out: out + shift)
    try:
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    finally:
        handle.remove()
    if loss == "lm":
        return F.cross_entropy(logits[:-1], torch.tensor(ids[1:]))
    first, end = target
    if loss == "ce":
        return F.cross_entropy(logits[first - 1 : end - 1], torch.tensor(ids[first:end]))
    row = logits[first - 1]
    others = [c for c in candidates.tolist() if c != ids[first]]
    return row[others].max() - row[ids[first]]


@pytest.mark.parametrize(
    "loss, pooling", [("lm", "last"), ("lm", "mean"), ("ce", "last"), ("ce", "span"), ("margin", "mean")]
)
def test_gradients_match_finite_differences(lm, loss, pooling):
    model, tokenizer, candidates = lm
    texts, targets = queries()
    texts, targets = texts[:2], targets[:2]
    grads = gradient_features(
        model, tokenizer, texts, targets=targets, loss=loss, candidate_ids=candidates, pooling=pooling
    )
    assert grads.dtype == torch.float64
    # the module whose output is h_l: embeddings, blocks 1..L-1, then the final norm (h_L is post-norm)
    blocks = [model.model.embed_tokens, *model.model.layers[:-1], model.model.norm]
    generator = torch.Generator().manual_seed(0)
    for i, item in enumerate(tokenize(tokenizer, texts, targets)):
        weights = torch.zeros(len(item.ids), dtype=torch.float64)
        start, end = item.target if pooling == "span" else (0, len(item.ids))
        weights[start:end] = 1.0 / (end - start)
        if pooling == "last":
            weights = torch.zeros_like(weights).index_fill_(0, torch.tensor(item.target[0] - 1), 1.0)
        for layer, block in enumerate(blocks):
            direction = torch.randn(32, generator=generator, dtype=torch.float64)

            eps = 1e-5
            shifts = [sign * eps * weights[None, :, None] * direction for sign in (1, -1)]
            up, down = (_loss(model, item, loss, candidates, block, shift) for shift in shifts)
            numeric = (up - down) / (2 * eps)
            torch.testing.assert_close(grads[i, layer] @ direction, numeric, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("loss", ["lm", "ce", "margin"])
def test_gradients_independent_of_batching_and_padding(lm, loss):
    model, tokenizer, candidates = lm
    texts, targets = queries()
    if loss != "margin":
        texts, targets = [*texts, MULTI[0]], [*targets, MULTI[1]]
    options = dict(targets=targets, loss=loss, candidate_ids=candidates, pooling="span")
    alone = gradient_features(model, tokenizer, texts, batch_size=1, **options)
    for side in ("right", "left"):
        batched = gradient_features(model, tokenizer, texts, batch_size=3, padding_side=side, **options)
        torch.testing.assert_close(batched, alone, rtol=0, atol=1e-10)
    spec = FeatureSpec("grad", pooling="span", loss=loss)
    again = compute_features(model, tokenizer, texts, spec, targets=targets, candidate_ids=candidates)
    torch.testing.assert_close(again, alone, rtol=0, atol=1e-10)


def test_margin_loss_sign_and_requirements(lm):
    logits = torch.zeros(2, 10, dtype=torch.float64)
    logits[0, 3], logits[0, 4] = 2.0, 0.5  # answer 3 wins by 1.5
    logits[1, 3], logits[1, 4] = 0.5, 2.0  # answer 3 loses by 1.5
    loss = margin_loss(logits, torch.tensor([3, 3]), torch.tensor([3, 4, 5]))
    torch.testing.assert_close(loss, torch.tensor([-1.5, 1.5], dtype=torch.float64))
    model, tokenizer, candidates = lm
    texts, targets = queries()
    with pytest.raises(ValueError, match="needs targets"):
        gradient_features(model, tokenizer, texts, loss="ce")
    with pytest.raises(ValueError, match="text 0 .* not a candidate"):
        gradient_features(
            model, tokenizer, texts, targets=targets, loss="margin", candidate_ids=candidates[:1]
        )
    with pytest.raises(ValueError, match="'grad', 'attr' need a loss"):
        FeatureSpec("grad")


@pytest.mark.parametrize("max_tokens", [None, 1, 7, 100])
def test_length_batches_respect_the_token_cap(max_tokens, monkeypatch):
    monkeypatch.setattr(scoring, "MAX_PADDING", 1.0)  # the padding rule has its own test
    lengths = torch.randint(1, 30, (200,), generator=torch.Generator().manual_seed(0)).tolist()
    batches = length_batches(lengths, 16, max_tokens)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    longest = [max(lengths[i] for i in batch) for batch in batches]
    assert longest == sorted(longest, reverse=True)  # longest first
    for batch, width in zip(batches, longest, strict=True):
        assert 1 <= len(batch) <= 16
        assert max_tokens is None or width * len(batch) <= max_tokens or len(batch) == 1
    sizes = [len(batch) for batch in batches]
    if max_tokens is None:
        assert set(sizes[:-1]) == {16}
    elif max_tokens == 1:  # every text is longer than the cap: each runs alone
        assert set(sizes) == {1}
    elif max_tokens == 100:  # the cap binds for long texts but not for short ones
        assert sizes[0] == 100 // longest[0] and max(sizes) == 16


def test_large_batches_stop_before_padding_passes_five_percent(monkeypatch):
    lengths = torch.randint(1, 60, (500,), generator=torch.Generator().manual_seed(0)).tolist()

    def padding(batches):
        return [lengths[b[0]] * len(b) - sum(lengths[i] for i in b) for b in batches]

    batches = length_batches(lengths, 64, 2000)
    for batch, pad in zip(batches, padding(batches), strict=True):
        if lengths[batch[0]] * (len(batch) - 1) * scoring.MIN_BATCH_SHARE >= 2000:  # large before its last
            assert pad <= scoring.MAX_PADDING * lengths[batch[0]] * len(batch)
    monkeypatch.setattr(scoring, "MAX_PADDING", 1.0)  # the rule off: only the text and token caps
    assert sum(padding(batches)) < sum(padding(length_batches(lengths, 64, 2000)))


def test_passes_over_the_same_texts_tokenise_them_once(lm):
    _, tokenizer, _ = lm
    texts, targets = queries()
    first = features._tokenized(tokenizer, texts, targets)
    assert first == tokenize(tokenizer, texts, targets)
    assert features._tokenized(tokenizer, list(texts), [tuple(t) for t in targets]) is first  # equal inputs
    assert features._tokenized(tokenizer, texts, None) == tokenize(tokenizer, texts)  # other targets: anew
    grown = copy.deepcopy(tokenizer)
    before = features._tokenized(grown, ["<NEW> x"], None)
    grown.add_tokens(["<NEW>"])  # the same tokenizer with another vocabulary: anew, even for the same texts
    assert features._tokenized(grown, ["<NEW> x"], None) == tokenize(grown, ["<NEW> x"]) != before


def test_token_cap_does_not_change_features(lm):
    model, tokenizer, _ = lm
    texts, targets = queries()
    cases = [
        (list(TEXTS), None, FeatureSpec("hidden", "mean")),
        (list(TEXTS), None, FeatureSpec("grad", "mean", "lm")),
        (texts, targets, FeatureSpec("grad", "span", "ce")),
    ]
    for texts, targets, spec in cases:
        lengths = [len(item.ids) for item in tokenize(tokenizer, texts, targets)]
        cap = 2 * max(lengths) - 1  # the longest text runs alone
        assert len(length_batches(lengths, 8, cap)) > len(length_batches(lengths, 8)) == 1
        free, capped = (
            compute_features(model, tokenizer, texts, spec, targets=targets, batch_size=8, max_tokens=tokens)
            for tokens in (None, cap)
        )
        torch.testing.assert_close(capped, free, rtol=0, atol=1e-10)
