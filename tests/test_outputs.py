"""Output folders owned by content (issue 25): a command writes into, or deletes from, only a folder with its
own marker, removes only the files that marker records, and a later command reads them only by checksum."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_fixtures import compare, no_features_computed, refused
from safetensors.torch import load_file, save_file

from probes.outputs import MARKER, OutputRefused, claim_output, owned

KIND = "a command"


def listing(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_a_claimed_folder_records_what_it_wrote_and_removes_only_that(tmp_path):
    out = tmp_path / "out"
    output = claim_output(out, KIND, ["a.txt", "logs/"], overwrite=False, settings={"k": 1})
    (out / "a.txt").write_text("a")
    (out / "logs").mkdir()
    (out / "logs" / "run.txt").write_text("run")
    output.record("a.txt", "logs/")
    marker = json.loads((out / MARKER).read_text())
    assert marker["kind"] == KIND and marker["settings"] == {"k": 1}
    assert sorted(marker["files"]) == ["a.txt", "logs/run.txt"]
    (out / "logs" / "notes.txt").write_text("mine")  # a user's file inside the command's own folder
    assert output.remove("logs/") == [str(out / "logs" / "notes.txt")]
    assert listing(out) == sorted([MARKER, "a.txt", "logs/notes.txt"])
    assert owned(out, KIND).verify("a.txt") == out / "a.txt"
    (out / "a.txt").write_text("b")  # same size, other bytes
    with pytest.raises(OutputRefused, match="checksum differs"):
        owned(out, KIND).verify("a.txt")


def test_what_a_killed_atomic_write_left_in_an_own_folder_does_not_block_a_rerun(tmp_path):
    out = tmp_path / "out"
    claim_output(out, KIND, ["parts/"], overwrite=False)
    leftover = out / "parts" / ".row-000001.safetensors.x1y2.tmp" / "row-000001.safetensors"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half")
    output = claim_output(out, KIND, ["parts/"], overwrite=False)
    assert output.remove("parts/") == [] and not (out / "parts").exists()


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_that_only_looks_like_the_output_is_never_replaced(tmp_path, overwrite):
    """Regression (issue 25): folders were matched by the names in them, so a user's notes inside a
    folder named like an output folder went with it, even without --overwrite."""
    out = tmp_path / "out"
    (out / "logs").mkdir(parents=True)
    (out / "logs" / "notes.txt").write_text("precious")
    with pytest.raises(OutputRefused, match="logs/notes.txt" if overwrite else "--overwrite"):
        claim_output(out, KIND, ["a.txt", "logs/"], overwrite=overwrite)
    assert listing(out) == ["logs/notes.txt"]


def test_another_commands_folder_is_refused_even_with_overwrite(tmp_path):
    claim_output(tmp_path / "out", "other", ["b.txt"], overwrite=False)
    with pytest.raises(OutputRefused, match="holds the output of other"):
        claim_output(tmp_path / "out", KIND, ["a.txt"], overwrite=True)


def test_overwrite_writes_beside_foreign_files_and_a_check_writes_nothing(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    claim_output(out, KIND, ["a.txt"], overwrite=True, write=False)
    assert listing(out) == ["notes.txt"]
    claim_output(out, KIND, ["a.txt"], overwrite=True)
    assert listing(out) == sorted([MARKER, "notes.txt"])
    claim_output(out, KIND, ["a.txt"], overwrite=False)  # now its own folder


def write_config(cfg, **overrides) -> Path:
    return cfg(methods=[{"label": "r", "method": "random"}], **overrides)


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]], ids=["plain", "overwrite"])
@pytest.mark.parametrize("user_file", ["tensorboard/notes.txt", "metrics.json"])
def test_compare_never_deletes_a_users_file_in_a_folder_like_its_output(
    cfg,
    tmp_path,
    capsys,
    user_file,
    overwrite,
):
    """Regression (issue 25): ``compare.py --out U`` removed U/tensorboard/notes.txt and replaced a user's
    lone metrics.json, exit 0."""
    out = tmp_path / "U"
    (out / user_file).parent.mkdir(parents=True, exist_ok=True)
    (out / user_file).write_text("precious")
    line = refused(capsys, compare.main, ["--config", str(write_config(cfg)), "--out", str(out), *overwrite])
    assert user_file in line or "--overwrite" in line
    assert listing(out) == [user_file] and (out / user_file).read_text() == "precious"
    assert no_features_computed(tmp_path)


def finished(cfg, tmp_path, capsys) -> tuple[Path, Path]:
    config = write_config(cfg)
    out = tmp_path / "first"
    compare.main(["--config", str(config), "--out", str(out)])
    capsys.readouterr()
    return config, out


def test_compare_scores_from_a_missing_folder_is_refused(cfg, tmp_path, capsys):
    """Regression (issue 25): ``--scores`` naming a folder that does not exist was silently ignored."""
    argv = [
        "--config",
        str(write_config(cfg)),
        "--out",
        str(tmp_path / "o"),
        "--scores",
        str(tmp_path / "no"),
    ]
    assert "no such folder" in refused(capsys, compare.main, argv)


def test_compare_scores_reversed_row_or_row_of_wrong_shape_is_refused(cfg, tmp_path, capsys):
    """Regression (issue 25): a row reversed in a finished comparison's scores.safetensors was reused
    silently, and a row of the wrong shape failed naming neither folder nor row."""
    config, first = finished(cfg, tmp_path, capsys)
    scores_path = first / "scores.safetensors"
    scores = load_file(str(scores_path))
    argv = ["--config", str(config), "--out", str(tmp_path / "second"), "--scores", str(first)]
    save_file({**scores, "r": scores["r"].flip(1).contiguous()}, str(scores_path))
    assert "scores.safetensors (its checksum differs" in refused(capsys, compare.main, argv)
    save_file({**scores, "r": scores["r"][:, :-1].contiguous()}, str(scores_path))
    owned(first, "compare.py").record("scores.safetensors")  # consistent, but the wrong shape
    line = refused(capsys, compare.main, argv)
    assert f"{first}/scores.safetensors: row 'r' has shape" in line
    save_file(scores, str(scores_path))
    owned(first, "compare.py").record("scores.safetensors")
    compare.main(argv)  # intact: taken
    taken = load_file(str(tmp_path / "second" / "scores.safetensors"))
    assert torch.equal(taken["r"], scores["r"])


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]], ids=["plain", "overwrite"])
def test_lm_build_never_overwrites_a_foreign_manifest_or_old_notes(tmp_path, capsys, monkeypatch, overwrite):
    """Regression (issue 25): ``pairs build --out`` with a foreign manifest.json and old/notes overwrote both:
    the marker check only tested that a manifest.json existed."""
    from lm_fixtures import micro_rows

    from probes.pairs import build as build_module
    from probes.pairs.__main__ import main as lm_main

    corpus = tmp_path / "micro.jsonl"
    corpus.write_text("".join(json.dumps(row) + "\n" for row in micro_rows()))
    out = tmp_path / "pair"
    (out / "old").mkdir(parents=True)
    (out / "old" / "notes").write_text("precious")
    (out / "manifest.json").write_text('{"mine": true}')
    monkeypatch.setattr(build_module, "train", lambda *a, **k: pytest.fail("trained before refusing"))
    line = refused(capsys, lm_main, ["build", "--corpus", str(corpus), "--out", str(out), *overwrite])
    assert ("old/notes" in line and "manifest.json" in line) if overwrite else "--overwrite" in line
    assert listing(out) == ["manifest.json", "old/notes"]
    assert (out / "manifest.json").read_text() == '{"mine": true}'
