"""The embedded default pair: the tiny pair for the default corpus, built on first use and cached."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import warnings
from pathlib import Path

from probes.files import atomic_path, cache_dir
from probes.hashing import PAIR_FOLDERS, failed_files, file_checksums, file_sha256, unreadable_weights
from probes.pairs.build import RECIPE_VERSION, build_pair
from probes.pairs.presets import get_preset

PRESET = "tiny"
SEED = 0


def _corpus(corpus_path: str | Path | None) -> Path:
    from probes.data.synthetic import resolve_corpus_path

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
        damaged = _damaged(out)
        if not damaged:
            print(f"probes: using the tiny model pair cached at {out}")
            return
        warnings.warn(
            f"the cached tiny pair at {out} is damaged: {'; '.join(damaged)}; rebuilding it", stacklevel=3
        )
        shutil.rmtree(out, ignore_errors=True)
    print(f"probes: building the tiny model pair for {corpus} into {out} (a few minutes, once)")
    build_pair(corpus, out, preset=PRESET, seed=SEED)  # its manifest records every file's checksum


def _damaged(out: Path) -> list[str]:
    """``"path (why)"`` for each file of the cached pair that fails its checksum in the manifest. A pair
    cached before checksums were recorded is checked by its safetensors headers, then given checksums."""
    path = out / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        return [f"{path} ({error})"]
    if "files" in manifest:
        return failed_files(out, manifest["files"])
    weights = [out / folder / "model.safetensors" for folder in PAIR_FOLDERS]
    damaged = [f"{path} (missing)" for path in weights if not path.is_file()]
    damaged += [bad for folder in PAIR_FOLDERS for bad in unreadable_weights(out / folder)]
    if not damaged:
        _record_checksums(out)
    return damaged


def _record_checksums(out: Path) -> None:
    """Add every file's SHA-256 to the pair's manifest: each later use verifies them (~10 ms for the pair)."""
    path = out / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["files"] = file_checksums(out, PAIR_FOLDERS)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")


def ensure_default_pair(corpus_path: str | Path | None = None) -> tuple[Path, Path]:
    """``(old_dir, new_dir)`` of the tiny pair for ``corpus_path`` (default: the default corpus), built on
    first use into the cache directory and reused afterwards."""
    out = default_pair_dir(corpus_path)
    return out / "old", out / "new"
