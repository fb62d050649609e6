"""Benchmark helpers: device sync, timed calls, the matmul ceiling, the plain loop, profiles."""

from __future__ import annotations

import argparse
import time
from typing import NamedTuple

import torch
from archs import ARCHS, dtype_for

from probes.data.corpus import Corpus, load_corpus
from probes.data.queries import Query, make_queries
from probes.features.extract import query_inputs
from probes.pairs.tokenizer import train_tokenizer


def add_model_arguments(parser: argparse.ArgumentParser, arch: str) -> None:
    """--arch (default ``arch``), --corpus and --shrink: what every benchmark runs on."""
    parser.add_argument("--arch", choices=sorted(ARCHS), default=arch)
    parser.add_argument("--corpus", required=True, help="HOPS JSONL (the reference 20hops corpus)")
    parser.add_argument(
        "--shrink", action="store_true", help="a tiny version of the architecture (CPU smoke test)"
    )


class BenchInputs(NamedTuple):
    """A corpus's texts as the benchmarks feed them: its documents and its queries (prompt + answer)."""

    corpus: Corpus
    queries: list[Query]
    tokenizer: object  # the project's tokenizer trained on the corpus (deterministic: the same on every rank)
    docs: list[str]
    query_texts: list[str]
    query_targets: list[tuple[int, int]]


def bench_inputs(corpus_path: str) -> BenchInputs:
    corpus = load_corpus(corpus_path)
    queries = make_queries(corpus)
    tokenizer = train_tokenizer(corpus.texts, corpus.function_tokens)
    return BenchInputs(corpus, queries, tokenizer, corpus.texts, *query_inputs(queries))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def median_time(fn, device, repeats: int) -> float:
    """The median of ``repeats`` timed calls of ``fn``: single runs of the same pass on an H100 varied by up
    to 25% from one run to the next."""
    times = sorted(timed(fn, device)[1] for _ in range(repeats))
    return times[len(times) // 2]


def matmul_rate(device: torch.device, size: int = 8192, repeats: int = 10) -> float:
    """Measured bf16 matmul FLOP/s of the card (median of ``repeats`` after warm-up, random data)."""
    dtype = dtype_for(device)
    if device.type != "cuda":
        size = 512
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        _, t = timed(lambda: a @ b, device)
        times.append(t)
    return 2 * size**3 / sorted(times)[len(times) // 2]


def plain_loop(model, tokenizer, texts: list[str], batch_size: int = 64) -> torch.Tensor:
    """The loop the feature pass replaces: corpus order, pad to longest, all hidden states and logits kept."""
    tokenizer.padding_side = "right"
    device = next(model.parameters()).device
    pooled = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start : start + batch_size], padding="longest", return_tensors="pt").to(
                device
            )
            out = model(**enc, output_hidden_states=True)
            last = enc["attention_mask"].sum(1) - 1
            rows = torch.arange(len(last), device=device)
            pooled.append(torch.stack([h[rows, last] for h in out.hidden_states], 1).float().cpu())
            del out
    return torch.cat(pooled)


def profile(fn, what: str, rows: int = 25) -> None:
    """Print where ``fn``'s time goes: the top operators by self CPU and by self device time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with torch_profile(activities=activities) as prof:
        fn()
    table = prof.key_averages()
    print(f"--- profile: {what}")
    print(table.table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=60))
    if torch.cuda.is_available():
        print(table.table(sort_by="self_cuda_time_total", row_limit=rows, max_name_column_width=60))


def count_tokens(tokenizer, texts: list[str]) -> int:
    return sum(len(ids) for ids in tokenizer(texts).input_ids)
