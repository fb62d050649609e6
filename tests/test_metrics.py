"""per_query_metrics and random_per_query_metrics against independent numpy/sklearn/torchmetrics checks."""

import itertools
import warnings
from math import comb

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score
from torchmetrics.functional import retrieval as tm

from probes.metrics import metric_names, per_query_metrics, random_per_query_metrics

KS = (1, 3, 10, 80)  # 80 > n: precision@80 counts all relevant over 80, as torchmetrics does


def reference(scores: np.ndarray, relevant: np.ndarray, ks=KS) -> dict[str, np.ndarray]:
    """Metrics by hand in numpy: rank by score, ties by lower document index first."""
    q, n = scores.shape
    out = {name: np.full(q, np.nan) for name in metric_names(ks)}
    for i in range(q):
        order = np.lexsort((np.arange(n), -scores[i]))
        rel = relevant[i, order]
        total = rel.sum()
        if total == 0:
            continue
        for k in ks:
            top = rel[:k].sum()
            out[f"recall@{k}"][i], out[f"precision@{k}"][i] = top / total, top / k
            out[f"hit@{k}"][i] = top > 0
        ranks = np.flatnonzero(rel) + 1
        out["mrr"][i] = 1 / ranks[0]
        out["map"][i] = np.mean(np.arange(1, total + 1) / ranks)
        rank_of = np.empty(n)
        rank_of[order] = np.arange(n)
        if total < n:  # fraction of (relevant, irrelevant) pairs in the right order
            out["auroc"][i] = (rank_of[relevant[i]][:, None] < rank_of[~relevant[i]][None, :]).mean()
    return out


def random_case(seed: int, q=30, n=60, levels=None):
    """Scores with many ties when ``levels`` is set, relevance of varied density (at least one per row)."""
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, levels, (q, n)).astype(float) if levels else rng.standard_normal((q, n))
    relevant = rng.random((q, n)) < rng.uniform(0.02, 0.5, (q, 1))
    relevant[np.arange(q), rng.integers(0, n, q)] = True
    return torch.from_numpy(scores), torch.from_numpy(relevant)


