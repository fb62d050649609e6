"""The reference evaluation of a pair: is the argmax over the candidate answers the constant, per query."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from jaxtyping import Bool
from torch import Tensor

from probes.data.corpus import Corpus, load_corpus
from probes.data.queries import Query, candidate_answers, make_queries
from probes.lm.scoring import answer_token_ids, candidate_logits


def query_correctness(
    model, tokenizer, queries: Sequence[Query], candidates: Sequence[int], batch_size: int = 64
) -> Bool[Tensor, "q"]:
    """Per query: is the argmax over the candidate answers at the last prompt position the constant."""
    ids = answer_token_ids(tokenizer, candidates)
    logits = candidate_logits(model, tokenizer, [q.prompt for q in queries], ids, batch_size=batch_size)
    return torch.tensor(list(candidates))[logits.argmax(-1)] == torch.tensor([q.constant for q in queries])


def evaluate_model(
    model,
    tokenizer,
    corpus: Corpus,
    inputs: Sequence[int] = range(1, 101),
    query_format: str = "returns",
    batch_size: int = 64,
) -> tuple[dict, Bool[Tensor, "q"]]:
    """Accuracy of one checkpoint: ({"base", "wrapper", "functions"}, per-query correctness).

    The correctness is aligned with ``make_queries(corpus, inputs, query_format)``. "base" and "wrapper" are
    means over the functions of each kind (NaN when the corpus has none of that kind).
    """
    queries = make_queries(corpus, inputs, query_format)
    was_training = model.training
    model.eval()
    correct = query_correctness(model, tokenizer, queries, candidate_answers(corpus), batch_size)
    model.train(was_training)
    functions: dict[str, float] = {}
    for name in corpus.functions:
        rows = torch.tensor([q.func == name for q in queries])
        functions[name] = correct[rows].float().mean().item()
    summary = {
        "base": _mean([functions[f.name] for f in corpus.functions.values() if f.is_base]),
        "wrapper": _mean([functions[f.name] for f in corpus.functions.values() if f.is_wrapper]),
        "functions": functions,
    }
    return summary, correct


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def evaluate_pair(
    pair,
    corpus: Corpus | str | Path,
    inputs: Sequence[int] = range(1, 101),
    query_format: str = "returns",
    batch_size: int = 64,
) -> dict:
    """Evaluate both checkpoints of ``pair`` (a ModelPair or an ``(old, new, tokenizer)`` tuple).

    Returns ``{"old": summary, "new": summary, "correct": {"old": Bool[q], "new": Bool[q]}}``, each summary
    ``{"base": float, "wrapper": float, "functions": {name: float}}``; the correctness tensors follow
    ``make_queries(corpus, inputs, query_format)`` order (for ``HopsData.set_correctness``).
    """
    old, new, tokenizer = (pair.old, pair.new, pair.tokenizer) if hasattr(pair, "old") else pair
    if not isinstance(corpus, Corpus):
        corpus = load_corpus(corpus)
    out: dict = {"correct": {}}
    for name, model in (("old", old), ("new", new)):
        out[name], out["correct"][name] = evaluate_model(
            model, tokenizer, corpus, inputs, query_format, batch_size
        )
    return out


def summary_json(result: dict) -> dict:
    """The JSON-able part of an ``evaluate_pair`` result: ``{"old": {...}, "new": {...}}``."""
    return {name: result[name] for name in ("old", "new")}


def format_table(result: dict) -> str:
    """A plain-text table: one line per function, then the base and wrapper means, for old and new."""
    lines = [f"{'function':<12} {'old':>7} {'new':>7}"]
    for name, acc in result["new"]["functions"].items():
        lines.append(f"{name:<12} {result['old']['functions'][name]:>7.1%} {acc:>7.1%}")
    for kind in ("base", "wrapper"):
        lines.append(f"{'mean ' + kind:<12} {result['old'][kind]:>7.1%} {result['new'][kind]:>7.1%}")
    return "\n".join(lines)
