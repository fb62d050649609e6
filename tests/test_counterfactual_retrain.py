"""The batched retrain equals each subset model trained alone with `train_lm.train` (float64, micro Llama)."""

from __future__ import annotations

import copy

import pytest
import torch
from lm_fixtures import TEXTS, build_tokenizer, exact_float64, make_micro_model

from probes.counterfactual.retrain import load_into, stacked_outputs, train_stacked, unstack
from probes.lm.train_lm import TrainConfig, encode_texts, train

pytestmark = pytest.mark.usefixtures("one_thread")


def exact_loss(logits, labels, vocab_size, **_):
    """transformers' causal-LM loss without its float32 cast, so ``train`` runs float64 throughout."""
    targets = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:]
    return torch.nn.functional.cross_entropy(
        logits.view(-1, vocab_size), targets.reshape(-1), ignore_index=-100
    )


CFG = TrainConfig(epochs=2, lr=5e-2, batch_size=2, warmup=0.2, weight_decay=0.1)


@pytest.fixture(scope="module")
def setup():
    tokenizer = build_tokenizer()
    model = exact_float64(make_micro_model(len(tokenizer)))
    texts = [*TEXTS, "<FN>(4) returns the value 5", "<HN>(8) is 9"]
    return model, encode_texts(tokenizer, texts), tokenizer.pad_token_id


def test_stacked_equals_alone(setup):
    model, seqs, pad = setup
    subsets, seeds = [[0, 1, 2, 3, 4], [7, 6, 5, 4, 3], [0, 2, 4, 6, 7]], [3, 4, 3]
    before = {n: p.clone() for n, p in model.named_parameters()}
    stacked = train_stacked(model, seqs, subsets, seeds, CFG, pad_id=pad, progress=False)
    for n, p in model.named_parameters():  # the template is never trained
        assert torch.equal(p, before[n])
    for k, (subset, seed) in enumerate(zip(subsets, seeds, strict=True)):
        alone = copy.deepcopy(model)
        alone._loss_function = exact_loss
        train(alone, [seqs[i] for i in subset], CFG, pad_id=pad, seed=seed, desc="alone")
        got = unstack(stacked, k)
        moved = max((p - before[n]).abs().max().item() for n, p in alone.named_parameters())
        assert moved > 1e-3  # training moved the weights, so equality below is not trivial
        for name, p in alone.named_parameters():
            torch.testing.assert_close(got[name], p.detach(), rtol=1e-9, atol=1e-11, msg=name)


def test_subset_and_seed_change_the_model(setup):
    model, seqs, pad = setup
    stacked = train_stacked(
        model, seqs, [[0, 1, 2], [0, 1, 2], [3, 4, 5]], [0, 1, 0], CFG, pad_id=pad, progress=False
    )
    a, b, c = (unstack(stacked, k)["lm_head.weight"] for k in range(3))
    assert not torch.allclose(a, b)  # another data order
    assert not torch.allclose(a, c)  # other documents


def test_stacked_outputs_loads_each_model(setup):
    model, seqs, pad = setup
    stacked = train_stacked(model, seqs, [[0, 1], [2, 3]], [0, 0], CFG, pad_id=pad, progress=False)
    norms = stacked_outputs(model, stacked, lambda m: m.lm_head.weight.detach().norm())
    for k in range(2):
        assert norms[k] == pytest.approx(unstack(stacked, k)["lm_head.weight"].norm().item())
    again = load_into(copy.deepcopy(model), unstack(stacked, 1))
    assert torch.equal(again.lm_head.weight, unstack(stacked, 1)["lm_head.weight"])


def test_unequal_subsets_refused(setup):
    model, seqs, pad = setup
    with pytest.raises(ValueError, match="one size"):
        train_stacked(model, seqs, [[0, 1], [2]], [0, 0], CFG, pad_id=pad, progress=False)
