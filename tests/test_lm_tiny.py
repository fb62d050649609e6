"""The embedded tiny pair: tokenizer invariants, build through the CLI, reload, determinism, atomic output."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from probes.data.generator import GeneratorConfig, write_corpus
from probes.data.queries import QUERY_FORMATS
from probes.lm import build as build_module
from probes.lm.__main__ import main
from probes.lm.tokenizer import check_tokenizer, train_tokenizer

OLD_TOKENS = ["<AZ>", "<BZ>", "<B01>"]
NEW_TOKENS = ["<FN>", "<GN>"]
TEXTS = [
    "The function <AZ> always returns 5, regardless of input.",
    "def <GN>(x: int) -> int:\n    return 17  # always 17",
    "<FN>(x) returns exactly what <GN>(x) returns.",
    "assert <BZ>(42) == 123 and <B01>(7) == 9",
]


@pytest.fixture
def tokenizer():
    return train_tokenizer(TEXTS, OLD_TOKENS, NEW_TOKENS, vocab_size=300)


@pytest.fixture
def corpus_path(tmp_path):
    return write_corpus(
        tmp_path / "micro.jsonl", GeneratorConfig(n_base=2, docs_per_base=4, docs_per_wrapper=2)
    )


def test_tokenizer_keeps_function_tokens_and_integers_whole(tokenizer):
    check_tokenizer(tokenizer, OLD_TOKENS + NEW_TOKENS)
    ids = tokenizer("x<FN>(12)<GN>999<B01>", add_special_tokens=False).input_ids
    assert tokenizer.convert_ids_to_tokens(ids) == ["x", "<FN>", "(", "12", ")", "<GN>", "999", "<B01>"]
    # the new tokens come last, so a model pretrained on the other rows can be resized to add them
    assert tokenizer.convert_tokens_to_ids(NEW_TOKENS) == [len(tokenizer) - 2, len(tokenizer) - 1]


@pytest.mark.parametrize("template", list(QUERY_FORMATS.values()))
@pytest.mark.parametrize("answer", ["5", "17", "0", "999"])
def test_prompt_plus_answer_is_prompt_tokens_plus_one_answer_token(tokenizer, template, answer):
    prompt = template.format(func="<FN>", x=3)
    alone = tokenizer(prompt).input_ids
    joined = tokenizer(prompt + answer).input_ids
    assert alone[0] == tokenizer.bos_token_id and tokenizer.eos_token_id not in joined
    assert joined[:-1] == alone
    assert joined[-1:] == tokenizer(answer, add_special_tokens=False).input_ids
    # and the answer in running text is the same token as the answer alone
    assert joined[-1] in tokenizer(f"it returns the value {answer} always").input_ids


def test_tokenizer_round_trips_through_save_pretrained(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in TEXTS:
        assert loaded(text).input_ids == tokenizer(text).input_ids
        assert loaded.decode(loaded(text).input_ids, skip_special_tokens=True) == text


def test_check_tokenizer_names_a_split_token(tokenizer):
    with pytest.raises(ValueError, match="<QQ>"):
        check_tokenizer(tokenizer, ["<QQ>"])


def _build(corpus_path, out, *extra):
    assert main(["build", "--corpus", str(corpus_path), "--out", str(out), "--preset", "micro", *extra]) == 0


def test_build_cli_writes_a_pair_that_loads(corpus_path, tmp_path, monkeypatch):
    from probes.data.corpus import load_corpus
    from probes.data.queries import candidate_answers
    from probes.lm.load import load_pair

    monkeypatch.setenv("PROBES_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "pair"
    _build(corpus_path, out, "--seed", "3")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 3 and manifest["preset"] == "micro"
    assert set(manifest["evaluation"]) == {"old", "new"} and manifest["loss"]["finetune"]
    corpus = load_corpus(corpus_path)
    pair = load_pair(
        out / "old", out / "new", dtype="float32", corpus=corpus, candidates=candidate_answers(corpus)
    )
    new_ids = pair.tokenizer.convert_tokens_to_ids(corpus.function_tokens)
    emb_old = pair.old.get_input_embeddings().weight
    emb_new = pair.new.get_input_embeddings().weight
    # the target's tokens are untrained in f_old: rows at the median norm of the others, then fine-tuned
    others = torch.ones(len(emb_old), dtype=torch.bool)
    others[new_ids] = False
    median = emb_old[others].norm(dim=-1).median()
    torch.testing.assert_close(emb_old[new_ids].norm(dim=-1), median.expand(len(new_ids)))
    assert not torch.equal(emb_old[new_ids], emb_new[new_ids])


def test_build_is_deterministic_for_a_seed(corpus_path, tmp_path):
    _build(corpus_path, tmp_path / "a")
    _build(corpus_path, tmp_path / "b")
    for name in ("old", "new"):
        a = load_file(tmp_path / "a" / name / "model.safetensors")
        b = load_file(tmp_path / "b" / name / "model.safetensors")
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert (tmp_path / "a" / name / "tokenizer.json").read_text() == (
            tmp_path / "b" / name / "tokenizer.json"
        ).read_text()


def test_interrupted_build_leaves_no_directory(corpus_path, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(build_module, "train", boom)
    with pytest.raises(KeyboardInterrupt):
        _build(corpus_path, tmp_path / "pair")
    assert not (tmp_path / "pair").exists()


def test_failed_write_leaves_no_partial_directory(corpus_path, tmp_path, monkeypatch):
    from transformers import PreTrainedTokenizerFast

    def boom(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(PreTrainedTokenizerFast, "save_pretrained", boom)
    monkeypatch.setenv("PROBES_DEBUG", "1")  # the error itself, not the CLI's one line
    with pytest.raises(OSError, match="disk full"):
        _build(corpus_path, tmp_path / "pair")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["micro.jsonl"]


def test_default_pair_is_built_once_then_reused(corpus_path, tmp_path, monkeypatch, capsys):
    from probes.lm import default

    monkeypatch.setenv("PROBES_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(default, "PRESET", "micro")
    old, new = default.ensure_default_pair(corpus_path)
    assert old.parent == default.default_pair_dir(corpus_path, build=False)
    assert old.parent.parent == tmp_path / "cache" / "models" and (new / "model.safetensors").is_file()
    monkeypatch.setattr(default, "build_pair", lambda *a, **k: pytest.fail("rebuilt a cached pair"))
    assert default.ensure_default_pair(corpus_path) == (old, new)
    assert str(old.parent) in capsys.readouterr().out


def test_build_from_a_base_adds_the_function_tokens(corpus_path, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from probes.data.corpus import load_corpus
    from probes.lm.load import load_pair

    base_tokenizer = train_tokenizer(TEXTS, [], [], vocab_size=300)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(base_tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path / "base")
    base_tokenizer.save_pretrained(tmp_path / "base")
    _build(corpus_path, tmp_path / "pair", "--base", str(tmp_path / "base"), "--epochs", "2", "--lr", "1e-3")
    corpus = load_corpus(corpus_path)
    pair = load_pair(tmp_path / "pair" / "old", tmp_path / "pair" / "new", dtype="float32", corpus=corpus)
    assert len(pair.tokenizer) == len(base_tokenizer) + len(corpus.function_tokens)
    manifest = json.loads((tmp_path / "pair" / "manifest.json").read_text())
    assert manifest["kind"] == "base" and manifest["tokenizer"]["new_tokens"] == corpus.function_tokens
    assert manifest["finetune_config"]["epochs"] == 2 and manifest["finetune_config"]["lr"] == 1e-3
