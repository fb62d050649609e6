"""GradSim: similarity of randomly projected per-example parameter gradients of f_new (influence family)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator

import torch
from jaxtyping import Float, Int
from torch import Tensor
from torch.func import functional_call
from tqdm.auto import tqdm

from baselines.base import QUERY_LOSSES, AttributionContext, Method, check_choice, register
from baselines.layers import NORMALISATIONS, SIMILARITIES, LayerScorer
from probes.lm.features import query_inputs
from probes.lm.interpolate import text_loss
from probes.lm.scoring import collate, pad_id, tokenize

PROJECTIONS = ("rademacher", "gaussian")
BLOCK_ROWS = 4096  # parameter coordinates per generated block: the matrix depends on (seed, dim, kind) only


class RandomProjection:
    """A seeded ``[N, P]`` random matrix (entries ±1 or N(0, 1), scaled by 1/sqrt(P)) applied block by block.

    Blocks of ``BLOCK_ROWS`` rows come from their own seeded generator, so the full matrix never has to exist;
    they are kept in memory when the whole matrix fits ``cache_mb`` (Rademacher as int8), else regenerated.
    """

    def __init__(
        self, n_params: int, dim: int, kind: str = "rademacher", seed: int = 0, cache_mb: int | float = 512
    ):
        self.n_params, self.dim, self.kind, self.seed = n_params, dim, kind, seed
        per_entry = 1 if kind == "rademacher" else 4
        self.cache: dict[int, Tensor] | None = {} if n_params * dim * per_entry <= cache_mb * 2**20 else None

    def block(self, index: int) -> Tensor:
        if self.cache is not None and index in self.cache:
            return self.cache[index]
        rows = min(BLOCK_ROWS, self.n_params - index * BLOCK_ROWS)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        if self.kind == "rademacher":
            out = torch.randint(0, 2, (rows, self.dim), generator=generator, dtype=torch.int8) * 2 - 1
        else:
            out = torch.randn(rows, self.dim, generator=generator)
        if self.cache is not None:
            self.cache[index] = out
        return out

    def __call__(self, grads: Float[Tensor, "b params"]) -> Float[Tensor, "b proj"]:
        out = torch.zeros(grads.shape[0], self.dim, dtype=grads.dtype, device=grads.device)
        for index in range(math.ceil(self.n_params / BLOCK_ROWS)):
            rows = slice(index * BLOCK_ROWS, (index + 1) * BLOCK_ROWS)
            out += grads[:, rows] @ self.block(index).to(grads.device, grads.dtype)
        return out / math.sqrt(self.dim)


def example_gradients(
    model, tokenizer, texts, targets, loss: str, candidate_ids, names: list[str], desc: str
) -> Iterator[Float[Tensor, " params"]]:
    """Each text's flattened gradient of its own loss w.r.t. the named parameters of ``model``, one at a time
    (a batch of one needs no padding; the frozen model is never modified: parameters go in through
    ``functional_call``)."""
    named = dict(model.named_parameters())
    leaves = {name: named[name].detach().requires_grad_(True) for name in names}
    device = next(model.parameters()).device

    def forward(**kwargs):
        return functional_call(model, leaves, (), kwargs)

    for item in tqdm(tokenize(tokenizer, texts, targets), desc=desc, leave=False):
        batch = collate([item], pad_id(tokenizer), "right", device)
        with torch.enable_grad():
            value = text_loss(forward, batch, [item], loss, candidate_ids).sum()
            grads = torch.autograd.grad(value, list(leaves.values()), allow_unused=True)
        yield torch.cat(
            [
                (torch.zeros_like(p) if g is None else g).flatten()
                for g, p in zip(grads, leaves.values(), strict=True)
            ]
        )


@register("grad_sim")
class GradSim(Method):
    """Cosine (or dot) of per-example parameter gradients of f_new, randomly projected to ``projection_dim``.

    Documents use their own LM loss, queries the answer loss. Gradients are projected in batches of
    ``batch_size`` examples, so the full gradient never sits in memory for more than one batch.

    Args:
        projection_dim: dimension P of the random projection; 0 or None = the exact full gradient.
        projection: "rademacher" or "gaussian".
        seed: seed of the projection.
        loss: the query loss, "ce" or "margin".
        similarity: "cosine" or "dot".
        normalize: "none", "zscore" or "whiten" of the projected gradients, fitted on the documents.
        param_filter: regular expression; only parameters whose name it matches (re.search) are used.
        batch_size: examples whose gradients are projected together.
        cache_mb: keep the projection matrix in memory when it fits this many MiB.
        chunk_size: documents scored at once.
    """

    def __init__(
        self,
        projection_dim: int | None = 256,
        projection: str = "rademacher",
        seed: int = 0,
        loss: str = "ce",
        similarity: str = "cosine",
        normalize: str = "none",
        param_filter: str | None = None,
        batch_size: int = 32,
        cache_mb: int | float = 512,
        chunk_size: int = 4096,
    ):
        for option, value, choices in (
            ("projection", projection, PROJECTIONS),
            ("loss", loss, QUERY_LOSSES),
            ("similarity", similarity, SIMILARITIES),
            ("normalize", normalize, NORMALISATIONS),
        ):
            check_choice("grad_sim", option, value, choices)
        if (projection_dim or 0) < 0 or batch_size < 1:
            raise ValueError(
                f"method 'grad_sim': projection_dim ({projection_dim}) must be >= 0 (0/None = exact) "
                f"and batch_size ({batch_size}) >= 1"
            )
        super().__init__(
            projection_dim=projection_dim or 0,
            projection=projection,
            seed=seed,
            loss=loss,
            similarity=similarity,
            normalize=normalize,
            param_filter=str(param_filter),
            batch_size=batch_size,
            cache_mb=cache_mb,
            chunk_size=chunk_size,
        )
        self.param_filter = param_filter
        self.scorer = LayerScorer("all", similarity, normalize, "mean", chunk_size=chunk_size)

    def prepare(self, ctx: AttributionContext) -> None:
        pair, s = ctx.require("pair", self.name), self.settings
        named = dict(pair.new.named_parameters())
        names = [n for n in named if self.param_filter is None or re.search(self.param_filter, n)]
        if not names:
            raise ValueError(
                f"method 'grad_sim': param_filter={self.param_filter!r} matches no parameter of "
                f"f_new; its parameters are e.g. {list(named)[:5]}"
            )
        n_params = sum(named[n].numel() for n in names)
        dim = s["projection_dim"]
        self.projection = (
            RandomProjection(n_params, dim, s["projection"], s["seed"], s["cache_mb"]) if dim else None
        )
        texts, targets = query_inputs(ctx.queries)
        sides = (
            (ctx.corpus.texts, None, "lm", "grad_sim docs"),
            (texts, targets, s["loss"], "grad_sim queries"),
        )
        docs, queries = (self._features(pair, names, ctx.candidate_ids, *side) for side in sides)
        self.queries = queries
        self.scorer.fit(docs[:, None])

    def _features(self, pair, names, candidate_ids, texts, targets, loss, desc) -> Tensor:
        rows, out = [], []
        stream = example_gradients(pair.new, pair.tokenizer, texts, targets, loss, candidate_ids, names, desc)
        for i, grad in enumerate(stream, start=1):
            rows.append(grad)
            if len(rows) == self.settings["batch_size"] or i == len(texts):
                batch = torch.stack(rows)
                out.append(self.projection(batch) if self.projection is not None else batch)
                rows = []
        return torch.cat(out)

    def score(self, query_ids: Int[Tensor, "q"]) -> Float[Tensor, "q n"]:
        return self.scorer.score(self.queries[query_ids][:, None])
