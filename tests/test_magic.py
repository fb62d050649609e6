"""MAGIC's metagradients against what they approximate: retraining with a document's weight at 1 +- eps
(central difference through `train`, float64), and the replay they differentiate against f_new."""

from __future__ import annotations

import copy

import pytest
import torch
from lm_fixtures import QUERIES, TEXTS, build_tokenizer, exact_float64, make_micro_model

from probes.lm.metagrad import answer_logprobs, metagradients
from probes.lm.replay import Replay
from probes.lm.scoring import tokenize
from probes.lm.train_lm import TrainConfig, encode_texts, train

pytestmark = pytest.mark.usefixtures("one_thread")

# 8 documents in batches of 3 (the last short) for 2 epochs: 6 steps, each document seen twice; the
# learning rate is high enough that clipping acts on some steps
CFG = TrainConfig(epochs=2, lr=5e-2, batch_size=3, warmup=0.2, weight_decay=0.1)
SEED = 3


@pytest.fixture(scope="module")
def run():
    tokenizer = build_tokenizer()
    model = exact_float64(make_micro_model(len(tokenizer)))
    seqs = encode_texts(tokenizer, [*TEXTS, "<FN>(4) returns the value 5", "<HN>(8) is 9"])
    replay = Replay(model, seqs, CFG, SEED, tokenizer.pad_token_id)
    prompts = [item.ids for item in tokenize(tokenizer, [q.prompt for q in QUERIES], as_prompt=True)]
    answers = tokenizer.convert_tokens_to_ids([q.answer for q in QUERIES])
    outputs = answer_logprobs(replay, prompts, answers)
    scores = metagradients(replay, outputs, len(QUERIES), every=2, progress=False)
    return {"model": model, "seqs": seqs, "replay": replay, "outputs": outputs, "scores": scores}


def retrained_outputs(run, weights: torch.Tensor) -> torch.Tensor:
    """The answers' log-probabilities after `train` (not the replay) with these document weights."""
    model = copy.deepcopy(run["model"])
    train(
        model,
        run["seqs"],
        CFG,
        pad_id=run["replay"].pad_id,
        seed=SEED,
        weights=weights.tolist(),
        progress=False,
    )
    with run["replay"].attention():
        return run["outputs"]({n: p.detach() for n, p in model.named_parameters()})


@pytest.mark.parametrize("documents", [[0], [3], [7], [1, 4, 6], [0, 2, 5]])
def test_metagradient_equals_central_difference_of_retraining(run, documents):
    """The first steps of Adam are close to sign(g), so the outputs are linear in w only very near 1:
    eps = 1e-6 in float64 (at 1e-4 the difference is still 8% off on documents of the first batch)."""
    eps = 1e-6
    u = torch.zeros(len(run["seqs"]), dtype=torch.float64)
    u[documents] = 1.0
    measured = (retrained_outputs(run, 1 + eps * u) - retrained_outputs(run, 1 - eps * u)) / (2 * eps)
    predicted = run["scores"][:, documents].sum(1)
    assert measured.abs().min() > 1e-3  # a real effect on every query
    torch.testing.assert_close(predicted, measured, rtol=1e-4, atol=0)


def test_checkpoint_spacing_and_query_subsets_do_not_change_scores(run):
    replay = run["replay"]
    every_step = metagradients(replay, run["outputs"], len(QUERIES), every=1, progress=False)
    torch.testing.assert_close(every_step, run["scores"], rtol=1e-10, atol=1e-12)
    one = metagradients(replay, lambda p: run["outputs"](p)[2:3], 1, every=4, progress=False)
    torch.testing.assert_close(one[0], run["scores"][2], rtol=1e-10, atol=1e-12)


def test_replay_at_weight_one_is_the_trained_model():
    """float32, transformers' loss in `train` and the weighted loss at w = 1 in the replay: the same weights
    to 1e-6 (on a CPU they are the same floats)."""
    tokenizer = build_tokenizer()
    model = make_micro_model(len(tokenizer))
    seqs = encode_texts(tokenizer, [*TEXTS, "<FN>(4) returns the value 5", "<HN>(8) is 9"] * 3)
    cfg = TrainConfig(epochs=4, lr=1e-2, batch_size=5, warmup=0.2, weight_decay=0.1)
    replay = Replay(model, seqs, cfg, SEED, tokenizer.pad_token_id)
    state = replay.run(replay.initial(), 0, replay.steps, torch.ones(len(seqs)))[-1]
    trained = copy.deepcopy(model)
    train(trained, seqs, cfg, pad_id=tokenizer.pad_token_id, seed=SEED, progress=False)
    assert replay.steps == 20
    for name, p in trained.named_parameters():
        assert (p - model.get_parameter(name)).abs().max() > 1e-3  # trained, so agreement is not trivial
        torch.testing.assert_close(state[0][name], p.detach(), rtol=0, atol=1e-6, msg=name)
