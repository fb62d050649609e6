"""The one place LM features are computed and shared: each (model, side, kind, pooling, loss) at most once."""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from probes.features.backend import PassOptions
from probes.features.cache import FeatureCache, model_fingerprint
from probes.features.extract import FeatureSpec, compute_features
from probes.hashing import content_hash
from probes.lm.load import ModelPair
from probes.lm.ranks import global_rank

SIDES = ("docs", "queries")
# DESIGN.md: a document's loss is its own next-token loss, a query's the cross-entropy of its answer
AUTO_LOSS = {"docs": "lm", "queries": "ce"}


def gradient_batching(
    batch_size: int, max_tokens: int | None, grad_batch_size: int | None = None
) -> tuple[int, int | None]:
    """Texts and padded tokens per gradient batch, given the forward pass's: half of each unless
    ``grad_batch_size`` is given (a gradient pass holds its activations for the backward)."""
    return grad_batch_size or max(1, batch_size // 2), None if max_tokens is None else max(1, max_tokens // 2)


class FeatureStore:
    """Pooled per-layer features of the training documents and of ALL queries (methods index rows by id).

    Memoised in memory and, when ``cache`` is given, on disk; hidden states for f_old or f_new, activation
    gradients at f_new, and per-position attributions ``Δh ⊙ g`` (multiplied in one pass, then pooled).
    Queries are teacher-forced texts ``prompt + answer`` with the answer span as target.

    Args:
        pair: the loaded, checked model pair.
        doc_texts: training document texts, in corpus order.
        query_texts: query texts (see `probes.features.extract.query_inputs`), in query id order.
        query_targets: the answer's character span in each query text.
        candidate_ids: token ids of the candidate answers (for the margin loss).
        cache: optional on-disk cache shared across runs.
        batch_size: texts per forward pass (gradients use ``grad_batch_size``, default half of it).
        grad_batch_size: texts per forward+backward pass.
        max_tokens: padded tokens per forward pass (None = no cap; see `probes.lm.scoring.length_batches`);
            gradients use half of it, as their pass holds activations for the backward.
        compile: run the decoder blocks compiled (`probes.features.fast.compiled`; fast backend only).
        backend: "fast" or "reference" (`probes.features.backend`; the same features).
        progress: show progress bars.
        devices: devices that share each feature pass (Lightning's ``strategy``, see
            `probes.features.distributed`); every rank must have its pair on its own device. Only rank 0
            writes the disk cache: the others compute the same tensors.
        strategy: the Lightning strategy when ``devices`` > 1.
    """

    def __init__(
        self,
        pair: ModelPair,
        doc_texts: list[str],
        query_texts: list[str],
        query_targets: list[tuple[int, int]],
        candidate_ids: Int[Tensor, "c"],
        cache: FeatureCache | None = None,
        batch_size: int = 32,
        grad_batch_size: int | None = None,
        max_tokens: int | None = None,
        compile: bool = False,
        backend: str = "fast",
        progress: bool = True,
        devices: int = 1,
        strategy: str = "ddp",
    ):
        if len(query_targets) != len(query_texts):
            raise ValueError(f"{len(query_texts)} query texts but {len(query_targets)} query_targets")
        self.pair, self.cache, self.progress = pair, cache, progress
        self.texts = {"docs": list(doc_texts), "queries": list(query_texts)}
        self.targets = {"docs": None, "queries": [tuple(t) for t in query_targets]}
        self.candidate_ids = candidate_ids
        self.batch_size = batch_size
        self.devices, self.strategy = devices, strategy
        self.options = PassOptions(backend, compile)
        self.max_tokens = max_tokens
        grad = gradient_batching(batch_size, max_tokens, grad_batch_size)
        self.grad_batch_size, self.grad_max_tokens = grad
        self._memo: dict[tuple, Tensor] = {}
        self._tokenizer_hash: str | None = None

    def hidden(self, model: str, side: str, pooling: str = "last") -> Float[Tensor, "N l d"]:
        """Hidden states h_l of f_old or f_new (``model`` "old"|"new"), all layers, index 0 = embeddings."""
        return self._get(model, side, FeatureSpec("hidden", pooling))

    def grads(self, side: str, pooling: str = "last", loss: str = "auto") -> Float[Tensor, "N l d"]:
        """Activation gradients g_l = dL/dh_l at f_new; ``loss="auto"`` is lm for docs and ce for queries."""
        self._check_side(side)
        return self._get(
            "new", side, FeatureSpec("grad", pooling, AUTO_LOSS[side] if loss == "auto" else loss)
        )

    def attributions(self, side: str, pooling: str = "last", loss: str = "auto") -> Float[Tensor, "N l d"]:
        """Per-position ``a_l,t = (h_l,t^new - h_l,t^old) ⊙ g_l,t`` (g at f_new, ``loss`` as in `grads`),
        multiplied before pooling: pooled over one position it equals ``Δh ⊙ g`` of the pooled features."""
        self._check_side(side)
        return self._get(
            "new", side, FeatureSpec("attr", pooling, AUTO_LOSS[side] if loss == "auto" else loss)
        )

    def _get(self, which: str, side: str, spec: FeatureSpec) -> Tensor:
        self._check_side(side)
        model = self.pair.model(which)
        old = self.pair.old if spec.kind == "attr" else None
        key = (which, side, spec)
        if key not in self._memo:
            texts, targets = self.texts[side], self.targets[side]
            hidden = spec.kind == "hidden"
            batch_size = self.batch_size if hidden else self.grad_batch_size
            max_tokens = self.max_tokens if hidden else self.grad_max_tokens

            def compute() -> Tensor:
                try:
                    return compute_features(
                        model,
                        self.pair.tokenizer,
                        texts,
                        spec,
                        targets=targets,
                        candidate_ids=self.candidate_ids,
                        old=old,
                        batch_size=batch_size,
                        max_tokens=max_tokens,
                        compile=self.options.compile,
                        backend=self.options.backend,
                        progress=self.progress,
                        devices=self.devices,
                        strategy=self.strategy,
                    )
                except FloatingPointError as error:  # name the model: it is the model's fault, not a method's
                    path = self.pair.new_path if which == "new" else self.pair.old_path
                    raise FloatingPointError(f"f_{which} ({path}) on the {side}: {error}") from error

            if self.cache is None:
                self._memo[key] = compute()
            else:
                extra = {"targets": targets, "tokenizer": self.tokenizer_hash()}
                if spec.loss == "margin":
                    extra["candidates"] = self.candidate_ids.tolist()
                if old is not None:
                    extra["old"] = model_fingerprint(old)
                write = global_rank(self.devices) == 0
                self._memo[key] = self.cache.get_or_compute(
                    model, texts, spec, compute, extra=extra, write=write
                )
        return self._memo[key]

    def answers_correct(self, answers: Int[Tensor, "N"]) -> Bool[Tensor, "N"]:
        """f_new's correctness on every query from the features it already has: the LM head on the final
        hidden state (after the final norm) at the last prompt position, argmax over the candidate answers,
        compared with ``answers`` (each query's index among the candidates). No extra pass over the texts."""
        states = self.hidden("new", "queries", "last")[:, -1]
        head = self.pair.new.get_output_embeddings()
        weight = head.weight[self.candidate_ids.to(head.weight.device)]
        with torch.no_grad():
            logits = states.to(weight.device, weight.dtype) @ weight.T
            if getattr(head, "bias", None) is not None:
                logits = logits + head.bias[self.candidate_ids.to(head.bias.device)]
        return logits.argmax(-1).cpu() == answers.cpu()

    def tokenizer_hash(self) -> str:
        """A hash of the tokenizer's vocabulary and special tokens (part of every cache key)."""
        if self._tokenizer_hash is None:
            tokenizer = self.pair.tokenizer
            vocab = sorted(tokenizer.get_vocab().items())
            self._tokenizer_hash = content_hash([vocab, tokenizer.all_special_ids, type(tokenizer).__name__])
        return self._tokenizer_hash

    @staticmethod
    def _check_side(side: str) -> None:
        if side not in SIDES:
            raise ValueError(f"side must be one of {SIDES}, got {side!r}")
