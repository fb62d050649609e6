"""DLPMethod: a trained DLP checkpoint as compare.py's attribution method ``build_method("dlp", ...)``."""

from __future__ import annotations

import pickle
from contextlib import nullcontext
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor

from probes.errors import refuse_pickle
from probes.files import path_list
from probes.methods import AttributionContext, Method, register
from probes.models import provenance
from probes.models.frozen import preloaded
from probes.models.module import ProbeModule


@register("dlp")
class DLPMethod(Method):
    """Scores queries with the probes of a ProbeModule checkpoint (trained by ``train_probe.py fit``).

    The checkpoint holds only the probe generator and head; f_new is the context's model pair's when it is
    the same checkpoint (so it is not loaded twice), else loaded from the path recorded in the checkpoint.
    Several checkpoints (e.g. the fits of several seeds) score as one seed ensemble: each one's scores are
    standardised per query (`standardised_mean`), so that no fit weighs more for its scale, and averaged.

    Args:
        checkpoint: the ProbeModule checkpoint, e.g. lightning_logs/dlp/best.ckpt (the latest fit's best),
            or a list of them (a seed ensemble).
        batch_size: queries per scoring pass.
        device: where the probes and f_new run ("cpu", "cuda", ...).
    """

    def __init__(self, checkpoint: str | list[str], batch_size: int = 32, device: str = "cpu"):
        paths = path_list(checkpoint)
        if not paths:
            raise ValueError("method 'dlp': checkpoint is an empty list; give one checkpoint or several")
        for path in paths:
            if not Path(path).is_file():
                raise FileNotFoundError(
                    f"method 'dlp': checkpoint {path!r} is not a file; train one with `python "
                    "train_probe.py fit --config configs/dlp.yaml` (then: lightning_logs/dlp/best.ckpt)"
                )
        if batch_size < 1:
            raise ValueError(f"method 'dlp': batch_size={batch_size} must be >= 1")
        super().__init__(checkpoint=checkpoint, batch_size=batch_size, device=device)
        self.paths = paths

    def prepare(self, ctx: AttributionContext) -> None:
        self.modules = [self._load(path, ctx) for path in self.paths]
        for module in self.modules:
            module.set_documents(ctx.corpus.texts)
        self.prompts = [q.prompt for q in ctx.queries]

    def _load(self, checkpoint: str, ctx: AttributionContext) -> ProbeModule:
        pair = ctx.pair
        where = f"method 'dlp': checkpoint {checkpoint}"
        # the multi-hot head's outputs are the training corpus's row indices: the same corpus (in order) and
        # f_new by content; a copy of the corpus at another path is fine. The corpus first, before f_new loads
        recorded = provenance.read(checkpoint, "method 'dlp': checkpoint")
        provenance.check(recorded, ctx.corpus.texts, None, where, None)
        share = preloaded(pair.new_path, pair.new, pair.tokenizer) if pair is not None else nullcontext()
        with share:
            try:
                module = ProbeModule.load_from_checkpoint(checkpoint, map_location="cpu")
            except pickle.UnpicklingError as err:
                raise refuse_pickle(checkpoint, "method 'dlp': checkpoint", err) from None
        provenance.check(recorded, ctx.corpus.texts, module.reader.lm, where, module.hparams.model)
        return module.to(self.settings["device"]).eval()

    @torch.no_grad()
    def score(self, query_ids: Int[Tensor, " q"]) -> Float[Tensor, "q n"]:
        rows = []
        for chunk in query_ids.split(self.settings["batch_size"]):
            prompts = [self.prompts[i] for i in chunk.tolist()]
            scores = [module.score(prompts).float().cpu() for module in self.modules]
            rows.append(scores[0] if len(scores) == 1 else standardised_mean(scores))
        return torch.cat(rows) if rows else torch.zeros(0, len(self.modules[0].documents))


def standardised_mean(scores: list[Float[Tensor, "q n"]]) -> Float[Tensor, "q n"]:
    """The mean of several score matrices, each standardised per query (mean 0, sd 1 over the documents)."""
    return torch.stack(
        [(s - s.mean(1, keepdim=True)) / s.std(1, keepdim=True).clamp_min(1e-12) for s in scores]
    ).mean(0)
