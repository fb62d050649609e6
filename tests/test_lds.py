"""The LDS: Spearman per column, LDS of synthetic linear outputs, its summary, the noise ceiling."""

from __future__ import annotations

import math

import pytest
import torch
from jaxtyping import TypeCheckError

from probes.counterfactual.ground_truth import GroundTruth
from probes.metrics.lds import lds_per_query, noise_ceiling, spearman_columns, summarise_lds


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


def test_constant_scores_are_undefined_and_count_as_zero():
    masks, _, outputs, _ = linear_world(m=50, q=4)
    masks[0] = True  # a full subset, so not every subset has the same size
    scores = torch.zeros(4, masks.shape[1])
    lds = lds_per_query(scores, masks, outputs)
    assert torch.isnan(lds).all()
    summary = summarise_lds(lds, ["f"] * 4)
    assert summary["undefined"] == 4 and summary["mean"] == summary["macro"] == 0.0


def test_summary_macro_mean_and_a_bootstrap_interval_around_the_mean():
    per_query = torch.tensor([1.0, 1.0, 1.0, 0.0, math.nan, 0.2], dtype=torch.float64)
    functions = ["a", "a", "a", "b", "b", "c"]
    summary = summarise_lds(per_query, functions, resamples=500)
    assert summary["mean"] == pytest.approx(3.2 / 6)
    assert summary["macro"] == pytest.approx((1.0 + 0.0 + 0.2) / 3)
    assert summary["undefined"] == 1
    low, high = summary["ci95"]
    assert low <= summary["mean"] <= high and low < high
    assert summarise_lds(per_query, functions, resamples=500) == summary  # seeded
    with pytest.raises(ValueError, match="one function per query"):
        summarise_lds(per_query, functions[:-1])


def test_noise_ceiling_from_repeats_and_none_below_three():
    masks, _, outputs, generator = linear_world(m=40, q=6)
    repeat_index = torch.arange(10)
    noisy = outputs[repeat_index] + 0.01 * torch.randn(10, 6, generator=generator, dtype=torch.float64)
    gt = GroundTruth(masks, outputs.float(), repeat_index, noisy.float(), manifest={})
    ceiling = noise_ceiling(gt, ["f"] * 6)
    assert ceiling["mean"] > 0.9 and ceiling["undefined"] == 0
    few = GroundTruth(masks, outputs.float(), repeat_index[:2], noisy[:2].float(), manifest={})
    assert noise_ceiling(few, ["f"] * 6) is None


def test_mismatched_shapes_are_refused():
    masks, weights, outputs, _ = linear_world(m=10, n=5, q=3)
    with pytest.raises((ValueError, TypeCheckError)):  # jaxtyping checks the shapes first in the tests
        lds_per_query(weights[:, :4], masks, outputs)
