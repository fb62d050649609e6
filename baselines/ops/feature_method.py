"""The base of the feature-similarity methods: pooled [l, d] features scored with the shared layer knobs."""

from __future__ import annotations

import abc

from jaxtyping import Float, Int
from torch import Tensor

from baselines.ops.layers import LayerScorer
from probes.lm.layer_ids import hidden_state_ids
from probes.methods import AttributionContext, Method, check_choice

QUERY_POOLINGS = ("last", "mean", "span")
DOC_POOLINGS = ("mean", "last", "penultimate", "span")
# DESIGN.md: queries at the last prompt token (the position predicting the answer), documents by the mean
KNOB_DEFAULTS = dict(
    layers="all",
    query_pooling="last",
    doc_pooling="mean",
    similarity="cosine",
    normalize="none",
    aggregate="mean",
)
# the defaults of the method-specific options some preset fixes
OPTION_DEFAULTS = dict(
    product="per_position", ig_steps=0, layer="middle", percentile=10.0, pooling="mean", gate="per_position"
)
GRADIENT_METHODS = ("act_grad", "attr_weighted")  # query features are gradients of the answer loss
HIDDEN_METHODS = ("repsim", "delta_h")  # features are (differences of) the hidden states themselves


def presets(method: str, reference_layer: str = "last") -> dict[str, dict]:
    """Every preset of ``method``: its name -> the settings it fixes. The one place presets are written.

    "seed": the seed plan's literal setting: last-token pooling on both sides, the mean of per-layer cosines
    over all layers, attr_weighted as the product of pooled means (``Δh̄ ⊙ ḡ``), patching's gate as the
    product of means at the middle layer, 10%. Where the literal reading is structurally zero or constant, the
    nearest non-degenerate one: documents' gradients (act_grad, attr_weighted) at their second-to-last token
    (the last position entering the document's own loss: at the last the gradient is exactly 0); "all layers"
    are the block outputs 1..L (the embeddings at a query's last prompt token are the same for every query).
    "reference" (repsim, delta_h): the reference scripts' setting: one hidden state (``reference_layer``:
    "last" or "middle"), queries at the last prompt token, documents by the mean over all real tokens
    (BOS included), cosine, no normalisation.
    """
    if method == "patching":
        return {"seed": dict(layer="middle", percentile=10.0, pooling="mean", gate="of_means")}
    seed = dict(KNOB_DEFAULTS, doc_pooling="last")
    if method in GRADIENT_METHODS:
        seed["doc_pooling"] = "penultimate"
    if method == "attr_weighted":
        seed.update(product="of_means", ig_steps=0)
    out = {"seed": seed}
    if method in HIDDEN_METHODS:
        check_choice(method, "reference_layer", reference_layer, ("last", "middle"))
        out["reference"] = dict(KNOB_DEFAULTS, layers=reference_layer)
    return out


def apply_preset(method: str, preset: str | None, options: dict, reference_layer: str = "last") -> dict:
    """``options`` with ``preset``'s settings (see `presets`); an option set to neither its default nor the
    preset's value is refused, naming both."""
    if preset is None:
        return options
    table = presets(method, reference_layer)
    check_choice(method, "preset", preset, tuple(table))
    fixed = table[preset]
    defaults = {**KNOB_DEFAULTS, **OPTION_DEFAULTS}
    for key, value in fixed.items():
        given = options.get(key, defaults[key])
        if given not in (defaults[key], value):
            raise ValueError(
                f"method {method!r}: preset={preset!r} fixes {key}={value!r}; drop {key}={given!r}"
            )
    return {**options, **fixed}


def check_structural(method: str, options: dict) -> None:
    """Refuse, before any model runs, the settings whose scores are structurally zero or constant:

    - gradient features of a document at its last token (it predicts nothing under its own LM loss: dL/dh
      is 0);
    - gradient features of a query over its answer span (the answer loss is read at the position BEFORE the
      answer; under causal attention dL/dh at the answer's last token, a one-token answer's only one, is 0);
    - hidden-state features (repsim, delta_h) of the embeddings (layer 0) at a query's last prompt token: the
      embedding of one token, the same for every query ending in it (a query-independent term).
    """
    if method in GRADIENT_METHODS and options["doc_pooling"] == "last":
        raise ValueError(
            f"method {method!r}: option doc_pooling='last' gives all-zero document gradients (the last token "
            "predicts nothing under the document's own LM loss); use 'mean' (the default) or 'penultimate'"
        )
    if method in GRADIENT_METHODS and options["query_pooling"] == "span":
        raise ValueError(
            f"method {method!r}: option query_pooling='span' gives all-zero query gradients (the answer loss "
            "is read at the position before the answer, so under causal attention dL/dh at the answer's own "
            "positions is 0); use 'last' (the default) or 'mean'"
        )
    if method in HIDDEN_METHODS and options["query_pooling"] == "last":
        check_no_embeddings(method, options["layers"])


