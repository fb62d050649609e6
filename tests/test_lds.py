"""The LDS: Spearman per column (plain and on resampled rows), LDS of synthetic linear outputs, its summary
and two-way interval (a random row's covers 0 at any subset count), the Spearman-Brown noise ceiling against a
simulation with known signal and noise variances."""

from __future__ import annotations

import math

import pytest
import torch
from jaxtyping import TypeCheckError

from probes.metrics.bootstrap import bootstrap
from probes.metrics.lds import half_splits, lds, lds_per_query, noise_ceiling, spearman_brown
from probes.metrics.spearman import spearman_columns, weighted_spearman


def brute_spearman(x: list[float], y: list[float]) -> float:
    """Spearman by hand: average ranks by counting, then Pearson of the ranks."""

    def ranks(v: list[float]) -> list[float]:
        return [sum(u < a for u in v) + (sum(u == a for u in v) + 1) / 2 for a in v]

    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    var = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return cov / var


def linear_world(m: int = 200, n: int = 30, q: int = 50, seed: int = 0):
    """Random subsets (half the documents each) and outputs exactly linear in the masks."""
    generator = torch.Generator().manual_seed(seed)
    masks = torch.rand(m, n, generator=generator) < 0.5
    weights = torch.randn(q, n, generator=generator, dtype=torch.float64)
    outputs = masks.double() @ weights.T
    return masks, weights, outputs, generator


def test_spearman_matches_a_hand_computation_with_ties():
    generator = torch.Generator().manual_seed(1)
    a = torch.randint(0, 4, (12, 5), generator=generator).double()  # many ties
    b = torch.randn(12, 5, generator=generator, dtype=torch.float64)
    b[:4, 0] = 0.5  # ties on the other side too
    got = spearman_columns(a, b)
    for j in range(5):
        assert got[j].item() == pytest.approx(brute_spearman(a[:, j].tolist(), b[:, j].tolist()), abs=1e-12)


def test_spearman_is_one_for_a_monotone_map_and_nan_for_a_constant_column():
    x = torch.randn(20, 3, dtype=torch.float64)
    assert torch.allclose(spearman_columns(x, torch.exp(3 * x)), torch.ones(3, dtype=torch.float64))
    assert torch.allclose(spearman_columns(x, -x), -torch.ones(3, dtype=torch.float64))
    y = x.clone()
    y[:, 1] = 2.0
    got = spearman_columns(x, y)
    assert got[0] == 1 and math.isnan(got[1]) and got[2] == 1
    assert math.isnan(spearman_columns(y, x)[1])


def test_true_weights_give_lds_one_under_any_monotone_transform_of_the_outputs():
    masks, weights, outputs, _ = linear_world()
    for transformed in (outputs, torch.sigmoid(outputs), 5 * outputs.float() - 3):
        lds = lds_per_query(weights, masks, transformed)
        assert torch.allclose(lds, torch.ones_like(lds))


def test_random_scores_give_a_small_mean_lds():
    masks, _, outputs, generator = linear_world()
    scores = torch.randn(outputs.shape[1], masks.shape[1], generator=generator)
    lds = lds_per_query(scores, masks, outputs)
    assert abs(lds.mean().item()) < 0.1
    assert lds.std().item() > 0.02  # the correlations do vary: not a degenerate constant


def test_weighted_spearman_equals_spearman_of_the_repeated_rows():
    generator = torch.Generator().manual_seed(2)
    a = torch.randint(0, 4, (15, 6), generator=generator).double()  # ties, then more from repeated rows
    b = torch.randn(15, 6, generator=generator, dtype=torch.float64)
    rows = torch.randint(15, (5, 15), generator=generator)
    counts = torch.zeros(5, 15, dtype=torch.float64).scatter_add_(1, rows, torch.ones(5, 15).double())
    got = weighted_spearman(a, b, counts)
    for r in range(5):
        expected = spearman_columns(a[rows[r]], b[rows[r]])
        assert torch.allclose(got[r], expected, atol=1e-12, equal_nan=True)


def test_constant_scores_are_undefined_and_count_as_zero():
    masks, _, outputs, _ = linear_world(m=50, q=4)
    masks[0] = True  # a full subset, so not every subset has the same size
    scores = torch.zeros(4, masks.shape[1])
    per_query, summary = lds(scores, masks, outputs, ["f"] * 4, resamples=50)
    assert torch.isnan(per_query).all()
    assert summary["undefined"] == 4 and summary["mean"] == summary["macro"] == 0.0
    assert summary["ci95"] == [0.0, 0.0]


def test_summary_macro_mean_and_a_seeded_interval_around_the_mean():
    masks, weights, outputs, generator = linear_world(m=30, q=6)
    scores = weights + 3 * torch.randn(weights.shape, generator=generator, dtype=torch.float64)
    scores[5] = 0.0  # an undefined query
    functions = ["a", "a", "a", "b", "b", "c"]
    per_query, summary = lds(scores, masks, outputs, functions, resamples=300)
    values = per_query.nan_to_num(0.0)
    assert summary["mean"] == pytest.approx(values.mean().item())
    assert summary["macro"] == pytest.approx((values[:3].mean() + values[3:5].mean() + 0.0).item() / 3)
    assert summary["undefined"] == 1
    low, high = summary["ci95"]
    assert low <= summary["mean"] <= high and low < high
    assert lds(scores, masks, outputs, functions, resamples=300)[1] == summary  # seeded
    with pytest.raises(ValueError, match="one function per query"):
        lds(scores, masks, outputs, functions[:-1])


