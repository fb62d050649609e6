"""How a feature pass runs: the plain "reference" computation or the "fast" one (the same numbers)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

# "reference": every batch runs with its attention mask and position ids, the model's full logits, and each
# loss as the plain mean of its cross-entropies, differentiated by autograd; nothing is compiled.
# "fast": right-padded batches drop the attention mask (no real token sees the pads after it), logits exist
# only where a loss reads them, the "lm" loss runs in chunks with its gradient computed in the same pass
# (`probes.lm.losses.HeadNLL`), and with ``compile`` the decoder blocks run compiled (`probes.lm.compiled`).
BACKENDS = ("reference", "fast")
PADDING_SIDES = ("right", "left")


@dataclass(frozen=True)
class PassOptions:
    """The options of one feature pass that do not change its result: ``backend`` (see BACKENDS),
    ``compile`` (fast only), the ``padding_side`` of its batches, and the ``dtype`` of the pooled rows
    (None: float64 for a float64 model, else float32)."""

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
