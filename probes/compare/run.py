"""Every attribution method on the same test split -> metrics.json, scores, CSVs, table, plot, TensorBoard."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from jsonargparse import ActionYesNo, ArgumentParser, Namespace
from tqdm.auto import tqdm

from probes.compare.config import PairConfig, add_study_arguments
from probes.compare.results import FILES, MethodResult, as_float32, check_labels, claim_results, write_results
from probes.compare.reuse import record, take_rows
from probes.data.hops import HopsData
from probes.errors import (
    UserError,
    check_writable_folder,
    cli_main,
)
from probes.files import cache_dir
from probes.hashing import file_sha256


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="compare.py", description=__doc__, default_meta=False)
    add_study_arguments(parser)
    parser.add_argument(
        "--counterfactual",
        type=str,
        nargs="+",
        default=[],
        help="counterfactual ground-truth folders (python -m probes.counterfactual build): adds every "
        "method's LDS against each (keyed by folder name), a 'relevance' row and the plot of LDS against "
        "the kept fraction",
    )
    parser.add_argument(
        "--scores",
        type=str,
        nargs="+",
        default=[],
        help="finished compare.py output folders: a row one of them computed from the same config and inputs "
        "(by content: probes/compare/reuse.py) is taken from there, with its tuning, instead of scored again",
    )
    parser.add_argument(
        "--out", type=str | None, default=None, help="output folder (default results/<config>)"
    )
    parser.add_argument(
        "--overwrite",
        action=ActionYesNo,
        default=False,
        help="write beside other files in the output folder (kept: only files its marker records go)",
    )
    return parser


def default_out(cfg: Namespace) -> Path:
    """results/<config name>/ (results/<folder>/<name>/ for a config outside configs/, e.g. ablations)."""
    if not cfg.get("config"):
        return Path("results") / "compare"
    path = Path(str(cfg.config[-1]))
    return Path("results") / (
        path.stem if path.parent.name == "configs" else f"{path.parent.name}/{path.stem}"
    )


def check_config(cfg: Namespace, out: Path) -> None:
    """Every check that needs no model and no corpus pass, so that a bad value fails in a second: the data's
    and the pair's options, a non-empty test split, the output folder and the cache folder."""
    HopsData(**cfg.data.as_dict())
    PairConfig(**cfg.model.as_dict())
    if cfg.data.test_fraction <= 0:
        raise UserError(
            f"data.test_fraction={cfg.data.test_fraction!r} leaves no test queries, and compare.py scores "
            "the test split; give a fraction in (0, 1)"
        )
    check_writable_folder(out, "out", write=True)
    cache = cache_dir()  # refuses a file in the cache folder's place
    if cfg.model.feature_cache or cfg.model.old is None:  # features, or the default pair, are written there
        check_writable_folder(cache, "the cache folder (PROBES_CACHE)", write=True)


def build_methods(cfg: Namespace) -> list[tuple[str, list[tuple[dict[str, Any], Any]]]]:
    """(label, [(tuned options, Method) for every grid point]) for every entry, plus the DLP; fails before
    any model loads on a bad name, option or grid point."""
    from probes.compare.preflight import check_checkpoints
    from probes.compare.tune import grid_points
    from probes.lm.ranks import rank_device
    from probes.methods import build_method, unavailable

    entries = [(e.label, e.method, dict(e.options or {}), getattr(e, "tune", None)) for e in cfg.methods]
    skipped = unavailable((label, name) for label, name, *_ in entries)
    if skipped:
        hints = " / ".join(sorted(set(skipped.values())))
        print(f"compare.py: skipping {', '.join(skipped)} (their library is not installed: {hints})")
        entries = [entry for entry in entries if entry[0] not in skipped]
    if cfg.dlp_checkpoint:
        device = rank_device(cfg.model.device, cfg.model.devices)
        entries.append(("dlp", "dlp", {"checkpoint": cfg.dlp_checkpoint, "device": device}, None))
    if not entries:
        raise ValueError("methods: the list is empty and no dlp_checkpoint is given; nothing to compare")
    check_labels([label for label, *_ in entries])
    check_checkpoints(entries)  # a corrupt or unrecorded DLP checkpoint fails now, before any model loads
    methods = []
    for label, name, options, grid in entries:
        try:
            points = grid_points(grid)
            methods.append((label, [(p, build_method(name, **{**options, **p})) for p in points]))
        except (TypeError, ValueError) as err:
            raise ValueError(f"methods entry {label!r}: {err}") from None
    return methods


