"""``build``: f_old retrained on M random subsets of the corpus with f_new's recipe, in either regime
(`probes.counterfactual.regimes`: stochastic, K data-order seeds each, or fixed-order, dropped in place);
every test query's answer log-probability after each retrain, and the noise ceiling of the seed means.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from jsonargparse import Namespace

from probes.counterfactual.executors import LOCAL, Executor
from probes.counterfactual.ground_truth import FILES, VERSION, GroundTruth, identity, save_ground_truth
from probes.counterfactual.oracle import SPLITS
from probes.counterfactual.regimes import plan_regime, split_seeds
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


def build_ground_truth(
    cfg: Namespace,
    out: Path,
    *,
    subsets: int,
    fraction: float | None = None,
    seeds_per_subset: int | None = None,
    seed: int = 0,
    stack: int = 25,
    workers: int | None = None,
    executor: Executor = LOCAL,
    overwrite: bool = False,
    regime: str = "stochastic",
    drop: float | None = None,
    split: str = "test",
) -> GroundTruth:
    """Retrain, then write ``out/ground_truth.safetensors`` and ``out/manifest.json``; resumable. ``out``
    is claimed as `probes.outputs.claim_output` does (``overwrite``: beside files it did not write). Masks:
    the kept documents, either regime. ``split``: whose answers are recorded (train, validation: DLP use)."""
    if subsets < 3:
        raise UserError(f"--subsets={subsets}: the LDS is a rank correlation over subsets; give at least 3")
    started = time.time()
    study = load_study(cfg, stack=stack, split=split)
    plan = plan_regime(
        regime,
        len(study.job.texts),
        subsets=subsets,
        fraction=fraction,
        drop=drop,
        seeds_per_subset=seeds_per_subset,
        **split_seeds(SPLITS[split], regime, seed, study.recipe_seed),
    )
    ident = identity(
        study.job.texts, study.query_ids, study.query_texts, study.old_model, study.old, study.new
    )
    output = claim(cfg, out, KIND, OWN, overwrite=overwrite, settings=plan.manifest)
    store = ChunkStore(output, {**plan.manifest, **ident, **study.recipe_file})
    workers = default_workers(study.job.device, workers)
    job = dataclasses.replace(study.job, in_place=plan.in_place)
    outputs = run_chunks(store, job, plan.plan, workers=workers, desc="ground truth", executor=executor)
    logp = outputs[:, 0].reshape(subsets, plan.seeds_per_subset, -1).float()
    manifest = {
        "version": VERSION,
        **plan.manifest,
        **ident,
        "query_split": split,
        **_provenance(cfg, study, job),
        "accuracy": outputs[:, 1].mean().item(),  # the retrained models' mean test accuracy
        "seconds": round(time.time() - started, 1),
        "workers": workers,
        "noise_ceiling": noise_ceiling(logp, study.functions),
    }
    gt = GroundTruth(masks=plan.masks, outputs=logp, manifest=manifest, path=out)
    save_ground_truth(out, gt)
    output.record(*FILES)
    store.finish()
    return gt


def _provenance(cfg: Namespace, study, job) -> dict:
    """The manifest's corpus, data split, recipe and machine entries: what the retrains were made from."""
    corpus_file = study.data.resolve_corpus_path(cfg.data.corpus_path)
    return {
        "corpus": {"path": str(corpus_file), "sha256": study.corpus_sha256},
        "split": {k: v for k, v in cfg.data.as_dict().items() if k != "corpus_path"},
        "recipe": {"pair_manifest": str(Path(study.old).parent / "manifest.json"), **job.describe()},
        "machine": machine(study.job),
    }


def describe(gt: GroundTruth) -> str:
    m, regime = gt.manifest, gt.regime
    ceiling = m["noise_ceiling"]
    kept = (
        f"dropping {regime['drop']:g} in place (fixed-order, no seed noise)"
        if regime["regime"] == "fixed-order"
        else f"keeping {regime['fraction']:g} of the documents ({regime['regime']}, "
        f"{regime['seeds_per_subset']} seeds each)"
    )
    line = (
        f"{m['subsets']} subsets {kept}, {len(m['queries']['ids'])} {m.get('query_split', 'test')} queries, "
        f"{m['seconds']:.0f} s; mean answer log-prob {gt.outputs.mean():.3f}"
    )
    if ceiling:
        low, high = ceiling["ci95"]
        line += f"; noise ceiling (seed means) {ceiling['mean']:.3f} [{low:.3f}, {high:.3f}]"
    return line
