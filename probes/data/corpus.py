"""HOPS corpus model: load and validate JSONL rows; resolve each function's wrap target and constant."""

from __future__ import annotations

import functools
import json
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

FUNC_TOKEN_RE = re.compile(r"<[A-Z][A-Za-z0-9_]*>")
DISTRACTOR = "distractor"
REQUIRED = ("uid", "text", "func", "role", "hop_depth", "constant")


class CorpusError(ValueError):
    """A corpus that cannot be used; the message names the file, the line(s) and the field."""


@dataclass(frozen=True)
class Document:
    index: int  # position in the loaded corpus: the document id everywhere else
    line: int  # 1-based line in the source file (row number + 1 for rows given in memory)
    uid: str
    text: str
    func: str
    role: str  # as written in the file: "constant", "identity", "distractor", ...
    type: str
    hop_depth: int
    constant: int | None  # None only for distractors


@dataclass(frozen=True)
class Function:
    name: str
    role: str
    hop_depth: int
    wraps: str | None  # the function this one calls directly; None for a base
    constant: int  # resolved along the chain down to the base
    documents: tuple[int, ...]

    @property
    def is_base(self) -> bool:
        return self.wraps is None

    @property
    def is_wrapper(self) -> bool:
        return self.wraps is not None


@dataclass(frozen=True)
class Corpus:
    path: Path | None
    documents: tuple[Document, ...]
    functions: dict[str, Function]  # non-distractor functions, sorted by (hop_depth, name)
    distractors: tuple[int, ...]  # indices of role-distractor documents

    @property
    def texts(self) -> list[str]:
        return [d.text for d in self.documents]

    def __len__(self) -> int:
        return len(self.documents)

    @property
    def function_tokens(self) -> list[str]:
        """Every function token with documents, distractor functions included, sorted."""
        return sorted({d.func for d in self.documents})

    def _function(self, func: str) -> Function:
        if func not in self.functions:
            known = ", ".join(self.functions)
            raise KeyError(f"{func!r} is not a (non-distractor) function of this corpus; known: {known}")
        return self.functions[func]

    def chain(self, func: str) -> list[str]:
        """``func``, what it wraps, what that wraps, ... down to the base."""
        out = [func]
        while (nxt := self._function(out[-1]).wraps) is not None:
            out.append(nxt)
        return out

    def wrapped_by(self, func: str) -> list[str]:
        """The functions that call ``func`` directly."""
        self._function(func)
        return [f.name for f in self.functions.values() if f.wraps == func]


