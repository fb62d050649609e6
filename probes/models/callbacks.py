"""Callbacks of the DLP job: a checkpoint that a later process finds again; CPU threads for tiny models."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint


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


class CpuThreads(Callback):
    """Sets torch's intra-op CPU threads when the run is on the CPU (and leaves GPU runs alone).

    A tiny model's matrices are too small to gain from being split across threads, and on a busy machine the
    split costs a lot: the embedded default fit took ~4x longer with 2 threads than with 1 on a shared 2-core
    CPU. This is a process-wide torch setting, so it is a visible config choice rather than a library default.

    Args:
        threads: intra-op threads for a CPU run.
    """

    def __init__(self, threads: int = 1):
        if threads < 1:
            raise ValueError(f"CpuThreads threads={threads}: must be >= 1")
        self.threads = threads

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.strategy.root_device.type == "cpu":
            torch.set_num_threads(self.threads)
