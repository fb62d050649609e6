"""The DLP: probe generator, conditioning, heads, the frozen f_new, the document index, a thin
LightningModule, its callbacks, and its compare.py adapter. May import features, lm, pairs, data,
metrics, methods and the top-level modules; never compare or counterfactual."""

from probes.models.callbacks import BestCheckpoint, CpuThreads, ProgressBar
from probes.models.generator import DeepLinear, ProbeGenerator
from probes.models.heads import Head, InfluenceHead, MultiHotHead, PairwiseHead
from probes.models.module import ProbeModule
from probes.models.provenance import TrainedOn
from probes.models.reporting import QueryTables, RecallFigure, TestMetricsJson

__all__ = [
    "BestCheckpoint",
    "CpuThreads",
    "DeepLinear",
    "Head",
    "InfluenceHead",
    "MultiHotHead",
    "PairwiseHead",
    "ProbeGenerator",
    "ProbeModule",
    "ProgressBar",
    "QueryTables",
    "RecallFigure",
    "TestMetricsJson",
    "TrainedOn",
]
