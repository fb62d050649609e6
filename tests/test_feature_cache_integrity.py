"""Cached features are verified on read: a corrupt, non-finite or unchecked file is named and recomputed."""

from __future__ import annotations

import math
import struct
import warnings

import pytest
import torch
from baselines_fixtures import doc_queries, make_ctx, micro_corpus
from lm_fixtures import make_micro_pair
from safetensors import safe_open
from safetensors.torch import save_file

from probes.features.cache import FeatureCache
from probes.features.extract import query_inputs
from probes.features.store import FeatureStore
from probes.lm.load import load_pair
from probes.methods import build_method

pytestmark = pytest.mark.usefixtures("one_thread")

METHODS = ("repsim", "delta_h", "act_grad")


@pytest.fixture
def pair(tmp_path):
    return load_pair(*make_micro_pair(tmp_path / "pair"), dtype="float64")


def scores(pair, cache) -> dict[str, torch.Tensor]:
    """Each feature method's scores over a fresh FeatureStore (nothing memoised) on ``cache``."""
    corpus = micro_corpus()
    queries = doc_queries(corpus)
    ctx = make_ctx(corpus, queries, pair=pair)
    texts, targets = query_inputs(queries)
    ctx.features = FeatureStore(
        pair, corpus.texts, texts, targets, ctx.candidate_ids, cache=cache, progress=False
    )
    out = {}
    for name in METHODS:
        method = build_method(name)
        method.prepare(ctx)
        out[name] = method.score(torch.arange(len(queries)))
    return out


def zero_a_third(path) -> None:
    """Zero the middle third of the file's tensor bytes: the size stays, the header still parses."""
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    third = (len(data) - start) // 3
    data[start + third : start + 2 * third] = bytes(third)
    path.write_bytes(bytes(data))


def write_nan(path) -> None:
    """Overwrite the first float64 of the tensor with NaN, in place."""
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    data[start : start + 8] = struct.pack("<d", math.nan)
    path.write_bytes(bytes(data))


def drop_checksum(path) -> None:
    """Rewrite the file as probes wrote it before checksums: the same tensor, no sha256 in the metadata."""
    with safe_open(path, "pt") as handle:
        features, metadata = handle.get_tensor("features"), handle.metadata()
    save_file(
        {"features": features}, str(path), metadata={k: v for k, v in metadata.items() if k != "sha256"}
    )


@pytest.mark.parametrize(
    ("damage", "why"),
    [(zero_a_third, "fails its checksum"), (write_nan, "holds NaN"), (drop_checksum, "has no checksum")],
)
def test_corrupt_feature_cache_file_was_read_as_it_is(pair, tmp_path, damage, why):
    cache = FeatureCache(tmp_path / "features")
    clean = scores(pair, cache)
    files = sorted(cache.root.iterdir())
    assert len(files) >= 4  # hidden old/new, gradients, for docs and queries
    sizes = [f.stat().st_size for f in files]
    for path in files:
        damage(path)
    assert [f.stat().st_size for f in files] == sizes or damage is drop_checksum
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = scores(pair, cache)
    messages = [str(w.message) for w in caught]
    for path in files:
        assert any(str(path) in m and why in m and "recomputing" in m for m in messages), (path, messages)
    for name in METHODS:
        torch.testing.assert_close(again[name], clean[name], rtol=0, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the recomputed files carry a valid checksum
        scores(pair, cache)


def test_non_finite_fresh_features_name_the_model(pair, tmp_path):
    with torch.no_grad():
        pair.new.model.layers[0].mlp.down_proj.weight.fill_(math.inf)
    with pytest.raises(FloatingPointError, match=f"f_new \\({pair.new_path}\\).*NaN or inf"):
        scores(pair, FeatureCache(tmp_path / "features"))
    assert not any((tmp_path / "features").glob("*.safetensors"))  # nothing non-finite was cached
