"""GradSim: exact full-dimension cosine against per-example autograd; projection invariances and accuracy."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from baselines_fixtures import (
    doc_queries,
    float64_setup,
    make_ctx,
    reference_gradients,
    shuffled_corpus,
)
from lm_fixtures import CANDIDATES, make_micro_model

from baselines.ops.example_grads import (
    KroneckerProjection,
    batch_example_gradients,
    batch_projected_gradients,
    owners,
    param_group,
)
from baselines.ops.interpolate import text_loss
from baselines.ops.projections import RandomProjection, allocate_dims
from probes.data.queries import make_queries
from probes.features.extract import query_inputs
from probes.features.fast import losses as fast_losses
from probes.lm.scoring import collate, pad_id, tokenize
from probes.methods import build_method

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return float64_setup(tmp_path_factory.mktemp("pair"))


def scores_of(setup, **options):
    corpus, queries, pair = setup
    method = build_method("grad_sim", **options)
    method.prepare(make_ctx(corpus, queries, pair=pair))
    return method, method.score(torch.arange(len(queries)))


def cosine(a, b):
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T


def test_full_dimension_equals_exact_gradient_cosine(setup):
    corpus, queries, pair = setup
    docs, qs = reference_gradients(pair, corpus, queries)
    _, scores = scores_of(setup, projection_dim=0, batch_size=3)
    torch.testing.assert_close(scores, cosine(qs, docs))
    _, head = scores_of(setup, projection_dim=None, param_filter="lm_head")
    docs, qs = reference_gradients(pair, corpus, queries, "lm_head")
    torch.testing.assert_close(head, cosine(qs, docs))


@pytest.mark.parametrize("kind", ["sparse", pytest.param("rademacher", marks=pytest.mark.slow)])
def test_projection_preserves_cosines(setup, kind):
    corpus, queries, pair = setup
    docs, qs = reference_gradients(pair, corpus, queries)
    _, scores = scores_of(setup, projection_dim=1024, projection=kind)
    assert (scores - cosine(qs, docs)).abs().max() < 0.2  # Johnson-Lindenstrauss: ~sqrt(2 / 1024) per entry


def test_batching_chunking_and_caching_do_not_change_scores(setup):
    method, scores = scores_of(setup, projection_dim=128, batch_size=4)
    _, again = scores_of(setup, projection_dim=128, batch_size=3, cache_mb=0, chunk_size=2)
    torch.testing.assert_close(again, scores)
    _, capped = scores_of(setup, projection_dim=128, batch_size=8, max_tokens=12)
    torch.testing.assert_close(capped, scores)
    ids = torch.arange(len(scores))
    torch.testing.assert_close(torch.cat([method.score(ids[:3]), method.score(ids[3:])]), scores)


def test_kronecker_projection_equals_the_explicit_kronecker_matrix(setup, monkeypatch):
    """Projected from each call's inputs and output gradients, against each weight's exact per-example
    gradient times the [out * in, k * k] matrix kron(A, B) that the factored form never builds, one block per
    weight. The LM head runs once per chunk of 2 positions: several calls of one module, of different widths,
    add up into its block."""
    corpus, _, pair = setup
    names = [n for n, _ in pair.new.named_parameters() if n.endswith(("proj.weight", "lm_head.weight"))]
    assert "lm_head.weight" in names
    holders = owners(pair.new, names)
    projection = KroneckerProjection(holders, 16, seed=3)
    items = tokenize(pair.tokenizer, corpus.texts)
    batch = collate(items, pad_id(pair.tokenizer))
    monkeypatch.setattr(fast_losses, "LOGIT_BUDGET", 2 * len(items) * pair.new.config.vocab_size)
    got = batch_projected_gradients(pair.new, batch, items, "lm", projection)
    exact = batch_example_gradients(pair.new, batch, items, "lm", names)
    expected = torch.stack(
        [
            g @ torch.kron(*projection.factors(n, g.device, g.dtype))
            for n, g in zip(names, exact, strict=True)
        ],
        1,
    )
    torch.testing.assert_close(got, expected / 4)  # one block per weight, in the holders' order
    other = batch_projected_gradients(pair.new, batch, items, "lm", KroneckerProjection(holders, 16, seed=4))
    assert not torch.allclose(other, got)


def test_kronecker_projection_preserves_cosines(setup):
    corpus, queries, pair = setup
    docs, qs = reference_gradients(pair, corpus, queries, "proj")
    _, scores = scores_of(setup, projection="kronecker", projection_dim=1024, param_filter="proj")
    assert (scores - cosine(qs, docs)).abs().max() < 0.2


def test_kronecker_projection_names_what_it_cannot_project(setup):
    with pytest.raises(TypeError, match="'model.embed_tokens.weight' is Embedding.weight"):
        scores_of(setup, projection="kronecker", projection_dim=16)
    with pytest.raises(ValueError, match="square projection_dim"):
        scores_of(setup, projection="kronecker", projection_dim=15, param_filter="proj")
    with pytest.raises(ValueError, match="blocks='parameter'"):
        build_method("grad_sim", projection="kronecker", blocks="whole")


def test_random_projection_blocks_and_scaling():
    g = torch.Generator().manual_seed(0)
    grads = torch.randn(3, 10_000, generator=g, dtype=torch.float64)
    for kind in ("sparse", "rademacher", "gaussian"):
        project = RandomProjection(10_000, 512, kind, seed=1)
        if kind == "sparse":
            matrix = torch.zeros(10_000, 512, dtype=torch.float64)
            for i in range(3):
                columns, signs = project.block(i)
                matrix[torch.arange(len(columns)) + 4096 * i, columns] = signs.double()
        else:
            matrix = torch.cat([project.block(i)[0] for i in range(3)]).double() / 512**0.5
        torch.testing.assert_close(project([grads[:, :5000], grads[:, 5000:]]), grads @ matrix)
        assert not torch.equal(RandomProjection(10_000, 512, kind, seed=2)([grads]), project([grads]))
        norms = RandomProjection(10_000, 4096, kind)([grads]).norm(dim=-1) / grads.norm(dim=-1)
        assert ((norms - 1).abs() < 0.1).all()


def test_the_accelerator_sketch_gives_the_block_loops_sums():
    """On a GPU the sparse sketch is one index_add_ per piece from device-resident columns and signs; the
    same matrix as the CPU's 4096-coordinate blocks (checked here on the CPU, where both run in order)."""
    g = torch.Generator().manual_seed(0)
    grads = torch.randn(3, 10_000, generator=g)
    project = RandomProjection(10_000, 512, "sparse", seed=1)
    pieces = [grads[:, :5000], grads[:, 5000:9000], grads[:, 9000:]]
    blocks = project(pieces)
    sketched = project._add_sketched(pieces, torch.zeros(3, 512))
    assert torch.equal(sketched, blocks) and set(project.sketch) == {torch.device("cpu")}
    columns, signs = project.sketch[torch.device("cpu")]
    assert torch.equal(columns[4096:8192], project.block(1)[0]) and len(signs) == 10_000


