"""Choosing a method's options on the validation queries only: a small grid, each point scored on val."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from probes.methods import query_batches
from probes.metrics import aggregate, per_query_metrics

# the validation metric the choice maximises: the reference evaluation's headline, macro mAP over functions
TUNE_METRIC = "map"


def grid_points(grid: object) -> list[dict[str, Any]]:
    """The option dicts a grid names: ``{option: [values]}`` is their product (first option slowest), a
    list of dicts is taken as it is; None or empty is one point with no overrides."""
    if not grid:
        return [{}]
    if isinstance(grid, Mapping):
        keys = list(grid)
        for key in keys:
            values = grid[key]
            if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
                raise ValueError(f"tune: {key!r} must be a non-empty list of values, got {values!r}")
        return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(grid[k] for k in keys))]
    points = [dict(point) for point in grid]
    if any(not isinstance(point, dict) for point in grid):
        raise ValueError("tune: a list grid must hold option dicts")
    return points


@dataclass
class Tuned:
    """The outcome of tuning one method: the chosen options, and every point with its validation score."""

    chosen: dict[str, Any]
    trials: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> str:
        """``key=value, ...`` of the chosen options, for the table."""
        return ", ".join(f"{k}={v}" for k, v in self.chosen.items())


def validation_score(
    scores: Tensor,
    relevant: Bool[Tensor, "q n"],
    functions: Sequence[str],
    is_wrapper: Bool[Tensor, " q"],
) -> float:
    """Macro mAP over functions of ``scores`` on the validation queries."""
    report = aggregate(per_query_metrics(scores, relevant), functions, is_wrapper=is_wrapper)
    return float(report["macro"][TUNE_METRIC])


def tune(
    candidates: list[tuple[dict[str, Any], Any]],
    prepare: Callable[[Any], None],
    val_ids: Int[Tensor, " q"],
    relevant: Bool[Tensor, "q n"],
    functions: Sequence[str],
    is_wrapper: Bool[Tensor, " q"],
    batch_size: int = 64,
) -> tuple[Any, Tuned]:
    """Prepare and score on the validation queries every ``(options, method)`` candidate; return the best
    prepared method (ties and NaN: the earlier candidate) and the record. A single candidate is prepared and
    returned without scoring anything. The list is emptied as it goes, so a losing candidate (e.g. its
    document features on a GPU) is freed once a better one is found."""
    if len(candidates) == 1:
        point, method = candidates.pop()
        prepare(method)
        return method, Tuned(point)
    best, best_value, chosen, trials = None, -float("inf"), None, []
    while candidates:
        point, method = candidates.pop(0)
        prepare(method)
        batches = query_batches(method, val_ids, batch_size)
        scores = torch.cat([method.score(ids).float().cpu() for ids in batches])
        value = validation_score(scores, relevant, functions, is_wrapper)
        trials.append({"options": point, f"val_{TUNE_METRIC}": value})
        if best is None or value > best_value or (best_value != best_value and value == value):
            best, best_value, chosen = method, value, point  # a NaN never wins over a number
        del method
    return best, Tuned(chosen, trials)
