"""BestCheckpoint keeps the best epoch in best.ckpt and the latest in last.ckpt (Lightning 2.6 wrote
last.ckpt only when a top-k checkpoint was written, so with top-1 it held the best epoch and resuming lost
the later ones)."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from probes.models import BestCheckpoint


class Falling(L.LightningModule):
    """A linear model whose monitored validation score falls every epoch: the best epoch is the first."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, _):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, _):
        self.log("val/score", -float(self.current_epoch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_last_checkpoint_is_the_last_epoch_and_best_the_best(tmp_path):
    data = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4)
    trainer = L.Trainer(
        max_epochs=3, accelerator="cpu", logger=False, default_root_dir=tmp_path, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0,
        callbacks=[BestCheckpoint(monitor="val/score", mode="max")],
    )  # fmt: skip
    module = Falling()
    trainer.fit(module, data, data)
    folder = tmp_path / "checkpoints"
    last = torch.load(folder / "last.ckpt", weights_only=False)
    best = torch.load(folder / "best.ckpt", weights_only=False)
    assert last["global_step"] == trainer.global_step == 6
    torch.testing.assert_close(last["state_dict"]["layer.weight"], module.layer.weight)
    assert best["global_step"] == 2  # the first epoch's score is the best
