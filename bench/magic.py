"""Speed and memory of MAGIC's oracle (`baselines.magic`): the forward replay of f_new's fine-tune with its
checkpoints, then one reverse pass per batch of queries, as ``compare.py``'s ``magic`` row and ``python -m
probes.counterfactual oracle`` run them.

    python bench/magic.py --config configs/compare.yaml [--model.device cuda] [--model.old P/old --model.new
        P/new] [--split test] [--queries 400] [--query-batch 100 200 400] [--every N] [--max-steps S]

Prints a table: queries, queries per reverse pass, steps, the forward replay's seconds, the reverse passes'
seconds, the total, and the peak GPU memory. ``--max-steps S`` replays only S steps of the recipe (a quick
estimate on a CPU: the reverse pass costs the same per step throughout, so the full run takes about
steps / S times as long); ``--queries`` takes the split's first queries.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from jsonargparse import ArgumentParser

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from probes.compare.config import add_study_arguments  # noqa: E402
from probes.counterfactual.oracle import load_oracle  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__)
    add_study_arguments(parser)
    parser.add_argument("--out", type=str | None, default=None, help="unused (a compare config may set it)")
    parser.add_argument("--split", type=str, default="test")
    parser.add_argument("--queries", type=int | None, default=None, help="the split's first N queries")
    parser.add_argument("--query-batch", type=int, nargs="+", default=[64])
    parser.add_argument("--every", type=int | None, default=None)
    parser.add_argument("--max-steps", type=int, default=0)
    args = parser.parse_args(argv)
    cuda = args.model.device.startswith("cuda")
    if args.model.threads and not cuda:
        torch.set_num_threads(args.model.threads)
    start = time.perf_counter()
    loaded = load_oracle(args, args.split, args.every, args.max_steps)
    forward = time.perf_counter() - start
    queries = loaded.queries[: args.queries]
    steps = loaded.oracle.replay.steps
    print(f"{loaded.manifest['pair']['old']}: {len(loaded.oracle.replay.seqs)} documents, {steps} steps")
    print("| queries | per pass | steps | forward s | reverse s | total s | peak GiB |", flush=True)
    for batch in args.query_batch:
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        try:
            loaded.oracle.scores(queries, batch)
        except torch.OutOfMemoryError:
            print(f"| {len(queries)} | {batch} | {steps} | out of memory |", flush=True)
            torch.cuda.empty_cache()
            continue
        if cuda:
            torch.cuda.synchronize()
        reverse = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
        times = f"{forward:.1f} | {reverse:.1f} | {forward + reverse:.1f}"
        print(f"| {len(queries)} | {batch} | {steps} | {times} | {peak:.1f} |", flush=True)


if __name__ == "__main__":
    main()
