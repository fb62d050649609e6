"""aggregate, evaluate, random_expectation, flatten, RetrievalSuite: hand-worked, equivalences."""

import pytest
import torch
from torchmetrics.utilities import dim_zero_cat

from probes.metrics import (
    RetrievalSuite,
    aggregate,
    evaluate,
    flatten,
    per_query_metrics,
    random_expectation,
)

KS = (1, 5)


def make_case(seed=0, q=30, n=50):
    """Tied scores, 6 functions (the last 3 wrappers), random correctness."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 6, (q, n), generator=g).double()
    relevant = torch.rand(q, n, generator=g) < 0.2
    relevant[:, 0] = True
    functions = [f"<F{i % 6}>" for i in range(q)]
    is_wrapper = torch.tensor([i % 6 >= 3 for i in range(q)])
    correct = torch.rand(q, generator=g) < 0.5
    return scores, relevant, functions, is_wrapper, correct


def test_micro_is_over_queries_and_macro_over_functions():
    # reference formulas: micro = mean over queries; macro = mean over functions of per-function means
    per_query = {"recall@1": torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64)}
    report = aggregate(per_query, ["A", "A", "A", "B"], is_wrapper=torch.tensor([False, False, False, True]))
    assert report["micro"]["recall@1"] == 0.5
    assert report["macro"]["recall@1"] == pytest.approx((1 / 3 + 1) / 2, abs=1e-15)
    assert report["subsets"]["base"] == {
        "count": 3,
        "micro": {"recall@1": 1 / 3},
        "macro": {"recall@1": 1 / 3},
    }
    assert report["subsets"]["wrapper"]["micro"] == {"recall@1": 1.0} and report["count"] == 4
    assert set(report["subsets"]) == {"base", "wrapper"}


def test_report_end_to_end_on_a_hand_worked_case():
    # n = 2, docs ranked 0 then 1: recall@1 is 1 where doc 0 is relevant, mrr 1 or 1/2
    scores = torch.tensor([[1.0, 0.0]] * 3, dtype=torch.float64)
    relevant = torch.tensor([[True, False], [False, True], [True, False]])
    is_wrapper, correct = torch.tensor([False, False, True]), torch.tensor([True, False, False])
    report = evaluate(scores, relevant, ["A", "A", "B"], is_wrapper, correct, ks=(1,))
    assert (report["micro"]["recall@1"], report["macro"]["recall@1"]) == (pytest.approx(2 / 3), 0.75)
    assert (report["micro"]["mrr"], report["macro"]["mrr"]) == (pytest.approx(2.5 / 3), 0.875)
    incorrect = report["subsets"]["incorrect"]
    assert incorrect["count"] == 2 and incorrect["macro"]["mrr"] == 0.75  # mean of A (1/2) and B (1)


def test_empty_subset_has_count_zero_and_no_metrics():
    scores, relevant, functions, is_wrapper, _ = make_case()
    report = evaluate(scores, relevant, functions, is_wrapper, torch.ones(len(functions), dtype=torch.bool))
    assert report["subsets"]["incorrect"] == {"count": 0, "micro": {}, "macro": {}}
    assert report["subsets"]["correct"]["count"] == len(functions)
    assert "test/subsets/incorrect/micro/map" not in flatten(report, "test")


def test_nan_queries_are_left_out_of_aggregates():
    scores, relevant, functions, is_wrapper, correct = make_case(1)
    relevant[[4, 10, 16, 22, 28]] = False  # every query of <F4>: no relevant document
    with pytest.warns(UserWarning, match="5 of 30 queries have no relevant document"):
        per_query = per_query_metrics(scores, relevant, ks=KS)
    keep = torch.tensor([f != "<F4>" for f in functions])
    got = aggregate(per_query, functions, is_wrapper=is_wrapper, correct=correct)
    kept = {name: value[keep] for name, value in per_query.items()}
    kept_functions = [f for f in functions if f != "<F4>"]
    want = aggregate(kept, kept_functions, is_wrapper=is_wrapper[keep], correct=correct[keep])
    assert got["micro"] == want["micro"] and got["macro"] == want["macro"]
    assert got["count"] == 30 and got["subsets"]["wrapper"]["count"] == 15


def test_random_expectation_aggregates_like_real_metrics():
    scores, relevant, functions, is_wrapper, correct = make_case(2)
    expected = random_expectation(relevant, functions, is_wrapper, correct, ks=KS)
    real = evaluate(scores, relevant, functions, is_wrapper, correct, ks=KS)
    assert flatten(expected).keys() == flatten(real).keys()
    # Monte Carlo: each query repeated under fresh uniform scores; every function keeps its share of queries,
    # so every micro, macro and subset entry of one evaluate() is the mean over the draws
    draws = 2000
    g = torch.Generator().manual_seed(1)
    sampled = evaluate(
        torch.rand(draws * len(relevant), relevant.shape[1], generator=g, dtype=torch.float64),
        relevant.repeat(draws, 1),
        functions * draws,
        is_wrapper.repeat(draws),
        correct.repeat(draws),
        ks=KS,
    )
    flat_expected, flat_sampled = flatten(expected), flatten(sampled)
    for key, value in flat_expected.items():
        if key.endswith("count"):
            assert flat_sampled[key] == draws * value, key
        else:
            assert flat_sampled[key] == pytest.approx(value, abs=0.012), key
    assert expected["micro"]["auroc"] == 0.5 and expected["micro"]["recall@5"] == pytest.approx(5 / 50)
    assert expected["micro"]["precision@1"] == pytest.approx(relevant.double().mean().item())


def test_flatten_keys():
    scores, relevant, functions, is_wrapper, correct = make_case(3)
    flat = flatten(evaluate(scores, relevant, functions, is_wrapper, correct, ks=(1,)), "test")
    metrics = ["recall@1", "precision@1", "hit@1", "mrr", "map", "auroc"]
    parts = ["test", *(f"test/subsets/{name}" for name in ("base", "wrapper", "correct", "incorrect"))]
    want = {f"{part}/{how}/{m}" for part in parts for how in ("micro", "macro") for m in metrics}
    assert set(flat) == want | {f"{part}/count" for part in parts}
    assert all(isinstance(value, float) for value in flat.values())
    assert flatten({"a": {"b": 1}}) == {"a/b": 1.0}


def test_suite_over_batches_equals_the_whole_report():
    scores, relevant, functions, is_wrapper, correct = make_case(4)
    suite = RetrievalSuite(functions, is_wrapper, correct, ks=KS, prefix="val")
    order = torch.randperm(len(functions), generator=torch.Generator().manual_seed(0))
    batches = [*order.split(7), order[:3]]  # the last batch repeats queries, as a DDP sampler pads
    for ids in batches:
        suite.update(scores[ids], relevant[ids], ids)
    want = flatten(evaluate(scores, relevant, functions, is_wrapper, correct, ks=KS), "val")
    assert suite.compute() == want
    suite.reset()
    ids = torch.arange(12)
    suite.update(scores[ids], relevant[ids], ids)
    subset = evaluate(scores[ids], relevant[ids], functions[:12], is_wrapper[ids], correct[ids], ks=KS)
    assert suite.compute() == flatten(subset, "val")


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")
@pytest.mark.parametrize("this_rank", ["same queries", "no batch"])
def test_suite_syncs_list_states_across_ranks(this_rank):
    """Fake all-gather with a second rank that saw every query; this one saw them too (padding) or none."""
    scores, relevant, functions, is_wrapper, _ = make_case(5)
    ids = torch.arange(len(functions))
    other = RetrievalSuite(functions, is_wrapper, ks=KS)
    for batch in ids.split(8):
        other.update(scores[batch], relevant[batch], batch)
    other_states = {torch.long: dim_zero_cat(other.query_ids), torch.float64: dim_zero_cat(other.values)}

    def gather(tensor, group=None):  # a KeyError here: a state of another dtype would break a real all-gather
        assert tensor.ndim == 1
        return [tensor, other_states[tensor.dtype]]

    ddp = {"dist_sync_fn": gather, "distributed_available_fn": lambda: True}
    suite = RetrievalSuite(functions, is_wrapper, ks=KS, **ddp)
    if this_rank == "same queries":
        suite.update(scores, relevant, ids)
    assert suite.compute() == flatten(evaluate(scores, relevant, functions, is_wrapper, ks=KS))
    assert len(dim_zero_cat(suite.query_ids)) == (len(ids) if this_rank == "same queries" else 0)  # unsynced


def test_bad_arguments_are_named():
    scores, relevant, functions, is_wrapper, _ = make_case(6)
    per_query = per_query_metrics(scores, relevant, ks=KS)
    with pytest.raises(ValueError, match="is_wrapper must be a bool tensor of shape"):
        aggregate(per_query, functions[:-1], is_wrapper=is_wrapper)
    suite = RetrievalSuite(functions[:10], is_wrapper[:10], ks=KS)
    with pytest.raises(ValueError, match=r"query_ids must lie in \[0, 10\)"):
        suite.update(scores[:3], relevant[:3], torch.tensor([0, 1, 10]))
    with pytest.raises(ValueError, match="one entry per query id"):
        RetrievalSuite(functions, is_wrapper[:3])


def test_suite_with_the_hop_subset_equals_the_whole_report():
    scores, relevant, functions, is_wrapper, correct = make_case(7)
    own = torch.zeros_like(relevant)
    own[torch.arange(len(functions)), torch.tensor([40 + int(f[2]) for f in functions])] = True
    below = relevant & ~own & is_wrapper[:, None]
    suite = RetrievalSuite(functions, is_wrapper, correct, (below, own), ks=KS, prefix="test")
    for ids in torch.randperm(len(functions), generator=torch.Generator().manual_seed(1)).split(4):
        suite.update(scores[ids], relevant[ids], ids)
    got = suite.compute()
    assert got == flatten(
        evaluate(scores, relevant, functions, is_wrapper, correct, (below, own), KS), "test"
    )
    assert got["test/subsets/wrapper_to_base/count"] == is_wrapper.sum().item()
    assert "test/subsets/wrapper_to_base/macro/map" in got
