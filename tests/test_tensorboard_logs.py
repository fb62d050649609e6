"""What a DLP run shows in TensorBoard (hp_metric, HPARAMS, test beside its fit) and how quietly bars log."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from dlp_fixtures import FAST, REPO, micro_args, run_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2


def events(folder):
    run = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    run.Reload()
    return run


def hparams(run) -> dict:
    for content in run.PluginTagToContent("hparams").values():
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        if data.HasField("session_start_info"):
            return dict(data.session_start_info.hparams)
    return {}


def test_hp_metric_is_the_best_val_map_and_hparams_are_the_users_settings(micro_world, in_tmp):
    run_cli(micro_world, "fit", "--trainer.max_epochs=3", "--trainer.limit_train_batches=2")
    run = events(in_tmp / "lightning_logs/dlp/version_0")
    val = [e.value for e in run.Scalars("val/macro/map")]
    best = [e.value for e in run.Scalars("hp_metric")]
    assert len(val) == 3 and best == [max(val[: i + 1]) for i in range(3)]  # no -1 placeholder
    settings = hparams(run)
    assert {"generator/width", "head/dropout", "optimizer/lr", "batch_size", "split"} <= set(settings)
    assert not {"_instantiator", "candidates", "n_documents"} & set(settings)


def test_test_of_a_fits_checkpoint_logs_into_that_fits_run(micro_world, in_tmp):
    run_cli(micro_world, "fit", *FAST)
    run_cli(micro_world, "test", "--ckpt_path=best")
    assert sorted(p.name for p in (in_tmp / "lightning_logs/dlp").iterdir() if p.is_dir()) == ["version_0"]
    run = events(in_tmp / "lightning_logs/dlp/version_0")
    assert "test/macro/map" in run.Tags()["scalars"] and "val/macro/map" in run.Tags()["scalars"]
    assert (in_tmp / "lightning_logs/dlp/version_0/config_test.yaml").is_file()


@pytest.mark.slow  # a subprocess run
def test_progress_bars_write_few_updates_into_a_file(micro_world, tmp_path):
    """Regression (issue 30): thousands of carriage-return updates in a non-interactive log."""
    args = [a for a in micro_args(micro_world) if "enable_progress_bar" not in a]
    env = dict(os.environ, PROBES_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    argv = [sys.executable, str(REPO / "train_probe.py"), "fit", *args, "--trainer.max_epochs=2"]
    with open(tmp_path / "out.log", "w") as out:
        subprocess.run(argv, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, check=True)
    log = (tmp_path / "out.log").read_text()
    assert "Epoch 1: 100%|" in log and "| 6/6 " in log, log[-2000:]  # each epoch has 6 steps
    # a run of a few seconds: each bar only at its start and end, no update per step
    assert not re.search(r"\| [1-5]/6 ", log), log[-2000:]
