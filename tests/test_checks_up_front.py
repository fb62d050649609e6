"""Every check that can fail runs before the expensive work, and says what to do (issue 25): layer options
against the pair, DLP provenance, writable folders, document lengths in ``pairs build``, equal f_old and
f_new, pickled files; and the weights of a pair ``pairs build`` wrote are checked by content on every load."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from cli_fixtures import compare, no_features_computed, refused, train_probe
from dlp_fixtures import micro_args
from safetensors.torch import load_file

from probes.data.synthetic import GeneratorConfig, write_corpus
from probes.models import provenance
from probes.models.__main__ import main as models_main
from probes.pairs import build as build_module
from probes.pairs.__main__ import main as lm_main


def unwritable() -> Path:
    """A folder that even root cannot write into (sysfs); the test is skipped where there is none."""
    try:
        tempfile.TemporaryFile(dir="/sys").close()
    except OSError:
        return Path("/sys/probes-test")
    pytest.skip("no unwritable folder on this machine")


class Evil:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_a_layer_the_pair_does_not_have_is_named_before_any_pass(cfg, tmp_path, capsys):
    """Regression (issue 25): ``layers: 99`` failed after the model load and a hidden pass, naming no
    method entry."""
    config = cfg(methods=[{"label": "deep", "method": "repsim", "options": {"layers": 99}}])
    line = refused(capsys, compare.main, ["--config", str(config), "--out", str(tmp_path / "out")])
    assert "methods entry 'deep'" in line and "index 99" in line and "hidden states 0..2" in line
    assert no_features_computed(tmp_path) and not (tmp_path / "out").exists()


def test_equal_old_and_new_weights_refuse_delta_methods_and_warn_for_the_others(
    cfg,
    tmp_path,
    capsys,
    micro_pair,
):
    """Regression (issue 25): ``--model.old`` equal to ``--model.new`` gave all-zero Δh scores, reported."""
    same = {"old": str(micro_pair[1]), "new": str(micro_pair[1])}
    config = cfg(
        model=same, methods=[{"label": "r", "method": "random"}, {"label": "d", "method": "delta_h"}]
    )
    line = refused(capsys, compare.main, ["--config", str(config), "--out", str(tmp_path / "out")])
    assert "equal weights" in line and "'d'" in line and "'r'" not in line
    assert no_features_computed(tmp_path)
    config = cfg(model=same, methods=[{"label": "r", "method": "random"}])
    with pytest.warns(UserWarning, match="equal weights"):
        compare.main(["--config", str(config), "--out", str(tmp_path / "out")])


def test_an_unwritable_out_or_cache_is_refused_before_any_work(cfg, tmp_path, capsys, monkeypatch):
    """Regression (issue 25): a read-only --out or PROBES_CACHE failed after all scoring with [Errno 1]."""
    place = unwritable()
    line = refused(capsys, compare.main, ["--config", str(cfg()), "--out", str(place / "out")])
    assert "cannot be written" in line and no_features_computed(tmp_path)
    monkeypatch.setenv("PROBES_CACHE", str(place / "cache"))
    line = refused(capsys, compare.main, ["--config", str(cfg()), "--out", str(tmp_path / "out")])
    assert "PROBES_CACHE" in line and "cannot be written" in line and not (tmp_path / "out").exists()
    monkeypatch.setattr(build_module, "train", lambda *a, **k: pytest.fail("trained before refusing"))
    argv = ["build", "--corpus", str(cfg().parent / "micro.jsonl"), "--out", str(place / "pair")]
    assert "cannot be written" in refused(capsys, lm_main, argv)


def long_corpus(path: Path, text: str) -> Path:
    """The generated micro corpus with one more document of ``text``."""
    write_corpus(path, GeneratorConfig(n_base=2, docs_per_base=4, docs_per_wrapper=2))
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(r) + "\n" for r in [*rows, {**rows[0], "text": text}]))
    return path


@pytest.mark.parametrize(
    "text",
    [" ".join(["<GN>(3) returns 5."] * 400), " ".join(["word"] * 1_000_000)],
    ids=["past-1024-positions", "a-million-words"],
)
def test_lm_build_refuses_a_document_longer_than_its_positions_before_training(
    tmp_path, capsys, monkeypatch, text
):
    """Regression (issue 25): ``pairs build --preset micro`` trained on a document longer than its positions
    (rc 0), and a 1M-word document asked for 9 TB and died with a traceback."""
    corpus = long_corpus(tmp_path / "long.jsonl", text)
    monkeypatch.setattr(build_module, "train", lambda *a, **k: pytest.fail("trained before refusing"))
    argv = ["build", "--corpus", str(corpus), "--out", str(tmp_path / "pair"), "--preset", "micro"]
    line = refused(capsys, lm_main, argv)
    assert "long.jsonl: line 13" in line and "1024 positions" in line
    assert not (tmp_path / "pair").exists()


def test_lm_build_from_a_base_refuses_a_long_document_before_loading_its_weights(
    tmp_path, capsys, monkeypatch
):
    """Regression (issue 25): ``--base`` with a 4,501-token document trained past the base's positions."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from probes.pairs.tokenizer import train_tokenizer

    corpus = long_corpus(tmp_path / "long.jsonl", " ".join(["<GN>(3) returns 5."] * 40))
    tokenizer = train_tokenizer(["x returns 5."], [], [], vocab_size=300)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: pytest.fail("loaded"))
    argv = [
        "build",
        "--corpus",
        str(corpus),
        "--out",
        str(tmp_path / "pair"),
        "--base",
        str(tmp_path / "base"),
    ]
    assert "64 positions (max_position_embeddings)" in refused(capsys, lm_main, argv)


