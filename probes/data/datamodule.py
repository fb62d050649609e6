"""HopsDataModule: `probes.data.hops.HopsData` with the train/val/test query loaders, for LightningCLI."""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from probes.data.hops import HopsData
from probes.data.queries import Query


class _QueryBatches(Dataset):
    """Query ids of one split; ``collate`` turns a list of ids into the batch dict (picklable for workers)."""

    def __init__(self, ids: Tensor, queries: list[Query], relevant: Tensor):
        self.ids, self.queries, self.relevant = ids.tolist(), queries, relevant

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> int:
        return self.ids[i]

    def collate(self, ids: list[int]) -> dict:
        qs = [self.queries[i] for i in ids]
        index = torch.tensor(ids, dtype=torch.long)
        return {
            "query_ids": index,
            "prompts": [q.prompt for q in qs],
            "answers": [q.answer for q in qs],
            "relevant": self.relevant[index],
            "is_wrapper": torch.tensor([q.is_wrapper for q in qs], dtype=torch.bool),
        }


class HopsDataModule(HopsData, L.LightningDataModule):
    """HopsData's queries in batches of ``batch_size`` query ids (train shuffled by ``seed``), its options
    saved as the DataModule's hparams (logged and checkpointed by Lightning)."""

    def _set_options(self, options: dict) -> None:
        super()._set_options(options)
        self.save_hyperparameters(options, logger=False)  # the DLP logs them with its own (hp_metric)

    def prepare_data(self) -> None:
        self.resolve_corpus_path(self.options.corpus_path)

    def setup(self, stage: str | None = None) -> None:
        self.prepare()

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        data = _QueryBatches(self.split_ids[split], self.queries, self.relevant)
        generator = torch.Generator().manual_seed(self.options.seed) if shuffle else None
        return DataLoader(
            data, batch_size=self.options.batch_size, shuffle=shuffle, generator=generator,
            collate_fn=data.collate, num_workers=self.options.num_workers,
        )  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """The test queries, in id order (the queries every method is scored on)."""
        return self._loader("test", shuffle=False)
