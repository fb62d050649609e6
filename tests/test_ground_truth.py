"""The counterfactual ground truth's folder: round trip, version-1 folders still read, each validation error
by key, content matching."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from probes.counterfactual.ground_truth import (
    MANIFEST_FILE,
    TENSORS_FILE,
    GroundTruth,
    check_matches,
    identity,
    load_ground_truth,
    save_ground_truth,
)
from probes.errors import UserError
from probes.hashing import file_sha256

TEXTS = ["<GN>(3) returns 5", "def <GN>(x): return 5", "<FN> wraps <GN>", "<JN> is 9"]
QUERY_IDS = [4, 1, 7]
QUERY_TEXTS = ["<FN>(3) is 5", "<GN>(1) is 5", "<JN>(2) is 9"]


def old_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Linear(8, 8)


def make_gt(m: int = 6, k: int = 3) -> GroundTruth:
    generator = torch.Generator().manual_seed(0)
    manifest = {
        "version": 2,
        "regime": "stochastic",
        "seeds_per_subset": k,
        "subsets": m,
        "fraction": 0.5,
        **identity(TEXTS, QUERY_IDS, QUERY_TEXTS, old_model(), "pair/old", "pair/new"),
        "noise_ceiling": None,
    }
    return GroundTruth(
        masks=torch.rand(m, len(TEXTS), generator=generator) < 0.5,
        outputs=torch.randn(m, k, len(QUERY_IDS), generator=generator),
        manifest=manifest,
    )


def test_round_trip_keeps_every_tensor_and_the_manifest(tmp_path):
    gt = make_gt()
    save_ground_truth(tmp_path / "gt", gt)
    stored = load_file(str(tmp_path / "gt" / TENSORS_FILE))
    assert stored["masks"].dtype == torch.uint8 and stored["outputs"].shape == (6, 3, 3)
    back = load_ground_truth(tmp_path / "gt")
    assert torch.equal(back.masks, gt.masks) and torch.equal(back.outputs, gt.outputs)
    assert back.masks.dtype == torch.bool and back.manifest == gt.manifest and back.path == tmp_path / "gt"
    assert sorted(p.name for p in (tmp_path / "gt").iterdir()) == [TENSORS_FILE, MANIFEST_FILE]
    assert back.regime == {"regime": "stochastic", "seeds_per_subset": 3, "fraction": 0.5}
    assert back.name == "gt" and back.repeats is None
    assert torch.allclose(back.seed_mean, gt.outputs.double().mean(dim=1))
    replicates, seeds = back.replicates()
    assert replicates is back.outputs and seeds == 3


def write_version_1(folder, m: int = 6, repeats: int = 2) -> tuple[dict, dict]:
    """A folder as builds before issue 27 wrote it: outputs [M, q], R repeats with a second seed."""
    generator = torch.Generator().manual_seed(1)
    tensors = {
        "masks": (torch.rand(m, len(TEXTS), generator=generator) < 0.5).to(torch.uint8),
        "outputs": torch.randn(m, len(QUERY_IDS), generator=generator),
        "repeat_index": torch.arange(repeats) * 2,
        "repeat_outputs": torch.randn(repeats, len(QUERY_IDS), generator=generator),
    }
    identified = identity(TEXTS, QUERY_IDS, QUERY_TEXTS, old_model(), "pair/old", "pair/new")
    manifest = {"version": 1, "subsets": m, "fraction": 0.5, "repeats": repeats, **identified}
    folder.mkdir()
    save_file(tensors, str(folder / TENSORS_FILE))
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    return tensors, manifest


def test_a_version_1_folder_reads_as_one_seed_with_its_repeats_as_replicates(tmp_path):
    tensors, manifest = write_version_1(tmp_path / "old")
    with pytest.warns(UserWarning, match=f"^{tmp_path / 'old'} carries no checksum") as caught:
        gt = load_ground_truth(tmp_path / "old")
    assert len(caught) == 1 and "\n" not in str(caught[0].message)  # one line, naming the folder
    assert gt.outputs.shape == (6, 1, 3) and torch.equal(gt.outputs[:, 0], tensors["outputs"])
    assert gt.regime == {"regime": "stochastic", "seeds_per_subset": 1, "fraction": 0.5}
    assert torch.equal(gt.seed_mean.float(), tensors["outputs"])
    replicates, seeds = gt.replicates()
    assert seeds == 1 and replicates.shape == (2, 2, 3)
    assert torch.equal(replicates[:, 0], tensors["outputs"][[0, 2]])  # repeat_index 0, 2: first seed
    assert torch.equal(replicates[:, 1], tensors["repeat_outputs"])
    rewrite(tmp_path / "old", {"repeat_index": torch.tensor([0, 6])})  # now with a checksum: verified
    with pytest.raises(UserError, match="'repeat_index' holds a subset outside 0..5"):
        load_ground_truth(tmp_path / "old")


def test_a_version_1_folders_checksum_is_verified_when_present(tmp_path, recwarn):
    """A version-1 folder that records its tensors' checksum loads without a warning; a changed byte is
    refused, naming the file."""
    tensors, _ = write_version_1(tmp_path / "old")
    rewrite(tmp_path / "old")  # records the checksum, content unchanged
    assert torch.equal(load_ground_truth(tmp_path / "old").outputs[:, 0], tensors["outputs"])
    assert not [w for w in recwarn if "checksum" in str(w.message)]
    path = tmp_path / "old" / TENSORS_FILE
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x80
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match=f"{path} \\(its checksum differs"):
        load_ground_truth(tmp_path / "old")


def rewrite(folder, tensors=None, manifest=None) -> None:
    """Change the saved folder's tensors (name -> tensor, None = drop it) or manifest entries in place,
    with the tensors file's checksum recorded again (a consistent folder whose content is wrong)."""
    stored = load_file(str(folder / TENSORS_FILE))
    for name, value in (tensors or {}).items():
        stored.pop(name) if value is None else stored.__setitem__(name, value)
    save_file(stored, str(folder / TENSORS_FILE))
    data = json.loads((folder / MANIFEST_FILE).read_text())
    data.setdefault("files", {})[TENSORS_FILE] = file_sha256(folder / TENSORS_FILE)
    (folder / MANIFEST_FILE).write_text(json.dumps(data))
    if manifest:
        data = json.loads((folder / MANIFEST_FILE).read_text())
        for path, value in manifest.items():
            *parents, key = path.split(".")
            entry = data
            for part in parents:
                entry = entry[part]
            entry.pop(key) if value is None else entry.__setitem__(key, value)
        (folder / MANIFEST_FILE).write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("tensors", "manifest", "pattern"),
    [
        ({"outputs": None}, None, f"{TENSORS_FILE} has no tensor 'outputs'"),
        ({"masks": torch.full((6, 4), 2, dtype=torch.uint8)}, None, "'masks' holds values other than 0"),
        ({"masks": torch.ones(6, 5, dtype=torch.uint8)}, None, r"'masks' has shape \(6, 5\).*\(6, 4\)"),
        ({"outputs": torch.zeros(5, 3, 3)}, None, r"'outputs' has shape \(5, 3, 3\)"),
        ({"outputs": torch.zeros(6, 3)}, None, r"'outputs' has shape \(6, 3\).*\(6, 3, 3\)"),
        ({"outputs": torch.full((6, 3, 3), float("nan"))}, None, "'outputs' holds NaN or inf"),
        (None, {"subsets": 7}, r"'masks' has shape \(6, 4\).*subsets=7"),
        (None, {"seeds_per_subset": 2}, r"'outputs' has shape \(6, 3, 3\).*\(6, 2, 3\)"),
        (None, {"documents.count": 3}, "documents.count=3"),
        (None, {"queries.ids": [4, 1]}, r"'outputs' has shape \(6, 3, 3\).*\(6, 3, 2\)"),
        (None, {"version": 3}, f"{MANIFEST_FILE}: version 3 is not one of"),
        (None, {"regime": "shuffled"}, "'regime' is 'shuffled', not one of"),
        (None, {"regime": None}, f"{MANIFEST_FILE} has no 'regime'"),
        (None, {"queries.ids": "4,1,7"}, "'queries.ids' is not a list"),
        (None, {"subsets": 6.0}, "'subsets' is not an integer"),
        (None, {"fraction": None}, f"{MANIFEST_FILE} has no 'fraction'"),
        (None, {"pair.old_weights": None}, "no 'pair.old_weights'"),
    ],
)
def test_each_bad_file_or_key_is_named(tmp_path, tensors, manifest, pattern):
    save_ground_truth(tmp_path, make_gt())
    rewrite(tmp_path, tensors, manifest)
    with pytest.raises(UserError, match=pattern):
        load_ground_truth(tmp_path)


