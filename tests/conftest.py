"""Shared pytest fixtures; each part appends its own below its heading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

# ---- threads: micro models run fastest on one intra-op thread (shared CI cores are not oversubscribed) ----


@pytest.fixture
def one_thread():
    """One torch intra-op thread for the test, restored after; a module opts in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- data-core: small HOPS corpora written to tmp_path ----

# the reference corpus lives beside the checkout (../shared), never in it
REFERENCE_HOPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "hops" / "20hops.jsonl"


def hops_row(func: str, constant: int | None, *, role="constant", depth: int = 0, text: str = "", **extra):
    """One HOPS row; the text defaults to a sentence that mentions only ``func``."""
    row = {"uid": f"u{func}", "text": text or f"{func}(x) returns {constant}.", "func": func, "role": role}
    row.update({"hop_depth": depth, "constant": constant, "type": "definition"}, **extra)
    return row


def chain_rows() -> list[dict]:
    """Depth-2 chain <D1> -> <C1> -> <B1> (=3), a base <B2> (=4) wrapped by <C2>, and two distractors."""
    return [
        hops_row("<B1>", 3),
        hops_row("<B1>", 3, text="def <B1>(x): return 3"),
        hops_row("<B2>", 4),
        hops_row("<B2>", 4),
        hops_row("<C1>", 3, role="identity", depth=1, text="<C1>(x) returns <B1>(x)."),
        hops_row("<C1>", 3, role="identity", depth=1, text="<C1> is a thin wrapper around <B1>."),
        hops_row("<C2>", 4, role="identity", depth=1, text="<C2> calls <B2>."),
        hops_row("<D1>", 3, role="identity", depth=2, text="<D1>(x) returns <C1>(x), which calls <B1>."),
        hops_row("<D1>", 3, role="identity", depth=2, text="<D1> wraps <C1>."),
        hops_row("<Z1>", None, role="distractor", text="<Z1> is unrelated to <B1>."),
        hops_row("<Z2>", 3, role="distractor", text="<Z2> also returns 3."),
    ]


@pytest.fixture
def write_jsonl(tmp_path):
    """Write rows (dicts, or raw strings written verbatim) as a JSONL file under tmp_path; return its path."""

    def write(rows, name: str = "corpus.jsonl") -> Path:
        path = tmp_path / name
        lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    return write


@pytest.fixture
def chain_corpus_path(write_jsonl) -> Path:
    return write_jsonl(chain_rows(), "chain.jsonl")


# ---- counterfactual: a micro pair built with its manifest (see counterfactual_fixtures.py) ----


@pytest.fixture(scope="module")
def counterfactual_world(tmp_path_factory) -> dict:
    """The corpus, a fast micro pair and its config, built once per module."""
    from counterfactual_fixtures import make_world

    return make_world(tmp_path_factory.mktemp("counterfactual"))


# ---- dlp: a micro HOPS corpus + micro f_new, and a test run inside tmp_path (see dlp_fixtures.py) ----

# ---- compare.py: the micro config writer (see compare_fixtures.py) ----
# ---- user errors (test_errors, test_outputs, test_checks_up_front): a micro pair, a compare config writer
# over it, a generated micro corpus ----
import yaml  # noqa: E402
from compare_fixtures import config  # noqa: E402, F401
from dlp_fixtures import fitted_dlp, in_tmp, micro_world  # noqa: E402, F401
from lm_fixtures import make_micro_pair, micro_rows  # noqa: E402

from probes.data.synthetic import GeneratorConfig, write_corpus  # noqa: E402


@pytest.fixture(scope="module")
def micro_pair(tmp_path_factory) -> tuple[Path, Path]:
    return make_micro_pair(tmp_path_factory.mktemp("errors_pair"))


@pytest.fixture
def cfg(tmp_path, monkeypatch, write_jsonl, micro_pair):
    """Writes a compare.py config over the micro corpus and pair (overrides merged per section)."""
    monkeypatch.setenv("PROBES_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PROBES_DEBUG", raising=False)
    corpus = write_jsonl(micro_rows(), "micro.jsonl")

    def write(**overrides) -> Path:
        settings = {
            "data": {"corpus_path": str(corpus), "inputs": list(range(1, 11)), "test_fraction": 0.4},
            "model": {"old": str(micro_pair[0]), "new": str(micro_pair[1]), "threads": 1},
            "methods": [{"label": "r", "method": "random"}, {"label": "b", "method": "bm25"}],
        }
        for key, value in overrides.items():
            settings[key] = {**settings[key], **value} if isinstance(value, dict) else value
        path = tmp_path / "micro.yaml"
        path.write_text(yaml.safe_dump(settings), encoding="utf-8")
        return path

    return write


@pytest.fixture
def corpus_path(tmp_path):
    return write_corpus(
        tmp_path / "micro.jsonl", GeneratorConfig(n_base=2, docs_per_base=4, docs_per_wrapper=2)
    )