def test_unknown_parameter_filter_is_named(setup):
    with pytest.raises(ValueError, match="no_such_param"):
        scores_of(setup, param_filter="no_such_param")


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("loss", ["lm", "ce", "margin"])
def test_batched_example_gradients_equal_one_text_at_a_time(setup, tied, loss):
    """One padded batch (texts of different lengths) against one autograd pass per text, tied weights too."""
    corpus, queries, pair = setup
    model = make_micro_model(len(pair.tokenizer), seed=3, tie_word_embeddings=tied).double()
    if loss == "lm":
        texts, targets = corpus.texts, None
    else:
        texts, targets = query_inputs(queries[:4] + [doc_queries(corpus)[5]])
    candidate_ids = torch.tensor(pair.tokenizer.convert_tokens_to_ids([str(c) for c in CANDIDATES]))
    names = [n for n, _ in model.named_parameters()]
    items = tokenize(pair.tokenizer, texts, targets)
    batch = collate(items, pad_id(pair.tokenizer))
    batched = torch.cat(batch_example_gradients(model, batch, items, loss, names, candidate_ids), 1)
    trainable = copy.deepcopy(model).requires_grad_(True)
    for row, item in enumerate(items):
        one = collate([item], pad_id(pair.tokenizer))
        value = text_loss(trainable, one, [item], loss, candidate_ids).sum()
        expected = torch.cat([g.flatten() for g in torch.autograd.grad(value, list(trainable.parameters()))])
        torch.testing.assert_close(batched[row], expected)


def test_parameter_without_a_rule_is_named(setup):
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))
    with pytest.raises(TypeError, match="'1.weight' belongs to a LayerNorm"):
        owners(model, ["1.weight"])


