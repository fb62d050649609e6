"""Generate HOPS corpora offline from a seed: constant bases, wrapper chains, distractors, any spelling."""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from probes.data.synthetic_plan import (
    TOKEN_STYLES,
    FunctionPlan,
    GeneratorConfig,
    GeneratorConfigError,
    function_plan,
)
from probes.data.templates import bare_name, input_pool, kind_sequence, render_document
from probes.files import atomic_path, cache_dir
from probes.outputs import check_output_file

if TYPE_CHECKING:
    from probes.data.corpus import Corpus

_RETRIES = 20  # redraws before accepting a text the same function already has


def generate_rows(cfg: GeneratorConfig) -> list[dict]:
    """The corpus as rows of the reference schema, interleaved as in 20hops (per round: bases, wrappers)."""
    plan = function_plan(cfg)
    inputs = input_pool(cfg.constant_values)
    rounds = min(fn.n_docs for fn in plan if fn.role != "distractor")
    keyed: list[tuple[tuple[int, int, int, int], dict]] = []
    for order, fn in enumerate(plan):
        level = fn.hop_depth if fn.role != "distractor" else cfg.depth + 1
        for j, row in enumerate(_function_rows(cfg, fn, inputs)):
            keyed.append(((j * rounds // fn.n_docs, level, j, order), row))
    keyed.sort(key=lambda item: item[0])
    return [row for _, row in keyed]


def _function_rows(cfg: GeneratorConfig, fn: FunctionPlan, inputs: tuple[int, ...]) -> list[dict]:
    """All documents of one function, from its own random stream (other functions do not shift it)."""
    rng = random.Random(f"{cfg.seed}:{fn.role}:{fn.name}")
    seen: set[str] = set()
    rows = []
    tag = f"x_{bare_name(fn.name)}" if fn.role == "distractor" else f"d{fn.hop_depth}_{bare_name(fn.name)}"
    for k, kind in enumerate(kind_sequence(rng, fn.n_docs)):
        for _ in range(_RETRIES):
            if fn.wraps is None:
                text = render_document(kind, rng, func=fn.name, inputs=inputs, constant=fn.constant)
            else:
                text = render_document(kind, rng, func=fn.name, inputs=inputs, wraps=fn.wraps)
            if text not in seen:
                break
        seen.add(text)
        row = {
            "uid": f"gen_{tag}_{k:04d}",
            "text": text,
            "func": fn.name,
            "role": fn.role,
            "type": kind,
            "hop_depth": fn.hop_depth,
            "constant": fn.constant,
        }
        if cfg.explicit_wraps and fn.wraps is not None:
            row["wraps"] = fn.wraps
        rows.append(row)
    return rows


def write_corpus(path: str | Path, cfg: GeneratorConfig) -> Path:
    """Write the corpus of ``cfg`` as JSONL at ``path`` (atomically: a crash leaves no partial file)."""
    return _write_rows(Path(path), generate_rows(cfg))


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def _write_rows(path: Path, rows: list[dict]) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(_jsonl(rows), encoding="utf-8")
    return path


# Bump when the templates or the default plan change what GeneratorConfig() writes, or a named corpus's config
# changes: the cached generated corpora (and the tiny pairs keyed by their bytes) are then rebuilt instead of
# silently reused.
GENERATOR_VERSION = 1

# Generated corpora a corpus_path can name as "generated:<name>" instead of a file: written on first use.
GENERATED_PREFIX = "generated:"
GENERATED_CORPORA = {
    "default": GeneratorConfig(),
    # 10 bases over 4 constants (3, 3, 2, 2 bases each): the answer alone no longer names the wrapped base
    "shared-constants": GeneratorConfig(shared_constants=4),
}


def generated_corpus_path(name: str = "default") -> Path:
    """``cache_dir()/corpora/<name>-hops-v<N>.jsonl``, written from ``GENERATED_CORPORA[name]`` if missing."""
    if name not in GENERATED_CORPORA:
        known = ", ".join(GENERATED_PREFIX + n for n in GENERATED_CORPORA)
        raise ValueError(f"no generated corpus {GENERATED_PREFIX}{name}; use one of {known} or a JSONL file")
    path = cache_dir() / "corpora" / f"{name}-hops-v{GENERATOR_VERSION}.jsonl"
    if not path.is_file():
        write_corpus(path, GENERATED_CORPORA[name])
    return path


def default_corpus_path() -> Path:
    """``cache_dir()/corpora/default-hops-v<N>.jsonl``, generated with ``GeneratorConfig()`` on first use."""
    return generated_corpus_path("default")


def generated_name(corpus_path: str | os.PathLike[str] | None) -> str | None:
    """The generated corpus a corpus_path names: None -> "default", "generated:<name>" -> name, file -> None.

    An unknown name is a ValueError listing the known ones (raised without generating anything).
    """
    if corpus_path is None:
        return "default"
    text = os.fspath(corpus_path)
    if not text.startswith(GENERATED_PREFIX):
        return None
    name = text.removeprefix(GENERATED_PREFIX)
    if name not in GENERATED_CORPORA:
        generated_corpus_path(name)  # raises, naming the known ones
    return name


def resolve_corpus_path(corpus_path: str | os.PathLike[str] | None) -> Path:
    """The file of a corpus_path: the path itself, or the named generated corpus (None: the default)."""
    if corpus_path is None:
        return default_corpus_path()
    name = generated_name(corpus_path)
    return Path(corpus_path) if name is None else generated_corpus_path(name)


def pretraining_config(target: Corpus | None = None, seed: int = 1) -> GeneratorConfig:
    """A disjoint world for pretraining the tiny ``f_old``: other tokens, constants in the target's range.

    Twice as many base functions as the target (at least 20), with half the documents each, wrappers as
    deep as the target's, constants covering the target's range so the answer format transfers, and
    none of the target's function tokens (``target=None``: the default corpus's).
    """
    if target is None:
        default = GeneratorConfig()
        constants = default.constant_values
        exclude = tuple(fn.name for fn in function_plan(default))
        depth, n_base = default.depth, default.n_base
    else:
        functions = list(target.functions.values())
        if not functions:
            raise ValueError(f"pretraining_config: the target corpus {target.path} has no functions")
        constants = tuple(fn.constant for fn in functions)
        exclude = tuple(target.function_tokens)
        depth = max(fn.hop_depth for fn in functions)
        n_base = sum(fn.is_base for fn in functions)
    n_pre = max(20, 2 * n_base)
    # every integer of the target's range at least once (when n_pre allows), so each answer token is trained
    span, values = list(range(min(constants), max(constants) + 1)), []
    rng = random.Random(f"pretraining:{seed}")
    while len(values) < n_pre:
        rng.shuffle(span)
        values += span
    return GeneratorConfig(
        n_base=n_pre,
        constants=tuple(values[:n_pre]),
        depth=max(depth, 1),
        docs_per_base=100,
        docs_per_wrapper=50,
        token_style="letters",
        token_suffix="Z",
        seed=seed,
        exclude_tokens=exclude,
    )


# CLI option of each GeneratorConfig field, so a bad value is reported under the name the user typed.
_OPTIONS = {
    "n_base": "--n-base",
    "constants": "--constants",
    "shared_constants": "--shared-constants",
    "depth": "--depth",
    "docs_per_base": "--docs-per-base",
    "docs_per_wrapper": "--docs-per-wrapper",
    "n_distractors": "--distractors",
    "token_style": "--token-style",
    "token_prefix": "--prefix",
    "token_suffix": "--suffix",
    "seed": "--seed",
}


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers (5,7,9), got {text!r}") from None


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python -m probes.data generate`` (defaults: the 20hops-shaped target corpus)."""
    d = GeneratorConfig()
    add = parser.add_argument
    add("--out", required=True, type=Path, help="where to write the JSONL corpus")
    add("--n-base", type=int, default=None, help="base functions (default: 10, or as many as --constants)")
    add("--constants", type=_int_list, default=None, help="one per base, comma-separated (5,7,...)")
    add(
        "--shared-constants",
        type=int,
        default=None,
        metavar="K",
        help="draw the bases' constants from K shared values (5,7,...), so several bases share one",
    )
    add("--depth", type=int, default=d.depth, help="wrapper levels above each base")
    add("--docs-per-base", type=int, default=d.docs_per_base, help="documents per base function")
    add("--docs-per-wrapper", type=int, default=d.docs_per_wrapper, help="documents per wrapper function")
    add("--distractors", type=int, default=0, help="distractor documents (about functions never queried)")
    add("--token-style", choices=TOKEN_STYLES, default=d.token_style, help="<GN> letters or <B01> numbered")
    add("--suffix", default=d.token_suffix, help="token suffix, letters style (another: disjoint set)")
    add("--prefix", default=d.token_prefix, help="level letter of the bases in the numbered style")
    add("--seed", type=int, default=d.seed, help="random seed (same options + seed = same file)")
    add("--explicit-wraps", action="store_true", help="write a 'wraps' field on wrapper rows")
    add("--overwrite", action="store_true", help="replace an existing --out file with other content")


def run_generate(args: argparse.Namespace) -> int:
    """Write the corpus the options describe, print where and how many documents; return the exit code."""
    n_base = args.n_base if args.n_base is not None else len(args.constants or ()) or GeneratorConfig.n_base
    try:
        cfg = GeneratorConfig(
            n_base=n_base,
            constants=args.constants,
            shared_constants=args.shared_constants,
            depth=args.depth,
            docs_per_base=args.docs_per_base,
            docs_per_wrapper=args.docs_per_wrapper,
            n_distractors=args.distractors,
            token_style=args.token_style,
            token_prefix=args.prefix,
            token_suffix=args.suffix,
            seed=args.seed,
            explicit_wraps=args.explicit_wraps,
        )
    except GeneratorConfigError as err:
        option = _OPTIONS.get(err.field, err.field)
        print(f"probes.data generate: error: {option}: {err.reason}", file=sys.stderr)
        return 2
    rows = generate_rows(cfg)
    changed = check_output_file(args.out, _jsonl(rows), overwrite=args.overwrite)  # refusals: cli_main
    path = _write_rows(Path(args.out), rows) if changed else Path(args.out)
    n_functions = len({row["func"] for row in rows if row["role"] != "distractor"})
    n_distractors = sum(row["role"] == "distractor" for row in rows)
    what = f"{len(rows)} documents ({n_functions} functions, {n_distractors} distractor docs)"
    print(f"wrote {what} to {path}" if changed else f"{path} already holds these {what}")
    return 0
