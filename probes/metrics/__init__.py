"""Retrieval metrics of [q, n] attribution scores: per query, aggregated, random baseline, Metric suite."""

from probes.metrics.expectation import random_per_query_metrics
from probes.metrics.hop import hop_subset
from probes.metrics.ranking import KS, metric_names, per_query_metrics
from probes.metrics.report import aggregate, flatten, random_expectation, retrieval_report
from probes.metrics.suite import RetrievalSuite

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