def test_permuting_documents_permutes_columns(setup):
    corpus, queries, pair = setup
    shuffled, perm = shuffled_corpus(corpus, seed=2)
    _, base = scores_of(setup, projection_dim=64, batch_size=4)
    method = build_method("grad_sim", projection_dim=64, batch_size=4)
    method.prepare(make_ctx(shuffled, make_queries(shuffled, inputs=[1, 2]), pair=pair))
    torch.testing.assert_close(method.score(torch.arange(len(queries))), base[:, perm])


def test_projection_keeps_ranking_not_summed_into_one_block(setup):
    """The count sketch of the whole concatenated gradient into one space (the seed plan's grad_sim, at
    chance on the embedded default) collides coordinates of every parameter; one block per parameter, at a
    dimension no smaller than any parameter, keeps each gradient exact, so the scores are the exact cosine."""
    corpus, queries, pair = setup
    docs, qs = reference_gradients(pair, corpus, queries)
    largest = max(p.numel() for p in pair.new.parameters())
    assert largest < docs.shape[1] // 2
    _, scores = scores_of(setup, projection_dim=largest, projection="sparse")
    torch.testing.assert_close(scores, cosine(qs, docs))


def test_kronecker_blocks_are_concatenated_not_summed(setup, monkeypatch):
    """With factors whose rows are orthonormal (times k, undone by the 1/k scale) each attention weight's
    k x k block is an isometric image of its gradient, so concatenated blocks give the exact cosine of the
    attention weights; summing the blocks into one k x k space would add cross terms between modules."""

    def orthonormal(self, name, device, dtype):
        weight = getattr(*self.holders[name][0])
        generator = torch.Generator().manual_seed(len(name))
        a, b = (
            torch.linalg.qr(torch.randn(self.k, self.k, generator=generator, dtype=dtype))[0] for _ in "ab"
        )
        return a[: weight.shape[0]] * math.sqrt(self.k), b[: weight.shape[1]] * math.sqrt(self.k)

    monkeypatch.setattr(KroneckerProjection, "factors", orthonormal)
    corpus, queries, pair = setup
    docs, qs = reference_gradients(pair, corpus, queries, "self_attn")
    _, scores = scores_of(setup, projection="kronecker", projection_dim=32 * 32, param_filter="self_attn")
    torch.testing.assert_close(scores, cosine(qs, docs))


def test_parameter_groups_select_exactly_their_parameters(setup):
    corpus, queries, pair = setup
    groups = {n: param_group(n) for n, _ in pair.new.named_parameters()}
    assert set(groups.values()) == {"embed", "attn", "mlp", "norm", "head"}
    docs, qs = reference_gradients(pair, corpus, queries, "lm_head")
    _, head = scores_of(setup, projection_dim=0, params=["head"])
    torch.testing.assert_close(head, cosine(qs, docs))
    _, grouped = scores_of(setup, projection_dim=64, params=["attn", "mlp"])
    _, filtered = scores_of(setup, projection_dim=64, param_filter=r"self_attn\.|mlp\.")
    torch.testing.assert_close(grouped, filtered)
    with pytest.raises(ValueError, match="option params='attention'"):
        build_method("grad_sim", params=["attention"])


@pytest.mark.parametrize(
    ("name", "group"),
    [
        ("model.embed_tokens.weight", "embed"),
        ("model.layers.3.self_attn.q_proj.weight", "attn"),
        ("model.layers.3.self_attn.q_norm.weight", "norm"),  # OLMo2
        ("model.layers.3.post_feedforward_layernorm.weight", "norm"),
        ("model.layers.3.mlp.down_proj.weight", "mlp"),
        ("model.norm.weight", "norm"),
        ("lm_head.weight", "head"),
        ("transformer.wte.weight", "embed"),  # GPT-2
        ("transformer.h.0.ln_1.weight", "norm"),
        ("transformer.h.0.attn.c_attn.weight", "attn"),
        ("transformer.h.0.mlp.c_fc.bias", "mlp"),
        ("gpt_neox.layers.0.attention.query_key_value.weight", "attn"),
        ("embed_out.weight", "head"),
        ("score.weight", "other"),
    ],
)
def test_parameter_groups_of_hf_names(name, group):
    assert param_group(name) == group


