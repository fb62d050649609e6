"""compare.py for the tests: the entry imported from its path, and the micro config fixture."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml
from lm_fixtures import make_micro_pair, micro_rows

ROOT = Path(__file__).resolve().parents[1]


def load_compare():
    """The comparison's run, probes.compare.run (compare.py is its thin entry)."""
    return importlib.import_module("probes.compare.run")


compare = load_compare()


@pytest.fixture
def config(tmp_path, monkeypatch, write_jsonl):
    """A config over the micro corpus and a float64 micro pair, all under tmp_path; returns a writer."""
    monkeypatch.setenv("PROBES_CACHE", str(tmp_path / "cache"))
    corpus = write_jsonl(micro_rows(), "micro.jsonl")
    old, new = make_micro_pair(tmp_path / "pair")

    def write(**overrides) -> Path:
        cfg = {
            "data": {"corpus_path": str(corpus), "inputs": list(range(1, 11)), "test_fraction": 0.4},
            "model": {"old": str(old), "new": str(new), "dtype": "float64", "score_batch_size": 5},
            "methods": [
                {"label": "random_a", "method": "random", "options": {"seed": 0}},
                {"label": "random_b", "method": "random", "options": {"seed": 1}},
                {"label": "patching", "method": "patching", "options": {"percentile": 25.0, "batch_size": 8}},
            ],
        }
        for key, value in overrides.items():
            cfg[key] = {**cfg[key], **value} if isinstance(value, dict) else value
        path = tmp_path / "micro.yaml"
        path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
        return path

    return write
