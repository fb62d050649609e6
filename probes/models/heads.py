"""DLP heads: one shared response projection, then a multi-hot classifier or a pairwise bilinear scorer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from probes.errors import UserError


def check_head_split(multi_hot: bool, split: str) -> None:
    """Refuse the multi-hot head on a ``by_function`` split: its outputs are the training functions' documents
    and it cannot rank those of held-out functions."""
    if multi_hot and split == "by_function":
        raise UserError(
            "model.head MultiHotHead cannot rank documents of held-out functions (data.split="
            "by_function): use model.head.class_path=probes.models.PairwiseHead (see "
            "configs/dlp-heldout-functions.yaml)"
        )


class Head(nn.Module):
    """Shared part: every probe's response goes through one projection; the k projections are concatenated.

    Args:
        response_dim: size of one response (the LM's hidden size, or the number of candidates for logprobs).
        num_probes: k.
        projection_dim: output size of the shared projection (per probe).
        dropout: dropout on the concatenated projections (the regulariser of a small training set).
    """

    uses_documents: ClassVar[bool] = False

    def __init__(self, response_dim: int, num_probes: int, projection_dim: int = 64, dropout: float = 0.3):
        super().__init__()
        if not 0 <= dropout < 1:
            raise ValueError(f"head dropout={dropout}: must be in [0, 1)")
        self.projection = nn.Sequential(nn.LayerNorm(response_dim), nn.Linear(response_dim, projection_dim))
        self.dropout = nn.Dropout(dropout)
        self.embedding_dim = num_probes * projection_dim

    def embed(self, responses: Float[Tensor, "b k r"]) -> Float[Tensor, "b e"]:
        return self.dropout(self.projection(responses).flatten(1))


class MultiHotHead(Head):
    """Classifier C: logits over the n training documents from the concatenated probe responses.

    Trained against the multi-hot influencer vector: soft-label cross-entropy against it normalised to sum 1
    (``loss: soft_ce``), or independent binary cross-entropy per document (``loss: bce``). Only documents seen
    as influencers in training get a useful logit, so this head needs every function in the training split.

    Args:
        response_dim: size of one response (given by ProbeModule).
        num_probes: k (given by ProbeModule).
        n_documents: n (given by ProbeModule, linked from the data).
        projection_dim: output size of the shared projection (per probe).
        dropout: dropout before the classifier.
        loss: "soft_ce" or "bce".
    """

    def __init__(
        self,
        response_dim: int,
        num_probes: int,
        n_documents: int,
        projection_dim: int = 64,
        dropout: float = 0.3,
        loss: Literal["soft_ce", "bce"] = "soft_ce",
    ):
        super().__init__(response_dim, num_probes, projection_dim, dropout)
        if loss not in ("soft_ce", "bce"):
            raise ValueError(f"head loss={loss!r}: choose 'soft_ce' or 'bce'")
        self.loss_kind = loss
        self.classifier = nn.Linear(self.embedding_dim, n_documents)

    def forward(self, queries: Float[Tensor, "b k r"], documents: None = None) -> Float[Tensor, "b n"]:
        return self.classifier(self.embed(queries))

    def loss(self, scores: Float[Tensor, "b n"], relevant: Bool[Tensor, "b n"]) -> Float[Tensor, ""]:
        target = relevant.to(scores.dtype)
        if self.loss_kind == "bce":
            return F.binary_cross_entropy_with_logits(scores, target)
        target = target / target.sum(-1, keepdim=True).clamp_min(1)
        return -(target * scores.log_softmax(-1)).sum(-1).mean()


class PairwiseHead(Head):
    """Bilinear score between a query's and a document's probe responses (same probes on both texts).

    Nothing is tied to a document index, so it ranks documents of functions never seen in training. Trained
    with multi-positive InfoNCE: each step scores the batch against a sampled set of documents (some
    positives of every query plus uniform negatives), so a step costs ``b * positives_per_query + negatives``
    document passes instead of n.

    Args:
        response_dim: size of one response (given by ProbeModule).
        num_probes: k (given by ProbeModule).
        n_documents: n (given by ProbeModule; used to sample documents).
        projection_dim: output size of the shared projection (per probe).
        dropout: dropout on the concatenated projections.
        temperature: InfoNCE temperature on the cosine-normalised bilinear score.
        positives_per_query: positives sampled per query per step.
        negatives: documents sampled uniformly per step (shared by the batch).
    """

    uses_documents: ClassVar[bool] = True

    def __init__(
        self,
        response_dim: int,
        num_probes: int,
        n_documents: int,
        projection_dim: int = 64,
        dropout: float = 0.1,
        temperature: float = 0.1,
        positives_per_query: int = 2,
        negatives: int = 64,
    ):
        super().__init__(response_dim, num_probes, projection_dim, dropout)
        if temperature <= 0 or positives_per_query < 1 or negatives < 0:
            raise ValueError(
                f"pairwise head: temperature={temperature} must be > 0, positives_per_query="
                f"{positives_per_query} >= 1, negatives={negatives} >= 0"
            )
        self.n_documents, self.temperature = n_documents, temperature
        self.positives_per_query, self.negatives = positives_per_query, negatives
        self.bilinear = nn.Parameter(torch.eye(self.embedding_dim))

    def forward(
        self, queries: Float[Tensor, "b k r"], documents: Float[Tensor, "n k r"] | None = None
    ) -> Float[Tensor, "b n"]:
        if documents is None:
            raise ValueError("the pairwise head scores against document responses: pass `documents`")
        q = F.normalize(self.embed(queries), dim=-1)
        d = F.normalize(self.embed(documents), dim=-1)
        return (q @ self.bilinear) @ d.T / self.temperature

    def sample_documents(self, relevant: Bool[Tensor, "b n"]) -> Int[Tensor, " n2"]:
        """Sorted unique document ids: up to ``positives_per_query`` positives per query, plus negatives."""
        weights = relevant.float()
        has = weights.sum(-1) > 0
        picks = [torch.randint(0, relevant.shape[1], (self.negatives,), device=relevant.device)]
        if has.any():
            per = min(self.positives_per_query, int(weights[has].sum(-1).min()))
            picks.append(torch.multinomial(weights[has], per).flatten())
        return torch.cat(picks).unique()

    def loss(self, scores: Float[Tensor, "b n2"], relevant: Bool[Tensor, "b n2"]) -> Float[Tensor, ""]:
        """Multi-positive InfoNCE: -log(softmax mass on the positives); skips queries with no positive."""
        has = relevant.any(-1)
        if not has.any():
            return scores.sum() * 0.0
        positive = scores.masked_fill(~relevant, float("-inf")).logsumexp(-1)
        return (scores.logsumexp(-1) - positive)[has].mean()

    def batch_loss(self, scores: Float[Tensor, "b n2"], batch: dict, documents: Int[Tensor, " n2"]):
        """The training loss of a step's scores against ``documents`` (sampled by `sample_documents`)."""
        return self.loss(scores, batch["relevant"][:, documents])


class InfluenceHead(PairwiseHead):
    """The pairwise head trained on measured influence instead of the structural labels.

    The scorer is PairwiseHead's; the target is one or more folders of `probes.models.influence` (the exact
    oracle's matrix or counterfactual retrains, of the training and validation queries), read on the first
    step that needs them, so a checkpoint scores without them. Each step scores the batch against
    ``documents`` documents drawn uniformly (no labels); validation scores every document.

    Args:
        response_dim: size of one response (given by ProbeModule).
        num_probes: k (given by ProbeModule).
        n_documents: n (given by ProbeModule).
        target: target folders (`python -m probes.counterfactual oracle|build --split train|validation`).
        projection_dim: output size of the shared projection (per probe).
        dropout: dropout on the concatenated projections.
        temperature: scale of the normalised bilinear score (the correlation losses ignore it).
        documents: documents drawn per step (all of them when n is smaller).
        labels: weight of the structural labels' multi-positive InfoNCE (`PairwiseHead.loss`) on the same
            drawn documents, added to the influence loss; 0 (the default) trains on measured influence only.
            An ablation: does anchoring the head to the query's function help it on functions it never saw?
    """

    def __init__(
        self,
        response_dim: int,
        num_probes: int,
        n_documents: int,
        target: list[str],
        projection_dim: int = 64,
        dropout: float = 0.1,
        temperature: float = 0.1,
        documents: int = 256,
        labels: float = 0.0,
    ):
        super().__init__(response_dim, num_probes, n_documents, projection_dim, dropout, temperature, 1, 0)
        if not target or documents < 2 or labels < 0:
            raise ValueError(
                f"influence head: target={target} must name a folder; documents={documents} >= 2; "
                f"labels={labels} >= 0"
            )
        self.target_folders, self.documents_per_step, self.labels = list(target), documents, labels
        self._targets: list | None = None

    def targets(self, texts: Sequence[str]) -> list:
        """The target folders, loaded once and checked against the training documents' texts."""
        if self._targets is None:
            from probes.models.influence import InfluenceTarget

            self._targets = [InfluenceTarget(folder) for folder in self.target_folders]
            for target in self._targets:
                target.check_documents(texts)
        return self._targets

    def describe(self) -> list[dict]:
        """What the checkpoint records of the targets (empty before they are read)."""
        return [target.describe() for target in self._targets or []]

    def sample_documents(self, relevant: Bool[Tensor, "b n"]) -> Int[Tensor, " n2"]:
        n = relevant.shape[1]
        return torch.randperm(n, device=relevant.device)[: self.documents_per_step].sort().values

    def batch_loss(self, scores: Float[Tensor, "b n2"], batch: dict, documents: Int[Tensor, " n2"]):
        from probes.models.influence import influence_loss

        loss = influence_loss(self._targets or [], scores, batch["query_ids"].tolist(), documents)
        if loss is None:
            raise UserError(
                f"influence target {', '.join(self.target_folders)} covers none of this batch's queries: "
                "build it on this data config's training and validation splits (`--split train`, "
                "`--split validation`)"
            )
        if self.labels:
            loss = loss + self.labels * self.loss(scores, batch["relevant"][:, documents])
        return loss