def test_other_groups_reuse_the_memoised_blocks(setup, monkeypatch):
    """A second instance on the same context with other groups computes no gradient: it selects blocks."""
    import baselines.grad_sim as grad_sim

    corpus, queries, pair = setup
    ctx = make_ctx(corpus, queries, pair=pair)
    ids = torch.arange(len(queries))
    everything = build_method("grad_sim", projection_dim=64)
    everything.prepare(ctx)
    everything.score(ids)
    calls = []
    counted = grad_sim.batch_example_gradients
    monkeypatch.setattr(
        grad_sim, "batch_example_gradients", lambda *a, **k: calls.append(1) or counted(*a, **k)
    )
    subset = build_method("grad_sim", projection_dim=64, params=["embed", "head"], batch_size=2)
    subset.prepare(ctx)
    reused = subset.score(ids)
    assert not calls
    _, fresh = scores_of(setup, projection_dim=64, params=["embed", "head"])
    torch.testing.assert_close(reused, fresh)
    other = build_method("grad_sim", projection_dim=32, params=["head"])
    other.prepare(ctx)  # another dimension: other blocks, computed
    assert calls


def test_seed_preset_is_the_whole_gradient_sketch(setup):
    corpus, queries, pair = setup
    docs, qs = reference_gradients(pair, corpus, queries)
    project = RandomProjection(docs.shape[1], 256, "sparse", seed=0)
    method, scores = scores_of(setup, preset="seed")
    assert method.hparams()["blocks"] == "whole"
    torch.testing.assert_close(scores, cosine(project([qs]), project([docs])))
    with pytest.raises(ValueError, match="preset='seed' fixes projection_dim=256"):
        build_method("grad_sim", preset="seed", projection_dim=64)


def test_allocate_dims_splits_the_total_by_weight_within_sizes():
    numels = {"a": 1000, "b": 1000, "c": 10, "d": 1000}
    weights = {"a": 3.0, "b": 1.0, "c": 100.0, "d": 0.0}
    dims = allocate_dims(numels, weights, 410)
    assert dims == allocate_dims(dict(numels), dict(weights), 410)  # deterministic
    assert sum(dims.values()) == 410
    assert dims["c"] == 10  # its share exceeds its size: kept whole, the rest re-split
    assert dims["d"] == 1  # at least one number
    floored = allocate_dims(numels, weights, 410, least=50)
    assert floored["d"] == 50 and floored["c"] == 10 and sum(floored.values()) == 410
    assert sum(allocate_dims(numels, weights, 40, least=50).values()) == 40  # not all can have 50
    assert abs(dims["a"] - 3 * dims["b"]) <= 3
    assert allocate_dims(numels, weights, sum(numels.values())) == numels  # full total: every tensor whole


def test_energy_allocation_at_full_dimension_equals_exact_cosine(setup):
    corpus, queries, pair = setup
    docs, qs = reference_gradients(pair, corpus, queries)
    biggest = max(p.numel() for p in pair.new.parameters())
    method, scores = scores_of(setup, projection_dim=biggest, allocation="energy")
    assert all(method.dims[n] == p.numel() for n, p in pair.new.named_parameters())
    torch.testing.assert_close(scores, cosine(qs, docs))


def test_energy_allocation_keeps_the_total_and_follows_the_gradient_norms(setup):
    corpus, queries, pair = setup
    sizes = {n: p.numel() for n, p in pair.new.named_parameters()}
    method, scores = scores_of(setup, projection_dim=64)
    assert method.hparams()["allocation"] == "energy"
    assert sum(method.dims.values()) == sum(min(64, s) for s in sizes.values())
    assert method.dims != {n: min(64, s) for n, s in sizes.items()}
    again, same = scores_of(setup, projection_dim=64, batch_size=2)
    assert again.dims == method.dims
    torch.testing.assert_close(same, scores)
    docs, qs = reference_gradients(pair, corpus, queries)
    share = {n: 0.0 for n in sizes}
    offset = 0
    for n, s in sizes.items():
        share[n] = (docs[:, offset : offset + s].pow(2).sum(1) / docs.pow(2).sum(1)).mean().item() * (
            qs[:, offset : offset + s].pow(2).sum(1) / qs.pow(2).sum(1)
        ).mean().item()
        offset += s
    projected = [n for n in sizes if method.dims[n] < sizes[n]]
    ranked = sorted(projected, key=share.get)
    assert method.dims[ranked[0]] <= method.dims[ranked[-1]]
