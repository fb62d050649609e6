"""Integrated gradients: the Riemann-sum helper against closed forms, and on a real layer of a micro pair."""

from __future__ import annotations

import pytest
import torch
from baselines_fixtures import micro_corpus
from lm_fixtures import CANDIDATES, TEXTS, make_micro_pair

from baselines.ops.interpolate import (
    integrated_gradients,
    path_gradient,
    replaced_hidden_state,
    riemann_path_mean,
    text_loss,
)
from probes.features.extract import gradient_features
from probes.lm.load import load_pair
from probes.lm.scoring import collate, pad_id, tokenize

pytestmark = pytest.mark.usefixtures("one_thread")


def test_riemann_sum_is_exact_for_a_linear_map():
    g = torch.Generator().manual_seed(0)
    w, start, end = (torch.randn(6, generator=g, dtype=torch.float64) for _ in range(3))
    for steps in (1, 3, 50):
        attribution = (end - start) * riemann_path_mean(lambda h: w.expand_as(h), start, end, steps)
        torch.testing.assert_close(attribution, (end - start) * w)
        torch.testing.assert_close(attribution.sum(), w @ end - w @ start)  # completeness


def test_riemann_sum_converges_for_a_quadratic():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(5, 5, generator=g, dtype=torch.float64)
    a = a @ a.T
    start, end = (
        torch.randn(5, generator=g, dtype=torch.float64),
        torch.randn(5, generator=g, dtype=torch.float64),
    )
    exact = (end - start) * (a @ (start + end) / 2)  # gradient a h is linear along the path: midpoint value

    def error(steps):
        return (
            ((end - start) * riemann_path_mean(lambda h: h @ a, start, end, steps, group=7) - exact)
            .abs()
            .max()
        )

    assert error(64) < error(8) / 4 < error(1) / 4
    assert error(1000) < 1e-2 * error(1)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    dirs = make_micro_pair(tmp_path_factory.mktemp("pair"))
    return load_pair(*dirs, dtype="float64", corpus=micro_corpus(), candidates=CANDIDATES)


def test_replacing_a_state_with_its_own_value_changes_nothing(pair):
    batch = collate(tokenize(pair.tokenizer, TEXTS[:2]), pad_id(pair.tokenizer))
    kwargs = dict(attention_mask=batch["attention_mask"], position_ids=batch["position_ids"])
    out = pair.new(input_ids=batch["input_ids"], output_hidden_states=True, **kwargs)
    for layer in range(len(out.hidden_states)):
        with replaced_hidden_state(pair.new, layer, out.hidden_states[layer]):
            torch.testing.assert_close(pair.new(input_ids=batch["input_ids"], **kwargs).logits, out.logits)
        with replaced_hidden_state(pair.new, layer, torch.zeros_like(out.hidden_states[layer])):
            assert not torch.allclose(pair.new(input_ids=batch["input_ids"], **kwargs).logits, out.logits)


@pytest.mark.parametrize("layer", [1, 2])
def test_real_layer_completeness_improves_with_steps(pair, layer):
    """Sum of Δh ⊙ path-mean gradient over tokens and dims -> L(f_new from h_new) - L(f_new from h_old)."""
    items = tokenize(pair.tokenizer, TEXTS[:1])
    batch = collate(items, pad_id(pair.tokenizer))
    kwargs = dict(attention_mask=batch["attention_mask"], position_ids=batch["position_ids"])
    start = pair.old(input_ids=batch["input_ids"], output_hidden_states=True, **kwargs).hidden_states[layer]
    end = pair.new(input_ids=batch["input_ids"], output_hidden_states=True, **kwargs).hidden_states[layer]

    def loss_at(state):
        with replaced_hidden_state(pair.new, layer, state):
            return text_loss(pair.new, batch, items, "lm").sum()

    gap = loss_at(end) - loss_at(start)
    attributions = {
        k: (end - start) * path_gradient(pair.new, batch, items, layer, start, end, k, "lm")
        for k in (2, 8, 64)
    }
    grouped = path_gradient(pair.new, batch, items, layer, start, end, 8, "lm", group=3)
    torch.testing.assert_close((end - start) * grouped, attributions[8])  # steps batched or not: same sum
    distance = [(attributions[k] - attributions[64]).abs().sum() for k in (2, 8)]
    assert distance[1] < distance[0]
    assert abs(attributions[64].sum() - gap) < 0.15 * abs(gap)


@pytest.mark.parametrize(("loss", "pooling"), [("lm", "mean"), ("ce", "last"), ("margin", "last")])
def test_one_step_equals_f_new_activation_gradient(pair, loss, pooling):
    if loss == "lm":
        texts, targets = list(TEXTS), None
    else:
        texts, targets = ["<GN>(3) returns the value 5", "<HN>(1) returns the value 9"], [(26, 27), (26, 27)]
    candidate_ids = torch.tensor(pair.tokenizer.convert_tokens_to_ids([str(c) for c in CANDIDATES]))
    options = dict(targets=targets, loss=loss, candidate_ids=candidate_ids, pooling=pooling)
    plain = gradient_features(pair.new, pair.tokenizer, texts, layers=[0, 2], batch_size=2, **options)
    one = integrated_gradients(
        pair.old, pair.new, pair.tokenizer, texts, layers=[0, 2], steps=1, batch_size=3, **options
    )
    torch.testing.assert_close(one, plain)