def check_close(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for name in want:
        np.testing.assert_allclose(got[name].numpy(), want[name], rtol=1e-12, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("levels", [None, 2, 5])
def test_matches_numpy_reference_with_ties(levels):
    scores, relevant = random_case(levels or 0, levels=levels)
    check_close(per_query_metrics(scores, relevant, ks=KS), reference(scores.numpy(), relevant.numpy()))


def test_matches_sklearn_without_ties():
    scores, relevant = random_case(1)
    got = per_query_metrics(scores, relevant, ks=KS)
    for i in range(len(scores)):
        y, s = relevant[i].numpy(), scores[i].numpy()
        assert got["auroc"][i].item() == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        assert got["map"][i].item() == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_matches_torchmetrics_on_tie_broken_ranks():
    scores, relevant = random_case(2, q=12, n=40, levels=3)
    got = per_query_metrics(scores, relevant, ks=KS)
    n = scores.shape[1]
    for i in range(len(scores)):
        order = torch.sort(-scores[i], stable=True).indices
        # preds in (0, 1]: torchmetrics' binary_auroc would squash larger values with a sigmoid (float32 ties)
        preds = torch.empty(n).index_put_((order,), torch.arange(n, 0, -1) / n)
        target = relevant[i]
        want = {
            "mrr": tm.retrieval_reciprocal_rank(preds, target),
            "auroc": tm.retrieval_auroc(preds, target),
        }
        want["map"] = tm.retrieval_average_precision(preds, target)
        for k in KS:
            want[f"recall@{k}"] = tm.retrieval_recall(preds, target, top_k=k)
            want[f"precision@{k}"] = tm.retrieval_precision(preds, target, top_k=k)
            want[f"hit@{k}"] = tm.retrieval_hit_rate(preds, target, top_k=k)
        for name, value in want.items():
            assert got[name][i].item() == pytest.approx(value.item(), abs=1e-6), (i, name)


def test_hand_worked_query():
    # ranking by score, the tie 0.8/0.8 broken by index: docs 0, 2, 3, 4, 1 -> relevance F F T F T
    scores = torch.tensor([[0.9, 0.1, 0.8, 0.8, 0.2]], dtype=torch.float64)
    relevant = torch.tensor([[False, True, False, True, False]])
    got = {name: value.item() for name, value in per_query_metrics(scores, relevant, ks=(1, 3, 5)).items()}
    # recall@k = relevant in top k / all relevant; precision@k = relevant in top k / k
    assert (got["recall@1"], got["recall@3"], got["recall@5"]) == (0.0, 0.5, 1.0)
    assert (got["precision@3"], got["precision@5"]) == (pytest.approx(1 / 3), 0.4)
    assert (got["hit@1"], got["hit@3"]) == (0.0, 1.0)
    assert got["mrr"] == pytest.approx(1 / 3)
    assert got["map"] == pytest.approx((1 / 3 + 2 / 5) / 2)
    assert got["auroc"] == pytest.approx(1 / 6)  # of 2 x 3 pairs only (doc 3, doc 4) is ordered right


def test_ties_go_to_the_lower_index():
    n = 7
    scores = torch.zeros(n, n, dtype=torch.float64)  # every score tied: the ranking is the index order
    relevant = torch.eye(n, dtype=torch.bool)
    got = per_query_metrics(scores, relevant, ks=(1,))
    assert torch.equal(got["mrr"], 1 / torch.arange(1, n + 1, dtype=torch.float64))
    assert got["hit@1"].tolist() == [1.0] + [0.0] * (n - 1)


def test_chunk_size_and_dtype_invariance():
    scores, relevant = random_case(3, q=23, levels=4)
    whole = per_query_metrics(scores, relevant, ks=KS, chunk_size=1000)
    for chunk_size in (1, 5, 23):
        for name, value in per_query_metrics(scores, relevant, ks=KS, chunk_size=chunk_size).items():
            assert torch.equal(value, whole[name]), (chunk_size, name)
    for name, value in per_query_metrics(scores.float(), relevant, ks=KS).items():
        assert torch.equal(value, whole[name]), name  # small integer scores are exact in float32


def test_permuting_documents_with_relevance_changes_nothing_without_ties():
    scores, relevant = random_case(4)
    perm = torch.randperm(scores.shape[1], generator=torch.Generator().manual_seed(0))
    before, after = per_query_metrics(scores, relevant), per_query_metrics(scores[:, perm], relevant[:, perm])
    for name in before:
        np.testing.assert_allclose(after[name].numpy(), before[name].numpy(), atol=1e-12, err_msg=name)


def test_empty_and_full_relevance_rows_are_nan_with_a_warning():
    scores, relevant = random_case(5, q=6)
    relevant[2] = False
    relevant[4] = True
    with pytest.warns(UserWarning) as caught:
        got = per_query_metrics(scores, relevant)
    assert [str(w.message).split(":")[0] for w in caught] == [
        "1 of 6 queries have no relevant document (rows [2])",
        "1 of 6 queries have only relevant documents (rows [4])",
    ]
    assert all(torch.isnan(value[2]) for value in got.values())
    assert torch.isnan(got["auroc"][4]) and got["map"][4] == 1.0
    assert not any(torch.isnan(value[[0, 1, 3, 5]]).any() for value in got.values())


def test_nan_scores_name_the_row():
    scores, relevant = random_case(6, q=5)
    scores[3, 7] = float("nan")
    with pytest.raises(ValueError, match=r"NaN in query row\(s\) \[3\]"):
        per_query_metrics(scores, relevant, chunk_size=2)


def test_bad_arguments_are_named():
    scores, relevant = random_case(7, q=3)
    with pytest.raises(ValueError, match="ks="):
        per_query_metrics(scores, relevant, ks=(0, 5))
    with pytest.raises(ValueError, match="chunk_size="):
        per_query_metrics(scores, relevant, chunk_size=0)
    with pytest.raises(ValueError, match="n >= 1"):
        per_query_metrics(scores[:, :0], relevant[:, :0])


@pytest.mark.parametrize("n", [1, 2, 5])
def test_random_expectation_is_exact_over_all_permutations(n):
    perms = torch.tensor(list(itertools.permutations(range(n))), dtype=torch.float64)  # every ranking once
    ks = (1, 2, 3, 7)
    for total in range(1, n + 1):
        relevant = torch.zeros(len(perms), n, dtype=torch.bool)
        relevant[:, torch.randperm(n, generator=torch.Generator().manual_seed(total))[:total]] = True
        with warnings.catch_warnings():
            warnings.simplefilter("ignore" if total == n else "error")  # R = n: auroc undefined, warned
            got = random_per_query_metrics(relevant[:1], ks=ks)
            enumerated = per_query_metrics(perms, relevant, ks=ks)
        for name, values in enumerated.items():
            want = values.mean().item()
            assert got[name].item() == pytest.approx(want, abs=1e-12, nan_ok=True), (n, total, name)


def test_random_expectation_matches_monte_carlo_and_closed_forms():
    n, total, draws = 40, 7, 20000
    relevant = torch.zeros(draws, n, dtype=torch.bool)
    relevant[:, :total] = True
    scores = torch.rand(draws, n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sampled = per_query_metrics(scores, relevant)
    expected = {name: value.item() for name, value in random_per_query_metrics(relevant[:1]).items()}
    for name, values in sampled.items():
        bound = 4 * values.std().item() / draws**0.5 + 1e-12
        assert abs(values.mean().item() - expected[name]) <= bound, name
    assert expected["hit@5"] == pytest.approx(1 - comb(n - total, 5) / comb(n, 5), abs=1e-12)
    assert (expected["recall@10"], expected["precision@10"], expected["auroc"]) == (0.25, total / n, 0.5)
    assert expected["precision@50"] == pytest.approx(total / 50)  # k > n: all n documents over k
