"""A comparison's results on disk: metrics.json, scores, CSVs, table.md, the recall@k plot and TensorBoard."""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from jaxtyping import Bool, Float
from safetensors.torch import save_file
from torch import Tensor

from probes.compare import lds_results as lds_report
from probes.compare.reuse import INPUTS, KIND, input_paths, settings
from probes.files import atomic_path
from probes.metrics import HOP_SUBSET, KS, flatten, metric_names
from probes.outputs import Output, claim_output
from probes.plots import recall_figure

if TYPE_CHECKING:
    from probes.compare.tune import Tuned

# the table's columns: (metric key, header), reported per subset (macro over functions)
MAIN_METRICS = (
    ("map", "mAP"),
    ("recall@10", "R@10"),
    ("recall@50", "R@50"),
    ("mrr", "MRR"),
    ("auroc", "AUROC"),
)
TABLE_SUBSETS = ("base", "wrapper")
HOP_METRICS = (("map", "mAP"), ("recall@10", "R@10"))
COMPARISON_RUN = "comparison"  # TensorBoard run of the figures and the LDS by fraction; a row: a run each
# output keys (scores.safetensors' "relevant", metrics.json's entries), the --counterfactual row's label, runs
RESERVED_LABELS = ("relevant", "random_expectation", "relevance", "counterfactual", COMPARISON_RUN)
FILES = (
    "metrics.json",
    "scores.safetensors",
    "queries.csv",
    "per_query.csv",
    "table.md",
    "recall_at_k.png",
    lds_report.FIGURE,
    "tensorboard/",
    INPUTS,
)


def claim_results(out: Path, cfg, *, write: bool = True) -> Output:
    """``out`` claimed for compare.py's results (`probes.outputs.claim_output`) under the config ``cfg``:
    checked up front (``write`` False), then its marker written before the first result file."""
    return claim_output(
        out,
        KIND,
        FILES,
        overwrite=cfg.overwrite,
        settings=settings(cfg),
        inputs=input_paths(cfg),
        write=write,
    )


@dataclass
class MethodResult:
    """One labelled method's outcome on the test queries (rows in the order of queries.csv)."""

    label: str
    hparams: dict[str, float | int | str | bool]
    scores: Float[Tensor, "q n"]
    per_query: dict[str, Float[Tensor, " q"]]
    report: dict
    seconds: float
    tuned: Tuned | None = None  # the options chosen on the validation queries, when a grid was given
    lds: dict | None = None  # {ground truth: probes.metrics.lds.lds summary}, given counterfactual truths
    source: str | None = None  # the finished comparison its scores were taken from (compare.py --scores)


def write_results(
    out: Path,
    results: Sequence[MethodResult],
    relevant: Bool[Tensor, "q n"],
    queries: Sequence[Mapping[str, object]],
    random: dict,
    inputs: dict,
    counterfactual: dict | None = None,
) -> str:
    """Write every file into ``out`` (each atomically, metrics.json last); return the markdown table.

    ``inputs`` (`probes.compare.reuse.record`: the config and the inputs by content) becomes inputs.json,
    which tells another command which score rows it may reuse.

    ``counterfactual`` (`probes.compare.lds_results.counterfactual_entry`: per ground truth its regime and
    noise ceiling; given with every result's LDS against each, summarised and per query as
    ``per_query["lds:<name>"]``) becomes metrics.json's entry of that name, an LDS column per ground truth
    in the table and per_query.csv, and the LDS-by-kept-fraction figure. An older metrics.json is removed
    first, so metrics.json exists only beside a complete set of files.
    """
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").unlink(missing_ok=True)
    tensors = {r.label: r.scores.float().contiguous() for r in results}
    with atomic_path(out / "scores.safetensors") as tmp:
        save_file({**tensors, "relevant": relevant.contiguous()}, str(tmp))
    _write_csv(out / "queries.csv", list(queries[0]) if queries else [], queries)
    _write_csv(
        out / "per_query.csv",
        ["label", *(queries[0] if queries else []), *metric_names(KS), *lds_report.columns(counterfactual)],
        _per_query(results, queries),
    )
    table = markdown_table(results, random, counterfactual)
    with atomic_path(out / "table.md") as tmp:
        tmp.write_text(table + "\n", encoding="utf-8")
    with atomic_path(out / "tensorboard") as tmp:
        plot_recall(out / "recall_at_k.png", tmp / COMPARISON_RUN, results, random)
        write_tensorboard(tmp, results, random)
        _lds_figure(out, tmp / COMPARISON_RUN, results, counterfactual)
    metrics = {
        r.label: {
            "method": r.hparams.get("method", ""),
            "hparams": r.hparams,
            "seconds": r.seconds,
            **({"tuned": {"chosen": r.tuned.chosen, "trials": r.tuned.trials}} if _was_tuned(r) else {}),
            **_report(r.report),
            **({"lds": r.lds} if r.lds is not None else {}),
            **({"scores_from": r.source} if r.source is not None else {}),
        }
        for r in results
    }
    with atomic_path(out / INPUTS) as tmp:
        tmp.write_text(json.dumps(inputs, indent=2) + "\n", encoding="utf-8")
    metrics["random_expectation"] = _report(random)
    if counterfactual is not None:
        metrics["counterfactual"] = counterfactual
    with atomic_path(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=2, allow_nan=True) + "\n", encoding="utf-8")
    return table


