"""Callbacks that feed ProbeModule the data's query tables and write what a DLP run reports (figure, JSON)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback

from probes.metrics import flatten, random_expectation
from probes.models.plots import log_recall_figure


def chance(data, split: str, prefix: str, correct=None) -> dict[str, float]:
    """The flat report a random ranking gets on average on one split of ``data`` (a HopsData)."""
    ids = data.split_ids[split]
    functions = [data.query_functions[i] for i in ids.tolist()]
    hop = tuple(mask[ids] for mask in data.hop)
    correct = None if correct is None else correct[ids]
    report = random_expectation(data.relevant[ids], functions, data.is_wrapper[ids], correct, hop)
    return flatten(report, prefix)


class QueryTables(Callback):
    """Gives the module the training documents and the per-query tables of the Trainer's data (a
    HopsDataModule) at setup, and f_new's per-query correctness (the correct/incorrect subsets) at test.
    Without a datamodule (plain dataloaders) it does nothing: call ``set_documents``/``set_queries``."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        data = trainer.datamodule
        if data is None:
            return
        pl_module.set_documents(data.corpus.texts)
        pl_module.set_queries(data.query_functions, data.is_wrapper, data.hop)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        data = trainer.datamodule
        if data is None:
            return
        if data.correct is None:
            from probes.pairs.evaluate import query_correctness

            reader = pl_module.reader
            correct = query_correctness(reader.lm, reader.tokenizer, data.queries, data.candidates)
            data.set_correctness(correct)
        pl_module.test_retrieval.correct = data.correct


class RecallFigure(Callback):
    """At the end of a fit: recall@k of the last validation against a random ranking's, in TensorBoard and
    ``<log_dir>/recall_at_k.png``."""

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        log_dir = trainer.log_dir  # a broadcast under DDP: every rank must ask
        if pl_module.val_metrics and trainer.is_global_zero:
            random = chance(trainer.datamodule, "val", "val")
            log_recall_figure(trainer, pl_module.val_metrics, random, "val", log_dir)


class TestMetricsJson(Callback):
    """After a test: every test metric and a random ranking's (``random/test/...``) in
    ``<log_dir>/test_metrics.json``, one flat dict."""

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        log_dir = trainer.log_dir  # a broadcast under DDP: every rank must ask
        if trainer.is_global_zero and log_dir is not None:
            data = trainer.datamodule
            random = chance(data, "test", "random/test", data.correct)
            path = Path(log_dir) / "test_metrics.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({**pl_module.test_metrics, **random}, indent=1, sort_keys=True) + "\n")
            print(f"test metrics written to {path}")
