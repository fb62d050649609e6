"""The two regimes of ``build``: *stochastic* (each subset's documents alone, reshuffled by the data-order
seed) and *fixed-order* (MAGIC's: every retrain replays f_new's run on the whole corpus, same batches and
steps, the dropped documents weighted 0 in place; no seed noise by construction, so one seed per subset)."""

from __future__ import annotations

from probes.errors import UserError

REGIMES = ("stochastic", "fixed-order")
DEFAULT_FRACTION = 0.5  # the stochastic regime's kept share when --fraction is not given


def regime_settings(regime: str, fraction: float | None, drop: float | None, repeats: int) -> dict:
    """The manifest's regime entries (``regime``, ``seeds_per_subset``, ``fraction`` kept, and ``drop`` for
    fixed-order), from the command's options; a UserError names an option that does not fit the regime."""
    if regime not in REGIMES:
        raise UserError(f"--regime={regime!r}: give one of {', '.join(REGIMES)}")
    if regime == "stochastic":
        if drop is not None:
            raise UserError(
                "--drop is the fixed-order regime's share dropped; the stochastic regime takes --fraction"
            )
        kept = DEFAULT_FRACTION if fraction is None else fraction
        return {"regime": regime, "seeds_per_subset": 1, "fraction": kept}
    if fraction is not None:
        raise UserError(
            "--fraction is the stochastic regime's kept share; --regime fixed-order takes --drop D"
        )
    if drop is None or not 0 < drop < 1:
        raise UserError(f"--drop={drop}: give the share of documents each subset drops in place, in (0, 1)")
    if repeats:
        raise UserError(
            f"--repeats={repeats}: the fixed-order regime has no seed noise (every retrain replays the same "
            "batches), so no noise ceiling to measure; give 0"
        )
    return {"regime": regime, "seeds_per_subset": 1, "fraction": 1 - drop, "drop": drop}
