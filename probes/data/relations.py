"""Resolve a HOPS corpus's functions: role, depth, what each wrapper calls, its constant along the chain."""

from __future__ import annotations

from collections import defaultdict

from probes.data.corpus import DISTRACTOR, FUNC_TOKEN_RE, CorpusError, Document, Function, _lines


def _agree(name: str, docs: list[Document], values: dict[int, object], field: str, where: str) -> object:
    """The one value ``values`` (doc index -> value) takes on a function's rows, else an error naming them."""
    by_value: dict[object, list[int]] = defaultdict(list)
    for d in docs:
        if d.index in values:
            by_value[values[d.index]].append(d.line)
    if len(by_value) > 1:
        parts = "; ".join(f"{v!r} at {_lines(ls)}" for v, ls in by_value.items())
        first = min(min(ls) for ls in by_value.values())
        what = f"{name} has two constants" if field == "constant" else f"the rows of {name} disagree"
        raise CorpusError(f"{where}:{first}: field '{field}': {what} ({parts}); make its rows agree")
    return next(iter(by_value), None)


def _infer_target(name: str, depth: int, docs: list[Document], known: dict[str, int], where: str) -> str:
    """The one function of hop depth ``depth - 1`` that ``name``'s documents mention."""
    mentions: dict[str, list[int]] = defaultdict(list)
    for d in docs:
        for token in dict.fromkeys(FUNC_TOKEN_RE.findall(d.text)):
            if token != name and token in known:
                mentions[token].append(d.line)
    candidates = {t: ls for t, ls in mentions.items() if known[t] == depth - 1}
    first = docs[0].line
    if len(candidates) == 1:
        return next(iter(candidates))
    if not candidates:
        seen = ", ".join(f"{t} (hop_depth {known[t]})" for t in mentions) or "none"
        raise CorpusError(
            f"{where}:{first}: field 'wraps': wrapper {name} (hop_depth {depth}) has no 'wraps'/'base_func' "
            f"field and its texts mention no known function of hop_depth {depth - 1} (mentioned: {seen}); "
            "add a 'wraps' field or documents for the wrapped function"
        )
    parts = "; ".join(f"{t} at {_lines(ls)}" for t, ls in sorted(candidates.items()))
    raise CorpusError(
        f"{where}:{first}: field 'wraps': wrapper {name} is ambiguous: its texts mention several functions "
        f"of hop_depth {depth - 1} ({parts}); add an explicit 'wraps' field to its rows"
    )


def resolve_functions(
    docs: list[Document], explicit: list[dict[str, str]], where: str
) -> dict[str, Function]:
    """Check the non-distractor rows function by function and resolve wrap targets and constants."""
    rows: dict[str, list[Document]] = defaultdict(list)
    for d in docs:
        if d.role != DISTRACTOR:
            rows[d.func].append(d)
    role, depth, const, wraps, base_field = {}, {}, {}, {}, {}
    for name, ds in rows.items():
        role[name] = _agree(name, ds, {d.index: d.role for d in ds}, "role", where)
        depth[name] = _agree(name, ds, {d.index: d.hop_depth for d in ds}, "hop_depth", where)
        const[name] = _agree(name, ds, {d.index: d.constant for d in ds}, "constant", where)
        for field, out in (("wraps", wraps), ("base_func", base_field)):
            given = {d.index: explicit[d.index][field] for d in ds if field in explicit[d.index]}
            value = _agree(name, ds, given, field, where)
            if value is not None:
                out[name] = value
    first = {name: ds[0].line for name, ds in rows.items()}

    def bad(name: str, field: str, msg: str) -> CorpusError:
        return CorpusError(f"{where}:{first[name]}: field '{field}': {msg}")

    target: dict[str, str | None] = {}
    for name in rows:
        for field, named in (("wraps", wraps.get(name)), ("base_func", base_field.get(name))):
            if named is not None and named != name and named not in rows:
                raise bad(name, field, f"{name} names {named}, which has no (non-distractor) documents")
        if depth[name] == 0:
            if name in wraps or base_field.get(name, name) != name:
                named = wraps.get(name) or base_field[name]
                raise bad(name, "wraps", f"{name} has hop_depth 0 (a base) but wraps {named}; fix either")
            target[name] = None
        elif name in wraps:
            target[name] = wraps[name]
        elif name in base_field and depth.get(base_field[name]) == depth[name] - 1:
            target[name] = base_field[name]
        else:  # no direct target given (a base_func naming the chain's base is checked below)
            target[name] = _infer_target(name, depth[name], rows[name], depth, where)
    _check_chains(rows, target, depth, const, base_field, bad)
    order = sorted(rows, key=lambda n: (depth[n], n))
    return {
        n: Function(n, role[n], depth[n], target[n], const[n], tuple(d.index for d in rows[n])) for n in order
    }


def _check_chains(rows: dict, target: dict, depth: dict, const: dict, base_field: dict, bad) -> None:
    """Every wrap chain ends at a base, one hop_depth a step, and returns its base's constant."""
    for name in rows:  # cycles first: along a cycle the depth check below would report a less useful error
        path = [name]
        while (nxt := target[path[-1]]) is not None:
            if nxt in path:
                cycle = " -> ".join(path[path.index(nxt) :] + [nxt])
                raise bad(nxt, "wraps", f"the wrap relation has a cycle: {cycle}; a chain must end at a base")
            path.append(nxt)
        if len(path) > 1 and depth[path[1]] != depth[name] - 1:
            raise bad(
                name, "hop_depth", f"{name} has hop_depth {depth[name]} but wraps {path[1]} of hop_depth "
                f"{depth[path[1]]}; a wrapper's hop_depth is one more than its target's",
            )  # fmt: skip
        base = path[-1]
        if name in base_field and base_field[name] not in (target[name], base):
            msg = f"{name} names {base_field[name]}, but wraps {target[name]} and its chain's base is {base}"
            raise bad(name, "base_func", msg)
        if const[name] != const[base]:
            raise bad(
                name, "constant", f"{name} has two constants: its rows say {const[name]} but its base {base} "
                f"returns {const[base]} ({_lines(d.line for d in rows[base])}); a wrapper returns its base's",
            )  # fmt: skip
