"""Shared builders for the baselines tests: micro corpus, queries, contexts, reference gradients."""

from __future__ import annotations

import copy
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lm_fixtures import CANDIDATES, make_micro_pair, micro_rows

from probes.data.corpus import corpus_from_rows
from probes.data.queries import Query, make_queries, relevance
from probes.lm.load import load_pair
from probes.methods import AttributionContext

# baselines/ modules that are not a method (their shared parts live in baselines/ops/)
HELPER_MODULES = {"__init__"}


pytestmark = pytest.mark.usefixtures("one_thread")


def micro_corpus():
    return corpus_from_rows(micro_rows())


def float64_setup(folder: Path):
    """(micro corpus, the queries of inputs 1 and 2, a float64 micro pair saved under ``folder``): the
    exactness tests' setting."""
    corpus = micro_corpus()
    pair = load_pair(*make_micro_pair(folder), dtype="float64", corpus=corpus, candidates=CANDIDATES)
    return corpus, make_queries(corpus, inputs=[1, 2]), pair


def shuffled_corpus(corpus, seed: int):
    """The same documents in a seeded random order, and the permutation (new position -> old index)."""
    # a document's row: every field but where it stood (index, line), which corpus_from_rows assigns anew
    rows = [{k: v for k, v in asdict(d).items() if k not in ("index", "line")} for d in corpus.documents]
    perm = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))
    return corpus_from_rows([rows[i] for i in perm.tolist()]), perm


def doc_queries(corpus) -> list[Query]:
    """One query per document whose prompt + answer IS the document's text (answer = its last word)."""
    out = []
    for doc in corpus.documents:
        cut = doc.text.rindex(" ") + 1
        func = corpus.functions[doc.func]
        out.append(
            Query(doc.index, doc.func, 0, doc.text[:cut], doc.text[cut:], func.constant, func.hop_depth)
        )
    return out


def make_ctx(corpus, queries, pair=None, features=None, val_ids=(0, 1)) -> AttributionContext:
    val_ids = torch.tensor(list(val_ids), dtype=torch.long)
    candidate_ids = None
    if pair is not None:
        candidate_ids = torch.tensor(pair.tokenizer.convert_tokens_to_ids([str(c) for c in CANDIDATES]))
    return AttributionContext(
        corpus=corpus,
        queries=queries,
        candidate_ids=candidate_ids,
        pair=pair,
        features=features,
        val_ids=val_ids,
        val_relevant=relevance(corpus, [queries[i] for i in val_ids.tolist()]),
    )


def reference_gradients(
    pair, corpus, queries, param_filter: str = "", per_module: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example parameter gradients by plain autograd on a trainable copy of f_new (no probes code) of
    the parameters whose name contains ``param_filter``: [examples, numel] concatenated, or with
    ``per_module`` (parameters of one shape) [examples, parameters, numel]."""
    model = copy.deepcopy(pair.new).requires_grad_(True)
    params = [p for n, p in model.named_parameters() if param_filter in n]
    tok = pair.tokenizer

    def flat(loss):
        flat_grads = [g.flatten() for g in torch.autograd.grad(loss, params)]
        return torch.stack(flat_grads) if per_module else torch.cat(flat_grads)

    docs = []
    for text in corpus.texts:
        ids = torch.tensor([tok.encode(text)])
        logits = model(input_ids=ids).logits[0]
        docs.append(flat(F.cross_entropy(logits[:-1], ids[0, 1:])))
    qs = []
    for q in queries:
        ids = torch.tensor([tok.encode(q.prompt)])
        (answer,) = tok.encode(q.answer, add_special_tokens=False)
        qs.append(flat(-model(input_ids=ids).logits[0, -1].log_softmax(-1)[answer]))
    return torch.stack(docs), torch.stack(qs)
