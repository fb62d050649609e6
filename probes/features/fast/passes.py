"""`FastPass`: the reference `probes.features.backend.Pass` with each step replaced by its fast version."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch
from jaxtyping import Float, Int
from torch import Tensor

from probes.features.backend import Pass
from probes.features.fast.compiled import compiled_blocks
from probes.features.fast.losses import text_losses
from probes.lm.scoring import Tokenized


class FastPass(Pass):
    """Compiled decoder blocks (``options.compile``), losses without the full logits, and right-padded batches
    run with no attention mask and one shared row of positions: under causal attention no real token can see
    the pads that follow it, so real tokens get exactly the masked result, while the attention kernels take
    their fast unmasked causal path and rotary embeddings are computed once instead of per row. Pad positions'
    outputs are never read."""

    def blocks(self, model) -> AbstractContextManager:
        return compiled_blocks(model) if self.options.compile else nullcontext()

    def mask_and_positions(self, batch: dict[str, Tensor]) -> tuple[Tensor | None, Tensor]:
        if not self.options.drops_mask:
            return super().mask_and_positions(batch)
        ids = batch["input_ids"]
        return None, torch.arange(ids.shape[1], device=ids.device)[None]

    def text_losses(
        self,
        model,
        run: Callable[..., object],
        batch: dict[str, Tensor],
        items: Sequence[Tokenized],
        loss: str,
        candidate_ids: Int[Tensor, "c"] | None = None,
    ) -> tuple[Float[Tensor, "b"], object]:
        return text_losses(model, run, batch, items, loss, candidate_ids, self.options.compile)