def _lds_figure(out: Path, tensorboard: Path, results: Sequence[MethodResult], counterfactual) -> None:
    """The LDS-by-kept-fraction figure given ground truths; else an earlier run's figure goes."""
    if counterfactual:
        rows = [(r.label, r.lds) for r in results if r.lds]
        lds_report.save_figure(out / lds_report.FIGURE, tensorboard, rows, counterfactual)
    else:
        (out / lds_report.FIGURE).unlink(missing_ok=True)


def _was_tuned(result: MethodResult) -> bool:
    return result.tuned is not None and bool(result.tuned.trials)


def _report(report: dict) -> dict:
    """The report's macro / micro / subsets (and query count), in that order."""
    return {
        "count": report["count"],
        "macro": report["macro"],
        "micro": report["micro"],
        "subsets": report["subsets"],
    }


def _write_csv(path: Path, header: Sequence[str], rows) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(header))
        writer.writeheader()
        writer.writerows(rows)


def _per_query(results: Sequence[MethodResult], queries: Sequence[Mapping[str, object]]):
    """Rows of per_query.csv: one per (label, test query), every per-query metric."""
    for result in results:
        values = {name: tensor.tolist() for name, tensor in result.per_query.items()}
        for row, query in enumerate(queries):
            yield {"label": result.label, **query, **{name: v[row] for name, v in values.items()}}


def _cell(report: dict, subset: str, metric: str) -> str:
    part = report["subsets"].get(subset, {})
    value = part.get("macro", {}).get(metric) if part.get("count") else None
    return "–" if value is None or math.isnan(value) else f"{value:.3f}"


