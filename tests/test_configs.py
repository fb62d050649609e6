"""Every DLP config (configs/dlp*.yaml, configs/pairs/*.yaml) instantiates through train_probe.py, untrained.

compare/ablation YAMLs are not LightningCLI configs: compare.py's tests cover those.
"""

from __future__ import annotations

import pytest
import yaml
from dlp_fixtures import REPO, load_train_probe, micro_args, run_cli

from probes.models import MultiHotHead, PairwiseHead

DLP_CONFIGS = sorted(p.name for p in (REPO / "configs").glob("dlp*.yaml"))
PAIR_CONFIGS = sorted(p.name for p in (REPO / "configs" / "pairs").glob("*.yaml"))
HEADS = {"dlp.yaml": MultiHotHead, "dlp-heldout-functions.yaml": PairwiseHead}


@pytest.mark.parametrize("name", sorted(HEADS))
def test_document_batch_size_only_with_the_pairwise_head(name):
    # only the pairwise head runs f_new over every document; with the multi-hot head the option does nothing
    raw = yaml.safe_load((REPO / "configs" / name).read_text())
    pairwise = raw["model"]["head"]["class_path"].endswith(".PairwiseHead")
    assert pairwise == (HEADS[name] is PairwiseHead)
    assert ("document_batch_size" in raw["model"]) == pairwise


@pytest.mark.parametrize("name", DLP_CONFIGS)
def test_dlp_config_instantiates(micro_world, in_tmp, name):
    cli = run_cli(micro_world, None, config=f"configs/{name}")
    model, data = cli.model, cli.datamodule
    raw = yaml.safe_load((REPO / "configs" / name).read_text())
    assert model.hparams.n_documents == micro_world.n_documents  # linked from the data at instantiation
    assert model.hparams.split == data.hparams.split == raw["data"]["split"]
    assert model.hparams.corpus_path == str(micro_world.corpus)
    model.configure_model()  # loads the micro f_new and builds the parts the YAML names
    assert isinstance(model.head, HEADS.get(name, (MultiHotHead, PairwiseHead)))
    assert model.generator.num_probes == raw["model"]["generator"]["init_args"]["num_probes"]


@pytest.mark.parametrize("name", PAIR_CONFIGS)
def test_pair_config_parses_on_top_of_dlp(micro_world, in_tmp, name):
    # the hub model is never loaded (f_new loads lazily in configure_model); the corpus and accelerator are
    # swapped for the micro ones so that this runs offline on a CPU
    raw = yaml.safe_load((REPO / "configs" / "pairs" / name).read_text())
    args = [*micro_args(micro_world), f"--config={REPO / 'configs' / 'pairs' / name}"]
    args += [f"--data.corpus_path={micro_world.corpus}", "--trainer.accelerator=cpu"]
    cli = load_train_probe().main(args=args, run=False)
    assert cli.model.hparams.model == raw["pair"]["f_new"] and raw["pair"]["f_new"].startswith("Lamsheeper/")
    assert cli.model.hparams.dtype == "bfloat16"
    assert raw["pair"]["corpus_path"] == "../shared/data/hops/20hops.jsonl"  # the reference corpus
    assert raw["pair"]["device"] == "cuda"


def test_wrong_key_on_the_command_line_fails_naming_it(micro_world, in_tmp, capsys):
    with pytest.raises(SystemExit):
        run_cli(micro_world, None, "--model.generator.init_args.num_probez=3")
    assert "num_probez" in capsys.readouterr().err


def test_wrong_key_in_a_config_file_fails_naming_it(micro_world, in_tmp, capsys):
    config = yaml.safe_load((REPO / "configs" / "dlp.yaml").read_text())
    config["model"]["head"]["init_args"]["dropuot"] = 0.5
    bad = in_tmp / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit):
        load_train_probe().main(args=[*micro_args(micro_world), f"--config={bad}"], run=False)
    assert "dropuot" in capsys.readouterr().err


ALL = [f"configs/{n}" for n in DLP_CONFIGS] + [f"configs/pairs/{n}" for n in PAIR_CONFIGS]


@pytest.mark.parametrize("path", ALL)
def test_every_setting_is_commented(path):
    # class_path/init_args lines are structure, explained by the comment on the key above them
    lines = (REPO / path).read_text().splitlines()
    structural = ("class_path:", "- class_path:", "init_args:")
    bare = [
        i + 1
        for i, line in enumerate(lines)
        if line.strip() and "#" not in line and not line.strip().startswith(structural)
    ]
    assert not bare, f"{path}: lines {bare} have no comment"
