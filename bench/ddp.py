"""Scaling of the shared feature pass over several devices under Lightning's ddp strategy, against one device.

    python bench/ddp.py --arch llama3.2-1b --corpus .data/hops/20hops.jsonl --devices 2 [--out DIR]
    python bench/ddp.py --arch llama3.2-1b --shrink --corpus ../shared/data/hops/20hops.jsonl --devices 2 \\
        --accelerator cpu                                                          (CPU smoke test)

The pass is compare.py's: hidden states of both checkpoints at every layer, for the corpus's documents and its
queries, on the random-weight architectures of bench/archs.py (as in bench/throughput.py). The launching
process first times it on one device (``compute_features(devices=1)``, the in-process loop), then with
``devices=N``: the first such pass makes Lightning relaunch this script once per extra device (``LOCAL_RANK``
set), every rank builds the same seeded models on its own device, and the ranks share out the length batches.
Rank 0 alone prints the speed-up and the largest difference between the N-device and one-device features, and
writes the JSON. Every pass gathers the ranks' rows through files in the temporary directory ($TMPDIR).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from archs import build_model, non_embedding_params  # noqa: E402
from measure import add_model_arguments, bench_inputs, count_tokens, timed  # noqa: E402

from probes.features.extract import FeatureSpec, compute_features  # noqa: E402
from probes.lm.ranks import global_rank, rank_device  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_arguments(parser, "llama3.2-1b")
    parser.add_argument("--devices", type=int, default=2, help="devices of the shared pass (>= 2)")
    parser.add_argument(
        "--accelerator",
        choices=("cuda", "cpu"),
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cuda (one GPU per rank) or cpu (gloo; a smoke test of the code path, not of the speed)",
    )
    parser.add_argument("--batch-size", type=int, default=256, help="texts per feature batch")
    parser.add_argument("--out", default=None, help="write ddp-<arch>.json here")
    args = parser.parse_args(argv)
    if args.devices < 2:
        parser.error(f"--devices {args.devices}: give 2 or more (the one-device pass is always timed)")

    device = torch.device(rank_device(args.accelerator, args.devices))
    inputs = bench_inputs(args.corpus)
    tokenizer, docs = inputs.tokenizer, inputs.docs
    qtexts, qtargets = inputs.query_texts, inputs.query_targets
    models = {
        name: build_model(args.arch, args.shrink, device, seed) for seed, name in enumerate(("old", "new"))
    }
    sides = {"docs": (docs, None), "queries": (qtexts, qtargets)}
    spec = FeatureSpec("hidden")  # all layers, last token (a query's: the one before its answer)
    options = dict(batch_size=args.batch_size, progress=False)

    def feature_pass(devices: int) -> dict[str, torch.Tensor]:
        return {
            f"{name} {side}": compute_features(
                model, tokenizer, texts, spec, targets=targets, devices=devices, **options
            )
            for name, model in models.items()
            for side, (texts, targets) in sides.items()
        }

    # the launching process; the ranks Lightning starts skip the one-device run
    lead = global_rank(args.devices) == 0
    if lead:
        tokens = 2 * count_tokens(tokenizer, docs + qtexts)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        print(
            f"{args.devices} x {name}; {args.arch}{' (shrunk)' if args.shrink else ''}: "
            f"{non_embedding_params(models['new']) / 1e6:.1f}M non-embedding params; both checkpoints over "
            f"{len(docs)} docs + {len(qtexts)} queries = {tokens:,} tokens",
            flush=True,
        )
        compute_features(models["old"], tokenizer, docs[: 2 * args.batch_size], spec, **options)  # warm-up
        single, t_one = timed(lambda: feature_pass(1), device)
    # the first pass over several devices starts the other ranks, which build their models meanwhile: warm-up
    compute_features(
        models["old"],
        tokenizer,
        docs[: args.devices * args.batch_size],
        spec,
        devices=args.devices,
        **options,
    )
    shared, t_many = timed(lambda: feature_pass(args.devices), device)
    if not lead:
        return
    differences = {key: _relative_difference(shared[key], single[key]) for key in single}
    rows = [
        dict(what="feature pass, both checkpoints, 1 device (in-process)", devices=1, seconds=t_one),
        dict(
            what=f"feature pass, both checkpoints, {args.devices} devices (ddp)",
            devices=args.devices,
            seconds=t_many,
        ),
    ]
    for row in rows:
        row.update(seconds=round(row["seconds"], 3), tokens_per_s=round(tokens / row["seconds"]))
        print(f"{row['what']:52s} {row['seconds']:8.2f} s {row['tokens_per_s']:12,} tok/s", flush=True)
    speedup = t_one / t_many
    print(
        f"speed-up {speedup:.2f}x on {args.devices} devices ({100 * speedup / args.devices:.0f}% efficiency)"
    )
    print(
        "max |features(N devices) - features(1 device)| / max |features(1 device)|: "
        + ", ".join(f"{key} {value:.2e}" for key, value in differences.items())
    )
    result = dict(
        arch=args.arch,
        shrunk=args.shrink,
        device=name,
        devices=args.devices,
        batch_size=args.batch_size,
        tokens=tokens,
        rows=rows,
        speedup=round(speedup, 3),
        max_relative_difference=differences,
    )
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / f"ddp-{args.arch}.json").write_text(json.dumps(result, indent=2))


def _relative_difference(got: torch.Tensor, expected: torch.Tensor) -> float:
    """The largest element-wise difference over the largest magnitude (per-element ratios blow up near 0)."""
    return float((got.float() - expected.float()).abs().max() / expected.float().abs().max())


if __name__ == "__main__":
    main()
