"""``remove``: for each test function, drop the k documents a method ranks highest for its test queries,
retrain f_old on the rest with f_new's recipe, and measure how much that function's test answers lose against
one retrain on the whole corpus (same recipe, same seed); k random and k structurally relevant documents
are the controls. A method whose top documents matter lowers the answers more than random removal does.
"""

from __future__ import annotations

import gc
import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from jsonargparse import Namespace
from torch import Tensor

from probes.compare.reuse import DLP, record, take_rows
from probes.counterfactual.executors import LOCAL, Executor
from probes.counterfactual.ground_truth import identity
from probes.counterfactual.selection import (
    RANDOM,
    RELEVANCE,
    function_rows,
    markdown,
    method_drop,
    random_drop,
    relevance_drop,
    seeded,
)
from probes.counterfactual.study import (
    PARTS,
    PLAN,
    ChunkStore,
    Study,
    claim,
    default_workers,
    load_study,
    machine,
    run_chunks,
)
from probes.errors import UserError
from probes.files import atomic_path
from probes.methods import unavailable
from probes.metrics.bootstrap import bootstrap
from probes.outputs import Output

RESULT, TABLE = "removal.json", "removal.md"
COMPARE = "compare"  # compare.py's output for the rows no --scores folder had
FILES = (RESULT, TABLE, f"{COMPARE}/", f"{PARTS}/", PLAN)
KIND = "python -m probes.counterfactual remove"  # its output marker's kind

Selections = dict[int, dict[str, dict[str, list[int]]]]  # k -> row label -> function -> dropped documents


def load_compare():
    """The comparison's run (probes.compare.run), imported on first use: it imports every method."""
    import probes.compare.run as compare

    return compare


def restrict(cfg: Namespace, labels: Sequence[str]) -> Namespace:
    """The compare config with only the ``labels`` rows of its methods (and the DLP when ``dlp`` is one),
    refusing an unknown label or one that names a control row, before anything loads."""
    known = [e.label for e in cfg.methods] + (["dlp"] if cfg.dlp_checkpoint else [])
    missing = [label for label in labels if label not in known]
    if missing:
        raise UserError(
            f"--labels {', '.join(missing)}: not among the config's methods ({', '.join(known) or 'none'}); "
            "'dlp' needs --dlp_checkpoint"
        )
    controls = [label for label in labels if label in (RANDOM, RELEVANCE)]
    if controls:
        raise UserError(
            f"--labels {', '.join(controls)}: {RANDOM!r} and {RELEVANCE!r} name the control rows, which "
            "every table has; leave them out"
        )
    missing = unavailable((e.label, e.method) for e in cfg.methods if e.label in labels)
    if missing:
        raise UserError(
            f"--labels {', '.join(missing)}: their library is not installed "
            f"({' / '.join(sorted(set(missing.values())))}); install it or leave them out"
        )
    if cfg.model.devices != 1:
        raise UserError(f"model.devices={cfg.model.devices}: remove runs on one device; give 1")
    restricted = cfg.clone()
    restricted.methods = [e for e in cfg.methods if e.label in labels]
    restricted.dlp_checkpoint = cfg.dlp_checkpoint if "dlp" in labels else None
    restricted.counterfactual = []
    return restricted


