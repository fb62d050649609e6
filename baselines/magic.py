"""MAGIC (Ilyas & Engstrom 2025): the exact first-order effect of each document on each test answer, by
metagradients through the whole fine-tune that made f_new (an oracle for pairs whose recipe is recorded)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict

import torch
from jaxtyping import Float, Int
from torch import Tensor

from baselines.ops.metagrad import Metagradients, answer_logprobs
from probes.errors import UserError
from probes.hashing import content_hash, file_sha256, weights_hash
from probes.lm.scoring import answer_token_ids, tokenize
from probes.measured import document_problems, read_oracle
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
    names a recipe file. ``oracle`` reads the scores from a folder of ``python -m probes.counterfactual
    oracle`` instead of computing them (a long oracle runs there, resumable, e.g. over several device
    sessions): it must have been computed for this f_old, corpus, recipe and these queries, or is refused.

    Args:
        query_batch: queries per reverse pass (each keeps three parameter-sized cotangents).
        every: steps between checkpoints; None = about the square root of the step count.
        autocast: bf16 autocast in the replayed loss; None = as f_new's fine-tune ran (bf16 where the build
            manifest says it trained on a GPU, float32 otherwise, wherever the replay runs; or the recipe
            file's ``autocast``).
        recipe: a recipe YAML (`probes.pairs.recipe.read_recipe`) for a pair without a build manifest.
        oracle: a finished ``probes.counterfactual oracle`` folder whose rows to read instead.
    """

    batches_queries = True

    def __init__(
        self,
        query_batch: int = 64,
        every: int | None = None,
        autocast: bool | None = None,
        recipe: str | None = None,
        oracle: str | None = None,
    ):
        if query_batch < 1 or (every is not None and every < 1):
            raise ValueError(f"method 'magic': query_batch ({query_batch}) and every ({every}) must be >= 1")
        super().__init__(
            query_batch=query_batch, every=every, autocast=autocast, recipe=recipe, oracle=oracle
        )

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
        autocast = recipe_autocast(pair.old_path, s["recipe"]) if s["autocast"] is None else s["autocast"]
        self.queries, self.cache = ctx.queries, {}
        if s["oracle"] is not None:
            self.cache = stored_rows(s["oracle"], pair.old, ctx, recipe, seed, autocast)
            self.oracle = None
        else:
            seqs = encode_texts(pair.tokenizer, ctx.corpus.texts, recipe.max_length)
            self.oracle = Oracle(pair.old, pair.tokenizer, seqs, recipe, seed, s["every"], autocast)

    def score(self, query_ids: Int[Tensor, "q"]) -> Float[Tensor, "q n"]:
        new = [i for i in dict.fromkeys(query_ids.tolist()) if i not in self.cache]
        if new and self.oracle is None:
            raise UserError(
                f"method 'magic': the oracle {self.settings['oracle']} has no rows for {len(new)} of the "
                "queries asked for (computed for another split?); compute them with `python -m "
                "probes.counterfactual oracle --split ...`"
            )
        if new:
            rows = self.oracle.scores([self.queries[i] for i in new], self.settings["query_batch"])
            self.cache.update(zip(new, rows.float().cpu(), strict=True))
        return torch.stack([self.cache[i] for i in query_ids.tolist()])


def stored_rows(folder: str, old, ctx: AttributionContext, recipe, seed: int, autocast: bool) -> dict:
    """{query id: its [n] scores} of a finished oracle folder, refused (UserError) unless it was computed for
    this f_old (its weights), these documents, this recipe and seed and these queries (their texts)."""
    manifest, scores, query_ids = read_oracle(folder, "method 'magic': the oracle")
    problems = document_problems(manifest["documents"], ctx.corpus.texts)
    if manifest["pair"]["old_weights"] != weights_hash(old):
        problems.append(f"f_old has other weights than {manifest['pair']['old']}")
    recipe_keys = ("pair_manifest", "seed", "bf16_autocast")
    recorded = {k: v for k, v in manifest["recipe"].items() if k not in recipe_keys}
    if recorded != json.loads(json.dumps(asdict(recipe))) or manifest["recipe"]["seed"] != seed:
        problems.append("the recipe or its seed differs")
    if manifest["recipe"]["bf16_autocast"] != autocast:
        problems.append(f"bf16 autocast was {manifest['recipe']['bf16_autocast']}, here {autocast}")
    ids = manifest["queries"]["ids"]
    texts = [ctx.queries[i].prompt + ctx.queries[i].answer for i in ids if i < len(ctx.queries)]
    if len(texts) != len(ids) or content_hash(texts) != manifest["queries"]["texts"]:
        problems.append("its queries' texts (prompt + answer) differ from these")
    if problems:
        raise UserError(
            f"method 'magic': the oracle {folder} does not belong to this run: {'; and '.join(problems)}"
        )
    return {int(q): scores[row].float() for row, q in enumerate(query_ids)}


class Oracle:
    """The metagradients of one pair's fine-tune for any queries (the forward replay runs once)."""

    def __init__(self, old, tokenizer, seqs, recipe, seed: int, every: int | None, autocast: bool):
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.tokenizer = tokenizer
        self.replay = Replay(old, seqs, recipe, seed, pad, autocast)
        self.metagradients = Metagradients(self.replay, every=every)

    def scores(self, queries: Sequence, query_batch: int) -> Float[Tensor, "q n"]:
        """``[q, n]`` for queries with ``prompt`` and ``constant``, ``query_batch`` per reverse pass."""
        return torch.cat([rows for _, rows in self.passes(queries, query_batch)])

    def passes(self, queries: Sequence, query_batch: int) -> Iterator[tuple[int, Float[Tensor, "b n"]]]:
        """(the first query's position, the pass's ``[b, n]`` scores) for each reverse pass of
        ``query_batch`` queries, as each finishes (a caller may keep each pass before the next begins)."""
        prompts = [item.ids for item in tokenize(self.tokenizer, [q.prompt for q in queries], as_prompt=True)]
        answers = answer_token_ids(self.tokenizer, [q.constant for q in queries]).tolist()
        chunks = range(0, len(queries), query_batch)
        for start in progress_bar(chunks, desc="magic queries", disable=len(chunks) < 2):
            end = min(start + query_batch, len(queries))
            outputs = answer_logprobs(self.replay, prompts[start:end], answers[start:end])
            yield start, self.metagradients(outputs, end - start).cpu()
