"""The whole study on one corpus, one command: build and evaluate a pair, train the DLP, run compare.py.

    python scripts/pair_study.py --corpus .data/hops/20hops.jsonl --out results/study \
        [--preset small] [--jobs 4]

Every step is the project's own command line run as a subprocess (its log in OUT/logs/), so the study runs
exactly what a user runs; up to ``--jobs`` run at once, each as soon as what it needs exists:

1. ``python -m probes.pairs build`` the pair (``--preset``, ``--seed``) into OUT/pair, and ``evaluate`` it;
2. the DLP (``train_probe.py fit`` then ``test --ckpt_path best``) for each head and split, ``--seeds`` seeds:
   multi-hot on by_input, pairwise on by_input and on by_function (multi-hot cannot rank documents of held-out
   functions), from configs/dlp.yaml and configs/dlp-heldout-functions.yaml;
3. ``compare.py`` with configs/compare.yaml on both splits, every configs/ablations/*.yaml on by_input, and
   the seed-0 DLP of each split through compare.py (``--dlp_checkpoint``), all sharing one feature cache;
4. the counterfactual check: ``python -m probes.counterfactual build`` (``--subsets`` M,
   ``--seeds-per-subset`` K) into OUT/counterfactual/gt, compare.py with ``--counterfactual`` (every row's
   LDS, the seed-0 multi-hot DLP too) into OUT/compare/lds, and ``remove`` (REMOVAL_LABELS, ekfac and
   trackstar where installed, the seed-0 multi-hot DLP; k = 300, 6 functions) into OUT/counterfactual/removal;
   both take the rows' scores from step 3's by_input runs (``--scores``) instead of scoring them again;
5. OUT/summary.md: the pair's accuracies and every table (also the DLP's mean and spread over seeds).

A step whose outputs exist is skipped, so a study cut short resumes where it stopped. ``--steps PATTERN ...``
runs only the steps whose names match (fnmatch: ``'dlp/*' 'compare/by_input'``), with the pair's build and
evaluation: a study split over machines that keep nothing between calls (each builds the same seeded pair).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from probes.errors import check_device, cli_main
from probes.methods import missing_extra

ROOT = Path(__file__).resolve().parents[1]
# the project, also when it is not installed (the summary reads its tables); and pair_study_summary.py
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from pair_study_summary import summarise  # noqa: E402

DLP_RUNS = (  # (name, base config, split)
    ("multihot-by_input", "configs/dlp.yaml", "by_input"),
    ("pairwise-by_input", "configs/dlp-heldout-functions.yaml", "by_input"),
    ("pairwise-by_function", "configs/dlp-heldout-functions.yaml", "by_function"),
)
# the tuned rows whose top documents the removal test drops (with its random and relevance controls), and
# the multi-hot DLP of seed 0; ekfac and trackstar where their library is installed (compare.py skips them
# otherwise)
REMOVAL_LABELS = ("bm25", "repsim", "delta_h", "attr_weighted", "act_grad", "grad_sim", "patching")
REMOVAL_OPTIONAL = ("ekfac", "trackstar")
DLP_FOR_COMPARE = {"by_input": "multihot-by_input", "by_function": "pairwise-by_function"}


@dataclass
class Job:
    name: str
    commands: list[list[str]]
    needs: list[str] = field(default_factory=list)
    stdout: Path | None = None  # where its commands' stdout goes (default: the log)


def dlp_config(args, name: str, base: str, split: str, seed: int) -> Path:
    """The base DLP config with this run's pair, corpus, split, seed and output folders."""
    config = yaml.safe_load((ROOT / base).read_text())
    run = f"{name}-s{seed}"
    config["seed_everything"] = seed
    config["trainer"]["logger"]["init_args"].update(save_dir=str(args.out / "dlp"), name=run)
    config["model"]["model"] = str(args.out / "pair" / "new")
    config["data"].update(corpus_path=str(args.corpus), split=split)
    path = args.out / "configs" / f"{run}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def jobs(args) -> list[Job]:
    py, out = sys.executable, args.out
    pair = out / "pair"
    found = []
    build = [py, "-m", "probes.pairs", "build", "--preset", args.preset, "--corpus", str(args.corpus)]
    build += ["--out", str(pair), "--seed", str(args.seed), "--device", args.device]
    found.append(Job("build", [build]))
    evaluate = [py, "-m", "probes.pairs", "evaluate", "--old", str(pair / "old"), "--new", str(pair / "new")]
    evaluate += ["--corpus", str(args.corpus), "--device", args.device, "--json"]
    found.append(Job("evaluate", [evaluate], ["build"], stdout=out / "pair_eval.json"))
    for name, base, split in DLP_RUNS:
        for seed in args.seeds:
            config = str(dlp_config(args, name, base, split, seed))
            run = f"{name}-s{seed}"
            fit = [py, "train_probe.py", "fit", "--config", config]
            test = [py, "train_probe.py", "test", "--config", config, "--ckpt_path", "best"]
            found.append(Job(f"dlp/{run}", [fit, test], ["build"]))
    common = ["--data.corpus_path", str(args.corpus), "--model.old", str(pair / "old")]
    common += ["--model.new", str(pair / "new"), "--model.device", args.device]
    common += ["--model.feature_batch_size", str(args.feature_batch_size)]
    common += ["--model.score_batch_size", str(args.score_batch_size)]

    def compare(name: str, config: str, needs: list[str], *extra: str) -> Job:
        folder = out / "compare" / name
        command = [py, "compare.py", "--config", config, *common, *extra, "--out", str(folder)]
        return Job(f"compare/{name}", [command], needs)

    found.append(compare("by_input", "configs/compare.yaml", ["build"]))
    found.append(
        compare("by_function", "configs/compare.yaml", ["compare/by_input"], "--data.split", "by_function")
    )
    for split, run in DLP_FOR_COMPARE.items():
        checkpoint = out / "dlp" / f"{run}-s{args.seeds[0]}" / "best.ckpt"  # the latest fit's best
        needs = [f"dlp/{run}-s{args.seeds[0]}", "compare/by_input"]
        found.append(
            compare(
                f"dlp-{split}",
                "configs/compare.yaml",
                needs,
                "--data.split",
                split,
                "--methods",
                "[]",
                "--dlp_checkpoint",
                str(checkpoint),
            )
        )
    found += counterfactual_jobs(args, common, compare)
    for config in sorted((ROOT / "configs" / "ablations").glob("*.yaml")):
        found.append(compare(f"ablations/{config.stem}", str(config.relative_to(ROOT)), ["compare/by_input"]))
    return found


