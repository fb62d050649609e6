"""FeatureCache (keys, staleness, atomic writes) and FeatureStore (each feature computed at most once)."""

from __future__ import annotations

import pytest
import torch
from lm_fixtures import CANDIDATES, QUERIES, TEXTS, make_micro_pair, perturb
from safetensors.torch import save_file

import probes.features.cache as cache_module
import probes.features.store as store_module
from probes.data.queries import Query
from probes.features.cache import FeatureCache, model_fingerprint
from probes.features.extract import FeatureSpec, query_inputs
from probes.features.store import FeatureStore
from probes.lm.load import load_pair
from probes.lm.scoring import answer_token_ids


@pytest.fixture
def pair(tmp_path, monkeypatch):
    monkeypatch.setenv("PROBES_CACHE", str(tmp_path / "cache"))
    return load_pair(*make_micro_pair(tmp_path / "models"))


class Counter:
    """Wraps a function and counts its calls."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


def test_cache_hit_and_stale_keys(pair, tmp_path):
    cache = FeatureCache(tmp_path / "features")
    spec = FeatureSpec("hidden", "mean")
    fn = Counter(lambda: torch.arange(12.0).reshape(2, 3, 2))
    first = cache.get_or_compute(pair.new, TEXTS[:2], spec, fn)
    again = cache.get_or_compute(pair.new, TEXTS[:2], spec, fn)
    assert fn.calls == 1 and torch.equal(first, again)
    cache.get_or_compute(pair.new, TEXTS[1:3], spec, fn)  # other texts
    cache.get_or_compute(pair.new, TEXTS[:2], FeatureSpec("hidden", "last"), fn)  # other spec
    cache.get_or_compute(pair.new, TEXTS[:2], spec, fn, extra={"targets": [[0, 1]]})  # other targets
    assert fn.calls == 4
    before = model_fingerprint(pair.new)
    perturb(pair.new, scale=1e-3)  # "fine-tuning" in place
    assert model_fingerprint(pair.new) != before
    cache.get_or_compute(pair.new, TEXTS[:2], spec, fn)
    assert fn.calls == 5
    assert model_fingerprint(pair.old) != model_fingerprint(pair.new)


def test_cache_default_root_is_under_probes_cache(pair, tmp_path):
    assert FeatureCache().root == tmp_path / "cache" / "features"


def test_no_partial_file_after_a_crash_mid_write(pair, tmp_path, monkeypatch):
    cache = FeatureCache(tmp_path / "features")
    spec = FeatureSpec("hidden")

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"half a file")
        raise RuntimeError("disk full")

    monkeypatch.setattr(cache_module, "save_file", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        cache.get_or_compute(pair.new, TEXTS, spec, lambda: torch.zeros(len(TEXTS), 3, 2))
    assert list(cache.root.iterdir()) == []
    monkeypatch.setattr(cache_module, "save_file", save_file)
    fn = Counter(lambda: torch.ones(len(TEXTS), 3, 2))
    assert torch.equal(cache.get_or_compute(pair.new, TEXTS, spec, fn), torch.ones(len(TEXTS), 3, 2))
    assert fn.calls == 1 and len(list(cache.root.iterdir())) == 1


def test_unreadable_file_is_recomputed(pair, tmp_path):
    cache = FeatureCache(tmp_path / "features")
    spec = FeatureSpec("hidden")
    path = cache.path(cache.key(pair.new, TEXTS, spec))
    path.parent.mkdir(parents=True)
    path.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="unreadable"):
        got = cache.get_or_compute(pair.new, TEXTS, spec, lambda: torch.ones(len(TEXTS), 1, 1))
    assert torch.equal(got, torch.ones(len(TEXTS), 1, 1))


@pytest.mark.parametrize("on_disk", [False, True])
def test_store_computes_each_feature_once(pair, tmp_path, monkeypatch, on_disk):
    counted = Counter(store_module.compute_features)
    monkeypatch.setattr(store_module, "compute_features", counted)
    texts, targets = query_inputs(QUERIES)
    candidates = answer_token_ids(pair.tokenizer, CANDIDATES)
    cache = FeatureCache(tmp_path / "features") if on_disk else None

    def make_store():
        return FeatureStore(pair, list(TEXTS), texts, targets, candidates, cache=cache, batch_size=4)

    store = make_store()
    asked = [
        ("hidden", ("old", "docs")),
        ("hidden", ("new", "docs")),
        ("hidden", ("new", "queries", "mean")),
        ("grads", ("docs",)),
        ("grads", ("queries",)),
        ("grads", ("queries", "last", "margin")),
        ("attributions", ("docs", "mean")),
    ]
    results = [getattr(store, method)(*args) for method, args in asked]
    assert counted.calls == 7
    assert results[0].shape == (len(TEXTS), 3, 32) and results[4].shape == (len(texts), 3, 32)
    assert not torch.equal(results[0], results[1])  # f_old vs f_new
    again = [getattr(store, method)(*args) for method, args in asked]
    assert store.grads("docs", "last", "lm") is results[3] and store.grads("queries", loss="ce") is results[4]
    assert counted.calls == 7 and all(a is b for a, b in zip(again, results, strict=True))
    fresh = [getattr(make_store(), method)(*args) for method, args in asked]
    assert counted.calls == (7 if on_disk else 14)
    for a, b in zip(fresh, results, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="side must be one of"):
        store.hidden("new", "documents")


def test_store_caps_tokens_per_pass_and_gradients_at_half(pair, monkeypatch):
    seen = []
    compute = store_module.compute_features
    monkeypatch.setattr(
        store_module,
        "compute_features",
        lambda *args, **kwargs: seen.append((args[3].kind, kwargs["max_tokens"])) or compute(*args, **kwargs),
    )
    texts, targets = query_inputs(QUERIES)
    candidates = answer_token_ids(pair.tokenizer, CANDIDATES)
    store = FeatureStore(pair, list(TEXTS), texts, targets, candidates, max_tokens=41)
    store.hidden("new", "docs"), store.grads("docs")
    assert seen == [("hidden", 41), ("grad", 20)]


def test_cache_entry_of_another_feature_version_is_never_read(pair, tmp_path):
    """An entry written by feature code of version 1 is not read by version 2 (recomputed), and back."""
    spec = FeatureSpec("hidden", "mean")
    fn = Counter(lambda: torch.zeros(2, 1, 1))
    FeatureCache(tmp_path / "features", version=1).get_or_compute(pair.new, TEXTS[:2], spec, fn)
    FeatureCache(tmp_path / "features", version=2).get_or_compute(pair.new, TEXTS[:2], spec, fn)
    assert fn.calls == 2
    FeatureCache(tmp_path / "features", version=1).get_or_compute(pair.new, TEXTS[:2], spec, fn)
    assert fn.calls == 2 and cache_module.FEATURE_VERSION >= 2  # bumped for per-position attributions
    assert FeatureCache(tmp_path).version == cache_module.FEATURE_VERSION


def test_attributions_at_one_position_are_the_product_and_keyed_by_both_checkpoints(pair, tmp_path):
    texts, targets = query_inputs(QUERIES)
    candidates = answer_token_ids(pair.tokenizer, CANDIDATES)
    cache = FeatureCache(tmp_path / "features")

    def make_store():
        return FeatureStore(pair, list(TEXTS), texts, targets, candidates, cache=cache, batch_size=3)

    store = make_store()
    attr = store.attributions("queries", "last")
    delta = store.hidden("new", "queries", "last") - store.hidden("old", "queries", "last")
    torch.testing.assert_close(attr, delta * store.grads("queries", "last"))
    assert attr.abs().sum() > 0
    perturb(pair.old, scale=1e-2)  # another f_old, the same f_new: the entry must not be read
    assert not torch.allclose(make_store().attributions("queries", "last"), attr)


@pytest.mark.parametrize("seed", [0, 1])
def test_answers_correct_from_the_stored_states_equals_a_separate_pass(pair, seed):
    """f_new's correctness read off the features (LM head on the stored final state) equals the separate
    candidate-logit pass compare.py used to run, for every query; the answers are checked, not only shapes."""
    from probes.pairs.evaluate import query_correctness

    perturb(pair.new, scale=0.5, seed=seed)  # a random micro model answers some queries right, some wrong
    queries = [
        Query(i, "<FN>", 0, q.prompt, str(c), c, 0)
        for i, (q, c) in enumerate((q, c) for q in QUERIES for c in (5, 7, 9))
    ]
    texts, targets = query_inputs(queries)
    ids = answer_token_ids(pair.tokenizer, CANDIDATES)
    store = FeatureStore(pair, list(TEXTS[:2]), texts, targets, ids, batch_size=3, progress=False)
    answers = torch.tensor([CANDIDATES.index(q.constant) for q in queries])
    got = store.answers_correct(answers)
    expected = query_correctness(pair.new, pair.tokenizer, queries, CANDIDATES)
    assert torch.equal(got, expected) and expected.any() and not expected.all()
