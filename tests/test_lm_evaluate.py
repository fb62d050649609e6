"""The reference evaluation: the CLI's JSON shape, per-query correctness against one prompt at a time."""

from __future__ import annotations

import json

import pytest
import torch

from probes.data.corpus import load_corpus
from probes.data.queries import candidate_answers, make_queries
from probes.data.synthetic import GeneratorConfig, write_corpus
from probes.pairs.__main__ import main
from probes.pairs.evaluate import evaluate_pair, format_table


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A micro pair built once for this module: (corpus path, pair directory)."""
    root = tmp_path_factory.mktemp("lm_evaluate")
    corpus = write_corpus(root / "c.jsonl", GeneratorConfig(n_base=2, docs_per_base=4, docs_per_wrapper=2))
    assert main(["build", "--corpus", str(corpus), "--out", str(root / "pair"), "--preset", "micro"]) == 0
    return corpus, root / "pair"


@pytest.fixture(scope="module")
def pair(built):
    from probes.lm.load import load_pair

    corpus, out = built
    return load_pair(out / "old", out / "new", dtype="float32")


def test_evaluate_json_has_the_reference_shape(built, capsys):
    corpus, out = built
    args = ["evaluate", "--old", str(out / "old"), "--new", str(out / "new"), "--corpus", str(corpus)]
    assert main([*args, "--json", "--device", "cpu", "--inputs", "1-5"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    names = list(load_corpus(corpus).functions)
    assert set(result) == {"old", "new"}
    for summary in result.values():
        assert set(summary) == {"base", "wrapper", "functions"}
        assert list(summary["functions"]) == names
        assert all(
            0.0 <= v <= 1.0 for v in [summary["base"], summary["wrapper"], *summary["functions"].values()]
        )


def _reference_correct(model, tokenizer, corpus, inputs) -> torch.Tensor:
    """Each query alone, unpadded: is the argmax over the candidates' logits the constant."""
    candidates = candidate_answers(corpus)
    ids = [tokenizer(str(c), add_special_tokens=False).input_ids[0] for c in candidates]
    out = []
    with torch.no_grad():
        for q in make_queries(corpus, inputs):
            logits = model(input_ids=torch.tensor([tokenizer(q.prompt).input_ids])).logits[0, -1, ids]
            out.append(candidates[int(logits.argmax())] == q.constant)
    return torch.tensor(out)


def test_correctness_follows_make_queries_order_and_aggregates(built, pair):
    corpus = load_corpus(built[0])
    inputs = [3, 1, 7]
    result = evaluate_pair(pair, corpus, inputs=inputs, batch_size=2)
    queries = make_queries(corpus, inputs)
    for name in ("old", "new"):
        correct = result["correct"][name]
        assert correct.dtype == torch.bool and correct.shape == (len(queries),)
        assert torch.equal(correct, _reference_correct(pair.model(name), pair.tokenizer, corpus, inputs))
        per_function = result[name]["functions"]
        for func, acc in per_function.items():
            rows = torch.tensor([q.func == func for q in queries])
            assert acc == pytest.approx(correct[rows].float().mean().item())
        bases = [per_function[f.name] for f in corpus.functions.values() if f.is_base]
        assert result[name]["base"] == pytest.approx(sum(bases) / len(bases))
    assert "mean wrapper" in format_table(result)


def test_evaluate_accepts_a_model_tuple_and_is_batch_size_invariant(built, pair):
    corpus = load_corpus(built[0])
    a = evaluate_pair((pair.old, pair.new, pair.tokenizer), corpus, inputs=range(1, 9), batch_size=3)
    b = evaluate_pair(pair, built[0], inputs=range(1, 9), batch_size=64)
    assert torch.equal(a["correct"]["new"], b["correct"]["new"]) and a["new"] == b["new"]
