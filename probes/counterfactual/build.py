"""``build``: f_old retrained on M random subsets of the corpus with f_new's recipe; every test query's answer
log-probability after each retrain, and the noise ceiling from subsets retrained again with another seed."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch
from jsonargparse import Namespace

from probes.counterfactual.fixed_order import regime_settings
from probes.counterfactual.ground_truth import FILES, GroundTruth, identity, save_ground_truth
from probes.counterfactual.jobs import as_mask, subsets_of
from probes.counterfactual.study import (
    PARTS,
    PLAN,
    ChunkStore,
    claim,
    default_workers,
    load_study,
    machine,
    run_chunks,
)
from probes.errors import UserError
from probes.metrics.lds import noise_ceiling

KIND = "python -m probes.counterfactual build"  # its output marker's kind
OWN = (*FILES, f"{PARTS}/", PLAN)  # what it writes into its folder (parts/ and plan.json go at the end)

# the repeats' data order: the recipe's seed + this (the main retrains use the recipe's own seed)
REPEAT_SEED_OFFSET = 1000


def build_ground_truth(
    cfg: Namespace,
    out: Path,
    *,
    subsets: int,
    fraction: float | None = None,
    repeats: int = 0,
    seed: int = 0,
    stack: int = 25,
    workers: int | None = None,
    overwrite: bool = False,
    regime: str = "stochastic",
    drop: float | None = None,
) -> GroundTruth:
    """Retrain, then write ``out/ground_truth.safetensors`` and ``out/manifest.json``; resumable. ``out``
    is claimed as `probes.outputs.claim_output` does (``overwrite``: beside files it did not write). The
    masks mark each subset's kept documents, in either regime (`regime_settings`)."""
    regime_entries = regime_settings(regime, fraction, drop, repeats)
    fraction = regime_entries["fraction"]
    if subsets < 3:
        raise UserError(f"--subsets={subsets}: the LDS is a rank correlation over subsets; give at least 3")
    if not 0 < fraction < 1:
        raise UserError(f"--fraction={fraction}: give the share of documents each subset keeps, in (0, 1)")
    if not 0 <= repeats <= subsets:
        raise UserError(f"--repeats={repeats}: give 0 (no noise ceiling) up to --subsets ({subsets})")
    started = time.time()
    study = load_study(cfg, stack=stack)
    n = len(study.job.texts)
    size = round(fraction * n)
    if not 0 < size < n:
        raise UserError(f"--fraction={fraction} of {n} documents keeps {size}; give a larger or smaller one")
    chosen = subsets_of(n, size, subsets, seed)
    repeat_seed = study.recipe_seed + REPEAT_SEED_OFFSET
    plan = [(s, study.recipe_seed) for s in chosen] + [(chosen[r], repeat_seed) for r in range(repeats)]
    ident = identity(
        study.job.texts, study.query_ids, study.query_texts, study.old_model, study.old, study.new
    )
    settings = {"subsets": subsets, "repeats": repeats, "seed": seed, **regime_entries}
    output = claim(cfg, out, KIND, OWN, overwrite=overwrite, settings=settings)
    store = ChunkStore(output, {**settings, **ident})
    workers = default_workers(study.job.device, workers)
    job = dataclasses.replace(study.job, in_place=regime == "fixed-order")
    outputs = run_chunks(store, job, plan, workers=workers, desc="ground truth")
    logp = outputs[:, 0]
    corpus_file = study.data.resolve_corpus_path(cfg.data.corpus_path)
    manifest = {
        "version": 1,
        "subsets": subsets,
        **regime_entries,
        "subset_size": size,
        "repeats": repeats,
        "seeds": {"subsets": seed, "data_order": study.recipe_seed, "repeats": repeat_seed},
        **ident,
        "corpus": {"path": str(corpus_file), "sha256": study.corpus_sha256},
        "split": {k: v for k, v in cfg.data.as_dict().items() if k != "corpus_path"},
        "recipe": {"pair_manifest": str(Path(study.old).parent / "manifest.json"), **job.describe()},
        "accuracy": outputs[:subsets, 1].mean().item(),  # the retrained models' mean test accuracy
        "seconds": round(time.time() - started, 1),
        "workers": workers,
        "machine": machine(study.job),
        "noise_ceiling": None,
    }
    gt = GroundTruth(
        masks=as_mask(chosen, n),
        outputs=logp[:subsets].float(),
        repeat_index=torch.arange(repeats, dtype=torch.long),
        repeat_outputs=logp[subsets:].float(),
        manifest=manifest,
        path=out,
    )
    gt.manifest["noise_ceiling"] = noise_ceiling(gt, study.functions)
    save_ground_truth(out, gt)
    output.record(*FILES)
    store.finish()
    return gt


def describe(gt: GroundTruth) -> str:
    m = gt.manifest
    ceiling = m["noise_ceiling"]
    kept = f"dropping {m['drop']:g} in place" if m.get("regime") == "fixed-order" else "reshuffled"
    line = (
        f"{m['subsets']} subsets of {m['subset_size']} documents ({kept}), "
        f"{len(m['queries']['ids'])} test queries, "
        f"{m['seconds']:.0f} s; mean answer log-prob {gt.outputs.mean():.3f}"
    )
    if ceiling:
        low, high = ceiling["ci95"]
        line += f"; noise ceiling (seed-to-seed LDS) {ceiling['mean']:.3f} [{low:.3f}, {high:.3f}]"
    return line
