"""DocumentIndex: the training documents' probe responses, computed once for as long as the probes stay."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor, nn

from probes.models.conditioning import ProbeReader
from probes.progress import progress_bar


class DocumentIndex:
    """The training documents' texts, in corpus order, and their responses to the current probes.

    The responses are kept while the generator's parameters and buffers are unchanged (the same tensors, no
    in-place update since: their version counters), so an evaluation computes them once, and a training step
    that updates the probes makes the next evaluation compute them again. Documents run shortest first,
    ``batch_size`` a pass.
    """

    def __init__(self, texts: Sequence[str], batch_size: int):
        self.texts, self.batch_size = list(texts), batch_size
        self._key: tuple | None = None
        self._responses: Float[Tensor, "n k r"] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, rows: Sequence[int]) -> list[str]:
        return [self.texts[i] for i in rows]

    def responses(
        self, reader: ProbeReader, generator: nn.Module, probes: Float[Tensor, "k m d"]
    ) -> Float[Tensor, "n k r"]:
        """Every document's responses to ``probes`` (= ``generator()``), from the cache while it holds."""
        state = [*generator.parameters(), *generator.buffers()]
        key = tuple((t.data_ptr(), t._version) for t in state)
        if self._responses is None or key != self._key:
            self._responses, self._key = self._compute(reader, probes), key
        return self._responses

    def _compute(self, reader: ProbeReader, probes: Float[Tensor, "k m d"]) -> Float[Tensor, "n k r"]:
        order = sorted(range(len(self.texts)), key=lambda i: len(self.texts[i]))
        out = None
        for start in progress_bar(
            range(0, len(order), self.batch_size), desc="document responses", leave=False
        ):
            ids = order[start : start + self.batch_size]
            rows = reader(self[ids], probes, as_prompt=False)
            out = rows.new_empty(len(order), *rows.shape[1:]) if out is None else out
            out[torch.tensor(ids, device=rows.device)] = rows
        return out
