"""The recipe that fine-tuned a pair's f_new (its config and data-order seed), read from the pair's build
manifest: what retrains and metagradients replay."""

from __future__ import annotations

import json
from pathlib import Path

from probes.errors import UserError
from probes.pairs.train import TrainConfig


def pair_recipe(old: str | Path, corpus_sha256: str) -> tuple[TrainConfig, int]:
    """(fine-tuning config, data-order seed) of the build that made the pair whose f_old is ``old``.

    Only pairs this project built record how f_new was made (``<pair>/manifest.json`` beside ``old/``);
    anything else is refused, as is a pair fine-tuned on another corpus than ``corpus_sha256``'s."""
    manifest_path = Path(old).parent / "manifest.json"
    if not Path(old).is_dir() or not manifest_path.is_file():
        raise UserError(
            f"f_old {str(old)!r} has no build manifest ({manifest_path}): the counterfactual ground truth "
            "retrains f_old with the recipe that built f_new, which only pairs built by this project record "
            "(the embedded default, or `python -m probes.pairs build --corpus C --out PAIR [--base B]`)"
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


def recipe_autocast(old: str | Path) -> bool:
    """Whether f_new's fine-tune ran under bf16 autocast: `train` autocasts on a GPU, and the build manifest
    records the device f_new was trained on (a manifest without it: a CPU build, float32)."""
    manifest = json.loads((Path(old).parent / "manifest.json").read_text())
    return str(manifest.get("machine", {}).get("device", "cpu")).startswith("cuda")
