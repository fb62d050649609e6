"""ActGrad: per-layer similarity of loss gradients w.r.t. f_new's hidden states (one model, no Hessian)."""

from __future__ import annotations

from jaxtyping import Float
from torch import Tensor

from baselines.base import QUERY_LOSSES, AttributionContext, check_choice, register
from baselines.feature_method import FeatureMethod, gradient_doc_pooling


@register("act_grad")
class ActGrad(FeatureMethod):
    """Similarity of ``g_l = dL/dh_l`` at f_new for a query (answer loss) and a document (its own LM loss).

    Args:
        loss: the query loss: "ce" (cross-entropy of the answer) or "margin" (minus the correct-logit margin
            against the other candidate answers).
        doc_pooling: "mean" (default) or "span" over the document's tokens ("last" is refused: zero gradient).
        **knobs: FeatureMethod's (query pooling, layers, similarity, normalize, aggregate, ...).
    """

    def __init__(self, loss: str = "ce", doc_pooling: str = "mean", **knobs):
        check_choice("act_grad", "loss", loss, QUERY_LOSSES)
        super().__init__(loss=loss, doc_pooling=gradient_doc_pooling("act_grad", doc_pooling), **knobs)

    def features(self, ctx: AttributionContext) -> tuple[Float[Tensor, "n l d"], Float[Tensor, "q l d"]]:
        store, s = ctx.require("features", self.name), self.settings
        docs = store.grads("docs", s["doc_pooling"], loss="lm")
        return docs, store.grads("queries", s["query_pooling"], loss=s["loss"])
