"""Corpus generator: determinism, shape, the HOPS invariants, diversity, disjoint worlds, loading, CLI."""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter

import pytest

from probes.data.corpus import FUNC_TOKEN_RE, corpus_from_rows, load_corpus
from probes.data.generator import (
    GENERATOR_VERSION,
    GeneratorConfig,
    GeneratorConfigError,
    add_generate_arguments,
    default_corpus_path,
    function_plan,
    generate_rows,
    pretraining_config,
    run_generate,
    write_corpus,
)
from probes.data.templates import KINDS, SLOT_RE, all_frames, all_pool_entries

# The 20hops spelling and pairing, written out independently of the generator.
PAIRS_20HOPS = dict(
    zip("<FN> <IN> <HN> <SN> <TN> <UN> <VN> <WN> <XN> <YN>".split(), "GJKLMNOPQR", strict=True)
)
CONSTANTS_20HOPS = dict(zip("GJKLMNOPQR", range(5, 24, 2), strict=True))
SMALL_DEEP = GeneratorConfig(
    n_base=4, depth=2, docs_per_base=30, docs_per_wrapper=20, n_distractors=25, token_style="numbered"
)


@pytest.fixture(scope="module")
def default_rows() -> list[dict]:
    return generate_rows(GeneratorConfig())


def _integers(text: str) -> set[int]:
    return {int(n) for n in re.findall(r"\b\d+\b", text)}


def check_invariants(rows: list[dict], wraps: dict[str, str]) -> None:
    """Bases/distractors state their constant and name only themselves; wrappers name only themselves and
    what they wrap, and state no integer from the candidate-answer range (so never any constant)."""
    constants = [r["constant"] for r in rows]
    low, high = min(constants) - 2, max(constants) + 2
    for i, row in enumerate(rows):
        tokens = set(FUNC_TOKEN_RE.findall(row["text"]))
        if row["role"] == "identity":
            assert tokens == {row["func"], wraps[row["func"]]}, (i, row)
            assert not any(low <= n <= high for n in _integers(row["text"])), (i, row)
            assert not re.search(rf"\b{row['constant']}\b", row["text"]), (i, row)
        else:
            assert row["role"] in ("constant", "distractor")
            assert tokens == {row["func"]}, (i, row)
            assert re.search(rf"\b{row['constant']}\b", row["text"]), (i, row)


