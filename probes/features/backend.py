"""How a pass runs: `PassOptions`, and `Pass`, the plain "reference" computation that `pass_for` gives or
overrides with the "fast" one (`probes.features.fast`, the same numbers)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from probes.features.losses import text_losses
from probes.lm.scoring import Tokenized

# "reference": every batch runs with its attention mask and position ids, the model's full logits, and each
# loss as the plain mean of its cross-entropies, differentiated by autograd; nothing is compiled.
# "fast": right-padded batches drop the attention mask (no real token sees the pads after it), logits exist
# only where a loss reads them, the "lm" loss runs in chunks with its gradient computed in the same pass
# (`probes.features.fast.losses.HeadNLL`), and with ``compile`` the decoder blocks run compiled
# (`probes.features.fast.compiled`). The passes that differentiate through a replaced hidden state or hook the
# model's modules (integrated gradients, per-example gradients, EK-FAC, TrackStar) keep the attention mask.
BACKENDS = ("reference", "fast")
PADDING_SIDES = ("right", "left")


@dataclass(frozen=True)
class PassOptions:
    """The options of one pass (features, losses, gradients, patching) that do not change its result:
    ``backend`` (see BACKENDS), ``compile`` (fast only), the ``padding_side`` of its batches, and the
    ``dtype`` of the pooled rows (None: float64 for a float64 model, else float32)."""

    backend: str = "fast"
    compile: bool = False
    padding_side: str = "right"
    dtype: torch.dtype | None = None

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.padding_side not in PADDING_SIDES:
            raise ValueError(f"padding_side must be one of {PADDING_SIDES}, got {self.padding_side!r}")
        if self.compile and self.backend != "fast":
            raise ValueError("compile=True runs the fast backend; the reference backend runs eager")

    @property
    def fast(self) -> bool:
        return self.backend == "fast"

    @property
    def drops_mask(self) -> bool:
        """Whether batches run without their attention mask (fast, right-padded)."""
        return self.fast and self.padding_side == "right"


DEFAULT = PassOptions()


class Pass:
    """The reference computation of a pass under ``options``: every batch with its attention mask and position
    ids, each loss from the model's full logits, nothing compiled. `probes.features.fast.passes.FastPass`
    overrides each step with its fast version; `pass_for` picks one."""

    def __init__(self, options: PassOptions = DEFAULT):
        self.options = options

    def blocks(self, model) -> AbstractContextManager:
        """A context inside which ``model``'s decoder blocks run as this pass runs them."""
        return nullcontext()

    def forward(self, model, batch: dict[str, Tensor], **kwargs):
        """``model`` on ``batch`` (its ``input_ids`` unless ``inputs_embeds`` is given), all hidden states."""
        if "inputs_embeds" not in kwargs:
            kwargs["input_ids"] = batch["input_ids"]
        kwargs.setdefault("output_hidden_states", True)
        mask, positions = self.mask_and_positions(batch)
        return model(attention_mask=mask, position_ids=positions, use_cache=False, **kwargs)

    def mask_and_positions(self, batch: dict[str, Tensor]) -> tuple[Tensor | None, Tensor]:
        """The attention mask and position ids ``forward`` runs ``batch`` with."""
        return batch["attention_mask"], batch["position_ids"]

    def text_losses(
        self,
        model,
        run: Callable[..., object],
        batch: dict[str, Tensor],
        items: Sequence[Tokenized],
        loss: str,
        candidate_ids: Int[Tensor, "c"] | None = None,
    ) -> tuple[Float[Tensor, "b"], object]:
        """Each text's own loss from one call ``run(**kwargs)`` of ``model`` (`probes.features.losses`)."""
        return text_losses(model, run, batch, items, loss, candidate_ids)


def pass_for(options: PassOptions = DEFAULT) -> Pass:
    """The pass ``options`` name: the reference `Pass`, or the fast one (imported on first use)."""
    if not options.fast:
        return Pass(options)
    from probes.features.fast.passes import FastPass

    return FastPass(options)
