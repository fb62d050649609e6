"""A pair overlay (configs/pairs/*.yaml) read by train_probe.py, compare.py and probes.counterfactual alike,
with the hub ids replaced by a micro pair (no download), and its label-keyed method overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from counterfactual_fixtures import isolated_cache  # noqa: F401

from probes.compare.run import build_parser
from probes.counterfactual.__main__ import build_parser as counterfactual_parser
from probes.errors import UserError
from probes.pairs.overlay import expand

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["olmo2-1b", "llama3.2-1b"])
def overlay(request, counterfactual_world, tmp_path) -> Path:
    """The shipped overlay with the micro pair and corpus in place of the hub ids and 20hops."""
    data = yaml.safe_load((ROOT / "configs" / "pairs" / f"{request.param}.yaml").read_text())
    pair = counterfactual_world["root"] / "pair"
    data["pair"].update(f_old=str(pair / "old"), f_new=str(pair / "new"), device="cpu")
    data["pair"]["corpus_path"] = str(counterfactual_world["corpus"])
    path = tmp_path / f"{request.param}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def compare_args(overlay: Path, *extra: str) -> list[str]:
    return ["--config", str(ROOT / "configs" / "compare.yaml"), "--config", str(overlay), *extra]


def test_compare_reads_the_pair_and_overrides_rows_by_label(overlay):
    cfg = build_parser().parse_args(expand(compare_args(overlay), "compare"))
    data = yaml.safe_load(overlay.read_text())
    assert (cfg.model.old, cfg.model.new) == (data["pair"]["f_old"], data["pair"]["f_new"])
    assert (cfg.model.dtype, cfg.model.feature_batch_size) == ("bfloat16", 1024)
    assert cfg.data.corpus_path == data["pair"]["corpus_path"]
    rows = {m.label: m for m in cfg.methods}
    plain = {m.label: m for m in build_parser().parse_args(compare_args(overlay)[:2]).methods}
    assert rows["grad_sim"].options["projection"] == "kronecker"
    assert rows["grad_sim"].tune == data["methods"]["grad_sim"]["tune"] != plain["grad_sim"].tune  # replaced
    assert rows["ekfac"].tune == plain["ekfac"].tune  # kept: the overlay names ekfac's options alone
    assert rows["ekfac"].options["lambda_examples"] == 128
    assert "grad_sim_seed" not in rows and "grad_sim_seed" in plain  # dropped at 1B (the overlay says why)
    assert [label for label in plain if label != "grad_sim_seed"] == list(rows)  # table order kept
    assert rows["repsim"] == plain["repsim"]
    assert cfg.out == f"results/compare-{overlay.stem}"


def test_a_flag_after_the_overlay_overrides_it(overlay):
    cfg = build_parser().parse_args(expand(compare_args(overlay, "--model.dtype", "float32"), "compare"))
    assert cfg.model.dtype == "float32"


def test_counterfactual_reads_the_pair_and_its_recipe(overlay):
    args = ["build", *compare_args(overlay), "--out", "gt"]
    cfg = counterfactual_parser().parse_args(expand(args, "counterfactual")).build
    assert cfg.model.old == yaml.safe_load(overlay.read_text())["pair"]["f_old"]
    assert cfg.recipe == "configs/recipes/hops-upstream.yaml"
    assert "grad_sim_seed" not in [m.label for m in cfg.methods]


def test_train_probe_reads_the_pair_as_the_dlps_keys(overlay):
    from train_probe import main

    data = yaml.safe_load(overlay.read_text())
    args = ["--config", str(ROOT / "configs" / "dlp.yaml"), "--config", str(overlay)]
    config = main(args, run=False).config
    assert config.model.model == data["pair"]["f_new"]
    assert config.data.corpus_path == config.model.corpus_path == data["pair"]["corpus_path"]
    assert (config.model.dtype, config.model.document_batch_size) == ("bfloat16", 128)
    assert (config.trainer.accelerator, config.trainer.max_epochs) == ("cpu", 8)
    assert config.trainer.logger.init_args.name == f"dlp-{overlay.stem}"


def test_an_override_of_a_row_the_config_lacks_is_refused(overlay, tmp_path):
    data = yaml.safe_load(overlay.read_text())
    data["methods"]["no_such_row"] = {"options": {}}
    overlay.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match="methods.no_such_row overrides no row"):
        expand(compare_args(overlay), "compare")
    with pytest.raises(UserError, match="give the overlay after the compare config"):
        expand(["--config", str(overlay)], "compare")
