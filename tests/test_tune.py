"""Tuning on the validation queries: grids expand as documented, the choice follows val relevance only."""

from __future__ import annotations

import pytest
import torch

from probes.compare.tune import grid_points, tune, validation_score
from probes.methods import Method


def test_grid_points_product_list_and_none():
    assert grid_points(None) == [{}]
    assert grid_points({"a": [1, 2], "b": ["x", "y"]}) == [
        {"a": 1, "b": "x"},
        {"a": 1, "b": "y"},
        {"a": 2, "b": "x"},
        {"a": 2, "b": "y"},
    ]
    assert grid_points([{"a": 1}, {"a": 2, "b": 3}]) == [{"a": 1}, {"a": 2, "b": 3}]


@pytest.mark.parametrize("bad", [{"a": []}, {"a": "last"}, {"a": 3}])
def test_grid_points_refuses_a_value_that_is_not_a_list(bad):
    with pytest.raises(ValueError, match="'a' must be a non-empty list"):
        grid_points(bad)


class Fixed(Method):
    """A stand-in method whose scores are a fixed [q, n] matrix; ``calls`` lists each score call's size."""

    def __init__(self, scores, batches_queries=False):
        self.scores, self.prepared, self.batches_queries, self.calls = scores, False, batches_queries, []

    def prepare(self, ctx=None) -> None:
        self.prepared = True

    def score(self, ids):
        assert self.prepared
        self.calls.append(len(ids))
        return self.scores[ids]


def setup(q=6, n=8):
    relevant = torch.zeros(q, n, dtype=torch.bool)
    relevant[torch.arange(q), torch.arange(q) % n] = True
    functions = [f"f{i % 3}" for i in range(q)]
    is_wrapper = torch.tensor([i % 2 == 1 for i in range(q)])
    return relevant, functions, is_wrapper


def test_tune_picks_the_point_best_on_validation_and_records_every_trial():
    relevant, functions, is_wrapper = setup()
    good = relevant.double() + 0.01 * torch.rand(relevant.shape, dtype=torch.float64)
    bad = -relevant.double()
    candidates = [({"k": "bad"}, Fixed(bad)), ({"k": "good"}, Fixed(good)), ({"k": "bad2"}, Fixed(bad))]
    method, tuned = tune(
        candidates, lambda m: m.prepare(), torch.arange(6), relevant, functions, is_wrapper, batch_size=4
    )
    assert method.scores is good and tuned.chosen == {"k": "good"}
    assert [t["options"]["k"] for t in tuned.trials] == ["bad", "good", "bad2"]
    assert tuned.trials[1]["val_map"] == pytest.approx(1.0)
    assert tuned.trials[1]["val_map"] == validation_score(good, relevant, functions, is_wrapper)
    assert candidates == []  # the losers are not kept alive by the caller's list
    assert tuned.summary() == "k=good"


def test_tune_only_reads_the_validation_rows():
    """The scores on the non-validation rows favour the other point: the choice must not follow them."""
    relevant, functions, is_wrapper = setup()
    val = torch.tensor([0, 2, 4])
    a, b = relevant.double().clone(), -relevant.double()
    a[[1, 3, 5]], b[[1, 3, 5]] = -relevant[[1, 3, 5]].double(), relevant[[1, 3, 5]].double()
    _, tuned = tune(
        [({"k": "b"}, Fixed(b)), ({"k": "a"}, Fixed(a))],
        lambda m: m.prepare(),
        val,
        relevant[val],
        [functions[i] for i in val],
        is_wrapper[val],
    )
    assert tuned.chosen == {"k": "a"}


def test_one_point_is_prepared_but_never_scored():
    relevant, functions, is_wrapper = setup()
    method = Fixed(None)  # scoring it would fail
    chosen, tuned = tune(
        [({}, method)], lambda m: m.prepare(), torch.arange(6), relevant, functions, is_wrapper
    )
    assert chosen is method and method.prepared and tuned.trials == []


def test_a_method_that_batches_its_queries_itself_is_scored_in_one_call():
    """Each of ekfac's score calls costs a pass over the documents: the val queries go in one call, the
    others in batch_size pieces, with the same scores."""
    relevant, functions, is_wrapper = setup()
    scores = torch.rand(relevant.shape, dtype=torch.float64)
    chosen = []
    for batches_queries in (False, True):
        candidates = [({"k": 1}, Fixed(scores, batches_queries)), ({"k": 2}, Fixed(-scores, batches_queries))]
        method, tuned = tune(
            candidates, lambda m: m.prepare(), torch.arange(6), relevant, functions, is_wrapper, batch_size=4
        )
        assert method.calls == ([6] if batches_queries else [4, 2])
        chosen.append(tuned.trials)
    assert chosen[0] == chosen[1]
