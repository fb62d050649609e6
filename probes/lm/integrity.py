"""Checksums written with cached artefacts (a pair's files, a feature tensor) and their checks on read."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from probes.checksums import failed_files, file_checksums, file_sha256

__all__ = [
    "failed_files",
    "failed_pair_files",
    "file_checksums",
    "file_sha256",
    "tensor_sha256",
    "unreadable_weights",
]

PAIR_FOLDERS = ("old", "new")


def tensor_sha256(tensor: Tensor) -> str:
    """Hex SHA-256 of a tensor's bytes (any dtype, on the CPU): ~1 GB/s, cheap beside computing it."""
    return hashlib.sha256(
        tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    ).hexdigest()


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


def failed_pair_files(folder: str | Path) -> list[str]:
    """``"path (why)"`` for each file of a pair's model ``folder`` (``old/`` or ``new/``) that fails the
    checksum its build recorded in the pair's manifest.json (a pair built by this project); nothing to check
    for another folder."""
    folder = Path(folder)
    try:
        recorded = json.loads((folder.parent / "manifest.json").read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        return []
    if not isinstance(recorded, dict):
        return []
    mine = {name: sha for name, sha in recorded.items() if name.split("/")[0] == folder.name}
    return failed_files(folder.parent, mine)
