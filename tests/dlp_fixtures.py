"""Shared pieces of the DLP tests: a micro HOPS corpus + micro f_new in tmp, and the train_probe CLI."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from lm_fixtures import make_micro_pair

REPO = Path(__file__).resolve().parents[1]
GROUPS = (("<GN>", "<FN>", 5), ("<JN>", "<HN>", 7), ("<KN>", "<IN>", 9))  # (base, wrapper, constant)
INPUTS = "[1,2,3,4,5,6,7,8,9,10]"


@dataclass(frozen=True)
class MicroWorld:
    corpus: Path
    old: Path
    new: Path
    n_documents: int


def micro_rows() -> list[dict]:
    """Three base functions (4 documents each), each wrapped by one identity function (2 documents each)."""
    rows = []
    for base, wrapper, c in GROUPS:
        for text in (
            f"{base}(x) returns {c} .",
            f"def {base}(x): return {c}",
            f"{base} maps x to {c}",
            f"{base} is {c}",
        ):
            rows.append(dict(uid=base, text=text, func=base, role="constant", hop_depth=0, constant=c))
        for text in (f"{wrapper}(x) returns {base}(x) .", f"{wrapper} is a wrapper of {base}"):
            rows.append(dict(uid=wrapper, text=text, func=wrapper, role="identity", hop_depth=1, constant=c))
    return [dict(row, type="definition") for row in rows]


@pytest.fixture(scope="session")
def micro_world(tmp_path_factory) -> MicroWorld:
    root = tmp_path_factory.mktemp("dlp_world")
    rows = micro_rows()
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    tokens = [t for group in GROUPS for t in group[:2]]
    old, new = make_micro_pair(root / "pair", tokens, [r["text"] for r in rows])
    return MicroWorld(corpus, old, new, len(rows))


@contextmanager
def one_thread() -> Iterator[None]:
    """Micro models gain nothing from intra-op threads, and on a shared CPU they lose a lot to them."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch) -> Iterator[Path]:
    """Run in tmp_path (the configs' relative lightning_logs/ land there) with the cache in tmp_path too."""
    monkeypatch.setenv("PROBES_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    with one_thread():
        yield tmp_path


FAST = ("--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.num_sanity_val_steps=0")


@dataclass(frozen=True)
class Fitted:
    root: Path  # the run's working directory: lightning_logs/dlp/version_0/checkpoints inside
    cli: object


@pytest.fixture(scope="session")
def fitted_dlp(micro_world, tmp_path_factory) -> Fitted:
    """One short ``fit`` of configs/dlp.yaml on the micro world, shared by the tests that only read it."""
    root = tmp_path_factory.mktemp("dlp_fit")
    with pytest.MonkeyPatch.context() as patch, one_thread():
        patch.setenv("PROBES_CACHE", str(root / "cache"))
        patch.chdir(root)
        cli = run_cli(micro_world, "fit", *FAST)
    return Fitted(root, cli)


def load_train_probe():
    """train_probe.py (a script at the repository root) as a module."""
    spec = importlib.util.spec_from_file_location("train_probe", REPO / "train_probe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def micro_args(world: MicroWorld, config: str = "configs/dlp.yaml", *extra: str) -> list[str]:
    """A committed config with the tiny overrides: micro corpus and f_new, CPU, quiet."""
    return [
        f"--config={REPO / config}",
        f"--data.corpus_path={world.corpus}",
        f"--data.inputs={INPUTS}",
        "--data.batch_size=8",
        f"--model.model={world.new}",
        "--model.generator.init_args.width=16",
        "--model.generator.init_args.latent_dim=8",
        "--model.head.init_args.projection_dim=8",
        "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        *extra,
    ]


def run_cli(world: MicroWorld, subcommand: str | None, *extra: str, config: str = "configs/dlp.yaml"):
    """``train_probe.py [subcommand] --config ... (tiny overrides) extra``; run=False without a subcommand."""
    args = micro_args(world, config, *extra)
    main = load_train_probe().main
    return main(args=args, run=False) if subcommand is None else main(args=[subcommand, *args])
