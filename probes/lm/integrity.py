"""Checksums written with cached artefacts (a pair's files, a feature tensor) and their checks on read."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

PAIR_FOLDERS = ("old", "new")


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def tensor_sha256(tensor: Tensor) -> str:
    """Hex SHA-256 of a tensor's bytes (any dtype, on the CPU): ~1 GB/s, cheap beside computing it."""
    return hashlib.sha256(
        tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    ).hexdigest()


def file_checksums(root: str | Path, folders: tuple[str, ...] = PAIR_FOLDERS) -> dict[str, str]:
    """``{"old/model.safetensors": sha256, ...}``: every file under ``root``'s ``folders``."""
    root = Path(root)
    files = sorted(p for folder in folders for p in (root / folder).rglob("*") if p.is_file())
    return {p.relative_to(root).as_posix(): file_sha256(p) for p in files}


def failed_files(root: str | Path, recorded: dict[str, str]) -> list[str]:
    """``"path (why)"`` for each recorded file under ``root`` that is missing or whose bytes changed."""
    failed = []
    for name, sha in recorded.items():
        path = Path(root) / name
        if not path.is_file():
            failed.append(f"{path} (missing)")
        elif file_sha256(path) != sha:
            failed.append(f"{path} (its checksum differs: truncated or corrupt)")
    return failed


def unreadable_weights(folder: str | Path) -> list[str]:
    """``"path (why)"`` for each safetensors file in ``folder`` whose header does not cover the file (a
    truncated or overwritten file): reads the headers only, so it is cheap for any model size."""
    failed = []
    for path in sorted(Path(folder).glob("*.safetensors")):
        try:
            with safe_open(path, "pt"):
                pass
        except (OSError, SafetensorError) as error:
            failed.append(f"{path} ({error})")
    return failed
