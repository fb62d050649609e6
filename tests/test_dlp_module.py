"""ProbeModule via train_probe.py on a micro f_new: it runs, learns, keeps f_new frozen and unsaved."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
from dlp_fixtures import FAST, run_cli

from probes.data.datamodule import HopsDataModule
from probes.models import CpuThreads, MultiHotHead, PairwiseHead, ProbeGenerator, ProbeModule, QueryTables


def CHECKPOINTS(root: Path) -> Path:
    return root / "lightning_logs" / "dlp" / "version_0" / "checkpoints"


def test_fast_dev_run_takes_one_step_on_the_probes_only(micro_world, in_tmp):
    """One training step moves every probe parameter and leaves f_new's weights as loaded."""
    cli = run_cli(micro_world, None, "--trainer.fast_dev_run=true")
    cli.model.configure_model()
    before = {k: v.clone() for k, v in cli.model.state_dict().items()}
    lm_before = {k: v.clone() for k, v in cli.model.lm.model.state_dict().items()}
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.state.finished and cli.trainer.global_step == 1
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss_step"])
    after = cli.model.state_dict()
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert moved and all(k.startswith(("generator.", "head.")) for k in moved)
    assert all(torch.equal(v, cli.model.lm.model.state_dict()[k]) for k, v in lm_before.items())


@pytest.mark.slow
@pytest.mark.parametrize("head", [MultiHotHead, PairwiseHead])
def test_overfit_one_batch_loss_falls(micro_world, in_tmp, head):
    L.seed_everything(0)
    data = HopsDataModule(str(micro_world.corpus), inputs=list(range(1, 11)), batch_size=16)
    options = {"negatives": 8} if head is PairwiseHead else {}
    model = ProbeModule(
        str(micro_world.new),
        generator=lambda d: ProbeGenerator(d, num_probes=2, probe_tokens=2, latent_dim=8, width=16),
        head=lambda r, k, n: head(r, k, n, projection_dim=16, dropout=0.0, **options),
        optimizer=lambda params: torch.optim.Adam(params, lr=3e-2),
        n_documents=micro_world.n_documents,
    )
    excess = []  # loss above its minimum: the soft-label entropy log(#relevant) for multi_hot, 0 for InfoNCE

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            floor = batch["relevant"].sum(-1).double().log().mean() if head is MultiHotHead else 0.0
            excess.append(float(outputs["loss"] - floor))

    trainer = L.Trainer(
        overfit_batches=1, max_epochs=15, logger=False, enable_checkpointing=False, callbacks=[Record()],
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
    )  # fmt: skip
    trainer.callbacks.append(QueryTables())
    trainer.fit(model, datamodule=data)
    assert sum(excess[-3:]) / 3 < 0.75 * sum(excess[:3]) / 3, excess


def test_lm_is_frozen_and_never_in_the_state_or_a_checkpoint(fitted_dlp):
    module = fitted_dlp.cli.model
    lm = module.reader.lm
    assert all(not p.requires_grad for p in lm.parameters()) and not lm.training
    assert module.lm.model is lm  # held by FrozenLM, so Lightning places and casts it
    own = {f"generator.{k}" for k in module.generator.state_dict()}
    own |= {f"head.{k}" for k in module.head.state_dict()}
    assert set(module.state_dict()) == own
    groups = fitted_dlp.cli.trainer.optimizers[0].param_groups
    optimised = {id(p) for group in groups for p in group["params"]}
    assert optimised == {id(p) for p in [*module.generator.parameters(), *module.head.parameters()]}
    for name in ("best.ckpt", "last.ckpt"):
        state = torch.load(CHECKPOINTS(fitted_dlp.root) / name, weights_only=False)["state_dict"]
        assert set(state) == own  # nothing of f_new (embed_tokens, layers, lm_head, ...)


def test_module_validates_without_a_datamodule_like_with_one(micro_world, fitted_dlp, in_tmp):
    # regression: ProbeModule read trainer.datamodule in its hooks; now the data reaches it from outside
    model, data = fitted_dlp.cli.model, fitted_dlp.cli.datamodule
    quiet = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    with_data = L.Trainer(callbacks=[QueryTables()], **quiet).validate(model, datamodule=data, verbose=False)[
        0
    ]
    model.set_documents(data.corpus.texts)
    model.set_queries(data.query_functions, data.is_wrapper, data.hop)
    alone = L.Trainer(**quiet).validate(model, dataloaders=data.val_dataloader(), verbose=False)[0]
    assert alone == pytest.approx(with_data) and "val/subsets/wrapper_to_base/macro/map" in alone


