"""Seeded train/val/test splits of the queries: by input (every function everywhere) or by function group."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from probes.data.corpus import Corpus
from probes.data.queries import Query

SPLITS = ("by_input", "by_function")


def function_groups(corpus: Corpus) -> list[list[str]]:
    """Functions connected by wrap relations (whole call trees), each sorted, groups by first member."""
    parent = {name: name for name in corpus.functions}

    def root(name: str) -> str:
        while parent[name] != name:
            name = parent[name]
        return name

    for f in corpus.functions.values():
        if f.wraps is not None:
            parent[root(f.name)] = root(f.wraps)
    groups: dict[str, list[str]] = {}
    for name in sorted(corpus.functions):
        groups.setdefault(root(name), []).append(name)
    return sorted(groups.values())


def _counts(n: int, val_fraction: float, test_fraction: float, unit: str) -> tuple[int, int]:
    """(val, test) item counts: rounded fractions, at least one item for each non-zero fraction."""
    val = max(1, round(val_fraction * n)) if val_fraction > 0 else 0
    test = max(1, round(test_fraction * n)) if test_fraction > 0 else 0
    if val + test >= n:
        raise ValueError(
            f"val_fraction={val_fraction} and test_fraction={test_fraction} need {val} + {test} {unit} for "
            f"val + test and at least one more for train, but there are only {n}; lower val_fraction or "
            f"test_fraction{', or use split=by_input' if unit.startswith('function') else ', or add inputs'}"
        )
    return val, test


def split_queries(
    corpus: Corpus,
    queries: Sequence[Query],
    split: str,
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> dict[str, Tensor]:
    """Sorted query ids (LongTensor) of "train", "val", "test"; a seeded torch.Generator permutes units."""
    if split == "by_input":
        units: list[list] = [[x] for x in dict.fromkeys(q.input for q in queries)]
        key = "input"
    elif split == "by_function":
        units = function_groups(corpus)
        key = "func"
    else:
        raise ValueError(f"split must be 'by_input' or 'by_function', got {split!r}")
    unit_name = "inputs" if split == "by_input" else "function groups"
    val, test = _counts(len(units), val_fraction, test_fraction, unit_name)
    order = torch.randperm(len(units), generator=torch.Generator().manual_seed(seed)).tolist()
    chosen = {"test": order[:test], "val": order[test : test + val], "train": order[test + val :]}
    out = {}
    for name in ("train", "val", "test"):
        members = {m for u in chosen[name] for m in units[u]}
        out[name] = torch.tensor([q.index for q in queries if getattr(q, key) in members], dtype=torch.long)
    return out
