"""The embedded default pair: the tiny pair for the default corpus, built on first use and cached."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from probes.cache import cache_dir
from probes.lm.build import RECIPE_VERSION, build_pair, file_sha256
from probes.lm.presets import get_preset

PRESET = "tiny"
SEED = 0


def _corpus(corpus_path: str | Path | None) -> Path:
    from probes.data.generator import resolve_corpus_path

    return resolve_corpus_path(corpus_path)


def default_pair_dir(corpus_path: str | Path | None = None, *, build: bool = True) -> Path:
    """``cache_dir()/models/tiny-<hash>`` for the corpus (a file, "generated:<name>" or None: the default
    corpus), built if missing.

    The hash covers the corpus bytes, the preset, the seed and the recipe version, so a change in any of them
    builds a new pair instead of reusing a stale one. ``build=False`` only names the directory.
    """
    corpus = _corpus(corpus_path)
    key = {
        "corpus": file_sha256(corpus),
        "preset": PRESET,
        "config": dataclasses.asdict(get_preset(PRESET)),
        "seed": SEED,
        "recipe": RECIPE_VERSION,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    out = cache_dir() / "models" / f"{PRESET}-{digest}"
    if build:
        _ensure(out, corpus)
    return out


def _ensure(out: Path, corpus: Path) -> None:
    if (out / "manifest.json").is_file():
        print(f"probes: using the tiny model pair cached at {out}")
        return
    print(f"probes: building the tiny model pair for {corpus} into {out} (a few minutes, once)")
    build_pair(corpus, out, preset=PRESET, seed=SEED)


def ensure_default_pair(corpus_path: str | Path | None = None) -> tuple[Path, Path]:
    """``(old_dir, new_dir)`` of the tiny pair for ``corpus_path`` (default: the default corpus), built on
    first use into the cache directory and reused afterwards."""
    out = default_pair_dir(corpus_path)
    return out / "old", out / "new"
