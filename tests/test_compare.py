"""compare.py end to end on a micro pair and corpus: every output file with its documented keys and shapes."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from compare_fixtures import ROOT, compare
from lm_fixtures import micro_rows
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from probes.compare import lds_results as lds_report
from probes.compare.results import FILES, HOP_SUBSET, MAIN_METRICS
from probes.outputs import MARKER

LABELS = ("random_a", "random_b", "patching")


@pytest.mark.slow
def test_end_to_end_writes_every_file(config, tmp_path, capsys):
    out = compare.main(["--config", str(config()), "--out", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    assert out == tmp_path / "out"
    for label in (*LABELS, "random (expected)"):
        assert f"| {label} |" in printed
    assert str(out) in printed.splitlines()[-1]
    without_counterfactual = set(FILES) - {lds_report.FIGURE}  # the LDS figure needs --counterfactual
    assert sorted(p.name + "/" * p.is_dir() for p in out.iterdir()) == sorted(
        [*without_counterfactual, MARKER]
    )

    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == [*LABELS, "random_expectation"]
    for entry in metrics.values():
        assert {"macro", "micro", "subsets"} <= set(entry)
        assert {"map", "mrr", "auroc", "recall@10", "precision@5", "hit@1"} <= set(entry["macro"])
        assert {"base", "wrapper", "correct", "incorrect", HOP_SUBSET} == set(entry["subsets"])
        assert entry["subsets"][HOP_SUBSET]["count"] == entry["subsets"]["wrapper"]["count"]
    assert metrics["patching"]["hparams"]["percentile"] == 25.0

    with (out / "queries.csv").open() as handle:
        queries = list(csv.DictReader(handle))
    q, n = len(queries), len(micro_rows())
    assert q == metrics["random_a"]["count"] > 0
    assert list(queries[0]) == ["query_id", "func", "input", "wrapper", "correct"]
    scores = load_file(str(out / "scores.safetensors"))
    assert set(scores) == {*LABELS, "relevant"}
    for label in LABELS:
        assert scores[label].dtype == torch.float32 and scores[label].shape == (q, n)
    assert scores["relevant"].dtype == torch.bool and scores["relevant"].shape == (q, n)
    assert not torch.equal(scores["random_a"], scores["random_b"])

    with (out / "per_query.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(LABELS) * q
    assert [r["query_id"] for r in rows[:q]] == [r["query_id"] for r in queries]
    assert {"label", "map", "mrr", "auroc", "recall@50"} <= set(rows[0])

    table = (out / "table.md").read_text()
    for subset in ("base", "wrapper"):
        for _, name in MAIN_METRICS:
            assert f"{subset} {name}" in table
    assert "wrapper→base mAP" in table
    assert (out / "recall_at_k.png").read_bytes()[:4] == b"\x89PNG"
    events = list((out / "tensorboard").rglob("events.out.tfevents.*"))
    runs = {p.relative_to(out / "tensorboard").parts[0] for p in events}
    assert runs == {*LABELS, "random_expectation", "comparison"}  # one run per method, and the comparison's
    comparison = EventAccumulator(str(out / "tensorboard" / "comparison"))
    comparison.Reload()
    assert comparison.Tags()["images"] == ["test/recall_at_k"]
    assert not list(out.glob(".*.tmp"))


def test_unknown_config_key_is_named(config, capsys):
    with pytest.raises(SystemExit):
        compare.main(["--config", str(config(data={"corpus_pth": "x"}))])
    assert "corpus_pth" in capsys.readouterr().err


def test_unknown_method_option_is_named_before_loading(config):
    bad = [{"label": "p", "method": "patching", "options": {"percentil": 5.0}}]
    parser = compare.build_parser()
    cfg = parser.parse_args(["--config", str(config(methods=bad))])
    with pytest.raises(ValueError, match="'p'.*percentil"):
        compare.build_methods(cfg)


def test_duplicate_label_is_refused(config):
    twice = [{"label": "r", "method": "random"}, {"label": "r", "method": "bm25"}]
    cfg = compare.build_parser().parse_args(["--config", str(config(methods=twice))])
    with pytest.raises(ValueError, match="'r' is used twice"):
        compare.build_methods(cfg)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("configs/compare.yaml", "results/compare"),
        ("configs/ablations/gating.yaml", "results/ablations/gating"),
    ],
)
def test_default_out_follows_the_config_name(path, expected):
    cfg = compare.build_parser().parse_args(["--config", str(ROOT / path)])
    assert compare.default_out(cfg) == Path(expected)


def test_reference_backend_reaches_every_pass_and_scores_like_the_fast_one(config, tmp_path, monkeypatch):
    """model.feature_backend: reference runs the features and patching without any fast code (which would
    raise here), and gives the fast run's scores (float64)."""
    from safetensors.torch import load_file

    from baselines.ops.fast.patch import FastPatcher
    from probes.features.fast.passes import FastPass

    fast = compare.main(["--config", str(config()), "--out", str(tmp_path / "fast")])
    monkeypatch.setenv("PROBES_CACHE", str(tmp_path / "cache-reference"))  # no features from the fast run

    def refuse(*args, **kwargs):
        raise AssertionError("the fast backend ran")

    for cls, name in ((FastPass, "forward"), (FastPass, "text_losses"), (FastPatcher, "logits")):
        monkeypatch.setattr(cls, name, refuse)
    reference = compare.main(
        [
            "--config",
            str(config(model={"feature_backend": "reference"})),
            "--out",
            str(tmp_path / "reference"),
        ]
    )
    got, want = (load_file(str(out / "scores.safetensors")) for out in (reference, fast))
    assert set(got) == set(want) and "patching" in got
    for label, scores in want.items():
        torch.testing.assert_close(got[label], scores, rtol=0, atol=1e-6)