def test_a_pair_built_by_lm_build_is_checked_by_content_on_load(corpus_path, tmp_path):
    """Regression (issue 25): a same-size corrupt model.safetensors of a pair from ``pairs build`` was used
    silently: its manifest had no file checksums (the default pair's had)."""
    from probes.lm.load import load_pair

    out = tmp_path / "pair"
    assert lm_main(["build", "--corpus", str(corpus_path), "--out", str(out), "--preset", "micro"]) == 0
    recorded = json.loads((out / "manifest.json").read_text())["files"]
    assert {"old/model.safetensors", "new/model.safetensors", "new/tokenizer.json"} <= set(recorded)
    load_pair(out / "old", out / "new")
    weights = out / "new" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x80
    weights.write_bytes(bytes(data))
    with pytest.raises(OSError, match="model.safetensors \\(its checksum differs"):
        load_pair(out / "old", out / "new")


def checkpoint_without_record(fitted_dlp, folder: Path) -> tuple[Path, dict]:
    """A copy of the fitted DLP's checkpoint as saved before the record existed, and the record."""
    source = fitted_dlp.root / "lightning_logs" / "dlp" / "version_0" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(source, weights_only=True)
    record = checkpoint.pop(provenance.KEY)
    torch.save(checkpoint, folder / "legacy.ckpt")
    return folder / "legacy.ckpt", record


def dlp_config(cfg, micro_world, corpus: Path) -> Path:
    model = {"old": str(micro_world.old), "new": str(micro_world.new)}
    return cfg(data={"corpus_path": str(corpus)}, model=model, methods=[{"label": "r", "method": "random"}])


def test_a_dlp_checkpoint_without_its_record_is_refused_then_stamped(
    cfg,
    micro_world,
    fitted_dlp,
    tmp_path,
    capsys,
):
    """Regression (issue 25): a checkpoint without its content record was matched by path, so a corpus
    shuffled in place was scored against the wrong documents with exit 0."""
    legacy, record = checkpoint_without_record(fitted_dlp, tmp_path)
    argv = ["--config", str(dlp_config(cfg, micro_world, micro_world.corpus)), "--out", str(tmp_path / "o")]
    line = refused(capsys, compare.main, [*argv, "--dlp_checkpoint", str(legacy)])
    assert "no record of the corpus" in line and "retrain it" in line and provenance.STAMP in line
    assert no_features_computed(tmp_path)
    assert models_main(["stamp", str(legacy)]) == 0
    assert torch.load(legacy, weights_only=True)[provenance.KEY] == record  # what training recorded


def test_a_dlp_checkpoint_of_a_shuffled_corpus_is_refused_before_any_row_is_scored(
    cfg,
    micro_world,
    fitted_dlp,
    tmp_path,
    capsys,
    write_jsonl,
):
    """Regression (issue 25): a DLP checkpoint for another corpus was refused only after every other row."""
    rows = micro_world.corpus.read_text().splitlines()
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0)).tolist()
    shuffled = write_jsonl([rows[i] for i in order], "shuffled.jsonl")
    checkpoint = fitted_dlp.root / "lightning_logs" / "dlp" / "version_0" / "checkpoints" / "last.ckpt"
    argv = ["--config", str(dlp_config(cfg, micro_world, shuffled)), "--out", str(tmp_path / "o")]
    line = refused(capsys, compare.main, [*argv, "--dlp_checkpoint", str(checkpoint)])
    assert "another row order" in line and no_features_computed(tmp_path)


def test_pickled_files_are_one_line_without_advice_to_run_them(
    cfg,
    micro_world,
    tmp_path,
    capsys,
    micro_pair,
    in_tmp,
):
    """Regression (issue 25): a pickled .ckpt or pytorch_model.bin ran no code but printed a traceback that
    suggested ``weights_only=False``."""
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "x": Evil()}, evil)
    argv = ["--config", str(cfg()), "--out", str(tmp_path / "o"), "--dlp_checkpoint", str(evil)]
    ckpt = [*micro_args(micro_world), f"--ckpt_path={evil}"]
    for line in (refused(capsys, compare.main, argv), refused(capsys, train_probe.main, ["test", *ckpt])):
        assert "an object of print" in line and "never loads" in line and "weights_only" not in line
    model = tmp_path / "model"
    shutil.copytree(micro_pair[1], model)
    state = {**load_file(str(model / "model.safetensors")), "evil": Evil()}
    (model / "model.safetensors").unlink()
    torch.save(state, model / "pytorch_model.bin")
    config = cfg(model={"old": str(micro_pair[0]), "new": str(model)})
    line = refused(capsys, compare.main, ["--config", str(config), "--out", str(tmp_path / "o")])
    assert "never loads" in line and "weights_only" not in line
    assert "pickled code ran" not in capsys.readouterr().out