def test_f_new_moves_and_casts_with_the_module_and_stays_in_eval_mode(micro_world, in_tmp):
    # regression: f_new was no submodule (moved by hand), so Lightning's placement and precision missed it
    seen = []

    class Look(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            seen.append((module.lm.model.training, module.generator.training))

    cli = run_cli(micro_world, None, "--trainer.callbacks=[]", "--trainer.logger=false")
    trainer = L.Trainer(
        accelerator="cpu", fast_dev_run=True, callbacks=[Look(), QueryTables()], logger=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(cli.model, datamodule=cli.datamodule)
    assert seen == [(False, True)]
    assert cli.model.to(torch.float64).lm.model.dtype == torch.float64


def test_load_from_checkpoint_scores_like_the_trained_module(fitted_dlp):
    loaded = ProbeModule.load_from_checkpoint(CHECKPOINTS(fitted_dlp.root) / "last.ckpt")
    trained = fitted_dlp.cli.model.eval()
    loaded.eval().set_documents(trained.documents.texts)
    prompts = ["<GN>(3) returns the value ", "<HN>(7) returns the value "]
    with torch.no_grad():
        torch.testing.assert_close(loaded.score(prompts), trained.score(prompts))


def test_resume_from_the_last_checkpoint(micro_world, fitted_dlp, in_tmp):
    shutil.copytree(fitted_dlp.root / "lightning_logs", in_tmp / "lightning_logs")
    resumed = run_cli(micro_world, "fit", *FAST[1:], "--trainer.max_epochs=2", "--ckpt_path=last")
    assert resumed.trainer.current_epoch == 2 and resumed.trainer.global_step == 4


def test_seeded_runs_repeat(micro_world, fitted_dlp, in_tmp):
    tables = '--trainer.callbacks=[{"class_path": "probes.models.QueryTables"}]'
    quiet = ("--trainer.logger=false", tables, "--trainer.enable_checkpointing=false")
    again = run_cli(micro_world, "fit", *FAST, *quiet).model.state_dict()
    for key, value in fitted_dlp.cli.model.state_dict().items():
        torch.testing.assert_close(again[key], value, rtol=0, atol=0)


def test_test_writes_flat_metrics_and_fit_logs_the_recall_figure(micro_world, fitted_dlp, monkeypatch):
    runs = fitted_dlp.root / "lightning_logs" / "dlp"
    assert (runs / "version_0" / "recall_at_k.png").is_file()
    monkeypatch.chdir(fitted_dlp.root)
    cli = run_cli(micro_world, "test", "--ckpt_path=best")
    metrics = json.loads((Path(cli.trainer.log_dir) / "test_metrics.json").read_text())
    for key in ("test/macro/map", "test/macro/recall@10", "test/micro/mrr", "random/test/macro/map"):
        assert 0.0 <= metrics[key] <= 1.0
    # f_new's correctness splits the test queries: the two subsets' counts add up to the whole
    counts = [metrics[f"test/subsets/{name}/count"] for name in ("correct", "incorrect")]
    assert sum(counts) == metrics["test/subsets/base/count"] + metrics["test/subsets/wrapper/count"]


def test_multi_hot_with_by_function_split_is_refused(micro_world, in_tmp):
    """The module refuses it too (train_probe.py already does, before loading: see test_errors.py)."""
    module = ProbeModule(model=str(micro_world.new), n_documents=micro_world.n_documents, split="by_function")
    with pytest.raises(ValueError, match="PairwiseHead"):
        module.configure_model()


def test_cpu_threads_callback_sets_threads_on_cpu_runs_only(in_tmp):
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    torch.set_num_threads(2)
    CpuThreads(1).setup(trainer, L.LightningModule(), "fit")
    assert torch.get_num_threads() == 1
    with pytest.raises(ValueError, match="threads=0"):
        CpuThreads(0)


def test_a_second_fit_keeps_the_first_fits_best_and_test_best_takes_the_latest(
    micro_world, fitted_dlp, in_tmp
):
    # regression: every fit wrote lightning_logs/dlp/checkpoints/best.ckpt, replacing the previous fit's best
    shutil.copytree(fitted_dlp.root / "lightning_logs", in_tmp / "lightning_logs", symlinks=True)
    fitted = run_cli(micro_world, "fit", *FAST, "--seed_everything=1")
    first, second = (
        CHECKPOINTS(in_tmp) / "best.ckpt",
        Path(fitted.trainer.log_dir) / "checkpoints" / "best.ckpt",
    )
    assert first.is_file() and second.is_file() and first.parent != second.parent
    states = [torch.load(path, weights_only=False)["state_dict"] for path in (first, second)]
    assert states[0].keys() == states[1].keys()
    assert any(not torch.equal(states[0][key], states[1][key]) for key in states[0])
    assert (in_tmp / "lightning_logs" / "dlp" / "best.ckpt").resolve() == second.resolve()
    tested = run_cli(micro_world, "test", "--ckpt_path=best")
    assert Path(tested.trainer.ckpt_path).resolve() == second.resolve()


def test_test_best_before_any_fit_says_so(micro_world, in_tmp, capsys):
    # regression: Lightning's "ModelCheckpoint is not configured to save the best model"
    with pytest.raises(SystemExit) as exit_info:
        run_cli(micro_world, "test", "--ckpt_path=best")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert re.search("--ckpt_path best: no fit has saved a best checkpoint.*fit", err)


def test_fit_hides_the_eval_mode_warning_about_f_new_and_restores_the_filters(micro_world, in_tmp):
    """f_new stays in eval mode on purpose and is no submodule (`FrozenLM`), so Lightning has no eval-mode
    module to warn about; nothing changes the process's warning filters to hide it."""
    import warnings

    before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        inner = list(warnings.filters)
        run_cli(micro_world, "fit", "--trainer.fast_dev_run=true")
        assert list(warnings.filters) == inner
    assert not [w for w in caught if "in eval mode" in str(w.message)]
    assert list(warnings.filters) == before
