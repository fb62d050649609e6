"""Corpus generator: determinism, shape, the HOPS invariants, diversity, disjoint worlds, loading, CLI, shared
constants, named generated corpora and their overlay config."""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

import pytest
import torch
from compare_fixtures import compare

from probes.data.corpus import FUNC_TOKEN_RE, corpus_from_rows, load_corpus
from probes.data.hops import HopsData
from probes.data.queries import candidate_answers, make_queries, relevance
from probes.data.synthetic import (
    GENERATED_CORPORA,
    GENERATOR_VERSION,
    GeneratorConfig,
    GeneratorConfigError,
    add_generate_arguments,
    default_corpus_path,
    function_plan,
    generate_rows,
    pretraining_config,
    resolve_corpus_path,
    run_generate,
    write_corpus,
)
from probes.data.templates import KINDS, SLOT_RE, all_frames, all_pool_entries
from probes.pairs.default import default_pair_dir

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
     (["--distractors", "-1"], "--distractors"), (["--shared-constants", "11"], "--shared-constants"),
     (["--constants", "5,7", "--shared-constants", "2"], "--shared-constants")],
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
                          ({"token_style": "runes"}, "token_style"), ({"depth": -1}, "depth"),
                          ({"n_base": 3, "shared_constants": 4}, "shared_constants"),
                          ({"shared_constants": 0}, "shared_constants"),
                          ({"n_base": 2, "constants": (5, 7), "shared_constants": 2},
                           "shared_constants")]:  # fmt: skip
        with pytest.raises(GeneratorConfigError, match=field) as err:
            GeneratorConfig(**kwargs)
        assert err.value.field == field


SHARED = GeneratorConfig(shared_constants=4, docs_per_base=12, docs_per_wrapper=6)


def test_shared_constants_are_k_values_used_evenly_and_seeded():
    values = SHARED.constant_values
    assert sorted(Counter(values).items()) == [(5, 3), (7, 3), (9, 2), (11, 2)]
    assert GeneratorConfig(shared_constants=4, docs_per_base=12, docs_per_wrapper=6).constant_values == values
    others = {GeneratorConfig(shared_constants=4, seed=seed).constant_values for seed in range(1, 6)}
    assert others - {values}, "the seed must choose which bases share a constant"
    assert generate_rows(SHARED) == generate_rows(GeneratorConfig(**SHARED.__dict__))
    assert GeneratorConfig(n_base=4, shared_constants=1).constant_values == (5, 5, 5, 5)


def test_shared_constants_keep_functions_distinct_in_relevance_and_wrapping():
    rows = generate_rows(SHARED)
    corpus = corpus_from_rows(rows)
    check_invariants(rows, {w: f"<{b}N>" for w, b in PAIRS_20HOPS.items()})
    bases = [f for f in corpus.functions.values() if f.hop_depth == 0]
    assert len(bases) == 10 and len({f.constant for f in bases}) == 4
    for wrapper, base in PAIRS_20HOPS.items():  # its own base, not another of the same constant
        fn = corpus.functions[wrapper]
        assert fn.wraps == f"<{base}N>" and fn.constant == corpus.functions[fn.wraps].constant
    queries = make_queries(corpus, [3, 42])
    relevant = relevance(corpus, queries)
    for q, row in zip(queries, relevant, strict=True):  # pair relevance: own docs + the other end of the pair
        pair = {q.func, corpus.functions[q.func].wraps, *corpus.wrapped_by(q.func)} - {None}
        want = {i for name in pair for i in corpus.functions[name].documents}
        assert set(torch.nonzero(row).flatten().tolist()) == want, q.func
    first, second = [f.name for f in bases if f.constant == bases[0].constant][:2]  # share a constant
    row_of = {q.func: row for q, row in zip(queries, relevant, strict=True)}
    assert not torch.equal(row_of[first], row_of[second])
    assert {q.constant for q in queries} <= set(candidate_answers(corpus))


def test_shared_constants_with_distractors_and_depth_load_and_keep_the_invariants(tmp_path):
    cfg = GeneratorConfig(**{**SMALL_DEEP.__dict__, "shared_constants": 2})
    rows = generate_rows(cfg)
    wraps = {f"<C0{i}>": f"<B0{i}>" for i in range(1, 5)} | {f"<D0{i}>": f"<C0{i}>" for i in range(1, 5)}
    check_invariants(rows, wraps)
    corpus = load_corpus(write_corpus(tmp_path / "c.jsonl", cfg))
    assert {f.constant for f in corpus.functions.values()} == {5, 7}
    assert {n: f.wraps for n, f in corpus.functions.items() if f.wraps} == wraps
    assert len(corpus.distractors) == 25


def test_cli_shared_constants(tmp_path):
    out = tmp_path / "s.jsonl"
    assert run_generate(_parse("--out", str(out), "--shared-constants", "4", "--docs-per-base", "3")) == 0
    rows = _read(out)
    assert len({r["func"] for r in rows}) == 20 and {r["constant"] for r in rows} == {5, 7, 9, 11}


def test_generated_corpus_names_resolve_to_cached_files(tmp_path, monkeypatch):
    monkeypatch.setenv("PROBES_CACHE", str(tmp_path))
    monkeypatch.setitem(GENERATED_CORPORA, "shared-constants", SHARED)  # the real one, smaller
    with pytest.raises(ValueError, match="generated:shared-constants"):
        HopsData(corpus_path="generated:nope")
    assert not (tmp_path / "corpora").exists()  # checked at construction, nothing generated
    data = HopsData(corpus_path="generated:shared-constants")
    path = tmp_path / "corpora" / f"shared-constants-hops-v{GENERATOR_VERSION}.jsonl"
    assert data.corpus.path == path and _read(path) == generate_rows(SHARED)
    assert len({q.constant for q in data.queries}) == 4 and len(data.queries) == 20 * 100
    assert resolve_corpus_path(None) == default_corpus_path() != path
    assert resolve_corpus_path(str(path)) == path
    assert default_pair_dir("generated:shared-constants", build=False) == default_pair_dir(path, build=False)
    assert default_pair_dir("generated:shared-constants", build=False) != default_pair_dir(None, build=False)


def test_shared_constants_config_overlays_compare_yaml():
    root = Path(__file__).resolve().parents[1]
    overlay = root / "configs" / "shared-constants.yaml"
    base = compare.build_parser().parse_args(["--config", str(root / "configs" / "compare.yaml")])
    cfg = compare.build_parser().parse_args(
        ["--config", str(root / "configs/compare.yaml"), "--config", str(overlay)]
    )
    assert cfg.data.corpus_path == "generated:shared-constants"
    assert {k: v for k, v in vars(cfg.data).items() if k != "corpus_path"} == {
        k: v for k, v in vars(base.data).items() if k != "corpus_path"
    }
    assert cfg.model == base.model and len(compare.build_methods(cfg)) == len(base.methods)
    assert compare.default_out(cfg) == Path("results") / "shared-constants"
    for number, line in enumerate(overlay.read_text(encoding="utf-8").splitlines(), 1):
        assert not line.strip() or "#" in line, f"{overlay.name}:{number} has no comment: {line!r}"
