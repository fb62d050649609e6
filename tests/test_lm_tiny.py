"""The embedded tiny pair: tokenizer invariants, build through the CLI, reload, determinism, atomic output."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file

from probes.data.queries import QUERY_FORMATS
from probes.outputs import MARKER
from probes.pairs import build as build_module
from probes.pairs.__main__ import main
from probes.pairs.tokenizer import check_tokenizer, train_tokenizer

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


def _listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.parent == folder)


def test_build_into_the_folder_of_its_corpus_is_refused_before_training(
    corpus_path, tmp_path, monkeypatch, capsys
):
    # regression: build --out DIR replaced DIR, deleting the corpus it had just read from DIR
    folder = tmp_path / "work"
    folder.mkdir()
    corpus = folder / "corpus.jsonl"
    corpus.write_bytes(corpus_path.read_bytes())
    (folder / "notes.txt").write_text("mine")
    monkeypatch.setattr(build_module, "train", lambda *a, **k: pytest.fail("trained before refusing"))
    code = main(["build", "--corpus", str(corpus), "--out", str(folder), "--preset", "micro"])
    err = capsys.readouterr().err
    assert code == 2 and str(folder) in err and "--overwrite" in err and "corpus.jsonl" in err
    assert _listing(folder) == ["corpus.jsonl", "notes.txt"]
    assert corpus.read_bytes() == corpus_path.read_bytes()


def test_build_with_overwrite_writes_beside_the_other_files(corpus_path, tmp_path):
    folder = tmp_path / "work"
    folder.mkdir()
    corpus = folder / "corpus.jsonl"
    corpus.write_bytes(corpus_path.read_bytes())
    (folder / "notes.txt").write_text("mine")
    _build(corpus, folder, "--overwrite")
    _build(corpus, folder, "--overwrite")  # again: its own old/, new/ and manifest.json are replaced
    assert _listing(folder) == ["corpus.jsonl", "manifest.json", "new", "notes.txt", "old", MARKER]
    assert corpus.read_bytes() == corpus_path.read_bytes() and (folder / "notes.txt").read_text() == "mine"
    assert json.loads((folder / "manifest.json").read_text())["corpus"]["path"] == str(corpus)


def test_build_reruns_into_its_own_folder_but_never_replaces_its_input(corpus_path, tmp_path, capsys):
    out = tmp_path / "pair"
    _build(corpus_path, out)
    _build(corpus_path, out)  # its own earlier output: replaced without --overwrite
    assert _listing(out) == ["manifest.json", "new", "old", MARKER]
    (out / "old" / "corpus.jsonl").write_bytes(corpus_path.read_bytes())
    argv = ["build", "--corpus", str(out / "old" / "corpus.jsonl"), "--out", str(out), "--overwrite"]
    assert main(argv) == 2 and "is an input" in capsys.readouterr().err
    assert (out / "old" / "corpus.jsonl").is_file()
    assert main(["build", "--corpus", str(corpus_path), "--out", str(out)]) == 2  # a file it did not write
    assert "old/corpus.jsonl, which python -m probes.pairs build did not write" in capsys.readouterr().err
    (out / "old" / "corpus.jsonl").unlink()
    (out / MARKER).unlink()  # a folder with old/, new/ and a manifest but no marker is not its own
    assert main(["build", "--corpus", str(corpus_path), "--out", str(out)]) == 2
    assert f"manifest.json, new, old; no {MARKER} of it" in capsys.readouterr().err


def test_default_pair_is_built_once_then_reused(corpus_path, tmp_path, monkeypatch, capsys):
    from probes.pairs import default

    monkeypatch.setenv("PROBES_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(default, "PRESET", "micro")
    old, new = default.ensure_default_pair(corpus_path)
    assert old.parent == default.default_pair_dir(corpus_path, build=False)
    assert old.parent.parent == tmp_path / "cache" / "models" and (new / "model.safetensors").is_file()
    monkeypatch.setattr(default, "build_pair", lambda *a, **k: pytest.fail("rebuilt a cached pair"))
    assert default.ensure_default_pair(corpus_path) == (old, new)
    assert str(old.parent) in capsys.readouterr().out


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _zero_a_third(path):
    data = bytearray(path.read_bytes())
    third = len(data) // 3
    data[third : 2 * third] = bytes(third)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage", [_truncate, _zero_a_third, lambda path: path.unlink()], ids=["truncated", "zeroed", "missing"]
)
@pytest.mark.parametrize("recorded", [True, False], ids=["checksums", "cached-before-checksums"])
def test_cached_pair_with_a_truncated_weight_file_was_never_rebuilt(
    corpus_path, tmp_path, monkeypatch, damage, recorded
):
    from probes.lm.load import load_pair
    from probes.pairs import default

    monkeypatch.setenv("PROBES_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(default, "PRESET", "micro")
    old, new = default.ensure_default_pair(corpus_path)
    manifest_path = old.parent / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert set(manifest["files"]) >= {"old/model.safetensors", "new/model.safetensors", "new/tokenizer.json"}
    if not recorded:  # a pair cached by an older probes: checked by its headers, then given checksums
        manifest_path.write_text(json.dumps({k: v for k, v in manifest.items() if k != "files"}))
        with monkeypatch.context() as patch:
            patch.setattr(default, "build_pair", lambda *a, **k: pytest.fail("rebuilt an intact pair"))
            default.ensure_default_pair(corpus_path)
        assert json.loads(manifest_path.read_text())["files"] == manifest["files"]
    weights = new / "model.safetensors"
    clean = weights.read_bytes()
    damage(weights)
    with pytest.warns(UserWarning, match=f"{re.escape(str(weights))}.*rebuilding"):
        assert default.ensure_default_pair(corpus_path) == (old, new)
    assert weights.read_bytes() == clean  # rebuilt, deterministically
    load_pair(old, new)


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
