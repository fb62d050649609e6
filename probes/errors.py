"""User errors: one line on stderr and exit code 2 from every entry point; checks they share up front."""

from __future__ import annotations

import os
import re
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
DEBUG_FLAG = "--debug"


class UserError(ValueError):
    """Something the user can fix (a value, a file, the machine); ValueError, the type every argument check
    in probes raises, so callers that catch ValueError keep working."""


def user_errors() -> tuple[type[BaseException], ...]:
    """What an entry point reports as one line: ValueError (every argument and file check in probes raises
    it), OSError (a path that cannot be read or written) and, once Lightning is loaded, its configuration
    errors (e.g. ``--trainer.accelerator gpu`` without a GPU). Anything else is a bug and keeps its
    traceback."""
    errors: list[type[BaseException]] = [ValueError, OSError]
    lightning = sys.modules.get("lightning.fabric.utilities.exceptions")
    if lightning is not None:
        errors.append(lightning.MisconfigurationException)
    return tuple(errors)


def one_line(err: BaseException) -> str:
    """The error's message on one line (lines joined by '; ')."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return "; ".join(lines) or type(err).__name__


def cli_main(main: Callable[[list[str] | None], T], argv: Sequence[str] | None = None) -> T:
    """``main(argv)``, with a user error ending the process as ``probes: error: <one line>`` on stderr and
    exit code 2. ``--debug`` anywhere in the arguments (removed before ``main`` sees them) or
    ``PROBES_DEBUG=1`` lets the error raise with its traceback. With ``argv`` None, ``main`` gets None and
    reads ``sys.argv`` (LightningCLI warns when given both)."""
    given = sys.argv[1:] if argv is None else list(argv)
    debug = DEBUG_FLAG in given or os.environ.get("PROBES_DEBUG", "0") not in ("", "0")
    args = [a for a in given if a != DEBUG_FLAG]
    if argv is None:
        sys.argv[1:] = args
    try:
        return main(None if argv is None else args)
    except user_errors() as err:
        if debug:
            raise
        print(f"probes: error: {one_line(err)}", file=sys.stderr)
        raise SystemExit(2) from None


def exit_code(main: Callable[[list[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """`cli_main` for a command whose ``main`` returns its exit code: a user error returns 2 (after its one
    line on stderr) instead of raising SystemExit, so ``main(argv)`` can be called from Python."""
    try:
        return cli_main(main, argv)
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else 1


def check_device(device: str, key: str = "device") -> None:
    """Refuse a device string torch cannot parse, or a GPU this machine does not have."""
    import torch

    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise UserError(f"{key}={device!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"{key}={device!r} but no CUDA GPU is available on this machine; use cpu")
        if parsed.index is not None and parsed.index >= count:
            raise UserError(f"{key}={device!r} but this machine has {count} CUDA GPU(s): cuda:0..{count - 1}")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"{key}={device!r} but MPS is not available on this machine; use cpu")


def check_at_least(key: str, value: int | None, low: int = 1, optional: bool = False) -> None:
    """Refuse ``value < low`` (and None unless ``optional``), naming ``key``."""
    if value is None and optional:
        return
    if value is None or value < low:
        raise UserError(f"{key}={value!r} must be >= {low}{' (or null)' if optional else ''}")


def check_writable_folder(path: str | os.PathLike[str], key: str, *, write: bool = False) -> None:
    """Refuse a folder path where a file (or a file among its parents) is in the way; with ``write``, also
    one that cannot be written (a file is created and removed in it, or in the parent it would go into)."""
    for part in (Path(path).expanduser(), *Path(path).expanduser().parents):
        if part.exists():
            if not part.is_dir():
                what = "is" if part == Path(path).expanduser() else f"is inside {str(part)!r}, which is"
                raise UserError(f"{key} {str(path)!r} {what} a file, not a folder; give a folder path")
            if write:
                try:
                    tempfile.TemporaryFile(dir=part).close()
                except OSError as err:
                    raise UserError(
                        f"{key} {str(path)!r} cannot be written ({part}: {err.strerror}); give a folder "
                        "you can write"
                    ) from None
            return


def check_checkpoint(path: str | os.PathLike[str], key: str) -> None:
    """Refuse a checkpoint that is missing, or not a complete torch.save archive (truncated, overwritten),
    by reading its zip records (their CRCs) without unpickling anything."""
    if not Path(path).is_file():
        raise UserError(f"{key} {str(path)!r} is not a file")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise UserError(
            f"{key} {str(path)!r} is not a readable checkpoint (corrupt or truncated: {err})"
        ) from None
    if bad is not None:
        raise UserError(f"{key} {str(path)!r} is corrupt: its record {bad!r} fails its checksum")


def refuse_pickle(path: str | os.PathLike[str], key: str, err: BaseException) -> UserError:
    """The one-line error for a file whose pickle holds objects other than tensors and plain data: torch's
    safe loader refused to run them (and they never run here); its advice to turn that off is left out."""
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
    what = f"an object of {found.group(1)}" if found else "objects other than tensors and plain data"
    return UserError(
        f"{key} {str(path)!r} holds {what} in its pickle, which probes never loads (it could run code); "
        "re-save it with tensors and plain data only (safetensors for weights), or build it again"
    )
