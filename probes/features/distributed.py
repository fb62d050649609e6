"""The feature pass under a Lightning strategy: ranks share out the length batches, each gets all rows back.

``compute_features(..., devices=N)`` comes here. Under ``strategy="ddp"`` the first Trainer relaunches the
running script once per extra device with ``LOCAL_RANK`` set (and sets it in the launching process too), so
later feature passes of the same script reuse those processes; each rank must have loaded its model on its own
device (``cuda:LOCAL_RANK``) before it gets here. On the CPU, "ddp_fork" forks the ranks from the caller
instead (tests, notebooks: where the script cannot be relaunched) and hands the rows back to it; "ddp_spawn"
would have to pickle the model, which transformers (>= 5) cannot do once the model has run a forward pass
(its output-capturing hooks are local functions).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from probes.features.extract import FeatureStep
from probes.lm.scoring import Tokenized
from probes.progress import progress_bar


class LengthBatches(Dataset):
    """Item i = the text indices of length batch i. A DataLoader with ``batch_size=None`` yields each item
    as it is, so Lightning's distributed sampler deals whole batches out (rank r: batches r, r+N, ...)."""

    def __init__(self, batches: Sequence[Sequence[int]]):
        self.batches = [torch.tensor(index, dtype=torch.long) for index in batches]

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> Tensor:
        return self.batches[i]


class FeaturePass(L.LightningModule):
    """``predict_step`` = one length batch's features (`FeatureStep`), returned with the batch's text indices.

    It has no parameters of its own and holds the model only through the step (see `FeatureStep`): the
    Trainer leaves the model where the caller put it, which must be this rank's device.
    """

    def __init__(self, step: FeatureStep, items: Sequence[Tokenized], texts: Sequence[str]):
        super().__init__()
        self.step, self.items, self.texts = step, list(items), list(texts)

    def on_predict_start(self) -> None:
        root = self.trainer.strategy.root_device
        if self.step.device != root:
            raise ValueError(
                f"rank {self.global_rank}: the model is on {self.step.device}, but this rank runs on {root}; "
                "load each rank's model on its own device (cuda:<LOCAL_RANK>) before the feature pass"
            )

    def predict_step(self, index: Tensor) -> tuple[Tensor, Tensor]:
        return index, self.step.rows(self.items, index.tolist(), self.texts)


class GatherRows(L.Callback):
    """Collects this rank's (indices, rows) on its device, writes them once to ``<directory>/rank-<r>.pt``
    at the end of the pass, then waits for every rank: when ``predict`` returns, every part is on disk.

    Every rank of a relaunched script makes its own temporary directory; the ranks agree on rank 0's.
    (Not a ``BasePredictionWriter``: those read Lightning's batch indices, which a ``batch_size=None``
    loader does not have; the rows carry their own.)
    """

    def __init__(self, directory: Path, progress: bool = True, what: str = "features"):
        self.directory, self.progress, self.what = directory, progress, what
        self._parts: list[tuple[Tensor, Tensor]] = []
        self._bar: tqdm | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.directory = trainer.strategy.broadcast(self.directory)

    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        total = int(trainer.num_predict_batches[0])
        quiet = not self.progress or not trainer.is_global_zero or total < 4
        self._parts = []
        self._bar = progress_bar(
            total=total, desc=f"{self.what} features (rank 0)", disable=quiet, leave=False
        )

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._parts.append(outputs)
        self._bar.update()

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._bar.close()
        index = torch.cat([index for index, _ in self._parts]).cpu()
        part = {"index": index, "rows": to_host(torch.cat([rows for _, rows in self._parts]))}
        torch.save(part, Path(self.directory) / f"rank-{trainer.global_rank}.pt")
        self._parts = []
        trainer.strategy.barrier("feature parts written")


def to_host(tensor: Tensor) -> Tensor:
    """``tensor`` on the CPU. From a GPU, the pages of the CPU copy are first touched by a parallel fill: a
    device-to-host copy into fresh memory faults them in one at a time (BENCHMARKS.md)."""
    if tensor.device.type == "cpu":
        return tensor
    return torch.empty(tensor.shape, dtype=tensor.dtype).zero_().copy_(tensor)


def distributed_features(
    step: FeatureStep,
    items: Sequence[Tokenized],
    batches: Sequence[Sequence[int]],
    texts: Sequence[str],
    devices: int,
    strategy: str = "ddp",
    progress: bool = True,
) -> Tensor:
    """Every text's features (``step``) computed by ``devices`` Lightning ranks, in text order, on the CPU."""
    accelerator = "gpu" if step.device.type == "cuda" else step.device.type
    own = Path(tempfile.mkdtemp(prefix="probes-features-"))
    gather = GatherRows(own, progress, step.spec.what)
    loader = DataLoader(LengthBatches(batches), batch_size=None)
    try:
        with _quiet_lightning():
            trainer = L.Trainer(
                accelerator=accelerator,
                devices=devices,
                strategy=strategy,
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                inference_mode=False,  # the grad step needs autograd; the hidden step enters inference mode
                callbacks=[gather],
            )
            trainer.predict(FeaturePass(step, items, texts), loader, return_predictions=False)
        out = _assemble(Path(gather.directory), len(texts))
        trainer.strategy.barrier("feature parts read")  # rank 0 deletes them below
    finally:
        shutil.rmtree(own, ignore_errors=True)
    return out


def _assemble(directory: Path, n: int) -> Tensor:
    out, seen = None, torch.zeros(n, dtype=torch.bool)
    for path in sorted(directory.glob("rank-*.pt")):
        part = torch.load(path, map_location="cpu", weights_only=True)
        if out is None:
            out = part["rows"].new_empty((n, *part["rows"].shape[1:]))
        out[part["index"]] = part["rows"]
        seen[part["index"]] = True
    if out is None or not bool(seen.all()):
        missing = n if out is None else int((~seen).sum())
        raise RuntimeError(f"the feature pass returned no rows for {missing} of {n} texts (in {directory})")
    return out


@contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Lightning's set-up messages (GPU available, distributed init, few workers), once per feature pass,
    would bury the run's own output; the levels and warning filters are restored afterwards."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        # Lightning 2.6.x's own pytree code under torch 2.13, on every batch transfer: nothing to act on
        warnings.filterwarnings(
            "ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning
        )
        for logger in loggers:
            logger.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)
