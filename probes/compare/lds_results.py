"""compare.py's counterfactual part: each ground truth's LDS for a row, metrics.json's ``counterfactual``
entry, the table's LDS columns and note, and the LDS-against-kept-fraction figure (file and TensorBoard)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from jaxtyping import Float
from torch import Tensor

from probes.counterfactual.ground_truth import GroundTruth, load_ground_truth
from probes.errors import UserError
from probes.files import atomic_path
from probes.metrics.lds import lds, noise_ceiling

FIGURE = "lds_by_fraction.png"


def load_truths(paths: Sequence[str]) -> list[GroundTruth]:
    """Every ``--counterfactual`` folder, loaded and validated; their names (folder names) must differ, as
    they key metrics.json and name the table's columns."""
    truths = [load_ground_truth(path) for path in paths]
    names = [gt.name for gt in truths]
    for name in names:
        if names.count(name) > 1:
            same = [str(gt.path) for gt in truths if gt.name == name]
            raise UserError(
                f"--counterfactual: {' and '.join(same)} share the name {name!r}, which keys metrics.json; "
                "give the ground-truth folders different names"
            )
    return truths


def row_lds(
    truths: Sequence[GroundTruth], scores: Float[Tensor, "q n"], functions: Sequence[str]
) -> tuple[dict[str, Float[Tensor, " q"]], dict[str, dict]]:
    """(per_query.csv's columns ``lds:<name>``, metrics.json's ``lds`` entry {name: summary}) of one row:
    its LDS against every ground truth's seed means."""
    columns, summaries = {}, {}
    for gt in truths:
        per_query, summary = lds(scores, gt.masks, gt.seed_mean, functions)
        columns[f"lds:{gt.name}"], summaries[gt.name] = per_query, summary
    return columns, summaries


def counterfactual_entry(truths: Sequence[GroundTruth], functions: Sequence[str]) -> dict[str, dict]:
    """metrics.json's ``counterfactual``: per ground truth its folder, regime (regime, K, kept fraction,
    drop), subset count and noise ceiling (recomputed from its outputs)."""
    entry = {}
    for gt in truths:
        replicates, seeds = gt.replicates()
        entry[gt.name] = {
            "path": str(gt.path),
            **gt.regime,
            "subsets": gt.manifest["subsets"],
            "noise_ceiling": noise_ceiling(replicates, functions, seeds=seeds),
        }
    return entry


def columns(counterfactual: dict | None) -> list[str]:
    """per_query.csv's LDS columns."""
    return [f"lds:{name}" for name in counterfactual or {}]


def cell(summary: dict | None) -> str:
    """The mean LDS ± half the width of its 95% bootstrap interval."""
    if summary is None:
        return "–"
    low, high = summary["ci95"]
    return f"{summary['mean']:.3f} ± {(high - low) / 2:.3f}"


def _regime(truth: dict) -> str:
    if truth["regime"] == "fixed-order":
        return f"fixed-order, drop {truth['drop']:g}"
    return f"α = {truth['fraction']:g}, K = {truth['seeds_per_subset']}"


def _ceiling(truth: dict) -> str:
    if truth["noise_ceiling"]:
        return cell(truth["noise_ceiling"])
    if truth["regime"] == "fixed-order":
        return "none (no seed noise: every retrain replays f_new's batches)"
    return "not measured (one seed per subset)"


def headers(counterfactual: dict) -> list[str]:
    return [f"LDS {name} ({_regime(truth)})" for name, truth in counterfactual.items()]


def note(counterfactual: dict) -> str:
    """The table's paragraph on the LDS columns: what they are, and each ground truth's ceiling."""
    ceilings = "; ".join(
        f"{name} ({truth['subsets']} subsets, {_regime(truth)}): " + _ceiling(truth)
        for name, truth in counterfactual.items()
    )
    return (
        "\nLDS: per test query, Spearman over a ground truth's retrained subsets between the summed scores "
        "of a subset's kept documents and the retrained f_old's log-probability of the answer (mean over the "
        "subset's K seeds); mean over queries ± half the 95% bootstrap interval, subsets and queries "
        "resampled (an undefined query, constant prediction, counts as 0). relevance scores the structurally "
        "relevant documents 1, the others 0. Noise ceiling (split-half correlation of the seeds, "
        f"Spearman-Brown corrected to K): {ceilings}."
    )


def figure(rows: Sequence[tuple[str, dict]], counterfactual: dict):
    """LDS against the kept fraction, one line per row (``(label, {name: summary})``) with its interval, the
    noise ceiling dashed; one panel per regime."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = sorted({truth["regime"] for truth in counterfactual.values()})
    fig, axes = plt.subplots(1, len(regimes), figsize=(6 * len(regimes), 4.5), squeeze=False)
    for ax, regime in zip(axes[0], regimes, strict=True):
        names = sorted(
            (name for name, t in counterfactual.items() if t["regime"] == regime),
            key=lambda name: counterfactual[name]["fraction"],
        )
        x = [counterfactual[name]["fraction"] for name in names]
        for label, summaries in rows:
            points = [(xi, summaries[name]) for xi, name in zip(x, names, strict=True) if name in summaries]
            if points:
                ax.errorbar(*_bars(points), marker="o", capsize=2, label=label)
        ceiling = [(xi, counterfactual[n]["noise_ceiling"]) for xi, n in zip(x, names, strict=True)]
        ceiling = [(xi, c) for xi, c in ceiling if c]
        if ceiling:
            ax.errorbar(*_bars(ceiling), ls="--", c="k", marker="s", capsize=2, label="noise ceiling")
        ax.axhline(0.0, c="grey", lw=0.5)
        ax.set(title=f"{regime} regime", xlabel="kept fraction of the documents", ylabel="LDS (mean)")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize="x-small", loc="best", ncol=2)
    fig.tight_layout()
    return fig


def _bars(points: list[tuple[float, dict]]) -> tuple[list[float], list[float], list[list[float]]]:
    x = [xi for xi, _ in points]
    y = [s["mean"] for _, s in points]
    errors = [[s["mean"] - s["ci95"][0] for _, s in points], [s["ci95"][1] - s["mean"] for _, s in points]]
    return x, y, [[max(0.0, e) for e in side] for side in errors]


def save_figure(
    path: Path, tensorboard: Path, rows: Sequence[tuple[str, dict]], counterfactual: dict
) -> None:
    """Write the figure to ``path`` and log it (and each row's LDS by kept fraction, tagged with the row's
    label) in the TensorBoard run ``tensorboard`` (the comparison's own)."""
    import matplotlib.pyplot as plt
    from torch.utils.tensorboard import SummaryWriter

    fig = figure(rows, counterfactual)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    with SummaryWriter(str(tensorboard)) as writer:
        writer.add_figure("test/lds_by_fraction", fig, close=False)
        for label, summaries in rows:
            for name, summary in summaries.items():
                truth = counterfactual[name]
                step = round(1000 * truth["fraction"])  # per mille kept
                writer.add_scalar(f"test/lds_by_fraction/{truth['regime']}/{label}", summary["mean"], step)
    plt.close(fig)
