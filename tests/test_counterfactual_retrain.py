"""The batched retrain equals each subset model trained alone with `train_lm.train` (float64, micro Llama),
its steps split by batch width pad least and change nothing, and the stacked models' outputs read at once
equal each model's read alone."""

from __future__ import annotations

import copy
import itertools
import random

import pytest
import torch
from lm_fixtures import TEXTS, build_tokenizer, exact_float64, make_micro_model

from probes.counterfactual import retrain
from probes.counterfactual.jobs import Job, Runner
from probes.counterfactual.retrain import StepBatches, stacked_logits_at, train_stacked, unstack, width_groups
from probes.lm.causal import STACKED_ATTENTION, causal_attention
from probes.lm.scoring import prompt_outputs
from probes.lm.stack import attention_implementation
from probes.pairs.train import TrainConfig, encode_texts, train

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
    return model, encode_texts(tokenizer, texts), tokenizer.pad_token_id, tokenizer


def test_stacked_equals_alone(setup):
    model, seqs, pad, _ = setup
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


def _partitions(items):
    """Every partition of ``items`` into non-empty groups."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in _partitions(rest):
        yield [[first], *part]
        for g in range(len(part)):
            yield [*part[:g], [first, *part[g]], *part[g + 1 :]]


def test_width_groups_pad_least():
    """Against every partition of up to 7 models into at most G groups: the split pads fewest tokens, covers
    every model once, and each group's width is its widest model's."""
    rng = random.Random(0)
    for _ in range(60):
        k, groups = rng.randint(1, 7), rng.randint(1, 4)
        widths = [rng.randint(1, 9) for _ in range(k)]
        order, sizes, group_widths = width_groups(widths, groups)
        models = list(range(k)) if order is None else order
        assert sorted(models) == list(range(k)) and sum(sizes) == k and len(sizes) <= groups
        bounds = list(itertools.accumulate(sizes, initial=0))
        members = [models[a:b] for a, b in itertools.pairwise(bounds)]
        assert group_widths == [max(widths[m] for m in g) for g in members]
        cost = sum(len(g) * w for g, w in zip(members, group_widths, strict=True))
        best = min(
            sum(len(g) * max(widths[m] for m in g) for g in part)
            for part in _partitions(list(range(k)))
            if len(part) <= groups
        )
        assert cost == best, (widths, groups)


def test_width_groups_change_nothing(setup, monkeypatch):
    """The stacked models trained in width groups equal them trained as one block as wide as the widest
    (float64, each model's documents with loss weights of its own), on a setup whose steps do split."""
    model, seqs, pad, _ = setup
    subsets, seeds = [[0, 1, 2, 3, 4], [7, 6, 5, 4, 3], [0, 2, 4, 6, 7], [1, 3, 5, 7, 0]], [3, 4, 3, 5]
    weights = torch.rand(len(subsets), 5, generator=torch.Generator().manual_seed(0)).tolist()
    steps = 6
    plans = StepBatches(seqs, subsets, CFG, seeds, steps, pad, "cpu", groups=retrain.WIDTH_GROUPS).plans
    assert any(len(sizes) > 1 for _, sizes, _ in plans)
    kw = {"pad_id": pad, "progress": False, "weights": weights}
    grouped = train_stacked(model, seqs, subsets, seeds, CFG, **kw)
    monkeypatch.setattr(retrain, "WIDTH_GROUPS", 1)
    one_block = train_stacked(model, seqs, subsets, seeds, CFG, **kw)
    for name, p in one_block.items():
        torch.testing.assert_close(grouped[name], p, rtol=1e-10, atol=1e-12, msg=name)


def test_subset_and_seed_change_the_model(setup):
    model, seqs, pad, _ = setup
    stacked = train_stacked(
        model, seqs, [[0, 1, 2], [0, 1, 2], [3, 4, 5]], [0, 1, 0], CFG, pad_id=pad, progress=False
    )
    a, b, c = (unstack(stacked, k)["lm_head.weight"] for k in range(3))
    assert not torch.allclose(a, b)  # another data order
    assert not torch.allclose(a, c)  # other documents


def alone(model, stacked, k: int):
    """Stacked model ``k`` as a model of its own."""
    copied = copy.deepcopy(model)
    copied.load_state_dict(unstack(stacked, k), strict=False)
    return copied


def test_stacked_prompt_logits_equal_each_model_alone(setup):
    """One vmapped forward (no attention mask, right padding) gives each model's logits at the last prompt
    token as the model alone with its mask does, prompts of several lengths in one batch."""
    model, seqs, pad, tokenizer = setup
    stacked = train_stacked(model, seqs, [[0, 1], [2, 3], [1, 4]], [0, 0, 1], CFG, pad_id=pad, progress=False)
    prompts = ["<FN>(4) returns the value", "<HN>(8) is", "<GN>(1)"]
    read = lambda logits, rows: logits.reshape(len(rows), -1)  # noqa: E731
    with attention_implementation(model, STACKED_ATTENTION, causal_attention):
        forward = stacked_logits_at(model, stacked)
        together = prompt_outputs(model, tokenizer, prompts, read, forward=forward).view(3, 3, -1)
    for k in range(3):
        expected = prompt_outputs(alone(model, stacked, k), tokenizer, prompts, read)
        torch.testing.assert_close(together[:, k], expected)
    assert not torch.allclose(together[:, 0], together[:, 1])  # the models differ


def test_runner_reads_stacked_models_as_each_alone(counterfactual_world):
    """Runner.outputs of K stacked models equals its outputs of each model loaded alone: [K, 2, q]."""
    old = counterfactual_world["root"] / "pair" / "old"
    prompts = ("<GN>(1) returns the value ", "<FN>(2) returns the value ", "<JN>(3)")
    job = Job(str(old), ("<GN>(1) returns the value 5",) * 4, prompts, (5, 6, 7), (5, 6, 7, 8), CFG)
    runner = Runner(job)
    stacked = train_stacked(runner.model, runner.seqs, [[0, 1], [2, 3]], [0, 1], CFG, pad_id=runner.pad)
    together = runner.outputs(runner.model, stacked)
    assert together.shape == (2, 2, 3)
    for k in range(2):
        torch.testing.assert_close(together[k : k + 1], runner.outputs(alone(runner.model, stacked, k)))


def test_unequal_subsets_refused(setup):
    model, seqs, pad, _ = setup
    with pytest.raises(ValueError, match="one size"):
        train_stacked(model, seqs, [[0, 1], [2]], [0, 0], CFG, pad_id=pad, progress=False)
