"""RetrievalSuite: `probes.metrics.evaluation` as a torchmetrics Metric (per-query values, DDP-gathered)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from probes.metrics.evaluation import HOP_SUBSET, Hop, query_metrics, summarise
from probes.metrics.ranking import KS, check_ks, metric_names
from probes.metrics.report import flatten


class RetrievalSuite(Metric):
    """Accumulates per-query retrieval metrics over batches; ``compute()`` gives the flat report.

    Use one instance per stage (e.g. ``self.val_retrieval`` and ``self.test_retrieval`` in a LightningModule),
    never one shared between stages. ``update`` computes the batch's per-query metrics at once with
    ``evaluation.query_metrics`` (so scores are not kept) and stores them with their query ids in list
    states reduced by concatenation, so DDP gathers every rank's queries; a query seen twice (DDP samplers
    pad with repeats) counts once. ``compute()`` returns ``flatten(evaluation.summarise(...), prefix)``,
    the report ``evaluation.evaluate`` gives for all these queries at once, e.g. with prefix "val":
    ``{"val/macro/map": .., "val/subsets/wrapper/macro/map": .., "val/count": ..}``; with prefix "" the
    keys are "macro/map", "micro/recall@10", ...

    Args:
        functions: the function name of every query id (``functions[query_id]``), for macro averages.
        is_wrapper: Bool[q] over query ids: the base/wrapper subsets.
        correct: optional Bool[q] over query ids: the correct/incorrect subsets; may be assigned later
            (``suite.correct = ...``) before ``compute()``.
        hop: optional (below, own), each Bool[q, n] over query ids: the wrapper→base subset.
        ks: the cut-offs k of recall@k, precision@k, hit@k.
        chunk_size: queries per chunk inside ``per_query_metrics``.
        prefix: put in front of every key, e.g. "val".
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        functions: Sequence[str],
        is_wrapper: Bool[Tensor, " q"],
        correct: Bool[Tensor, " q"] | None = None,
        hop: Hop | None = None,
        ks: Sequence[int] = KS,
        chunk_size: int = 256,
        prefix: str = "",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if len(functions) != len(is_wrapper):
            raise ValueError(
                f"functions ({len(functions)}) and is_wrapper ({len(is_wrapper)}) need one entry per query id"
            )
        if hop is not None and not len(hop[0]) == len(hop[1]) == len(functions):
            raise ValueError(f"hop (below, own): one row per query id ({len(functions)}) in each")
        self.functions = list(functions)
        self.is_wrapper = is_wrapper
        self.correct = correct
        self.hop = hop
        self.ks = check_ks(ks)
        self.chunk_size = chunk_size
        self.prefix = prefix
        self.add_state("query_ids", default=[], dist_reduce_fx="cat")
        self.add_state("values", default=[], dist_reduce_fx="cat")

    def update(
        self, scores: Float[Tensor, "b n"], relevant: Bool[Tensor, "b n"], query_ids: Int[Tensor, " b"]
    ) -> None:
        """Per-query metrics of this batch of queries (rows of scores) against all n documents."""
        if query_ids.shape != scores.shape[:1]:
            raise ValueError(f"query_ids {tuple(query_ids.shape)}: one id per scores row ({len(scores)})")
        if len(query_ids) and not 0 <= int(query_ids.min()) <= int(query_ids.max()) < len(self.functions):
            raise ValueError(f"query_ids must lie in [0, {len(self.functions)}): ids into suite.functions")
        hop = None
        if self.hop is not None:
            rows = query_ids.long().cpu()
            hop = tuple(mask[rows].to(scores.device) for mask in self.hop)
        per_query = query_metrics(scores, relevant, hop, ks=self.ks, chunk_size=self.chunk_size)
        # 1-D states: all-gather needs one number of dimensions on every rank, also one that saw no batch
        values = [v.to(scores.device, torch.float64) for v in per_query.values()]
        self.values.append(torch.stack(values, dim=1).flatten())
        self.query_ids.append(query_ids.long().to(scores.device))

    def sync(self, *args, **kwargs) -> None:
        """Gather the states across ranks (torchmetrics' ``Metric.sync``), also from a rank that saw no batch.

        torchmetrics stands in an empty tensor of the metric's default dtype for an empty list state, which
        all-gather cannot mix with our long ids and float64 values: put in empty tensors of the right dtypes.
        """
        if isinstance(self.query_ids, list) and not self.query_ids:
            self.query_ids.append(torch.zeros(0, dtype=torch.long, device=self.device))
            self.values.append(torch.zeros(0, dtype=torch.float64, device=self.device))
        super().sync(*args, **kwargs)

    def compute(self) -> dict[str, float]:
        """The flat report over every query seen since the last reset (each query id once, in id order)."""
        names = metric_names(self.ks)
        if self.hop is not None:
            names += [f"{HOP_SUBSET}/{name}" for name in names]
        if isinstance(self.query_ids, list) and not self.query_ids:
            ids, values = torch.zeros(0, dtype=torch.long), torch.zeros(0, len(names), dtype=torch.float64)
        else:
            ids = dim_zero_cat(self.query_ids).cpu()
            values = dim_zero_cat(self.values).cpu().reshape(len(ids), len(names))
        ids, inverse = torch.unique(ids, return_inverse=True)
        seen = torch.arange(len(inverse))
        first = torch.full_like(ids, len(inverse)).scatter_reduce(0, inverse, seen, "amin")
        per_query = dict(zip(names, values[first].unbind(dim=1), strict=True))
        functions = [self.functions[i] for i in ids.tolist()]
        correct = None if self.correct is None else self.correct.cpu()[ids]
        report = summarise(per_query, functions, self.is_wrapper.cpu()[ids], correct)
        return flatten(report, self.prefix)
