"""RepSim: per-layer similarity of f_new's hidden states of a query and of a training document."""

from __future__ import annotations

from jaxtyping import Float
from torch import Tensor

from baselines.base import AttributionContext, register
from baselines.feature_method import FeatureMethod, apply_preset


@register("repsim")
class RepSim(FeatureMethod):
    """Similarity of ``h_l^new(query)`` and ``h_l^new(doc)``, per layer, aggregated over layers.

    Args:
        preset: None (use the knobs), "seed" (the seed plan's literal setting) or "reference" (the reference
            experiments' RepSim script); see `baselines.feature_method.presets`.
        reference_layer: "last" or "middle", for preset="reference".
        **knobs: FeatureMethod's (pooling, layers, similarity, normalize, aggregate, ...).
    """

    def __init__(self, preset: str | None = None, reference_layer: str = "last", **knobs):
        knobs = apply_preset("repsim", preset, knobs, reference_layer)
        super().__init__(preset=str(preset), reference_layer=reference_layer, **knobs)

    def features(self, ctx: AttributionContext) -> tuple[Float[Tensor, "n l d"], Float[Tensor, "q l d"]]:
        store, s = ctx.require("features", self.name), self.settings
        return store.hidden("new", "docs", s["doc_pooling"]), store.hidden(
            "new", "queries", s["query_pooling"]
        )
