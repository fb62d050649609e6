"""What the baselines read of a query: its text, its token ids, and the gradient methods' loss choices."""

from __future__ import annotations

from probes.data.queries import Query

QUERY_LOSSES = ("ce", "margin")
QUERY_TEXTS = ("prompt_answer", "prompt")


def query_texts(queries: list[Query], mode: str = "prompt_answer") -> list[str]:
    """The text a text-matching method sees for a query: prompt followed by answer, or the prompt alone."""
    return [q.prompt + q.answer if mode == "prompt_answer" else q.prompt for q in queries]


def text_token_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """The model tokenizer's ids of each text with no special tokens (function tokens stay one id each)."""
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
