"""The base of the feature-similarity methods: pooled [l, d] features scored with the shared layer knobs."""

from __future__ import annotations

import abc

from jaxtyping import Float, Int
from torch import Tensor

from baselines.base import AttributionContext, Method, check_choice
from baselines.layers import LayerScorer

POOLINGS = ("last", "mean", "span")
KNOB_DEFAULTS = dict(
    layers="all",
    query_pooling="last",
    doc_pooling="last",
    similarity="cosine",
    normalize="none",
    aggregate="mean",
)


class FeatureMethod(Method):
    """A method scoring by per-layer similarity of pooled ``[l, d]`` features of queries and documents.

    Subclasses implement ``features``; the knobs (see `baselines.layers.LayerScorer`) are shared by all.

    Args:
        query_pooling: "last" (the position predicting the answer), "mean" (all real tokens), "span" (answer).
        doc_pooling: "last", "mean" (all real tokens, BOS included) or "span" (same as mean for documents).
        layers, similarity, normalize, aggregate, topk, fit_steps, chunk_size: see LayerScorer.
    """

    def __init__(
        self,
        *,
        query_pooling="last",
        doc_pooling="last",
        layers="all",
        similarity="cosine",
        normalize="none",
        aggregate="mean",
        topk=3,
        fit_steps=300,
        chunk_size=4096,
        **settings,
    ):
        for option, value in (("query_pooling", query_pooling), ("doc_pooling", doc_pooling)):
            check_choice(self.name, option, value, POOLINGS)
        try:
            self.scorer = LayerScorer(layers, similarity, normalize, aggregate, topk, fit_steps, chunk_size)
        except ValueError as err:
            raise ValueError(f"method {self.name!r}: {err}") from None
        super().__init__(
            **settings,
            query_pooling=query_pooling,
            doc_pooling=doc_pooling,
            layers=layers,
            similarity=similarity,
            normalize=normalize,
            aggregate=aggregate,
            topk=topk,
            fit_steps=fit_steps,
            chunk_size=chunk_size,
        )

    @abc.abstractmethod
    def features(self, ctx: AttributionContext) -> tuple[Float[Tensor, "n l d"], Float[Tensor, "q l d"]]:
        """(document features, features of ALL ctx.queries in order)."""

    def prepare(self, ctx: AttributionContext) -> None:
        docs, queries = self.features(ctx)
        if len(queries) != len(ctx.queries) or len(docs) != len(ctx.corpus):
            raise ValueError(
                f"method {self.name!r}: got features for {len(queries)} queries and {len(docs)} documents,"
                f" but the context has {len(ctx.queries)} queries and {len(ctx.corpus)} documents"
            )
        learned = self.scorer.aggregate == "learned"
        self.queries = queries
        # the layer weights see the validation queries' features and relevance, nothing else
        self.scorer.fit(
            docs,
            queries[ctx.val_ids] if learned else None,
            ctx.val_relevant if learned else None,
            device=ctx.device,
        )

    def score(self, query_ids: Int[Tensor, "q"]) -> Float[Tensor, "q n"]:
        return self.scorer.score(self.queries[query_ids])


def reference_knobs(method: str, preset: str | None, reference_layer: str, knobs: dict) -> dict:
    """``knobs`` with the reference preset applied: the reference scripts' layer ("last" or "middle"),
    queries pooled at the last token, documents by the mean over all real tokens (BOS included), cosine."""
    if preset is None:
        return knobs
    check_choice(method, "preset", preset, ("reference",))
    check_choice(method, "reference_layer", reference_layer, ("last", "middle"))
    fixed = dict(
        layers=reference_layer,
        query_pooling="last",
        doc_pooling="mean",
        similarity="cosine",
        normalize="none",
        aggregate="mean",
    )
    for key, value in fixed.items():
        if knobs[key] not in (KNOB_DEFAULTS[key], value):
            raise ValueError(
                f"method {method!r}: preset='reference' fixes {key}={value!r}; drop {key}={knobs[key]!r}"
            )
    return {**knobs, **fixed}


def gradient_doc_pooling(method: str, doc_pooling: str) -> str:
    """``doc_pooling`` for a method using document gradients, refusing "last": a document's last token
    predicts nothing under its own LM loss, so its gradient there is exactly zero (every score would be 0)."""
    if doc_pooling == "last":
        raise ValueError(
            f"method {method!r}: doc_pooling='last' gives all-zero document gradients (the last "
            "token predicts nothing under the document's own LM loss); use 'mean' (the default)"
        )
    return doc_pooling
