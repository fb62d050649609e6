"""The recipe that fine-tuned a pair's f_new (its config and data-order seed): read from the pair's build
manifest, or from a recipe file (``--recipe FILE``) for a pair this project did not build; what retrains and
metagradients replay."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import yaml

from probes.errors import UserError
from probes.pairs.train import TrainConfig

OPTIMIZERS = ("adamw",)  # what `probes.pairs.train.train` runs (eps: its ADAM_EPS)
# a recipe file's keys besides TrainConfig's: where it comes from, the optimiser, the final learning rate
# (min_lr_ratio = min_lr / lr), the data-order seed, bf16 autocast on a GPU (MAGIC's replay)
RECIPE_KEYS = {"source", "optimizer", "min_lr", "seed", "autocast"}


def read_recipe(path: str | Path) -> tuple[TrainConfig, int, bool]:
    """(fine-tuning config, data-order seed, autocast) of a recipe YAML such as
    configs/recipes/hops-upstream.yaml; an unknown key or optimiser is refused naming the file."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"--recipe {str(path)!r}: no such file")
    raw = yaml.safe_load(file.read_text())
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    if not isinstance(raw, dict) or "seed" not in raw:
        raise UserError(f"{file}: a recipe is a mapping with at least seed (and {sorted(fields)})")
    unknown = sorted(set(raw) - fields - RECIPE_KEYS)
    if unknown:
        raise UserError(f"{file}: unknown recipe key {unknown[0]!r} (known: {sorted(fields | RECIPE_KEYS)})")
    optimizer = str(raw.get("optimizer", "adamw")).lower()
    if optimizer not in OPTIMIZERS:
        raise UserError(f"{file}: optimizer {optimizer!r} is not one of {list(OPTIMIZERS)}")
    cfg = {k: v for k, v in raw.items() if k in fields}
    if "min_lr" in raw:
        if "min_lr_ratio" in raw:
            raise UserError(f"{file}: give min_lr or min_lr_ratio, not both")
        cfg["min_lr_ratio"] = float(raw["min_lr"]) / float(raw.get("lr", TrainConfig.lr))
    try:
        return TrainConfig(**cfg), int(raw["seed"]), bool(raw.get("autocast", False))
    except (TypeError, ValueError) as err:
        raise UserError(f"{file}: {err}") from None


def pair_recipe(
    old: str | Path, corpus_sha256: str, recipe: str | Path | None = None
) -> tuple[TrainConfig, int]:
    """(fine-tuning config, data-order seed) of the build that made the pair whose f_old is ``old``, or of
    the ``recipe`` file when given (any pair: the file says how its f_new was made).

    Only pairs this project built record how f_new was made (``<pair>/manifest.json`` beside ``old/``);
    anything else is refused without a recipe file, as is a pair fine-tuned on another corpus than
    ``corpus_sha256``'s."""
    if recipe is not None:
        return read_recipe(recipe)[:2]
    manifest_path = Path(old).parent / "manifest.json"
    if not Path(old).is_dir() or not manifest_path.is_file():
        raise UserError(
            f"f_old {str(old)!r} has no build manifest ({manifest_path}): the counterfactual ground truth "
            "retrains f_old with the recipe that built f_new, which only pairs built by this project record "
            "(the embedded default, or `python -m probes.pairs build --corpus C --out PAIR [--base B]`); "
            "for another pair give its recipe: --recipe FILE (e.g. configs/recipes/hops-upstream.yaml)"
        )
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("kind") == "scratch":
        cfg = manifest["preset_config"]["finetune"]
    elif manifest.get("kind") == "base":
        cfg = manifest["finetune_config"]
    else:
        raise UserError(f"{manifest_path}: unknown pair kind {manifest.get('kind')!r} (scratch or base)")
    recorded = manifest.get("corpus", {}).get("sha256")
    if recorded != corpus_sha256:
        raise UserError(
            f"{manifest_path}: f_new was fine-tuned on another corpus ({manifest['corpus'].get('path')}) "
            "than the config's data.corpus_path; retraining on this corpus would not reproduce f_new"
        )
    # build.py fine-tunes with seed + 1 (the pretraining of a scratch pair uses seed)
    return TrainConfig(**cfg), int(manifest["seed"]) + 1


def recipe_autocast(old: str | Path, recipe: str | Path | None = None) -> bool:
    """Whether f_new's fine-tune ran under bf16 autocast: the recipe file's ``autocast``, else the build
    manifest's device (`train` autocasts on a GPU; a manifest without it: a CPU build, float32)."""
    if recipe is not None:
        return read_recipe(recipe)[2]
    manifest = json.loads((Path(old).parent / "manifest.json").read_text())
    return str(manifest.get("machine", {}).get("device", "cpu")).startswith("cuda")
