"""Corpus model: every HOPS variant loads, every defect is refused with file, line and field named."""

from __future__ import annotations

import json
import re

import pytest
from conftest import REFERENCE_HOPS, chain_rows, hops_row

from probes.data.corpus import CorpusError, corpus_from_rows, load_corpus


def test_reference_20hops_relations():
    if not REFERENCE_HOPS.exists():
        pytest.skip("reference corpus not present")
    corpus = load_corpus(REFERENCE_HOPS)
    assert len(corpus) == 3000 and corpus.distractors == ()
    assert [d.index for d in corpus.documents] == list(range(3000))
    assert corpus.documents[0].line == 1 and corpus.documents[-1].line == 3000
    wraps = {f.name: f.wraps for f in corpus.functions.values() if f.is_wrapper}
    assert wraps == {
        "<FN>": "<GN>", "<IN>": "<JN>", "<HN>": "<KN>", "<SN>": "<LN>", "<TN>": "<MN>",
        "<UN>": "<NN>", "<VN>": "<ON>", "<WN>": "<PN>", "<XN>": "<QN>", "<YN>": "<RN>",
    }  # fmt: skip
    bases = {f.name: f.constant for f in corpus.functions.values() if f.is_base}
    names = ["<GN>", "<JN>", "<KN>", "<LN>", "<MN>", "<NN>", "<ON>", "<PN>", "<QN>", "<RN>"]
    assert bases == dict(zip(names, range(5, 24, 2), strict=True))
    assert all(corpus.functions[w].constant == corpus.functions[b].constant for w, b in wraps.items())
    assert {len(f.documents) for f in corpus.functions.values() if f.is_base} == {200}
    assert {len(f.documents) for f in corpus.functions.values() if f.is_wrapper} == {100}
    assert list(corpus.functions)[:2] == ["<GN>", "<JN>"] and list(corpus.functions)[10] == "<FN>"


def test_depth2_chain_with_distractors_inferred(chain_corpus_path):
    corpus = load_corpus(chain_corpus_path)
    fs = corpus.functions
    assert list(fs) == ["<B1>", "<B2>", "<C1>", "<C2>", "<D1>"]  # sorted by (hop_depth, name), no distractors
    assert fs["<D1>"].wraps == "<C1>" and fs["<C1>"].wraps == "<B1>" and fs["<B1>"].is_base
    assert fs["<D1>"].constant == 3 and fs["<D1>"].hop_depth == 2 and fs["<D1>"].documents == (7, 8)
    assert corpus.chain("<D1>") == ["<D1>", "<C1>", "<B1>"] and corpus.wrapped_by("<C1>") == ["<D1>"]
    assert corpus.distractors == (9, 10) and corpus.documents[9].constant is None
    assert corpus.function_tokens == ["<B1>", "<B2>", "<C1>", "<C2>", "<D1>", "<Z1>", "<Z2>"]
    assert corpus.texts[4] == "<C1>(x) returns <B1>(x)." and corpus.path == chain_corpus_path


def test_explicit_wraps_base_func_numbered_tokens_and_defaults():
    rows = [
        hops_row("<B01>", 7, uid="same"),
        hops_row("<B02>", 9, uid="same", base_func="<B02>"),  # a base naming itself is fine
        # explicit fields win over the mentions: <C01>'s text mentions both bases
        hops_row("<C01>", 7, role="identity", depth=1, text="<C01> not <B02> but <B01>", wraps="<B01>"),
        hops_row("<C02>", 9, role="identity", depth=1, text="<C02> vs <B01>", base_func="<B02>"),
        # base_func may name the chain's base instead of the direct target
        hops_row("<D01>", 7, role="identity", depth=2, text="<D01> calls <C01>", base_func="<B01>"),
        {k: v for k, v in hops_row("<B03>", 1).items() if k != "type"},
    ]
    corpus = corpus_from_rows(rows)
    assert [corpus.functions[f].wraps for f in ("<C01>", "<C02>", "<D01>")] == ["<B01>", "<B02>", "<C01>"]
    assert corpus.documents[0].uid == corpus.documents[1].uid == "same"
    assert corpus.documents[5].type == "unknown" and corpus.path is None


