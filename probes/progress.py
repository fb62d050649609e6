"""Progress bars that update in place on a terminal and write a line every few seconds into a file or pipe."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import IO, Any

from tqdm.auto import tqdm

FILE_INTERVAL = 10.0  # seconds between a bar's updates when its output is not a terminal


def interactive(stream: IO | None = None) -> bool:
    """Whether ``stream`` (default stderr, where tqdm writes) is a terminal."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def bar_options(stream: IO | None = None) -> dict[str, Any]:
    """tqdm's settings for a bar on ``stream``: on a terminal the width follows the window; elsewhere (a log
    file, a pipe, a batch job's output) an update at most every FILE_INTERVAL seconds, not thousands of
    carriage-return lines."""
    if interactive(stream):
        return {"dynamic_ncols": True}
    return {"mininterval": FILE_INTERVAL}


def progress_bar(iterable: Iterable | None = None, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)`` with :func:`bar_options` for its output stream (the one helper every
    progress bar of the project goes through)."""
    return tqdm(iterable, **{**bar_options(kwargs.get("file")), **kwargs})
