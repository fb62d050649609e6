"""HopsData: the one corpus, query set, relevance matrix and split that every method shares."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
from jaxtyping import Bool
from torch import Tensor

from probes.data.corpus import Corpus, load_corpus
from probes.data.queries import (
    RELEVANCE_MODES,
    Query,
    candidate_answers,
    check_inputs,
    hop_relevance,
    make_queries,
    query_template,
)
from probes.data.queries import relevance as relevance_matrix
from probes.data.splits import SPLITS, split_queries
from probes.data.synthetic import generated_name, resolve_corpus_path


@dataclass(frozen=True)
class _Prepared:
    corpus: Corpus
    queries: list[Query]
    relevant: Tensor
    candidates: list[int]
    split_ids: dict[str, Tensor]
    query_functions: list[str]
    is_wrapper: Tensor
    hop: tuple[Tensor, Tensor]


class HopsData:
    """The one corpus, query set, relevance matrix and split that every method shares: what compare.py scores
    on, without Lightning (`probes.data.datamodule.HopsDataModule` adds the training loaders)."""

    def __init__(
        self,
        corpus_path: str | None = None,
        query_format: str = "returns",
        inputs: list[int] | None = None,
        relevance: str = "pair",
        split: str = "by_input",
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        seed: int = 0,
        batch_size: int = 32,
        skip_invalid: bool = False,
        num_workers: int = 0,
    ):
        """HOPS queries over one training corpus, split into train/val/test query ids.

        Args:
            corpus_path: HOPS JSONL file, or "generated:<name>" for a named generated corpus
                (``probes.data.synthetic.GENERATED_CORPORA``); None = the generated default corpus. A
                generated corpus is written to the cache on first use.
            query_format: "returns" ("<FN>(3) returns the value "), "output_of" ("The output of <FN>(3)
                is "), or a template with {func} and {x}.
            inputs: the integer inputs of the queries (one query per function and input); None = 1..100.
            relevance: ground-truth influencers: "pair" (the function, what it wraps, what wraps it) or
                "chain" (the function and everything below it on its call chain).
            split: "by_input" (every function in every split, inputs partitioned) or "by_function" (functions
                partitioned, a wrapper always with what it wraps, for held-out-function evaluation).
            val_fraction: fraction of the inputs (by_input) or function groups (by_function) for validation.
            test_fraction: fraction of the inputs or function groups for testing.
            seed: seed of the split's permutation and of the training-batch shuffle.
            batch_size: queries per batch.
            skip_invalid: skip invalid corpus rows (one warning lists their lines) instead of failing.
            num_workers: DataLoader worker processes.
        """
        options = {key: value for key, value in locals().items() if key not in ("self", "__class__")}
        super().__init__()
        if generated_name(corpus_path) is None and not Path(corpus_path).is_file():
            raise ValueError(
                f"corpus_path {str(corpus_path)!r} is not a file; give a HOPS JSONL, generated:NAME or None"
            )
        query_template(query_format)
        check_inputs(range(1, 101) if inputs is None else inputs)
        if relevance not in RELEVANCE_MODES:
            raise ValueError(f"relevance must be 'pair' or 'chain', got {relevance!r}")
        if split not in SPLITS:
            raise ValueError(f"split must be 'by_input' or 'by_function', got {split!r}")
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
        if val_fraction + test_fraction >= 1.0:
            raise ValueError(
                f"val_fraction + test_fraction must be < 1 to leave training queries, got "
                f"{val_fraction!r} + {test_fraction!r}"
            )
        for name, value, low in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0)):
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value!r}")
        self._set_options(options)
        self._prepared: _Prepared | None = None
        self.correct: Bool[Tensor, " q"] | None = None

    def _set_options(self, options: dict) -> None:
        """Keep the constructor's arguments as ``self.options``."""
        self.options = SimpleNamespace(**options)

    @staticmethod
    def resolve_corpus_path(corpus_path: str | os.PathLike[str] | None = None) -> Path:
        """The corpus file to use: ``corpus_path``, or the named (None: default) generated corpus."""
        return resolve_corpus_path(corpus_path)

    def prepare(self) -> HopsData:
        """Load the corpus, build queries, relevance and the split once; later calls return at once."""
        if self._prepared is None:
            hp = self.options
            corpus = load_corpus(self.resolve_corpus_path(hp.corpus_path), skip_invalid=hp.skip_invalid)
            inputs = list(range(1, 101)) if hp.inputs is None else list(hp.inputs)
            queries = make_queries(corpus, inputs, hp.query_format)
            split_ids = split_queries(corpus, queries, hp.split, hp.val_fraction, hp.test_fraction, hp.seed)
            relevant = relevance_matrix(corpus, queries, hp.relevance)
            is_wrapper = torch.tensor([q.is_wrapper for q in queries], dtype=torch.bool)
            functions = [q.func for q in queries]
            answers = candidate_answers(corpus)
            hop = hop_relevance(corpus, queries)
            self._prepared = _Prepared(
                corpus, queries, relevant, answers, split_ids, functions, is_wrapper, hop
            )
        return self

    @property
    def _state(self) -> _Prepared:
        return self.prepare()._prepared

    @property
    def corpus(self) -> Corpus:
        return self._state.corpus

    @property
    def queries(self) -> list[Query]:
        return self._state.queries

    @property
    def relevant(self) -> Bool[Tensor, "q n"]:
        return self._state.relevant

    @property
    def candidates(self) -> list[int]:
        """Candidate answers (integers) for the correct-answer check."""
        return self._state.candidates

    @property
    def split_ids(self) -> dict[str, Tensor]:
        """Query ids (sorted) of the "train", "val" and "test" splits."""
        return self._state.split_ids

    @property
    def num_documents(self) -> int:
        return len(self.corpus)

    @property
    def query_functions(self) -> list[str]:
        """The function of each query, by query id (for macro metrics)."""
        return self._state.query_functions

    @property
    def is_wrapper(self) -> Bool[Tensor, " q"]:
        return self._state.is_wrapper

    @property
    def hop(self) -> tuple[Bool[Tensor, "q n"], Bool[Tensor, "q n"]]:
        """(below, own) by query id: the wrapper→base subset's relevance (see `hop_relevance`)."""
        return self._state.hop

    def set_correctness(self, correct: Bool[Tensor, " q"]) -> None:
        """Record per query whether f_new answers it correctly (for the correct/incorrect metric subsets)."""
        if correct.shape != (len(self.queries),):
            n, shape = len(self.queries), tuple(correct.shape)
            raise ValueError(f"correct must have one entry per query ({n}), got shape {shape}")
        self.correct = correct.clone()

    def query_table(self, ids: Tensor | list[int] | None = None) -> list[dict]:
        """One dict per query: query_id, func, input, wrapper, prompt, answer, split (+ correct once set)."""
        split_of = {i: name for name, split in self.split_ids.items() for i in split.tolist()}
        chosen = range(len(self.queries)) if ids is None else torch.as_tensor(ids).tolist()
        rows = []
        for i in chosen:
            q = self.queries[i]
            row = {"query_id": i, "func": q.func, "input": q.input, "wrapper": q.is_wrapper}
            row |= {"prompt": q.prompt, "answer": q.answer, "split": split_of[i]}
            if self.correct is not None:
                row["correct"] = bool(self.correct[i])
            rows.append(row)
        return rows
