"""Retrieval metrics of [q, n] attribution scores: per query, aggregated, random baseline, Metric suite."""

from probes.metrics.expectation import random_per_query_metrics
from probes.metrics.hop import hop_subset
from probes.metrics.ranking import KS, metric_names, per_query_metrics
from probes.metrics.report import aggregate, flatten, random_expectation, retrieval_report

__all__ = [
    "KS",
    "RetrievalSuite",
    "aggregate",
    "flatten",
    "hop_subset",
    "metric_names",
    "per_query_metrics",
    "random_expectation",
    "random_per_query_metrics",
    "retrieval_report",
]


def __getattr__(name: str):
    if name == "RetrievalSuite":  # lazy: imports torchmetrics, which compare.py never needs
        from probes.metrics.suite import RetrievalSuite

        return RetrievalSuite
    raise AttributeError(f"module 'probes.metrics' has no attribute {name!r}")
