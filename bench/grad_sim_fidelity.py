"""How well grad_sim's projected gradients keep the exact gradients' ranking, on the embedded default.

    PROBES_CACHE=/work/cache python bench/grad_sim_fidelity.py [--per-function 2] [--threads 1]
        [--setting LABEL:key=value,key=value ...]

For a sample of test queries (the first --per-function test inputs of every function) it computes the exact
per-example gradient cosine of every query with every document, per parameter group (the documents'
gradients streamed batch by batch, only per-parameter inner products and norms kept), and the scores of
`grad_sim` at each setting for the same groups. Per setting and groups it prints the per-query Spearman
correlation of projected with exact scores over all documents (mean and min over queries), the test mAP of
both (`probes.metrics`), and the seconds of the setting's gradient passes. The group rows of a setting share
its blocks (`AttributionContext.memo`): only the first computes gradients.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import yaml
from scipy.stats import spearmanr

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]

from baselines.ops.example_grads import GROUPS, batch_example_gradients, owners, param_group  # noqa: E402
from probes.data.hops import HopsData  # noqa: E402
from probes.features.extract import query_inputs  # noqa: E402
from probes.lm.load import load_pair  # noqa: E402
from probes.lm.scoring import (  # noqa: E402
    answer_token_ids,  # noqa: E402
    collate,
    length_batches,
    pad_id,
    tokenize,
)
from probes.methods import AttributionContext, build_method  # noqa: E402
from probes.metrics import per_query_metrics  # noqa: E402
from probes.pairs.default import ensure_default_pair  # noqa: E402

GROUP_SETS = (("all",), ("embed",), ("head",), ("attn", "mlp"), ("norm",))
LINEAR = (("attn", "mlp", "head"), ("attn", "mlp"))  # what the Kronecker projection covers on Llama
SETTINGS = {  # label -> grad_sim options
    "grad_sim (defaults)": {},
    "equal blocks": {"allocation": "equal"},
    "grad_sim_seed": {"preset": "seed"},
    "kronecker 256/module": {"projection": "kronecker", "projection_dim": 256},
}


def exact_inner_products(pair, data, sample, candidate_ids, batch_size: int = 32):
    """Per parameter: query-document gradient inner products [q, n], document and query squared norms."""
    names = [n for n, _ in pair.new.named_parameters()]
    holders = owners(pair.new, names)
    texts, targets = query_inputs([data.queries[i] for i in sample])
    items = tokenize(pair.tokenizer, texts, targets)
    batch = collate(items, pad_id(pair.tokenizer), "right")
    queries = batch_example_gradients(pair.new, batch, items, "ce", names, candidate_ids, holders)
    n = len(data.corpus.texts)
    products = {name: torch.zeros(len(sample), n, dtype=torch.float64) for name in names}
    doc_norms = {name: torch.zeros(n, dtype=torch.float64) for name in names}
    docs = tokenize(pair.tokenizer, data.corpus.texts)
    for index in length_batches([len(d.ids) for d in docs], batch_size, None):
        chunk = [docs[i] for i in index]
        grads = batch_example_gradients(
            pair.new, collate(chunk, pad_id(pair.tokenizer), "right"), chunk, "lm", names, None, holders
        )
        for name, q, d in zip(names, queries, grads, strict=True):
            products[name][:, index] = (q @ d.T).double()
            doc_norms[name][index] = d.double().pow(2).sum(1)
    query_norms = {name: q.double().pow(2).sum(1) for name, q in zip(names, queries, strict=True)}
    return products, doc_norms, query_norms


def exact_cosine(exact, groups) -> torch.Tensor:
    """The exact gradient cosine [q, n] over the parameters of ``groups``."""
    products, doc_norms, query_norms = exact
    names = [n for n in products if param_group(n) in groups]
    dots = sum(products[n] for n in names)
    norms = sum(query_norms[n] for n in names)[:, None] * sum(doc_norms[n] for n in names)[None]
    return dots / norms.sqrt().clamp_min(1e-30)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row Spearman correlation (ties get their average rank)."""
    return torch.tensor([spearmanr(x, y).statistic for x, y in zip(a.numpy(), b.numpy(), strict=True)])


def parse_setting(text: str) -> tuple[str, dict]:
    label, _, options = text.partition(":")
    return label, {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in options.split(",") if o)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--per-function", type=int, default=2, help="test queries per function")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--setting",
        action="append",
        type=parse_setting,
        help="LABEL:key=value,... grad_sim options (repeatable; default: the defaults, equal blocks, the "
        "seed preset, Kronecker at 256 per module)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = HopsData()
    data.prepare()
    old, new = ensure_default_pair()
    pair = load_pair(str(old), str(new), dtype="float32", corpus=data.corpus, candidates=data.candidates)
    candidate_ids = answer_token_ids(pair.tokenizer, data.candidates)
    test = data.split_ids["test"].tolist()
    sample = [
        i
        for i in test
        if [j for j in test if data.queries[j].func == data.queries[i].func].index(i) < args.per_function
    ]
    relevant = data.relevant[sample]
    val_ids = data.split_ids["val"]
    ctx = AttributionContext(
        data.corpus, data.queries, candidate_ids, pair, None, val_ids, data.relevant[val_ids]
    )
    start = time.perf_counter()
    exact = exact_inner_products(pair, data, sample, candidate_ids)
    print(
        f"exact gradients of {len(sample)} test queries and {relevant.shape[1]} documents: "
        f"{time.perf_counter() - start:.0f} s"
    )
    header = "| setting | params | Spearman mean | Spearman min | mAP projected | mAP exact | seconds |"
    print(header, "|---|---|---|---|---|---|---|", sep="\n")
    ids = torch.tensor(sample)
    for label, options in args.setting or list(SETTINGS.items()):
        method = build_method("grad_sim", **options)
        whole = method.settings["blocks"] == "whole"
        kronecker = method.settings["projection"] == "kronecker"
        for groups in (("all",),) if whole else LINEAR if kronecker else GROUP_SETS:
            start = time.perf_counter()
            method = build_method("grad_sim", **options, **({} if whole else {"params": list(groups)}))
            method.prepare(ctx)
            scores = method.score(ids).double()
            seconds = time.perf_counter() - start
            reference = exact_cosine(exact, GROUPS if groups == ("all",) else groups)
            rho = spearman(scores, reference)
            got, want = (per_query_metrics(s, relevant)["map"].mean().item() for s in (scores, reference))
            print(
                f"| {label} | {'+'.join(groups)} | {rho.mean():.3f} | {rho.min():.3f} | {got:.3f} | "
                f"{want:.3f} | {seconds:.0f} |"
            )


if __name__ == "__main__":
    main()
