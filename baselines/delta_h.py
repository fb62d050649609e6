"""Δh similarity: per-layer similarity of what fine-tuning changed in the hidden states, h^new - h^old."""

from __future__ import annotations

from jaxtyping import Float
from torch import Tensor

from baselines.base import AttributionContext, register
from baselines.feature_method import FeatureMethod, apply_preset


def delta_hidden(store, side: str, pooling: str) -> Float[Tensor, "b l d"]:
    """Pooled ``h^new - h^old`` of every text on one side ("docs" or "queries") of the FeatureStore."""
    return store.hidden("new", side, pooling) - store.hidden("old", side, pooling)


@register("delta_h")
class DeltaH(FeatureMethod):
    """Similarity of ``Δh_l(query)`` and ``Δh_l(doc)`` with ``Δh = h^new - h^old``, aggregated over layers.

    With ``f_old == f_new`` every Δh is zero and every score 0 (never NaN); ties are left to the metrics
    (document index order). ``normalize="center"`` removes Δh's context-independent part (its mean over the
    documents, resp. over all queries) before the cosine.

    Args:
        preset: None (use the knobs), "seed" (the seed plan's literal setting) or "reference" (the reference
            experiments' Δh-similarity script); see `baselines.feature_method.presets`.
        reference_layer: "last" or "middle", for preset="reference".
        **knobs: FeatureMethod's (pooling, layers, similarity, normalize, aggregate, ...).
    """

    def __init__(self, preset: str | None = None, reference_layer: str = "last", **knobs):
        knobs = apply_preset("delta_h", preset, knobs, reference_layer)
        super().__init__(preset=str(preset), reference_layer=reference_layer, **knobs)

    def features(self, ctx: AttributionContext) -> tuple[Float[Tensor, "n l d"], Float[Tensor, "q l d"]]:
        store, s = ctx.require("features", self.name), self.settings
        return delta_hidden(store, "docs", s["doc_pooling"]), delta_hidden(
            store, "queries", s["query_pooling"]
        )
