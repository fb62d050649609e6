"""SHA-256 records of files: ``{relative path: sha256}`` maps written with an artefact and checked on read."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def files_under(root: str | Path, names: Iterable[str]) -> list[Path]:
    """Every file that is one of ``names`` under ``root``, or lies in one of them (a folder), sorted."""
    root, found = Path(root), []
    for name in names:
        path = root / name.rstrip("/")
        found += [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return sorted(found)


def file_checksums(root: str | Path, names: Iterable[str]) -> dict[str, str]:
    """``{"old/model.safetensors": sha256, ...}``: every file among or under ``names`` in ``root``."""
    root = Path(root)
    return {p.relative_to(root).as_posix(): file_sha256(p) for p in files_under(root, names)}


def failed_files(root: str | Path, recorded: dict[str, str]) -> list[str]:
    """``"path (why)"`` for each recorded file under ``root`` that is missing or whose bytes changed."""
    failed = []
    for name, sha in recorded.items():
        path = Path(root) / name
        if not path.is_file():
            failed.append(f"{path} (missing)")
        elif file_sha256(path) != sha:
            failed.append(f"{path} (its checksum differs: corrupt or changed since it was written)")
    return failed
