"""The DLP under DDP on forked CPU ranks (gloo): validation scores every val query exactly once."""

from __future__ import annotations

import lightning as L
import pytest
from dlp_fixtures import FAST, run_cli

from probes.models import QueryTables

QUIET = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)


@pytest.mark.parametrize("devices", [2, 4])
def test_validation_under_ddp_equals_one_process(micro_world, in_tmp, devices):
    # 6 val queries in batches of 4: on 4 ranks the sampler pads with 2 repeated queries, which count once
    cli = run_cli(micro_world, None, "--data.batch_size=4")
    model, data = cli.model, cli.datamodule
    assert len(data.split_ids["val"]) == 6
    one = L.Trainer(devices=1, callbacks=[QueryTables()], **QUIET).validate(
        model, datamodule=data, verbose=False
    )[0]
    shared = L.Trainer(devices=devices, strategy="ddp_fork", callbacks=[QueryTables()], **QUIET).validate(
        model, datamodule=data, verbose=False
    )[0]
    assert set(shared) == set(one) and 0 < one["val/micro/map"] < 1
    for key, value in one.items():
        assert shared[key] == pytest.approx(value, rel=1e-6), key


def test_fit_and_test_under_ddp_write_their_files_once(micro_world, in_tmp):
    # regression: rank 0 alone asked for trainer.log_dir (a broadcast under DDP) at the end of fit and test
    ddp = ("--trainer.devices=2", "--trainer.strategy=ddp_fork")
    fitted = run_cli(micro_world, "fit", *FAST, *ddp)
    assert fitted.trainer.state.finished
    runs = in_tmp / "lightning_logs" / "dlp"
    assert (runs / "version_0" / "recall_at_k.png").is_file()
    assert sorted(p.name for p in (runs / "version_0" / "checkpoints").iterdir()) == [
        "best.ckpt",
        "last.ckpt",
    ]
    run_cli(micro_world, "test", "--ckpt_path=best", *ddp)
    # test joins its fit's run folder (issue 30) instead of making version_1
    assert (runs / "version_0" / "test_metrics.json").is_file()
    assert not (runs / "version_1").exists()
