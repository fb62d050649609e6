"""GradSim: cosine of per-example parameter gradients of f_new, projected per parameter (influence family)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from baselines.ops.example_grads import (
    GROUPS,
    KroneckerProjection,
    batch_example_gradients,
    batch_projected_gradients,
    owners,
    select_parameters,
    with_rule,
)
from baselines.ops.layers import NORMALISATIONS, SIMILARITIES, LayerScorer
from baselines.ops.projections import PROJECTIONS, BlockProjection, RandomProjection, allocate_dims
from baselines.ops.queries import QUERY_LOSSES
from probes.features.extract import query_inputs
from probes.lm.scoring import collate, length_batches, pad_id, tokenize
from probes.methods import AttributionContext, Method, check_choice, register
from probes.progress import progress_bar

BLOCKS = ("parameter", "whole")
ALLOCATIONS = ("energy", "equal")
WHOLE = "<whole gradient>"  # the one block of blocks="whole"
ENERGY_SAMPLE = 64  # documents and queries (evenly spaced) whose gradients set allocation="energy"'s split
LEAST_BLOCK = 128  # allocation="energy" gives no block fewer numbers (a tensor no larger is kept whole)
DEFAULTS = dict(
    projection_dim=4096, projection="sparse", blocks="parameter", params="all", allocation="energy"
)
# the seed plan's literal setting: the whole concatenated gradient count-sketched to 256 numbers
SEED_PRESET = dict(projection_dim=256, projection="sparse", blocks="whole", params="all", allocation="equal")


@register("grad_sim")
class GradSim(Method):
    """Cosine (or dot) of per-example parameter gradients of f_new, each parameter's projected to its own
    block of ``projection_dim`` numbers, the blocks concatenated (LoGra-style, Choe et al. 2024).

    Documents use their own LM loss, queries the answer loss. Per-example gradients come from one batched
    backward pass per ``batch_size`` texts and are projected at once, so the full gradient never sits in
    memory for more than one batch. Documents are done in ``prepare``; a query the first time it is scored.
    Each parameter's projected blocks (documents and scored queries) are kept in ``ctx.memo``, keyed by what
    changes them but not by ``params`` / ``param_filter``: another instance on the same context that selects
    other groups only concatenates the blocks it needs (computing just the ones not there yet).

    Args:
        preset: None (use the options) or "seed": the seed plan's literal setting, the whole concatenated
            gradient count-sketched to 256 numbers (projection_dim 256, sparse, blocks "whole", params all).
        params: "all" or a list of parameter groups (`baselines.ops.example_grads.PARAM_GROUPS`: embed, attn,
            mlp, norm, head, other), resolved from parameter names (Llama, OLMo2, GPT-style HF models).
        param_filter: regular expression; of those, only parameters whose name it matches (re.search).
        projection_dim: numbers per block, i.e. per parameter tensor (the total is ~ this x the number of
            parameters); a parameter with no more coordinates is kept exact; 0 or None = every block exact.
        projection: "sparse" (count sketch, cost independent of P), "rademacher" or "gaussian" (dense), all
            of the exact per-example gradient; or "kronecker" (Linear weights only, P = k x k per weight),
            which never forms it: the one that runs at 1B scale (see `KroneckerProjection`).
        blocks: "parameter" (one block per parameter tensor) or "whole" (one block for the concatenated
            gradient of every selected parameter: the seed plan's; not with "kronecker").
        allocation: how blocks="parameter" sizes the blocks of an exact-gradient projection. "equal":
            ``projection_dim`` each (a tensor no larger kept exact). "energy": the same total (the sum over
            the model's parameters of min(size, projection_dim)) split over every parameter tensor of the
            model in proportion to sqrt(E|g_q,m|^2 E|g_d,m|^2), the mean share of a query's and a document's
            squared gradient norm in tensor m, estimated on ``ENERGY_SAMPLE`` evenly spaced documents and
            queries (no relevance), capped at the tensor's size, at least ``LEAST_BLOCK`` (`allocate_dims`):
            the least variance of the sketched inner product for that total. The split covers the whole
            model whatever ``params`` selects, so other groups reuse the same blocks. "kronecker" and
            "whole" blocks are always equal (recorded as "equal").
        seed: seed of the projection.
        loss: the query loss, "ce" or "margin".
        similarity: "cosine" (unit-normalised concatenated blocks) or "dot".
        normalize: "none", "zscore" or "whiten" of the projected gradients, fitted on the documents.
        batch_size: examples whose gradients are projected together.
        max_tokens: also cap a batch at this many padded tokens (longest text x texts; see
            `probes.lm.scoring.length_batches`); null = no cap. The exact projections hold ``batch_size``
            whole gradients, the Kronecker one only the activations of one forward and backward: at 1B it
            runs batches as large as the gradient feature pass's.
        cache_mb: keep a block's projection matrix in memory when it fits this many MiB.
        chunk_size: documents scored at once.
    """

    def __init__(
        self,
        preset: str | None = None,
        params: str | Sequence[str] = DEFAULTS["params"],
        param_filter: str | None = None,
        projection_dim: int | None = DEFAULTS["projection_dim"],
        projection: str = DEFAULTS["projection"],
        blocks: str = DEFAULTS["blocks"],
        allocation: str = DEFAULTS["allocation"],
        seed: int = 0,
        loss: str = "ce",
        similarity: str = "cosine",
        normalize: str = "none",
        batch_size: int = 32,
        max_tokens: int | None = None,
        cache_mb: int | float = 512,
        chunk_size: int = 4096,
    ):
        knobs = seed_preset(
            preset,
            dict(
                projection_dim=projection_dim,
                projection=projection,
                blocks=blocks,
                params=params,
                allocation=allocation,
            ),
        )
        groups, dim = _checked(knobs, loss, similarity, normalize, batch_size, max_tokens)
        unsplit = knobs["projection"] == "kronecker" or knobs["blocks"] == "whole" or not dim
        super().__init__(
            preset=str(preset),
            params="all" if groups == list(GROUPS) else ",".join(groups),
            param_filter=str(param_filter),
            projection_dim=dim,
            projection=knobs["projection"],
            blocks=knobs["blocks"],
            allocation="equal" if unsplit else knobs["allocation"],
            seed=seed,
            loss=loss,
            similarity=similarity,
            normalize=normalize,
            batch_size=batch_size,
            max_tokens=max_tokens,
            cache_mb=cache_mb,
            chunk_size=chunk_size,
        )
        self.groups, self.param_filter = groups, param_filter
        self.scorer = LayerScorer(None, similarity, normalize, "mean", chunk_size=chunk_size)

    def prepare(self, ctx: AttributionContext) -> None:
        pair, s = ctx.require("pair", self.name), self.settings
        try:
            self.names = select_parameters(pair.new, self.groups, self.param_filter)
        except ValueError as err:
            raise ValueError(f"method 'grad_sim': {err}") from None
        self.pair, self.candidate_ids, self.device = pair, ctx.candidate_ids, ctx.device
        self.options = ctx.pass_options
        self.query_texts, self.query_targets = query_inputs(ctx.queries)
        self.dims = self._dims(ctx)
        # a block: a parameter and its size, or the "whole" block
        self.blocks = [WHOLE] if s["blocks"] == "whole" else [(n, self.dims[n]) for n in self.names]
        # what changes a block, but not which parameters are selected (bar the "whole" block's)
        whole = tuple(self.names) if self.blocks == [WHOLE] else ()
        key = ("grad_sim", s["projection"], s["projection_dim"], s["seed"], s["blocks"], whole)
        self.doc_blocks: dict = ctx.memo.setdefault((*key, "docs"), {})
        self.query_blocks: dict = ctx.memo.setdefault((*key, s["loss"]), {})
        missing = [b for b in self.blocks if b not in self.doc_blocks]
        if missing:
            self.doc_blocks.update(self._blocks(ctx.corpus.texts, None, "lm", missing, "grad_sim docs"))
        docs = torch.cat([self.doc_blocks[b] for b in self.blocks], 1)
        self.scorer.fit(docs[:, None], device=ctx.device)

    def _dims(self, ctx: AttributionContext) -> dict[str, int]:
        """Numbers in each selected parameter's block (its size: exact); see ``allocation``."""
        s, model = self.settings, self.pair.new
        sizes = {n: p.numel() for n, p in model.named_parameters()}
        dim = s["projection_dim"]
        if s["projection"] == "kronecker":
            return dict.fromkeys(self.names, dim)
        if s["allocation"] == "equal":
            return {n: min(dim, sizes[n]) if dim else sizes[n] for n in self.names}
        everything = with_rule(model)
        key = ("grad_sim", "energy", s["loss"], tuple(everything))
        if key not in ctx.memo:
            ctx.memo[key] = self._energy(ctx, everything)
        total = sum(min(dim, sizes[n]) for n in everything)
        dims = allocate_dims({n: sizes[n] for n in everything}, ctx.memo[key], total, LEAST_BLOCK)
        return {n: dims[n] for n in self.names}

    def _energy(self, ctx: AttributionContext, names: list[str]) -> dict[str, float]:
        """Per parameter: sqrt of (mean share of a document's squared gradient norm in it) x (a query's),
        on ``ENERGY_SAMPLE`` evenly spaced documents and queries."""

        def shares(texts, targets, loss) -> Tensor:
            pick = torch.linspace(0, len(texts) - 1, min(ENERGY_SAMPLE, len(texts))).round().long().unique()
            items = tokenize(
                self.pair.tokenizer, [texts[i] for i in pick], targets and [targets[i] for i in pick]
            )
            holders, out = owners(self.pair.new, names), []
            for index in length_batches([len(i.ids) for i in items], self.settings["batch_size"], None):
                chunk = [items[i] for i in index]
                batch = collate(chunk, pad_id(self.pair.tokenizer), "right", self.device)
                grads = batch_example_gradients(
                    self.pair.new, batch, chunk, loss, names, self.candidate_ids, holders, self.options
                )
                norms = torch.stack([g.double().pow(2).sum(1) for g in grads], 1).cpu()
                out.append(norms / norms.sum(1, keepdim=True).clamp_min(1e-300))
            return torch.cat(out).mean(0)

        docs = shares(ctx.corpus.texts, None, "lm")
        queries = shares(self.query_texts, self.query_targets, self.settings["loss"])
        return {n: math.sqrt(d * q) for n, d, q in zip(names, docs.tolist(), queries.tolist(), strict=True)}

    def _blocks(self, texts, targets, loss, blocks, desc) -> dict:
        """The projected (or exact) per-example gradient blocks ``blocks`` of ``texts``, ``batch_size``
        texts at a time."""
        s, pair = self.settings, self.pair
        names = self.names if blocks == [WHOLE] else [name for name, _ in blocks]
        holders = owners(pair.new, names)
        numels = {n: getattr(*holders[n][0]).numel() for n in names}
        dim, kind, seed = s["projection_dim"], s["projection"], s["seed"]
        if kind == "kronecker":
            kronecker = KroneckerProjection(holders, dim, seed)
        elif blocks == [WHOLE]:
            whole = RandomProjection(sum(numels.values()), dim, kind, seed, s["cache_mb"]) if dim else None

            def project(grads):
                return {WHOLE: torch.cat(grads, 1) if whole is None else whole(grads)}
        else:
            per_parameter = BlockProjection(numels, {n: d for n, d in blocks}, kind, seed, s["cache_mb"])

            def project(grads):
                projected = per_parameter(dict(zip(names, grads, strict=True)))
                return dict(zip(blocks, projected.values(), strict=True))

        items = tokenize(pair.tokenizer, texts, targets)
        out: dict[str, Tensor] = {}
        batches = length_batches([len(i.ids) for i in items], s["batch_size"], s["max_tokens"])
        for index in progress_bar(batches, desc=desc, leave=False, disable=len(batches) < 4):
            chunk = [items[i] for i in index]
            batch = collate(chunk, pad_id(pair.tokenizer), "right", self.device)
            if kind == "kronecker":
                grads = batch_projected_gradients(
                    pair.new, batch, chunk, loss, kronecker, self.candidate_ids, self.options
                )
                rows = dict(zip(blocks, grads.unbind(1), strict=True))
            else:
                rows = project(
                    batch_example_gradients(
                        pair.new, batch, chunk, loss, names, self.candidate_ids, holders, self.options
                    )
                )
            for block, row in rows.items():
                if block not in out:
                    out[block] = torch.empty(len(items), row.shape[1], dtype=row.dtype)
                out[block][index] = row.cpu()
        return out

    def score(self, query_ids: Int[Tensor, "q"]) -> Float[Tensor, "q n"]:
        ids, store = query_ids.tolist(), self.query_blocks
        missing = [b for b in self.blocks if any(i not in store.get(b, {}) for i in ids)]
        new = sorted({i for i in ids for b in missing if i not in store.get(b, {})})
        if new:
            texts, targets = [self.query_texts[i] for i in new], [self.query_targets[i] for i in new]
            for block, rows in self._blocks(
                texts, targets, self.settings["loss"], missing, "grad_sim queries"
            ).items():
                store.setdefault(block, {}).update(zip(new, rows, strict=True))
        queries = torch.stack([torch.cat([store[b][i] for b in self.blocks]) for i in ids])
        return self.scorer.score(queries[:, None])


def _checked(knobs: dict, loss: str, similarity: str, normalize: str, batch_size: int, max_tokens) -> tuple:
    """The parameter groups and projection dimension of valid settings; an error names a bad one."""
    groups = [knobs["params"]] if isinstance(knobs["params"], str) else list(knobs["params"])
    for option, value, choices in (
        ("projection", knobs["projection"], (*PROJECTIONS, "kronecker")),
        ("blocks", knobs["blocks"], BLOCKS),
        ("allocation", knobs["allocation"], ALLOCATIONS),
        ("loss", loss, QUERY_LOSSES),
        ("similarity", similarity, SIMILARITIES),
        ("normalize", normalize, NORMALISATIONS),
        *(("params", group, ("all", *GROUPS)) for group in groups),
    ):
        check_choice("grad_sim", option, value, choices)
    groups = list(GROUPS) if "all" in groups else groups
    dim = knobs["projection_dim"] or 0
    if dim < 0 or batch_size < 1 or (max_tokens is not None and max_tokens < 1):
        raise ValueError(
            f"method 'grad_sim': projection_dim ({dim}) must be >= 0 (0/None = exact), "
            f"batch_size ({batch_size}) >= 1 and max_tokens ({max_tokens}) >= 1 or None"
        )
    if knobs["projection"] == "kronecker" and (not dim or knobs["blocks"] != "parameter"):
        raise ValueError(
            "method 'grad_sim': projection 'kronecker' gives each Linear weight its own k x k block: "
            f"it needs a projection_dim (got {dim}) and blocks='parameter' (not {knobs['blocks']!r})"
        )
    return groups, dim


def seed_preset(preset: str | None, knobs: dict) -> dict:
    """``knobs`` with the "seed" preset applied (`SEED_PRESET`); raises on a knob it would override."""
    if preset is None:
        return knobs
    check_choice("grad_sim", "preset", preset, ("seed",))
    for key, value in SEED_PRESET.items():
        if knobs[key] not in (DEFAULTS[key], value):
            raise ValueError(
                f"method 'grad_sim': preset='seed' fixes {key}={value!r}; drop {key}={knobs[key]!r}"
            )
    return {**knobs, **SEED_PRESET}
