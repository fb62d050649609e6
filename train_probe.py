"""The DLP main job: ``python train_probe.py fit --config configs/dlp.yaml`` (also validate/test/predict)."""

from __future__ import annotations

from lightning.pytorch.cli import LightningCLI

from probes.data.datamodule import HopsDataModule
from probes.models import BestCheckpoint, ProbeModule


class ProbeCLI(LightningCLI):
    """LightningCLI over ProbeModule and HopsDataModule; the data's corpus, split and sizes feed the model."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.corpus_path", "model.corpus_path")
        parser.link_arguments("data.split", "model.split")
        # known only once the DataModule has loaded its corpus
        parser.link_arguments("data.num_documents", "model.n_documents", apply_on="instantiate")
        parser.link_arguments("data.candidates", "model.candidates", apply_on="instantiate")

    def _latest_best(self) -> None:
        """``--ckpt_path best`` in a fresh process: the latest fit's best checkpoint (see BestCheckpoint)."""
        if self.config_init[self.subcommand].get("ckpt_path") == "best":
            for callback in self.trainer.checkpoint_callbacks:
                if isinstance(callback, BestCheckpoint):
                    callback.use_latest_best(self.trainer)

    before_validate = before_test = before_predict = _latest_best


def main(args: list[str] | None = None, run: bool = True) -> ProbeCLI:
    return ProbeCLI(ProbeModule, HopsDataModule, args=args, run=run)


if __name__ == "__main__":
    main()
