"""``oracle``: MAGIC's influence matrix ``[q, n]`` for every query of a split, as data other tools can train
on (e.g. the DLP's pairwise head on measured influence), with a manifest naming what it belongs to.

``OUT/oracle.safetensors`` holds ``scores`` (float32 [q, n]: d log p(answer_q) / d w_d at w = 1 through
f_new's recorded fine-tune, documents in corpus order; higher = the document helps the answer, dropping it
changes the log-probability by about -score) and ``query_ids`` (int64 [q], the split's query ids in order).
``OUT/manifest.json`` (written last) records the pair, corpus, recipe, queries and the tensors' SHA-256.
Resumable: each reverse pass's rows are kept under ``OUT/parts/`` as the pass finishes, so a run stopped
(a time limit, a lost machine) and started again with the same settings computes only the queries it lacks.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from jsonargparse import Namespace
from safetensors.torch import save_file

from probes.counterfactual.study import PARTS, PLAN
from probes.files import atomic_path
from probes.measured import MANIFEST_FILE, ORACLE_FILE

KIND = "python -m probes.counterfactual oracle"  # its output marker's kind
TENSORS_FILE = ORACLE_FILE  # the folder's format is probes.measured's
FILES = (TENSORS_FILE, MANIFEST_FILE)
OWN = (*FILES, f"{PARTS}/", PLAN)  # what it writes into its folder (parts/ and plan.json go at the end)
SPLITS = {"train": "train", "validation": "val", "val": "val", "test": "test"}
SIGN = (
    "d log p(answer | prompt) under f_new / d w_doc at w = 1; higher helps; dropping changes it by ~ -score"
)


@dataclass
class Loaded:
    """What the oracle of one config and split is computed from."""

    oracle: object  # baselines.magic.Oracle (imported lazily: it pulls in the replay)
    queries: list
    manifest: dict  # the manifest's entries that describe the inputs


def load_oracle(cfg: Namespace, split: str, every: int | None, max_steps: int = 0) -> Loaded:
    """The config's pair, corpus and recipe as a `baselines.magic.Oracle` (its forward replay done) and the
    split's queries; ``max_steps`` caps the replayed run (benchmarks only: 0 = the recipe's own)."""
    from baselines.magic import Oracle
    from probes.counterfactual.ground_truth import identity
    from probes.counterfactual.study import load_pair_inputs
    from probes.pairs.recipe import recipe_autocast
    from probes.pairs.train import encode_texts

    inputs = load_pair_inputs(cfg, split)
    data, old, new, seed, tokenizer = inputs.data, inputs.old, inputs.new, inputs.seed, inputs.tokenizer
    recipe = dataclasses.replace(inputs.recipe, max_steps=max_steps) if max_steps else inputs.recipe
    query_ids, model = inputs.query_ids, inputs.old_model
    ident = identity(data.corpus.texts, query_ids, inputs.query_texts, model, old, new)  # hashed on the CPU
    seqs = encode_texts(tokenizer, data.corpus.texts, recipe.max_length)
    oracle = Oracle(
        model.to(inputs.device), tokenizer, seqs, recipe, seed, every, recipe_autocast(old, cfg.get("recipe"))
    )
    manifest = {
        "split": split,
        **ident,
        "corpus": {"path": str(inputs.corpus_file), "sha256": inputs.corpus_sha256},
        "data": {k: v for k, v in cfg.data.as_dict().items() if k != "corpus_path"},
        "recipe": {
            "pair_manifest": str(Path(old).parent / "manifest.json"),
            "seed": seed,
            "bf16_autocast": oracle.replay.autocast,
            **asdict(recipe),
        },
        "device": inputs.device,
    }
    return Loaded(oracle, [data.queries[i] for i in query_ids], manifest)


def write_oracle(
    cfg: Namespace, out: Path, *, split: str, query_batch: int, every: int | None, overwrite: bool = False
) -> dict:
    """Compute the split's influence matrix and write ``out/oracle.safetensors`` then ``out/manifest.json``
    (``out`` claimed as `probes.outputs.claim_output` does, the files recorded in its marker); returns the
    manifest. Each pass's rows are saved as it finishes, and a rerun of the same settings into ``out``
    computes only the queries it lacks (``query_batch`` may differ: it does not change the scores)."""
    from probes.counterfactual.study import ChunkStore, claim, machine_name
    from probes.hashing import file_sha256

    started = time.time()
    settings = {"split": split, "every": every}
    output = claim(cfg, out, KIND, OWN, overwrite=overwrite, settings=settings)
    loaded = load_oracle(cfg, split, every)
    store = ChunkStore(output, {**settings, **{k: v for k, v in loaded.manifest.items() if k != "device"}})
    rows = store.done()
    missing = [i for i in range(len(loaded.queries)) if i not in rows]
    if rows:
        print(
            f"probes: {len(rows)} of {len(loaded.queries)} queries' rows found in {out}; computing the rest"
        )
    for start, scores in loaded.oracle.passes([loaded.queries[i] for i in missing], query_batch):
        for offset, row in enumerate(scores.float()):
            query = missing[start + offset]
            store.save(query, row)
            rows[query] = row
    scores = torch.stack([rows[i] for i in range(len(loaded.queries))])
    (out / MANIFEST_FILE).unlink(missing_ok=True)
    query_ids = torch.tensor([q.index for q in loaded.queries], dtype=torch.long)
    with atomic_path(out / TENSORS_FILE) as tmp:
        save_file({"scores": scores.contiguous(), "query_ids": query_ids}, str(tmp))
    device = loaded.manifest.pop("device")
    manifest = {
        "version": 1,
        "method": "magic",
        "sign": SIGN,
        **loaded.manifest,
        "settings": {
            "query_batch": query_batch,
            "every": loaded.oracle.metagradients.every,
            "device": device,
        },
        "sha256": {TENSORS_FILE: file_sha256(out / TENSORS_FILE)},
        "seconds": round(time.time() - started, 1),
        "machine": machine_name(device),
    }
    with atomic_path(out / MANIFEST_FILE) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    output.record(*FILES)
    store.finish()
    return manifest
