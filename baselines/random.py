"""Random scores: the floor every method must beat, seeded per query so batching never changes a row."""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from probes.methods import AttributionContext, Method, register


@register("random")
class RandomScores(Method):
    """Uniform random scores, one independent seeded stream per (seed, query id).

    Args:
        seed: the base seed; a query's row depends only on it and the query id.
    """

    def __init__(self, seed: int = 0):
        super().__init__(seed=seed)
        self.seed = seed

    def prepare(self, ctx: AttributionContext) -> None:
        self.n_docs = len(ctx.corpus)

    def score(self, query_ids: Int[Tensor, "q"]) -> Float[Tensor, "q n"]:
        out = torch.empty(len(query_ids), self.n_docs)
        for row, qid in enumerate(query_ids.tolist()):
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + qid)
            out[row] = torch.rand(self.n_docs, generator=generator)
        return out
