"""Render one HOPS document from phrase-pool templates: a kind, a function, a seeded draw."""

from __future__ import annotations

import random
import re
import typing
from collections.abc import Iterable, Mapping, Sequence

from probes.data.templates_base import BASE_FRAMES, BASE_POOLS
from probes.data.templates_pools import FENCES, PAIRED_SLOTS, SHARED_POOLS
from probes.data.templates_wrapper import WRAPPER_FRAMES, WRAPPER_POOLS

KINDS: tuple[str, ...] = ("definition", "code_stub", "concept", "unit_test", "q_and_a", "narrative", "lore")
# How often each kind comes up, as counts in one shuffled block (every block holds every kind).
KIND_WEIGHTS: dict[str, int] = {
    "definition": 3,
    "code_stub": 4,
    "concept": 2,
    "unit_test": 3,
    "q_and_a": 3,
    "narrative": 2,
    "lore": 2,
}
SLOT_RE = re.compile(r"\$\{(\w+)\}|\$(\w+)")
_ARTICLE_RE = re.compile(r"\b([Aa]) (?=[aeiouAEIOU])")
_MAX_NESTING = 4
# Inputs shown in documents: the query range plus a few large values, minus anything near a constant.
_INPUT_CANDIDATES: tuple[int, ...] = (*range(101), 128, 256, 365, 500, 999, 1000, 1024, 4096)


def input_pool(constants: Iterable[int]) -> tuple[int, ...]:
    """Integers documents may use as inputs: never within the candidate-answer range of ``constants``.

    Wrapper documents must never state a constant, so no input (nor its negation) may equal any
    candidate answer, i.e. anything from min(constants) - 2 to max(constants) + 2.
    """
    values = list(constants)
    if not values:
        return _INPUT_CANDIDATES
    low, high = min(values) - 2, max(values) + 2
    pool = tuple(n for n in _INPUT_CANDIDATES if not low <= n <= high and not low <= -n <= high)
    if len(pool) < 8:  # huge constants swallowed the candidates: count on from just above the range
        start = max(high, -low) + 1
        pool += tuple(range(start, start + 8))
    return pool


def kind_sequence(rng: random.Random, n_docs: int) -> list[str]:
    """``n_docs`` kinds in shuffled blocks, each block holding every kind ``KIND_WEIGHTS`` times."""
    block = [kind for kind in KINDS for _ in range(KIND_WEIGHTS[kind])]
    out: list[str] = []
    while len(out) < n_docs:
        rng.shuffle(block)
        out.extend(block)
    return out[:n_docs]


def render_document(
    kind: str,
    rng: random.Random,
    *,
    func: str,
    inputs: Sequence[int],
    constant: int | None = None,
    wraps: str | None = None,
) -> str:
    """One document of ``kind`` about ``func``: a base stating ``constant``, or a wrapper of ``wraps``.

    Wrapper frames never see the constant (the renderer has no value for ``$c`` there), so a wrapper
    document cannot state it; numbers come only from ``inputs``.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown document kind {kind!r}; expected one of {', '.join(KINDS)}")
    if (constant is None) == (wraps is None):
        raise ValueError(f"render_document({func}): give exactly one of constant= (base) or wraps= (wrapper)")
    fixed = {"f": func, "fl": func.strip("<>").lower()}  # bare_name, inlined: this runs once per document
    if wraps is not None:
        frames, pools = WRAPPER_FRAMES[kind], {**SHARED_POOLS, **WRAPPER_POOLS}
        fixed.update(g=wraps, gl=wraps.strip("<>").lower())
    else:
        frames, pools = BASE_FRAMES[kind], {**SHARED_POOLS, **BASE_POOLS}
        fixed.update(c=str(constant), double=str(2 * constant), triple=str(3 * constant))
    renderer = _Renderer(rng, pools, fixed, inputs)
    frame = rng.choice(frames)
    if isinstance(frame, str):  # prose: capitalise the opening word, "a" -> "an" before a vowel
        text = renderer.fill(frame)
        return _ARTICLE_RE.sub(r"\1n ", text[:1].upper() + text[1:])
    lang, body = frame
    fence = rng.choice(FENCES)
    lead = renderer.fill("$testlead" if kind == "unit_test" else "$codelead")
    return fence.format(lang=lang, body=renderer.fill(body), lead=lead)


def bare_name(token: str) -> str:
    """``<GN>`` -> ``gn``: the token as it may appear inside an identifier."""
    return token.strip("<>").lower()


def all_frames(wrapper: bool) -> list[str]:
    """Every frame (code frames: their body) one role can draw from, for tests of the template invariants."""
    frames = WRAPPER_FRAMES if wrapper else BASE_FRAMES
    return [f if isinstance(f, str) else f[1] for fs in frames.values() for f in fs]


def all_pool_entries(wrapper: bool) -> list[str]:
    """Every phrase one role can draw from, code fences included."""
    pools = {**SHARED_POOLS, **(WRAPPER_POOLS if wrapper else BASE_POOLS)}
    return [entry for entries in pools.values() for entry in entries] + list(FENCES)


# Hot inner loop (tens of thousands of calls per corpus): opt out of the test-time type-checking hook,
# which costs ~60 us a call, i.e. seconds per generated corpus.
@typing.no_type_check
class _Renderer:
    """Fills ``$slot`` / ``${slot}`` for one document; a slot keeps its value everywhere it appears."""

    def __init__(
        self,
        rng: random.Random,
        pools: Mapping[str, tuple[str, ...]],
        fixed: Mapping[str, str],
        inputs: Sequence[int],
    ) -> None:
        self.rng, self.pools, self.inputs = rng, pools, inputs
        self.values: dict[str, str] = dict(fixed)
        self.taken: dict[str, set[str]] = {}

    def fill(self, text: str, depth: int = 0) -> str:
        if depth > _MAX_NESTING:
            raise ValueError(f"template nesting deeper than {_MAX_NESTING} in {text!r}")
        return SLOT_RE.sub(lambda m: self._value(m.group(1) or m.group(2), depth), text)

    def _value(self, slot: str, depth: int) -> str:
        if slot in self.values:
            return self.values[slot]
        pool = slot.rstrip("0123456789")
        if slot in PAIRED_SLOTS:
            pair_pool, part = PAIRED_SLOTS[slot]
            if pair_pool not in self.values:
                self.values[pair_pool] = self.rng.choice(self.pools[pair_pool])
            value = self.values[pair_pool].split("|")[part]
        elif pool == "x":
            value = self._draw("x", [str(n) for n in self.inputs])
        elif pool in self.pools:
            value = self.fill(self._draw(pool, self.pools[pool]), depth + 1)
        else:
            known = ", ".join(sorted([*self.values, *self.pools, "x"]))
            raise KeyError(f"template slot ${slot} has no value and no pool here (known: {known})")
        self.values[slot] = value
        return value

    def _draw(self, pool: str, options: Sequence[str]) -> str:
        """A random option, distinct from the ones sibling slots ($x, $x2, ...) already took when possible."""
        taken = self.taken.setdefault(pool, set())
        fresh = [o for o in options if o not in taken]
        choice = self.rng.choice(fresh or list(options))
        taken.add(choice)
        return choice
