"""Folders of measured influence, as `python -m probes.counterfactual oracle` and ``build`` write them: the
manifest, with every tensor file checked against the SHA-256 it records. Read by the DLP's influence targets
(`probes.models.influence`) and by the ``magic`` row that takes a finished oracle (`baselines.magic`); imports
only the top-level modules."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from safetensors.torch import load_file
from torch import Tensor

from probes.errors import UserError
from probes.hashing import content_hash, failed_files

ORACLE_FILE, GROUND_TRUTH_FILE = "oracle.safetensors", "ground_truth.safetensors"
MANIFEST_FILE = "manifest.json"


def checked_manifest(folder: Path, what: str) -> dict:
    """The folder's manifest, once every file it records matches its SHA-256 (a UserError naming ``what``
    otherwise, and for a folder whose run has not finished)."""
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise UserError(
            f"{what} {folder}: no {MANIFEST_FILE} (give a folder written by `python -m "
            "probes.counterfactual oracle` or `build`, finished)"
        )
    manifest = json.loads(path.read_text(encoding="utf-8"))
    recorded = manifest.get("sha256") or manifest.get("files") or {}
    if bad := failed_files(folder, recorded):
        raise UserError(f"{what} {folder}: {', '.join(bad)} differ from its manifest's SHA-256")
    return manifest


def read_oracle(folder: str | Path, what: str) -> tuple[dict, Tensor, list[int]]:
    """A finished oracle folder's (manifest, scores [q, n] float32, query ids [q])."""
    folder = Path(folder)
    manifest = checked_manifest(folder, what)
    if not (folder / ORACLE_FILE).is_file():
        raise UserError(f"{what} {folder}: no {ORACLE_FILE} (not a `probes.counterfactual oracle` folder)")
    tensors = load_file(str(folder / ORACLE_FILE))
    return manifest, tensors["scores"], tensors["query_ids"].tolist()


def document_problems(documents: dict, texts: Sequence[str]) -> list[str]:
    """What differs between the documents a folder was computed for (its manifest's ``documents``: count,
    hash of the texts in order and sorted) and these texts, in order; empty when they match."""
    if documents.get("texts") == content_hash(list(texts)):
        return []
    if documents.get("texts_sorted") == content_hash(sorted(texts)):
        return [f"the corpus holds the same {len(texts)} documents in another row order"]
    return [f"the corpus's document texts differ ({documents['count']} documents there, {len(texts)} now)"]