def method_scores(
    restricted: Namespace, output: Output, study: Study, reuse: Sequence[str | Path] = ()
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Test scores ``[q, n]`` of the restricted config's rows, and the folder each came from.

    A row is taken from the first finished comparison, among ``reuse`` (compare.py output folders) and then
    ``out/compare`` (this command's earlier run), that computed it from the same config and the same inputs
    by content (`probes.compare.reuse`), so a resumed removal drops the same documents, and a pair rebuilt or
    a corpus rewritten at the same path is scored again. The other rows are scored with compare.py's own code
    (each tuned on val as compare.py tunes it) into ``out/compare``."""
    labels = [e.label for e in restricted.methods] + ([DLP] if restricted.dlp_checkpoint else [])
    wanted = record(restricted, study.corpus_sha256, study.old, study.new)
    folder, n = output.folder / COMPARE, len(study.job.texts)
    rows = take_rows([*reuse, *([folder] if folder.is_dir() else [])], wanted, labels, study.query_ids, n)
    missing = [label for label in labels if label not in rows]
    if missing:
        rest = restrict(restricted, missing)
        compare = load_compare()
        compare.check_config(rest, folder)
        rest.overwrite = False  # its own folder inside this command's output
        print(compare.run(rest, folder))
        output.record(f"{COMPARE}/")
        gc.collect()  # the pair and its features go before the retrains take the device
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        rows.update(take_rows([folder], wanted, missing, study.query_ids, n))
        if set(rows) != set(labels):
            raise RuntimeError(f"compare.py did not record the rows {sorted(set(labels) - set(rows))}")
    return {label: rows[label].scores for label in labels}, {label: rows[label].folder for label in labels}


def choose_functions(functions: Sequence[str], count: int | None, seed: int) -> list[str]:
    """The test functions to remove documents for: all (sorted), or a seeded sample of ``count``."""
    names = sorted(set(functions))
    if count is None:
        return names
    if not 0 < count <= len(names):
        raise UserError(f"--functions={count}: the test split has {len(names)} functions; give fewer")
    keep = torch.randperm(len(names), generator=seeded(seed, "functions")).tolist()[:count]
    return sorted(names[i] for i in keep)


def select(
    scores: dict[str, Tensor],
    relevant: Tensor,
    rows: dict[str, list[int]],
    ks: Sequence[int],
    seed: int,
) -> Selections:
    """Every row's dropped documents per k and function: the methods', then random's and relevance's."""
    n = relevant.shape[1]
    out: Selections = {}
    for k in ks:
        out[k] = {
            label: {f: method_drop(s[r], k, seed, f) for f, r in rows.items()} for label, s in scores.items()
        }
        out[k][RANDOM] = {f: random_drop(n, k, seed, f) for f in rows}
        out[k][RELEVANCE] = {f: relevance_drop(relevant[r], k, seed, f) for f, r in rows.items()}
    return out


def retrain_plan(selections: Selections, n: int, data_seed: int) -> tuple[list, dict[tuple[int, ...], int]]:
    """Row 0 the full corpus (the shared baseline), then one row per distinct dropped set (two rows that drop
    the same documents share one retrain); returns the plan and each dropped set's row."""
    plan, row_of = [(list(range(n)), data_seed)], {}
    for by_label in selections.values():
        for by_function in by_label.values():
            for dropped in by_function.values():
                key = tuple(dropped)
                if key not in row_of:
                    row_of[key] = len(plan)
                    gone = set(dropped)
                    plan.append(([i for i in range(n) if i not in gone], data_seed))
    return plan, row_of


def summarise(
    selections: Selections,
    row_of: dict[tuple[int, ...], int],
    outputs: Tensor,
    rows: dict[str, list[int]],
    seed: int,
) -> dict:
    """Per k, row and function the dropped documents and Δ = baseline - removed of the function's mean test
    answer log-prob and accuracy; per k and row their mean and bootstrap CI over the functions."""
    base = outputs[0].double()
    report: dict = {}
    for k, by_label in selections.items():
        report[k] = {}
        for label, by_function in by_label.items():
            entry: dict = {"functions": {}}
            for function, dropped in by_function.items():
                removed, r = outputs[row_of[tuple(dropped)]].double(), rows[function]
                delta = (base[:, r].mean(dim=1) - removed[:, r].mean(dim=1)).tolist()
                entry["functions"][function] = {
                    "dropped": dropped,
                    "delta_logp": delta[0],
                    "delta_acc": delta[1],
                }
            values = entry["functions"].values()
            entry["logp"] = bootstrap(torch.tensor([v["delta_logp"] for v in values]), seed)
            entry["accuracy"] = bootstrap(torch.tensor([v["delta_acc"] for v in values]), seed)
            if label == RELEVANCE:
                entry["fewer_than_k"] = [f for f, d in by_function.items() if len(d) < k]
            report[k][label] = entry
    return report


def remove_documents(
    cfg: Namespace,
    out: Path,
    *,
    labels: Sequence[str],
    ks: Sequence[int],
    functions: int | None = None,
    seed: int = 0,
    stack: int = 25,
    workers: int | None = None,
    executor: Executor = LOCAL,
    reuse: Sequence[str | Path] = (),
    overwrite: bool = False,
) -> dict:
    """Score (or take the rows of the finished comparisons in ``reuse`` computed from the same config and
    inputs, `method_scores`), choose, retrain (resumable under ``out/parts``), then write removal.json and
    removal.md."""
    if not ks or min(ks) < 1 or len(set(ks)) != len(ks):
        raise UserError(f"--k {list(ks)}: give distinct document counts of at least 1")
    labels = list(dict.fromkeys(labels))
    restricted = restrict(cfg, labels)
    started = time.time()
    study = load_study(cfg, stack=stack)
    n = len(study.job.texts)
    if max(ks) >= n:
        raise UserError(f"--k {max(ks)}: the corpus has {n} documents; remove fewer than that")
    job = study.job
    ident = identity(job.texts, study.query_ids, study.query_texts, study.old_model, study.old, study.new)
    asked = {"labels": list(labels), "k": list(ks), "functions": functions, "seed": seed}
    output = claim(cfg, out, KIND, FILES, overwrite=overwrite, settings=asked)
    scores, sources = method_scores(restricted, output, study, reuse)
    scores = {label: scores[label] for label in labels}  # the table's rows in --labels order
    chosen = choose_functions(study.functions, functions, seed)
    every = function_rows(study.functions)
    rows = {f: every[f] for f in chosen}
    relevant = study.data.relevant[torch.tensor(study.query_ids)]
    selections = select(scores, relevant, rows, ks, seed)
    plan, row_of = retrain_plan(selections, n, study.recipe_seed)
    plan_hash = hashlib.sha256(json.dumps(plan).encode()).hexdigest()
    settings = {"command": "remove", "labels": list(labels), "k": list(ks), "functions": chosen, "seed": seed}
    store = ChunkStore(output, {**settings, "plan": plan_hash, **ident, **study.recipe_file})
    workers = default_workers(study.job.device, workers)
    outputs = run_chunks(store, study.job, plan, workers=workers, desc="removal", executor=executor)
    report = {
        "version": 1,
        **settings,
        "retrains": len(plan),
        "scores": sources,
        "baseline": {"logp": outputs[0, 0].mean().item(), "accuracy": outputs[0, 1].mean().item()},
        "seeds": {"choice": seed, "data_order": study.recipe_seed},
        **ident,
        "recipe": {"pair_manifest": str(Path(study.old).parent / "manifest.json"), **study.job.describe()},
        "seconds": round(time.time() - started, 1),
        "workers": workers,
        "machine": machine(study.job),
        "k": summarise(selections, row_of, outputs, rows, seed),
    }
    write_report(out, output, report)
    store.finish()
    return report


def write_report(out: Path, output, report: dict) -> None:
    """removal.json and removal.md, each written atomically and recorded in the output folder's marker."""
    with atomic_path(out / RESULT) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    with atomic_path(out / TABLE) as tmp:
        tmp.write_text(markdown(report))
    output.record(RESULT, TABLE)
