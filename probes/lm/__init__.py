"""The frozen language models: loading a pair, answer scoring, features (names resolve lazily)."""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ModelPair": "load",
    "PairMismatchError": "load",
    "load_model": "load",
    "load_pair": "load",
    "check_pair": "load",
    "answer_token_ids": "scoring",
    "candidate_logits": "scoring",
    "FeatureSpec": "features",
    "hidden_features": "features",
    "gradient_features": "features",
    "query_inputs": "features",
    "FeatureCache": "cache",
    "model_fingerprint": "cache",
    "FeatureStore": "store",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'probes.lm' has no attribute {name!r}")
    return getattr(importlib.import_module(f"probes.lm.{_EXPORTS[name]}"), name)
