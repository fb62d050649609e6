"""Content hashes and checksums, the one module every layer imports for them: of JSON-able values
(texts, specs), of what a model computes, of tensors and files (a pair's files, a feature tensor),
and their checks on read."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

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


SAMPLE = 256  # strided elements per parameter hashed exactly, besides its float64 sum and norm


def weights_hash(model: torch.nn.Module) -> str:
    """A hash of what a model computes, not where it came from: class, parameter names and shapes, and a
    strided sample of each parameter's values rounded to bfloat16.

    Unlike `model_fingerprint` it is the same for a copy at another path, on another device (no reductions,
    whose order differs between devices) and for float32 or bfloat16 loads of one checkpoint; any real
    fine-tuning moves many of the sampled values across a bfloat16 step.
    """
    digest = hashlib.sha256(type(model).__name__.encode())
    parts = []
    for name, param in model.named_parameters():
        flat = param.detach().flatten()
        digest.update(f"{name}:{tuple(param.shape)}".encode())
        parts.append(flat[:: max(1, flat.numel() // SAMPLE)][:SAMPLE].to(torch.bfloat16).float())
    digest.update(torch.cat(parts).cpu().numpy().tobytes())
    return digest.hexdigest()[:32]


def content_hash(value: object) -> str:
    """A hash of texts, targets, ids, specs: anything JSON-serialisable (dataclasses and tensors included)."""

    def plain(obj):
        if dataclasses.is_dataclass(obj):
            return dataclasses.asdict(obj)
        if isinstance(obj, Tensor):
            return obj.tolist()
        raise TypeError(f"cannot hash a {type(obj).__name__} into a feature cache key")

    return hashlib.sha256(json.dumps(value, default=plain, sort_keys=True).encode()).hexdigest()[:32]


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
