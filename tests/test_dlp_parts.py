"""DLP plain modules: deep-linear generator, conditioning through inputs_embeds, heads and their losses."""

from __future__ import annotations

import pytest
import torch
from dlp_fixtures import one_thread
from lm_fixtures import build_tokenizer, make_micro_model

from probes.models.conditioning import ProbeReader, condition
from probes.models.generator import DeepLinear, ProbeGenerator
from probes.models.heads import MultiHotHead, PairwiseHead

TEXTS = ["<GN>(3) returns the value ", "<FN>(12) returns the value ", "def <GN>(x): return 5 , always"]


@pytest.fixture(scope="module")
def lm_and_tokenizer():
    tokenizer = build_tokenizer()
    with one_thread():
        yield make_micro_model(len(tokenizer)).double(), tokenizer


@pytest.mark.parametrize(("depth", "bias"), [(1, True), (3, True), (4, False)])
def test_generator_equals_product_of_its_factors(depth, bias):
    torch.manual_seed(0)
    net = DeepLinear(5, 7, depth=depth, width=6, bias=bias).double()
    x = torch.randn(4, 5, dtype=torch.float64)
    weight, shift = net.collapsed()
    reference = x
    for layer in net.layers:  # independent: the factors applied one after another as plain matrices
        reference = reference @ layer.weight.T + (layer.bias if bias else 0)
    torch.testing.assert_close(net(x), x @ weight + shift)
    torch.testing.assert_close(net(x), reference)


def test_activation_control_is_not_linear_and_has_no_collapsed_map():
    torch.manual_seed(0)
    net = DeepLinear(3, 3, depth=2, width=8, activation="relu").double()
    x = torch.randn(5, 3, dtype=torch.float64)
    assert not torch.allclose(net(2 * x) - net(x), net(x) - net(0 * x))
    with pytest.raises(ValueError, match="not one linear map"):
        net.collapsed()


def test_probe_tokens_have_the_norm_of_real_token_embeddings():
    torch.manual_seed(0)
    gen = ProbeGenerator(embedding_dim=8, num_probes=3, probe_tokens=2, depth=2, width=16).double()
    table = torch.randn(50, 8, dtype=torch.float64)
    gen.set_token_norm(table)
    probes = gen()
    assert probes.shape == (3, 2, 8)
    median = table.norm(dim=-1).median()
    torch.testing.assert_close(probes.norm(dim=-1), median.expand(3, 2))


@pytest.mark.parametrize("position", ["prefix", "suffix"])
def test_condition_places_each_probe_around_the_real_tokens(position):
    b, s, d, k, m = 3, 5, 2, 2, 3
    tokens = torch.arange(b * s * d, dtype=torch.float64).view(b, s, d) + 1
    lengths, keep = torch.tensor([5, 2, 4]), torch.tensor([1, 1, 1])
    probes = -torch.arange(1, k * m * d + 1, dtype=torch.float64).view(k, m, d)
    cond = condition(tokens, lengths, keep, probes, position)
    for i in range(k):
        for j in range(b):
            real = tokens[j, : lengths[j]]
            pieces = [real[:1], probes[i], real[1:]] if position == "prefix" else [real, probes[i]]
            want = torch.cat(pieces)
            row = i * b + j
            n_real = int(cond.attention_mask[row].sum())
            assert n_real == len(want) and cond.last[row] == len(want) - 1
            torch.testing.assert_close(cond.embeds[row, :n_real], want)
            assert cond.position_ids[row, :n_real].tolist() == list(range(n_real))


@pytest.mark.parametrize(("position", "response"), [("prefix", "hidden"), ("suffix", "logprobs")])
def test_responses_match_the_lm_on_each_unpadded_sequence(lm_and_tokenizer, position, response):
    lm, tokenizer = lm_and_tokenizer
    candidates = torch.tensor([tokenizer.convert_tokens_to_ids(str(i)) for i in (5, 7, 9)])
    reader = ProbeReader(lm, tokenizer, position, response=response, candidate_ids=candidates)
    torch.manual_seed(0)
    probes = torch.randn(2, 3, 32, dtype=torch.float64)
    batched = reader(TEXTS, probes)
    assert batched.shape == (3, 2, reader.response_dim)
    embed = lm.get_input_embeddings()
    for j, text in enumerate(TEXTS):
        ids = torch.tensor(tokenizer(text)["input_ids"])
        assert ids[0] == tokenizer.bos_token_id
        for i in range(2):  # reference: the sequence built by hand, alone, without masks or position ids
            x = embed(ids)
            seq = torch.cat([x[:1], probes[i], x[1:]] if position == "prefix" else [x, probes[i]])
            out = lm(inputs_embeds=seq[None], output_hidden_states=True)
            last = out.hidden_states[-1][0, -1]
            want = last if response == "hidden" else out.logits[0, -1].log_softmax(-1)[candidates]
            torch.testing.assert_close(batched[j, i].double(), want, rtol=1e-5, atol=1e-5)


def test_reader_gradients_reach_the_probes_and_never_the_lm(lm_and_tokenizer):
    lm, tokenizer = lm_and_tokenizer
    lm.requires_grad_(False)
    probes = torch.randn(2, 2, 32, dtype=torch.float64, requires_grad=True)
    ProbeReader(lm, tokenizer, layer=1)(TEXTS[:2], probes).sum().backward()
    assert probes.grad is not None and probes.grad.abs().sum() > 0
    assert all(p.grad is None for p in lm.parameters())


def test_multi_hot_soft_cross_entropy_and_bce():
    torch.manual_seed(0)
    scores = torch.randn(3, 6, dtype=torch.float64)
    relevant = torch.rand(3, 6) < 0.5
    relevant[:, 0] = True
    head = MultiHotHead(4, 2, 6).double()
    target = relevant.double() / relevant.sum(-1, keepdim=True)
    want = -(target * torch.log(torch.softmax(scores, -1))).sum(-1).mean()
    torch.testing.assert_close(head.loss(scores, relevant), want)
    bce = MultiHotHead(4, 2, 6, loss="bce").double().loss(scores, relevant)
    torch.testing.assert_close(bce, torch.nn.BCEWithLogitsLoss()(scores, relevant.double()))
    assert head(torch.randn(5, 2, 4, dtype=torch.float64)).shape == (5, 6)


def test_pairwise_infonce_and_document_sampling():
    torch.manual_seed(0)
    head = PairwiseHead(4, 2, 50, negatives=5, positives_per_query=2).double()
    relevant = torch.zeros(3, 50, dtype=torch.bool)
    relevant[0, :10], relevant[1, 10:20], relevant[2, 40:] = True, True, True
    ids = head.sample_documents(relevant)
    assert (relevant[:, ids].sum(-1) >= 2).all() and ids.unique().numel() == ids.numel()
    scores = torch.randn(3, 7, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0, 0], [0] * 7], dtype=torch.bool)
    p = torch.softmax(scores, -1)
    want = -(torch.log(p[0, :2].sum()) + torch.log(p[1, 2])) / 2  # the query with no positive is skipped
    torch.testing.assert_close(head.loss(scores, mask), want)
    queries, docs = torch.randn(3, 2, 4, dtype=torch.float64), torch.randn(9, 2, 4, dtype=torch.float64)
    assert head(queries, docs).shape == (3, 9)
