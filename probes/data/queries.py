"""Test queries over a HOPS corpus (one per function and input), candidate answers, ground-truth relevance."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool
from torch import Tensor

from probes.data.corpus import Corpus

QUERY_FORMATS = {"returns": "{func}({x}) returns the value ", "output_of": "The output of {func}({x}) is "}
RELEVANCE_MODES = ("pair", "chain")


@dataclass(frozen=True)
class Query:
    index: int
    func: str
    input: int
    prompt: str
    answer: str  # str(constant)
    constant: int
    hop_depth: int

    @property
    def is_wrapper(self) -> bool:
        return self.hop_depth > 0


def query_template(query_format: str) -> str:
    """The template of a named format (QUERY_FORMATS), or ``query_format`` itself if it has {func} and {x}."""
    if query_format in QUERY_FORMATS:
        return QUERY_FORMATS[query_format]
    if isinstance(query_format, str) and "{func}" in query_format and "{x}" in query_format:
        return query_format
    raise ValueError(
        f"query_format must be one of {sorted(QUERY_FORMATS)} or a template containing {{func}} and {{x}}, "
        f"got {query_format!r}"
    )


def check_inputs(inputs: Sequence[int]) -> list[int]:
    """The inputs as a list of distinct ints, else a ValueError naming ``inputs``."""
    values = list(inputs)
    if not values or not all(isinstance(x, int) and not isinstance(x, bool) for x in values):
        raise ValueError(f"inputs must be a non-empty list of integers, got {inputs!r}")
    if len(set(values)) != len(values):
        dupes = sorted({x for x in values if values.count(x) > 1})
        raise ValueError(f"inputs must be distinct, got duplicates {dupes}")
    return values


def make_queries(
    corpus: Corpus, inputs: Sequence[int] = range(1, 101), query_format: str = "returns"
) -> list[Query]:
    """One query per non-distractor function and input: in ``corpus.functions`` order, then inputs order."""
    template = query_template(query_format)
    values = check_inputs(inputs)
    queries = []
    for f in corpus.functions.values():
        for x in values:
            prompt = template.format(func=f.name, x=x)
            queries.append(Query(len(queries), f.name, x, prompt, str(f.constant), f.constant, f.hop_depth))
    return queries


def candidate_answers(corpus: Corpus) -> list[int]:
    """Every integer from the smallest constant - 2 to the largest + 2 (non-distractor functions)."""
    constants = [f.constant for f in corpus.functions.values()]
    return list(range(min(constants) - 2, max(constants) + 3))


def relevant_functions(corpus: Corpus, func: str, mode: str = "pair") -> list[str]:
    """The functions whose documents are influencers of a query on ``func``.

    ``pair``: ``func``, the function it wraps and the functions that wrap it (one hop either way);
    ``chain``: ``func`` and every function below it on its call chain.
    """
    if mode == "pair":
        below = corpus.functions[func].wraps
        return [func] + ([below] if below else []) + corpus.wrapped_by(func)
    if mode == "chain":
        return corpus.chain(func)
    raise ValueError(f"relevance must be one of {list(RELEVANCE_MODES)}, got {mode!r}")


def relevance(corpus: Corpus, queries: Sequence[Query], mode: str = "pair") -> Bool[Tensor, "q n"]:
    """Ground truth: ``out[i, j]`` is True when document j influenced query i (distractors never do)."""
    if mode not in RELEVANCE_MODES:
        raise ValueError(f"relevance must be one of {list(RELEVANCE_MODES)}, got {mode!r}")
    rows: dict[str, Tensor] = {}
    for name in corpus.functions:
        row = torch.zeros(len(corpus), dtype=torch.bool)
        for f in relevant_functions(corpus, name, mode):
            row[list(corpus.functions[f].documents)] = True
        rows[name] = row
    if not queries:
        return torch.zeros(0, len(corpus), dtype=torch.bool)
    return torch.stack([rows[q.func] for q in queries])


def hop_relevance(
    corpus: Corpus, queries: Sequence[Query]
) -> tuple[Bool[Tensor, "q n"], Bool[Tensor, "q n"]]:
    """For each query: (the documents of every function below its function on the call chain, the documents
    of its function itself). A base query has nothing below it. See `probes.metrics.hop`."""
    below = torch.zeros(len(queries), len(corpus), dtype=torch.bool)
    own = torch.zeros(len(queries), len(corpus), dtype=torch.bool)
    for i, query in enumerate(queries):
        chain = corpus.chain(query.func)
        own[i, list(corpus.functions[query.func].documents)] = True
        for func in chain[1:]:
            below[i, list(corpus.functions[func].documents)] = True
    return below, own
