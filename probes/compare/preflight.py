"""Checks of a comparison that need the loaded pair but no pass over the corpus: each method entry's layer
options against the pair's depth, each DLP checkpoint's corpus by content, and an f_old equal to f_new."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from probes.errors import UserError, check_checkpoint
from probes.files import path_list
from probes.lm.layer_ids import hidden_state_ids
from probes.lm.load import ModelPair

# methods whose scores come from f_new - f_old (Δh, its product with the gradient, patching f_old to f_new):
# with equal weights every score is zero or undefined
DELTA_METHODS = ("delta_h", "attr_weighted", "patching")
LAYER_OPTIONS = ("layers", "layer")  # a hidden-state index spec (probes.lm.layer_ids)


def same_weights(old: torch.nn.Module, new: torch.nn.Module) -> bool:
    """Whether every parameter of f_old equals f_new's (stops at the first that differs)."""
    new_params = dict(new.named_parameters())
    return all(
        name in new_params and torch.equal(param, new_params[name]) for name, param in old.named_parameters()
    )


def check_layers(label: str, settings: dict, layers: int) -> None:
    """Refuse a layer option naming a hidden state the pair does not have, naming the method entry."""
    for key in LAYER_OPTIONS:
        spec = settings.get(key)
        if spec is not None:
            try:
                hidden_state_ids(spec, layers + 1)
            except ValueError as err:
                raise UserError(
                    f"methods entry {label!r}: {err}; the pair has hidden states 0..{layers} (0 = embeddings)"
                ) from None


def _checkpoints(entries) -> list[tuple[str, str]]:
    """(where, path) of every DLP checkpoint among method entries ``(label, method, options, ...)``."""
    found = []
    for label, name, options, *_ in entries:
        paths = path_list(options.get("checkpoint")) if name == "dlp" else []  # a list: a seed ensemble
        where = f"methods entry {label!r}: checkpoint" if label != "dlp" else "dlp_checkpoint"
        found += [(where, path) for path in paths if isinstance(path, str)]
    return found


def check_checkpoints(entries) -> None:
    """Refuse a DLP checkpoint that is corrupt, holds pickled objects or has no content record, before any
    model loads; ``entries`` are compare.py's method entries ``(label, method, options, grid)``."""
    for where, path in _checkpoints(entries):
        from probes.models import provenance  # Lightning: only when a DLP row is asked for

        check_checkpoint(path, where)
        provenance.read(path, where)


def check_against_pair(methods: Sequence[tuple[str, list]], texts: Sequence[str], pair: ModelPair) -> None:
    """``methods`` as `compare.build_methods` returns them ((label, [(options, Method), ...]), ...): refuse
    a bad layer option, a DLP checkpoint trained on other documents (or in another order) or on another
    f_new than the pair's when it names the pair's, and, when f_old's weights equal f_new's, a method that
    needs their difference (warn otherwise). Runs before any pass over the corpus."""
    layers = pair.new.config.num_hidden_layers
    for label, candidates in methods:
        for _, method in candidates:
            check_layers(label, method.settings, layers)
    entries = [(label, c[0][1].name, c[0][1].settings) for label, c in methods]
    for where, path in _checkpoints(entries):
        _check_dlp(where, path, texts, pair)
    if not methods or not same_weights(pair.old, pair.new):
        return
    delta = [label for label, candidates in methods if candidates[0][1].name in DELTA_METHODS]
    where = f"f_old ({pair.old_path}) and f_new ({pair.new_path}) have equal weights"
    if delta:
        raise UserError(
            f"{where}, so f_new - f_old is zero and methods entries {', '.join(map(repr, delta))} would "
            "score nothing; give the pair's two different checkpoints (model.old, model.new)"
        )
    warnings.warn(f"{where}: the pair shows no fine-tuning to attribute", stacklevel=2)


def _check_dlp(where: str, path: str, texts: Sequence[str], pair: ModelPair) -> None:
    """The checkpoint's corpus by content, and its f_new when that is the pair's (`DLPMethod` shares it)."""
    from probes.models import provenance
    from probes.pairs.default import default_pair_dir

    checkpoint = provenance.load_checkpoint(path, where)
    recorded = checkpoint.get(provenance.KEY)
    if recorded is None:
        raise provenance.missing(f"{where} {path}")
    hparams = checkpoint.get("hyper_parameters", {})
    model = hparams.get("model")
    own = model if model is not None else default_pair_dir(hparams.get("corpus_path"), build=False) / "new"
    shared = Path(str(own)).expanduser().resolve() == Path(pair.new_path).expanduser().resolve()
    provenance.check(recorded, texts, pair.new if shared else None, f"{where} {path}", model)
