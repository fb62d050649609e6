"""What a DLP checkpoint was trained on, by content: its corpus's texts in order and its f_new's weights."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from probes.lm.cache import content_hash, weights_hash

KEY = "trained_on"  # the checkpoint entry (beside Lightning's state_dict and hyper_parameters)


def record(texts: Sequence[str], lm: torch.nn.Module) -> dict:
    """The corpus (texts in order, and as a multiset to tell a reordering apart) and f_new's weights."""
    return {
        "documents": len(texts),
        "texts": content_hash(list(texts)),
        "texts_sorted": content_hash(sorted(texts)),
        "model": weights_hash(lm),
    }


def check(recorded: dict, texts: Sequence[str], lm: torch.nn.Module, where: str, model: str | None) -> None:
    """Raise a ValueError that says what differs when ``texts`` or ``lm`` (f_new, from ``model``; None = the
    embedded tiny pair's) are not what the checkpoint (``where``) was trained on: the head's outputs are
    document row indices, so a reordered corpus would be scored against the wrong documents."""
    now = record(texts, lm)
    problems = []
    if now["texts"] != recorded["texts"]:
        if now["texts_sorted"] == recorded["texts_sorted"]:
            problems.append(f"the corpus holds the same {len(texts)} documents in another row order")
        else:
            problems.append(
                f"the corpus's document texts differ ({recorded['documents']} documents at training, "
                f"{len(texts)} now)"
            )
    if now["model"] != recorded["model"]:
        name = model or "the embedded tiny pair's f_new for this corpus"
        problems.append(f"f_new ({name}) has other weights than the f_new it was trained with")
    if problems:
        raise ValueError(
            f"{where} cannot score this data: {'; and '.join(problems)}. Use the corpus and "
            "f_new it was trained on, or train a probe for these (train_probe.py fit)"
        )


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
