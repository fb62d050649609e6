"""Output folders a command owns by content: a marker it writes first, naming the command and every file it
wrote with its SHA-256. A command writes into (or deletes from) a folder only under its own marker, removes
only the files that marker records, and a later command reads those files only when their checksums hold."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from probes.files import atomic_path
from probes.hashing import failed_files, file_checksums, files_under

MARKER = "probes-output.json"  # {"kind": command, "settings": {...}, "files": {relative path: sha256}}
LEFTOVER = re.compile(r"^\..+\.tmp$")  # probes.files.atomic_path's folder for a write a kill interrupted


def _leftover(folder: Path, path: Path) -> bool:
    """Whether ``path`` lies in what an interrupted atomic write left in ``folder`` (the command's own)."""
    return any(LEFTOVER.match(part) for part in path.relative_to(folder).parts[:-1])


class OutputRefused(ValueError):
    """The output path holds something the command did not write (or an input the command would replace)."""


def read_marker(folder: str | os.PathLike[str]) -> dict | None:
    """The folder's marker, or None when it has none (or one that is not a marker's JSON object)."""
    path = Path(folder) / MARKER
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = isinstance(marker, dict) and isinstance(marker.get("kind"), str)
    return marker if ok and isinstance(marker.get("files"), dict) else None


@dataclass
class Output:
    """An output folder claimed by the command ``kind`` (its marker written); what it writes is recorded."""

    folder: Path
    kind: str

    def _marker(self) -> dict:
        marker = read_marker(self.folder)
        if marker is None or marker["kind"] != self.kind:
            raise OutputRefused(
                f"{self.folder / MARKER} no longer names {self.kind}: another command took it"
            )
        return marker

    def _write(self, marker: dict) -> None:
        with atomic_path(self.folder / MARKER) as tmp:
            tmp.write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")

    def record(self, *names: str) -> None:
        """Record every file among or under ``names`` (written by the command) with its SHA-256."""
        marker = self._marker()
        prefixes = [name.rstrip("/") for name in names]
        marker["files"] = {
            path: sha
            for path, sha in marker["files"].items()
            if not any(path == p or path.startswith(p + "/") for p in prefixes)
        }
        marker["files"].update(file_checksums(self.folder, names))
        self._write(marker)

    def remove(self, name: str) -> list[str]:
        """Delete the recorded files among or under ``name`` and the folders they leave empty; return the
        files there that the command did not write (kept)."""
        marker, root = self._marker(), self.folder / name.rstrip("/")
        for path in files_under(self.folder, [name]):
            relative = path.relative_to(self.folder).as_posix()
            if relative in marker["files"] or _leftover(self.folder, path):
                path.unlink()
                marker["files"].pop(relative, None)
        self._write(marker)
        for sub in sorted((p for p in root.rglob("*") if p.is_dir()), reverse=True) if root.is_dir() else []:
            if not any(sub.iterdir()):
                sub.rmdir()
        if root.is_dir() and not any(root.iterdir()):
            root.rmdir()
        return [str(path) for path in files_under(self.folder, [name])]

    def verify(self, name: str) -> Path:
        """``folder/name`` once its bytes are those recorded when the command wrote it."""
        path = self.folder / name
        recorded = self._marker()["files"].get(name)
        if recorded is None:
            raise OutputRefused(
                f"{path} has no checksum in {self.folder / MARKER} (not written by this version of "
                f"{self.kind}); write it again"
            )
        failed = failed_files(self.folder, {name: recorded})
        if failed:
            raise OutputRefused(f"{failed[0]}; write it again with {self.kind}")
        return path


def owned(folder: str | os.PathLike[str], kind: str) -> Output:
    """The output of ``kind`` in ``folder`` (to verify what it wrote); refuse a folder without its marker."""
    folder = Path(folder)
    marker = read_marker(folder)
    if marker is None or marker["kind"] != kind:
        what = "has no" if marker is None else f"has the {marker['kind']!r} output's"
        raise OutputRefused(
            f"{folder} {what} {MARKER} of {kind}: not its output (or written before outputs were "
            f"checksummed); write it again with {kind}"
        )
    return Output(folder, kind)


def _check_inputs(folder: Path, own: list[str], inputs: Iterable[str | os.PathLike[str] | None]) -> None:
    for path in filter(None, inputs):
        path = Path(path).resolve()
        for name in [*own, MARKER]:
            entry = (folder / name).resolve()
            if path == entry or entry in path.parents:
                raise OutputRefused(
                    f"{path} is an input but the output in {folder} replaces {entry}; move it or choose "
                    "another output folder"
                )


def _refuse_unrecorded(folder: Path, own: list[str], recorded: dict, kind: str, why: str) -> None:
    """Refuse when an entry the command would replace holds a file it did not write (kept: never removed)."""
    foreign = [
        path.relative_to(folder).as_posix()
        for path in files_under(folder, own)
        if path.relative_to(folder).as_posix() not in recorded and not _leftover(folder, path)
    ]
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise OutputRefused(
            f"{folder} holds {shown}, which {kind} did not write ({why}); it would replace them, so it "
            "writes nothing there: move them away or choose another output folder"
        )


def claim_output(
    folder: str | os.PathLike[str],
    kind: str,
    own: Iterable[str],
    *,
    overwrite: bool,
    settings: dict | None = None,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    write: bool = True,
) -> Output:
    """Claim ``folder`` for the command ``kind``, which writes only the entries ``own`` there: check it (up
    front, with ``write`` False), then write its marker before anything else (``write`` True).

    A missing or empty folder, or one with ``kind``'s own marker, is taken; one holding anything else is
    refused unless ``overwrite`` (then the command writes beside the other files). Refused always: an input
    inside an ``own`` entry, a folder another command's marker owns, and an ``own`` entry holding a file the
    marker does not record (the command would replace what it did not write)."""
    folder, own = Path(folder), [name.rstrip("/") for name in own]
    if folder.exists() and not folder.is_dir():
        raise OutputRefused(f"{folder} is a file, not a folder; give a folder for the output")
    _check_inputs(folder, own, inputs)
    marker = read_marker(folder)
    present = folder.is_dir() and any(folder.iterdir())
    if marker is not None and marker["kind"] != kind:
        raise OutputRefused(
            f"{folder} holds the output of {marker['kind']} (its {MARKER}); {kind} writes nothing there: "
            "choose another folder"
        )
    if marker is None and present and not overwrite:
        foreign = sorted(entry.name for entry in folder.iterdir())
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise OutputRefused(
            f"{folder} holds files {kind} did not write ({shown}; no {MARKER} of it); choose another "
            f"folder, or give --overwrite to write {', '.join(own)} beside them (none of them is removed)"
        )
    recorded = marker["files"] if marker is not None else {}
    why = f"not recorded in its {MARKER}" if marker is not None else "the folder has no marker"
    _refuse_unrecorded(folder, own, recorded, kind, why)
    output = Output(folder, kind)
    if not write:
        return output
    try:
        folder.mkdir(parents=True, exist_ok=True)
        output._write({"kind": kind, "settings": settings or {}, "files": recorded})
    except PermissionError as err:
        raise OutputRefused(
            f"output folder {folder} is not writable ({err.strerror}); give another"
        ) from None
    return output


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
