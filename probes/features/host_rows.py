"""Feature rows collected on the host while the device computes the next batch, checked for NaN/inf."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class HostRows:
    """Collects each batch's feature rows into one CPU tensor of ``count`` rows, in text order, while the
    device computes the next batch: a batch's rows go to pinned memory by an asynchronous copy, and the
    host files them in place only once the following batch is queued. The device never waits for the host,
    and the copy to the host (~700 MB per checkpoint and pass at 1B scale) is hidden behind the compute.
    Non-finite rows are counted on the device and looked for on the host only when there are some."""

    def __init__(self, count: int):
        self.count = count
        self.out: Tensor | None = None
        self.pending: list[tuple[Tensor, Tensor, torch.cuda.Event]] = []
        self.bad: Tensor | None = None

    def add(self, index: Sequence[int], rows: Tensor) -> None:
        if self.out is None:
            self.out = torch.empty((self.count, *rows.shape[1:]), dtype=rows.dtype)
        index = torch.tensor(index)
        if rows.device.type != "cuda":
            self.out.index_copy_(0, index, rows.cpu())
            return
        bad = (~torch.isfinite(rows)).sum()
        self.bad = bad if self.bad is None else self.bad + bad
        pinned = torch.empty(rows.shape, dtype=rows.dtype, pin_memory=True)
        pinned.copy_(rows, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        self.pending.append((index, pinned, done))
        self._file(keep=1)

    def _file(self, keep: int) -> None:
        """Wait for all but the last ``keep`` pending copies and put their rows in place."""
        while len(self.pending) > keep:
            index, pinned, done = self.pending.pop(0)
            done.synchronize()
            self.out.index_copy_(0, index, pinned)

    def result(self, texts: Sequence[str], what: str) -> Tensor:
        """All rows on the CPU; raises naming the first text whose features hold NaN or inf."""
        self._file(keep=0)
        if self.bad is None or int(self.bad):
            check_finite(self.out, range(self.count), texts, what)
        return self.out


def check_finite(rows: Tensor, index: Sequence[int], texts: Sequence[str], what: str) -> None:
    """Raise naming the first text whose features (``rows[j]`` of text ``index[j]``) hold NaN or inf."""
    finite = torch.isfinite(rows).flatten(1).all(-1)
    if not bool(finite.all()):
        i = index[int((~finite).nonzero()[0, 0])]
        raise FloatingPointError(
            f"{what} features of text {i} ({texts[i][:60]!r}) contain NaN or inf; check the model's "
            "weights and dtype (bf16/fp16 can overflow; try float32)"
        )
