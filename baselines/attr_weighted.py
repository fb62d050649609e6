"""AttrWeighted: per-layer similarity of attributions a_l = Δh_l ⊙ g_l (option: integrated gradients)."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from baselines.base import QUERY_LOSSES, AttributionContext, check_choice, register
from baselines.delta_h import delta_hidden
from baselines.feature_method import FeatureMethod, gradient_doc_pooling
from baselines.layers import select_layers
from probes.lm.features import query_inputs
from probes.lm.interpolate import integrated_gradients


@register("attr_weighted")
class AttrWeighted(FeatureMethod):
    """Similarity of ``a_l = Δh̄_l ⊙ ḡ_l`` of a query and a document, aggregated over layers.

    ``Δh = h^new - h^old`` and ``g = dL/dh`` at f_new (query: answer loss; document: its own LM loss), both
    pooled as the knobs say. With ``ig_steps = K > 0``, ``ḡ_l`` is replaced by the mean of the gradient at
    K interpolated states ``h_old + (k/K) Δh`` (k = 1..K) of layer l, f_new computing everything above it:
    ``Δh̄_l ⊙ ḡ_IG`` is the K-step Riemann sum of integrated gradients (K = 1 equals the plain variant). These
    extra passes run the LM here (the FeatureStore holds only f_new's gradients), once per selected layer.

    Args:
        loss: the query loss, "ce" or "margin".
        ig_steps: 0 for the plain gradient, else the number of integrated-gradient steps K.
        ig_batch_size: texts per integrated-gradient pass (each runs all K steps at once: K x texts rows).
        doc_pooling: "mean" (default) or "span" over the document's tokens ("last" is refused: zero gradient).
        **knobs: FeatureMethod's (pooling, layers, similarity, normalize, aggregate, ...).
    """

    def __init__(
        self, loss: str = "ce", ig_steps: int = 0, ig_batch_size: int = 16, doc_pooling: str = "mean", **knobs
    ):
        check_choice("attr_weighted", "loss", loss, QUERY_LOSSES)
        if ig_steps < 0 or ig_batch_size < 1:
            raise ValueError(
                f"method 'attr_weighted': ig_steps ({ig_steps}) must be >= 0 and ig_batch_size "
                f"({ig_batch_size}) >= 1"
            )
        doc_pooling = gradient_doc_pooling("attr_weighted", doc_pooling)
        super().__init__(
            loss=loss, ig_steps=ig_steps, ig_batch_size=ig_batch_size, doc_pooling=doc_pooling, **knobs
        )

    def features(self, ctx: AttributionContext) -> tuple[Float[Tensor, "n l d"], Float[Tensor, "q l d"]]:
        store, s = ctx.require("features", self.name), self.settings
        dh_docs = delta_hidden(store, "docs", s["doc_pooling"])
        dh_queries = delta_hidden(store, "queries", s["query_pooling"])
        if s["ig_steps"] == 0:
            g_docs = store.grads("docs", s["doc_pooling"], loss="lm")
            g_queries = store.grads("queries", s["query_pooling"], loss=s["loss"])
        else:
            g_docs, g_queries = self._integrated(ctx, dh_docs.shape[1])
        return dh_docs * g_docs.to(dh_docs.dtype), dh_queries * g_queries.to(dh_queries.dtype)

    def _integrated(self, ctx: AttributionContext, n_layers: int) -> tuple[Tensor, Tensor]:
        """Path-mean gradients at the selected layers (zeros elsewhere: the scorer never reads them)."""
        pair, s = ctx.require("pair", self.name), self.settings
        layers = select_layers(s["layers"], n_layers)
        texts, targets = query_inputs(ctx.queries)
        options = dict(layers=layers, steps=s["ig_steps"], batch_size=s["ig_batch_size"])
        sides = (
            (ctx.corpus.texts, None, "lm", s["doc_pooling"]),
            (texts, targets, s["loss"], s["query_pooling"]),
        )
        out = []
        for side_texts, side_targets, loss, pooling in sides:
            grads = integrated_gradients(
                pair.old,
                pair.new,
                pair.tokenizer,
                side_texts,
                targets=side_targets,
                loss=loss,
                candidate_ids=ctx.candidate_ids,
                pooling=pooling,
                **options,
            )
            full = torch.zeros(len(side_texts), n_layers, grads.shape[-1], dtype=grads.dtype)
            full[:, layers] = grads
            out.append(full)
        return out[0], out[1]
