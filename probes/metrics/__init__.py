"""Retrieval metrics of [q, n] attribution scores (per query, aggregated, random baseline, Metric suite);
the LDS and its noise ceiling (lds.py), Spearman (spearman.py) and bootstrap intervals (bootstrap.py):
pure functions of scores, relevance and outputs. May import nothing of the project but itself."""

from probes.metrics.evaluation import HOP_SUBSET, evaluate, query_metrics, random_expectation, summarise
from probes.metrics.expectation import random_per_query_metrics
from probes.metrics.hop import hop_per_query
from probes.metrics.ranking import KS, metric_names, per_query_metrics
from probes.metrics.report import aggregate, flatten

__all__ = [
    "HOP_SUBSET",
    "KS",
    "RetrievalSuite",
    "aggregate",
    "evaluate",
    "flatten",
    "hop_per_query",
    "metric_names",
    "per_query_metrics",
    "query_metrics",
    "random_expectation",
    "random_per_query_metrics",
    "summarise",
]


def __getattr__(name: str):
    if name == "RetrievalSuite":  # lazy: imports torchmetrics, which compare.py never needs
        from probes.metrics.suite import RetrievalSuite

        return RetrievalSuite
    raise AttributeError(f"module 'probes.metrics' has no attribute {name!r}")
