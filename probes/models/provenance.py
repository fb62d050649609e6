"""What a DLP checkpoint was trained on, by content: its corpus's texts in order and its f_new's weights.

`stamp` (``python -m probes.models stamp CKPT [--corpus C]``) records them in a checkpoint saved before the
record existed, for a user who knows what it was trained on (default: the corpus and f_new its hparams name).
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from probes.errors import UserError, refuse_pickle
from probes.hashing import content_hash, weights_hash

KEY = "trained_on"  # the checkpoint entry (beside Lightning's state_dict and hyper_parameters)
STAMP = "python -m probes.models stamp"


def record(texts: Sequence[str], lm: torch.nn.Module) -> dict:
    """The corpus (texts in order, and as a multiset to tell a reordering apart) and f_new's weights."""
    return {
        "documents": len(texts),
        "texts": content_hash(list(texts)),
        "texts_sorted": content_hash(sorted(texts)),
        "model": weights_hash(lm),
    }


def load_checkpoint(path: str | Path, key: str) -> dict:
    """A checkpoint's dict read without running pickled code; a pickled object is a one-line error."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise refuse_pickle(path, key, err) from None
    if not isinstance(checkpoint, dict):
        raise UserError(f"{key} {str(path)!r} holds a {type(checkpoint).__name__}, not a checkpoint")
    return checkpoint


def missing(where: str) -> UserError:
    """The refusal of a checkpoint without its record, saying how to retrain or re-stamp it."""
    return UserError(
        f"{where} has no record of the corpus and f_new it was trained on (saved before probes recorded "
        "them), so its outputs cannot be matched to documents by content: retrain it (python train_probe.py "
        f"fit --config configs/dlp.yaml), or, if you know it was trained on this corpus in this row order "
        f"and this f_new, stamp it: {STAMP} CHECKPOINT [--corpus CORPUS]"
    )


def read(path: str | Path, key: str) -> dict:
    """The record in checkpoint ``path`` (named ``key`` in errors); refuse one without it."""
    recorded = load_checkpoint(path, key).get(KEY)
    if recorded is None:
        raise missing(f"{key} {path}")
    return recorded


def check(
    recorded: dict, texts: Sequence[str], lm: torch.nn.Module | None, where: str, model: str | None
) -> None:
    """Raise a ValueError that says what differs when ``texts`` or ``lm`` (f_new, from ``model``; None = the
    embedded tiny pair's; ``lm`` None checks the texts only) are not what the checkpoint (``where``) was
    trained on: the head's outputs are document row indices, so a reordered corpus would be scored against
    the wrong documents."""
    now = {"texts": content_hash(list(texts)), "texts_sorted": content_hash(sorted(texts))}
    problems = []
    if now["texts"] != recorded["texts"]:
        if now["texts_sorted"] == recorded["texts_sorted"]:
            problems.append(f"the corpus holds the same {len(texts)} documents in another row order")
        else:
            problems.append(
                f"the corpus's document texts differ ({recorded['documents']} documents at training, "
                f"{len(texts)} now)"
            )
    if lm is not None and weights_hash(lm) != recorded["model"]:
        name = model or "the embedded tiny pair's f_new for this corpus"
        problems.append(f"f_new ({name}) has other weights than the f_new it was trained with")
    if problems:
        raise UserError(
            f"{where} cannot score this data: {'; and '.join(problems)}. Use the corpus and "
            "f_new it was trained on, or train a probe for these (train_probe.py fit)"
        )


def stamp(path: str | Path, corpus: str | None = None) -> dict:
    """Write the record of ``corpus`` (default: the checkpoint's hparams corpus_path) and the f_new its
    hparams name into checkpoint ``path`` (atomically); return the record."""
    from probes.data.corpus import load_corpus
    from probes.data.synthetic import resolve_corpus_path
    from probes.files import atomic_path
    from probes.models.frozen import frozen_lm

    checkpoint = load_checkpoint(path, "checkpoint")
    hp = checkpoint.get("hyper_parameters", {})
    corpus = corpus or hp.get("corpus_path")
    texts = load_corpus(resolve_corpus_path(corpus)).texts
    lm, _ = frozen_lm(hp.get("model"), corpus, hp.get("dtype", "float32"))
    checkpoint[KEY] = record(texts, lm)
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)
    return checkpoint[KEY]


class TrainedOn(Callback):
    """Writes what a fit trained on into each checkpoint (`record`), and under a Trainer that resumes or
    evaluates a checkpoint (``ckpt_path``) refuses other documents or another f_new (`check`)."""

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[KEY] = record(pl_module.documents.texts, pl_module.reader.lm)

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module, checkpoint: dict) -> None:
        recorded = checkpoint.get(KEY)
        if recorded is not None and pl_module.documents is not None:
            where = f"checkpoint {trainer.ckpt_path or ''}".rstrip()
            check(recorded, pl_module.documents.texts, pl_module.reader.lm, where, pl_module.hparams.model)
