"""The counterfactual ground truth's folder: round trip, each validation error by key, content matching."""

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

TEXTS = ["<GN>(3) returns 5", "def <GN>(x): return 5", "<FN> wraps <GN>", "<JN> is 9"]
QUERY_IDS = [4, 1, 7]
QUERY_TEXTS = ["<FN>(3) is 5", "<GN>(1) is 5", "<JN>(2) is 9"]


def old_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Linear(8, 8)


def make_gt(m: int = 6, repeats: int = 2) -> GroundTruth:
    generator = torch.Generator().manual_seed(0)
    manifest = {
        "version": 1,
        "subsets": m,
        "fraction": 0.5,
        "seeds": list(range(m)),
        "repeats": repeats,
        **identity(TEXTS, QUERY_IDS, QUERY_TEXTS, old_model(), "pair/old", "pair/new"),
        "noise_ceiling": None,
    }
    return GroundTruth(
        masks=torch.rand(m, len(TEXTS), generator=generator) < 0.5,
        outputs=torch.randn(m, len(QUERY_IDS), generator=generator),
        repeat_index=torch.arange(repeats),
        repeat_outputs=torch.randn(repeats, len(QUERY_IDS), generator=generator),
        manifest=manifest,
    )


def test_round_trip_keeps_every_tensor_and_the_manifest(tmp_path):
    gt = make_gt()
    save_ground_truth(tmp_path / "gt", gt)
    stored = load_file(str(tmp_path / "gt" / TENSORS_FILE))
    assert stored["masks"].dtype == torch.uint8 and stored["repeat_index"].dtype == torch.int64
    back = load_ground_truth(tmp_path / "gt")
    for name in ("masks", "outputs", "repeat_index", "repeat_outputs"):
        assert torch.equal(getattr(back, name), getattr(gt, name)), name
    assert back.masks.dtype == torch.bool and back.manifest == gt.manifest and back.path == tmp_path / "gt"
    assert sorted(p.name for p in (tmp_path / "gt").iterdir()) == [TENSORS_FILE, MANIFEST_FILE]


def test_no_repeats_round_trip(tmp_path):
    gt = make_gt(repeats=0)
    save_ground_truth(tmp_path, gt)
    back = load_ground_truth(tmp_path)
    assert back.repeat_index.shape == (0,) and back.repeat_outputs.shape == (0, len(QUERY_IDS))
    for name in ("masks", "outputs", "repeat_index", "repeat_outputs"):
        got, want = getattr(back, name), getattr(gt, name)
        assert got.dtype == want.dtype and torch.equal(got, want), name
    assert back.manifest == gt.manifest and back.manifest["repeats"] == 0


def rewrite(folder, tensors=None, manifest=None) -> None:
    """Change the saved folder's tensors (name -> tensor, None = drop it) or manifest entries in place."""
    stored = load_file(str(folder / TENSORS_FILE))
    for name, value in (tensors or {}).items():
        stored.pop(name) if value is None else stored.__setitem__(name, value)
    save_file(stored, str(folder / TENSORS_FILE))
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
        ({"outputs": torch.zeros(5, 3)}, None, r"'outputs' has shape \(5, 3\)"),
        ({"repeat_outputs": torch.zeros(3, 3)}, None, r"'repeat_outputs' has shape \(3, 3\)"),
        ({"outputs": torch.full((6, 3), float("nan"))}, None, "'outputs' holds NaN or inf"),
        ({"repeat_outputs": torch.full((2, 3), float("inf"))}, None, "'repeat_outputs' holds NaN"),
        ({"repeat_index": torch.tensor([0, 6])}, None, "'repeat_index' holds a subset outside 0..5"),
        (None, {"subsets": 7}, r"'masks' has shape \(6, 4\).*subsets=7"),
        (None, {"documents.count": 3}, "documents.count=3"),
        (None, {"queries.ids": [4, 1]}, r"'outputs' has shape \(6, 3\).*\(6, 2\)"),
        (None, {"version": 2}, f"{MANIFEST_FILE}: version 2"),
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
