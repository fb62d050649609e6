"""Shared knobs of feature-similarity methods: layers, normalisation, per-layer similarity, aggregation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor

from probes.lm.layer_ids import check_layer_spec, hidden_state_ids

SIMILARITIES = ("cosine", "dot")
NORMALISATIONS = ("none", "zscore", "whiten")
# "center" needs every query's features at once (their mean is removed from each): the feature methods' only
FEATURE_NORMALISATIONS = (*NORMALISATIONS, "center")
AGGREGATIONS = ("mean", "topk", "learned")
EPS = 1e-12


class Normaliser:
    """Per-layer feature normalisation fitted on the training documents: none, centring, z-score, or ZCA
    whitening.

    "center" removes a context-independent part (a large share of Δh: Minder et al. 2025) before the cosine:
    from documents their mean over the corpus, from queries their mean over ALL queries of the context (given
    to ``fit``; queries are pooled differently from documents, so the document mean is not theirs to lose;
    unsupervised, no relevance is read). z-score and whitening use the document mean and scale on both sides.
    """

    def __init__(self, mode: str = "none", shrinkage: float = 1e-3):
        self.mode, self.shrinkage = mode, shrinkage

    def fit(self, docs: Float[Tensor, "n l d"], queries: Float[Tensor, "Q l d"] | None = None) -> Normaliser:
        if self.mode == "none":
            return self
        self.mean = docs.mean(0)
        if self.mode == "center":
            if queries is None or len(queries) == 0:
                raise ValueError("normalize='center' needs every query's features (their mean is removed)")
            self.query_mean = queries.to(docs.device).mean(0)
            return self
        centred = (docs - self.mean).double()
        if self.mode == "zscore":
            # a dimension (nearly) constant over the documents carries no information: zero it, not blow it up
            std = centred.std(0, unbiased=False)
            informative = std > 1e-6 * std.mean(-1, keepdim=True)
            self.scale = torch.where(informative, std.reciprocal(), torch.zeros_like(std)).to(docs.dtype)
            return self
        # whitening: W = V diag((lambda + shrink * mean(lambda))^-1/2) V^T per layer; the shrinkage keeps
        # rank-deficient covariances (fewer documents than dimensions) invertible
        cov = torch.einsum("nld,nle->lde", centred, centred) / max(docs.shape[0] - 1, 1)
        values, vectors = torch.linalg.eigh(cov)
        values = values.clamp_min(0)
        floor = self.shrinkage * values.mean(-1, keepdim=True) + 1e-12
        self.scale = (vectors * (values + floor).rsqrt().unsqueeze(-2)) @ vectors.transpose(-1, -2)
        self.scale = self.scale.to(docs.dtype)
        return self

    def __call__(self, x: Float[Tensor, "b l d"], queries: bool = False) -> Float[Tensor, "b l d"]:
        """``x`` normalised; ``queries``: ``x`` are query features (only "center" treats them apart)."""
        if self.mode == "none":
            return x
        if self.mode == "center":
            return x - (self.query_mean if queries else self.mean)
        if self.mode == "zscore":
            return (x - self.mean) * self.scale
        return torch.einsum("bld,lde->ble", x - self.mean, self.scale)


def layer_similarity(
    queries: Float[Tensor, "q l d"], docs: Float[Tensor, "n l d"], similarity: str = "cosine"
) -> Float[Tensor, "l q n"]:
    """Per-layer similarity of every query with every document (cosine of zero vectors is 0, never NaN)."""
    if similarity == "cosine":
        queries, docs = F.normalize(queries, dim=-1, eps=EPS), F.normalize(docs, dim=-1, eps=EPS)
    return torch.bmm(queries.transpose(0, 1), docs.permute(1, 2, 0))


def aggregate(
    sims: Float[Tensor, "l q n"],
    mode: str = "mean",
    *,
    topk: int = 3,
    weights: Float[Tensor, "l"] | None = None,
) -> Float[Tensor, "q n"]:
    """Combine per-layer similarities: their mean, the mean of the ``topk`` largest, or convex weights."""
    if mode == "mean":
        return sims.mean(0)
    if mode == "topk":
        return sims.topk(min(topk, sims.shape[0]), dim=0).values.mean(0)
    if weights is None:
        raise ValueError(
            "aggregate='learned' needs weights: call fit_layer_weights on validation relevance first"
        )
    return torch.einsum("l,lqn->qn", weights.to(sims.dtype), sims)


def fit_layer_weights(
    sims: Float[Tensor, "l q n"], relevant: Bool[Tensor, "q n"], steps: int = 300, lr: float = 0.05
) -> Float[Tensor, "l"]:
    """Convex layer weights (softmax of free logits) maximising a smooth listwise objective on val queries.

    The objective is ListNet's: cross-entropy between the relevant documents' uniform distribution and the
    softmax of the combined scores over documents, with a learned temperature (which cannot change a ranking).
    Deterministic: starts from uniform weights and uses full-batch Adam.
    """
    if sims.shape[1:] != relevant.shape:
        raise ValueError(
            f"layer weights: similarities {tuple(sims.shape[1:])} and relevance {tuple(relevant.shape)} "
            "must agree in [queries, documents]"
        )
    keep = relevant.any(1)
    if not keep.any():
        raise ValueError(
            "aggregate='learned' needs validation queries with at least one relevant document; "
            "ctx.val_relevant has none"
        )
    sims, target = sims[:, keep].detach().double(), relevant[keep].double()
    target = target / target.sum(1, keepdim=True)
    logits = torch.zeros(sims.shape[0], dtype=torch.float64, device=sims.device, requires_grad=True)
    log_temp = sims.mean(0).std().clamp_min(1e-6).log().detach().clone().requires_grad_(True)
    optimiser = torch.optim.Adam([logits, log_temp], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            optimiser.zero_grad()
            combined = torch.einsum("l,lqn->qn", logits.softmax(0), sims) / log_temp.exp()
            loss = -(target * combined.log_softmax(1)).sum(1).mean()
            loss.backward()
            optimiser.step()
    return logits.detach().softmax(0).to(sims.dtype)


class LayerScorer:
    """Scores query features against fitted document features with the shared knobs, in document chunks.

    Args:
        layers: hidden states to use (see `probes.features.extract.LAYER_NAMES`: "all" = block outputs 1..L,
            "all_with_embeddings", "middle", "last", an int or a list; 0 = embeddings), or None: every row of
            features that are not hidden states.
        similarity: "cosine" or "dot", per layer.
        normalize: "none", "center", "zscore" or "whiten", per layer, fitted on the training documents
            (see `Normaliser`; "center" also on all queries).
        aggregate: "mean", "topk" or "learned" (convex weights fitted on validation relevance only).
        topk: layers averaged by aggregate="topk".
        fit_steps: Adam steps for aggregate="learned".
        chunk_size: documents scored at once (bounds memory at layers x queries x chunk_size).
    """

    def __init__(
        self,
        layers="all",
        similarity="cosine",
        normalize="none",
        aggregate="mean",
        topk=3,
        fit_steps=300,
        chunk_size=4096,
    ):
        for option, value, choices in (
            ("similarity", similarity, SIMILARITIES),
            ("normalize", normalize, FEATURE_NORMALISATIONS),
            ("aggregate", aggregate, AGGREGATIONS),
        ):
            if value not in choices:
                raise ValueError(f"option {option}={value!r} is not one of {list(choices)}")
        if layers is not None:
            check_layer_spec(layers)
        if topk < 1 or chunk_size < 1 or fit_steps < 0:
            raise ValueError(
                f"topk ({topk}) and chunk_size ({chunk_size}) must be >= 1, fit_steps ({fit_steps}) >= 0"
            )
        self.layers, self.similarity, self.aggregate, self.topk = layers, similarity, aggregate, topk
        self.fit_steps, self.chunk_size = fit_steps, chunk_size
        self.normaliser = Normaliser(normalize)
        self.weights: Tensor | None = None

    def fit(
        self,
        docs: Float[Tensor, "n l d"],
        val_queries: Float[Tensor, "q l d"] | None = None,
        val_relevant: Bool[Tensor, "q n"] | None = None,
        device: str | torch.device | None = None,
        queries: Float[Tensor, "Q l d"] | None = None,
    ) -> LayerScorer:
        """Select layers, fit the normalisation on the documents (and, normalize="center", on ``queries``:
        all of them, no relevance) and (aggregate="learned") the weights.

        ``device`` (default: the documents'): where the fitting and every later ``score`` compute (e.g. the
        models' GPU: one CPU thread took seconds per score call on 1B features); scores come back to the CPU.
        """
        n_rows = docs.shape[1]
        self.chosen = list(range(n_rows)) if self.layers is None else hidden_state_ids(self.layers, n_rows)
        chosen = docs[:, self.chosen].to(device or docs.device)
        all_queries = None if queries is None else queries[:, self.chosen]
        self.docs = self._unit(self.normaliser.fit(chosen, all_queries)(chosen))  # ready for a dot product
        if self.aggregate == "learned":
            if val_queries is None or val_relevant is None or len(val_queries) == 0:
                raise ValueError(
                    "aggregate='learned' needs validation queries and their relevance (ctx.val_ids)"
                )
            sims = layer_similarity(self._prepare(val_queries), self.docs, "dot")
            self.weights = fit_layer_weights(sims, val_relevant.to(sims.device), self.fit_steps)
        return self

    def _unit(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=-1, eps=EPS) if self.similarity == "cosine" else x

    def _prepare(self, queries: Tensor) -> Tensor:
        return self._unit(self.normaliser(queries[:, self.chosen].to(self.docs.device), queries=True))

    def score(self, queries: Float[Tensor, "q l d"]) -> Float[Tensor, "q n"]:
        """Scores of ``queries`` against every fitted document, on the CPU."""
        q = self._prepare(queries)
        chunks = [
            aggregate(
                layer_similarity(q, self.docs[i : i + self.chunk_size], "dot"),
                self.aggregate,
                topk=self.topk,
                weights=self.weights,
            )
            for i in range(0, len(self.docs), self.chunk_size)
        ]
        return torch.cat(chunks, dim=1).cpu()