def test_flipped_sign_bits_of_the_same_size_are_refused_by_checksum(tmp_path):
    """Regression (issue 25): 40 floats of ground_truth.safetensors with their sign bit flipped (the file's
    size unchanged) changed every LDS silently."""
    save_ground_truth(tmp_path, make_gt())
    path = tmp_path / TENSORS_FILE
    data = bytearray(path.read_bytes())
    for i in range(1, 41):  # the last byte of little-endian float32s near the end: their sign bits
        data[-4 * i + 3] ^= 0x80
    path.write_bytes(bytes(data))
    assert path.stat().st_size == len(data)
    with pytest.raises(UserError, match=f"{path} \\(its checksum differs"):
        load_ground_truth(tmp_path)


def test_a_ground_truth_without_its_checksum_is_refused(tmp_path):
    save_ground_truth(tmp_path, make_gt())
    data = json.loads((tmp_path / MANIFEST_FILE).read_text())
    del data["files"]
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(UserError, match="no checksum of ground_truth.safetensors.*build it again"):
        load_ground_truth(tmp_path)


def test_a_mask_row_that_is_not_the_manifests_subset_size_is_refused(tmp_path):
    """Regression (issue 25): a mask row of all ones was accepted although the manifest said 2 documents
    per subset."""
    gt = make_gt()
    gt.masks = torch.zeros_like(gt.masks)
    gt.masks[:, :2] = True
    gt.manifest["subset_size"] = 2
    save_ground_truth(tmp_path, gt)
    assert load_ground_truth(tmp_path).manifest["subset_size"] == 2
    masks = gt.masks.to(torch.uint8)
    masks[3] = 1
    rewrite(tmp_path, {"masks": masks})
    with pytest.raises(
        UserError, match="'masks' row 3 keeps 4 documents, but the manifest's subset_size is 2"
    ):
        load_ground_truth(tmp_path)


