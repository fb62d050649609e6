"""The counterfactual ground truth on disk: subset masks, retrained models' answer log-probs, manifest.

A folder holds ``ground_truth.safetensors`` (``masks`` uint8 0/1 [M, n], the documents each retrain KEPT, in
corpus order; ``outputs`` float32 [M, K, q], the log-probability of each test query's correct answer under
f_old retrained on subset m with data-order seed k, queries in the order of compare.py's queries.csv) and
``manifest.json``, written last, so a folder with a manifest is complete. The manifest says the regime
(``regime``: "stochastic" or "fixed-order", ``seeds_per_subset`` K, ``fraction`` kept, ``drop`` for
fixed-order) and identifies what the outputs belong to by content (`identity`): the corpus texts in order,
the test queries in order and f_old's weights; its ``files`` entry holds the tensors file's SHA-256, checked
on every load. Version 1 folders (``outputs`` [M, q] with one seed, and ``repeat_index`` [R] /
``repeat_outputs`` [R, q]: R subsets retrained with a second seed) are still read, unchecksummed ones warned.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Bool, Float
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from probes.errors import UserError
from probes.files import atomic_path
from probes.hashing import content_hash, failed_files, file_checksums, weights_hash
from probes.measured import GROUND_TRUTH_FILE, MANIFEST_FILE, document_problems

VERSION = 2
TENSORS_FILE = GROUND_TRUTH_FILE  # the folder's format is probes.measured's
FILES = (TENSORS_FILE, MANIFEST_FILE)
TENSORS = {1: ("masks", "outputs", "repeat_index", "repeat_outputs"), 2: ("masks", "outputs")}
REGIMES = ("stochastic", "fixed-order")
# the manifest entries the loader reads ("documents.count" = entry "documents", key "count"), by version
COMMON = ("subsets", "fraction", "documents.count", "queries.ids", "pair.old_weights")
REQUIRED = {1: COMMON, 2: (*COMMON, "regime", "seeds_per_subset")}


@dataclass
class GroundTruth:
    """M retrained subsets of n documents, each retrained K times, scored on q test queries.

    ``repeats`` holds a version-1 folder's R subsets retrained with a second seed ([R, 2, q]: the subset's
    first seed, then the other), its only replicated outputs; None otherwise. ``path`` is the folder it was
    loaded from (None when built in memory), named by every error about it.
    """

    masks: Bool[Tensor, "subsets n"]
    outputs: Float[Tensor, "subsets seeds q"]
    manifest: dict
    path: Path | None = None
    repeats: Float[Tensor, "repeats 2 q"] | None = None

    @property
    def where(self) -> str:
        return f"counterfactual ground truth {self.path}" if self.path else "counterfactual ground truth"

    @property
    def name(self) -> str:
        """The folder's name: the ground truth's key in compare.py's metrics.json and table."""
        return self.path.name if self.path else "counterfactual"

    @property
    def seed_mean(self) -> Float[Tensor, "subsets q"]:
        """Each subset's outputs averaged over its K seeds: what the LDS correlates with."""
        return self.outputs.double().mean(dim=1)

    @property
    def regime(self) -> dict:
        """``{"regime", "seeds_per_subset", "fraction"}`` (and ``drop`` for fixed-order); a version-1 folder
        is stochastic with one seed."""
        m = self.manifest
        found = {"regime": m.get("regime", "stochastic"), "seeds_per_subset": self.outputs.shape[1]}
        return {**found, "fraction": m["fraction"], **({"drop": m["drop"]} if "drop" in m else {})}

    def replicates(self) -> tuple[Float[Tensor, "subsets seeds q"], int]:
        """(outputs of the subsets retrained with several seeds, the seeds the LDS averages): what
        `probes.metrics.lds.noise_ceiling` reads."""
        if self.repeats is not None:
            return self.repeats, 1
        return self.outputs, self.outputs.shape[1]


def identity(
    texts: Sequence[str],
    query_ids: Sequence[int],
    query_texts: Sequence[str],
    old_model: torch.nn.Module,
    old_path: str,
    new_path: str,
) -> dict:
    """The manifest's ``documents``, ``queries`` and ``pair`` entries: what the outputs belong to, by content.

    ``texts`` are the corpus's document texts in order, ``query_ids`` the test split's query ids in order and
    ``query_texts`` each one's prompt + answer; ``old_model`` is f_old (its `weights_hash`, the same for a
    copy at another path, device or dtype). The sorted documents' hash tells a reordered corpus apart.
    """
    return {
        "documents": {
            "count": len(texts),
            "texts": content_hash(list(texts)),
            "texts_sorted": content_hash(sorted(texts)),
        },
        "queries": {"ids": [int(i) for i in query_ids], "texts": content_hash(list(query_texts))},
        "pair": {"old": str(old_path), "new": str(new_path), "old_weights": weights_hash(old_model)},
    }


