"""MAGIC's metagradients against what they approximate: retraining with a document's weight at 1 +- eps
(central difference through `train`, float64), and the replay they differentiate against f_new."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
import yaml
from compare_fixtures import load_compare
from counterfactual_fixtures import isolated_cache, no_figures  # noqa: F401
from lm_fixtures import (
    QUERIES,
    TEXTS,
    build_tokenizer,
    exact_float64,
    make_micro_model,
    make_micro_pair,
    micro_rows,
)
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from baselines.magic import Oracle
from baselines.ops import metagrad
from baselines.ops.metagrad import Metagradients, answer_logprobs
from probes.counterfactual.__main__ import main as counterfactual_main
from probes.counterfactual.ground_truth import split_queries
from probes.data.hops import HopsData
from probes.hashing import file_sha256
from probes.lm.scoring import tokenize
from probes.pairs.recipe import pair_recipe
from probes.pairs.replay import Replay
from probes.pairs.train import TrainConfig, encode_texts, train

pytestmark = pytest.mark.usefixtures("one_thread")
compare = load_compare()

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
    scores = Metagradients(replay, every=2)(outputs, len(QUERIES), progress=False)
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


def test_checkpoint_spacing_and_query_subsets_do_not_change_scores(run, monkeypatch):
    replay = run["replay"]
    monkeypatch.setattr(metagrad, "JACOBIAN_CHUNK", 3)  # the 4 outputs' final gradients in two chunks
    every_step = Metagradients(replay, every=1)(run["outputs"], len(QUERIES), progress=False)
    torch.testing.assert_close(every_step, run["scores"], rtol=1e-10, atol=1e-12)
    again = Metagradients(replay, every=4)
    one = again(lambda p: run["outputs"](p)[2:3], 1, progress=False)
    twice = again(lambda p: run["outputs"](p)[2:3], 1, progress=False)  # the checkpoints are reused
    assert torch.equal(one, twice)
    torch.testing.assert_close(one[0], run["scores"][2], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("betas", [(0.9, 0.98), (0.9, 0.95)])  # the project's, the HOPS upstream recipe's
def test_replay_at_weight_one_is_the_trained_model(betas):
    """float32, transformers' loss in `train` and the weighted loss at w = 1 in the replay: the same weights
    to 1e-6 (on a CPU they are the same floats), with the recipe's AdamW betas."""
    tokenizer = build_tokenizer()
    model = make_micro_model(len(tokenizer))
    seqs = encode_texts(tokenizer, [*TEXTS, "<FN>(4) returns the value 5", "<HN>(8) is 9"] * 3)
    cfg = TrainConfig(epochs=4, lr=1e-2, batch_size=5, warmup=0.2, weight_decay=0.1, betas=betas)
    replay = Replay(model, seqs, cfg, SEED, tokenizer.pad_token_id)
    state = replay.run(replay.initial(), 0, replay.steps, torch.ones(len(seqs)))[-1]
    trained = copy.deepcopy(model)
    train(trained, seqs, cfg, pad_id=tokenizer.pad_token_id, seed=SEED, progress=False)
    assert replay.steps == 20
    for name, p in trained.named_parameters():
        assert (p - model.get_parameter(name)).abs().max() > 1e-3  # trained, so agreement is not trivial
        torch.testing.assert_close(state[0][name], p.detach(), rtol=0, atol=1e-6, msg=name)


def test_magic_row_in_compare_is_the_oracle_of_the_pair(counterfactual_world, tmp_path):
    """compare.py's ``magic`` row (2 queries per reverse pass) holds, per test query, the metagradients of
    the pair's own recipe computed directly, and is refused for a pair without a recipe."""
    world = counterfactual_world
    methods = [{"label": "magic", "method": "magic", "options": {"query_batch": 2}}]
    cfg = yaml.safe_load(world["config"].read_text())
    cfg["methods"] = methods
    config = tmp_path / "magic.yaml"
    config.write_text(yaml.safe_dump(cfg))
    out = compare.main(["--config", str(config), "--out", str(tmp_path / "out")])
    scores = load_file(str(out / "scores.safetensors"))["magic"]
    data = HopsData(corpus_path=cfg["data"]["corpus_path"], inputs=[1, 2, 3], test_fraction=0.4).prepare()
    ids, _ = split_queries(data, "test")
    old = cfg["model"]["old"]
    tokenizer = AutoTokenizer.from_pretrained(old)
    model = AutoModelForCausalLM.from_pretrained(old, dtype=torch.float32)
    recipe, seed = pair_recipe(old, file_sha256(world["corpus"]))
    seqs = encode_texts(tokenizer, data.corpus.texts)
    oracle = Oracle(model, tokenizer, seqs, recipe, seed, every=None, autocast=False)  # a CPU-built pair
    expected = oracle.scores([data.queries[i] for i in ids], query_batch=len(ids)).float()
    assert scores.shape == (len(ids), len(seqs)) and scores.abs().max() > 0
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-7)
    # the oracle command writes the same matrix for the test split, and any other split's, checksummed
    for split, name in (("test", "test"), ("validation", "val"), ("train", "train")):
        folder = counterfactual_main(
            ["oracle", "--config", str(config), "--out", str(tmp_path / split), "--split", split]
        )
        manifest = json.loads((folder / "manifest.json").read_text())
        tensors = load_file(str(folder / "oracle.safetensors"))
        assert manifest["sha256"]["oracle.safetensors"] == file_sha256(folder / "oracle.safetensors")
        assert tensors["query_ids"].tolist() == manifest["queries"]["ids"] == data.split_ids[name].tolist()
        assert tensors["scores"].shape == (len(manifest["queries"]["ids"]), len(seqs))
        assert manifest["recipe"]["seed"] == seed and manifest["pair"]["old"] == old
        assert manifest["recipe"]["bf16_autocast"] is False  # the pair was built on a CPU
        if split == "test":
            torch.testing.assert_close(tensors["scores"], scores, rtol=1e-5, atol=1e-8)


