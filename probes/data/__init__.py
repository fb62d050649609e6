"""HOPS data: corpus, relations, queries, the synthetic corpora, splits, the DataModule. May import
metrics and the top-level modules; never lm, features, pairs, models, methods or compare."""

from probes.data.corpus import (
    FUNC_TOKEN_RE,
    Corpus,
    CorpusError,
    Document,
    Function,
    corpus_from_rows,
    load_corpus,
)
from probes.data.queries import QUERY_FORMATS, Query, candidate_answers, make_queries, relevance

__all__ = [
    "FUNC_TOKEN_RE",
    "QUERY_FORMATS",
    "Corpus",
    "CorpusError",
    "Document",
    "Function",
    "HopsDataModule",
    "Query",
    "candidate_answers",
    "corpus_from_rows",
    "load_corpus",
    "make_queries",
    "relevance",
]


def __getattr__(name: str):
    # the DataModule pulls in Lightning: import it only when asked for, so corpus users stay light
    if name == "HopsDataModule":
        from probes.data.datamodule import HopsDataModule

        return HopsDataModule
    raise AttributeError(f"module 'probes.data' has no attribute {name!r}")
