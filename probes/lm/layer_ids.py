"""The one resolver of a layer option ("all", "middle", "last", ints) into hidden-state indices 0..L."""

from __future__ import annotations

# "all": the block outputs 1..L (the embeddings, index 0, are the same vector for a token wherever it stands:
# pooled at one token they are a context-independent term); "all_with_embeddings": 0..L; "middle": L // 2
# (as the reference scripts: num_hidden_layers // 2); "last": L. Ints (negative from the end) name states.
LAYER_NAMES = ("all", "all_with_embeddings", "middle", "last")


def check_layer_spec(spec) -> None:
    """Raise unless ``spec`` is one of LAYER_NAMES, an int or a non-empty list of distinct ints."""
    if isinstance(spec, str):
        if spec not in LAYER_NAMES:
            raise ValueError(f"layers={spec!r}: give one of {list(LAYER_NAMES)}, an int or a list of ints")
        return
    items = [spec] if isinstance(spec, int) else spec
    if (
        not isinstance(items, (list, tuple))
        or not items
        or not all(isinstance(i, int) and not isinstance(i, bool) for i in items)
    ):
        raise ValueError(f"layers={spec!r}: give one of {list(LAYER_NAMES)}, an int or a non-empty int list")


def hidden_state_ids(spec, n_states: int) -> list[int]:
    """Hidden-state indices (0 = embeddings .. ``n_states - 1`` = after the final norm) that ``spec`` names
    (see LAYER_NAMES); ints may be negative (from the end). Raises on an index out of range or named twice."""
    check_layer_spec(spec)
    if spec == "all":
        if n_states < 2:
            raise ValueError(
                f"layers='all' (block outputs 1..L) names nothing among {n_states} hidden state(s); features "
                "that are not hidden states take layers=None (every row)"
            )
        return list(range(1, n_states))
    if spec == "all_with_embeddings":
        return list(range(n_states))
    if spec in ("middle", "last"):
        return [(n_states - 1) // 2 if spec == "middle" else n_states - 1]
    out = []
    for i in [spec] if isinstance(spec, int) else spec:
        if not -n_states <= i < n_states:
            raise ValueError(
                f"layers={spec!r}: index {i} is out of range for {n_states} hidden states (0 = embeddings)"
            )
        out.append(i % n_states)
    if len(set(out)) != len(out):
        raise ValueError(f"layers={spec!r} names a hidden state twice")
    return out
