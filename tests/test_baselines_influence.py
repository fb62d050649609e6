"""ekfac (kronfluence) and trackstar (bergson) against their closed forms in float64, and the invariances
(batch size, document order) every method keeps. Skipped without the `influence` extra (README)."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from baselines_fixtures import (
    float64_setup,
    make_ctx,
    reference_gradients,
    shuffled_corpus,
)
from lm_fixtures import build_tokenizer, micro_rows
from torch import nn

from probes.data.corpus import corpus_from_rows
from probes.data.queries import make_queries
from probes.lm.load import ModelPair
from probes.methods import build_method, missing_extra

pytestmark = pytest.mark.usefixtures("one_thread")
needs_kronfluence = pytest.mark.skipif(missing_extra("ekfac") is not None, reason="kronfluence not installed")
needs_bergson = pytest.mark.skipif(missing_extra("trackstar") is not None, reason="bergson not installed")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return float64_setup(tmp_path_factory.mktemp("pair"))


def scores_of(name, corpus, queries, pair, **options):
    method = build_method(name, **options)
    method.prepare(make_ctx(corpus, queries, pair=pair))
    return method.score(torch.arange(len(queries)))


class CodedLM(nn.Module):
    """A causal LM whose one tracked module sees one scaled basis vector per token: token t -> c_t e_j(t)
    (fixed) -> s = w . x (``score``, Linear(k, 1)) -> hidden = lift(s) -> fixed head. With one predicted
    position per document and a distinct input code per document, the per-document gradients of w are
    orthogonal, so the empirical Fisher is diagonal in the Kronecker eigenbasis and EK-FAC is exact."""

    def __init__(self, codes: torch.Tensor, width: int = 6):
        super().__init__()
        self.config = SimpleNamespace()
        self.embed = nn.Embedding.from_pretrained(codes, freeze=True)
        self.score = nn.Linear(codes.shape[1], 1, bias=False)
        self.lift = nn.Linear(1, width)
        self.lm_head = nn.Linear(width, codes.shape[0], bias=False)

    def get_input_embeddings(self) -> nn.Module:
        return self.embed

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def forward(self, input_ids, logits_to_keep=0, output_hidden_states=False, **_):
        hidden = self.lift(self.score(self.embed(input_ids)))
        kept = hidden[:, -logits_to_keep:] if isinstance(logits_to_keep, int) else hidden[:, logits_to_keep]
        return SimpleNamespace(
            logits=self.lm_head(kept), hidden_states=(hidden,) if output_hidden_states else None
        )


def coded_world():
    """Two-token documents with distinct first tokens, the queries of their functions, and a `CodedLM`."""
    texts = ["<GN> 5", "def 5", "<FN> <GN>", "<JN> 9", "The 9", "<HN> <JN>"]
    rows = [{**row, "text": text} for row, text in zip(micro_rows(), texts, strict=True)]
    corpus = corpus_from_rows(rows)
    tokenizer = build_tokenizer(bos=False)
    firsts = [tokenizer.encode(t)[0] for t in texts]
    k, vocab = len(texts), len(tokenizer)
    slot = torch.arange(vocab) % k
    slot[firsts] = torch.arange(k)
    generator = torch.Generator().manual_seed(0)
    scale = 1 + torch.rand(vocab, generator=generator, dtype=torch.float64)
    codes = F.one_hot(slot, k).double() * scale[:, None]
    torch.manual_seed(0)
    model = CodedLM(codes).double().eval()
    return corpus, make_queries(corpus, inputs=[1, 2]), ModelPair(model, model, tokenizer, "coded", "coded")


def own_gradients(model, tokenizer, corpus, queries) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example gradients of ``score.weight`` by plain autograd (no probes or library code)."""
    model = copy.deepcopy(model).requires_grad_(True)

    def grad(ids, position, target):
        logits = model(torch.tensor([ids])).logits[0, position]
        return torch.autograd.grad(F.cross_entropy(logits, torch.tensor(target)), model.score.weight)[0][0]

    docs = [grad(ids, 0, ids[1]) for ids in (tokenizer.encode(t) for t in corpus.texts)]
    qs = [grad(tokenizer.encode(q.prompt), -1, tokenizer.encode(q.answer)[0]) for q in queries]
    return torch.stack(docs), torch.stack(qs)


