"""Pooling a padded batch of per-token vectors to one vector per text: last token, all tokens, or a span."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from probes.lm.scoring import Tokenized

POOLINGS = ("last", "mean", "span")


def check_pooling(pooling: str) -> str:
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    return pooling


def token_weights(item: Tokenized, pooling: str) -> list[tuple[int, float]]:
    """(token index, weight) pairs that pool one text, indices counted from its first real token.

    last: the token before the target (the position that predicts it), else the last token;
    mean: every real token (BOS included where the tokenizer adds one);
    span: the target's tokens, or every real token for a text without a target.
    """
    n = len(item.ids)
    if pooling == "last":
        return [((item.target[0] if item.target else n) - 1, 1.0)]
    start, end = item.target if pooling == "span" and item.target else (0, n)
    return [(i, 1.0 / (end - start)) for i in range(start, end)]


class Pooler:
    """The pooling of one batch, built once and applied to every layer's [b s d] tensor.

    Only the selected positions are read (a gather, then a weighted index_add in ``dtype``), so padded
    positions never enter the result and a mean in bf16 is still accumulated in fp32.
    """

    def __init__(
        self,
        items: Sequence[Tokenized],
        offset: Int[Tensor, "b"],
        pooling: str,
        dtype: torch.dtype = torch.float32,
    ):
        check_pooling(pooling)
        rows, cols, weights = [], [], []
        for row, (item, start) in enumerate(zip(items, offset.tolist(), strict=True)):
            for col, weight in token_weights(item, pooling):
                rows.append(row)
                cols.append(start + col)
                weights.append(weight)
        device = offset.device
        self.rows = torch.tensor(rows, dtype=torch.long, device=device)
        self.cols = torch.tensor(cols, dtype=torch.long, device=device)
        self.weights = torch.tensor(weights, dtype=dtype, device=device)[:, None]
        self.batch, self.dtype = len(items), dtype
        self.single = len(rows) == len(items)  # one position per row ("last"): a plain gather

    def __call__(self, states: Float[Tensor, "b s d"]) -> Float[Tensor, "b d"]:
        picked = states[self.rows, self.cols].to(self.dtype)
        if self.single:
            return picked
        out = torch.zeros(self.batch, states.shape[-1], dtype=self.dtype, device=states.device)
        return out.index_add_(0, self.rows, picked * self.weights)