def load_everything(cfg: Namespace, methods: list | None = None):
    """The data, the pair (loaded once), its one FeatureStore, and f_new's per-query correctness; the
    ``methods`` (`build_methods`) are checked against the pair before any pass over the corpus."""
    from probes.compare.preflight import check_against_pair
    from probes.features.cache import FeatureCache
    from probes.features.extract import query_inputs
    from probes.features.store import FeatureStore
    from probes.lm.context import check_document_lengths
    from probes.lm.load import load_pair
    from probes.lm.ranks import global_rank, rank_device
    from probes.lm.scoring import answer_token_ids

    data = HopsData(**cfg.data.as_dict())
    data.prepare()
    model = PairConfig(**cfg.model.as_dict())
    old, new = model.paths(cfg.data.corpus_path)  # the default tiny pair is built on first use
    pair = load_pair(
        old,
        new,
        dtype=model.dtype,
        device=rank_device(model.device, model.devices),
        attn_implementation=model.attn_implementation,
        trust_remote_code=model.trust_remote_code,
        corpus=data.corpus,
        candidates=data.candidates,
    )
    check_document_lengths(data.corpus, pair.tokenizer, pair.new.config)
    check_against_pair(methods or [], data.corpus.texts, pair)
    candidate_ids = answer_token_ids(pair.tokenizer, data.candidates)
    texts, targets = query_inputs(data.queries)
    cache = FeatureCache(None) if model.feature_cache else None
    features = FeatureStore(
        pair,
        data.corpus.texts,
        texts,
        targets,
        candidate_ids,
        cache=cache,
        batch_size=model.feature_batch_size,
        max_tokens=model.feature_max_tokens,
        compile=model.feature_compile,
        backend=model.feature_backend,
        progress=global_rank(model.devices) == 0,
        devices=model.devices,
    )
    # f_new's answers come from the last-layer states the features hold anyway (no separate pass)
    answers = torch.tensor([data.candidates.index(q.constant) for q in data.queries])
    data.set_correctness(features.answers_correct(answers))
    return data, pair, candidate_ids, features