def test_blank_lines_keep_source_line_numbers(write_jsonl):
    path = write_jsonl(["", json.dumps(hops_row("<B1>", 3)), "   ", json.dumps(hops_row("<B1>", 3))])
    corpus = load_corpus(path)
    assert [(d.index, d.line) for d in corpus.documents] == [(0, 2), (1, 4)]


def _error(rows_or_lines, write_jsonl, **kw) -> str:
    path = write_jsonl(rows_or_lines)
    with pytest.raises(CorpusError) as info:
        load_corpus(path, **kw)
    assert str(path) in str(info.value)
    return str(info.value)


def _without(row: dict, key: str) -> dict:
    return {k: v for k, v in row.items() if k != key}


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ("{not json", "(row)"),
        ("[1, 2]", "(row)"),
        (_without(hops_row("<B1>", 3), "text"), "text"),
        (_without(hops_row("<B1>", 3), "constant"), "constant"),
        (hops_row("<B1>", 3) | {"uid": None}, "uid"),
        (hops_row("<B1>", None), "constant"),
        (hops_row("<B1>", 3) | {"hop_depth": "0"}, "hop_depth"),
        (hops_row("<B1>", 3) | {"hop_depth": -1}, "hop_depth"),
        (hops_row("<B1>", "3"), "constant"),
        (hops_row("<B1>", True), "constant"),
        (hops_row("B1", 3), "func"),
        (hops_row("<B1>", 3) | {"role": ""}, "role"),
        (hops_row("<B1>", 3) | {"type": 4}, "type"),
        (hops_row("<C1>", 3, depth=1, wraps="B1"), "wraps"),
    ],
)
def test_row_errors_name_line_and_field(bad, field, write_jsonl):
    line = bad if isinstance(bad, str) else json.dumps(bad)
    msg = _error([json.dumps(hops_row("<B1>", 3)), line], write_jsonl)
    assert f":2: field '{field}'" in msg


def _function_error(rows, write_jsonl) -> str:
    return _error([json.dumps(r) for r in rows], write_jsonl)


def test_wrapper_target_missing_or_unknown(write_jsonl):
    base = hops_row("<B1>", 3)
    wrapper = hops_row("<C1>", 3, role="identity", depth=1, text="<C1> calls <Q9>")
    msg = _function_error([base, wrapper], write_jsonl)
    assert ":2: field 'wraps'" in msg and "mention no known function" in msg
    msg = _function_error([base, hops_row("<C1>", 3, role="identity", depth=1, wraps="<Q9>")], write_jsonl)
    assert ":2: field 'wraps'" in msg and "<Q9>, which has no (non-distractor) documents" in msg


def test_wrapper_target_ambiguous_lists_candidates_and_lines(write_jsonl):
    rows = [hops_row("<B1>", 3), hops_row("<B2>", 3)]
    rows += [hops_row("<C1>", 3, role="identity", depth=1, text=f"<C1> calls {b}") for b in ("<B1>", "<B2>")]
    msg = _function_error(rows, write_jsonl)
    assert ":3: field 'wraps'" in msg and "ambiguous" in msg
    assert "<B1> at line 3" in msg and "<B2> at line 4" in msg


def test_two_constants(write_jsonl):
    msg = _function_error([hops_row("<B1>", 3), hops_row("<B2>", 4), hops_row("<B1>", 5)], write_jsonl)
    assert ":1: field 'constant'" in msg and "<B1> has two constants" in msg and "5 at line 3" in msg
    wrapper = hops_row("<C1>", 4, role="identity", depth=1, text="<C1> calls <B1>")
    msg = _function_error([hops_row("<B1>", 3), wrapper], write_jsonl)
    assert ":2: field 'constant'" in msg and "base <B1> returns 3" in msg


