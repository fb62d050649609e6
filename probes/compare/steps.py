"""The comparison's steps: its methods built, its inputs loaded, the test split, the rows scored."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from jsonargparse import Namespace
from torch import Tensor

from probes.compare.config import PairConfig
from probes.compare.results import MethodResult, as_float32, check_labels
from probes.data.hops import HopsData
from probes.progress import progress_bar


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


@dataclass
class TestSplit:
    """What every row is scored against: the test queries, their relevance and subsets, and the
    counterfactual ground truths when any are given."""

    ids: Int[Tensor, "q"]
    relevant: Bool[Tensor, "q n"]
    functions: list[str]
    is_wrapper: Bool[Tensor, "q"]
    correct: Bool[Tensor, "q"]
    hop: tuple[Tensor, Tensor]
    truths: list = field(default_factory=list)  # probes.counterfactual.ground_truth.GroundTruth each

    @classmethod
    def of(cls, data: HopsData, truths: list) -> TestSplit:
        ids = data.split_ids["test"]
        functions = [data.query_functions[int(i)] for i in ids]
        hop = tuple(mask[ids] for mask in data.hop)
        return cls(ids, data.relevant[ids], functions, data.is_wrapper[ids], data.correct[ids], hop, truths)

    def check_truths(self, data: HopsData, pair) -> None:
        """Each ground truth is of the same documents, test queries and f_old, by content."""
        from probes.counterfactual.ground_truth import check_matches, split_queries

        query_ids, query_texts = split_queries(data, "test")
        for gt in self.truths:
            check_matches(
                gt, texts=data.corpus.texts, query_ids=query_ids, query_texts=query_texts, old_model=pair.old
            )

    def result(
        self, label: str, hparams: dict, scores: Float[Tensor, "q n"], seconds: float, tuned=None, source=None
    ) -> MethodResult:
        """One row's metrics (and its LDS against each ground truth, given any)."""
        from probes.compare.lds_results import row_lds
        from probes.metrics import query_metrics, summarise

        per_query = query_metrics(scores, self.relevant, self.hop)
        report = summarise(per_query, self.functions, self.is_wrapper, self.correct)
        ranking = {name: values for name, values in per_query.items() if "/" not in name}  # per_query.csv
        lds = None
        if self.truths:  # per_query.csv's lds columns and metrics.json's summaries
            columns, lds = row_lds(self.truths, scores, self.functions)
            ranking.update(columns)
        return MethodResult(label, hparams, scores, ranking, report, seconds, tuned, lds, source)

    def relevance_row(self, results: list[MethodResult]) -> dict:
        """The structural ground truth as a row (1 for a relevant document, else 0), appended to
        ``results``; returns metrics.json's counterfactual entry."""
        from probes.compare.lds_results import counterfactual_entry

        results.append(self.result("relevance", {"method": "relevance"}, self.relevant.float(), 0.0))
        return counterfactual_entry(self.truths, self.functions)

    def rows(self, data: HopsData) -> list[dict]:
        """queries.csv's rows."""
        keys = ("query_id", "func", "input", "wrapper")
        table = data.query_table(self.ids)
        return [
            {**{k: row[k] for k in keys}, "correct": bool(self.correct[i])} for i, row in enumerate(table)
        ]


def validation(data: HopsData, ctx, batch_size: int) -> dict:
    """What tuning scores a method's grid points on: the validation queries and their subsets."""
    ids = ctx.val_ids
    functions = [data.query_functions[int(i)] for i in ids]
    return dict(
        val_ids=ids, relevant=ctx.val_relevant, functions=functions, is_wrapper=data.is_wrapper[ids],
        batch_size=batch_size,
    )  # fmt: skip


def score_rows(methods, taken: dict, ctx, test: TestSplit, val: dict, quiet: bool) -> list[MethodResult]:
    """Every method's row: taken from a finished comparison of the same config and inputs (``taken``), or
    tuned on the validation queries (``val``, `validation`) and scored on the test split. Each method's
    state (e.g. its document features on the GPU) goes once it has scored."""
    from probes.compare.tune import Tuned, tune
    from probes.methods import query_batches

    results = []
    while methods:
        label, candidates = methods.pop(0)
        if label in taken:
            row = taken[label]
            tuned = Tuned(**row.metrics["tuned"]) if "tuned" in row.metrics else None
            seconds = row.metrics["seconds"]
            results.append(test.result(label, row.metrics["hparams"], row.scores, seconds, tuned, row.folder))
            continue
        start = time.perf_counter()
        method, tuned = tune(candidates, lambda m: m.prepare(ctx), **val)
        batches = query_batches(method, test.ids, val["batch_size"])
        batches = progress_bar(batches, desc=label, unit="batch", disable=quiet)
        scores = torch.cat([as_float32(method.score(ids)) for ids in batches])
        results.append(test.result(label, method.hparams(), scores, time.perf_counter() - start, tuned))
    return results