@pytest.mark.parametrize("missing", [TENSORS_FILE, MANIFEST_FILE])
def test_a_missing_file_is_named(tmp_path, missing):
    save_ground_truth(tmp_path, make_gt())
    (tmp_path / missing).unlink()
    with pytest.raises(UserError, match=f"{tmp_path / missing} is missing"):
        load_ground_truth(tmp_path)


def test_save_refuses_what_load_would(tmp_path):
    gt = make_gt()
    gt.outputs[0, 0] = float("nan")
    with pytest.raises(UserError, match="'outputs' holds NaN"):
        save_ground_truth(tmp_path / "gt", gt)
    assert not (tmp_path / "gt").exists()


def test_check_matches_accepts_the_same_content_and_names_each_difference(tmp_path):
    save_ground_truth(tmp_path / "gt", make_gt())
    gt = load_ground_truth(tmp_path / "gt")
    same = dict(texts=list(TEXTS), query_ids=list(QUERY_IDS), query_texts=list(QUERY_TEXTS))
    check_matches(gt, **same, old_model=old_model())  # a copy of f_old: same weights, another object
    cases = [
        ({"texts": TEXTS[::-1]}, "same 4 documents in another row order"),
        ({"texts": [*TEXTS[:3], "<JN> is 8"]}, "document texts differ"),
        ({"query_ids": QUERY_IDS[::-1], "query_texts": QUERY_TEXTS[::-1]}, "same queries in another order"),
        ({"query_ids": [4, 1]}, r"test split differs \(3 query ids there, 2 now\)"),
        ({"query_texts": [*QUERY_TEXTS[:2], "<JN>(2) is 8"]}, "texts \\(prompt \\+ answer\\) differ"),
    ]
    for change, pattern in cases:
        with pytest.raises(UserError, match=f"{tmp_path / 'gt'} does not belong.*{pattern}"):
            check_matches(gt, **{**same, **change}, old_model=old_model())
    with pytest.raises(UserError, match="f_old has other weights than pair/old"):
        check_matches(gt, **same, old_model=old_model(seed=1))