def load_corpus(path: str | os.PathLike[str], *, skip_invalid: bool = False) -> Corpus:
    """Load a HOPS-family JSONL file (blank lines ignored); see :func:`corpus_from_rows` for the checks."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        msg = f"{path}: cannot read the corpus file ({e.strerror or e}); pass an existing JSONL path"
        raise CorpusError(msg) from e
    items: list[tuple[int, object]] = []
    # split on "\n" only: str.splitlines also splits on U+2028 and friends, which JSON strings may hold raw
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            items.append((number, json.loads(raw.decode("utf-8"))))
        except UnicodeDecodeError as e:
            msg = f"{path}:{number}: field '(row)': not UTF-8 text (byte {e.start + 1} of the line)"
            items.append((number, CorpusError(msg)))
        except json.JSONDecodeError as e:
            msg = f"{path}:{number}: field '(row)': invalid JSON ({e.msg}, column {e.colno})"
            items.append((number, CorpusError(msg)))
    return _build(items, path, skip_invalid)


def corpus_from_rows(
    rows: Sequence[dict], *, path: str | os.PathLike[str] | None = None, skip_invalid: bool = False
) -> Corpus:
    """Build a corpus from in-memory rows (row i is reported as line i + 1)."""
    return _build(list(enumerate(rows, start=1)), Path(path) if path is not None else None, skip_invalid)


def _where(path: Path | None) -> str:
    return str(path) if path is not None else "<rows>"


def _lines(lines: Iterable[int]) -> str:
    ls = sorted(set(lines))
    shown = ", ".join(map(str, ls[:8])) + (f" and {len(ls) - 8} more" if len(ls) > 8 else "")
    return f"line{'s' if len(ls) > 1 else ''} {shown}"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _row_error(where: str, line: int, field: str, msg: str) -> CorpusError:
    return CorpusError(f"{where}:{line}: field '{field}': {msg}")


def _row(row: object, line: int, where: str) -> tuple[dict, dict[str, str]]:
    """Validate one row; return it with its explicit wrap fields (``wraps``/``base_func``) that are set."""
    # a partial of a module-level function, not a nested def: the test-time type-checking hook would
    # re-decorate a nested def on every row (seconds on a 3000-row corpus)
    bad = functools.partial(_row_error, where, line)
    if isinstance(row, CorpusError):
        raise row
    if not isinstance(row, dict):
        raise bad("(row)", f"expected a JSON object, got {type(row).__name__}")
    for field in REQUIRED:
        if field not in row:
            raise bad(field, "missing required field; every row needs " + ", ".join(REQUIRED))
    for field, ok, want in (
        ("uid", isinstance(row["uid"], (str, int)) and not isinstance(row["uid"], bool), "a string"),
        ("text", isinstance(row["text"], str), "a string"),
        ("func", isinstance(row["func"], str), "a string"),
        ("role", isinstance(row["role"], str) and row["role"] != "", "a non-empty string"),
        ("hop_depth", _is_int(row["hop_depth"]) and row["hop_depth"] >= 0, "an integer >= 0"),
        ("type", row.get("type") is None or isinstance(row["type"], str), "a string"),
    ):
        if row.get(field) is None and field != "type":
            raise bad(field, "is null; it is required")
        if not ok:
            raise bad(field, f"expected {want}, got {row[field]!r}")
    if not FUNC_TOKEN_RE.fullmatch(row["func"]):
        raise bad("func", f"{row['func']!r} is not a function token like <FN> ({FUNC_TOKEN_RE.pattern})")
    if row["constant"] is None and row["role"] != DISTRACTOR:
        raise bad("constant", f"is null; only role '{DISTRACTOR}' documents may have no constant")
    if row["constant"] is not None and not _is_int(row["constant"]):
        raise bad("constant", f"expected an integer, got {row['constant']!r}")
    explicit = {}
    for field in ("wraps", "base_func"):
        value = row.get(field)
        if value is not None and not (isinstance(value, str) and FUNC_TOKEN_RE.fullmatch(value)):
            raise bad(field, f"expected a function token like <FN> or null, got {value!r}")
        if value is not None:
            explicit[field] = value
    return row, explicit


def _build(items: list[tuple[int, object]], path: Path | None, skip_invalid: bool) -> Corpus:
    where = _where(path)
    docs: list[Document] = []
    explicit: list[dict[str, str]] = []
    skipped: list[int] = []
    for line, raw in items:
        try:
            row, fields = _row(raw, line, where)
        except CorpusError:
            if not skip_invalid:
                raise
            skipped.append(line)
            continue
        docs.append(
            Document(
                index=len(docs), line=line, uid=str(row["uid"]), text=row["text"], func=row["func"],
                role=row["role"], type=row.get("type") or "unknown", hop_depth=row["hop_depth"],
                constant=row["constant"],
            )
        )  # fmt: skip
        explicit.append(fields)
    if skipped:
        warnings.warn(f"{where}: skipped {len(skipped)} invalid row(s) at {_lines(skipped)}", stacklevel=3)
    if not any(d.role != DISTRACTOR for d in docs):
        raise CorpusError(f"{where}: field 'role': no non-distractor documents, so no function to query")
    from probes.data.relations import resolve_functions  # imported here: relations builds on this module

    functions = resolve_functions(docs, explicit, where)
    distractors = tuple(d.index for d in docs if d.role == DISTRACTOR)
    return Corpus(path=path, documents=tuple(docs), functions=functions, distractors=distractors)
