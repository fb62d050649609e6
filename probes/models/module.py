"""ProbeModule: the DLP as a thin LightningModule; its frozen f_new is a submodule, never checkpointed."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import lightning as L
import torch
from jaxtyping import Float
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor

from probes.lm.load import resolve_dtype
from probes.metrics import RetrievalSuite
from probes.models import provenance
from probes.models.conditioning import ProbeReader
from probes.models.documents import DocumentIndex
from probes.models.frozen import FrozenLM, frozen_lm, resolve_model_path
from probes.models.generator import ProbeGenerator
from probes.models.heads import Head, InfluenceHead, MultiHotHead, check_head_split
from probes.models.reporting import log_settings

GeneratorFactory = Callable[[int], ProbeGenerator]  # embedding_dim -> generator
HeadFactory = Callable[[int, int, int], Head]  # (response_dim, num_probes, n_documents) -> head
INFLUENCE_KEY = "influence_target"  # a checkpoint's record of an influence-trained head's targets


def headline(metrics: dict[str, float]) -> dict[str, float]:
    """What is logged: every all-query metric; per subset (base/wrapper/...) the macro mAP and recall@10."""
    keep = ("/macro/map", "/macro/recall@10")
    every = {k: v for k, v in metrics.items() if "/subsets/" not in k and not k.endswith("/count")}
    return every | {k: v for k, v in metrics.items() if k.endswith(keep)}


class ProbeModule(L.LightningModule):
    def __init__(
        self,
        model: str | None = None,
        generator: GeneratorFactory = ProbeGenerator,
        head: HeadFactory = MultiHotHead,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        position: Literal["prefix", "suffix"] = "prefix",
        layer: int = -1,
        response: Literal["hidden", "logprobs"] = "hidden",
        dtype: str = "float32",
        document_batch_size: int = 64,
        n_documents: int = 0,
        candidates: list[int] | None = None,
        corpus_path: str | None = None,
        split: str = "by_input",
    ):
        """Deep-linear probe generator (DLP) over a frozen f_new, trained to rank influential training docs.

        Args:
            model: f_new, a local directory or hub id; null = the embedded tiny pair's f_new (built and
                cached on first use for the data's corpus).
            generator: the probe generator (class_path/init_args); ProbeModule gives it the LM's hidden size.
            head: the head (class_path/init_args): probes.models.MultiHotHead or probes.models.PairwiseHead;
                ProbeModule gives it the response size, number of probes and number of documents.
            optimizer: optimiser of the probe parameters (class_path/init_args, e.g. torch.optim.AdamW).
            position: where the probe goes: "prefix" (concat(p, x), after a BOS) or "suffix" (concat(x, p)).
            layer: hidden-state index of the response (-1 = final hidden state; 0 = embeddings).
            response: "hidden" (hidden state at the last position) or "logprobs" (log-probabilities of the
                candidate answers there).
            dtype: dtype of f_new ("float32"; "bfloat16" for a 1B model on a GPU).
            document_batch_size: documents per LM pass when scoring against every document (pairwise).
            n_documents: training documents (linked from data by train_probe.py).
            candidates: candidate answers (linked from data; used by response="logprobs").
            corpus_path: the data's corpus (linked from data; picks the default tiny pair's corpus).
            split: the data's split (linked from data; "by_function" needs the pairwise head).
        """
        super().__init__()
        resolve_dtype(dtype)  # an unknown dtype fails now, not after the tiny pair is built
        if n_documents < 1:
            raise ValueError(
                f"n_documents={n_documents}: give the number of training documents (train_probe.py links "
                "it from data.num_documents)"
            )
        self.save_hyperparameters(logger=False)  # loggers get reporting.settings, with hp_metric
        self._make_generator, self._make_head, self._make_optimizer = generator, head, optimizer
        self.generator: ProbeGenerator | None = None
        self.head: Head | None = None
        self.lm: FrozenLM | None = None  # f_new: placed and cast with the module, never its state
        self._reader: ProbeReader | None = None  # f_new behind its conditioning (a plain object)
        self.documents: DocumentIndex | None = None
        self.val_metrics: dict[str, float] = {}  # of the last validation outside the sanity check
        self.best_val_map: float | None = (
            None  # the best val/macro/map so far (hp_metric), kept in checkpoints
        )
        self.test_metrics: dict[str, float] = {}  # of the last test
        self.trained_on: dict | None = None  # `provenance.record` of a loaded checkpoint

    @property
    def reader(self) -> ProbeReader:
        """The frozen f_new behind its conditioning."""
        if self._reader is None:
            raise RuntimeError("ProbeModule has no LM yet: call configure_model() (the Trainer does)")
        return self._reader

    def prepare_data(self) -> None:
        """Build and cache the embedded tiny pair when f_new is it: on local rank 0, before ranks load it."""
        resolve_model_path(self.hparams.model, self.hparams.corpus_path)

    def configure_model(self) -> None:
        """Load f_new frozen and build the generator and head for its sizes (idempotent)."""
        if self._reader is not None:
            return
        hp = self.hparams
        lm, tokenizer = frozen_lm(hp.model, hp.corpus_path, hp.dtype)
        candidate_ids = None
        if hp.response == "logprobs":
            from probes.lm.scoring import answer_token_ids

            candidate_ids = answer_token_ids(tokenizer, hp.candidates or [])
        self.lm = FrozenLM(lm)
        self._reader = ProbeReader(lm, tokenizer, hp.position, hp.layer, hp.response, candidate_ids)
        self.generator = self._make_generator(lm.config.hidden_size)
        self.generator.set_token_norm(lm.get_input_embeddings().weight)
        self.head = self._make_head(self._reader.response_dim, self.generator.num_probes, hp.n_documents)
        check_head_split(isinstance(self.head, MultiHotHead), hp.split)

    def set_queries(self, functions: Sequence[str], is_wrapper: Tensor, hop: tuple[Tensor, Tensor]) -> None:
        """Per query id: its function, whether it is a wrapper, its wrapper→base relevance (below, own)."""
        for name in ("val", "test"):
            setattr(self, f"{name}_retrieval", RetrievalSuite(functions, is_wrapper, None, hop, prefix=name))

    def set_documents(self, texts: Sequence[str]) -> None:
        """The training documents' texts, in corpus order (the pairwise head runs the probes on them)."""
        if len(texts) != self.hparams.n_documents:
            raise ValueError(
                f"got {len(texts)} documents; this probe was built for {self.hparams.n_documents}"
            )
        self.documents = DocumentIndex(texts, self.hparams.document_batch_size)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """What the checkpoint was trained on (written by `provenance.TrainedOn`, read by `DLPMethod`); a
        checkpoint without that record is refused."""
        self.trained_on = checkpoint.get(provenance.KEY)
        self.best_val_map = checkpoint.get("best_val_map")
        if self.trained_on is None:
            raise provenance.missing(f"checkpoint {getattr(self._trainer, 'ckpt_path', None) or ''}".rstrip())

    def configure_optimizers(self):
        return self._make_optimizer([p for p in self.parameters() if p.requires_grad])  # not f_new

    def score(self, prompts: Sequence[str]) -> Float[Tensor, "b n"]:
        """Influence scores of every training document for each query prompt (higher = more influential)."""
        probes = self.generator()
        queries = self.reader(prompts, probes)
        if self.head.uses_documents:
            return self.head(queries, self.documents.responses(self.reader, self.generator, probes))
        return self.head(queries)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        probes = self.generator()
        queries = self.reader(batch["prompts"], probes)
        relevant = batch["relevant"]
        if self.head.uses_documents:
            ids = self.head.sample_documents(relevant)
            docs = self.reader(self.documents[ids.tolist()], probes, as_prompt=False)
            loss = self.head.batch_loss(self.head(queries, docs), batch, ids)
        else:
            loss = self.head.loss(self.head(queries), relevant)
        size = len(batch["prompts"])
        sync = dict(batch_size=size, sync_dist=True)  # under DDP: epoch means over every rank's batches
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, **sync)
        norms = self.generator.raw().detach().norm(dim=-1).mean(-1)  # per probe, before the norm scaling
        self.log_dict({f"probes/norm_{i}": v for i, v in enumerate(norms)}, on_epoch=True, **sync)
        return loss

    def on_fit_start(self) -> None:
        """An influence-trained head reads its target folders now (fit or validate), checked against the
        documents."""
        if isinstance(self.head, InfluenceHead):
            self.head.targets(self.documents.texts)
            if self.logger is not None and self.trainer.state.fn == "fit":  # the run's hparams name them too
                described = enumerate(self.head.describe())
                keys = ("folder", "kind", "loss", "sha256")
                self.logger.log_hyperparams(
                    {f"{INFLUENCE_KEY}/{i}/{k}": d[k] for i, d in described for k in keys}
                )

    on_validation_start = on_fit_start

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """The best val mAP so far (hp_metric survives a resume) and, for an influence-trained head, its
        targets (folder, kind, loss, SHA-256)."""
        checkpoint["best_val_map"] = self.best_val_map
        if isinstance(self.head, InfluenceHead):
            checkpoint[INFLUENCE_KEY] = self.head.describe()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        scores = self.score(batch["prompts"])
        self.val_retrieval.update(scores, batch["relevant"], batch["query_ids"])
        if isinstance(self.head, InfluenceHead):  # model selection on measured influence, every document
            every = torch.arange(scores.shape[1], device=scores.device)
            loss = self.head.batch_loss(scores, batch, every)
            self.log("val/influence_corr", 1 - loss, batch_size=len(scores), sync_dist=True, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        metrics = self.val_retrieval.compute()  # every rank's queries, each once: the same on every rank
        self.val_retrieval.reset()
        # sync_dist averages equal values (a no-op) and tells Lightning that they hold for every rank
        self.log_dict({k: v for k, v in headline(metrics).items() if k != "val/macro/map"}, sync_dist=True)
        self.log("val/macro/map", metrics["val/macro/map"], prog_bar=True, sync_dist=True)
        if not self.trainer.sanity_checking:
            self.val_metrics = metrics
            self.best_val_map = max(metrics["val/macro/map"], self.best_val_map or float("-inf"))
            if self.trainer.is_global_zero:
                log_settings(self.trainer, self.best_val_map)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.test_retrieval.update(self.score(batch["prompts"]), batch["relevant"], batch["query_ids"])

    def on_test_epoch_end(self) -> None:
        self.test_metrics = self.test_retrieval.compute()
        self.test_retrieval.reset()
        self.log_dict(headline(self.test_metrics), sync_dist=True)

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, Tensor]:
        return {"query_ids": batch["query_ids"], "scores": self.score(batch["prompts"])}