def markdown_table(results: Sequence[MethodResult], random: dict, counterfactual: dict | None = None) -> str:
    """Methods x main metrics (macro over functions), base and wrapper queries apart, then wrapper queries
    against the documents below them (when the report has that subset), the LDS given ``counterfactual``,
    random row last."""
    counts = {s: random["subsets"].get(s, {}).get("count", 0) for s in TABLE_SUBSETS}
    columns = [(s, metric, f"{s} {name}") for s in TABLE_SUBSETS for metric, name in MAIN_METRICS]
    if HOP_SUBSET in random["subsets"]:
        columns += [(HOP_SUBSET, metric, f"wrapper→base {name}") for metric, name in HOP_METRICS]
    names = list(counterfactual or {})
    header = [
        "method",
        *(title for _, _, title in columns),
        *lds_report.headers(counterfactual or {}),
        "time (s)",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = [(r.label, r.report, r.lds, f"{r.seconds:.1f}") for r in results]
    rows.append(("random (expected)", random, None, "–"))
    for label, report, row_lds, seconds in rows:
        cells = [_cell(report, subset, metric) for subset, metric, _ in columns]
        cells += [lds_report.cell((row_lds or {}).get(name)) for name in names]
        lines.append("| " + " | ".join([label, *cells, seconds]) + " |")
    queries = ", ".join(f"{counts[s]} {s}" for s in TABLE_SUBSETS)
    lines.append(
        f"\nMacro averages over functions on the test split ({queries} queries). wrapper→base: wrapper "
        "queries ranking the documents of the functions they call, their own function's documents left "
        "out. Time: prepare + scoring; features shared by several methods count where they are first "
        "computed."
    )
    if counterfactual:
        lines.append(lds_report.note(counterfactual))
    tuned = [r for r in results if _was_tuned(r)]
    if tuned:
        lines.append(
            "\nOptions chosen on the validation queries (best macro mAP of the grid; time includes the grid):"
        )
        lines += [f"- {r.label}: {r.tuned.summary()} (of {len(r.tuned.trials)})" for r in tuned]
    return "\n".join(lines)


def plot_recall(path: Path, tensorboard: Path, results: Sequence[MethodResult], random: dict) -> None:
    """Macro recall@k against k for all / base / wrapper queries (and wrapper queries against the documents
    below them, when reported) of every method and the random expectation: ``path`` and TensorBoard."""
    import matplotlib.pyplot as plt
    from torch.utils.tensorboard import SummaryWriter

    subsets = (*TABLE_SUBSETS, *([HOP_SUBSET] if HOP_SUBSET in random["subsets"] else []))
    groups = (("all", lambda r: r), *((s, lambda r, s=s: r["subsets"].get(s, {})) for s in subsets))
    reports = [(r.label, r.report) for r in results] + [("random (expected)", random)]
    panels = {}
    for name, pick in groups:
        title = "wrapper queries, docs below" if name == HOP_SUBSET else f"{name} queries"
        panels[title] = {label: _macro_recall(pick(report)) for label, report in reports}
    fig = recall_figure(panels, "macro recall@k")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    with SummaryWriter(str(tensorboard)) as writer:
        writer.add_figure("test/recall_at_k", fig, close=False)
    plt.close(fig)


def _macro_recall(report: dict) -> dict[int, float]:
    macro = report.get("macro", {})
    return {k: macro[f"recall@{k}"] for k in KS if f"recall@{k}" in macro}


def write_tensorboard(root: Path, results: Sequence[MethodResult], random: dict) -> None:
    """One run per label (its own folder): flat test/... scalars, recall@k by k, settings as hparams."""
    from torch.utils.tensorboard import SummaryWriter

    runs = [(r.label, r.report, {**r.hparams, "label": r.label}, r.lds) for r in results]
    runs.append(
        ("random_expectation", random, {"method": "random_expectation", "label": "random_expectation"}, None)
    )
    for label, report, hparams, lds in runs:
        with SummaryWriter(str(root / _folder(label))) as writer:
            for k in KS:
                value = report["macro"].get(f"recall@{k}")
                if value is not None:
                    writer.add_scalar("test/macro/recall@k", value, global_step=k)
            scalars = {key: value for key, value in flatten(report, "test").items() if not math.isnan(value)}
            scalars.update(
                {
                    f"test/lds/{name}/{key}": s[key]
                    for name, s in (lds or {}).items()
                    for key in ("mean", "macro")
                }
            )
            writer.add_hparams({key: _scalar(v) for key, v in hparams.items()}, scalars, run_name=".")


def _scalar(value: object) -> float | int | str | bool:
    return value if isinstance(value, (bool, int, float, str)) else str(value)


def _folder(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", label) or "_"


def check_labels(labels: Sequence[str]) -> None:
    """Labels must be unique, non-empty and not a reserved key of the outputs."""
    seen = set()
    for label in labels:
        if not label or label in RESERVED_LABELS or label in seen:
            why = "empty" if not label else "reserved" if label in RESERVED_LABELS else "used twice"
            raise ValueError(f"methods: label {label!r} is {why}; give every method entry its own label")
        seen.add(label)


def as_float32(scores: Tensor) -> Tensor:
    """Scores as CPU float32 (what scores.safetensors stores)."""
    return scores.detach().to(device="cpu", dtype=torch.float32)