def split_queries(data, split: str = "test") -> tuple[list[int], list[str]]:
    """A split's query ids in order (the order of compare.py's queries.csv for "test") and each query's
    prompt + answer: the ``query_ids`` and ``query_texts`` of `identity` and `check_matches`, from a
    prepared ``probes.data.hops.HopsData``."""
    ids = data.split_ids[split].tolist()
    return ids, [data.queries[i].prompt + data.queries[i].answer for i in ids]


def check_matches(
    gt: GroundTruth,
    *,
    texts: Sequence[str],
    query_ids: Sequence[int],
    query_texts: Sequence[str],
    old_model: torch.nn.Module,
) -> None:
    """Raise a UserError (a ValueError) naming the folder and what differs when the ground truth was not
    computed for these documents (in this order), these test queries (in this order) and this f_old."""
    problems = data_problems(gt, texts=texts, query_ids=query_ids, query_texts=query_texts)
    recorded = gt.manifest
    if recorded["pair"]["old_weights"] != weights_hash(old_model):
        problems.append(f"f_old has other weights than {recorded['pair'].get('old', 'the recorded f_old')}")
    if problems:
        raise UserError(
            f"{gt.where} does not belong to this run: {'; and '.join(problems)}. Use the corpus, data split "
            "options and pair it was built with, or build one for these"
        )


def data_problems(
    gt: GroundTruth, *, texts: Sequence[str], query_ids: Sequence[int], query_texts: Sequence[str]
) -> list[str]:
    """What differs between the documents and queries the ground truth was computed for and these (each in
    order); empty when they match. The data half of `check_matches`, for readers that load no f_old."""
    queries = gt.manifest["queries"]
    problems = document_problems(gt.manifest["documents"], texts)
    ids = [int(i) for i in query_ids]
    if queries["ids"] != ids:
        same = sorted(queries["ids"]) == sorted(ids)
        problems.append(
            "the test split holds the same queries in another order"
            if same
            else f"the test split differs ({len(queries['ids'])} query ids there, {len(ids)} now)"
        )
    elif queries.get("texts") != content_hash(list(query_texts)):
        problems.append("the test queries' texts (prompt + answer) differ")
    return problems


def save_ground_truth(out: Path, gt: GroundTruth) -> None:
    """Write ``out/ground_truth.safetensors`` then ``out/manifest.json`` (each atomically; the manifest last,
    so it exists only beside complete tensors), in the current version. The ground truth is validated first,
    as the loader would."""
    out = Path(out)
    tensors = {"masks": gt.masks.to(torch.uint8), "outputs": gt.outputs.float()}
    _validate(tensors, gt.manifest, f"{out / TENSORS_FILE}")
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_FILE).unlink(missing_ok=True)
    with atomic_path(out / TENSORS_FILE) as tmp:
        save_file({name: t.detach().cpu().contiguous() for name, t in tensors.items()}, str(tmp))
    gt.manifest["files"] = file_checksums(out, [TENSORS_FILE])
    with atomic_path(out / MANIFEST_FILE) as tmp:
        tmp.write_text(json.dumps(gt.manifest, indent=2) + "\n", encoding="utf-8")


def load_ground_truth(path: str | Path) -> GroundTruth:
    """Read and validate a ground-truth folder (version 1 or 2); a UserError names the bad file and key."""
    folder = Path(path)
    if not folder.is_dir():
        raise UserError(f"counterfactual ground truth {folder} is not a folder")
    manifest_path, tensors_path = folder / MANIFEST_FILE, folder / TENSORS_FILE
    for file in (manifest_path, tensors_path):
        if not file.is_file():
            raise UserError(f"{file} is missing (not a complete counterfactual ground-truth folder)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{manifest_path} is not valid JSON ({err})") from None
    if not isinstance(manifest, dict):
        raise UserError(f"{manifest_path} holds a {type(manifest).__name__}, not a JSON object")
    version = _entry(manifest, "version", str(manifest_path))
    if version not in TENSORS:
        raise UserError(f"{manifest_path}: version {version!r} is not one of {sorted(TENSORS)}")
    _verify(folder, manifest, version)
    tensors = {}
    try:
        with safe_open(tensors_path, "pt") as handle:
            for name in TENSORS[version]:
                if name not in handle.keys():
                    raise UserError(f"{tensors_path} has no tensor {name!r}")
                tensors[name] = handle.get_tensor(name)
    except (OSError, SafetensorError) as err:
        raise UserError(f"{tensors_path} is unreadable ({err})") from None
    _validate(tensors, manifest, str(tensors_path), str(manifest_path))
    outputs, repeats = tensors["outputs"].float(), None
    if version == 1:  # one seed per subset; the repeated subsets' two seeds side by side
        outputs, index = outputs[:, None], tensors["repeat_index"].long()
        repeats = torch.stack([outputs[index, 0], tensors["repeat_outputs"].float()], dim=1)
    return GroundTruth(tensors["masks"].bool(), outputs, manifest, folder, repeats)


