"""User errors from every entry point: one line on stderr, exit code 2, before any model pass (issue 14)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_fixtures import ROOT, compare, no_features_computed, refused, train_probe
from dlp_fixtures import micro_args
from lm_fixtures import micro_rows

from probes.data.__main__ import main as data_main
from probes.pairs.__main__ import main as lm_main


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--data.relevance", "foo"], "relevance"),
        (["--data.val_fraction", "1.5"], "val_fraction"),
        (["--model.dtype", "float8"], "model.dtype"),
        (["--model.new", "null"], "model.old and model.new"),
        (["--model.feature_batch_size", "0"], "model.feature_batch_size"),
        (["--model.score_batch_size", "0"], "model.score_batch_size"),
        (["--model.threads", "0"], "model.threads"),
        (["--model.device", "tpu9"], "model.device"),
    ],
)
def test_bad_compare_values_are_one_line(cfg, tmp_path, capsys, args, named):
    line = refused(capsys, compare.main, ["--config", str(cfg()), "--out", str(tmp_path / "out"), *args])
    assert named in line
    assert no_features_computed(tmp_path)


def test_test_fraction_zero_is_refused_before_any_method_runs(cfg, tmp_path, capsys):
    """Regression: test_fraction 0 ran every method, then grad_sim crashed on the empty test split."""
    argv = ["--config", str(cfg()), "--out", str(tmp_path / "out"), "--data.test_fraction", "0"]
    assert "data.test_fraction" in refused(capsys, compare.main, argv)
    assert no_features_computed(tmp_path)


def test_cuda_device_without_a_gpu_is_one_line(cfg, tmp_path, capsys, monkeypatch):
    """Regression: ``AssertionError: Torch not compiled with CUDA enabled`` from inside the model load."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = ["--config", str(cfg()), "--out", str(tmp_path / "out"), "--model.device", "cuda"]
    assert "model.device='cuda'" in refused(capsys, compare.main, argv)


@pytest.mark.parametrize(
    ("methods", "named"),
    [
        ([{"label": "x", "method": "no_such_method"}], "'x'"),
        ([{"label": "r", "method": "random"}, {"label": "r", "method": "bm25"}], "'r' is used twice"),
    ],
)
def test_bad_method_entries_are_one_line(cfg, tmp_path, capsys, methods, named):
    argv = ["--config", str(cfg(methods=methods)), "--out", str(tmp_path / "out")]
    assert named in refused(capsys, compare.main, argv)


def test_out_that_is_a_file_is_refused_up_front(cfg, tmp_path, capsys):
    (tmp_path / "taken").write_text("mine", encoding="utf-8")
    line = refused(capsys, compare.main, ["--config", str(cfg()), "--out", str(tmp_path / "taken")])
    assert "out" in line and "taken" in line
    assert no_features_computed(tmp_path) and (tmp_path / "taken").read_text() == "mine"


def test_probes_cache_that_is_a_file_is_refused_up_front(cfg, tmp_path, capsys, monkeypatch):
    """Regression: a file as PROBES_CACHE failed only after the features were computed."""
    (tmp_path / "cachefile").write_text("", encoding="utf-8")
    monkeypatch.setenv("PROBES_CACHE", str(tmp_path / "cachefile"))
    line = refused(capsys, compare.main, ["--config", str(cfg()), "--out", str(tmp_path / "out")])
    assert "PROBES_CACHE" in line and "cachefile" in line


def _corrupt_random(path: Path) -> None:
    path.write_bytes(os.urandom(3000))


def _corrupt_truncated(path: Path) -> None:
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, path)
    path.write_bytes(path.read_bytes()[:2000])


