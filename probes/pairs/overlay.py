"""A pair overlay (``configs/pairs/<name>.yaml``): one file naming a pair and what its size needs, read by
train_probe.py, compare.py and ``python -m probes.counterfactual`` alike, each ``--config`` of it rewritten
into that entry's own keys (so a later flag still overrides it, as with any config)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml

from probes.errors import UserError

KEYS = {"pair", "dlp", "methods", "recipe"}  # an overlay's top-level keys; "pair" marks a file as one
PAIR_KEYS = {
    "f_old", "f_new", "corpus_path", "dtype", "device",  # the pair and the corpus it was fine-tuned on
    "feature_batch_size", "feature_max_tokens", "score_batch_size",  # compare's and counterfactual's model.*
    "document_batch_size",  # the DLP's model.document_batch_size
}  # fmt: skip
COMPARE_MODEL = {"f_old": "old", "f_new": "new", "dtype": "dtype", "device": "device"} | {
    k: k for k in ("feature_batch_size", "feature_max_tokens", "score_batch_size")
}


def read(path: str) -> dict[str, Any] | None:
    """The overlay at ``path``, checked; None unless ``path`` is a YAML file whose top level has ``pair``."""
    file = Path(path)
    if not file.is_file() or file.suffix not in (".yaml", ".yml"):
        return None
    data = yaml.safe_load(file.read_text())
    if not isinstance(data, dict) or "pair" not in data:
        return None
    for key, known in (("", KEYS), ("pair.", PAIR_KEYS)):
        section = data if not key else data["pair"]
        unknown = sorted(set(section or {}) - known)
        if unknown:
            raise UserError(f"{path}: unknown overlay key {key}{unknown[0]} (known: {sorted(known)})")
    for key in ("f_old", "f_new"):
        if not data["pair"].get(key):
            raise UserError(f"{path}: pair.{key} is missing (a local path or hub id)")
    return data


def merge_methods(methods: list[dict], overrides: dict[str, Any], path: str) -> list[dict]:
    """The compare config's method rows with the overlay's label-keyed overrides: ``{label: {options: {...},
    tune: ...}}`` updates that row's options (key by key) and replaces its other keys; ``{label: null}``
    drops the row (the overlay's comment says why)."""
    rows = {m["label"]: m for m in methods}
    for label, change in overrides.items():
        if label not in rows:
            raise UserError(
                f"{path}: methods.{label} overrides no row of the earlier configs' methods "
                f"({sorted(rows) or 'none: give the overlay after the compare config'})"
            )
        if change is not None and not isinstance(change, dict):
            raise UserError(
                f"{path}: methods.{label} must be a mapping (options, tune) or null (drop the row)"
            )
    out = []
    for row in methods:
        if row["label"] in overrides and overrides[row["label"]] is None:
            continue
        row = copy.deepcopy(row)
        change = overrides.get(row["label"]) or {}
        row.update({k: v for k, v in change.items() if k != "options"})
        row["options"] = {**row.get("options", {}), **change.get("options", {})}
        out.append(row)
    return out


def translate(overlay: dict, entry: str, methods: list[dict], path: str, after: str) -> dict[str, Any]:
    """The overlay as ``entry``'s config: train_probe (trainer, model, data: the DLP on f_new, plus the
    overlay's ``dlp`` keys) or compare / counterfactual (model, data, methods; compare's default output
    folder results/<after>-<overlay> after the config ``after``'s name; counterfactual's recipe)."""
    pair = overlay["pair"]
    data = {"corpus_path": pair["corpus_path"]} if "corpus_path" in pair else {}
    if entry == "train_probe":
        model = {"model": pair["f_new"]} | {k: pair[k] for k in ("dtype", "document_batch_size") if k in pair}
        config = {"model": model, "data": data}
        if "device" in pair:
            config["trainer"] = {"accelerator": "gpu" if str(pair["device"]).startswith("cuda") else "cpu"}
        return _deep_merge(config, overlay.get("dlp") or {})
    model = {new: pair[old] for old, new in COMPARE_MODEL.items() if old in pair}
    config = {
        "model": model,
        "data": data,
        "methods": merge_methods(methods, overlay.get("methods") or {}, path),
    }
    if entry == "counterfactual" and overlay.get("recipe"):
        config["recipe"] = overlay["recipe"]
    if entry == "compare":
        config["out"] = f"results/{after}-{Path(path).stem}"
    return config


def _deep_merge(base: dict, extra: dict) -> dict:
    """``base`` updated by ``extra``, nested mappings merged key by key."""
    out = dict(base)
    for key, value in extra.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _deep_merge(out[key], value) if both else value
    return out


def expand(argv: list[str] | None, entry: str) -> list[str] | None:
    """``argv`` with each ``--config OVERLAY`` replaced by the overlay translated for ``entry`` (as YAML
    text, which ``--config`` accepts); plain configs pass unchanged, their ``methods`` are what a later
    overlay's label-keyed overrides apply to, and a flag after the overlay overrides it. ``argv`` None:
    ``sys.argv`` is rewritten in place (LightningCLI warns when given both) and None returned."""
    args = list(sys.argv[1:] if argv is None else argv)
    methods: list[dict] = []
    after = "compare"  # the last plain config's name
    for i, arg in enumerate(args):
        inline = arg.startswith("--config=")
        if not inline and (arg != "--config" or i + 1 >= len(args)):
            continue
        at = i if inline else i + 1
        path = args[at].removeprefix("--config=")
        overlay = read(path)
        if overlay is None:
            plain = yaml.safe_load(Path(path).read_text()) if Path(path).is_file() else None
            methods = plain["methods"] if isinstance(plain, dict) and "methods" in plain else methods
            after = Path(path).stem
            continue
        config = translate(overlay, entry, methods, path, after)
        methods = config.get("methods", methods)
        text = yaml.safe_dump(config, sort_keys=False)
        args[at] = f"--config={text}" if inline else text
    if argv is None:
        sys.argv[1:] = args
        return None
    return args