def counterfactual_jobs(args, common: list[str], compare) -> list[Job]:
    """The counterfactual check (probes.counterfactual): the ground truth, the LDS of every row (DLP too),
    and the removal test; ``common`` are the pair's compare.py options, ``compare`` makes a compare.py job."""
    py, out = sys.executable, args.out
    found = []
    gt = out / "counterfactual" / "gt"
    cf = [py, "-m", "probes.counterfactual"]
    build_gt = [*cf, "build", "--config", "configs/compare.yaml", *common, "--out", str(gt)]
    build_gt += ["--subsets", str(args.subsets), "--seeds-per-subset", str(args.seeds_per_subset)]
    build_gt += ["--stack", str(args.stack)]
    found.append(Job("counterfactual/gt", [build_gt], ["build"]))
    checkpoint = out / "dlp" / f"multihot-by_input-s{args.seeds[0]}" / "best.ckpt"
    # the rows' scores are those of the by_input runs (the same config and inputs): only the LDS is new
    scored = [str(out / "compare" / "by_input"), str(out / "compare" / "dlp-by_input")]
    needs = ["counterfactual/gt", f"dlp/multihot-by_input-s{args.seeds[0]}", "compare/by_input"]
    needs.append("compare/dlp-by_input")
    lds_args = ["--counterfactual", str(gt), "--dlp_checkpoint", str(checkpoint), "--scores", *scored]
    found.append(compare("lds", "configs/compare.yaml", needs, *lds_args))
    labels = [*REMOVAL_LABELS, *(name for name in REMOVAL_OPTIONAL if not missing_extra(name)), "dlp"]
    removal = [
        *cf,
        "remove",
        "--config",
        "configs/compare.yaml",
        *common,
        "--dlp_checkpoint",
        str(checkpoint),
    ]
    removal += ["--labels", *labels, "--k", "300", "--functions", "6", "--stack", str(args.stack)]
    removal += ["--scores", *scored]
    removal += ["--out", str(out / "counterfactual" / "removal")]
    needs = [f"dlp/multihot-by_input-s{args.seeds[0]}", "compare/by_input", "compare/dlp-by_input"]
    found.append(Job("counterfactual/removal", [removal], needs))
    return found


def select(all_jobs: list[Job], patterns: list[str] | None) -> list[Job]:
    """The jobs whose names match a pattern, plus the pair's build and evaluation; a need that is not
    selected is replaced by its own needs (a compare run that only waited for another to share its feature
    cache still waits for the pair)."""
    if not patterns:
        return all_jobs
    keep = {"build", "evaluate"} | {
        job.name for job in all_jobs if any(fnmatch.fnmatchcase(job.name, p) for p in patterns)
    }
    needs = {job.name: job.needs for job in all_jobs}

    def kept(names: list[str]) -> list[str]:
        return [m for n in names for m in ([n] if n in keep else kept(needs[n]))]

    return [
        Job(j.name, j.commands, list(dict.fromkeys(kept(j.needs))), j.stdout)
        for j in all_jobs
        if j.name in keep
    ]


