"""Loading a micro pair through the real from_pretrained path; each pair check fails naming its token."""

from __future__ import annotations

import re

import pytest
import torch
from lm_fixtures import CANDIDATES, FUNCTION_TOKENS, make_micro_model, make_micro_pair, micro_rows

from probes.data.corpus import corpus_from_rows
from probes.lm.load import PairMismatchError, check_pair, load_model, load_pair
from probes.lm.scoring import TokenizationError, answer_token_ids, candidate_logits, tokenize


@pytest.fixture
def corpus():
    return corpus_from_rows(micro_rows())


@pytest.fixture
def pair_dirs(tmp_path):
    return make_micro_pair(tmp_path)


def test_load_pair_frozen_and_checked(pair_dirs, corpus):
    pair = load_pair(*pair_dirs, dtype="float64", corpus=corpus, candidates=CANDIDATES)
    for model in (pair.old, pair.new):
        assert not model.training
        assert not any(p.requires_grad for p in model.parameters())
        assert next(model.parameters()).dtype == torch.float64
    assert not torch.equal(pair.old.lm_head.weight, pair.new.lm_head.weight)
    assert pair.new_path == str(pair_dirs[1]) and pair.model("old") is pair.old
    assert any(pair_dirs[0].glob("*.safetensors"))


def test_load_model_options(pair_dirs):
    model = load_model(pair_dirs[0], dtype="bf16", attn_implementation="eager")
    assert next(model.parameters()).dtype == torch.bfloat16
    assert model.config._attn_implementation == "eager"
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        load_model(pair_dirs[0], dtype="float8")


def test_missing_local_path_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_model(tmp_path / "nowhere")


@pytest.mark.parametrize("damage", ["truncated", "grown"])
def test_truncated_weights_of_a_given_path_named_no_file(pair_dirs, damage):
    """A user's model is never rebuilt: damaged weights are an error that names the file."""
    weights = pair_dirs[1] / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else data + bytes(64))
    with pytest.raises(OSError, match=f"damaged weights: {re.escape(str(weights))}"):
        load_pair(*pair_dirs)


def test_tokenizer_mismatch(tmp_path, corpus):
    dirs = make_micro_pair(tmp_path, new_tokenizer_tokens=("<FN>", "<GN>", "<KN>", "<JN>"))
    with pytest.raises(PairMismatchError, match="tokenizer vocabulary") as error:
        load_pair(*dirs, corpus=corpus)
    assert error.value.token in {"<HN>", "<KN>"}


def test_multi_token_answer_named(pair_dirs, corpus):
    with pytest.raises(PairMismatchError, match="candidate answers.*'-1'") as error:
        load_pair(*pair_dirs, corpus=corpus, candidates=[-1, *CANDIDATES])
    assert error.value.token == "-1"


def test_split_function_token_named(tmp_path, corpus):
    # both tokenizers lack <HN>: it is split into '<', unknown, '>'
    dirs = make_micro_pair(tmp_path, function_tokens=("<FN>", "<GN>", "<JN>"))
    with pytest.raises(PairMismatchError, match="function tokens.*<HN>") as error:
        load_pair(*dirs, corpus=corpus)
    assert error.value.check == "function tokens" and error.value.token == "<HN>"


def test_architecture_mismatch(pair_dirs, corpus):
    pair = load_pair(*pair_dirs)
    pair.new = make_micro_model(pair.old.config.vocab_size, num_hidden_layers=3)
    with pytest.raises(PairMismatchError, match="num_hidden_layers"):
        check_pair(pair, corpus, CANDIDATES)


def test_answer_token_ids_rejects_unknown_and_split(pair_dirs):
    pair = load_pair(*pair_dirs)
    assert answer_token_ids(pair.tokenizer, [5, "9"]).tolist() == [
        pair.tokenizer.convert_tokens_to_ids("5"),
        pair.tokenizer.convert_tokens_to_ids("9"),
    ]
    with pytest.raises(TokenizationError, match="unknown token"):
        answer_token_ids(pair.tokenizer, [1000])
    assert FUNCTION_TOKENS[0] in pair.tokenizer.get_vocab()


def test_candidate_logits_match_a_plain_forward(pair_dirs):
    pair = load_pair(*pair_dirs, dtype="float64")
    prompts = ["<FN>(3) returns the value ", "The output of <JN>(12) is ", "<GN>(7) returns the value "]
    ids = answer_token_ids(pair.tokenizer, CANDIDATES)
    got = candidate_logits(pair.new, pair.tokenizer, prompts, ids, batch_size=2)
    for i, prompt in enumerate(prompts):
        input_ids = torch.tensor([tokenize(pair.tokenizer, [prompt], as_prompt=True)[0].ids])
        logits = pair.new(input_ids=input_ids).logits[0, -1, ids]
        torch.testing.assert_close(got[i], logits.float())


def test_tokenize_equals_the_tokenizers_own_call(pair_dirs):
    """`tokenize` reads ids from the Rust backend directly; they must be the tokenizer's own, specials around;
    with truncation set on the backend it goes through the tokenizer's call instead."""
    tokenizer = load_pair(*pair_dirs).tokenizer
    texts = [row["text"] for row in micro_rows()] + ["<FN>(3) returns the value 7", " spaced  out\n", "x"]
    want = tokenizer(texts)["input_ids"]
    assert [item.ids for item in tokenize(tokenizer, texts)] == want
    tokenizer.backend_tokenizer.enable_truncation(max_length=2)
    assert [item.ids for item in tokenize(tokenizer, texts)] == want  # the call turns truncation off again
