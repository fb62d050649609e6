"""probes.files: the cache root and atomic writes (a failed write leaves nothing; a success replaces)."""

from __future__ import annotations

import pytest

from probes.files import atomic_path, cache_dir


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PROBES_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("PROBES_CACHE")
    assert cache_dir().parts[-2:] == (".cache", "probes")


def test_a_failed_write_leaves_no_file_and_no_temporary(tmp_path):
    final = tmp_path / "out.txt"
    with pytest.raises(RuntimeError), atomic_path(final) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []


def test_a_failed_rewrite_keeps_the_old_file(tmp_path):
    final = tmp_path / "out.txt"
    final.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(final) as tmp:
        tmp.write_text("new")
        raise RuntimeError("crash")
    assert final.read_text() == "old"


def test_success_replaces_a_file_and_a_directory(tmp_path):
    final = tmp_path / "out.txt"
    final.write_text("old")
    with atomic_path(final) as tmp:
        tmp.write_text("new")
    assert final.read_text() == "new"
    folder = tmp_path / "pair"
    (folder / "stale").mkdir(parents=True)
    with atomic_path(folder) as tmp:
        (tmp / "fresh").mkdir(parents=True)
    assert sorted(p.name for p in folder.iterdir()) == ["fresh"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt", "pair"]