def test_feature_max_tokens_reaches_the_store(config):
    cfg = compare.build_parser().parse_args(["--config", str(config(model={"feature_max_tokens": 40}))])
    features = compare.load_everything(cfg)[3]
    assert (features.max_tokens, features.grad_max_tokens) == (40, 20)


@pytest.mark.slow
def test_one_device_run_never_imports_lightning(config, tmp_path):
    """compare.py on one device imports neither Lightning nor torchmetrics (seconds of start-up on a GPU
    machine), nor does any built-in method but the DLP; a fresh interpreter, as a user runs it."""
    script = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
import compare
from probes.methods import BUILTIN, method_class
compare.main(["--config", {str(config())!r}, "--out", {str(tmp_path / "out")!r}])
for name in BUILTIN:
    if name != "dlp":
        method_class(name)
print(sorted(m for m in ("lightning", "torchmetrics") if m in sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines()[-1] == "[]"


def test_tuned_entry_reports_its_choice_and_every_trial(config, tmp_path):
    """A grid is scored on the validation queries; the chosen point scores the test split and is written to
    metrics.json and table.md (the choice is the trial with the best val macro mAP)."""
    methods = [
        {"label": "random_t", "method": "random", "options": {}, "tune": {"seed": [0, 1, 2]}},
        {"label": "bm25", "method": "bm25", "options": {}},
    ]
    out = compare.main(["--config", str(config(methods=methods)), "--out", str(tmp_path / "out")])
    metrics = json.loads((out / "metrics.json").read_text())
    tuned = metrics["random_t"]["tuned"]
    assert [t["options"] for t in tuned["trials"]] == [{"seed": 0}, {"seed": 1}, {"seed": 2}]
    best = max(tuned["trials"], key=lambda t: t["val_map"])
    assert tuned["chosen"] == best["options"] == {"seed": metrics["random_t"]["hparams"]["seed"]}
    assert "tuned" not in metrics["bm25"]
    assert f"- random_t: seed={tuned['chosen']['seed']} (of 3)" in (out / "table.md").read_text()


def test_a_bad_grid_point_is_named_before_loading(config):
    bad = [{"label": "r", "method": "random", "tune": {"sed": [0, 1]}}]
    cfg = compare.build_parser().parse_args(["--config", str(config(methods=bad))])
    with pytest.raises(ValueError, match="'r'.*sed"):
        compare.build_methods(cfg)


def test_out_holding_other_files_is_refused_before_loading_and_own_output_rerun(
    config, tmp_path, monkeypatch, capsys
):
    # regression: --out into any folder wrote compare.py's files over whatever was there
    def refused(argv: list[str], pattern: str) -> None:  # a user error: one line on stderr, exit code 2
        with pytest.raises(SystemExit) as stop:
            compare.main(argv)
        assert stop.value.code == 2 and re.search(pattern, capsys.readouterr().err)

    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.md").write_text("mine")
    cfg = str(config(methods=[{"label": "r", "method": "random"}]))
    with monkeypatch.context() as patch:
        patch.setattr(compare, "run", lambda *a: pytest.fail("ran before refusing"))
        refused(["--config", cfg, "--out", str(out)], f"{out}.*notes.md.*--overwrite")
    compare.main(["--config", cfg, "--out", str(out), "--overwrite"])
    (out / "notes.md").unlink()
    compare.main(["--config", cfg, "--out", str(out)])  # its own earlier output: written again
    without_counterfactual = set(FILES) - {lds_report.FIGURE}  # the LDS figure needs --counterfactual
    assert sorted(p.name + "/" * p.is_dir() for p in out.iterdir()) == sorted(
        [*without_counterfactual, MARKER]
    )
    refused(  # even with --overwrite
        ["--config", cfg, "--out", str(out), "--overwrite", "--data.corpus_path", str(out / "table.md")],
        "is an input",
    )
