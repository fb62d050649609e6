"""The two regimes of ``build``: *stochastic* (each subset's documents alone, reshuffled by K data-order
seeds) and *fixed-order* (MAGIC's: every retrain replays f_new's run on the whole corpus, same batches and
steps, the dropped documents weighted 0 in place; no seed noise by construction, so K = 1 and no ceiling).

Each turns the settings into a `RegimePlan`: the subsets' masks, the retrain plan and the manifest entries
(``regime``, ``seeds_per_subset``, ``subsets``, ``fraction`` kept, ``subset_size``, ``seeds``, and ``drop``
for fixed-order); `build_ground_truth` runs either plan the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from jaxtyping import Bool
from torch import Tensor

from probes.counterfactual.jobs import Plan, as_mask, subsets_of
from probes.errors import UserError

REGIMES = ("stochastic", "fixed-order")
DEFAULT_FRACTION = 0.5  # the stochastic regime's kept share when --fraction is not given
DEFAULT_SEEDS = 5  # the stochastic regime's K when --seeds-per-subset is not given
# the data-order seed of a subset's k-th retrain: the recipe's seed + k * this (k = 0: f_new's own order)
SEED_STRIDE = 1000
# a build recording the train or validation queries (an influence-trained DLP's target) never retrains what
# a test ground truth of the same --seed retrains: its subsets' seed moves by this times the split's index,
# and in the stochastic regime its data orders by SEED_STRIDE // 4 times it (between the test's, never on one)
SPLIT_INDEX, SPLIT_SEED_OFFSET = {"test": 0, "val": 1, "train": 2}, 1_000_000


@dataclass
class RegimePlan:
    """What a regime retrains: ``plan`` holds K retrains per subset, subset by subset (row m * K + k is
    subset m's k-th), ``masks`` the documents each subset keeps, ``manifest`` the regime's entries;
    ``in_place``: the retrains keep f_new's batches and weight the dropped documents 0 (`Job.in_place`)."""

    masks: Bool[Tensor, "subsets n"]
    plan: Plan
    seeds_per_subset: int
    manifest: dict
    in_place: bool = False


def split_seeds(split: str, regime: str, seed: int, recipe_seed: int) -> dict:
    """`plan_regime`'s ``seed`` and ``recipe_seed`` for a build that records ``split``'s queries (test, val or
    train): the test's own, the others offset so that their retrains are never the test's."""
    k = SPLIT_INDEX[split]
    orders = recipe_seed + (k * SEED_STRIDE // 4 if regime == "stochastic" else 0)  # fixed-order: f_new's own
    return {"seed": seed + k * SPLIT_SEED_OFFSET, "recipe_seed": orders}


def _subsets(n: int, subsets: int, fraction: float, seed: int, option: str) -> tuple[list, int]:
    """``subsets`` seeded random subsets keeping ``round(fraction * n)`` documents, and that size."""
    size = round(fraction * n)
    if not 0 < size < n:
        raise UserError(f"{option} of {n} documents keeps {size}; give a larger or smaller one")
    return subsets_of(n, size, subsets, seed), size


def stochastic(
    n: int, *, subsets: int, fraction: float, seeds_per_subset: int, seed: int, recipe_seed: int
) -> RegimePlan:
    """M seeded random subsets keeping ``fraction`` of the ``n`` documents, each retrained with K data-order
    seeds (the kept documents reshuffled); the first is the recipe's own."""
    if not 0 < fraction < 1:
        raise UserError(f"--fraction={fraction}: give the share of documents each subset keeps, in (0, 1)")
    if seeds_per_subset < 1:
        raise UserError(f"--seeds-per-subset={seeds_per_subset}: give 1 or more (2+ for a noise ceiling)")
    chosen, size = _subsets(n, subsets, fraction, seed, f"--fraction={fraction}")
    orders = [recipe_seed + k * SEED_STRIDE for k in range(seeds_per_subset)]
    manifest = {
        "regime": "stochastic",
        "seeds_per_subset": seeds_per_subset,
        "subsets": subsets,
        "fraction": fraction,
        "subset_size": size,
        "seeds": {"subsets": seed, "data_order": orders},
    }
    plan = [(subset, order) for subset in chosen for order in orders]
    return RegimePlan(as_mask(chosen, n), plan, seeds_per_subset, manifest)


def fixed_order(n: int, *, subsets: int, drop: float, seed: int, recipe_seed: int) -> RegimePlan:
    """M seeded random subsets dropping ``drop`` of the ``n`` documents, each retrained once in place: f_new's
    own data order (the recipe's seed) with the dropped documents weighted 0, so no seed noise to average."""
    if not 0 < drop < 1:
        raise UserError(f"--drop={drop}: give the share of documents each subset drops in place, in (0, 1)")
    chosen, size = _subsets(n, subsets, 1 - drop, seed, f"--drop={drop}")
    manifest = {
        "regime": "fixed-order",
        "seeds_per_subset": 1,
        "subsets": subsets,
        "fraction": 1 - drop,
        "drop": drop,
        "subset_size": size,
        "seeds": {"subsets": seed, "data_order": [recipe_seed]},
    }
    return RegimePlan(as_mask(chosen, n), [(s, recipe_seed) for s in chosen], 1, manifest, in_place=True)


def plan_regime(
    regime: str,
    n: int,
    *,
    subsets: int,
    fraction: float | None,
    drop: float | None,
    seeds_per_subset: int | None,
    seed: int,
    recipe_seed: int,
) -> RegimePlan:
    """The named regime's plan from the command's options; a UserError names an option that does not fit."""
    if regime not in REGIMES:
        raise UserError(f"--regime={regime!r}: give one of {', '.join(REGIMES)}")
    if regime == "stochastic":
        if drop is not None:
            raise UserError(
                "--drop is the fixed-order regime's share dropped; the stochastic regime takes --fraction"
            )
        kept = DEFAULT_FRACTION if fraction is None else fraction
        k = DEFAULT_SEEDS if seeds_per_subset is None else seeds_per_subset
        return stochastic(
            n, subsets=subsets, fraction=kept, seeds_per_subset=k, seed=seed, recipe_seed=recipe_seed
        )
    if fraction is not None:
        raise UserError(
            "--fraction is the stochastic regime's kept share; --regime fixed-order takes --drop D"
        )
    if seeds_per_subset not in (None, 1):
        raise UserError(
            f"--seeds-per-subset={seeds_per_subset}: the fixed-order regime has no seed noise (every retrain "
            "replays f_new's batches), so one retrain per subset and no noise ceiling; give 1 or leave it out"
        )
    if drop is None:
        raise UserError(
            "--regime fixed-order needs --drop D: the share of documents each subset drops in place"
        )
    return fixed_order(n, subsets=subsets, drop=drop, seed=seed, recipe_seed=recipe_seed)
