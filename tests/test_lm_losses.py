"""The chunked "lm" loss against full logits + F.cross_entropy: losses, activation and parameter gradients."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from lm_fixtures import TEXTS, build_tokenizer, exact_float64, make_micro_model

from baselines.ops.example_grads import batch_example_gradients
from probes.features import losses
from probes.features.fast import losses as fast_losses
from probes.lm.scoring import collate, pad_id, tokenize


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def micro(tokenizer, tied: bool = False):
    model = make_micro_model(len(tokenizer), seed=2, initializer_range=0.2, tie_word_embeddings=tied)
    return exact_float64(model)


def reference(model, ids: list[int]):
    """One text, unpadded: its mean next-token cross-entropy from full logits, dL/dh for every hidden state,
    and dL/dθ for every parameter (plain autograd on a trainable copy)."""
    trainable = copy.deepcopy(model).requires_grad_(True)
    out = trainable(input_ids=torch.tensor([ids]), output_hidden_states=True)
    loss = F.cross_entropy(out.logits[0, :-1], torch.tensor(ids[1:]))
    params = list(trainable.parameters())
    grads = torch.autograd.grad(loss, [*out.hidden_states, *params])
    states, weights = grads[: len(out.hidden_states)], grads[len(out.hidden_states) :]
    return loss, torch.stack([g[0] for g in states]), torch.cat([g.flatten() for g in weights])


@pytest.fixture
def two_positions_a_chunk(monkeypatch, tokenizer):
    """A budget of two positions per chunk for a batch of all TEXTS, so every text spans several chunks."""
    monkeypatch.setattr(fast_losses, "LOGIT_BUDGET", 2 * len(TEXTS) * len(tokenizer))
    return 2


@pytest.mark.parametrize("observed", [False, True])
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_chunked_loss_and_activation_gradients_equal_full_logits(
    tokenizer, two_positions_a_chunk, padding_side, observed, monkeypatch
):
    """Unobserved, the frozen head's chunks compute their gradient with their loss (HeadNLL); with a hook on
    the head (which sees every chunk's width), they run checkpointed instead. Both are exact."""
    model = micro(tokenizer).requires_grad_(False)  # frozen, as loaded: the graph starts at the embeddings
    items = tokenize(tokenizer, list(TEXTS))
    assert len({len(item.ids) for item in items}) > 2  # padding matters
    batch = collate(items, pad_id(tokenizer), padding_side)
    embeds = model.get_input_embeddings()(batch["input_ids"]).requires_grad_(True)
    widths, saved, fused = [], [], []
    apply = fast_losses.HeadNLL.apply
    monkeypatch.setattr(
        fast_losses.HeadNLL, "apply", lambda *args: fused.append(args[2].shape[1]) or apply(*args)
    )
    handle = (
        model.lm_head.register_forward_hook(lambda _m, args, _out: widths.append(args[0].shape[1]))
        if observed
        else None
    )
    try:
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
            per_text, out = fast_losses.text_losses(
                model,
                lambda **kw: model(
                    inputs_embeds=embeds,
                    attention_mask=batch["attention_mask"],
                    position_ids=batch["position_ids"],
                    use_cache=False,
                    **kw,
                ),
                batch,
                items,
                "lm",
            )
    finally:
        if handle is not None:
            handle.remove()
    # HF's own call at the last position, then chunks of at most two positions covering every predicting one
    chunks = widths[1:] if observed else fused
    assert (widths[:1] == [1]) == observed and not (observed and fused)
    assert max(chunks) == two_positions_a_chunk and sum(chunks) == batch["input_ids"].shape[1] - 1
    # no logits [b, p, v] kept for the backward span more than HF's one position: the chunks' are recomputed
    logits = [shape for shape in saved if len(shape) == 3 and len(tokenizer) in shape]
    assert saved and all(shape.numel() <= len(items) * len(tokenizer) for shape in logits)
    weights = torch.arange(1.0, len(items) + 1, dtype=per_text.dtype)  # each text's own upstream gradient
    grads = torch.autograd.grad((per_text * weights).sum(), out.hidden_states)
    for row, item in enumerate(items):
        loss, states, _ = reference(model, item.ids)
        torch.testing.assert_close(per_text[row], loss, rtol=0, atol=1e-12)
        start, n = int(batch["offset"][row]), len(item.ids)
        got = torch.stack([g[row] for g in grads])
        torch.testing.assert_close(got[:, start : start + n], weights[row] * states, rtol=0, atol=1e-11)
        assert not got[:, :start].any() and not got[:, start + n :].any()  # pads get no gradient


@pytest.mark.parametrize("tied", [False, True])
def test_chunked_parameter_gradients_equal_full_logits(tokenizer, two_positions_a_chunk, tied):
    model = micro(tokenizer, tied)
    items = tokenize(tokenizer, list(TEXTS))
    names = [name for name, _ in model.named_parameters()]
    assert "lm_head.weight" in names or tied
    batch = collate(items, pad_id(tokenizer))
    got = torch.cat(batch_example_gradients(model, batch, items, "lm", names), 1)
    # example_grads' RMSNorm rule normalises in fp32 as HF's RMSNorm does, while exact_float64 makes the
    # model's own norms float64: those coordinates agree to ~1e-8 only; every other one exactly
    sizes = [p.numel() for p in model.parameters()]
    norm = torch.cat([torch.full((n,), "norm" in name) for name, n in zip(names, sizes, strict=True)])
    for row, item in enumerate(items):
        expected = reference(model, item.ids)[2]
        torch.testing.assert_close(got[row, ~norm], expected[~norm], rtol=0, atol=1e-12)
        torch.testing.assert_close(got[row, norm], expected[norm], rtol=1e-6, atol=1e-7)


def test_one_token_batch_has_zero_loss_and_gradient():
    tokenizer = build_tokenizer(bos=False)
    model = micro(tokenizer)
    items = tokenize(tokenizer, ["5", "<GN>"])
    batch = collate(items, pad_id(tokenizer))
    embeds = model.get_input_embeddings()(batch["input_ids"]).requires_grad_(True)
    per_text, _ = losses.text_losses(
        model, lambda **kw: model(inputs_embeds=embeds, **kw), batch, items, "lm"
    )
    (grad,) = torch.autograd.grad(per_text.sum(), embeds)
    assert per_text.tolist() == [0.0, 0.0] and not grad.any()


def test_transformed_logits_are_refused(tokenizer):
    model = micro(tokenizer)
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(TypeError, match="final_logit_softcapping=30.0"):
        losses.lm_head(model)


def test_margin_loss_is_the_negated_answer_margin():
    """The margin was written twice with opposite signs; the loss is now minus the one margin."""
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.5, 9.0], [0.0, 1.0, 4.0, 2.0, 9.0]], dtype=torch.float64)
    candidates = torch.tensor([1, 2, 3])
    answers = torch.tensor([1, 3])
    margin = losses.answer_margin(logits[:, candidates], torch.tensor([0, 2]))
    torch.testing.assert_close(margin, torch.tensor([0.5, -2.0], dtype=torch.float64))
    torch.testing.assert_close(losses.margin_loss(logits, answers, candidates), -margin)