def _corrupt_zeroed(path: Path) -> None:
    torch.save({"state_dict": {"w": torch.ones(1000)}}, path)
    data = bytearray(path.read_bytes())
    data[len(data) // 3 : len(data) // 2] = bytes(len(data) // 2 - len(data) // 3)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("corrupt", [_corrupt_random, _corrupt_truncated, _corrupt_zeroed])
def test_corrupt_dlp_checkpoint_fails_before_the_other_methods(cfg, tmp_path, capsys, corrupt):
    """Regression: ``KeyError: 101`` / ``PytorchStreamReader failed`` after every other method had run."""
    checkpoint = tmp_path / "best.ckpt"
    corrupt(checkpoint)
    argv = ["--config", str(cfg()), "--out", str(tmp_path / "out"), "--dlp_checkpoint", str(checkpoint)]
    line = refused(capsys, compare.main, argv)
    assert "dlp_checkpoint" in line and "best.ckpt" in line
    assert no_features_computed(tmp_path) and not (tmp_path / "out").exists()


def test_document_longer_than_the_context_is_named_by_line(cfg, tmp_path, capsys, write_jsonl):
    """Regression: a huge document asked for a 16 GB allocation instead of being refused."""
    rows = micro_rows()
    rows[3]["text"] += " 9" * 500  # the micro Llama has 128 positions
    long = write_jsonl(rows, "long.jsonl")
    argv = ["--config", str(cfg(data={"corpus_path": str(long)})), "--out", str(tmp_path / "out")]
    line = refused(capsys, compare.main, argv)
    assert "long.jsonl: line 4" in line and "128 positions" in line
    assert no_features_computed(tmp_path)


def _run_compare(config: Path, out: Path, *extra: str, env: dict | None = None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    command = [sys.executable, str(ROOT / "compare.py"), "--config", str(config), "--out", str(out), *extra]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)


@pytest.mark.slow
def test_compare_process_exits_2_with_one_line_and_debug_shows_the_traceback(cfg, tmp_path):
    config = cfg(data={"relevance": "foo"})
    done = _run_compare(config, tmp_path / "out")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "probes: error: relevance must be 'pair' or 'chain', got 'foo'"
    ]
    for debug in (
        _run_compare(config, tmp_path / "out", "--debug"),
        _run_compare(config, tmp_path / "out", env={"PROBES_DEBUG": "1"}),
    ):
        assert debug.returncode == 1 and "Traceback" in debug.stderr
        assert debug.stderr.strip().splitlines()[-1].startswith("ValueError: relevance")


def test_lm_build_out_that_is_a_file_is_refused_before_building(tmp_path, capsys, write_jsonl):
    """Regression: ``build --out FILE`` failed only after the whole build."""
    corpus = write_jsonl(micro_rows(), "micro.jsonl")
    taken = tmp_path / "taken"
    taken.write_text("mine", encoding="utf-8")
    line = refused(
        capsys, lm_main, ["build", "--corpus", str(corpus), "--out", str(taken), "--device", "cpu"]
    )
    assert "--out" in line and "taken" in line and taken.read_text() == "mine"


def test_lm_evaluate_cuda_without_a_gpu_is_one_line(tmp_path, capsys, monkeypatch, write_jsonl, micro_pair):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    corpus = write_jsonl(micro_rows(), "micro.jsonl")
    old, new = (str(p) for p in micro_pair)
    argv = ["evaluate", "--old", old, "--new", new, "--corpus", str(corpus), "--device", "cuda"]
    assert "--device='cuda'" in refused(capsys, lm_main, argv)


def test_data_generate_into_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "taken").write_text("", encoding="utf-8")
    line = refused(capsys, data_main, ["generate", "--out", str(tmp_path / "taken" / "corpus.jsonl")])
    assert "taken" in line


def test_checkpoint_check_passes_a_real_checkpoint(tmp_path):
    from probes.errors import UserError, check_checkpoint

    torch.save(
        {"state_dict": {"w": torch.ones(10)}, "hyper_parameters": {"n_documents": 6}}, tmp_path / "ok.ckpt"
    )
    assert check_checkpoint(tmp_path / "ok.ckpt", "dlp_checkpoint") is None
    # the same file cut short is refused: the check reads the file, it does not only find it
    (tmp_path / "cut.ckpt").write_bytes((tmp_path / "ok.ckpt").read_bytes()[:-20])
    with pytest.raises(UserError, match="dlp_checkpoint"):
        check_checkpoint(tmp_path / "cut.ckpt", "dlp_checkpoint")


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ("--data.relevance=foo", "relevance"),
        ("--data.test_fraction=1.0", "test_fraction"),
        ("--data.split=by_function", "MultiHotHead"),
        ("--model.dtype=float8", "dtype 'float8'"),
    ],
)
def test_bad_train_probe_values_are_one_line_before_loading(micro_world, in_tmp, capsys, extra, named):
    """Regression: each was a traceback; the multi-hot head with by_function only after loading f_new."""
    argv = ["fit", *micro_args(micro_world), extra]
    assert named in refused(capsys, lambda args: train_probe.main(args=args), argv)
    assert not (in_tmp / "lightning_logs").exists()


@pytest.mark.parametrize("corrupt", [_corrupt_random, _corrupt_truncated, _corrupt_zeroed])
def test_corrupt_train_probe_ckpt_path_is_one_line(micro_world, in_tmp, capsys, corrupt):
    """Regression: a corrupt --ckpt_path failed deep inside torch.load (``PytorchStreamReader failed``)."""
    checkpoint = in_tmp / "broken.ckpt"
    corrupt(checkpoint)
    argv = ["test", *micro_args(micro_world), f"--ckpt_path={checkpoint}"]
    line = refused(capsys, lambda args: train_probe.main(args=args), argv)
    assert "--ckpt_path" in line and "broken.ckpt" in line
