"""What a comparison's scores were computed from (its inputs.json), and which of its rows another command may
take instead of scoring them again: only rows computed from the same config and the same inputs by content.

compare.py writes the record beside its scores; compare.py ``--scores`` (e.g. to add the LDS to a finished
comparison) and ``python -m probes.counterfactual remove`` read it to take a finished comparison's rows. Paths
alone are not enough: a pair rebuilt or a corpus rewritten at the same path must be scored again.
"""

from __future__ import annotations

import csv
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from jsonargparse import Namespace
from safetensors.torch import load_file
from torch import Tensor

from probes.errors import UserError
from probes.files import path_list
from probes.hashing import file_checksums, file_sha256
from probes.outputs import owned

INPUTS = "inputs.json"
KIND = "compare.py"  # the kind in a comparison's output marker (probes.outputs), which checksums its files
DLP = "dlp"  # the DLP checkpoint's row label in compare.py's outputs


def _plain(value):
    """A config value as JSON data (jsonargparse Namespaces and the method entries' dataclasses)."""
    return json.loads(
        json.dumps(value, default=lambda v: v.as_dict() if isinstance(v, Namespace) else vars(v))
    )


def model_files(path: str) -> dict[str, str] | str:
    """A model by content: its files' checksums when ``path`` is a local folder, else the name (a hub id)."""
    folder = Path(path)
    return file_checksums(folder.parent, (folder.name,)) if folder.is_dir() else str(path)


def input_paths(cfg: Namespace) -> list[str | None]:
    """The files a comparison of ``cfg`` reads, which its output must never replace."""
    truths = cfg.get("counterfactual") or []  # compare.py's ground-truth folders (a list)
    return [cfg.data.corpus_path, cfg.model.old, cfg.model.new, *dlp_checkpoints(cfg), *truths]


def dlp_checkpoints(cfg: Namespace) -> list[str]:
    """The DLP checkpoints of ``dlp_checkpoint`` (none, one, or a list: a seed ensemble)."""
    return path_list(cfg.dlp_checkpoint or None)


def settings(cfg: Namespace) -> dict:
    """The ``data``, ``model``, ``methods`` and ``dlp_checkpoint`` keys of compare.py's config, as given."""
    return {key: _plain(cfg[key]) for key in ("data", "model", "methods", "dlp_checkpoint")}


def record(cfg: Namespace, corpus_sha256: str, old: str, new: str) -> dict:
    """The inputs.json of a run of ``cfg`` (compare.py's config) on the corpus file of that SHA-256 and the
    resolved pair ``old``/``new``: the ``data``, ``model``, ``methods`` and ``dlp_checkpoint`` keys as given,
    and by content the corpus file, f_old's and f_new's files and the DLP checkpoint's bytes."""
    checkpoints = [file_sha256(path) for path in dlp_checkpoints(cfg)]
    return {
        "config": settings(cfg),
        "content": {
            "corpus": corpus_sha256,
            "old": model_files(old),
            "new": model_files(new),
            # one checkpoint's hash; a seed ensemble's, a list of them
            "dlp": checkpoints[0] if isinstance(cfg.dlp_checkpoint, str) else checkpoints or None,
        },
    }


# model keys that say where and how fast a run computed, not what: rows scored on a GPU are taken on a CPU
WHERE = ("device", "devices", "threads", "feature_cache")


def difference(recorded: dict, wanted: dict) -> str | None:
    """Why no row of a run recorded as ``recorded`` is one a run recorded as ``wanted`` would score (the first
    differing data or model setting, or input by content), or None when its rows may be taken."""
    for key in ("data", "model"):
        there, here = (
            {k: v for k, v in r["config"][key].items() if key != "model" or k not in WHERE}
            for r in (recorded, wanted)
        )
        for name in sorted(set(there) | set(here)):
            if there.get(name) != here.get(name):
                return f"{key}.{name} is {there.get(name)!r} there, {here.get(name)!r} here"
    for key in ("corpus", "old", "new"):
        if recorded["content"][key] != wanted["content"][key]:
            return f"another {'corpus' if key == 'corpus' else 'f_' + key} by content"
    return None


def same_rows(recorded: dict, wanted: dict, labels: Sequence[str]) -> list[str]:
    """The ``labels`` that a run recorded as ``recorded`` scored exactly as a run recorded as ``wanted``
    would: the same data and model config (but `WHERE` it ran), the same inputs by content, the same method
    entry (for the DLP row, the same checkpoint)."""
    if difference(recorded, wanted):
        return []
    had, want = ({e["label"]: e for e in r["config"]["methods"]} for r in (recorded, wanted))
    dlp = wanted["content"]["dlp"]

    def same(label: str) -> bool:
        if label == DLP:
            return dlp is not None and recorded["content"]["dlp"] == dlp
        return had.get(label) == want[label]

    return [label for label in labels if same(label)]


@dataclass
class Row:
    """A score row taken from a finished comparison: its test scores ``[q, n]``, its metrics.json entry
    (hparams, tuning, seconds) and the folder it came from."""

    scores: Tensor
    metrics: dict
    folder: str


def take_rows(
    folders: Sequence[str | Path],
    wanted: dict,
    labels: Sequence[str],
    query_ids: list[int],
    documents: int,
) -> dict:
    """``{label: Row}`` for each of ``labels`` that a finished comparison among ``folders`` (the first that
    has it) computed as a run recorded as ``wanted`` would. A folder that does not exist is refused; one
    without a finished comparison is passed over (metrics.json is written last, so a folder that has it holds
    every file); one whose data, model or inputs differ is passed over with a warning that names the
    difference. Every file read is checked against the checksums its output marker records, the test
    queries against ``query_ids`` and each row's shape against ``[q, documents]``."""
    rows: dict[str, Row] = {}
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise UserError(f"--scores {folder}: no such folder; give finished compare.py output folders")
        if not ((folder / "metrics.json").is_file() and (folder / INPUTS).is_file()):
            continue
        output = owned(folder, KIND)
        recorded = json.loads(output.verify(INPUTS).read_text())
        same = same_rows(recorded, wanted, [x for x in labels if x not in rows])
        if not same:
            if reason := difference(recorded, wanted):
                warnings.warn(
                    f"--scores {folder}: no row taken, {reason}: its rows are scored again", stacklevel=2
                )
            continue
        with output.verify("queries.csv").open(newline="") as handle:
            if [int(row["query_id"]) for row in csv.DictReader(handle)] != list(query_ids):
                raise UserError(f"{folder}/queries.csv lists other test queries than the config's test split")
        scores = load_file(str(output.verify("scores.safetensors")))
        metrics = json.loads(output.verify("metrics.json").read_text())
        for label in same:
            shape = tuple(scores[label].shape)
            if shape != (len(query_ids), documents):
                raise UserError(
                    f"{folder}/scores.safetensors: row {label!r} has shape {shape}, not "
                    f"({len(query_ids)}, {documents}) (test queries, documents)"
                )
            rows[label] = Row(scores[label], metrics[label], str(folder))
    return rows
