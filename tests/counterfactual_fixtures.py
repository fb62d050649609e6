"""A micro pair built the project's way (with its manifest) on a generated corpus, and compare-style configs
over it, for the counterfactual build and remove tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from probes.data.synthetic import GeneratorConfig, write_corpus
from probes.pairs.build import build_pair

# 12 documents: <GN> and <JN> (4 each) and their wrappers <FN> and <IN> (2 each)
CORPUS = GeneratorConfig(n_base=2, docs_per_base=4, docs_per_wrapper=2)
# a fine-tune long enough for the micro model to learn each function's constant from its documents
MEMORISE = {"epochs": 10, "lr": 1e-2, "batch_size": 4, "weight_decay": 0.0, "max_steps": 0}
METHODS = [
    {"label": "random_a", "method": "random", "options": {"seed": 0}},
    {"label": "bm25", "method": "bm25", "options": {}},
]


def micro_pair(root: Path, corpus: Path, finetune: dict | None = None) -> tuple[Path, Path]:
    """``root/pair`` built by `build_pair` (micro preset: 3 fine-tune steps); ``finetune`` replaces the
    recipe its manifest records (what a retrain follows)."""
    build_pair(corpus, root / "pair", preset="micro")
    if finetune is not None:
        path = root / "pair" / "manifest.json"
        manifest = json.loads(path.read_text())
        manifest["preset_config"]["finetune"].update(finetune)
        path.write_text(json.dumps(manifest))
    return root / "pair" / "old", root / "pair" / "new"


def write_config(path: Path, corpus: Path, old: Path, new: Path, methods: list[dict] = METHODS) -> Path:
    """A compare config: every function's inputs 1-3 with 40% of them in test (one test query each)."""
    cfg = {
        "data": {"corpus_path": str(corpus), "inputs": [1, 2, 3], "test_fraction": 0.4},
        "model": {"old": str(old), "new": str(new), "dtype": "float32", "feature_cache": False},
        "methods": methods,
    }
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def make_world(root: Path) -> dict:
    """The corpus, a fast micro pair and its config under ``root`` (conftest's counterfactual_world)."""
    corpus = write_corpus(root / "micro.jsonl", CORPUS)
    old, new = micro_pair(root, corpus)
    return {"root": root, "corpus": corpus, "config": write_config(root / "micro.yaml", corpus, old, new)}


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Nothing a test writes lands in the real cache."""
    monkeypatch.setenv("PROBES_CACHE", str(tmp_path / "cache"))


@pytest.fixture(autouse=True)
def no_figures(monkeypatch):
    """compare.py's plot and TensorBoard logs (tested in test_compare.py) took most of each run's seconds."""
    from probes.compare import lds_results as lds_report
    from probes.compare import results as report

    monkeypatch.setattr(report, "plot_recall", lambda path, *args: path.write_bytes(b""))
    monkeypatch.setattr(lds_report, "save_figure", lambda path, *args: path.write_bytes(b""))
    monkeypatch.setattr(report, "write_tensorboard", lambda root, *args: root.mkdir(exist_ok=True))


def retrain_new(root: Path, corpus: Path) -> None:
    """Make ``root/pair/new`` the output of the recipe its manifest now records (after `micro_pair` replaced
    it), and record the new weights' checksums there, as `build_pair` does."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from probes.data.corpus import load_corpus
    from probes.hashing import PAIR_FOLDERS, file_checksums, file_sha256
    from probes.pairs.recipe import pair_recipe
    from probes.pairs.train import encode_texts, train

    pair = root / "pair"
    recipe, seed = pair_recipe(pair / "old", file_sha256(corpus))
    tokenizer = AutoTokenizer.from_pretrained(pair / "old")
    model = AutoModelForCausalLM.from_pretrained(pair / "old", dtype=torch.float32)
    seqs = encode_texts(tokenizer, load_corpus(corpus).texts)
    train(model, seqs, recipe, pad_id=tokenizer.pad_token_id, seed=seed, progress=False)
    model.save_pretrained(pair / "new")
    manifest = json.loads((pair / "manifest.json").read_text())
    manifest["files"] = file_checksums(pair, PAIR_FOLDERS)
    (pair / "manifest.json").write_text(json.dumps(manifest))
