"""The DLP main job: ``python train_probe.py fit --config configs/dlp.yaml`` (also validate/test/predict).

A user error ends with one line on stderr and exit code 2; ``--debug`` (or ``PROBES_DEBUG=1``) shows its
traceback."""

from __future__ import annotations

from lightning.pytorch.cli import LightningCLI

from probes.data.datamodule import HopsDataModule
from probes.errors import check_checkpoint, cli_main
from probes.models import BestCheckpoint, ProbeModule, provenance
from probes.models.heads import check_head_split
from probes.pairs.overlay import expand


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
        """Refuse combinations of options before anything loads (ProbeModule checks them again later)."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        head = str(config.model.head.class_path if "class_path" in config.model.head else "")
        check_head_split(head.endswith("MultiHotHead"), config.data.split)


def main(args: list[str] | None = None, run: bool = True) -> ProbeCLI:
    """The CLI on ``args`` (None: the command line), a pair overlay's ``--config`` read as its DLP keys."""

    def cli(argv: list[str] | None) -> ProbeCLI:
        return ProbeCLI(ProbeModule, HopsDataModule, args=expand(argv, "train_probe"), run=run)

    return cli_main(cli, args)


if __name__ == "__main__":
    main()
