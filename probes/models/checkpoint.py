"""A ModelCheckpoint that a later process finds again, so `train_probe.py test --ckpt_path best` works."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from lightning.pytorch.callbacks import ModelCheckpoint


class BestCheckpoint(ModelCheckpoint):
    """Keeps the best checkpoint at ``<dirpath>/best.ckpt`` and the latest at ``<dirpath>/last.ckpt``.

    Lightning resolves ``ckpt_path="best"`` from the callback's memory of the current process only; a fixed
    directory and file name let a fresh ``test``/``validate``/``predict`` run pick up the best checkpoint
    of the last ``fit`` (and ``fit --ckpt_path last`` resume it).

    Args:
        dirpath: where both checkpoints are written (one directory per experiment).
        monitor: the logged metric that picks the best checkpoint.
        mode: "max" (higher monitor is better) or "min".
        save_last: also keep ``last.ckpt`` after every epoch, for resuming.
    """

    def __init__(
        self,
        dirpath: str,
        monitor: str = "val/macro/map",
        mode: Literal["min", "max"] = "max",
        save_last: bool = True,
    ):
        super().__init__(
            dirpath=dirpath,
            filename="best",
            monitor=monitor,
            mode=mode,
            save_top_k=1,
            save_last=save_last,
            auto_insert_metric_name=False,
            enable_version_counter=False,
        )
        best = Path(dirpath) / "best.ckpt"
        if best.is_file():
            self.best_model_path = str(best)
