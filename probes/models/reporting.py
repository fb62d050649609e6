"""What a DLP run reports (settings and hp_metric, recall figure, test_metrics.json) and its query tables."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger

from probes.metrics import flatten, random_expectation
from probes.models.plots import log_recall_figure

# not settings a user gives the model: LightningCLI's re-instantiation record, the values linked from the data
# (its document count and candidate answers, a table of numbers), and the data's own options repeated
LINKED = ("_instantiator", "n_documents", "candidates", "corpus_path", "split")


def settings(model: Mapping, data: Mapping) -> dict[str, float | int | str | bool]:
    """The run's configuration as flat scalars for HPARAMS: the model's options (a class_path/init_args entry
    as ``name/class`` and ``name/<arg>``) and the data's."""
    return _flat("", {**{k: v for k, v in model.items() if k not in LINKED}, **data})


def _flat(prefix: str, value) -> dict[str, float | int | str | bool]:
    if isinstance(value, Mapping):
        if "class_path" in value:
            value = {"class": value["class_path"], **(value.get("init_args") or {})}
        return {k: v for key, item in value.items() for k, v in _flat(f"{prefix}{key}/", item).items()}
    return {prefix.rstrip("/"): value if isinstance(value, (bool, int, float, str)) else str(value)}


def log_settings(trainer: L.Trainer, best: float) -> None:
    """Every logger gets the run's settings with ``hp_metric`` = ``best`` (the best validation macro mAP so
    far) at the current step: TensorBoard's HPARAMS row of the run, no placeholder value."""
    data = trainer.datamodule.hparams if trainer.datamodule is not None else {}
    params, metric = settings(trainer.lightning_module.hparams, data), {"hp_metric": best}
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(params, metric, step=trainer.global_step)
        else:
            logger.log_hyperparams(params)
            logger.log_metrics(metric, step=trainer.global_step)


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