def run_all(all_jobs: list[Job], slots: int, out: Path, env: dict) -> dict[str, str]:
    """Run the jobs, at most ``slots`` at once, each once its needs succeeded; returns name -> outcome.

    A job that succeeds leaves OUT/done/<name>; a later run skips it."""
    logs, marks = out / "logs", out / "done"

    def mark(job: Job) -> Path:
        return marks / job.name

    outcome = {job.name: "skipped (done before)" for job in all_jobs if mark(job).exists()}
    pending = [job for job in all_jobs if job.name not in outcome]
    running: dict[str, tuple[Job, subprocess.Popen, int, float]] = {}
    logs.mkdir(parents=True, exist_ok=True)

    def start(job: Job, step: int) -> subprocess.Popen:
        log = logs / f"{job.name.replace('/', '__')}.log"
        with log.open("a") as handle:
            handle.write(f"$ {' '.join(job.commands[step])}\n")
        stdout = job.stdout.open("w") if job.stdout else log.open("a")
        with stdout, log.open("a") as stderr:  # the child keeps its own copies
            return subprocess.Popen(job.commands[step], cwd=ROOT, env=env, stdout=stdout, stderr=stderr)

    while pending or running:
        for job in list(pending):
            if any(outcome.get(need, "ok").startswith("failed") for need in job.needs):
                outcome[job.name] = "failed (a step it needs failed)"
                pending.remove(job)
            elif len(running) < slots and all(
                outcome.get(need) in ("ok", "skipped (done before)") for need in job.needs
            ):
                pending.remove(job)
                running[job.name] = (job, start(job, 0), 0, time.perf_counter())
                print(f"started {job.name}", flush=True)
        time.sleep(0.5)
        for name, (job, process, step, began) in list(running.items()):
            code = process.poll()
            if code is None:
                continue
            if code == 0 and step + 1 < len(job.commands):
                running[name] = (job, start(job, step + 1), step + 1, began)
                continue
            del running[name]
            seconds = time.perf_counter() - began
            if code == 0:
                mark(job).parent.mkdir(parents=True, exist_ok=True)
                mark(job).touch()
                outcome[name] = "ok"
            else:
                outcome[name] = f"failed (exit {code}, see logs/{name.replace('/', '__')}.log)"
            print(f"{outcome[name]:>6s}: {name} in {seconds:.0f} s", flush=True)
            outcome[f"{name}/seconds"] = f"{seconds:.0f}"
    return outcome


def main(argv: list[str] | None = None) -> int:
    """Run the study; a user error exits with one line on stderr and code 2 (``--debug``: the traceback)."""
    return cli_main(_main, argv)


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--corpus", type=Path, required=True, help="HOPS JSONL corpus (e.g. the reference 20hops)"
    )
    parser.add_argument("--out", type=Path, default=Path("results/study"), help="study folder")
    parser.add_argument(
        "--preset", default="small", help="model preset of the pair (python -m probes.pairs build)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the pair")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="DLP seeds")
    parser.add_argument("--device", default="cuda", help="cuda or cpu (the DLP uses the Trainer's 'auto')")
    parser.add_argument("--jobs", type=int, default=4, help="steps run at once (one GPU is shared)")
    parser.add_argument("--subsets", type=int, default=100, help="counterfactual ground truth: subsets")
    parser.add_argument(
        "--seeds-per-subset", type=int, default=5, help="counterfactual ground truth: seeds per subset (K)"
    )
    parser.add_argument(
        "--feature-batch-size", type=int, default=128, help="compare.py model.feature_batch_size"
    )
    parser.add_argument(
        "--stack", type=int, default=25, help="counterfactual retrains run at once on a GPU (build, remove)"
    )
    parser.add_argument("--score-batch-size", type=int, default=64, help="compare.py model.score_batch_size")
    parser.add_argument(
        "--steps", nargs="+", default=None, help="run only the steps matching these fnmatch patterns"
    )
    args = parser.parse_args(argv)
    args.corpus, args.out = args.corpus.resolve(), args.out.resolve()
    if not args.corpus.is_file():
        parser.error(f"--corpus {args.corpus}: no such file")
    check_device(args.device, "--device")  # before any step starts, not once per step
    env = dict(os.environ, PROBES_CACHE=str(args.out / "cache"), PYTHONUNBUFFERED="1")
    start = time.perf_counter()
    outcome = run_all(select(jobs(args), args.steps), args.jobs, args.out, env)
    (args.out / "outcome.json").write_text(json.dumps(outcome, indent=1) + "\n")
    summary = summarise(args, outcome, time.perf_counter() - start, DLP_RUNS)
    (args.out / "summary.md").write_text(summary)
    print(summary)
    return 1 if any(v.startswith("failed") for v in outcome.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