def coverage_world(m: int, seed: int, shared: float, n: int = 1000, q: int = 20):
    """Subsets of half of n documents; outputs mostly one effect common to every query; random scores,
    independent per query plus a share common to every query (a score of the documents alone)."""
    generator = torch.Generator().manual_seed(seed)
    draws = torch.rand(m, n, generator=generator).argsort(dim=1)[:, : n // 2]
    masks = torch.zeros(m, n, dtype=torch.bool).scatter_(1, draws, True)
    common = torch.randn(n, 1, generator=generator, dtype=torch.float64)
    effects = common + 0.5 * torch.randn(n, q, generator=generator, dtype=torch.float64)
    scores = shared * torch.rand(1, n, generator=generator) + torch.rand(q, n, generator=generator)
    return masks, masks.double() @ effects, scores


@pytest.mark.parametrize("m", [4, 16, 64])
def test_a_random_rows_interval_covers_zero_at_any_subset_count(m):
    """Over 60 seeds, the two-way interval of random scores covers 0 about 95% of the time. Where the
    queries share the subsets' errors (scores with a common part), resampling the queries alone does not:
    that interval excluded 0 for a random row at 16 subsets (issue 27)."""
    two_way, queries_only, seeds = 0, 0, 60
    for seed in range(seeds):
        masks, outputs, scores = coverage_world(m, seed, shared=1.0)
        per_query, summary = lds(scores, masks, outputs, ["f"] * len(scores), resamples=200)
        low, high = summary["ci95"]
        two_way += low <= 0 <= high
        low, high = bootstrap(per_query.nan_to_num(0.0), resamples=200)["ci95"]
        queries_only += low <= 0 <= high
    assert two_way / seeds >= 0.88
    assert queries_only / seeds < 0.6


def test_half_splits_are_disjoint_equal_halves():
    assert half_splits(2) == [([0], [1])]
    splits = half_splits(5, limit=100)
    assert len(splits) == 15  # 5 choose 2 for A, 3 choose 2 for B, each unordered pair once
    assert all(len(a) == len(b) == 2 and not set(a) & set(b) for a, b in splits)
    assert len({(tuple(a), tuple(b)) for a, b in splits}) == 15
    assert half_splits(5, limit=4) == half_splits(5, limit=4) and len(half_splits(5, limit=4)) == 4


def test_spearman_brown_doubles_and_keeps_one():
    r = torch.tensor([0.0, 0.5, 1.0, -0.9])
    assert torch.allclose(spearman_brown(r, 2.0), torch.tensor([0.0, 2 / 3, 1.0, -1.0]))
    assert torch.equal(spearman_brown(r, 1.0), r)


@pytest.mark.parametrize(("k", "noise"), [(2, 1.0), (5, 1.0), (5, 2.0), (4, 0.5)])
def test_noise_ceiling_matches_a_simulation_with_known_variances(k, noise):
    """outputs[m, k, j] = signal[m, j] + noise * e[m, k, j] (unit signal variance): two independent means of
    K seeds correlate at rho_K = 1 / (1 + noise^2 / K) (Pearson), 6/pi asin(rho_K / 2) in Spearman. The
    ceiling estimates it from the K seeds alone, and matches a fresh K-seed replicate's correlation."""
    generator = torch.Generator().manual_seed(k)
    m, q = 200, 100
    signal = torch.randn(m, 1, q, generator=generator, dtype=torch.float64)
    outputs = signal + noise * torch.randn(m, k, q, generator=generator, dtype=torch.float64)
    again = signal + noise * torch.randn(m, k, q, generator=generator, dtype=torch.float64)
    ceiling = noise_ceiling(outputs, ["f"] * q, resamples=20)
    rho = 1 / (1 + noise**2 / k)
    assert ceiling["mean"] == pytest.approx(6 / math.pi * math.asin(rho / 2), abs=0.02)
    direct = spearman_columns(outputs.mean(dim=1), again.mean(dim=1)).mean().item()
    assert ceiling["mean"] == pytest.approx(direct, abs=0.02)
    assert ceiling["seeds"] == k and ceiling["undefined"] == 0
    assert ceiling["split_half"] < ceiling["mean"]  # corrected up from halves of the seeds
    low, high = ceiling["ci95"]
    assert low <= ceiling["mean"] <= high


def test_noise_ceiling_of_one_seed_repeats_is_their_correlation_and_none_below_three():
    masks, _, outputs, generator = linear_world(m=40, q=6)
    noisy = outputs[:10] + 0.01 * torch.randn(10, 6, generator=generator, dtype=torch.float64)
    pairs = torch.stack([outputs[:10], noisy], dim=1)  # a version-1 ground truth's repeats
    ceiling = noise_ceiling(pairs, ["f"] * 6, seeds=1)
    assert ceiling["mean"] == pytest.approx(spearman_columns(outputs[:10], noisy).mean().item())
    assert ceiling["mean"] > 0.9 and ceiling["seeds"] == 1
    assert noise_ceiling(pairs[:2], ["f"] * 6) is None
    assert noise_ceiling(outputs[:, None], ["f"] * 6) is None  # one seed: no ceiling


def test_mismatched_shapes_are_refused():
    masks, weights, outputs, _ = linear_world(m=10, n=5, q=3)
    with pytest.raises((ValueError, TypeCheckError)):  # jaxtyping checks the shapes first in the tests
        lds_per_query(weights[:, :4], masks, outputs)
