"""Where probes keeps what it builds once (default corpus, tiny pair, feature caches), and atomic writes."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from probes.errors import check_writable_folder


def path_list(value: str | Sequence[str] | None) -> list[str]:
    """A setting that takes one path or a list of them (or None), as a list."""
    return [] if value is None else [value] if isinstance(value, str) else list(value)


def cache_dir() -> Path:
    """The cache root: ``$PROBES_CACHE`` if set, else ``~/.cache/probes``; a file in its place is refused."""
    root = os.environ.get("PROBES_CACHE")
    path = Path(root).expanduser() if root else Path.home() / ".cache" / "probes"
    check_writable_folder(path, "PROBES_CACHE" if root else "the cache folder")
    return path


@contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` only if the block succeeds.

    Works for a file or a directory written at the yielded path. A crash leaves no partial ``final``.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    target = tmp / final.name
    try:
        yield target
        if final.is_dir() and target.is_dir():
            # replace an existing directory: move the old one aside first, then drop it
            old = tmp / (final.name + ".old")
            os.replace(final, old)
        os.replace(target, final)
    finally:
        _rmtree(tmp)


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
