"""AttrWeighted: per-layer similarity of attributions a_l = Δh_l ⊙ g_l (option: integrated gradients)."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from baselines.delta_h import delta_hidden
from baselines.ops.feature_method import FeatureMethod, apply_preset
from baselines.ops.interpolate import integrated_gradients
from baselines.ops.queries import QUERY_LOSSES
from probes.features.extract import query_inputs
from probes.lm.layer_ids import hidden_state_ids
from probes.methods import AttributionContext, check_choice, register

PRODUCTS = ("per_position", "of_means")


@register("attr_weighted")
class AttrWeighted(FeatureMethod):
    """Similarity of attributions ``a_l`` of a query and a document, aggregated over layers.

    ``Δh = h^new - h^old`` and ``g = dL/dh`` at f_new (query: answer loss; document: its own LM loss).
    ``product="per_position"`` (default): ``a_l = pool_t(Δh_l,t ⊙ g_l,t)``, multiplied at each position
    before pooling (summed over positions it is the first-order estimate of the loss change); at one position
    (queries' "last") it equals the product of the pooled features. ``product="of_means"``: the seed plan's
    ``Δh̄_l ⊙ ḡ_l``, the product of the pooled features. With ``ig_steps = K > 0``, ``g_l`` is replaced by the
    mean of the gradient at K interpolated states ``h_old + (k/K) Δh`` (k = 1..K) of layer l, f_new computing
    everything above it: times Δh it is the K-step Riemann sum of integrated gradients (K = 1 equals the
    plain variant). These extra passes run the LM here, once per selected layer.

    Args:
        loss: the query loss, "ce" or "margin".
        product: "per_position" or "of_means".
        ig_steps: 0 for the plain gradient, else the number of integrated-gradient steps K.
        ig_batch_size: texts per integrated-gradient pass (each runs all K steps at once: K x texts rows).
        preset: None (use the knobs) or "seed" (product of means, last-token pooling; documents at their
            second-to-last token; see `baselines.ops.feature_method.presets`).
        **knobs: FeatureMethod's (pooling, layers, similarity, normalize, aggregate, ...);
            query_pooling="span" and doc_pooling="last" are refused (zero gradients there).
    """

    def __init__(
        self,
        loss: str = "ce",
        product: str = "per_position",
        ig_steps: int = 0,
        ig_batch_size: int = 16,
        preset: str | None = None,
        **knobs,
    ):
        check_choice("attr_weighted", "loss", loss, QUERY_LOSSES)
        check_choice("attr_weighted", "product", product, PRODUCTS)
        if ig_steps < 0 or ig_batch_size < 1:
            raise ValueError(
                f"method 'attr_weighted': ig_steps ({ig_steps}) must be >= 0 and ig_batch_size "
                f"({ig_batch_size}) >= 1"
            )
        options = apply_preset("attr_weighted", preset, dict(knobs, product=product, ig_steps=ig_steps))
        super().__init__(loss=loss, ig_batch_size=ig_batch_size, preset=str(preset), **options)

    def features(self, ctx: AttributionContext) -> tuple[Float[Tensor, "n l d"], Float[Tensor, "q l d"]]:
        store, s = ctx.require("features", self.name), self.settings
        sides = (("docs", s["doc_pooling"], "lm"), ("queries", s["query_pooling"], s["loss"]))
        if s["ig_steps"]:
            return self._integrated(ctx, ctx.require("pair", self.name).new.config.num_hidden_layers + 1)
        if s["product"] == "per_position":
            docs, queries = (store.attributions(side, pooling, loss) for side, pooling, loss in sides)
            return docs, queries
        docs, queries = (
            delta_hidden(store, side, pooling) * store.grads(side, pooling, loss)
            for side, pooling, loss in sides
        )
        return docs, queries

    def _integrated(self, ctx: AttributionContext, n_states: int) -> tuple[Tensor, Tensor]:
        """Integrated-gradient attributions at the selected layers (zeros elsewhere: the scorer never reads
        them), per position or as the product of the pooled Δh and path-mean gradient."""
        store, s = ctx.require("features", self.name), self.settings
        layers = hidden_state_ids(s["layers"], n_states)
        texts, targets = query_inputs(ctx.queries)
        options = dict(layers=layers, steps=s["ig_steps"], batch_size=s["ig_batch_size"])
        per_position = s["product"] == "per_position"
        sides = (
            ("docs", ctx.corpus.texts, None, "lm", s["doc_pooling"]),
            ("queries", texts, targets, s["loss"], s["query_pooling"]),
        )
        out = []
        for side, side_texts, side_targets, loss, pooling in sides:
            # the same path gradients serve every tuning point that differs only in the scoring knobs
            key = ("attr_weighted.ig", side, tuple(layers), s["ig_steps"], loss, pooling, per_position)
            if key not in ctx.memo:
                ctx.memo[key] = self._path(
                    ctx, side_texts, side_targets, loss, pooling, per_position, options
                )
            values = ctx.memo[key]
            full = torch.zeros(len(side_texts), n_states, values.shape[-1], dtype=values.dtype)
            full[:, layers] = values
            if not per_position:
                full = delta_hidden(store, side, pooling).to(full.dtype) * full
            out.append(full)
        return out[0], out[1]

    def _path(self, ctx, texts, targets, loss, pooling, per_position, options) -> Tensor:
        """Integrated gradients of ``texts`` at the selected layers (see `baselines.ops.interpolate`)."""
        pair = ctx.require("pair", self.name)
        return integrated_gradients(
            pair.old,
            pair.new,
            pair.tokenizer,
            texts,
            targets=targets,
            loss=loss,
            candidate_ids=ctx.candidate_ids,
            pooling=pooling,
            times_delta=per_position,
            options=ctx.pass_options,
            **options,
        )
