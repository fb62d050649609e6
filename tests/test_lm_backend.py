"""The fast feature backend equals the plain reference one (float64 micro Llama and OLMo2), and leaves no
process-wide setting changed."""

from __future__ import annotations

import copy

import pytest
import torch
from lm_fixtures import (
    CANDIDATES,
    QUERIES,
    TEXTS,
    build_tokenizer,
    exact_float64,
    make_micro_model,
    micro_olmo2,
    perturb,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from baselines.ops.fast.patch import PREFIX_ATTENTION, FastPatcher
from baselines.ops.patch import Patcher, make_patcher
from probes.features.backend import PassOptions
from probes.features.extract import FeatureSpec, compute_features, query_inputs
from probes.features.fast.compiled import RECOMPILE_LIMIT, compiled_blocks
from probes.lm.scoring import answer_token_ids


@pytest.fixture(scope="module", params=["llama", "olmo2"])
def lm(request):
    tokenizer = build_tokenizer()
    if request.param == "llama":
        model = make_micro_model(len(tokenizer), initializer_range=0.2)
    else:
        model = micro_olmo2(len(tokenizer))
    model = exact_float64(model)
    old = perturb(copy.deepcopy(model))
    return model, old, tokenizer, answer_token_ids(tokenizer, CANDIDATES)


def features(model, tokenizer, spec, backend, side, candidates, old=None, docs=False):
    texts, targets = (list(TEXTS), None) if docs else query_inputs(QUERIES)
    return compute_features(
        model,
        tokenizer,
        texts,
        spec,
        targets=targets,
        candidate_ids=candidates,
        old=old,
        batch_size=3,
        padding_side=side,
        backend=backend,
        progress=False,
    )


SPECS = [
    (FeatureSpec("hidden", "last"), False),
    (FeatureSpec("hidden", "mean"), True),
    (FeatureSpec("grad", "mean", "lm"), True),
    (FeatureSpec("grad", "mean", "ce"), False),
    (FeatureSpec("grad", "last", "margin"), False),
    (FeatureSpec("attr", "mean", "lm"), True),
    (FeatureSpec("attr", "last", "ce"), False),
]


@pytest.mark.parametrize("frozen", [False, True], ids=["trainable", "frozen"])
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize(("spec", "docs"), SPECS, ids=[f"{s.what}-{s.pooling}" for s, _ in SPECS])
def test_fast_backend_equals_reference(lm, spec, docs, side, frozen):
    """A frozen head takes the fused 'lm' loss (its gradient computed in the forward), a trainable one the
    checkpointed chunks; right padding drops the attention mask. Each must give the plain computation."""
    model, old, tokenizer, candidates = lm
    model.requires_grad_(not frozen)
    old = old if spec.kind == "attr" else None
    try:
        plain = features(model, tokenizer, spec, "reference", side, candidates, old, docs)
        fast = features(model, tokenizer, spec, "fast", side, candidates, old, docs)
    finally:
        model.requires_grad_(True)
    assert plain.abs().amax() > 0
    torch.testing.assert_close(fast, plain, rtol=0, atol=1e-10)


@pytest.mark.parametrize("layer", [0, 1, "last"])
def test_fast_patching_equals_reference(lm, layer):
    """The patched forward over cached prefixes (candidates of several prompts mixed, one prompt shared)
    gives the reference's full forward with the hidden state replaced."""
    model, old, tokenizer, candidates = lm
    prompts = [q.prompt for q in QUERIES]
    fast = make_patcher(model, tokenizer, candidates, layer, PassOptions("fast"))
    plain = make_patcher(model, tokenizer, candidates, layer, PassOptions("reference"))
    assert type(fast) is FastPatcher and type(plain) is Patcher
    generator = torch.Generator().manual_seed(0)
    for got, want in zip(fast.prefixes(prompts, 2), plain.prefixes(prompts, 2), strict=True):
        torch.testing.assert_close(got.logits, want.logits, rtol=0, atol=1e-10)
        rows = torch.arange(len(got.rows)).repeat(2)
        states = torch.randn(len(rows), model.config.hidden_size, generator=generator, dtype=torch.float64)
        expected = plain.logits(want, rows, states)
        assert expected.abs().amax() > 0
        torch.testing.assert_close(fast.logits(got, rows, states), expected, rtol=0, atol=1e-10)
        torch.testing.assert_close(
            fast.logits(got, 0, states), plain.logits(want, 0, states), rtol=0, atol=1e-10
        )


def test_backend_options_are_checked():
    with pytest.raises(ValueError, match="backend must be one of"):
        PassOptions(backend="quick")
    with pytest.raises(ValueError, match="reference backend runs eager"):
        PassOptions(backend="reference", compile=True)
    with pytest.raises(ValueError, match="padding_side"):
        PassOptions(padding_side="middle")


def test_compiled_blocks_restore_the_recompile_limit():
    """The blocks raised dynamo's process-wide recompile limit and never put it back."""
    config = torch._dynamo.config
    before = config.recompile_limit
    model = make_micro_model(40)
    with config.patch(recompile_limit=RECOMPILE_LIMIT - 1):
        with compiled_blocks(model):
            assert config.recompile_limit == RECOMPILE_LIMIT
        assert config.recompile_limit == RECOMPILE_LIMIT - 1
    assert config.recompile_limit == before


def test_prefix_attention_is_known_only_while_patching():
    """The shared-prefix attention function was registered with transformers at import, for the process."""
    tokenizer = build_tokenizer()
    model = exact_float64(make_micro_model(len(tokenizer)))
    assert PREFIX_ATTENTION not in ALL_ATTENTION_FUNCTIONS.valid_keys()
    candidates = answer_token_ids(tokenizer, CANDIDATES)
    patcher = FastPatcher(model, tokenizer, candidates, layer=1)
    prompts = [q.prompt for q in QUERIES[:2]]
    prefix = patcher.prefixes(prompts)[0]
    patcher.logits(prefix, 0, prefix.old)
    assert PREFIX_ATTENTION not in ALL_ATTENTION_FUNCTIONS.valid_keys()
    assert model.config._attn_implementation != PREFIX_ATTENTION


def test_compare_takes_the_feature_backend():
    """The options are checked; that they reach every pass: tests/test_compare.py."""
    from probes.compare.config import PairConfig
    from probes.errors import UserError

    assert PairConfig().feature_backend == "fast"
    with pytest.raises(UserError, match="feature_backend='quick'"):
        PairConfig(feature_backend="quick")
    with pytest.raises(UserError, match="needs model.feature_backend: fast"):
        PairConfig(feature_backend="reference", feature_compile=True)
