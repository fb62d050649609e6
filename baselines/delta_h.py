"""Δh similarity: per-layer similarity of what fine-tuning changed in the hidden states, h^new - h^old."""

from __future__ import annotations

from jaxtyping import Float
from torch import Tensor

from baselines.base import AttributionContext, register
from baselines.feature_method import KNOB_DEFAULTS, FeatureMethod, reference_knobs


def delta_hidden(store, side: str, pooling: str) -> Float[Tensor, "b l d"]:
    """Pooled ``h^new - h^old`` of every text on one side ("docs" or "queries") of the FeatureStore."""
    return store.hidden("new", side, pooling) - store.hidden("old", side, pooling)


@register("delta_h")
class DeltaH(FeatureMethod):
    """Similarity of ``Δh_l(query)`` and ``Δh_l(doc)`` with ``Δh = h^new - h^old``, aggregated over layers.

    ``preset="reference"`` reproduces the reference experiments' Δh-similarity script: one hidden state (the
    last, or ``num_hidden_layers // 2`` with ``reference_layer="middle"``), queries pooled at their last
    prompt token, documents by the mean over all real tokens including BOS, cosine, no normalisation. With
    ``f_old == f_new`` every Δh is zero and every score 0 (never NaN); ties are left to the metrics (document
    index order).

    Args:
        preset: None (use the knobs) or "reference".
        reference_layer: "last" or "middle", for preset="reference".
        **knobs: FeatureMethod's (pooling, layers, similarity, normalize, aggregate, ...).
    """

    def __init__(self, preset: str | None = None, reference_layer: str = "last", **knobs):
        knobs = reference_knobs("delta_h", preset, reference_layer, {**KNOB_DEFAULTS, **knobs})
        super().__init__(preset=str(preset), reference_layer=reference_layer, **knobs)

    def features(self, ctx: AttributionContext) -> tuple[Float[Tensor, "n l d"], Float[Tensor, "q l d"]]:
        store, s = ctx.require("features", self.name), self.settings
        return delta_hidden(store, "docs", s["doc_pooling"]), delta_hidden(
            store, "queries", s["query_pooling"]
        )
