"""What a generated corpus holds: the config, its functions, and how their tokens are spelled."""

from __future__ import annotations

import itertools
import random
import re
import string
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

# 20hops pairing: the level-1 wrapper of <{BASE_LETTERS[i]}N> is <{WRAPPER_LETTERS[i]}N>.
BASE_LETTERS = "GJKLMNOPQR"
WRAPPER_LETTERS = "FIHSTUVWXY"
TOKEN_STYLES = ("letters", "numbered")


class GeneratorConfigError(ValueError):
    """A GeneratorConfig field is out of range; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"GeneratorConfig.{field}: {message}")
        self.field, self.reason = field, message


@dataclass
class GeneratorConfig:
    """What corpus to generate.

    Args:
        n_base: number of base (constant) functions.
        constants: one integer per base function; default ``5, 7, ..., 2 * n_base + 3``.
        shared_constants: draw the bases' constants from the first ``shared_constants`` defaults
            (``5, 7, ...``), each used equally often (within one), in a seeded order: several bases then
            share a constant and an answer no longer names its function. None: one constant per base.
        depth: wrapper levels above every base (1: ``<FN> -> <GN>``; 2 adds a wrapper of each wrapper).
        docs_per_base: documents per base function.
        docs_per_wrapper: documents per wrapper function.
        n_distractors: number of distractor documents (role "distractor"), spread over up to ``n_base``
            extra constant functions that are never queried and share the bases' constants.
        token_style: "letters" (the 20hops spelling, ``<GN>``: letter + ``token_suffix``) or "numbered"
            (``<B01>``: level letter counted up from ``token_prefix``, then the index).
        token_prefix: level letter of the bases in the "numbered" style (wrappers take the next letters).
        token_suffix: suffix of every token in the "letters" style; another suffix gives a disjoint world.
        seed: seed of every random draw; the same config always gives the same corpus, byte for byte.
        explicit_wraps: write a ``wraps`` field on wrapper rows (else a loader infers it from the text).
        exclude_tokens: function tokens never to use (e.g. another corpus's), replaced by fresh names.
    """

    n_base: int = 10
    constants: tuple[int, ...] | None = None
    shared_constants: int | None = None
    depth: int = 1
    docs_per_base: int = 200
    docs_per_wrapper: int = 100
    n_distractors: int = 0
    token_style: str = "letters"
    token_prefix: str = "B"
    token_suffix: str = "N"
    seed: int = 0
    explicit_wraps: bool = False
    exclude_tokens: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name, low in (("n_base", 1), ("depth", 0), ("docs_per_base", 1), ("docs_per_wrapper", 1)):
            _check_int(name, getattr(self, name), low)
        _check_int("n_distractors", self.n_distractors, 0)
        if self.constants is not None:
            self.constants = tuple(self.constants)
            if len(self.constants) != self.n_base or not all(_is_int(c) for c in self.constants):
                raise GeneratorConfigError(
                    "constants", f"needs {self.n_base} integers, one per base; got {self.constants!r}"
                )
        if self.shared_constants is not None:
            if not _is_int(self.shared_constants) or not 1 <= self.shared_constants <= self.n_base:
                raise GeneratorConfigError(
                    "shared_constants",
                    f"must be an integer in 1..n_base ({self.n_base}); got {self.shared_constants!r}",
                )
            if self.constants is not None:
                raise GeneratorConfigError(
                    "shared_constants", "draws the constants itself; give it or constants"
                )
        if self.token_style not in TOKEN_STYLES:
            raise GeneratorConfigError("token_style", f"one of {TOKEN_STYLES}, got {self.token_style!r}")
        if not re.fullmatch(r"[A-Za-z0-9_]*", str(self.token_suffix)):
            raise GeneratorConfigError("token_suffix", f"letters, digits, _ only; got {self.token_suffix!r}")
        levels = self.depth + (self.n_distractors > 0)  # numbered: one letter per level (+ distractors)
        if not re.fullmatch(r"[A-Z]", str(self.token_prefix)) or ord(self.token_prefix) + levels > ord("Z"):
            raise GeneratorConfigError(
                "token_prefix",
                f"a capital letter, {levels} more after it (depth + distractors); got {self.token_prefix!r}",
            )
        self.exclude_tokens = tuple(self.exclude_tokens)

    @property
    def constant_values(self) -> tuple[int, ...]:
        """The base functions' constants, defaults filled in (drawn from the shared set when asked)."""
        if self.constants is not None:
            return self.constants
        if self.shared_constants is None:
            return tuple(2 * i + 5 for i in range(self.n_base))
        values = [2 * (i % self.shared_constants) + 5 for i in range(self.n_base)]
        random.Random(f"{self.seed}:shared-constants").shuffle(values)
        return tuple(values)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(name: str, value: object, low: int) -> None:
    if not _is_int(value) or value < low:
        raise GeneratorConfigError(name, f"must be an integer >= {low}, got {value!r}")


@dataclass(frozen=True)
class FunctionPlan:
    """One function to generate: token, role, level, constant (its base's), what it wraps, how many docs."""

    name: str
    role: str
    hop_depth: int
    constant: int
    wraps: str | None
    n_docs: int


def function_plan(cfg: GeneratorConfig) -> list[FunctionPlan]:
    """Bases, then one wrapper per base at each level 1..depth, then distractor functions.

    The wrapper of base ``i`` at level ``L`` wraps the level ``L - 1`` function ``i``. Distractors are
    ``min(n_distractors, n_base)`` extra constant functions sharing the first bases' constants; their
    documents are split as evenly as possible.
    """
    if cfg.token_style == "letters":
        namer: _Namer = _LetterNamer(cfg.token_suffix, cfg.exclude_tokens)
    else:
        namer = _NumberNamer(cfg.token_prefix, cfg.exclude_tokens)
    constants = cfg.constant_values
    plan: list[FunctionPlan] = []
    below: list[str | None] = [None] * cfg.n_base
    for level in range(cfg.depth + 1):
        names = [namer.name(level, i) for i in range(cfg.n_base)]
        role, n_docs = ("constant", cfg.docs_per_base) if level == 0 else ("identity", cfg.docs_per_wrapper)
        plan += [FunctionPlan(n, role, level, constants[i], below[i], n_docs) for i, n in enumerate(names)]
        below = list(names)
    n_functions = min(cfg.n_distractors, cfg.n_base)
    for j in range(n_functions):
        n_docs = cfg.n_distractors // n_functions + (j < cfg.n_distractors % n_functions)
        plan.append(FunctionPlan(namer.name(cfg.depth + 1, j), "distractor", 0, constants[j], None, n_docs))
    return plan


class _Namer:
    """Hands out tokens, never one in ``exclude`` and never one twice."""

    def __init__(self, exclude: Sequence[str]) -> None:
        self.used = set(exclude)

    def take(self, token: str) -> str:
        self.used.add(token)
        return token


class _LetterNamer(_Namer):
    """``<GN>``-style tokens: the 20hops letters first, then spare letters, then letter pairs, ..."""

    def __init__(self, suffix: str, exclude: Sequence[str]) -> None:
        super().__init__(exclude)
        self.suffix = suffix
        self.spare = self._spare_stems()

    def name(self, level: int, index: int) -> str:
        preferred = {0: BASE_LETTERS, 1: WRAPPER_LETTERS}.get(level, "")
        if index < len(preferred) and self._token(preferred[index]) not in self.used:
            return self.take(self._token(preferred[index]))
        token = self._token(next(self.spare))
        while token in self.used:
            token = self._token(next(self.spare))
        return self.take(token)

    def _token(self, stem: str) -> str:
        return f"<{stem}{self.suffix}>"

    @staticmethod
    def _spare_stems() -> Iterator[str]:
        reserved = set(BASE_LETTERS + WRAPPER_LETTERS)
        yield from (c for c in string.ascii_uppercase if c not in reserved)
        for length in itertools.count(2):
            for letters in itertools.product(string.ascii_uppercase, repeat=length):
                yield "".join(letters)


class _NumberNamer(_Namer):
    """``<B01>``-style tokens: the level letter counts up from ``prefix``, then a two-digit index."""

    def __init__(self, prefix: str, exclude: Sequence[str]) -> None:
        super().__init__(exclude)
        self.prefix = prefix
        self.next_index: dict[int, int] = {}

    def name(self, level: int, index: int) -> str:
        letter = chr(ord(self.prefix) + level)  # GeneratorConfig checked that it stays within A..Z
        number = self.next_index.get(level, 1)
        while f"<{letter}{number:02d}>" in self.used:
            number += 1
        self.next_index[level] = number + 1
        return self.take(f"<{letter}{number:02d}>")
