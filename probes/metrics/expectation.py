"""Expected value of every per-query metric under a uniformly random ranking, in closed form from (n, R)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from probes.metrics.ranking import KS, check_ks, metric_names, warn_no_relevant


def random_per_query_metrics(
    relevant: Bool[Tensor, "q n"], ks: Sequence[int] = KS
) -> dict[str, Float[Tensor, " q"]]:
    """What ``per_query_metrics`` returns on average over all n! rankings, per query (same keys, float64).

    With n documents of which R are relevant and k' = min(k, n): recall@k = k'/n, precision@k = k'R/(nk)
    (R/n for k <= n), hit@k = 1 - C(n-R, k')/C(n, k'), mrr = sum_i P(first relevant at i)/i,
    map = (1/n) sum_{i=1..n} [1/i + (i-1)(R-1)/(i(n-1))] (E[rel_i rel_j] = R(R-1)/(n(n-1)) for i != j),
    auroc = 1/2. Rows with no relevant document are NaN, like ``per_query_metrics``; auroc is NaN where R = n.
    """
    ks = check_ks(ks)
    warn_no_relevant(relevant)
    n = relevant.shape[1]
    # few distinct R in practice: compute once per distinct R, then index back to the queries
    total, row = torch.unique(relevant.sum(dim=1).double(), return_inverse=True)
    survival = _survival(total, n)
    out = {}
    for k in ks:
        top = min(k, n)
        out[f"recall@{k}"] = torch.full_like(total, top / n)
        out[f"precision@{k}"] = total * top / (n * k)
        out[f"hit@{k}"] = 1.0 - survival[:, top]
    position = torch.arange(1, n + 1, dtype=torch.float64, device=relevant.device)
    out["mrr"] = ((survival[:, :-1] - survival[:, 1:]) / position).sum(dim=1)
    harmonic = (1.0 / position).sum()
    out["map"] = (harmonic + (total - 1) * (n - harmonic) / max(n - 1, 1)) / n
    out["auroc"] = torch.where(total < n, 0.5, torch.nan)
    empty = total == 0
    return {name: torch.where(empty, torch.nan, out[name])[row] for name in metric_names(ks)}


def _survival(total: Tensor, n: int) -> Tensor:
    """[r, n+1], a row per R: P(no relevant document among the top i) = C(n-R, i)/C(n, i) for i = 0..n."""
    i = torch.arange(n, dtype=torch.float64, device=total.device)
    # C(n-R, i+1)/C(n, i+1) = prod_{j<=i} (n-R-j)/(n-j); a factor clamped at 0 once i >= n-R
    factors = ((n - total[:, None] - i).clamp(min=0) / (n - i)).cumprod(dim=1)
    return torch.cat([torch.ones_like(total)[:, None], factors], dim=1)
