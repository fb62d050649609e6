"""MAGIC (Ilyas & Engstrom 2025): the exact first-order effect of each document on each test answer, by
metagradients through the whole fine-tune that made f_new (an oracle for pairs whose recipe is recorded)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from baselines.ops.metagrad import Metagradients, answer_logprobs
from probes.hashing import file_sha256
from probes.lm.scoring import answer_token_ids, tokenize
from probes.methods import AttributionContext, Method, register
from probes.pairs.recipe import pair_recipe, recipe_autocast
from probes.pairs.replay import Replay
from probes.pairs.train import encode_texts
from probes.progress import progress_bar


@register("magic")
class Magic(Method):
    """``score[q, d] = d log p_fnew(answer_q | prompt_q) / d w_d`` at w = 1, where w_d weights document d's
    loss in every batch that holds it (`probes.pairs.train.token_loss`: ``sum_d w_d sum_t ce_dt / N``, N the
    batch's labelled tokens counted unweighted, so w_d = 0 drops d in place, as the fixed-order regime of
    ``python -m probes.counterfactual build`` does). Higher = the document helps the answer: dropping it
    changes the answer's log-probability by about ``-score`` (to first order; Adam's first steps make the
    run far from linear in w, so a whole drop is only approximated: on the embedded tiny pair, whose fine-tune
    saturates, the run is linear only within ~1e-6 of w = 1 and the scores predict no removal, measured in
    docs/RESULTS.md, "MAGIC on the tiny pair").

    The fine-tune is replayed from f_old with the recipe in the pair's build manifest (its batches for the
    seed, schedule, clipping, AdamW groups; `probes.pairs.replay`) and differentiated in reverse through every
    step, checkpointing every ``every`` steps and recomputing in between (`baselines.ops.metagrad`), several
    queries per reverse pass. Not ``bergson.magic``: its trainer draws fixed-size batches of consecutive
    rows (the recipe's length-bucketed batches vary in size), uses torchopt's AdamW with one weight decay for
    every parameter (the recipe exempts embeddings and norms) and no autocast, and takes one output per
    reverse pass, so it cannot replay this recipe to f_new's weights nor give a score per query.

    A pair without a recipe (a hub pair, or one fine-tuned on another corpus) is refused unless ``recipe``
    names a recipe file.

    Args:
        query_batch: queries per reverse pass (each keeps three parameter-sized cotangents).
        every: steps between checkpoints; None = about the square root of the step count.
        autocast: bf16 autocast in the replayed loss; None = as f_new's fine-tune ran (bf16 where the build
            manifest says it trained on a GPU, float32 otherwise, wherever the replay runs; or the recipe
            file's ``autocast``).
        recipe: a recipe YAML (`probes.pairs.recipe.read_recipe`) for a pair without a build manifest.
    """

    batches_queries = True

    def __init__(
        self,
        query_batch: int = 64,
        every: int | None = None,
        autocast: bool | None = None,
        recipe: str | None = None,
    ):
        if query_batch < 1 or (every is not None and every < 1):
            raise ValueError(f"method 'magic': query_batch ({query_batch}) and every ({every}) must be >= 1")
        super().__init__(query_batch=query_batch, every=every, autocast=autocast, recipe=recipe)

    def prepare(self, ctx: AttributionContext) -> None:
        pair = ctx.require("pair", self.name)
        if ctx.corpus.path is None:
            raise ValueError("method 'magic': the corpus has no file, so no recipe can be matched to it")
        dtype = next(pair.old.parameters()).dtype
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(
                f"method 'magic': f_old is {dtype}; the recipe ran in float32, so replaying it needs "
                "model.dtype float32 (or float64)"
            )
        s = self.settings
        recipe, seed = pair_recipe(pair.old_path, file_sha256(ctx.corpus.path), s["recipe"])
        seqs = encode_texts(pair.tokenizer, ctx.corpus.texts, recipe.max_length)
        autocast = recipe_autocast(pair.old_path, s["recipe"]) if s["autocast"] is None else s["autocast"]
        self.oracle = Oracle(pair.old, pair.tokenizer, seqs, recipe, seed, s["every"], autocast)
        self.queries, self.cache = ctx.queries, {}

    def score(self, query_ids: Int[Tensor, "q"]) -> Float[Tensor, "q n"]:
        new = [i for i in dict.fromkeys(query_ids.tolist()) if i not in self.cache]
        if new:
            rows = self.oracle.scores([self.queries[i] for i in new], self.settings["query_batch"])
            self.cache.update(zip(new, rows.float().cpu(), strict=True))
        return torch.stack([self.cache[i] for i in query_ids.tolist()])


class Oracle:
    """The metagradients of one pair's fine-tune for any queries (the forward replay runs once)."""

    def __init__(self, old, tokenizer, seqs, recipe, seed: int, every: int | None, autocast: bool):
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.tokenizer = tokenizer
        self.replay = Replay(old, seqs, recipe, seed, pad, autocast)
        self.metagradients = Metagradients(self.replay, every=every)

    def scores(self, queries: Sequence, query_batch: int) -> Float[Tensor, "q n"]:
        """``[q, n]`` for queries with ``prompt`` and ``constant``, ``query_batch`` per reverse pass."""
        prompts = [item.ids for item in tokenize(self.tokenizer, [q.prompt for q in queries], as_prompt=True)]
        answers = answer_token_ids(self.tokenizer, [q.constant for q in queries]).tolist()
        rows = []
        chunks = range(0, len(queries), query_batch)
        for start in progress_bar(chunks, desc="magic queries", disable=len(chunks) < 2):
            end = min(start + query_batch, len(queries))
            outputs = answer_logprobs(self.replay, prompts[start:end], answers[start:end])
            rows.append(self.metagradients(outputs, end - start).cpu())
        return torch.cat(rows)
