"""Recipe files (``--recipe FILE``) for pairs this project did not build: one restating a micro pair's
manifest gives the manifest's ground truth, a pair with neither is refused naming --recipe, and the
fine-tune's schedule shapes (warm-up steps, constant steps, cosine) leave the default recipe's numbers as
they were."""

from __future__ import annotations

import json
import math
from pathlib import Path

import counterfactual_fixtures as fixtures
import pytest
import torch
import yaml
from counterfactual_fixtures import isolated_cache, no_figures  # noqa: F401
from lm_fixtures import make_micro_pair, micro_rows
from safetensors.torch import load_file

from probes.counterfactual.__main__ import main
from probes.counterfactual.ground_truth import TENSORS_FILE
from probes.errors import UserError
from probes.pairs.recipe import read_recipe
from probes.pairs.train import TrainConfig, schedule

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ("--subsets", "3", "--seeds-per-subset", "2", "--workers", "1", "--debug")


def build(config: Path, out: Path, *extra: str) -> dict[str, torch.Tensor]:
    main(["build", "--config", str(config), "--out", str(out), *SETTINGS, *extra])
    return load_file(str(out / TENSORS_FILE))


def restated(world: dict, path: Path, **change) -> Path:
    """A recipe file with the micro pair's manifest's fine-tune and data-order seed (build seed + 1)."""
    manifest = json.loads((world["root"] / "pair" / "manifest.json").read_text())
    recipe = {**manifest["preset_config"]["finetune"], "seed": manifest["seed"] + 1, **change}
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_a_recipe_restating_the_manifest_gives_its_ground_truth(counterfactual_world, tmp_path):
    from_manifest = build(counterfactual_world["config"], tmp_path / "manifest")
    same = restated(counterfactual_world, tmp_path / "same.yaml")
    from_file = build(counterfactual_world["config"], tmp_path / "file", "--recipe", str(same))
    assert from_file.keys() == from_manifest.keys()
    assert all(torch.equal(from_file[k], from_manifest[k]) for k in from_manifest)
    other = restated(counterfactual_world, tmp_path / "other.yaml", lr=0.5)  # the file is what runs
    moved = build(counterfactual_world["config"], tmp_path / "other", "--recipe", str(other))
    assert not torch.equal(moved["outputs"], from_manifest["outputs"])


def test_a_pair_without_manifest_or_recipe_is_refused_naming_recipe(tmp_path, write_jsonl):
    corpus = write_jsonl(micro_rows(), "micro.jsonl")
    old, new = make_micro_pair(tmp_path / "pair")
    config = fixtures.write_config(tmp_path / "micro.yaml", corpus, old, new)
    with pytest.raises(UserError, match=r"no build manifest.*--recipe FILE"):
        build(config, tmp_path / "gt")


def test_the_upstream_recipe_file_reads_as_its_source_states():
    cfg, seed, autocast = read_recipe(ROOT / "configs" / "recipes" / "hops-upstream.yaml")
    assert (cfg.lr, cfg.batch_size, cfg.warmup_steps, cfg.constant_steps, cfg.epochs) == (
        5e-4,
        15,
        400,
        4000,
        600,
    )
    assert math.isclose(cfg.lr * cfg.min_lr_ratio, 2e-4) and seed == 42 and autocast
    assert (cfg.weight_decay, cfg.max_length, cfg.betas) == (0.01, 2048, (0.9, 0.95))


@pytest.mark.parametrize(
    "text, match",
    [
        ("seed: 1\nsgd_momentum: 0.9\n", "unknown recipe key 'sgd_momentum'"),
        ("seed: 1\noptimizer: sgd\n", "sgd"),
        ("seed: 1\nbetas: [0.9]\n", "betas must be two numbers"),
        ("seed: 1\nbetas: [0.9, 1.5]\n", "betas must be two numbers"),
    ],
)
def test_a_recipe_the_fine_tune_cannot_run_is_refused(tmp_path, text, match):
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(UserError, match=f"r.yaml: .*{match}"):
        read_recipe(tmp_path / "r.yaml")


def test_the_schedule_warms_up_holds_then_decays_and_the_default_is_unchanged():
    cfg = TrainConfig(epochs=1, batch_size=1, lr=1.0, min_lr_ratio=0.4, warmup_steps=4, constant_steps=6)
    total, lr_at = schedule(cfg, 30)
    assert total == 30
    assert [lr_at(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert all(lr_at(s) == 1.0 for s in range(4, 10))
    assert lr_at(10) == 1.0 and lr_at(20) == pytest.approx(0.7) and lr_at(29) > 0.4
    default = TrainConfig(epochs=2, batch_size=4)  # 40 texts: 20 steps, warm-up int(0.05 x 20) = 1 step
    total, lr_at = schedule(default, 40)
    reference = [1.0] + [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - 1) / 19)) for s in range(1, 20)]
    assert total == 20 and [lr_at(s) for s in range(20)] == pytest.approx(reference, abs=1e-12)


def test_an_unfinished_build_resumes_only_with_its_recipe_file(counterfactual_world, tmp_path, monkeypatch):
    from probes.counterfactual import jobs

    run = jobs.Runner.run

    def killed_after_one(self, plan, progress=False):
        if list((tmp_path / "gt" / "parts").glob("row-*")):
            raise KeyboardInterrupt  # the build killed between two retrains
        return run(self, plan, progress)

    monkeypatch.setattr(jobs.Runner, "run", killed_after_one)
    same = restated(counterfactual_world, tmp_path / "same.yaml")
    with pytest.raises(KeyboardInterrupt):
        build(counterfactual_world["config"], tmp_path / "gt", "--recipe", str(same))
    monkeypatch.setattr(jobs.Runner, "run", run)
    other = restated(counterfactual_world, tmp_path / "other.yaml", lr=0.5)
    with pytest.raises(UserError, match=r"other settings \(recipe_file differ\)"):
        build(counterfactual_world["config"], tmp_path / "gt", "--recipe", str(other))
    build(counterfactual_world["config"], tmp_path / "gt", "--recipe", str(same))  # its own file resumes
