"""f_new for the DLP: resolved (embedded default or a path), loaded frozen, shareable, never checkpointed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from probes.lm.load import load_model, load_tokenizer

_PRELOADED: dict[str, tuple[object, object]] = {}


def resolve_model_path(model: str | None, corpus_path: str | None = None) -> str:
    """``model`` itself, or for None the embedded tiny pair's f_new (built for the corpus on first use)."""
    if model is not None:
        return str(model)
    from probes.lm.default import ensure_default_pair  # lazy: may build (and cache) the tiny pair

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
