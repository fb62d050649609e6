"""The feature pass under Lightning DDP on 2 CPU processes (gloo) equals the in-process pass, row for row.

The ranks are forked ("ddp_fork"): plain "ddp" would relaunch pytest itself, and "ddp_spawn" must pickle the
model, which transformers (>= 5) cannot do once it has run (its output-capturing hooks are local functions).
"""

from __future__ import annotations

import pytest
import torch
from lm_fixtures import (
    CANDIDATES,
    QUERIES,
    TEXTS,
    build_tokenizer,
    exact_float64,
    make_micro_model,
    make_micro_pair,
)

import probes.features.store as store_module
from probes.features import distributed
from probes.features.cache import FeatureCache
from probes.features.extract import FeatureSpec, compute_features, query_inputs
from probes.features.store import FeatureStore
from probes.lm.load import load_pair
from probes.lm.ranks import rank_device
from probes.lm.scoring import answer_token_ids


@pytest.fixture(scope="module")
def lm():
    tokenizer = build_tokenizer()
    return exact_float64(make_micro_model(len(tokenizer), initializer_range=0.2)), tokenizer


TEXTS_AND_QUERIES = [*TEXTS, *query_inputs(QUERIES)[0]]  # 10 texts of 5 to 9 tokens


@pytest.mark.parametrize(
    "spec, batch_size, shared_out",
    [
        (FeatureSpec("hidden", "mean"), 2, True),  # 5 batches: rank 0 runs 3, rank 1 runs 2
        (FeatureSpec("grad", "mean", "lm", layers=(0, -1)), 4, True),  # 3 batches
        (FeatureSpec("hidden", "last"), 10, False),  # 1 batch: nothing to share, runs in-process
    ],
)
def test_two_ranks_give_the_single_process_features(lm, monkeypatch, spec, batch_size, shared_out):
    model, tokenizer = lm
    texts = TEXTS_AND_QUERIES
    options = dict(batch_size=batch_size, progress=False)
    alone = compute_features(model, tokenizer, texts, spec, **options)
    calls = []
    real = distributed.distributed_features
    monkeypatch.setattr(distributed, "distributed_features", lambda *a, **k: calls.append(a) or real(*a, **k))
    shared = compute_features(model, tokenizer, texts, spec, devices=2, strategy="ddp_fork", **options)
    assert len(calls) == shared_out
    assert shared.dtype == torch.float64 and shared.shape == alone.shape
    assert alone.abs().amax(dim=(1, 2)).min() > 0  # every row was filled, none left at zero
    torch.testing.assert_close(shared, alone, rtol=1e-12, atol=1e-12)


def test_rank_device_puts_each_rank_on_its_own_gpu(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert rank_device("cuda", 2) == "cuda:1"
    assert rank_device("cpu", 2) == "cpu"
    assert rank_device("cuda:3", 1) == "cuda:3"  # one device: as given
    with pytest.raises(ValueError, match="'cuda:1' with devices=2"):
        rank_device("cuda:1", 2)
    with pytest.raises(ValueError, match="devices=0"):
        rank_device("cuda", 0)


def test_store_shares_its_passes_and_only_rank_zero_caches_them(tmp_path, monkeypatch):
    pair = load_pair(*make_micro_pair(tmp_path / "models"))
    texts, targets = query_inputs(QUERIES)
    candidates = answer_token_ids(pair.tokenizer, CANDIDATES)
    cache = FeatureCache(tmp_path / "features")
    args = (pair, list(TEXTS), texts, targets, candidates)
    shared = FeatureStore(*args, cache=cache, batch_size=2, devices=2, strategy="ddp_fork")
    alone = FeatureStore(*args, batch_size=2)
    # float32: the ranks run with their own intra-op thread counts, so sums may round differently
    got, expected = shared.hidden("new", "docs"), alone.hidden("new", "docs")
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert len(list(cache.root.iterdir())) == 1  # this process is rank 0
    monkeypatch.setattr(store_module, "global_rank", lambda devices: 1)
    shared.hidden("old", "docs")
    assert len(list(cache.root.iterdir())) == 1  # another rank computes the same tensor and does not write