def test_magic_refuses_a_pair_without_a_recipe(tmp_path, write_jsonl, capsys):
    corpus = write_jsonl(micro_rows(), "micro.jsonl")
    old, new = make_micro_pair(tmp_path / "pair")  # saved models, no build manifest
    cfg = {
        "data": {"corpus_path": str(corpus), "inputs": [1, 2, 3], "test_fraction": 0.4},
        "model": {"old": str(old), "new": str(new), "dtype": "float32"},
        "methods": [{"label": "magic", "method": "magic", "options": {}}],
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit) as stop:
        compare.main(["--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "out")])
    assert stop.value.code == 2
    assert "has no build manifest" in capsys.readouterr().err


def test_oracle_resumes_and_the_magic_row_reads_it(counterfactual_world, tmp_path, monkeypatch, capsys):
    """An oracle run stopped after its first reverse pass keeps that pass's rows; started again (another
    query_batch) it computes only the rest and writes what an uninterrupted run writes. compare.py's ``magic``
    row with ``oracle`` reads those rows instead of computing them, and refuses an oracle of other queries."""
    world = counterfactual_world
    cfg = yaml.safe_load(world["config"].read_text())
    cfg["methods"] = [{"label": "magic", "method": "magic", "options": {"query_batch": 2}}]
    config = tmp_path / "magic.yaml"
    config.write_text(yaml.safe_dump(cfg))
    base = ["oracle", "--config", str(config), "--split", "test"]
    whole = load_file(
        str(counterfactual_main([*base, "--out", str(tmp_path / "whole")]) / "oracle.safetensors")
    )
    validation = counterfactual_main([*base[:3], "--split", "validation", "--out", str(tmp_path / "val")])
    computed, passes = [], Oracle.passes

    def stop_after_one(self, queries, query_batch):
        for i, (start, rows) in enumerate(passes(self, queries, query_batch)):
            computed.append(len(rows))
            if i == 1:
                raise KeyboardInterrupt  # the second pass never finishes
            yield start, rows

    monkeypatch.setattr(Oracle, "passes", stop_after_one)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        counterfactual_main([*base, "--out", str(out), "--query_batch", "1"])
    assert len(list((out / "parts").glob("row-*.safetensors"))) == 1 and not (out / "manifest.json").exists()
    computed.clear()
    counterfactual_main([*base, "--out", str(out), "--query_batch", "3"])
    q = whole["scores"].shape[0]
    assert sum(computed) == q - 1 and max(computed) <= 3  # only the missing queries, 3 a pass
    assert f"1 of {q} queries' rows found" in capsys.readouterr().out
    resumed = load_file(str(out / "oracle.safetensors"))
    torch.testing.assert_close(resumed["scores"], whole["scores"], rtol=1e-5, atol=1e-8)  # passes of 1, 3
    assert torch.equal(resumed["query_ids"], whole["query_ids"]) and not (out / "parts").exists()

    monkeypatch.setattr(Oracle, "passes", lambda *_: pytest.fail("the row must read the oracle, not compute"))
    cfg["methods"][0]["options"] = {"oracle": str(out)}
    config.write_text(yaml.safe_dump(cfg))
    run = compare.main(["--config", str(config), "--out", str(tmp_path / "cmp")])
    torch.testing.assert_close(load_file(str(run / "scores.safetensors"))["magic"], whole["scores"])

    cfg["methods"][0]["options"] = {"oracle": str(validation)}
    config.write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit) as stop:
        compare.main(["--config", str(config), "--out", str(tmp_path / "cmp-val")])
    assert stop.value.code == 2 and "has no rows for" in capsys.readouterr().err

    # an oracle of another f_old (its manifest says so) is refused, naming what differs
    other = tmp_path / "other"
    shutil.copytree(out, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["pair"]["old_weights"] = "0" * 16
    (other / "manifest.json").write_text(json.dumps(manifest))
    cfg["methods"][0]["options"] = {"oracle": str(other)}
    config.write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit):
        compare.main(["--config", str(config), "--out", str(tmp_path / "cmp-other")])
    assert "does not belong to this run: f_old has other weights" in capsys.readouterr().err
