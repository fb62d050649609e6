"""What the library-backed influence methods (`ekfac`, `trackstar`) share: which Linear modules they track,
the texts they differentiate (documents with their own LM loss, queries with the answer loss), batches, and
the true-Fisher loss with labels sampled from the model."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from baselines.ops.example_grads import GROUPS, param_group
from baselines.ops.interpolate import text_loss
from probes.features.extract import query_inputs
from probes.lm.scoring import Tokenized, collate, length_batches, pad_id, tokenize
from probes.methods import OPTIONAL, AttributionContext, check_choice, missing_extra

# the preconditioner's data: the training documents (own LM loss) or the validation queries (answer loss)
FIT_DATA = ("docs", "val_queries")
FISHERS = ("sampled", "empirical")


def require_library(method: str) -> None:
    """Raise saying how to install ``method``'s library (`probes.methods.OPTIONAL`) when it is missing."""
    hint = missing_extra(method)
    if hint is not None:
        raise ModuleNotFoundError(f"method {method!r} needs the library {OPTIONAL[method][0]!r}: {hint}")


def check_common(method: str, modules: Sequence[str], fit_data: str, fisher: str | None = None) -> list[str]:
    """Validate the shared options; returns the module groups (`baselines.ops.example_grads.GROUPS`)."""
    groups = [modules] if isinstance(modules, str) else list(modules)
    for group in groups:
        check_choice(method, "modules", group, ("all", *GROUPS))
    check_choice(method, "fit_data", fit_data, FIT_DATA)
    if fisher is not None:
        check_choice(method, "fisher", fisher, FISHERS)
    return list(GROUPS) if "all" in groups else groups


def tracked_linears(method: str, model: nn.Module, groups: Sequence[str], pattern: str | None) -> list[str]:
    """Names of ``model``'s nn.Linear modules whose weight is in one of ``groups`` and whose name matches
    ``pattern`` (re.search on the module name; None = any), in the model's order; raises when none is."""
    import re

    out = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and param_group(f"{name}.weight") in groups
        and (pattern is None or re.search(pattern, name))
    ]
    if not out:
        raise ValueError(
            f"method {method!r}: modules={list(groups)} with module_filter={pattern!r} select no nn.Linear; "
            f"the model's are e.g. {[n for n, m in model.named_modules() if isinstance(m, nn.Linear)][:6]}"
        )
    return out


class Texts:
    """Every text a method differentiates, as one indexed list: the training documents (loss "lm") then all
    queries (prompt + answer, loss "ce" on the answer token), tokenised exactly as `grad_sim` does."""

    def __init__(self, ctx: AttributionContext, tokenizer):
        docs = tokenize(tokenizer, ctx.corpus.texts)
        texts, targets = query_inputs(ctx.queries)
        self.items: list[Tokenized] = docs + tokenize(tokenizer, texts, targets)
        self.losses = ["lm"] * len(docs) + ["ce"] * len(texts)
        self.n_docs, self.pad = len(docs), pad_id(tokenizer)
        self.options = ctx.pass_options

    def doc_rows(self) -> list[int]:
        return list(range(self.n_docs))

    def query_rows(self, query_ids: Sequence[int]) -> list[int]:
        return [self.n_docs + int(i) for i in query_ids]

    def fit_rows(self, ctx: AttributionContext, fit_data: str) -> list[int]:
        """Rows of the preconditioner's data (`FIT_DATA`)."""
        return self.doc_rows() if fit_data == "docs" else self.query_rows(ctx.val_ids.tolist())

    def batch(self, rows: Sequence[int], device: torch.device | str = "cpu") -> dict[str, Tensor]:
        """The padded batch (right padding) of ``rows``, with ``rows`` itself under "rows"."""
        out = collate([self.items[r] for r in rows], self.pad, "right", device)
        return {**out, "rows": torch.tensor(list(rows), dtype=torch.long)}

    def batches(self, rows: Sequence[int], batch_size: int, max_tokens: int | None) -> list[list[int]]:
        """``rows`` in length batches (`probes.lm.scoring.length_batches`)."""
        index = length_batches([len(self.items[r].ids) for r in rows], batch_size, max_tokens)
        return [[rows[i] for i in batch] for batch in index]

    def loss(
        self, model: nn.Module, batch: dict[str, Tensor], sample: bool = False, seed: int = 0
    ) -> Float[Tensor, "b"]:
        """Each row's own loss (all rows of a batch are of one kind); ``sample``: the same loss with labels
        drawn from the model's own predictive distribution (the true Fisher's), `sampled_loss`."""
        rows = batch["rows"].tolist()
        items, kind = [self.items[r] for r in rows], self.losses[rows[0]]
        if sample:
            return sampled_loss(model, batch, items, kind, seed)
        return text_loss(model, batch, items, kind, options=self.options)


def sampled_loss(
    model: nn.Module, batch: dict[str, Tensor], items: Sequence[Tokenized], loss: str, seed: int = 0
) -> Float[Tensor, "b"]:
    """``loss`` ("lm": every predicted token, averaged; "ce": the target span) with each label drawn from
    the model's (detached) prediction at that position: its gradient's outer product estimates the Fisher
    (= the Gauss-Newton matrix of the cross-entropy). Each text's labels are drawn from a generator seeded by
    ``seed`` and the text's token ids, so they do not depend on its batch or its place in the corpus."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    logits = model(input_ids=ids, attention_mask=mask, position_ids=batch["position_ids"]).logits
    logits = logits.float() if logits.dtype != torch.float64 else logits
    probs = logits.detach().softmax(-1)
    labels = torch.empty(ids.shape, dtype=torch.long, device=ids.device)
    for row, item in enumerate(items):
        generator = torch.Generator(ids.device).manual_seed(zlib.crc32(repr((seed, item.ids)).encode()))
        labels[row] = torch.multinomial(probs[row], 1, generator=generator)[:, 0]
    nll = F.cross_entropy(logits.transpose(1, 2), labels, reduction="none")
    real = mask.bool()
    if loss == "lm":
        used = real[:, 1:] & real[:, :-1]
        used = torch.cat([used, torch.zeros_like(used[:, :1])], 1)
    else:
        used = torch.zeros_like(real)
        for row, item in enumerate(items):
            start = int(batch["offset"][row])
            used[row, start + item.target[0] - 1 : start + item.target[1] - 1] = True
    nll = torch.where(used, nll, torch.zeros((), dtype=nll.dtype, device=nll.device))
    return nll.sum(-1) / used.sum(-1).clamp(min=1)
