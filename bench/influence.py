"""Time and peak memory of the classical influence methods (ekfac, trackstar) on a 1B architecture with random
weights: fitting (EK-FAC factors; TrackStar's second moments, preconditioner and document gradients) and
scoring the whole test split against every document.

    python bench/influence.py --arch olmo2-1b --corpus .data/hops/20hops.jsonl [--methods ekfac trackstar]
        [--ekfac '{"query_low_rank": 32}'] [--trackstar '{}'] [--score-batch N] [--out DIR]

The architectures are built as `bench/throughput.py` builds them (bf16 on a GPU, random weights; the published
checkpoints cannot be downloaded on the GPU machines), the texts are the corpus's documents and the test split
of compare.py's default split (`probes.data.hops.HopsData`). Each method is built through the registry with
the options given as JSON over `DEFAULTS` (the 1B settings) and scored as compare.py scores it,
``--score-batch`` test queries per ``score`` call (all at once for ekfac, which batches them itself). Prints
a table: method, model, phase, seconds, peak memory (the device's peak allocated memory during the phase;
the process's peak RSS on the CPU).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from archs import build_model  # noqa: E402
from measure import add_model_arguments, sync  # noqa: E402

from probes.data.hops import HopsData  # noqa: E402
from probes.data.queries import candidate_answers  # noqa: E402
from probes.lm.load import ModelPair  # noqa: E402
from probes.lm.scoring import answer_token_ids  # noqa: E402
from probes.methods import AttributionContext, build_method, query_batches  # noqa: E402
from probes.pairs.tokenizer import train_tokenizer  # noqa: E402

# 1B settings: kronfluence keeps each query's gradient at rank 32 per module (exact ones would be ~5 GB a
# query; a 10-token query's gradient has rank <= 10, so nothing is lost), one document pass per 256 queries
# (one pass for all 400 ran 3x slower a batch with the GPU nearly full), and fits the eigenvalue correction on
# 128 evenly spaced documents (11.7 s per 32 on an H200 for OLMo2-1B: ~18 min for all 3000; on the tiny pair
# 128 rank documents as all 3000 do, per-query Spearman 0.985: docs/RESULTS.md); bergson projects each
# module's gradient to 16 x 16.
DEFAULTS = {
    "ekfac": dict(query_low_rank=32, query_batch_size=256, batch_size=32, lambda_examples=128),
    "trackstar": dict(projection_dim=16, batch_size=32),
}


def peak(device: torch.device) -> float:
    """GiB: the device's peak allocated memory since the last reset, or the process's peak RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def phase(device: torch.device, fn):
    """(result, seconds, peak GiB) of ``fn()``."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start, peak(device)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_arguments(parser, "olmo2-1b")
    parser.add_argument("--methods", nargs="+", default=["ekfac", "trackstar"], choices=sorted(DEFAULTS))
    parser.add_argument("--ekfac", default="{}", help="JSON options over DEFAULTS['ekfac']")
    parser.add_argument("--trackstar", default="{}", help="JSON options over DEFAULTS['trackstar']")
    parser.add_argument("--score-batch", type=int, default=512, help="test queries per score() call")
    parser.add_argument("--out", default=None, help="write results.json here")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = HopsData(corpus_path=args.corpus)
    tokenizer = train_tokenizer(data.corpus.texts, data.corpus.function_tokens)
    model = build_model(args.arch, args.shrink, device, seed=1)
    pair = ModelPair(model, model, tokenizer, args.arch, args.arch)
    val_ids, test_ids = data.split_ids["val"], data.split_ids["test"]
    candidate_ids = answer_token_ids(tokenizer, candidate_answers(data.corpus))
    name = args.arch + (" (shrunk)" if args.shrink else "")
    rows = []
    for method_name in args.methods:
        options = {**DEFAULTS[method_name], **json.loads(getattr(args, method_name))}
        ctx = AttributionContext(
            data.corpus, data.queries, candidate_ids, pair, None, val_ids, data.relevant[val_ids]
        )
        method = build_method(method_name, **options)
        _, fit_s, fit_gib = phase(device, lambda m=method, c=ctx: m.prepare(c))
        print(f"{method_name}: fit {fit_s:.1f} s, peak {fit_gib:.2f} GiB", flush=True)  # a cut run keeps this
        chunks = query_batches(method, test_ids, args.score_batch)
        scores, score_s, score_gib = phase(
            device, lambda m=method, q=chunks: torch.cat([m.score(c) for c in q])
        )
        if not torch.isfinite(scores).all():
            raise RuntimeError(f"{method_name}: non-finite scores")
        rows += [
            (method_name, name, "fit", fit_s, fit_gib),
            (method_name, name, f"score {len(test_ids)} x {len(data.corpus.texts)}", score_s, score_gib),
            (method_name, name, "end to end", fit_s + score_s, max(fit_gib, score_gib)),
        ]
        del method, ctx
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"{'method':<10} {'model':<22} {'phase':<22} {'seconds':>9} {'peak GiB':>9}")
    for method_name, model_name, what, seconds, gib in rows:
        print(f"{method_name:<10} {model_name:<22} {what:<22} {seconds:9.1f} {gib:9.2f}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        keys = ("method", "model", "phase", "seconds", "peak_gib")
        (out / "influence.json").write_text(
            json.dumps([dict(zip(keys, r, strict=True)) for r in rows], indent=1)
        )


if __name__ == "__main__":
    main()
