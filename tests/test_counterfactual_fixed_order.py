"""The fixed-order regime: f_new's run replayed on every document with the dropped ones weighted 0 in place.
With nothing dropped it is f_new; a build is deterministic; stacked retrains equal retrains alone."""

from __future__ import annotations

import copy
import json

import counterfactual_fixtures as fixtures
import pytest
import torch
from counterfactual_fixtures import isolated_cache, no_figures  # noqa: F401
from lm_fixtures import TEXTS, build_tokenizer, exact_float64, make_micro_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from probes.counterfactual.__main__ import main
from probes.counterfactual.ground_truth import load_ground_truth
from probes.counterfactual.retrain import train_stacked, unstack
from probes.data.corpus import load_corpus
from probes.data.synthetic import write_corpus
from probes.errors import UserError
from probes.hashing import file_sha256
from probes.pairs.recipe import pair_recipe
from probes.pairs.train import TrainConfig, encode_texts, train

pytestmark = pytest.mark.usefixtures("one_thread")


def build(config, out, *extra: str):
    return main(["build", "--config", str(config), "--out", str(out), "--workers", "1", "--debug", *extra])


@pytest.fixture(scope="module")
def memorising_pair(tmp_path_factory):
    """A micro pair whose recipe runs 10 epochs of 3 batches (the last one short), built the project's way."""
    root = tmp_path_factory.mktemp("fixed_order")
    corpus = write_corpus(root / "micro.jsonl", fixtures.CORPUS)
    old, new = fixtures.micro_pair(root, corpus)
    recipe = {**fixtures.MEMORISE, "batch_size": 5, "weight_decay": 0.1}
    manifest = json.loads((root / "pair" / "manifest.json").read_text())
    manifest["preset_config"]["finetune"].update(recipe)
    (root / "pair" / "manifest.json").write_text(json.dumps(manifest))
    fixtures.retrain_new(root, corpus)  # f_new made by the recorded recipe
    cfg, seed = pair_recipe(old, file_sha256(corpus))
    seqs = encode_texts(AutoTokenizer.from_pretrained(old), load_corpus(corpus).texts)
    return {"root": root, "corpus": corpus, "old": old, "new": new, "cfg": cfg, "seed": seed, "seqs": seqs}


def test_dropping_nothing_reproduces_f_new(memorising_pair):
    """Weights 1 everywhere (the weighted loss, not transformers') end at f_new's weights to 1e-6 in
    float32; dropping one document in place moves them."""
    w = memorising_pair
    tokenizer = AutoTokenizer.from_pretrained(w["old"])
    new = AutoModelForCausalLM.from_pretrained(w["new"], dtype=torch.float32)
    ends = []
    for weights in ([1.0] * len(w["seqs"]), [0.0] + [1.0] * (len(w["seqs"]) - 1)):
        model = AutoModelForCausalLM.from_pretrained(w["old"], dtype=torch.float32)
        train(model, w["seqs"], w["cfg"], pad_id=tokenizer.pad_token_id, seed=w["seed"], weights=weights)
        ends.append(dict(model.named_parameters()))
    for name, p in new.named_parameters():
        torch.testing.assert_close(ends[0][name], p, rtol=0, atol=1e-6, msg=name)
    assert max((ends[1][n] - p).abs().max().item() for n, p in new.named_parameters()) > 1e-4


def test_two_builds_of_one_subset_agree(memorising_pair, tmp_path):
    w = memorising_pair
    config = fixtures.write_config(tmp_path / "micro.yaml", w["corpus"], w["old"], w["new"])
    options = ("--regime", "fixed-order", "--drop", "0.25", "--subsets", "3")
    first, second = (load_ground_truth(build(config, tmp_path / name, *options)) for name in ("a", "b"))
    assert torch.equal(first.outputs, second.outputs) and torch.equal(first.masks, second.masks)
    assert first.masks.sum(1).tolist() == [9, 9, 9]  # masks mark the kept documents: 12 x (1 - 0.25)
    m = first.manifest
    assert (m["regime"], m["drop"], m["fraction"], m["seeds_per_subset"]) == ("fixed-order", 0.25, 0.75, 1)
    assert m["recipe"]["in_place"] and m["noise_ceiling"] is None
    assert first.outputs.shape == (3, 1, len(m["queries"]["ids"]))  # one retrain per subset: K = 1
    assert len({tuple(row.tolist()) for row in first.outputs[:, 0]}) == 3  # each subset answers differently


@pytest.mark.parametrize(
    "options, message",
    [
        (("--regime", "fixed-order", "--fraction", "0.5"), "takes --drop"),
        (("--regime", "fixed-order", "--drop", "0.1", "--seeds-per-subset", "3"), "no seed noise"),
        (("--drop", "0.1"), "stochastic regime takes --fraction"),
        (("--regime", "fixed", "--drop", "0.1"), "one of stochastic, fixed-order"),
    ],
)
def test_options_that_do_not_fit_the_regime_are_refused(memorising_pair, tmp_path, options, message):
    w = memorising_pair
    config = fixtures.write_config(tmp_path / "micro.yaml", w["corpus"], w["old"], w["new"])
    with pytest.raises(UserError, match=message):
        build(config, tmp_path / "gt", "--subsets", "3", *options)


def test_stacked_fixed_order_equals_alone():
    """float64: K models replaying one run with their own weights equal each trained alone by ``train``."""
    tokenizer = build_tokenizer()
    model = exact_float64(make_micro_model(len(tokenizer)))
    seqs = encode_texts(tokenizer, [*TEXTS, "<FN>(4) returns the value 5", "<HN>(8) is 9"])
    cfg = TrainConfig(epochs=2, lr=5e-2, batch_size=3, warmup=0.2, weight_decay=0.1)
    everything = list(range(len(seqs)))
    weights = [[1.0] * 8, [0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0], [1.0] * 7 + [0.0]]
    stacked = train_stacked(
        model, seqs, [everything] * 3, [3] * 3, cfg, pad_id=0, weights=weights, progress=False
    )
    for k, w in enumerate(weights):
        alone = copy.deepcopy(model)
        train(alone, seqs, cfg, pad_id=0, seed=3, weights=w, progress=False)
        for name, p in alone.named_parameters():
            torch.testing.assert_close(unstack(stacked, k)[name], p.detach(), rtol=1e-9, atol=1e-11, msg=name)
    assert not torch.allclose(unstack(stacked, 0)["lm_head.weight"], unstack(stacked, 1)["lm_head.weight"])