def run(cfg: Namespace, out: Path) -> str | None:
    """Score the test split with every method and write the results into ``out``; return the table.

    Under DDP (``model.devices`` > 1) every rank runs this (the feature passes need them all); rank 0 alone
    writes and returns the table, the others return None.
    """
    from probes.compare.lds_results import counterfactual_entry, load_truths, row_lds
    from probes.compare.tune import Tuned, tune
    from probes.counterfactual.ground_truth import check_matches, split_queries
    from probes.lm.ranks import global_rank
    from probes.methods import AttributionContext, query_batches
    from probes.metrics import query_metrics, random_expectation, summarise

    methods = build_methods(cfg)
    truths = load_truths(cfg.counterfactual)  # a bad folder fails now
    data, pair, candidate_ids, features = load_everything(cfg, methods)
    val_ids, test_ids = data.split_ids["val"], data.split_ids["test"]
    query_ids, query_texts = split_queries(data, "test")
    for gt in truths:  # before any method scores: the same documents, test queries and f_old, by content
        check_matches(
            gt, texts=data.corpus.texts, query_ids=query_ids, query_texts=query_texts, old_model=pair.old
        )
    ctx = AttributionContext(
        data.corpus, data.queries, candidate_ids, pair, features, val_ids, data.relevant[val_ids]
    )
    relevant = data.relevant[test_ids]
    functions = [data.query_functions[int(i)] for i in test_ids]
    is_wrapper, correct = data.is_wrapper[test_ids], data.correct[test_ids]
    hop = tuple(mask[test_ids] for mask in data.hop)
    val = dict(
        val_ids=val_ids,
        relevant=ctx.val_relevant,
        functions=[data.query_functions[int(i)] for i in val_ids],
        is_wrapper=data.is_wrapper[val_ids],
        batch_size=cfg.model.score_batch_size,
    )
    results, quiet = [], global_rank(cfg.model.devices) != 0
    # inputs.json (the pair's files hashed): rank 0 writes it; another DDP rank needs it only to take the
    # same --scores rows as rank 0
    inputs = None
    if cfg.scores or not quiet:
        corpus_sha256 = file_sha256(data.resolve_corpus_path(cfg.data.corpus_path))
        inputs = record(cfg, corpus_sha256, pair.old_path, pair.new_path)
    taken = (
        take_rows(cfg.scores, inputs, [label for label, _ in methods], test_ids.tolist(), len(data.corpus))
        if cfg.scores
        else {}
    )

    def result(
        label: str, hparams: dict, scores: torch.Tensor, seconds: float, tuned=None, source=None
    ) -> MethodResult:
        per_query = query_metrics(scores, relevant, hop)
        report = summarise(per_query, functions, is_wrapper, correct)
        ranking = {name: values for name, values in per_query.items() if "/" not in name}  # per_query.csv
        lds = None
        if truths:  # per_query.csv's lds columns and metrics.json's summaries
            columns, lds = row_lds(truths, scores, functions)
            ranking.update(columns)
        return MethodResult(label, hparams, scores, ranking, report, seconds, tuned, lds, source)

    while methods:  # each method's state (e.g. its document features on the GPU) goes once it has scored
        label, candidates = methods.pop(0)
        if label in taken:  # scored by a finished comparison of the same config and inputs
            row = taken[label]
            tuned = Tuned(**row.metrics["tuned"]) if "tuned" in row.metrics else None
            results.append(
                result(label, row.metrics["hparams"], row.scores, row.metrics["seconds"], tuned, row.folder)
            )
            continue
        start = time.perf_counter()
        method, tuned = tune(candidates, lambda m: m.prepare(ctx), **val)
        batches = query_batches(method, test_ids, cfg.model.score_batch_size)
        batches = tqdm(batches, desc=label, unit="batch", disable=quiet)
        scores = torch.cat([as_float32(method.score(ids)) for ids in batches])
        results.append(result(label, method.hparams(), scores, time.perf_counter() - start, tuned))
    counterfactual = None
    if truths:  # the structural ground truth as scores: 1 for a relevant document, else 0
        results.append(result("relevance", {"method": "relevance"}, relevant.float(), 0.0))
        counterfactual = counterfactual_entry(truths, functions)
    random = random_expectation(relevant, functions, is_wrapper, correct, hop)
    if quiet:
        return None
    rows = [
        {
            "query_id": row["query_id"],
            "func": row["func"],
            "input": row["input"],
            "wrapper": row["wrapper"],
            "correct": bool(correct[i]),
        }
        for i, row in enumerate(data.query_table(test_ids))
    ]
    output = claim_results(out, cfg)  # re-checked: files that appeared since the start are kept
    table = write_results(out, results, relevant, rows, random, inputs, counterfactual)
    output.record(*FILES)  # every file's checksum, which a later --scores verifies
    return table


def main(argv: list[str] | None = None) -> Path:
    """Run compare.py; a user error exits with one line on stderr and code 2 (``--debug``: the traceback)."""
    return cli_main(_main, argv)


def _main(argv: list[str] | None) -> Path:
    parser = build_parser()
    cfg = parser.parse_args(argv)
    out = Path(cfg.out) if cfg.out else default_out(cfg)
    check_config(cfg, out)
    claim_results(out, cfg, write=False)  # its marker is written in `run`, before the results
    threads = torch.get_num_threads()
    if cfg.model.threads and torch.device(cfg.model.device).type == "cpu":
        torch.set_num_threads(cfg.model.threads)
    try:
        table = run(cfg, out)
    finally:
        torch.set_num_threads(threads)
    if table is None:  # a DDP rank other than 0
        return out
    print(table)
    features = "off" if not cfg.model.feature_cache else cache_dir() / "features"
    print(
        f"Wrote {', '.join(FILES)} to {out}/ (tensorboard --logdir {out / 'tensorboard'}); "
        f"feature cache: {features}"
    )
    return out


if __name__ == "__main__":
    main()
