"""One evaluation path: a DLP checkpoint gives the same test numbers through compare.py and train_probe.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from compare_fixtures import load_compare
from dlp_fixtures import INPUTS, one_thread, run_cli
from safetensors.torch import load_file

from probes.metrics import flatten
from probes.models.method import standardised_mean


def test_compare_and_train_probe_test_report_the_same_numbers(micro_world, fitted_dlp, tmp_path, monkeypatch):
    # regression: the DLP's test_metrics.json had no wrapper→base subset, though compare.py reported one
    checkpoint = fitted_dlp.root / "lightning_logs" / "dlp" / "best.ckpt"
    monkeypatch.chdir(fitted_dlp.root)
    monkeypatch.setenv("PROBES_CACHE", str(fitted_dlp.root / "cache"))
    with one_thread():
        cli = run_cli(micro_world, "test", f"--ckpt_path={checkpoint}")
        out = tmp_path / "compare"
        argv = [
            f"--data.corpus_path={micro_world.corpus}",
            f"--data.inputs={INPUTS}",
            f"--model.old={micro_world.old}",
            f"--model.new={micro_world.new}",
            "--methods=[]",
            f"--dlp_checkpoint={checkpoint}",
            f"--out={out}",
        ]
        load_compare().main(argv)
    dlp = json.loads((Path(cli.trainer.log_dir) / "test_metrics.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    report = {k: metrics["dlp"][k] for k in ("count", "macro", "micro", "subsets")}
    compared = {**flatten(report, "test"), **flatten(metrics["random_expectation"], "random/test")}
    assert compared.keys() == dlp.keys()
    assert "test/subsets/wrapper_to_base/macro/map" in dlp
    assert "random/test/subsets/wrapper_to_base/macro/recall@10" in dlp
    assert dlp["test/subsets/wrapper_to_base/count"] == dlp["test/subsets/wrapper/count"] > 0
    assert compared == pytest.approx(dlp, abs=1e-6, nan_ok=True)


def test_compare_scores_a_seed_ensemble_as_one_dlp_row(micro_world, fitted_dlp, tmp_path, monkeypatch):
    checkpoint = str(fitted_dlp.root / "lightning_logs" / "dlp" / "best.ckpt")
    monkeypatch.chdir(fitted_dlp.root)
    monkeypatch.setenv("PROBES_CACHE", str(fitted_dlp.root / "cache"))
    common = [
        f"--data.corpus_path={micro_world.corpus}",
        f"--data.inputs={INPUTS}",
        f"--model.old={micro_world.old}",
        f"--model.new={micro_world.new}",
        "--methods=[]",
    ]
    with one_thread():
        load_compare().main([*common, f"--dlp_checkpoint={checkpoint}", f"--out={tmp_path / 'one'}"])
        load_compare().main(
            [*common, f"--dlp_checkpoint=[{checkpoint}, {checkpoint}]", f"--out={tmp_path / 'two'}"]
        )
    one = load_file(str(tmp_path / "one" / "scores.safetensors"))["dlp"]
    two = load_file(str(tmp_path / "two" / "scores.safetensors"))["dlp"]
    torch.testing.assert_close(two, standardised_mean([one]))  # the same fit twice: its standardised scores
    inputs = json.loads((tmp_path / "two" / "inputs.json").read_text())
    hashes = inputs["content"]["dlp"]
    assert isinstance(hashes, list) and len(hashes) == 2 and hashes[0] == hashes[1]
