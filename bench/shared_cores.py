"""Speed of the project's CPU jobs alone and beside one busy process, under each OpenMP wait policy.

    python bench/shared_cores.py [--jobs fit pair compare retrain] [--policies default PASSIVE] [--repeats 1]

Each job is a short run of a real command (the main job's fit on the embedded default, a pair build, a
compare.py run of one gradient and one hidden-state method, counterfactual retrains), timed by wall clock as
a subprocess, first alone and then beside ``python -c "while True: pass"`` (one busy process, like a second
experiment), back to back. ``default`` is libgomp's own wait policy (spin, then sleep: what torch did before
probes set PASSIVE); ``PASSIVE`` is what importing probes sets. Prints a markdown table for BENCHMARKS.md:
job, policy, seconds alone, seconds beside the busy process, and their ratio (the target: at most 2x).
Needs the embedded default pair in $PROBES_CACHE (any earlier fit or compare.py run builds it).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from probes.files import cache_dir  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# OMP_WAIT_POLICY per policy: libgomp reads the invalid "default" as unset (its own policy, after one
# warning), and probes keeps any value the environment sets
POLICIES = ("default", "PASSIVE", "ACTIVE")
COMPARE = """
methods:
  - {label: act_grad, method: act_grad}
  - {label: repsim, method: repsim}
model: {feature_cache: false}
"""


def commands(tmp: Path) -> dict[str, list[str]]:
    """The jobs, each a few tens of seconds alone on 2 idle cores."""
    py, corpus = sys.executable, cache_dir() / "corpora/default-hops-v1.jsonl"
    (tmp / "compare.yaml").write_text(COMPARE)
    fit = ["--config", str(ROOT / "configs/dlp.yaml"), "--trainer.max_epochs=1"]
    pair = ["--corpus", str(corpus), "--preset", "micro", "--device", "cpu"]
    compare = ["--config", str(ROOT / "configs/compare.yaml"), "--config", str(tmp / "compare.yaml")]
    retrain = ["--pair", "default", "--retrains", "2", "--workers", "1", "--max-steps", "150"]
    return {
        "fit": [py, str(ROOT / "train_probe.py"), "fit", *fit, "--trainer.limit_train_batches=40"],
        "pair": [py, "-m", "probes.pairs", "build", *pair, "--out", str(tmp / "pair"), "--overwrite"],
        "compare": [py, str(ROOT / "compare.py"), *compare, "--out", str(tmp / "compare"), "--overwrite"],
        "retrain": [py, str(ROOT / "bench/retrain.py"), *retrain, "--prompts", "50", "--device", "cpu"],
    }


def timed(argv: list[str], env: dict, cwd: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run(
        argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    if done.returncode:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def measure(argv: list[str], env: dict, cwd: Path) -> tuple[float, float]:
    """Seconds alone, then seconds beside one busy process."""
    alone = timed(argv, env, cwd)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        shared = timed(argv, env, cwd)
    finally:
        busy.kill()
        busy.wait()
    return alone, shared


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", nargs="+", default=["fit", "pair", "compare", "retrain"])
    parser.add_argument("--policies", nargs="+", default=["default", "PASSIVE"], choices=POLICIES)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cores = len(os.sched_getaffinity(0))
    print(f"{cores} cores; load average before: {os.getloadavg()[0]:.2f}\n")
    print("| job | OpenMP wait policy | alone (s) | beside 1 busy process (s) | ratio |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        jobs = commands(tmp)
        for job in args.jobs:
            for policy in args.policies:
                for _ in range(args.repeats):
                    alone, shared = measure(jobs[job], {**env, "OMP_WAIT_POLICY": policy}, tmp)
                    print(
                        f"| {job} | {policy} | {alone:.1f} | {shared:.1f} | {shared / alone:.1f}x |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
