"""Callbacks of the DLP job: each fit keeps its own checkpoints, found again later; CPU threads; bars."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar

from probes.files import atomic_path
from probes.progress import FILE_INTERVAL, interactive


class BestCheckpoint(ModelCheckpoint):
    """Keeps each fit's best and latest checkpoints in its own run folder, the logger's
    ``version_N/checkpoints/{best,last}.ckpt``, and points ``<save_dir>/<name>/{best,last}.ckpt`` (relative
    symlinks, replaced atomically) at the latest fit's.

    Lightning resolves ``ckpt_path="best"`` from the callback's memory of the current process only, and
    ``"last"`` in the current run's folder; the two links let a fresh ``test``/``validate``/``predict`` run
    pick up the best checkpoint of the last ``fit`` (:meth:`use_latest_best`) and ``fit --ckpt_path last``
    resume the last one (into a run folder of its own). Without a logger the checkpoints go to
    ``<default_root_dir>/checkpoints/`` (LightningCLI refuses a second fit in a run folder: its config.yaml).

    Args:
        monitor: the logged metric that picks the best checkpoint.
        mode: "max" (higher monitor is better) or "min".
        save_last: also keep ``last.ckpt`` after every epoch, for resuming. Lightning 2.6 writes it only
            at a step that also wrote a top-k checkpoint, so with ``save_top_k=1`` it was a copy of the best,
            and ``--ckpt_path last`` resumed from the best epoch, losing the epochs after it; this callback
            writes it at every save point (`_save_last_every_epoch`).
    """

    def __init__(
        self,
        monitor: str = "val/macro/map",
        mode: Literal["min", "max"] = "max",
        save_last: bool = True,
    ):
        super().__init__(
            filename="best",
            monitor=monitor,
            mode=mode,
            save_top_k=1,
            save_last=save_last,
            auto_insert_metric_name=False,
            enable_version_counter=False,
        )

    @staticmethod
    def runs_folder(trainer: L.Trainer) -> Path:
        """Where the runs' folders and the links to the latest fit's checkpoints are (found through the
        logger, as Lightning places the checkpoints)."""
        if not trainer.loggers:
            return Path(trainer.default_root_dir) / "checkpoints"
        logger = trainer.loggers[0]
        return Path(logger.save_dir or trainer.default_root_dir) / str(logger.name)

    def use_latest_best(self, trainer: L.Trainer) -> None:
        """Make ``ckpt_path="best"`` load the latest fit's best checkpoint; a clear error if there is none."""
        link = self.runs_folder(trainer) / "best.ckpt"
        if not link.is_file():
            raise FileNotFoundError(
                f"--ckpt_path best: no fit has saved a best checkpoint ({link} links to the latest fit's); "
                "run `python train_probe.py fit` with this config first, or give --ckpt_path PATH"
            )
        self.best_model_path = str(link.resolve())

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_every_epoch(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_every_epoch(trainer)

    def _save_last_every_epoch(self, trainer: L.Trainer) -> None:
        """``last.ckpt`` at a save point where Lightning wrote no checkpoint (none was in the top k)."""
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _find_last_checkpoints(self, trainer: L.Trainer) -> set[str]:
        link = self.runs_folder(trainer) / "last.ckpt"
        return {str(link.resolve())} if link.is_file() else set()

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        link = self.runs_folder(trainer) / Path(filepath).name
        if trainer.is_global_zero and link.resolve() != Path(filepath).resolve():
            with atomic_path(link) as tmp:
                tmp.symlink_to(os.path.relpath(filepath, link.parent))


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


class ProgressBar(TQDMProgressBar):
    """Lightning's tqdm bars (on stdout), updated every ``refresh_rate`` batches on a terminal; into a file or
    pipe at most every ``probes.progress.FILE_INTERVAL`` seconds (and at each bar's end), like every other
    bar of the project. train_probe.py adds it unless the config names a progress bar or disables them."""

    def __init__(self, refresh_rate: int = 1, process_position: int = 0, leave: bool = False):
        super().__init__(refresh_rate, process_position, leave)
        self._last_update = 0.0

    def _should_update(self, current: int, total: int) -> bool:
        if interactive(sys.stdout):
            return super()._should_update(current, total)
        due = current == total or time.monotonic() - self._last_update >= FILE_INTERVAL
        if due:
            self._last_update = time.monotonic()
        return self.is_enabled and due
