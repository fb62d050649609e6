"""GradSim: similarity of randomly projected per-example parameter gradients of f_new (influence family)."""

from __future__ import annotations

import re

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from baselines.base import QUERY_LOSSES, AttributionContext, Method, check_choice, register
from baselines.layers import NORMALISATIONS, SIMILARITIES, LayerScorer
from probes.lm.example_grads import (
    PROJECTIONS,
    KroneckerProjection,
    RandomProjection,
    batch_example_gradients,
    batch_projected_gradients,
    owners,
)
from probes.lm.features import query_inputs
from probes.lm.scoring import collate, length_batches, pad_id, tokenize


@register("grad_sim")
class GradSim(Method):
    """Cosine (or dot) of per-example parameter gradients of f_new, randomly projected to ``projection_dim``.

    Documents use their own LM loss, queries the answer loss. Per-example gradients come from one batched
    backward pass per ``batch_size`` texts and are projected at once, so the full gradient never sits in
    memory for more than one batch. Documents are done in ``prepare``; a query the first time it is scored.

    Args:
        projection_dim: dimension P of the random projection; 0 or None = the exact full gradient.
        projection: "sparse" (count sketch, cost independent of P), "rademacher" or "gaussian" (dense), all
            of the exact per-example gradient; or "kronecker" (Linear weights only, P = k x k), which never
            forms it: the one that runs at 1B scale (see `probes.lm.example_grads.KroneckerProjection`).
        seed: seed of the projection.
        loss: the query loss, "ce" or "margin".
        similarity: "cosine" or "dot".
        normalize: "none", "zscore" or "whiten" of the projected gradients, fitted on the documents.
        param_filter: regular expression; only parameters whose name it matches (re.search) are used.
        batch_size: examples whose gradients are projected together.
        max_tokens: also cap a batch at this many padded tokens (longest text x texts; see
            `probes.lm.scoring.length_batches`); null = no cap. The exact projections hold ``batch_size``
            whole gradients, the Kronecker one only the activations of one forward and backward: at 1B it
            runs batches as large as the gradient feature pass's.
        cache_mb: keep the projection matrix in memory when it fits this many MiB.
        chunk_size: documents scored at once.
    """

    def __init__(
        self,
        projection_dim: int | None = 256,
        projection: str = "sparse",
        seed: int = 0,
        loss: str = "ce",
        similarity: str = "cosine",
        normalize: str = "none",
        param_filter: str | None = None,
        batch_size: int = 32,
        max_tokens: int | None = None,
        cache_mb: int | float = 512,
        chunk_size: int = 4096,
    ):
        for option, value, choices in (
            ("projection", projection, (*PROJECTIONS, "kronecker")),
            ("loss", loss, QUERY_LOSSES),
            ("similarity", similarity, SIMILARITIES),
            ("normalize", normalize, NORMALISATIONS),
        ):
            check_choice("grad_sim", option, value, choices)
        if (projection_dim or 0) < 0 or batch_size < 1 or (max_tokens is not None and max_tokens < 1):
            raise ValueError(
                f"method 'grad_sim': projection_dim ({projection_dim}) must be >= 0 (0/None = exact), "
                f"batch_size ({batch_size}) >= 1 and max_tokens ({max_tokens}) >= 1 or None"
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
            max_tokens=max_tokens,
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
        self.holders = owners(pair.new, names)
        if s["projection"] == "kronecker":
            if not dim:
                raise ValueError("method 'grad_sim': projection 'kronecker' needs a projection_dim (k x k)")
            self.projection = KroneckerProjection(self.holders, dim, s["seed"])
        else:
            self.projection = (
                RandomProjection(n_params, dim, s["projection"], s["seed"], s["cache_mb"]) if dim else None
            )
        self.pair, self.candidate_ids, self.device = pair, ctx.candidate_ids, ctx.device
        self.query_texts, self.query_targets = query_inputs(ctx.queries)
        self.queries: dict[int, Tensor] = {}  # query id -> features, computed when a query is first scored
        docs = self._features(ctx.corpus.texts, None, "lm", "grad_sim docs")
        self.scorer.fit(docs[:, None], device=ctx.device)

    def _features(self, texts, targets, loss, desc) -> Tensor:
        """Projected (or exact) per-example gradients of ``texts``, ``batch_size`` texts at a time."""
        pair, items = self.pair, tokenize(self.pair.tokenizer, texts, targets)
        out = None
        s = self.settings
        batches = length_batches([len(i.ids) for i in items], s["batch_size"], s["max_tokens"])
        for index in tqdm(batches, desc=desc, leave=False, disable=len(batches) < 4):
            chunk = [items[i] for i in index]
            batch = collate(chunk, pad_id(pair.tokenizer), "right", self.device)
            if isinstance(self.projection, KroneckerProjection):
                rows = batch_projected_gradients(
                    pair.new, batch, chunk, loss, self.projection, self.candidate_ids
                ).cpu()
            else:
                names = list(self.holders)
                grads = batch_example_gradients(
                    pair.new, batch, chunk, loss, names, self.candidate_ids, self.holders
                )
                rows = (self.projection(grads) if self.projection is not None else torch.cat(grads, 1)).cpu()
            if out is None:
                out = torch.empty(len(items), rows.shape[1], dtype=rows.dtype)
            out[index] = rows
        return out

    def score(self, query_ids: Int[Tensor, "q"]) -> Float[Tensor, "q n"]:
        ids = query_ids.tolist()
        new = sorted(set(ids) - set(self.queries))
        if new:
            texts, targets = [self.query_texts[i] for i in new], [self.query_targets[i] for i in new]
            rows = self._features(texts, targets, self.settings["loss"], "grad_sim queries")
            self.queries.update(zip(new, rows, strict=True))
        return self.scorer.score(torch.stack([self.queries[i] for i in ids])[:, None])
