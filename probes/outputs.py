"""Output folders and files a command may write: it refuses any that hold what it did not write."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path


class OutputRefused(ValueError):
    """The output path holds something the command did not write (or an input the command would replace)."""


def foreign_entries(folder: Path, own: Iterable[str]) -> list[str]:
    """Names in ``folder`` other than ``own`` and the leftovers of an interrupted atomic write of one."""
    own = {name.rstrip("/") for name in own}
    leftover = re.compile(r"^\.(" + "|".join(map(re.escape, own)) + r")\..*\.tmp$") if own else None
    return sorted(
        entry.name
        for entry in folder.iterdir()
        if entry.name not in own and not (leftover and leftover.match(entry.name))
    )


def check_output_folder(
    folder: str | os.PathLike[str],
    own: Iterable[str],
    *,
    overwrite: bool,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    marker: str | None = None,
    flag: str = "--overwrite",
) -> None:
    """Refuse ``folder`` unless it is missing, empty or holds only entries named ``own`` (the command's own
    earlier output, which also has ``marker`` when one is given), or ``overwrite`` allows it; refuse always
    when an input is (or lies inside) one of the ``own`` entries, which the command would replace. The
    command writes only its ``own`` entries: the others are never touched."""
    folder = Path(folder)
    own = [name.rstrip("/") for name in own]
    if folder.exists() and not folder.is_dir():
        raise OutputRefused(f"{folder} is a file, not a folder; give a folder for the output")
    for path in filter(None, inputs):
        path = Path(path).resolve()
        for name in own:
            entry = (folder / name).resolve()
            if path == entry or entry in path.parents:
                raise OutputRefused(
                    f"{path} is an input but the output in {folder} replaces {entry}; move it or choose "
                    "another output folder"
                )
    if folder.is_dir() and not overwrite:
        foreign, unmarked = foreign_entries(folder, own), ""
        if not foreign and marker and not (folder / marker).exists():
            foreign = sorted(entry.name for entry in folder.iterdir() if entry.name in own)
            unmarked = f" without its {marker}"
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            shown += unmarked
            raise OutputRefused(
                f"{folder} holds files this command did not write ({shown}); choose another folder, or give "
                f"{flag} to write {', '.join(own)} there (the other files are kept)"
            )


def check_output_file(path: str | os.PathLike[str], content: str, *, overwrite: bool) -> bool:
    """Whether ``path`` needs writing: False when it already holds ``content`` exactly; refuse a folder, or
    another file unless ``overwrite``."""
    path = Path(path)
    if path.is_dir():
        raise OutputRefused(f"{path} is a folder; give a file name for the output")
    if not path.exists():
        return True
    if path.read_bytes() == content.encode("utf-8"):
        return False
    if not overwrite:
        raise OutputRefused(f"{path} exists with other content; choose another file, or give --overwrite")
    return True
