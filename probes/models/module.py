"""ProbeModule: the DLP as a thin LightningModule; its frozen f_new is a submodule, never checkpointed."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Literal

import lightning as L
import torch
from jaxtyping import Float
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch import Tensor
from tqdm.auto import tqdm

from probes.lm.load import resolve_dtype
from probes.metrics import RetrievalSuite
from probes.models import provenance
from probes.models.conditioning import ProbeReader
from probes.models.generator import ProbeGenerator
from probes.models.heads import Head, MultiHotHead
from probes.models.lm import frozen_lm, resolve_model_path
from probes.models.reporting import QueryTables, RecallFigure, TestMetricsJson

# f_new is a submodule kept in eval mode on purpose: Lightning's warning about that says nothing to a user
EVAL_MODE_WARNING = r"Found \d+ module\(s\) in eval mode"

GeneratorFactory = Callable[[int], ProbeGenerator]  # embedding_dim -> generator
HeadFactory = Callable[[int, int, int], Head]  # (response_dim, num_probes, n_documents) -> head


def headline(metrics: dict[str, float]) -> dict[str, float]:
    """What is logged: every all-query metric; per subset (base/wrapper/...) the macro mAP and recall@10."""
    keep = ("/macro/map", "/macro/recall@10")
    every = {k: v for k, v in metrics.items() if "/subsets/" not in k and not k.endswith("/count")}
    return every | {k: v for k, v in metrics.items() if k.endswith(keep)}


def _drop_lm(module, state: dict, prefix: str, local_metadata) -> None:
    """State-dict hook: f_new's weights are not the probe's (a checkpoint holds the probes and the head)."""
    for key in [k for k in state if k.startswith(f"{prefix}lm.")]:
        del state[key]


def _lm_not_missing(module, incompatible) -> None:
    """Load-state-dict hook: a checkpoint without f_new's weights is complete (f_new is loaded by path)."""
    incompatible.missing_keys[:] = [k for k in incompatible.missing_keys if not k.startswith("lm.")]


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
        self.save_hyperparameters()
        self._make_generator, self._make_head, self._make_optimizer = generator, head, optimizer
        self.generator: ProbeGenerator | None = None
        self.head: Head | None = None
        self.lm: torch.nn.Module | None = None  # f_new: frozen, placed and cast by Lightning, never saved
        self._reader: ProbeReader | None = None  # f_new behind its conditioning (a plain object)
        self.register_state_dict_post_hook(_drop_lm)
        self.register_load_state_dict_post_hook(_lm_not_missing)
        self.documents: list[str] | None = None
        self._doc_cache: Float[Tensor, "n k r"] | None = None
        self.val_metrics: dict[str, float] = {}  # of the last validation outside the sanity check
        self.test_metrics: dict[str, float] = {}  # of the last test
        self.trained_on: dict | None = None  # `provenance.record` of a loaded checkpoint

    @property
    def reader(self) -> ProbeReader:
        """The frozen f_new behind its conditioning."""
        if self._reader is None:
            raise RuntimeError("ProbeModule has no LM yet: call configure_model() (the Trainer does)")
        return self._reader

    def train(self, mode: bool = True) -> ProbeModule:
        """Train or eval the probes; f_new stays in eval mode (no dropout) either way."""
        super().train(mode)
        if self.lm is not None:
            self.lm.eval()
        return self

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
        self.lm = lm
        self._reader = ProbeReader(lm, tokenizer, hp.position, hp.layer, hp.response, candidate_ids)
        self.generator = self._make_generator(lm.config.hidden_size)
        self.generator.set_token_norm(lm.get_input_embeddings().weight)
        self.head = self._make_head(self._reader.response_dim, self.generator.num_probes, hp.n_documents)
        if isinstance(self.head, MultiHotHead) and hp.split == "by_function":
            raise ValueError(
                "model.head MultiHotHead cannot rank documents of held-out functions (data.split="
                "by_function): use model.head.class_path=probes.models.PairwiseHead (see "
                "configs/dlp-heldout-functions.yaml)"
            )

    def on_fit_start(self) -> None:
        """Silence Lightning's eval-mode warning (it is about f_new) until training starts, where it is
        raised; the process's warning filters are restored in `on_train_start`."""
        self._quiet = warnings.catch_warnings()
        self._quiet.__enter__()
        warnings.filterwarnings("ignore", EVAL_MODE_WARNING, PossibleUserWarning)

    def on_train_start(self) -> None:
        quiet = getattr(self, "_quiet", None)
        if quiet is not None:
            quiet.__exit__(None, None, None)
            self._quiet = None

    def configure_callbacks(self) -> list:
        """Under a Trainer: the data's tables in (`QueryTables`), the figure and test_metrics.json out."""
        return [QueryTables(), RecallFigure(), TestMetricsJson()]

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
        self.documents, self._doc_cache = list(texts), None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Record the corpus and f_new by content: a checkpoint is only used on what it was trained on."""
        checkpoint[provenance.KEY] = provenance.record(self.documents, self.reader.lm)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Keep what the checkpoint was trained on; under a Trainer (fit/validate/test with ``ckpt_path``) the
        documents and f_new are already set, so a mismatch is refused here (`DLPMethod` checks its own)."""
        self.trained_on = checkpoint.get(provenance.KEY)
        where = f"checkpoint {getattr(self._trainer, 'ckpt_path', None) or ''}".rstrip()
        if self.trained_on is None:
            raise provenance.missing(where)
        if self.documents is not None and self._reader is not None:
            provenance.check(self.trained_on, self.documents, self._reader.lm, where, self.hparams.model)

    def configure_optimizers(self):
        return self._make_optimizer([p for p in self.parameters() if p.requires_grad])  # not f_new

    def _document_responses(self, probes: Float[Tensor, "k m d"]) -> Float[Tensor, "n k r"]:
        """Every document's responses, computed once per evaluation (probes fixed there), shortest first."""
        if self._doc_cache is None:
            order = sorted(range(len(self.documents)), key=lambda i: len(self.documents[i]))
            size = self.hparams.document_batch_size
            out = None
            for start in tqdm(range(0, len(order), size), desc="document responses", leave=False):
                ids = order[start : start + size]
                rows = self.reader([self.documents[i] for i in ids], probes, as_prompt=False)
                out = rows.new_empty(len(order), *rows.shape[1:]) if out is None else out
                out[torch.tensor(ids, device=rows.device)] = rows
            self._doc_cache = out
        return self._doc_cache

    def score(self, prompts: Sequence[str]) -> Float[Tensor, "b n"]:
        """Influence scores of every training document for each query prompt (higher = more influential)."""
        probes = self.generator()
        queries = self.reader(prompts, probes)
        if self.head.uses_documents:
            return self.head(queries, self._document_responses(probes))
        return self.head(queries)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        probes = self.generator()
        queries = self.reader(batch["prompts"], probes)
        relevant = batch["relevant"]
        if self.head.uses_documents:
            ids = self.head.sample_documents(relevant)
            docs = self.reader([self.documents[i] for i in ids.tolist()], probes, as_prompt=False)
            loss = self.head.loss(self.head(queries, docs), relevant[:, ids])
        else:
            loss = self.head.loss(self.head(queries), relevant)
        size = len(batch["prompts"])
        sync = dict(batch_size=size, sync_dist=True)  # under DDP: epoch means over every rank's batches
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, **sync)
        norms = self.generator.raw().detach().norm(dim=-1).mean(-1)  # per probe, before the norm scaling
        self.log_dict({f"probes/norm_{i}": v for i, v in enumerate(norms)}, on_epoch=True, **sync)
        return loss

    def on_train_epoch_start(self) -> None:
        self._doc_cache = None

    def on_validation_epoch_start(self) -> None:
        self._doc_cache = None

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.val_retrieval.update(self.score(batch["prompts"]), batch["relevant"], batch["query_ids"])

    def on_validation_epoch_end(self) -> None:
        metrics = self.val_retrieval.compute()  # every rank's queries, each once: the same on every rank
        self.val_retrieval.reset()
        # sync_dist averages equal values (a no-op) and tells Lightning that they hold for every rank
        self.log_dict({k: v for k, v in headline(metrics).items() if k != "val/macro/map"}, sync_dist=True)
        self.log("val/macro/map", metrics["val/macro/map"], prog_bar=True, sync_dist=True)
        if not self.trainer.sanity_checking:
            self.val_metrics = metrics

    def on_test_epoch_start(self) -> None:
        self._doc_cache = None

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.test_retrieval.update(self.score(batch["prompts"]), batch["relevant"], batch["query_ids"])

    def on_test_epoch_end(self) -> None:
        self.test_metrics = self.test_retrieval.compute()
        self.test_retrieval.reset()
        self.log_dict(headline(self.test_metrics), sync_dist=True)

    def on_predict_epoch_start(self) -> None:
        self._doc_cache = None

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, Tensor]:
        return {"query_ids": batch["query_ids"], "scores": self.score(batch["prompts"])}
