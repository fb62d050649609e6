"""Pooling a padded batch of per-token vectors to one vector per text: one token, all tokens, or a span."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from probes.lm.scoring import Tokenized, to_device

POOLINGS = ("last", "penultimate", "mean", "span")
SINGLE = ("last", "penultimate")  # poolings that read one position per text


def check_pooling(pooling: str) -> str:
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    return pooling


def token_span(item: Tokenized, pooling: str) -> tuple[int, int]:
    """The [start, end) token range, counted from the text's first real token, that pools one text (equal
    weights).

    last: the token before the target (the position that predicts it), else the last token;
    penultimate: the second-to-last token: the last position whose prediction enters a text's own LM loss
        (a document's gradient at its last token is exactly zero);
    mean: every real token (BOS included where the tokenizer adds one);
    span: the target's tokens, or every real token for a text without a target.
    """
    n = len(item.ids)
    if pooling == "last":
        last = (item.target[0] if item.target else n) - 1
        return last, last + 1
    if pooling == "penultimate":
        return max(n - 2, 0), max(n - 1, 1)
    return item.target if pooling == "span" and item.target else (0, n)


class Pooler:
    """The pooling of one batch, built once and applied to every layer's [b s d] tensor.

    Only the selected positions are read (a gather, then a weighted index_add in ``dtype``), so padded
    positions never enter the result and a mean in bf16 is still accumulated in fp32. ``offset`` (where each
    row's real tokens start) is read on the host; the index tensors go to ``device``.
    """

    def __init__(
        self,
        items: Sequence[Tokenized],
        offset: Int[Tensor, "b"],
        pooling: str,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device | None = None,
    ):
        check_pooling(pooling)
        device = offset.device if device is None else device
        spans = torch.tensor([token_span(item, pooling) for item in items], dtype=torch.long).view(-1, 2)
        counts = spans[:, 1] - spans[:, 0]
        rows = torch.repeat_interleave(torch.arange(len(items)), counts)
        first = torch.cumsum(counts, 0) - counts  # where each row's positions start in the flat list
        cols = offset.cpu()[rows] + spans[rows, 0] + torch.arange(len(rows)) - first[rows]
        weights = (1.0 / counts.to(torch.float64))[rows].to(dtype)[:, None]
        self.rows, self.cols = to_device(rows, device), to_device(cols, device)
        self.weights = to_device(weights, device)
        self.batch, self.dtype = len(items), dtype
        self.single = pooling in SINGLE  # one position per row: a plain gather

    def __call__(self, states: Float[Tensor, "b s d"]) -> Float[Tensor, "b d"]:
        picked = states[self.rows, self.cols].to(self.dtype)
        if self.single:
            return picked
        out = torch.zeros(self.batch, states.shape[-1], dtype=self.dtype, device=states.device)
        return out.index_add_(0, self.rows, picked * self.weights)
