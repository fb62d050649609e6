"""Aggregate per-query metrics: micro (queries), macro (functions), subsets; flat keys for logging."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from jaxtyping import Bool, Float
from torch import Tensor


def aggregate(
    per_query: Mapping[str, Float[Tensor, " q"]],
    functions: Sequence[str],
    *,
    is_wrapper: Bool[Tensor, " q"],
    correct: Bool[Tensor, " q"] | None = None,
) -> dict:
    """Micro and macro means of each metric, over all queries and the subsets base/wrapper, correct/incorrect.

    micro = mean over queries; macro = mean over functions of the mean over that function's queries (the
    reference evaluation's headline). NaN values (queries with no relevant document, see
    ``per_query_metrics``) are left out of both; a metric no query defines is left out of the dict. Returns
    ``{"count": q, "micro": {metric: float}, "macro": {...}, "subsets": {name: {"count", "micro", "macro"}}}``
    with subsets "base" and "wrapper", plus "correct" and "incorrect" when ``correct`` is given; an empty
    subset has count 0 and empty micro/macro dicts.
    """
    q = len(functions)
    is_wrapper = _check_mask(is_wrapper, "is_wrapper", q)
    for name, values in per_query.items():
        if values.shape != (q,):
            raise ValueError(f"per_query[{name!r}] has shape {tuple(values.shape)}; expected ({q},)")
    per_query = {name: values.detach().double().cpu() for name, values in per_query.items()}
    names = {}
    group = torch.tensor([names.setdefault(func, len(names)) for func in functions], dtype=torch.long)
    subsets = {"base": ~is_wrapper, "wrapper": is_wrapper}
    if correct is not None:
        correct = _check_mask(correct, "correct", q)
        subsets.update(correct=correct, incorrect=~correct)
    everything = _summarise(per_query, group, torch.ones(q, dtype=torch.bool))
    parts = {name: _summarise(per_query, group, mask) for name, mask in subsets.items()}
    return {**everything, "subsets": parts}


def flatten(report: Mapping, prefix: str = "") -> dict[str, float]:
    """``{"test/macro/map": 0.3, "test/subsets/wrapper/count": 200.0, ...}`` from a (nested) report."""
    flat = {}
    for key, value in report.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, name))
        else:
            flat[name] = float(value)
    return flat


def _summarise(per_query: dict[str, Tensor], group: Tensor, mask: Tensor) -> dict:
    """count, micro and macro over the queries in ``mask``."""
    micro, macro = {}, {}
    for name, values in per_query.items():
        keep = mask & ~torch.isnan(values)
        if not keep.any():
            continue
        kept, groups = values[keep], group[keep]
        micro[name] = kept.mean().item()
        sums = torch.zeros(int(group.max()) + 1, dtype=torch.float64).index_add_(0, groups, kept)
        counts = torch.bincount(groups, minlength=len(sums))
        macro[name] = (sums[counts > 0] / counts[counts > 0]).mean().item()
    return {"count": int(mask.sum()), "micro": micro, "macro": macro}


def _check_mask(mask: Tensor, name: str, q: int) -> Tensor:
    """A [q] bool tensor on the CPU, or an error naming the argument."""
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != (q,):
        shape = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"{name} must be a bool tensor of shape ({q},), one per query; got {shape}")
    return mask.cpu()
