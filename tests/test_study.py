"""scripts/pair_study.py's step selection: a study split over several machines runs the steps asked for."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("study", ROOT / "scripts" / "pair_study.py")
study = sys.modules.setdefault("study", importlib.util.module_from_spec(spec))
spec.loader.exec_module(study)


def names(jobs):
    return {job.name: job.needs for job in jobs}


def study_args(tmp_path, **changes) -> argparse.Namespace:
    """scripts/pair_study.py's parsed arguments, with ``changes``."""
    args = dict(corpus=tmp_path / "c.jsonl", out=tmp_path, preset="small", seed=0, seeds=[0, 1], device="cpu")
    args.update(feature_batch_size=8, score_batch_size=16, stack=5, subsets=4, seeds_per_subset=2)
    return argparse.Namespace(**{**args, **changes})


def test_select_keeps_the_matching_steps_and_the_pair_and_drops_needs_left_out(tmp_path):
    jobs = study.jobs(study_args(tmp_path))
    assert study.select(jobs, None) == jobs
    chosen = names(study.select(jobs, ["compare/by_function", "compare/ablations/*"]))
    assert {"build", "evaluate", "compare/by_function", "compare/ablations/pooling"} <= set(chosen)
    assert not any(name.startswith("dlp/") for name in chosen) and "compare/by_input" not in chosen
    assert chosen["compare/by_function"] == ["build"]  # compare/by_input was only shared cache
    counterfactual = names(study.select(jobs, ["counterfactual/*", "compare/lds"]))
    # the DLP and compare/by_input are left out: their own need (the pair) takes their place
    assert counterfactual["compare/lds"] == ["counterfactual/gt", "build"]
    assert counterfactual["counterfactual/gt"] == counterfactual["counterfactual/removal"] == ["build"]
    dlp = names(study.select(jobs, ["dlp/*"]))
    assert set(dlp) == {"build", "evaluate"} | {n for n in names(jobs) if n.startswith("dlp/")}


def test_cuda_without_a_gpu_is_refused_before_any_step(tmp_path, write_jsonl, capsys, monkeypatch):
    """Checked once up front: each step would otherwise fail on its own, with a traceback in its log."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    corpus = write_jsonl([{"text": "x"}], "c.jsonl")
    with pytest.raises(SystemExit) as exit_info:
        study.main(["--corpus", str(corpus), "--out", str(tmp_path / "study"), "--device", "cuda"])
    assert exit_info.value.code == 2 and not (tmp_path / "study").exists()
    assert capsys.readouterr().err.strip().splitlines() == [
        "probes: error: --device='cuda' but no CUDA GPU is available on this machine; use cpu"
    ]


@pytest.mark.parametrize("installed", [True, False])
def test_removal_drops_the_dlp_and_the_influence_rows_only_where_installed(tmp_path, monkeypatch, installed):
    """The removal step names the seed-0 multi-hot DLP (and waits for it), and ekfac/trackstar only where
    compare.py would score them: a label it skips would be refused."""
    monkeypatch.setattr(study, "missing_extra", lambda name: None if installed else "pip install x")
    args = study_args(tmp_path, seeds=[3], score_batch_size=256, stack=7)
    jobs = {j.name: j for j in study.jobs(args)}
    job = jobs["counterfactual/removal"]
    command = job.commands[0]
    # the rows' scores come from the by_input comparisons it waits for (remove checks their inputs)
    reused = command[command.index("--scores") + 1 : command.index("--out")]
    runs = [jobs[f"compare/{name}"] for name in ("by_input", "dlp-by_input")]
    assert reused == [run.commands[0][run.commands[0].index("--out") + 1] for run in runs]
    assert {run.name for run in runs} <= set(job.needs)
    lds = jobs["compare/lds"]  # so does the LDS run
    assert lds.commands[0][lds.commands[0].index("--scores") + 1 : lds.commands[0].index("--out")] == reused
    assert {run.name for run in runs} <= set(lds.needs)
    labels = command[command.index("--labels") + 1 : command.index("--k")]
    assert labels == [*study.REMOVAL_LABELS, *(["ekfac", "trackstar"] if installed else []), "dlp"]
    checkpoint = command[command.index("--dlp_checkpoint") + 1]
    assert checkpoint == str(tmp_path / "dlp" / "multihot-by_input-s3" / "best.ckpt")
    assert "dlp/multihot-by_input-s3" in job.needs
    assert command[command.index("--model.score_batch_size") + 1] == "256"
    assert command[command.index("--stack") + 1] == "7"