def test_disagreeing_explicit_fields_name_the_rows(write_jsonl):
    rows = [hops_row("<B1>", 3), hops_row("<B2>", 3)]
    rows += [hops_row("<C1>", 3, role="identity", depth=1, wraps=b) for b in ("<B1>", "<B1>", "<B2>")]
    msg = _function_error(rows, write_jsonl)
    assert ":3: field 'wraps'" in msg and "'<B1>' at lines 3, 4" in msg and "'<B2>' at line 5" in msg
    msg = _function_error([hops_row("<B1>", 3), hops_row("<B1>", 3, depth=1)], write_jsonl)
    assert ":1: field 'hop_depth'" in msg


def test_cycle_and_depth_mismatch(write_jsonl):
    rows = [
        hops_row("<B1>", 3),
        hops_row("<C1>", 3, role="identity", depth=1, wraps="<C2>"),
        hops_row("<C2>", 3, role="identity", depth=1, wraps="<C1>"),
    ]
    msg = _function_error(rows, write_jsonl)
    assert "field 'wraps'" in msg and re.search(r"cycle: <C(\d)> -> <C\d> -> <C\1>", msg)
    rows = [hops_row("<B1>", 3), hops_row("<C1>", 3, role="identity", depth=2, wraps="<B1>")]
    assert ":2: field 'hop_depth'" in _function_error(rows, write_jsonl)
    rows = [hops_row("<B1>", 3), hops_row("<B2>", 3, wraps="<B1>")]
    assert ":2: field 'wraps'" in _function_error(rows, write_jsonl)


def test_skip_invalid_warns_once_with_lines(write_jsonl):
    rows = chain_rows()
    lines = [json.dumps(r) for r in rows[:3]] + ["{oops", json.dumps(hops_row("<B9>", None))]
    lines += [json.dumps(r) for r in rows[3:]]
    path = write_jsonl(lines)
    with pytest.warns(UserWarning) as record:
        corpus = load_corpus(path, skip_invalid=True)
    assert len(record) == 1 and "2 invalid row(s) at lines 4, 5" in str(record[0].message)
    assert str(path) in str(record[0].message)
    assert len(corpus) == len(rows) and corpus.documents[3].line == 6 and corpus.documents[3].index == 3


def test_skip_invalid_still_raises_function_errors(write_jsonl):
    lines = [json.dumps(hops_row("<B1>", 3)), json.dumps(hops_row("<B1>", 4)), "{oops"]
    path = write_jsonl(lines)
    with pytest.warns(UserWarning), pytest.raises(CorpusError, match="two constants"):
        load_corpus(path, skip_invalid=True)


def test_missing_file_and_empty_corpus(tmp_path, write_jsonl):
    with pytest.raises(CorpusError, match="cannot read"):
        load_corpus(tmp_path / "nope.jsonl")
    msg = _error([json.dumps(hops_row("<Z1>", None, role="distractor"))], write_jsonl)
    assert "no non-distractor documents" in msg


def test_raw_line_separators_and_bad_utf8(write_jsonl):
    text = "<B1> returns 3.\u2028Really\u0085."
    good = json.dumps(hops_row("<B1>", 3, text=text), ensure_ascii=False)
    path = write_jsonl([good, good])
    corpus = load_corpus(path)
    assert corpus.texts[0] == text and corpus.documents[1].line == 2
    path.write_bytes(good.encode() + b"\n\xff\xfe\n" + good.encode() + b"\r\n")
    with pytest.raises(CorpusError, match=r":2: field '\(row\)': not UTF-8"):
        load_corpus(path)
    with pytest.warns(UserWarning, match="line 2"):
        assert [d.line for d in load_corpus(path, skip_invalid=True).documents] == [1, 3]
