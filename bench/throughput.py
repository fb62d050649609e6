"""Throughput of the shared feature pass, patching and compare.py on 1B architectures with random weights.

    python bench/throughput.py --arch olmo2-1b --corpus .data/hops/20hops.jsonl [--out DIR]
        [--max-tokens N] [--repeats N] [--compile] [--backend fast|reference] [--compare]

The published checkpoints cannot be downloaded on the GPU machines, so the OLMo2-1B and Llama-3.2-1B
architectures are built from their configs with random bf16 weights (speed does not depend on the weights).
Texts are the corpus's documents and its queries, tokenised by the project's own tokenizer trained on the
corpus (token counts differ a little from the published tokenizers; every rate below is per real token).

Each rate is the median of --repeats runs and is also given as a fraction of the hardware limit: 2 x
non-embedding parameters x tokens FLOPs forward (x3 with the backward) over the card's bf16 matmul rate
measured in the same run. The "plain loop" is what the feature pass replaces: batches of 64 in corpus order,
padding to the longest, all hidden states and full logits kept, pooled afterwards. With --compile the feature
and gradient passes run their decoder blocks compiled (`probes.features.fast.compiled`, the passes' own
``compile`` option); compiling (with one unrated run of both passes) is its own line, and their rates after it
are of the compiled blocks. The plain loop and patching run eager either way. Passes over the same texts share
their tokens (`probes.features.extract`), as the passes of compare.py's FeatureStore do: tokenising is its own
line. With --backend reference the feature and gradient passes run the plain computation
(`probes.features.backend`).
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from archs import build_model, dtype_for, non_embedding_params  # noqa: E402
from compare_wall import time_compare  # noqa: E402
from measure import (  # noqa: E402
    add_model_arguments,
    bench_inputs,
    count_tokens,
    matmul_rate,
    median_time,
    plain_loop,
    profile,
    timed,
)

from baselines.ops.fast.patch import FastPatcher  # noqa: E402
from baselines.patching import Patching, candidate_batches  # noqa: E402
from probes.data.queries import candidate_answers  # noqa: E402
from probes.features.extract import gradient_features, hidden_features  # noqa: E402
from probes.features.store import gradient_batching  # noqa: E402
from probes.lm.scoring import answer_token_ids, tokenize  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_arguments(parser, "olmo2-1b")
    parser.add_argument("--batch-size", type=int, default=256, help="texts per feature batch")
    parser.add_argument(
        "--grad-batch-size",
        type=int,
        default=None,
        help="texts per gradient batch (default: half of --batch-size, like compare.py)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="each rate is the median of this many runs (not the plain loop)",
    )
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help="also cap a feature batch at this many padded tokens (gradient batches: half, like compare.py)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="feature passes with compile=True (compile time shown apart)",
    )
    parser.add_argument(
        "--backend",
        choices=["fast", "reference"],
        default="fast",
        help="the feature passes' backend (probes.features.backend); reference: the plain computation",
    )
    parser.add_argument("--patch-queries", type=int, default=64, help="queries for the patching rate")
    parser.add_argument(
        "--patch-batch-size",
        type=int,
        default=inspect.signature(Patching).parameters["batch_size"].default,
        help="candidates per patched batch (default: the patching method's)",
    )
    parser.add_argument(
        "--compare",
        action="store_true",
        help="also time the whole 1B comparison: compare.py with configs/compare.yaml and the --arch overlay",
    )
    parser.add_argument(
        "--compare-skip",
        nargs="*",
        default=[],
        help="methods of configs/compare.yaml left out of the compare.py timing",
    )
    parser.add_argument("--profile", action="store_true", help="print where the feature passes spend time")
    parser.add_argument("--out", default=None, help="write results.json here")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rate = matmul_rate(device)
    inputs = bench_inputs(args.corpus)
    queries, tokenizer, docs = inputs.queries, inputs.tokenizer, inputs.docs
    qtexts, qtargets = inputs.query_texts, inputs.query_targets
    candidate_ids = answer_token_ids(tokenizer, candidate_answers(inputs.corpus))
    old = build_model(args.arch, args.shrink, device, seed=0)
    new = build_model(args.arch, args.shrink, device, seed=1)
    params = non_embedding_params(new)
    limit_fwd = rate / (2 * params)  # tokens/s at 100% of the matmul rate, forward only
    texts = docs + qtexts
    tokens = count_tokens(tokenizer, texts)
    rows = []

    def record(name: str, seconds: float, n_tokens: int, flops_per_token_factor: int, note: str = ""):
        tps = n_tokens / seconds
        frac = tps / (limit_fwd / flops_per_token_factor)
        rows.append(
            dict(
                what=name,
                seconds=round(seconds, 2),
                tokens=n_tokens,
                tokens_per_s=round(tps),
                fraction_of_limit=round(frac, 3),
                note=note,
            )
        )
        print(
            f"{name:42s} {seconds:8.2f} s {tps:12,.0f} tok/s  {100 * frac:5.1f}% of limit  {note}", flush=True
        )

    print(
        f"device {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}; matmul "
        f"{rate / 1e12:.1f} TFLOP/s; {args.arch}{' (shrunk)' if args.shrink else ''}: {params / 1e6:.0f}M "
        f"non-embedding params; {len(docs)} docs + {len(qtexts)} queries = {tokens:,} tokens",
        flush=True,
    )

    opts = dict(batch_size=args.batch_size, max_tokens=args.max_tokens, progress=False, compile=args.compile)
    opts.update(backend=args.backend)
    grad_batch, grad_tokens = gradient_batching(args.batch_size, args.max_tokens, args.grad_batch_size)
    gopts = dict(batch_size=grad_batch, max_tokens=grad_tokens, progress=False, compile=args.compile)
    gopts.update(backend=args.backend)
    if args.compile:

        def first_calls():  # every compiled variant (grad or not, length divisible by 8 or not) before rating
            hidden_features(old, tokenizer, docs, **opts)
            hidden_features(old, tokenizer, qtexts, targets=qtargets, **opts)
            gradient_features(new, tokenizer, docs, loss="lm", pooling="mean", **gopts)
            gradient_features(new, tokenizer, qtexts, targets=qtargets, loss="ce", **gopts)

        _, t = timed(first_calls, device)
        print(f"{'torch.compile + one pass of each (not rated)':42s} {t:8.2f} s", flush=True)
        rows.append(dict(what="torch.compile + one pass of each", seconds=round(t, 2)))

    _, t = timed(lambda: (tokenize(tokenizer, docs), tokenize(tokenizer, qtexts, qtargets)), device)
    print(f"{'tokenising docs + queries (not rated)':42s} {t:8.2f} s", flush=True)
    rows.append(dict(what="tokenising docs + queries", seconds=round(t, 2)))

    plain_loop(old, tokenizer, texts[:128])  # warm-up (kernels, allocator)
    _, t = timed(lambda: plain_loop(old, tokenizer, texts), device)
    record("plain loop, one checkpoint", t, tokens, 1, "bs 64, pad to longest, all states + logits")

    hidden_features(old, tokenizer, docs[:256], **opts)  # warm-up
    t = median_time(
        lambda: (
            hidden_features(old, tokenizer, docs, **opts),
            hidden_features(old, tokenizer, qtexts, targets=qtargets, **opts),
        ),
        device,
        args.repeats,
    )
    record("feature pass (hidden, all layers), one ckpt", t, tokens, 1, "length-bucketed, pooled on device")
    t = median_time(
        lambda: [
            (
                hidden_features(m, tokenizer, docs, **opts),
                hidden_features(m, tokenizer, qtexts, targets=qtargets, **opts),
            )
            for m in (old, new)
        ],
        device,
        args.repeats,
    )
    record("feature pass, both checkpoints", t, 2 * tokens, 1)

    # documents' gradients pooled by their mean, as the methods use them (a document's last token predicts
    # nothing, so its LM-loss gradient there is exactly zero)
    try:
        gradient_features(new, tokenizer, docs[:64], loss="lm", pooling="mean", **gopts)  # warm-up
        t = median_time(
            lambda: (
                gradient_features(new, tokenizer, docs, loss="lm", pooling="mean", **gopts),
                gradient_features(new, tokenizer, qtexts, targets=qtargets, loss="ce", **gopts),
            ),
            device,
            args.repeats,
        )
        record("gradient pass (dL/dh, all layers) at f_new", t, tokens, 3, "docs lm loss, queries answer ce")
    except FloatingPointError as error:  # random bf16 weights can overflow; report it and go on
        print(f"gradient pass failed: {error}", flush=True)
        rows.append(dict(what="gradient pass", error=str(error)))
    if args.profile:
        profile(lambda: hidden_features(old, tokenizer, docs, **opts), "hidden features, docs")
        profile(
            lambda: gradient_features(new, tokenizer, docs[:1024], loss="lm", pooling="mean", **gopts),
            "gradient features, 1024 docs",
        )

    patcher = FastPatcher(old, tokenizer, candidate_ids, layer="middle")
    prompts = [q.prompt for q in queries[: args.patch_queries]]
    prefixes, t_prefix = timed(lambda: patcher.prefixes(prompts), device)
    states = torch.randn(len(docs), new.config.hidden_size, device=device, dtype=dtype_for(device))

    def patch_all():  # batched as the patching method batches (query, document) candidates
        for prefix in prefixes:
            for prompts, ids in candidate_batches(len(prefix.rows), len(docs), args.patch_batch_size, device):
                patcher.logits(prefix, prompts, states[ids])

    t = median_time(patch_all, device, args.repeats)
    evals = len(prompts) * len(docs)
    print(
        f"{'patching (middle layer), candidates':42s} {t:8.2f} s {evals / t:12,.0f} evals/s  "
        f"(+{t_prefix:.2f} s for {len(prompts)} prefixes)",
        flush=True,
    )
    rows.append(
        dict(
            what="patching candidate evaluations",
            seconds=round(t, 2),
            evaluations=evals,
            evaluations_per_s=round(evals / t),
            prefix_seconds=round(t_prefix, 2),
        )
    )

    if args.compare:
        del patcher, prefixes, states
        old.cpu(), new.cpu()
        torch.cuda.empty_cache()  # the compare.py subprocess loads its own copies
        rows.append(time_compare(old, new, tokenizer, device, args))
    result = dict(
        arch=args.arch,
        shrunk=args.shrink,
        device=str(device),
        matmul_tflops=rate / 1e12,
        non_embedding_params=params,
        tokens=tokens,
        rows=rows,
    )
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / f"throughput-{args.arch}.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
