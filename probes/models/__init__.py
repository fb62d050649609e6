"""The DLP: probe generator, conditioning, heads, the LightningModule, and its compare.py adapter."""

from probes.models.callbacks import BestCheckpoint, CpuThreads
from probes.models.generator import DeepLinear, ProbeGenerator
from probes.models.heads import Head, MultiHotHead, PairwiseHead
from probes.models.module import ProbeModule
from probes.models.provenance import TrainedOn
from probes.models.reporting import QueryTables, RecallFigure, TestMetricsJson

__all__ = [
    "BestCheckpoint",
    "CpuThreads",
    "DeepLinear",
    "Head",
    "MultiHotHead",
    "PairwiseHead",
    "ProbeGenerator",
    "ProbeModule",
    "QueryTables",
    "RecallFigure",
    "TestMetricsJson",
    "TrainedOn",
]
