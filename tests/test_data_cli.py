"""`python -m probes.data`: inspect (text, --json shape), --skip-invalid, clean errors, generate."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REFERENCE_HOPS, chain_rows

from probes.data.__main__ import main


def _run(argv, capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _check_shape(info: dict) -> None:
    assert isinstance(info["documents"], int) and isinstance(info["distractor_documents"], int)
    for f in info["functions"].values():
        assert set(f) == {"role", "hop_depth", "wraps", "constant", "documents"}
        assert isinstance(f["role"], str) and isinstance(f["hop_depth"], int)
        assert isinstance(f["constant"], int) and isinstance(f["documents"], int)
        assert f["wraps"] is None or isinstance(f["wraps"], str)
    assert set(info["queries"]) == {"count", "relevant_min", "relevant_max"}


def test_inspect_json_on_reference(capsys):
    if not REFERENCE_HOPS.exists():
        pytest.skip("reference corpus not present")
    code, out, _ = _run(["inspect", str(REFERENCE_HOPS), "--json"], capsys)
    info = json.loads(out)
    assert code == 0
    _check_shape(info)
    assert info["documents"] == 3000 and info["distractor_documents"] == 0 and len(info["functions"]) == 20
    assert info["queries"] == {"count": 2000, "relevant_min": 300, "relevant_max": 300}
    assert info["functions"]["<FN>"] == {
        "role": "identity", "hop_depth": 1, "wraps": "<GN>", "constant": 5, "documents": 100,
    }  # fmt: skip


def test_inspect_text_and_json_on_chain(chain_corpus_path, capsys):
    code, out, _ = _run(["inspect", str(chain_corpus_path)], capsys)
    assert code == 0 and "11 documents (2 distractors), 5 functions (2 base, 3 wrappers" in out
    assert any(line.split()[:4] == ["<D1>", "identity", "2", "<C1>"] for line in out.splitlines())
    code, out, _ = _run(["inspect", str(chain_corpus_path), "--json"], capsys)
    info = json.loads(out)
    _check_shape(info)
    assert info["distractor_documents"] == 2 and info["queries"]["count"] == 500
    assert (info["queries"]["relevant_min"], info["queries"]["relevant_max"]) == (3, 6)


def test_bad_input_exits_2_naming_line_and_field(write_jsonl, capsys):
    lines = [json.dumps(r) for r in chain_rows()]
    path = write_jsonl(lines[:2] + ['{"uid": "x", "text": "t", "func": "<B1>"}'] + lines[2:])
    code, out, err = _run(["inspect", str(path)], capsys)
    assert code == 2 and out == "" and f"{path}:3: field 'role'" in err and "Traceback" not in err
    code, out, err = _run(["inspect", str(path), "--json", "--skip-invalid"], capsys)
    assert code == 0 and "skipped 1 invalid row(s) at line 3" in err
    assert json.loads(out)["documents"] == len(lines)
    code, _, err = _run(["inspect", str(path.parent / "missing.jsonl")], capsys)
    assert code == 2 and "cannot read" in err


def test_generate_delegates_to_the_generator(tmp_path, capsys):
    out_path = tmp_path / "gen.jsonl"
    argv = ["generate", "--out", str(out_path), "--n-base", "2"]
    argv += ["--docs-per-base", "3", "--docs-per-wrapper", "2"]
    code, _, _ = _run(argv, capsys)
    assert code == 0 and out_path.exists()
    code, out, _ = _run(["inspect", str(out_path), "--json"], capsys)
    assert code == 0 and json.loads(out)["documents"] == 10
    code, _, _ = _run([*argv, "--shared-constants", "1", "--overwrite"], capsys)  # both share a constant
    info = json.loads(_run(["inspect", str(out_path), "--json"], capsys)[1])
    assert code == 0 and {f["constant"] for f in info["functions"].values()} == {5}
    assert len(info["functions"]) == 4 and info["candidate_answers"] == [3, 4, 5, 6, 7]


@pytest.mark.slow
def test_module_entry_point_has_no_traceback(write_jsonl):
    path = write_jsonl(["{broken"])
    argv = [sys.executable, "-m", "probes.data", "inspect", str(path)]
    proc = subprocess.run(argv, capture_output=True, text=True)
    assert proc.returncode == 2 and f"{path}:1: field '(row)': invalid JSON" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_generate_never_replaces_another_file_without_overwrite(tmp_path, capsys):
    # regression: generate --out replaced any existing file, a hand-made corpus included
    out_path = tmp_path / "corpus.jsonl"
    out_path.write_text("my own corpus\n")
    argv = ["generate", "--out", str(out_path), "--n-base", "2"]
    code, _, err = _run(argv, capsys)
    assert code == 2 and str(out_path) in err and "--overwrite" in err
    assert out_path.read_text() == "my own corpus\n"
    code, _, _ = _run([*argv, "--overwrite"], capsys)
    written = out_path.read_bytes()
    assert code == 0 and written != b"my own corpus\n"
    code, out, _ = _run(argv, capsys)  # the same options again: the same bytes, nothing to refuse
    assert code == 0 and "already holds" in out and out_path.read_bytes() == written
    code, _, err = _run([*argv, "--seed", "1"], capsys)  # other content: refused again
    assert code == 2 and out_path.read_bytes() == written
    code, _, err = _run(["generate", "--out", str(tmp_path), "--n-base", "2"], capsys)
    assert code == 2 and "is a folder" in err
