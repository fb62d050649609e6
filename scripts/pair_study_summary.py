"""scripts/pair_study.py's OUT/summary.md: every number comes from a file the study's steps wrote."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

COLUMNS = (  # (header, path in a report: subset or "", average, metric)
    ("macro mAP", "", "macro", "map"),
    ("micro mAP", "", "micro", "map"),
    ("base mAP", "base", "macro", "map"),
    ("wrapper mAP", "wrapper", "macro", "map"),
    ("correct-only mAP", "correct", "macro", "map"),
    ("wrapper→base mAP", "wrapper_to_base", "macro", "map"),
    ("wrapper→base R@10", "wrapper_to_base", "macro", "recall@10"),
    ("macro R@10", "", "macro", "recall@10"),
)


def _value(report: dict, subset: str, average: str, metric: str) -> float | None:
    part = report["subsets"].get(subset, {}) if subset else report
    return part.get(average, {}).get(metric)


def _table(rows: list[tuple[str, list[str]]], *extra: str) -> str:
    header = ["method", *(c[0] for c in COLUMNS), *extra]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([label, *cells]) + " |" for label, cells in rows]
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "–" if value is None or value != value else f"{value:.3f}"


def compare_table(folder: Path) -> str:
    """A compare.py run's rows in the summary's columns (and LDS, given ``--counterfactual``)."""
    metrics = json.loads((folder / "metrics.json").read_text())
    truths = list(metrics.pop("counterfactual", {}))  # one LDS column per ground truth
    rows = []
    for label, report in metrics.items():
        cells = [_fmt(_value(report, *column[1:])) for column in COLUMNS]
        cells += [_fmt(report.get("lds", {}).get(name, {}).get("mean")) for name in truths]
        seconds = report.get("seconds")
        rows.append(
            (
                label if label != "random_expectation" else "random (expected)",
                cells + ["–" if seconds is None else f"{seconds:.1f}"],
            )
        )
    return _table(rows, *(f"LDS {name}" for name in truths), "time (s)")


def dlp_table(args, dlp_runs) -> str:
    rows = []
    for name, _, split in dlp_runs:
        runs = []
        for seed in args.seeds:
            found = sorted((args.out / "dlp" / f"{name}-s{seed}").glob("version_*/test_metrics.json"))
            if found:
                runs.append(json.loads(found[-1].read_text()))
        if not runs:
            continue
        cells = []
        for _, subset, average, metric in COLUMNS:
            key = "/".join(p for p in ("test", "subsets/" + subset if subset else "", average, metric) if p)
            values = [r[key] for r in runs if key in r]
            cells.append(
                "–"
                if not values
                else f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"
                if len(values) > 1
                else _fmt(values[0])
            )
        rows.append((f"dlp {name} ({len(runs)} seeds)", cells))
        chance = [
            runs[0].get("/".join(p for p in ("random/test", "subsets/" + s if s else "", a, m) if p))
            for _, s, a, m in COLUMNS
        ]
        rows.append((f"random (expected), {split}", [_fmt(v) for v in chance]))
    return _table(rows)


def summarise(args, outcome: dict, seconds: float, dlp_runs) -> str:
    """OUT/summary.md of a study (``args``: study.py's), from the files its steps wrote."""
    parts = [
        f"# Study on {args.corpus.name}: preset {args.preset}, pair seed {args.seed}, "
        f"DLP seeds {args.seeds}\n",
        f"Wall time {seconds:.0f} s.\n",
    ]
    manifest = args.out / "pair" / "manifest.json"
    if manifest.exists():
        built = json.loads(manifest.read_text())
        parts.append(f"## The pair\n\nBuilt in {built.get('seconds', float('nan')):.0f} s.\n")
    evaluation = args.out / "pair_eval.json"
    if evaluation.exists():
        from probes.pairs.evaluate import format_table

        table = format_table(json.loads(evaluation.read_text()))
        parts.append(
            f"Accuracy on every function's queries (python -m probes.pairs evaluate):\n\n```\n{table}\n```\n"
        )
    parts.append("## DLP (test split; mean ± sd over seeds)\n\n" + dlp_table(args, dlp_runs) + "\n")
    for folder in sorted((args.out / "compare").rglob("metrics.json")):
        name = folder.parent.relative_to(args.out / "compare")
        parts.append(f"## compare.py: {name}\n\n" + compare_table(folder.parent) + "\n")
    removal = args.out / "counterfactual" / "removal" / "removal.md"
    if removal.exists():
        parts.append("## Removal test (python -m probes.counterfactual remove)\n\n" + removal.read_text())
    parts.append("## Steps\n\n" + "\n".join(f"- {k}: {v}" for k, v in outcome.items()) + "\n")
    return "\n".join(parts)
