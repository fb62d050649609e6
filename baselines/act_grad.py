"""ActGrad: per-layer similarity of loss gradients w.r.t. f_new's hidden states (one model, no Hessian)."""

from __future__ import annotations

from jaxtyping import Float
from torch import Tensor

from baselines.ops.feature_method import FeatureMethod, apply_preset
from baselines.ops.queries import QUERY_LOSSES
from probes.methods import AttributionContext, check_choice, register


@register("act_grad")
class ActGrad(FeatureMethod):
    """Similarity of ``g_l = dL/dh_l`` at f_new for a query (answer loss) and a document (its own LM loss).

    Structurally zero settings are refused: ``doc_pooling="last"`` (a document's last token predicts
    nothing) and ``query_pooling="span"`` (the answer loss is read before the answer).

    Args:
        loss: the query loss: "ce" (cross-entropy of the answer) or "margin" (minus the correct-logit margin
            against the other candidate answers).
        preset: None (use the knobs) or "seed" (the seed plan's literal setting, documents' gradients at
            their second-to-last token; see `baselines.ops.feature_method.presets`).
        **knobs: FeatureMethod's (pooling, layers, similarity, normalize, aggregate, ...).
    """

    def __init__(self, loss: str = "ce", preset: str | None = None, **knobs):
        check_choice("act_grad", "loss", loss, QUERY_LOSSES)
        knobs = apply_preset("act_grad", preset, knobs)
        super().__init__(loss=loss, preset=str(preset), **knobs)

    def features(self, ctx: AttributionContext) -> tuple[Float[Tensor, "n l d"], Float[Tensor, "q l d"]]:
        store, s = ctx.require("features", self.name), self.settings
        docs = store.grads("docs", s["doc_pooling"], loss="lm")
        return docs, store.grads("queries", s["query_pooling"], loss=s["loss"])