def check_no_embeddings(method: str, layers, n_states: int | None = None) -> None:
    """Refuse hidden state 0 (the embeddings) for hidden-state features pooled at a query's last token;
    with ``n_states`` the resolved indices are checked (a negative index may name 0), else those spelled."""
    spelled = layers == "all_with_embeddings" or (
        not isinstance(layers, str) and 0 in ([layers] if isinstance(layers, int) else layers)
    )
    if spelled or (n_states is not None and 0 in hidden_state_ids(layers, n_states)):
        raise ValueError(
            f"method {method!r}: option layers={layers!r} includes the embeddings (hidden state 0) with "
            "query_pooling='last': there they are one token's embedding, the same for every query ending in "
            "that token (a query-independent term); drop layer 0 (layers='all' is the block outputs 1..L)"
        )


class FeatureMethod(Method):
    """A method scoring by per-layer similarity of pooled ``[l, d]`` features of queries and documents.

    Subclasses implement ``features``; the knobs (see `baselines.ops.layers.LayerScorer`) are shared by all.
    Settings that are structurally zero or constant are refused here (`check_structural`).

    Args:
        query_pooling: "last" (the position predicting the answer, default), "mean" (all real tokens),
            "span" (the answer's tokens).
        doc_pooling: "mean" (all real tokens, BOS included; default), "last", "penultimate" (the
            second-to-last token, the last one entering the document's LM loss) or "span" (= mean).
        layers: "all" (block outputs 1..L, default), "all_with_embeddings" (0..L), "middle", "last", an int or
            a list of ints (0 = embeddings, only when named).
        normalize: "none", "center" (corpus-mean-centred documents, all-queries-mean-centred queries),
            "zscore" or "whiten".
        similarity, aggregate, topk, fit_steps, chunk_size: see LayerScorer.
    """

    def __init__(
        self,
        *,
        query_pooling="last",
        doc_pooling="mean",
        layers="all",
        similarity="cosine",
        normalize="none",
        aggregate="mean",
        topk=3,
        fit_steps=300,
        chunk_size=4096,
        **settings,
    ):
        check_choice(self.name, "query_pooling", query_pooling, QUERY_POOLINGS)
        check_choice(self.name, "doc_pooling", doc_pooling, DOC_POOLINGS)
        try:
            self.scorer = LayerScorer(layers, similarity, normalize, aggregate, topk, fit_steps, chunk_size)
        except ValueError as err:
            raise ValueError(f"method {self.name!r}: {err}") from None
        knobs = dict(query_pooling=query_pooling, doc_pooling=doc_pooling, layers=layers)
        check_structural(self.name, knobs)
        super().__init__(
            **settings,
            **knobs,
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
        if self.name in HIDDEN_METHODS and self.settings["query_pooling"] == "last":
            check_no_embeddings(self.name, self.settings["layers"], docs.shape[1])
        learned = self.scorer.aggregate == "learned"
        self.queries = queries
        # the layer weights see the validation queries' features and relevance; centring all queries' features
        self.scorer.fit(
            docs,
            queries[ctx.val_ids] if learned else None,
            ctx.val_relevant if learned else None,
            device=ctx.device,
            queries=queries,
        )

    def score(self, query_ids: Int[Tensor, "q"]) -> Float[Tensor, "q n"]:
        return self.scorer.score(self.queries[query_ids])


class HiddenStateMethod(FeatureMethod):
    """A FeatureMethod whose features are the FeatureStore's pooled hidden states passed through ``hidden``
    (repsim: f_new's; delta_h: f_new's minus f_old's). The subclasses differ only in that feature.

    Args:
        preset: None (use the knobs), "seed" (the seed plan's literal setting) or "reference" (the reference
            experiments' script); see `presets`.
        reference_layer: "last" or "middle", for preset="reference".
        **knobs: FeatureMethod's (pooling, layers, similarity, normalize, aggregate, ...).
    """

    def __init__(self, preset: str | None = None, reference_layer: str = "last", **knobs):
        knobs = apply_preset(self.name, preset, knobs, reference_layer)
        super().__init__(preset=str(preset), reference_layer=reference_layer, **knobs)

    @abc.abstractmethod
    def hidden(self, store, side: str, pooling: str) -> Float[Tensor, "b l d"]:
        """The feature of every text on one side ("docs" or "queries") of the FeatureStore ``store``."""

    def features(self, ctx: AttributionContext) -> tuple[Float[Tensor, "n l d"], Float[Tensor, "q l d"]]:
        store, s = ctx.require("features", self.name), self.settings
        return self.hidden(store, "docs", s["doc_pooling"]), self.hidden(store, "queries", s["query_pooling"])