def _verify(folder: Path, manifest: dict, version: int) -> None:
    """Check the tensors file against the manifest's ``files`` checksum; a version-1 folder built before
    ground truths were checksummed is read with a warning, a version-2 one without it is refused."""
    recorded = manifest.get("files")
    if not isinstance(recorded, dict) or TENSORS_FILE not in recorded:
        if version == 1:
            warnings.warn(f"{folder} carries no checksum (a version-1 ground truth)", stacklevel=2)
            return
        raise UserError(
            f"{folder / MANIFEST_FILE} has no checksum of {TENSORS_FILE}; build it again "
            "(python -m probes.counterfactual build)"
        )
    failed = failed_files(folder, {TENSORS_FILE: recorded[TENSORS_FILE]})
    if failed:
        raise UserError(f"{failed[0]}; build it again (python -m probes.counterfactual build)")


def _entry(manifest: dict, key: str, where: str) -> object:
    value: object = manifest
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise UserError(f"{where} has no {key!r} entry")
        value = value[part]
    return value


def _validate(
    tensors: dict[str, Tensor], manifest: dict, where: str, manifest_where: str = "manifest"
) -> None:
    """Refuse a missing manifest entry, an unknown version or regime, a mask that is not 0/1, shapes that
    disagree with each other or with the manifest's M, K, n and q, a non-finite output or (version 1) a repeat
    of a subset that is not there; each message names the file (``where`` for tensors, ``manifest_where`` for
    entries) and key."""
    version = _entry(manifest, "version", manifest_where)
    if version not in REQUIRED:
        raise UserError(f"{manifest_where}: version {version!r} is not one of {sorted(REQUIRED)}")
    for key in REQUIRED[version]:
        _entry(manifest, key, manifest_where)
    ints = ("subsets", "documents.count", *(("seeds_per_subset",) if version > 1 else ()))
    for key, kind in (*((k, int) for k in ints), ("queries.ids", list)):
        if not isinstance(_entry(manifest, key, manifest_where), kind):
            raise UserError(f"{manifest_where}: {key!r} is not a{'n integer' if kind is int else ' list'}")
    if version > 1 and manifest["regime"] not in REGIMES:
        raise UserError(f"{manifest_where}: 'regime' is {manifest['regime']!r}, not one of {REGIMES}")
    m, n, q = manifest["subsets"], manifest["documents"]["count"], len(manifest["queries"]["ids"])
    masks = tensors["masks"]
    if masks.dtype != torch.bool and not bool(((masks == 0) | (masks == 1)).all()):
        raise UserError(f"{where}: 'masks' holds values other than 0 and 1")
    _check_sizes(masks, manifest.get("subset_size"), where)
    expected = {"masks": (m, n), "outputs": (m, manifest["seeds_per_subset"], q) if version > 1 else (m, q)}
    if version == 1:
        _check_repeats(tensors, m, q, where)
        expected["repeat_outputs"] = (len(tensors["repeat_index"]), q)
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise UserError(
                f"{where}: {name!r} has shape {tuple(tensors[name].shape)}, but the manifest's subsets={m}, "
                f"{'seeds_per_subset, ' if version > 1 else ''}documents.count={n} and queries.ids ({q}) "
                f"make it {shape}"
            )
    for name in ("outputs", "repeat_outputs")[: version and (2 if version == 1 else 1)]:
        if not bool(torch.isfinite(tensors[name]).all()):
            raise UserError(f"{where}: {name!r} holds NaN or inf")


def _check_sizes(masks: Tensor, size: int | None, where: str) -> None:
    """Every mask row keeps the manifest's ``subset_size`` documents (when it records one)."""
    if size is None or masks.dim() != 2:
        return
    sizes = masks.long().sum(1)
    wrong = (sizes != size).nonzero().flatten().tolist()
    if wrong:
        raise UserError(
            f"{where}: 'masks' row {wrong[0]} keeps {int(sizes[wrong[0]])} documents, but the manifest's "
            f"subset_size is {size}{f' ({len(wrong)} rows differ)' if len(wrong) > 1 else ''}"
        )


def _check_repeats(tensors: dict[str, Tensor], m: int, q: int, where: str) -> None:
    """A version-1 folder's ``repeat_index``: integers [R] naming subsets 0..M-1."""
    repeat_index = tensors["repeat_index"]
    if repeat_index.dim() != 1:
        raise UserError(f"{where}: 'repeat_index' has shape {tuple(repeat_index.shape)}, not [R]")
    if repeat_index.is_floating_point():
        raise UserError(f"{where}: 'repeat_index' is {repeat_index.dtype}, not an integer tensor")
    if len(repeat_index) and not bool(((repeat_index >= 0) & (repeat_index < m)).all()):
        raise UserError(f"{where}: 'repeat_index' holds a subset outside 0..{m - 1}")