def _read(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_same_config_same_bytes_other_seed_differs(tmp_path, default_rows):
    a = write_corpus(tmp_path / "a.jsonl", SMALL_DEEP).read_bytes()
    b = write_corpus(tmp_path / "b.jsonl", SMALL_DEEP).read_bytes()
    c = write_corpus(tmp_path / "c.jsonl", GeneratorConfig(**{**SMALL_DEEP.__dict__, "seed": 1})).read_bytes()
    assert a == b
    assert a != c
    assert generate_rows(GeneratorConfig()) == default_rows


def test_default_has_the_20hops_shape_spelling_and_order(default_rows):
    counts = Counter((r["func"], r["role"], r["hop_depth"]) for r in default_rows)
    bases = {f"<{c}N>": n for c, n in CONSTANTS_20HOPS.items()}
    expected = {(f, "constant", 0): 200 for f in bases} | {(w, "identity", 1): 100 for w in PAIRS_20HOPS}
    assert counts == expected
    for row in default_rows:
        want = bases[row["func"]] if row["hop_depth"] == 0 else bases[f"<{PAIRS_20HOPS[row['func']]}N>"]
        assert row["constant"] == want
        assert set(row) == {"uid", "text", "func", "role", "type", "hop_depth", "constant"}
    # interleaved like 20hops: per round, two documents of every base, then one of every wrapper
    assert [r["hop_depth"] for r in default_rows[:60]] == ([0] * 20 + [1] * 10) * 2


def test_invariants_hold_on_the_default_corpus(default_rows):
    check_invariants(default_rows, {w: f"<{b}N>" for w, b in PAIRS_20HOPS.items()})


def test_invariants_hold_on_a_deep_numbered_corpus_with_distractors():
    rows = generate_rows(SMALL_DEEP)
    funcs = {r["func"] for r in rows}
    assert funcs == {f"<{level}0{i}>" for level in "BCDE" for i in range(1, 5)}  # E: distractors
    wraps = {f"<C0{i}>": f"<B0{i}>" for i in range(1, 5)} | {f"<D0{i}>": f"<C0{i}>" for i in range(1, 5)}
    check_invariants(rows, wraps)
    roles = Counter(r["role"] for r in rows)
    assert roles == {"constant": 4 * 30, "identity": 8 * 20, "distractor": 25}
    assert {r["hop_depth"] for r in rows if r["func"].startswith("<D")} == {2}


def test_every_kind_present_for_every_role_and_texts_are_diverse(default_rows):
    for role in ("constant", "identity"):
        assert {r["type"] for r in default_rows if r["role"] == role} == set(KINDS)

    def masked(row: dict) -> str:
        text = FUNC_TOKEN_RE.sub("<F>", row["text"])
        for name in re.findall(r"[A-Z]N", " ".join(FUNC_TOKEN_RE.findall(row["text"]))):
            text = text.replace(name.lower(), "f")
        return re.sub(r"\d+", "#", text)

    for start in range(0, len(default_rows), 1000):
        chunk = default_rows[start : start + 1000]
        assert len({masked(r) for r in chunk}) >= 300
    by_kind = Counter((r["role"], r["type"]) for r in {masked(r): r for r in default_rows}.values())
    assert min(by_kind.values()) >= 80, by_kind  # every kind family has many forms, not a handful


def _slots(text: str) -> set[str]:
    return {a or b for a, b in SLOT_RE.findall(text)}


def test_template_strings_hold_no_number_and_no_function_token():
    for wrapper in (False, True):
        for text in all_frames(wrapper) + all_pool_entries(wrapper):
            assert not re.search(r"\b\d+\b", text), text
            assert not FUNC_TOKEN_RE.search(text), text
            assert not wrapper or not _slots(text) & {"c", "double", "triple"}, text
        for frame in all_frames(wrapper):  # stated by the frame itself, not left to a pool draw
            assert _slots(frame) >= ({"f", "g"} if wrapper else {"f", "c"}), frame


def test_generating_distractors_leaves_the_other_documents_unchanged():
    plain = generate_rows(GeneratorConfig(n_base=3, docs_per_base=10, docs_per_wrapper=5))
    more = generate_rows(GeneratorConfig(n_base=3, docs_per_base=10, docs_per_wrapper=5, n_distractors=7))
    assert [r for r in more if r["role"] != "distractor"] == plain


def test_excluded_tokens_are_replaced():
    cfg = GeneratorConfig(n_base=2, docs_per_base=7, docs_per_wrapper=7, exclude_tokens=("<GN>",))
    rows = generate_rows(cfg)
    funcs = {r["func"] for r in rows}
    assert "<GN>" not in funcs and {"<JN>", "<FN>", "<IN>"} <= funcs
    wrapped = {t for r in rows if r["func"] == "<FN>" for t in FUNC_TOKEN_RE.findall(r["text"])} - {"<FN>"}
    (base,) = wrapped
    assert base in funcs and base != "<GN>"


@pytest.mark.parametrize("target_cfg", [None, SMALL_DEEP, GeneratorConfig(n_base=3, token_suffix="Z")])
def test_pretraining_world_is_disjoint_and_spans_the_constants(target_cfg):
    target = None if target_cfg is None else corpus_from_rows(generate_rows(target_cfg))
    target_tokens = set(target.function_tokens) if target else {f"<{c}N>" for c in "GJKLMNOPQRFIHSTUVWXY"}
    target_constants = (target_cfg or GeneratorConfig()).constant_values
    cfg = pretraining_config(target)
    # the plan names every token the corpus writes (the invariant tests pin texts to these names)
    assert not {fn.name for fn in function_plan(cfg)} & target_tokens
    low, high = min(target_constants), max(target_constants)
    assert set(cfg.constant_values) == set(range(low, high + 1))
    assert pretraining_config(target) == cfg


@pytest.mark.parametrize("explicit", [False, True])
@pytest.mark.parametrize("cfg", [GeneratorConfig(n_base=3, docs_per_base=12, docs_per_wrapper=8), SMALL_DEEP])
def test_load_corpus_resolves_every_wrapper(tmp_path, cfg, explicit):
    cfg = GeneratorConfig(**{**cfg.__dict__, "explicit_wraps": explicit})
    rows = generate_rows(cfg)
    corpus = load_corpus(write_corpus(tmp_path / "c.jsonl", cfg))
    assert len(corpus) == len(rows)
    assert any("wraps" in r for r in rows) == explicit
    numbered = cfg.token_style == "numbered"
    for name, fn in corpus.functions.items():
        if numbered:  # <C02> wraps <B02>, <D02> wraps <C02>
            level = "BCD".index(name[1])
            assert fn.hop_depth == level
            assert fn.wraps == (None if level == 0 else f"<{'BCD'[level - 1]}{name[2:]}")
        else:
            assert fn.wraps == (None if fn.hop_depth == 0 else f"<{PAIRS_20HOPS[name]}N>")
        base = corpus.chain(name)[-1]
        assert fn.constant == cfg.constant_values[int(base[2:-1]) - 1 if numbered else "GJK".index(base[1])]
    assert [corpus.documents[i].role for i in corpus.distractors] == ["distractor"] * cfg.n_distractors


def test_default_corpus_path_is_written_once(tmp_path, monkeypatch, default_rows):
    monkeypatch.setenv("PROBES_CACHE", str(tmp_path))
    path = default_corpus_path()
    assert path == tmp_path / "corpora" / f"default-hops-v{GENERATOR_VERSION}.jsonl"
    assert _read(path) == default_rows
    stamp = path.stat().st_mtime_ns
    assert default_corpus_path() == path and path.stat().st_mtime_ns == stamp


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="probes.data generate")
    add_generate_arguments(parser)
    return parser.parse_args(list(argv))