@needs_kronfluence
def test_ekfac_undamped_equals_exact_inverse_fisher_influence():
    corpus, queries, pair = coded_world()
    docs, qs = own_gradients(pair.new, pair.tokenizer, corpus, queries)
    fisher = docs.T @ docs / len(docs)
    assert torch.linalg.matrix_rank(fisher) == len(docs)  # invertible: no damping needed
    exact = qs @ torch.linalg.solve(fisher, docs.T)
    got = scores_of(
        "ekfac",
        corpus,
        queries,
        pair,
        modules="all",
        module_filter="^score$",
        fisher="empirical",
        damping=0.0,
    )
    torch.testing.assert_close(got, exact)
    assert torch.equal(got.argsort(1, descending=True), exact.argsort(1, descending=True))


@needs_bergson
def test_trackstar_full_dimension_equals_closed_form(setup):
    """No projection: cos_M(u_q, u_d) with u = g / (sqrt(v) + eps), v the documents' mean squared gradient,
    M = blockdiag((R_m + damping x mean eig R_m x I)^-1), R_m the documents' mean u_m u_m^T."""
    corpus, queries, pair = setup
    docs, qs = reference_gradients(pair, corpus, queries, "o_proj", per_module=True)
    denominator = docs.pow(2).mean(0).sqrt() + 1e-8
    u_docs, u_qs = docs / denominator, qs / denominator
    damping = 0.5
    inner = {}
    for name, a, b in (("qd", u_qs, u_docs), ("qq", u_qs, u_qs), ("dd", u_docs, u_docs)):
        total = 0
        for m in range(docs.shape[1]):
            r = u_docs[:, m].T @ u_docs[:, m] / len(docs)
            r = r + damping * torch.linalg.eigvalsh(r).mean() * torch.eye(len(r), dtype=r.dtype)
            total = total + a[:, m] @ torch.linalg.solve(r, b[:, m].T)
        inner[name] = total
    exact = inner["qd"] / torch.outer(inner["qq"].diag().sqrt(), inner["dd"].diag().sqrt())
    got = scores_of(
        "trackstar",
        corpus,
        queries,
        pair,
        projection_dim=None,
        damping=damping,
        modules="all",
        module_filter="o_proj",
    )
    torch.testing.assert_close(got, exact)


@pytest.mark.parametrize(
    "name, options",
    [
        pytest.param("ekfac", {"module_filter": "o_proj"}, marks=[needs_kronfluence, pytest.mark.slow]),
        pytest.param("trackstar", {"projection_dim": 4}, marks=needs_bergson),
    ],
)
def test_batch_size_and_document_order_do_not_change_scores(setup, name, options):
    corpus, queries, pair = setup
    scores = scores_of(name, corpus, queries, pair, batch_size=4, **options)
    torch.testing.assert_close(scores_of(name, corpus, queries, pair, batch_size=1, **options), scores)
    shuffled, perm = shuffled_corpus(corpus, seed=3)
    moved = scores_of(name, shuffled, queries, pair, batch_size=3, **options)
    torch.testing.assert_close(moved, scores[:, perm])


def test_evenly_spaced_keeps_every_part_of_the_rows():
    from baselines.ekfac import evenly_spaced

    rows = list(range(10, 40))
    assert evenly_spaced(rows, None) == rows and evenly_spaced(rows, 30) == evenly_spaced(rows, 99) == rows
    assert evenly_spaced(rows, 3) == [10, 20, 30] and evenly_spaced(rows, 1) == [10]
    with pytest.raises(ValueError, match=r"lambda_examples \(0\) must be >= 1 or None"):
        build_method("ekfac", lambda_examples=0)


@needs_kronfluence
def test_ekfac_lambda_on_all_documents_is_the_default_and_on_fewer_changes_the_scores(setup):
    """lambda_examples only thins the Lambda pass: at least the corpus's size it is the default fit."""
    corpus, queries, pair = setup
    options = dict(module_filter="o_proj", damping=1e-3)
    every = scores_of("ekfac", corpus, queries, pair, **options)
    n = len(corpus.texts)
    assert torch.equal(scores_of("ekfac", corpus, queries, pair, lambda_examples=n, **options), every)
    fewer = scores_of("ekfac", corpus, queries, pair, lambda_examples=2, **options)
    assert torch.isfinite(fewer).all() and not torch.allclose(fewer, every)
