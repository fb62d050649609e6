"""Measured influence as the DLP's training target: the exact oracle's [q, n] matrix or retrains.

A target folder is either `python -m probes.counterfactual oracle`'s (``oracle.safetensors``: ``scores``
[q, n], ``query_ids`` [q]) or `python -m probes.counterfactual build`'s (``ground_truth.safetensors``:
``masks`` [M, n] of the kept documents, ``outputs`` [M, K, q] answer log-probabilities, the query ids in its
manifest). Both give a loss of the head's scores for the queries they cover, on the documents of a step:

- ``oracle``: 1 - the Pearson correlation, per query, between the scores and the oracle's row (the ranking
  and the subset sums of an affine copy of the oracle are the oracle's own);
- ``counterfactual`` (AirRep-style): 1 - the Pearson correlation, per query, over the M subsets between the
  summed scores of each subset's documents and the retrained models' mean answer log-probability, the
  linear datamodel that the LDS then scores on other subsets.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from jaxtyping import Float, Int
from safetensors.torch import load_file
from torch import Tensor

from probes.errors import UserError
from probes.hashing import content_hash, file_sha256
from probes.measured import GROUND_TRUTH_FILE, ORACLE_FILE, checked_manifest, read_oracle


def pearson(x: Float[Tensor, "b m"], y: Float[Tensor, "b m"]) -> Float[Tensor, " b"]:
    """Row-wise Pearson correlation (0 for a constant row)."""
    x, y = x - x.mean(-1, keepdim=True), y - y.mean(-1, keepdim=True)
    return (x * y).sum(-1) / (x.norm(dim=-1) * y.norm(dim=-1)).clamp_min(1e-12)


class InfluenceTarget:
    """One target folder: its kind, its tensors and the row of each query id it covers."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        what = "influence target"
        if (self.folder / ORACLE_FILE).is_file():
            self.manifest, scores, ids = read_oracle(self.folder, what)
            self.kind, self.scores = "oracle", scores.double()
        else:
            self.manifest = checked_manifest(self.folder, what)
            if not (self.folder / GROUND_TRUTH_FILE).is_file():
                raise UserError(f"{what} {self.folder}: neither {ORACLE_FILE} nor {GROUND_TRUTH_FILE}")
            self.kind, tensors = "counterfactual", load_file(str(self.folder / GROUND_TRUTH_FILE))
            self.masks: Tensor = tensors["masks"].double()
            outputs = tensors["outputs"].double()  # [M, K, q] (version 1: [M, q], one seed)
            outputs = outputs if outputs.dim() == 2 else outputs.mean(1)  # the seed mean, [M, q]
            self.outputs: Tensor = outputs.T.contiguous()  # [q, M]
            ids = self.manifest["queries"]["ids"]
        self.rows = {int(q): i for i, q in enumerate(ids)}

    def check_documents(self, texts: Sequence[str]) -> None:
        """Refuse a target computed for other documents (count, or the texts in order when recorded)."""
        documents = self.manifest.get("documents", {})
        n = self.scores.shape[1] if self.kind == "oracle" else self.masks.shape[1]
        recorded = documents.get("texts")
        if n != len(texts) or (recorded is not None and recorded != content_hash(list(texts))):
            raise UserError(
                f"influence target {self.folder}: computed for other training documents ({n} there, "
                f"{len(texts)} here, or other texts): use the data's corpus and pair"
            )

    def loss(
        self, scores: Float[Tensor, "b n2"], query_ids: Sequence[int], documents: Int[Tensor, " n2"]
    ) -> tuple[Float[Tensor, " c"], list[int]]:
        """1 - correlation for each covered query of the batch, and their positions in the batch."""
        covered = [i for i, q in enumerate(query_ids) if int(q) in self.rows]
        rows = torch.tensor([self.rows[int(query_ids[i])] for i in covered], dtype=torch.long)
        predicted = scores[covered].double()
        cols = documents.cpu()
        if self.kind == "oracle":
            target = self.scores[rows][:, cols].to(predicted.device)
            return 1 - pearson(predicted, target), covered
        masks = self.masks[:, cols].to(predicted.device)  # [M, n2]
        target = self.outputs[rows].to(predicted.device)  # [c, M]
        return 1 - pearson(predicted @ masks.T, target), covered

    def describe(self) -> dict:
        """What a checkpoint records of it: the folder, kind, loss, queries, SHA-256 and provenance."""
        tensors = ORACLE_FILE if self.kind == "oracle" else GROUND_TRUTH_FILE
        regime = {k: self.manifest.get(k) for k in ("regime", "subsets", "fraction", "drop", "seeds")}
        return {
            "folder": str(self.folder),
            "kind": self.kind,
            "loss": "1 - pearson(scores, oracle row)"
            if self.kind == "oracle"
            else "1 - pearson(subset sums of scores, seed-mean retrained log-prob) over subsets",
            "queries": len(self.rows),
            "split": self.manifest.get("split" if self.kind == "oracle" else "query_split"),
            "sha256": file_sha256(self.folder / tensors),
            **({} if self.kind == "oracle" else {"regime": regime}),
        }


def influence_loss(
    targets: Sequence[InfluenceTarget],
    scores: Float[Tensor, "b n2"],
    query_ids: Sequence[int],
    documents: Int[Tensor, " n2"],
) -> Float[Tensor, ""] | None:
    """Mean over the batch's covered queries of their target's loss (a query's first covering target); None
    when no target covers any of them."""
    left, losses = list(range(len(query_ids))), []
    for target in targets:
        loss, covered = target.loss(scores[left], [query_ids[i] for i in left], documents)
        losses.append(loss)
        left = [i for j, i in enumerate(left) if j not in set(covered)]
    every = torch.cat(losses)
    return every.mean() if len(every) else None
