"""The wall time of the whole 1B comparison for `bench/throughput.py --compare`: compare.py with the pair
overlay on random-weight models, a fresh process per run."""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from archs import dtype_for


# grad_sim's default projection forms each text's exact parameter gradient (1.5e9 numbers at 1B) and projects
# it in 4096-row blocks from Python (not run at 1B); here it projects the Linear weights' gradients by
# Kronecker factors instead, in batches as large as the gradient feature pass's.
def time_compare(old, new, tokenizer, device: torch.device, args: argparse.Namespace) -> dict:
    """Wall time of the whole 1B comparison, ``python compare.py --config configs/compare.yaml --config
    configs/pairs/<arch>.yaml`` (every row, its grids and seed rows, the overlay's batch sizes and method
    overrides), with the overlay's pair, corpus, dtype and device replaced by the random-weight models,
    --corpus and this machine's, no feature cache, --compare-skip's methods left out (default none): the
    median of --repeats runs, each a fresh process (imports and model loading included)."""
    import yaml

    repo = Path(__file__).resolve().parents[1]
    root = Path(tempfile.mkdtemp(prefix="bench-compare-"))
    for name, model in (("old", old), ("new", new)):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    config = yaml.safe_load((repo / "configs" / "compare.yaml").read_text())
    overlay = yaml.safe_load((repo / "configs" / "pairs" / f"{args.arch}.yaml").read_text())
    dtype = str(dtype_for(device)).removeprefix("torch.")
    paths = dict(f_old=str(root / "old"), f_new=str(root / "new"), corpus_path=args.corpus)
    overlay["pair"].update(paths, dtype=dtype, device=device.type)
    skip = args.compare_skip
    config["methods"] = [m for m in config["methods"] if m["method"] not in skip]
    kept = {m["label"] for m in config["methods"]}
    overlay["methods"] = {k: v for k, v in overlay["methods"].items() if k in kept}
    (root / "compare.yaml").write_text(yaml.safe_dump(config))
    (root / f"{args.arch}.yaml").write_text(yaml.safe_dump(overlay))
    cmd = [sys.executable, "compare.py", "--config", str(root / "compare.yaml")]
    cmd += ["--config", str(root / f"{args.arch}.yaml"), "--model.feature_cache", "false"]
    cmd += ["--out", str(root / "out")]
    env = dict(os.environ, PROBES_CACHE=str(root / "cache"))
    runs = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, cwd=repo)
        runs.append(time.perf_counter() - start)
    seconds = statistics.median(runs)
    every = ", ".join(f"{run:.1f}" for run in runs)
    print(
        f"{'compare.py wall (models loaded from disk)':42s} {seconds:8.2f} s (runs: {every}); "
        f"skipped: {skip or 'none'}"
    )
    return dict(
        what="compare.py wall", seconds=round(seconds, 2), runs=[round(r, 2) for r in runs], skipped=skip
    )
