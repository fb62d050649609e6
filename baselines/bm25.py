"""BM25 (bm25s) over the model tokenizer's ids, so every function token is one atomic term."""

from __future__ import annotations

import os

# bm25s imports jax when it is installed; on a GPU machine jax would then grab most of the card's memory at
# its first use (XLA preallocation). BM25 here never runs on jax: keep it from claiming the GPU.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import bm25s  # noqa: E402
import numpy as np
import scipy.sparse as sp
import torch
from jaxtyping import Float, Int
from torch import Tensor

from baselines.ops.queries import QUERY_TEXTS, query_texts, text_token_ids
from probes.methods import AttributionContext, Method, check_choice, register

VARIANTS = ("lucene", "robertson", "atire", "bm25l", "bm25+")


@register("bm25")
class BM25(Method):
    """BM25 of each query's tokens against each document; the index is bm25s's, the scoring one sparse matmul.

    Args:
        k1: term-frequency saturation.
        b: document-length normalisation.
        variant: bm25s's scoring method: "lucene", "robertson", "atire", "bm25l" or "bm25+".
        query_text: "prompt_answer" (the query as the LM features see it) or "prompt".
    """

    def __init__(
        self, k1: float = 1.5, b: float = 0.75, variant: str = "lucene", query_text: str = "prompt_answer"
    ):
        check_choice("bm25", "variant", variant, VARIANTS)
        check_choice("bm25", "query_text", query_text, QUERY_TEXTS)
        super().__init__(k1=k1, b=b, variant=variant, query_text=query_text)

    def prepare(self, ctx: AttributionContext) -> None:
        tokenizer = ctx.require("pair", self.name).tokenizer
        # ids as strings: bm25s keeps its own vocabulary and never confuses a token id with its empty term
        docs = [[str(i) for i in ids] for ids in text_token_ids(tokenizer, ctx.corpus.texts)]
        s = self.settings
        index = bm25s.BM25(k1=s["k1"], b=s["b"], method=s["variant"])
        index.index(docs, show_progress=False)
        self.vocab = index.vocab_dict
        m = index.scores
        # bm25s stores the term x document scores as CSC columns, one per term (its empty term has none)
        self.n_terms = len(m["indptr"]) - 1
        self.term_scores = sp.csc_matrix(
            (m["data"], m["indices"], m["indptr"]), shape=(m["num_docs"], self.n_terms)
        )
        self.nonoccurrence = index.nonoccurrence_array
        query_ids = text_token_ids(tokenizer, query_texts(ctx.queries, s["query_text"]))
        self.query_counts = self._counts(query_ids)

    def _counts(self, ids: list[list[int]]) -> sp.csr_matrix:
        """Query x term counts; tokens absent from every document are dropped (as bm25s does)."""
        rows, cols = [], []
        for row, seq in enumerate(ids):
            terms = [self.vocab[str(i)] for i in seq if self.vocab.get(str(i), self.n_terms) < self.n_terms]
            rows += [row] * len(terms)
            cols += terms
        data = np.ones(len(rows), dtype=np.float64)
        return sp.csr_matrix((data, (rows, cols)), shape=(len(ids), self.n_terms))

    def score(self, query_ids: Int[Tensor, "q"]) -> Float[Tensor, "q n"]:
        counts = self.query_counts[query_ids.numpy()]
        scores = np.asarray((self.term_scores @ counts.T).T.todense(), dtype=np.float64)
        if self.nonoccurrence is not None:
            scores = scores + (counts @ self.nonoccurrence)[:, None]
        return torch.from_numpy(scores).float()
