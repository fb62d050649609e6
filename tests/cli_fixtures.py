"""Shared by the user-error tests: compare.py and train_probe.py loaded once and the one-line refusal check
(their micro pair, compare config writer and corpus are fixtures in conftest.py)."""

from __future__ import annotations

from pathlib import Path

from compare_fixtures import load_compare
from dlp_fixtures import load_train_probe

ROOT = Path(__file__).resolve().parents[1]
compare = load_compare()
# imported while collecting: Lightning's log handler then writes to a stream that outlives every test's capsys
train_probe = load_train_probe()


def refused(capsys, main, argv: list[str]) -> str:
    """Run ``main(argv)``; assert exit code 2 (raised as SystemExit, or returned by the commands whose main
    returns its code) and one ``probes: error:`` line last on stderr; return it."""
    try:
        code = main(argv)
    except SystemExit as exit_info:
        code = exit_info.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and err.count("probes: error:") == 1
    line = err.strip().splitlines()[-1]
    assert line.startswith("probes: error: ")
    return line


def no_features_computed(tmp_path: Path) -> bool:
    return not (tmp_path / "cache" / "features").exists()
