"""Edit distance (rapidfuzz) between the token-id sequences of a query and each document; closer = higher."""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from rapidfuzz.distance import Indel, Levenshtein
from rapidfuzz.process import cdist
from torch import Tensor

from baselines.ops.queries import QUERY_TEXTS, query_texts, text_token_ids
from probes.methods import AttributionContext, Method, check_choice, register

SCORERS = {"levenshtein": Levenshtein.normalized_distance, "indel": Indel.normalized_distance}


def ids_to_string(ids: list[int]) -> str:
    """One character per token id (skipping the surrogate block), so rapidfuzz runs on plain strings."""
    return "".join(chr(i if i < 0xD800 else i + 0x800) for i in ids)


@register("edit_distance")
class EditDistance(Method):
    """Score = minus the normalised edit distance between the query's and the document's token sequences.

    Args:
        metric: "levenshtein" (normalised by the longer sequence) or "indel" (by the summed lengths).
        query_text: "prompt_answer" (the query as the LM features see it) or "prompt".
        workers: rapidfuzz threads (-1 = all cores).
    """

    def __init__(self, metric: str = "levenshtein", query_text: str = "prompt_answer", workers: int = -1):
        check_choice("edit_distance", "metric", metric, tuple(SCORERS))
        check_choice("edit_distance", "query_text", query_text, QUERY_TEXTS)
        super().__init__(metric=metric, query_text=query_text, workers=workers)

    def prepare(self, ctx: AttributionContext) -> None:
        tokenizer = ctx.require("pair", self.name).tokenizer
        self.docs = [ids_to_string(ids) for ids in text_token_ids(tokenizer, ctx.corpus.texts)]
        texts = query_texts(ctx.queries, self.settings["query_text"])
        self.queries = [ids_to_string(ids) for ids in text_token_ids(tokenizer, texts)]

    def score(self, query_ids: Int[Tensor, "q"]) -> Float[Tensor, "q n"]:
        queries = [self.queries[i] for i in query_ids.tolist()]
        dist = cdist(
            queries, self.docs, scorer=SCORERS[self.settings["metric"]], workers=self.settings["workers"]
        )
        return -torch.from_numpy(dist).float()