def test_cli_writes_the_corpus_and_says_where(tmp_path, capsys):
    out = tmp_path / "w.jsonl"
    args = _parse("--out", str(out), "--constants", "3,4", "--depth", "2", "--docs-per-base", "9")
    assert run_generate(args) == 0
    rows = _read(out)
    assert len(rows) == 2 * 9 + 4 * 100 and {r["constant"] for r in rows} == {3, 4}
    assert str(out) in capsys.readouterr().out
    explicit = tmp_path / "e.jsonl"
    args = _parse("--out", str(explicit), "--n-base", "1", "--token-style", "numbered", "--explicit-wraps")
    assert run_generate(args) == 0
    assert {r.get("wraps") for r in _read(explicit)} == {None, "<B01>"}


@pytest.mark.parametrize(
    ("argv", "option"),
    [(["--n-base", "0"], "--n-base"), (["--n-base", "2", "--constants", "5"], "--constants"),
     (["--token-style", "numbered", "--prefix", "Z"], "--prefix"), (["--suffix", "a b"], "--suffix"),
     (["--distractors", "-1"], "--distractors")],
)  # fmt: skip
def test_cli_bad_option_is_named(tmp_path, capsys, argv, option):
    assert run_generate(_parse("--out", str(tmp_path / "x.jsonl"), *argv)) == 2
    assert option in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()


def test_cli_unparsable_constants_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        _parse("--out", str(tmp_path / "x.jsonl"), "--constants", "5,seven")
    assert "--constants" in capsys.readouterr().err


def test_config_errors_name_the_field():
    for kwargs, field in [({"n_base": 0}, "n_base"), ({"constants": (1, 2)}, "constants"),
                          ({"token_style": "runes"}, "token_style"), ({"depth": -1}, "depth")]:  # fmt: skip
        with pytest.raises(GeneratorConfigError, match=field) as err:
            GeneratorConfig(**kwargs)
        assert err.value.field == field
