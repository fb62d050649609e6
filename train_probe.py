"""The DLP main job: ``python train_probe.py fit --config configs/dlp.yaml`` (also validate/test/predict).

A user error ends with one line on stderr and exit code 2; ``--debug`` (or ``PROBES_DEBUG=1``) shows its
traceback."""

from __future__ import annotations

import probes  # noqa: F401 # isort: skip  (first: its OpenMP wait policy must precede torch)
from pathlib import Path

from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from probes.data.datamodule import HopsDataModule
from probes.errors import check_checkpoint, cli_main
from probes.models import BestCheckpoint, ProbeModule, ProgressBar, provenance
from probes.models.heads import check_head_split
from probes.pairs.overlay import expand


class SaveConfig(SaveConfigCallback):
    """The run's config.yaml; a test/validate/predict that joins its fit's run folder writes its own
    ``config_<stage>.yaml`` beside it (replacing an earlier one) instead of refusing the fit's."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            self.config_filename, self.overwrite = f"config_{getattr(stage, 'value', stage)}.yaml", True
        super().setup(trainer, pl_module, stage)


class ProbeCLI(LightningCLI):
    """LightningCLI over ProbeModule and HopsDataModule; the data's corpus, split and sizes feed the model."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.corpus_path", "model.corpus_path")
        parser.link_arguments("data.split", "model.split")
        # known only once the DataModule has loaded its corpus
        parser.link_arguments("data.num_documents", "model.n_documents", apply_on="instantiate")
        parser.link_arguments("data.candidates", "model.candidates", apply_on="instantiate")

    def parse_arguments(self, parser, args) -> None:
        """Parse, then refuse a corrupt ``--ckpt_path`` file in one line: LightningCLI reads its
        hyperparameters right after parsing, which fails deep inside ``torch.load`` on a damaged file."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if path is not None and path not in ("best", "last", "hpc", "registry"):
            check_checkpoint(path, "--ckpt_path")
            provenance.load_checkpoint(path, "--ckpt_path")  # a pickled object: one line, never run

    def _latest_best(self) -> None:
        """``--ckpt_path best`` in a fresh process: the latest fit's best checkpoint (see BestCheckpoint),
        checked like a given file."""
        if self.config_init[self.subcommand].get("ckpt_path") == "best":
            for callback in self.trainer.checkpoint_callbacks:
                if isinstance(callback, BestCheckpoint):
                    callback.use_latest_best(self.trainer)
                    check_checkpoint(callback.best_model_path, "--ckpt_path best")

    before_validate = before_test = before_predict = _latest_best

    def before_instantiate_classes(self) -> None:
        """Refuse combinations of options before anything loads (ProbeModule checks them again later); a
        fit's checkpoint is tested (validated, predicted) in that fit's run folder."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        head = str(config.model.head.class_path if "class_path" in config.model.head else "")
        check_head_split(head.endswith("MultiHotHead"), config.data.split)
        if self.subcommand in ("validate", "test", "predict"):
            join_fit_run(config)

    def instantiate_trainer(self, **kwargs):
        """The Trainer, with our ProgressBar unless the config names a progress bar or turns bars off."""
        trainer = self._get(self.config_init, "trainer", default={})
        callbacks = list(trainer.get("callbacks") or [])
        if trainer.get("enable_progress_bar") is not False and not any(
            isinstance(c, TQDMProgressBar | RichProgressBar) for c in callbacks
        ):
            kwargs.setdefault("callbacks", [*callbacks, ProgressBar()])
        return super().instantiate_trainer(**kwargs)


def join_fit_run(config) -> None:
    """Point the logger at the run folder (version_N) of the fit whose checkpoint ``ckpt_path`` names (a file
    in ``<save_dir>/<name>/version_N/checkpoints/``, or best/last: the links to the latest fit's), so a test
    logs beside its fit in TensorBoard; other checkpoints, a logger list or a set version are left alone."""
    logger, path = config.trainer.get("logger"), config.get("ckpt_path")
    args = getattr(logger, "init_args", None)
    if path is None or args is None or "version" not in args or args.version is not None:
        return
    runs = Path(args.get("save_dir") or ".") / str(args.get("name") or "lightning_logs")
    checkpoint = (runs / f"{path}.ckpt" if path in ("best", "last") else Path(path)).resolve()
    if checkpoint.parent.name == "checkpoints" and checkpoint.parent.parent.parent == runs.resolve():
        args.version = checkpoint.parent.parent.name


def main(args: list[str] | None = None, run: bool = True) -> ProbeCLI:
    """The CLI on ``args`` (None: the command line), a pair overlay's ``--config`` read as its DLP keys."""

    def cli(argv: list[str] | None) -> ProbeCLI:
        return ProbeCLI(
            ProbeModule,
            HopsDataModule,
            save_config_callback=SaveConfig,
            args=expand(argv, "train_probe"),
            run=run,
        )

    return cli_main(cli, args)


if __name__ == "__main__":
    main()
