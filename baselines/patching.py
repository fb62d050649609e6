"""Causal patching: how far patching z's top attribution dimensions moves f_old's margin towards f_new's."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from baselines.ops.feature_method import apply_preset
from baselines.ops.patch import make_patcher
from probes.features.losses import answer_margin
from probes.lm.scoring import answer_token_ids, to_device
from probes.methods import AttributionContext, Method, check_choice, register
from probes.progress import progress_bar

# a document's last token predicts nothing, so its LM-loss gradient there is zero: "last" would gate on noise
DOC_POOLINGS = ("mean", "span")
GATES = ("per_position", "of_means")


def gate_masks(attribution: Float[Tensor, "n d"], percentile: float) -> Bool[Tensor, "n d"]:
    """Per document, the top ``percentile``% of dimensions by |attribution| (0 -> none, 100 -> all)."""
    count = round(percentile / 100 * attribution.shape[1])
    mask = torch.zeros(attribution.shape, dtype=torch.bool)
    if count:
        mask.scatter_(1, attribution.abs().topk(count, dim=1).indices, True)
    return mask


@register("patching")
class Patching(Method):
    """Score (query, z) = (margin with z's gate patched - f_old's margin) / (f_new's margin - f_old's margin).

    The gate of training document z is the top ``percentile``% dimensions of its attribution |a_ℓ(z)| at
    layer ℓ (both checkpoints' states and f_new's gradient of z's own next-token loss, from the shared
    FeatureStore): ``gate="per_position"`` pools ``Δh_ℓ,t ⊙ g_ℓ,t`` over z's tokens, ``"of_means"`` multiplies
    the pooled ``Δh̄_ℓ ⊙ ḡ_ℓ`` (the seed plan's, and the ``preset="seed"`` setting). Per
    query f_old runs once on the prompt with its keys/values kept; the state at layer ℓ of the last prompt
    token is f_old's with the gated dimensions set to f_new's (from the FeatureStore's query states), and all
    documents' patched states are pushed through the remaining blocks in batches of ``batch_size``. A query
    whose two margins are equal gets its raw change.
    """

    def __init__(
        self,
        layer: int | str = "middle",
        percentile: float = 10.0,
        pooling: str = "mean",
        gate: str = "per_position",
        preset: str | None = None,
        batch_size: int = 16384,
        prefix_batch_size: int = 64,
    ):
        """
        Args:
            layer: patch layer as a hidden-state index (0 = embeddings, L = after the final norm; negative
                from the end) or "middle" / "last".
            percentile: share of hidden dimensions patched per document, 0..100.
            pooling: how documents' Δh and gradients are pooled for the gate: "mean" or "span" (both over
                all real tokens of a document; "last" is refused, the gradient there is zero).
            gate: "per_position" (pooled Δh_t ⊙ g_t) or "of_means" (Δh̄ ⊙ ḡ).
            preset: None or "seed" (middle layer, 10%, mean pooling, gate of means; see
                `baselines.ops.feature_method.presets`).
            batch_size: (query, document) candidates pushed through the remaining blocks at once (16384:
                241k candidates/s at OLMo2-1B's middle layer on an H100, against 160k at 4096).
            prefix_batch_size: queries run through f_old at once to build their prefix caches.
        """
        fixed = dict(layer=layer, percentile=percentile, pooling=pooling, gate=gate)
        fixed = apply_preset("patching", preset, fixed)
        layer, percentile, pooling, gate = (fixed[k] for k in ("layer", "percentile", "pooling", "gate"))
        if not 0 <= percentile <= 100:
            raise ValueError(f"method 'patching': option percentile={percentile!r} is not in 0..100")
        check_choice("patching", "pooling", pooling, DOC_POOLINGS)
        check_choice("patching", "gate", gate, GATES)
        if batch_size < 1 or prefix_batch_size < 1:
            raise ValueError(
                f"method 'patching': options batch_size={batch_size} and "
                f"prefix_batch_size={prefix_batch_size} must both be >= 1"
            )
        self.layer, self.percentile, self.pooling, self.gate = layer, percentile, pooling, gate
        self.batch_size, self.prefix_batch_size = batch_size, prefix_batch_size
        super().__init__(layer=layer, percentile=percentile, pooling=pooling, gate=gate, preset=str(preset))

    def prepare(self, ctx: AttributionContext) -> None:
        pair, features = ctx.require("pair", "patching"), ctx.require("features", "patching")
        candidate_ids = ctx.require("candidate_ids", "patching")
        self.ctx = ctx
        self.patcher = make_patcher(pair.old, pair.tokenizer, candidate_ids, self.layer, ctx.pass_options)
        layer = self.patcher.layer
        if self.gate == "per_position":
            attribution = features.attributions("docs", self.pooling)[:, layer]
        else:
            delta = (
                features.hidden("new", "docs", self.pooling)[:, layer]
                - features.hidden("old", "docs", self.pooling)[:, layer]
            )
            attribution = delta * features.grads("docs", self.pooling)[:, layer]
        self.masks = gate_masks(attribution.float(), self.percentile).to(self.patcher.device)
        # f_new's state at the patch layer and its candidate logits (head on the final-norm state), per query
        new_states = features.hidden("new", "queries", "last")
        self.new_states = new_states[:, layer]
        head = pair.new.get_output_embeddings()
        rows = candidate_ids.to(head.weight.device)
        final = new_states[:, -1].to(device=head.weight.device, dtype=head.weight.dtype)
        self.new_logits = (final @ head.weight[rows].T).float().cpu()
        if getattr(head, "bias", None) is not None:
            self.new_logits += head.bias[rows].float().cpu()
        answers = answer_token_ids(pair.tokenizer, [q.answer for q in ctx.queries])
        position = {int(token): i for i, token in enumerate(candidate_ids)}
        self.answers = torch.tensor([position[int(token)] for token in answers], dtype=torch.long)

    def score(self, query_ids: Int[Tensor, "q"]) -> Float[Tensor, "q n"]:
        n, device = self.masks.shape[0], self.patcher.device
        out = torch.empty(len(query_ids), n, dtype=torch.float32)
        prefixes = self.patcher.prefixes(
            [self.ctx.queries[int(i)].prompt for i in query_ids], self.prefix_batch_size
        )
        total = len(query_ids) * n
        bar = progress_bar(total=total, desc="patching", unit="cand", leave=False, disable=total < 1e5)
        for prefix in prefixes:
            ids = query_ids[prefix.rows]
            answer = self.answers[ids].to(device)
            old_margin = answer_margin(prefix.logits.float(), answer)
            span = answer_margin(self.new_logits[ids].to(device), answer) - old_margin
            span = torch.where(span.abs() > 1e-6, span, torch.ones_like(span))
            old, new = prefix.old, self.new_states[ids].to(device=device, dtype=prefix.old.dtype)
            block = torch.empty(len(ids), n, dtype=torch.float32, device=device)
            for prompts, docs in candidate_batches(len(ids), n, self.batch_size, device):
                rows = prompts if isinstance(prompts, int) else to_device(prompts, device)
                states = torch.where(self.masks[docs], new[rows], old[rows])
                expand = torch.broadcast_to(answer[rows], docs.shape)
                patched = answer_margin(self.patcher.logits(prefix, prompts, states).float(), expand)
                block[rows, docs] = (patched - old_margin[rows]) / span[rows]
                bar.update(len(docs))
            out[prefix.rows] = block.cpu()
        bar.close()
        return out


def candidate_batches(q: int, n: int, size: int, device) -> Iterator[tuple[int | Tensor, Tensor]]:
    """(prompt rows, document ids on ``device``) covering every (prompt, document) pair: slices of one
    prompt's documents when n > size (rows is then one int), else whole prompts, as many as fit in ``size``
    (rows on the CPU, where `Patcher.logits` reads them)."""
    if n > size:
        for row in range(q):
            for start in range(0, n, size):
                yield row, torch.arange(start, min(start + size, n), device=device)
        return
    per = size // n
    for first in range(0, q, per):
        rows = torch.arange(first, min(first + per, q))
        yield rows.repeat_interleave(n), torch.arange(n, device=device).repeat(len(rows))
