"""``build``: f_old retrained on M random subsets of the corpus with f_new's recipe, K data-order seeds each;
every test query's answer log-probability after each retrain, and the noise ceiling of the seed means.

A regime (`stochastic`) turns the settings into the subsets' masks, the retrain plan and the regime's
manifest entries; `build_ground_truth` runs any regime's plan the same way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from jaxtyping import Bool
from jsonargparse import Namespace
from torch import Tensor

from probes.counterfactual.ground_truth import VERSION, GroundTruth, identity, save_ground_truth
from probes.counterfactual.jobs import Plan, as_mask, subsets_of
from probes.counterfactual.study import ChunkStore, default_workers, load_study, machine, run_chunks
from probes.errors import UserError
from probes.metrics.lds import noise_ceiling

# the data-order seed of a subset's k-th retrain: the recipe's seed + k * this (k = 0: f_new's own order)
SEED_STRIDE = 1000


@dataclass
class RegimePlan:
    """What a regime retrains: ``plan`` holds K retrains per subset, subset by subset (row m * K + k is
    subset m's k-th), ``masks`` the documents each subset keeps, ``manifest`` the regime's entries."""

    masks: Bool[Tensor, "subsets n"]
    plan: Plan
    seeds_per_subset: int
    manifest: dict


def stochastic(
    n: int, *, subsets: int, fraction: float, seeds_per_subset: int, seed: int, recipe_seed: int
) -> RegimePlan:
    """M seeded random subsets keeping ``fraction`` of the ``n`` documents, each retrained with K data-order
    seeds (the kept documents reshuffled); the first is the recipe's own."""
    if not 0 < fraction < 1:
        raise UserError(f"--fraction={fraction}: give the share of documents each subset keeps, in (0, 1)")
    if seeds_per_subset < 1:
        raise UserError(f"--seeds-per-subset={seeds_per_subset}: give 1 or more (2+ for a noise ceiling)")
    size = round(fraction * n)
    if not 0 < size < n:
        raise UserError(f"--fraction={fraction} of {n} documents keeps {size}; give a larger or smaller one")
    chosen = subsets_of(n, size, subsets, seed)
    orders = [recipe_seed + k * SEED_STRIDE for k in range(seeds_per_subset)]
    manifest = {
        "regime": "stochastic",
        "seeds_per_subset": seeds_per_subset,
        "subsets": subsets,
        "fraction": fraction,
        "subset_size": size,
        "seeds": {"subsets": seed, "data_order": orders},
    }
    plan = [(subset, order) for subset in chosen for order in orders]
    return RegimePlan(as_mask(chosen, n), plan, seeds_per_subset, manifest)


def build_ground_truth(
    cfg: Namespace,
    out: Path,
    *,
    subsets: int,
    fraction: float,
    seeds_per_subset: int = 5,
    seed: int = 0,
    stack: int = 25,
    workers: int | None = None,
) -> GroundTruth:
    """Retrain, then write ``out/ground_truth.safetensors`` and ``out/manifest.json``; resumable."""
    if subsets < 3:
        raise UserError(f"--subsets={subsets}: the LDS is a rank correlation over subsets; give at least 3")
    started = time.time()
    study = load_study(cfg, stack=stack)
    n = len(study.job.texts)
    regime = stochastic(
        n,
        subsets=subsets,
        fraction=fraction,
        seeds_per_subset=seeds_per_subset,
        seed=seed,
        recipe_seed=study.recipe_seed,
    )
    ident = identity(
        study.job.texts, study.query_ids, study.query_texts, study.old_model, study.old, study.new
    )
    store = ChunkStore(out, {**regime.manifest, **ident})
    workers = default_workers(study.job.device, workers)
    outputs = run_chunks(store, study.job, regime.plan, workers=workers, desc="ground truth")
    logp = outputs[:, 0].reshape(subsets, regime.seeds_per_subset, -1).float()
    corpus_file = study.data.resolve_corpus_path(cfg.data.corpus_path)
    manifest = {
        "version": VERSION,
        **regime.manifest,
        **ident,
        "corpus": {"path": str(corpus_file), "sha256": study.corpus_sha256},
        "split": {k: v for k, v in cfg.data.as_dict().items() if k != "corpus_path"},
        "recipe": {"pair_manifest": str(Path(study.old).parent / "manifest.json"), **study.job.describe()},
        "accuracy": outputs[:, 1].mean().item(),  # the retrained models' mean test accuracy
        "seconds": round(time.time() - started, 1),
        "workers": workers,
        "machine": machine(study.job),
        "noise_ceiling": noise_ceiling(logp, study.functions),
    }
    gt = GroundTruth(masks=regime.masks, outputs=logp, manifest=manifest, path=out)
    save_ground_truth(out, gt)
    store.finish()
    return gt


def describe(gt: GroundTruth) -> str:
    m, regime = gt.manifest, gt.regime
    ceiling = m["noise_ceiling"]
    line = (
        f"{m['subsets']} subsets keeping {regime['fraction']:g} of the documents ({regime['regime']}, "
        f"{regime['seeds_per_subset']} seeds each), {len(m['queries']['ids'])} test queries, "
        f"{m['seconds']:.0f} s; mean answer log-prob {gt.outputs.mean():.3f}"
    )
    if ceiling:
        low, high = ceiling["ci95"]
        line += f"; noise ceiling (seed means) {ceiling['mean']:.3f} [{low:.3f}, {high:.3f}]"
    return line
