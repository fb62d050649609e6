"""f_new for the DLP: resolved (embedded default or a path), loaded frozen, shareable, never checkpointed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from torch import nn

from probes.lm.load import load_model, load_tokenizer

_PRELOADED: dict[str, tuple[object, object]] = {}


def resolve_model_path(model: str | None, corpus_path: str | None = None) -> str:
    """``model`` itself, or for None the embedded tiny pair's f_new (built for the corpus on first use)."""
    if model is not None:
        return str(model)
    from probes.pairs.default import ensure_default_pair

    return str(ensure_default_pair(corpus_path)[1])


def _key(path: str | Path) -> str:
    """Local directories by their resolved path (so "./x" and "/abs/x" match), hub ids as given."""
    local = Path(path).expanduser()
    return str(local.resolve()) if local.exists() else str(path)


@contextmanager
def preloaded(path: str | Path, lm, tokenizer) -> Iterator[None]:
    """Within the block, a probe whose f_new resolves to ``path`` uses this already loaded model."""
    key = _key(path)
    _PRELOADED[key] = (lm, tokenizer)
    try:
        yield
    finally:
        _PRELOADED.pop(key, None)


def frozen_lm(model: str | None, corpus_path: str | None = None, dtype: str = "float32"):
    """(f_new, tokenizer): eval mode, every parameter with requires_grad False."""
    path = resolve_model_path(model, corpus_path)
    if _key(path) in _PRELOADED:
        lm, tokenizer = _PRELOADED[_key(path)]
    else:
        lm, tokenizer = load_model(path, dtype=dtype), load_tokenizer(path)
    return lm.eval().requires_grad_(False), tokenizer


class FrozenLM(nn.Module):
    """f_new for the probes: frozen and in eval mode, moved and cast with the module that holds it (its
    ``_apply``), yet none of that module's parameters, submodules or state: a checkpoint holds the probes
    only, the optimiser never sees f_new, and Lightning's train/eval switches never reach it."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self._held = (lm.eval().requires_grad_(False),)  # a tuple: not registered as a submodule

    @property
    def model(self) -> nn.Module:
        return self._held[0]

    def _apply(self, fn, recurse: bool = True):
        self.model._apply(fn, recurse)
        return super()._apply(fn, recurse)
