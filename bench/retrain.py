"""Speed of the counterfactual retrains: M fine-tunes of f_old on random subsets, as `build` runs them.

    python bench/retrain.py [--pair default | --preset small --corpus .data/hops/20hops.jsonl
        | --arch olmo2-1b --corpus C --recipe configs/recipes/hops-upstream.yaml] [--retrains 16]
        [--seeds-per-subset 1] [--fraction 0.5] [--stack 25 50] [--width-groups 1 4] [--workers 2]
        [--device cpu|cuda] [--max-steps N] [--prompts 400]

``--pair default`` retrains the embedded tiny pair's f_old with its recipe; ``--preset P --corpus C`` builds a
randomly initialised model of preset P with a tokenizer trained on C (speed does not depend on the weights)
and retrains it with the preset's fine-tuning recipe; ``--arch A`` a randomly initialised 1B architecture of
bench/archs.py (float32 weights, trained under bf16 autocast on a GPU as every retrain) with such a tokenizer;
``--recipe FILE`` replaces the recipe (`probes.pairs.recipe.read_recipe`). ``--seeds-per-subset K`` draws
retrains / K subsets, each retrained with K data-order seeds, as ``build`` plans them. On a GPU every
``--stack`` value runs the retrains in chunks of that many models stacked under vmap, after one retrain alone
(`train_lm.train`, the serial reference), once for each ``--width-groups`` value (each step's models split
into at most that many groups of similar batch width); on a CPU the retrains are spread over ``--workers``
processes (one thread each), as ``build`` runs them there. On either device it prints, for every ``--stack``
and ``--width-groups`` value, the share of one block's tokens that the stacked steps compute on (over the
recipe's whole run, whatever ``--max-steps``). ``--max-steps`` caps each retrain (a quick estimate: the rates
hold, the wall time then covers fewer steps). Every timing includes reading the retrained models' answers to
``--prompts`` test prompts. Prints a table: setting, retrains, steps each, seconds, seconds per retrain,
retrains per minute, peak GPU memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from archs import ARCHS  # noqa: E402

from probes.counterfactual import retrain  # noqa: E402
from probes.counterfactual.jobs import Job, Runner, run_plan  # noqa: E402
from probes.counterfactual.regimes import stochastic  # noqa: E402
from probes.data.corpus import load_corpus  # noqa: E402
from probes.hashing import file_sha256  # noqa: E402
from probes.pairs.recipe import pair_recipe, read_recipe  # noqa: E402
from probes.pairs.train import schedule  # noqa: E402


def random_pair(preset: str, corpus_path: str, folder: Path) -> tuple[str, object]:
    """Save a random model of ``preset`` with a tokenizer trained on the corpus; (its folder, the recipe)."""
    from transformers import LlamaForCausalLM

    from probes.pairs.presets import get_preset
    from probes.pairs.tokenizer import train_tokenizer

    cfg = get_preset(preset)
    corpus = load_corpus(corpus_path)
    tokenizer = train_tokenizer(corpus.texts, [], corpus.function_tokens, vocab_size=cfg.bpe_vocab)
    ids = dict(bos=tokenizer.bos_token_id, eos=tokenizer.eos_token_id, pad=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg.model_config(len(tokenizer), **ids)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder), cfg.finetune


def random_arch(arch: str, corpus_path: str, folder: Path) -> str:
    """Save a random float32 model of the 1B architecture ``arch`` with a tokenizer trained on the corpus."""
    from archs import build_model

    from probes.pairs.tokenizer import train_tokenizer

    corpus = load_corpus(corpus_path)
    tokenizer = train_tokenizer(corpus.texts, [], corpus.function_tokens)
    model = build_model(arch, shrink=False, device=torch.device("cpu"), seed=0).float()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pair", choices=["default"], default=None)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--arch", choices=sorted(ARCHS), default=None, help="a random 1B architecture")
    parser.add_argument("--recipe", default=None, help="a recipe YAML replacing the pair's or preset's")
    parser.add_argument("--corpus", default=None, help="HOPS JSONL (default: the embedded default corpus)")
    parser.add_argument("--retrains", type=int, default=16)
    parser.add_argument(
        "--seeds-per-subset", type=int, default=1, help="K: retrains / K subsets, K seeds each"
    )
    parser.add_argument("--prompts", type=int, default=400, help="test prompts read after each retrain")
    parser.add_argument("--fraction", type=float, default=0.5)
    parser.add_argument("--stack", type=int, nargs="+", default=[25])
    parser.add_argument(
        "--width-groups",
        type=int,
        nargs="+",
        default=[retrain.WIDTH_GROUPS],
        help="at most this many vmapped calls a step (probes.counterfactual.retrain.WIDTH_GROUPS)",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--max-steps", type=int, default=0)
    args = parser.parse_args(argv)

    from probes.data.synthetic import resolve_corpus_path

    corpus_path = str(resolve_corpus_path(args.corpus))
    corpus = load_corpus(corpus_path)
    with tempfile.TemporaryDirectory() as tmp:
        if args.pair == "default":
            from probes.pairs.default import ensure_default_pair

            old, _ = ensure_default_pair(corpus_path)
            old, recipe = str(old), pair_recipe(old, file_sha256(corpus_path))[0]
            name = "default tiny pair"
        elif args.arch:
            old, recipe = random_arch(args.arch, corpus_path, Path(tmp) / "old"), None
            name = f"{args.arch}, random weights"
        else:
            old, recipe = random_pair(args.preset, corpus_path, Path(tmp) / "old")
            name = f"{args.preset} preset, random weights"
        if args.recipe:
            recipe = read_recipe(args.recipe)[0]
            name += f", recipe {args.recipe}"
        if recipe is None:
            raise SystemExit("--arch needs --recipe FILE (a random architecture has no recipe of its own)")
        n = len(corpus.texts)
        size = round(args.fraction * n)
        full = recipe, schedule(recipe, size)[0]  # the whole run, for the token shares
        if args.max_steps:
            recipe = dataclasses.replace(recipe, max_steps=args.max_steps)
        steps = schedule(recipe, size)[0]
        seed = 1
        k = args.seeds_per_subset
        draw = dict(subsets=args.retrains // k, fraction=args.fraction, seeds_per_subset=k)
        plan = stochastic(n, **draw, seed=0, recipe_seed=seed).plan
        functions = list(corpus.functions)
        prompts = tuple(
            f"{functions[i % len(functions)]}({i // len(functions)}) returns the value "
            for i in range(args.prompts)
        )
        job = Job(old, tuple(corpus.texts), prompts, (0,) * len(prompts), (0,), recipe, args.device)
        rows, padding = [], {}
        header = "| setting | retrains | steps each | seconds | s/retrain | retrains/min | peak GiB |"
        print(header, flush=True)

        def timed(label: str, chunks, workers: int, runner=None) -> None:
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            try:
                count = _run(chunks, workers, runner)
            except torch.OutOfMemoryError:
                rows.append((label, 0, steps, float("nan"), float("nan"), float("inf")))
                print(f"| {label} | out of memory |", flush=True)
                torch.cuda.empty_cache()
                return
            seconds = time.perf_counter() - start
            peak = (
                torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else float("nan")
            )
            rows.append((label, count, steps, seconds, 60 * count / seconds, peak))
            print(
                f"| {label} | {count} | {steps} | {seconds:.1f} | {seconds / count:.2f} | "
                f"{60 * count / seconds:.1f} | {peak:.1f} |",
                flush=True,
            )

        def _run(chunks, workers, runner) -> int:
            if runner is None:  # worker processes: their start and model loading count
                outputs = [out for _, out in run_plan(job, chunks, workers=workers)]
            else:
                outputs = [runner.run(plan_) for _, plan_ in chunks]
            # a fast path that trains to NaN is no result (one did: BENCHMARKS.md, the autograd backward)
            broken = sum(int((~out.isfinite()).flatten(1).any(1).sum()) for out in outputs)
            if broken:
                raise SystemExit(f"{broken} retrains ended with NaN or inf outputs: their timing is not kept")
            return sum(len(out) for out in outputs)

        runner = Runner(job)
        stacked = [(k, [(i, plan[i : i + k]) for i in range(0, len(plan), k)]) for k in args.stack]
        for k, chunks in stacked:
            one_block = _padded_tokens(runner, *full, chunks, 1)
            for groups in args.width_groups:
                padding[k, groups] = _padded_tokens(runner, *full, chunks, groups) / one_block
        if args.device.startswith("cuda"):
            runner.run(plan[:2])  # warm-up: CUDA context, kernels of both paths
            runner.run(plan[:1])
            timed("one alone (train)", [(0, plan[:1])], 1, runner)
            for groups in args.width_groups:
                retrain.WIDTH_GROUPS = groups
                for k, chunks in stacked:
                    timed(f"stack {k}, width groups {groups}", chunks, 1, runner)
        else:
            chunks = [(i, plan[i : i + 1]) for i in range(len(plan))]
            timed(f"{args.workers} workers x 1 thread", chunks, args.workers)
    device = (
        torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(f"\n{name}; {corpus_path} ({n} documents, subsets of {size}); {device}\n")
    for (k, groups), share in padding.items():
        print(f"stack {k}, width groups {groups}: {share:.3f} of one block's tokens (batch rows x width)")
    print()
    print(header)
    print("|---|---|---|---|---|---|---|")
    for label, count, steps_, seconds, rate, peak in rows:
        per = seconds / count if count else float("nan")
        print(f"| {label} | {count} | {steps_} | {seconds:.1f} | {per:.2f} | {rate:.1f} | {peak:.1f} |")


def _padded_tokens(runner, recipe, steps: int, chunks, groups: int) -> int:
    """Batch rows x width summed over every step of every chunk, its models split into ``groups`` width
    groups as `train_stacked` splits them (what a stacked retrain computes on, padding included)."""
    total = 0
    for _, chunk in chunks:
        subsets, seeds = [list(s) for s, _ in chunk], [seed for _, seed in chunk]
        batches = retrain.StepBatches(
            runner.seqs, subsets, recipe, seeds, steps, runner.pad, "cpu", groups=groups
        )
        rows = batches.index.shape[2]
        total += sum(
            rows * size * width
            for _, sizes, widths in batches.plans
            for size, width in zip(sizes, widths, strict=True)
        )
    return total


if __name__ == "__main__":
    main()
