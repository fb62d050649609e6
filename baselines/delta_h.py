"""Δh similarity: per-layer similarity of what fine-tuning changed in the hidden states, h^new - h^old."""

from __future__ import annotations

from jaxtyping import Float
from torch import Tensor

from baselines.ops.feature_method import HiddenStateMethod
from probes.methods import register


def delta_hidden(store, side: str, pooling: str) -> Float[Tensor, "b l d"]:
    """Pooled ``h^new - h^old`` of every text on one side ("docs" or "queries") of the FeatureStore."""
    return store.hidden("new", side, pooling) - store.hidden("old", side, pooling)


@register("delta_h")
class DeltaH(HiddenStateMethod):
    """Similarity of ``Δh_l(query)`` and ``Δh_l(doc)`` with ``Δh = h^new - h^old``, aggregated over layers.

    With ``f_old == f_new`` every Δh is zero and every score 0 (never NaN); ties are left to the metrics
    (document index order). ``normalize="center"`` removes Δh's context-independent part (its mean over the
    documents, resp. over all queries) before the cosine. Options: see
    `baselines.ops.feature_method.HiddenStateMethod` ("reference" preset: the reference Δh-similarity script).
    """

    def hidden(self, store, side: str, pooling: str) -> Float[Tensor, "b l d"]:
        return delta_hidden(store, side, pooling)
