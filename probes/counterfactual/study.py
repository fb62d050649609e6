"""What build and remove share: the compare config's data, pair and test split, a retrain `Job`, and the
resumable store (each finished retrain is a file: a killed run resumes where it stopped)."""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from jsonargparse import Namespace
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from probes.counterfactual.executors import LOCAL, Executor, execute
from probes.counterfactual.jobs import Job, Plan
from probes.errors import UserError, one_line
from probes.files import atomic_path
from probes.outputs import Output, OutputRefused, claim_output
from probes.pairs.recipe import pair_recipe
from probes.progress import progress_bar

PARTS = "parts"  # a run's finished retrains, removed once its results are written
PLAN = "plan.json"  # the run's settings; a rerun with other settings is refused, the same ones resume


@dataclass
class Study:
    """The compare config's data (prepared) and corpus file's SHA-256, pair paths, f_old (CPU, float32), test
    split and recipe."""

    data: object
    corpus_sha256: str
    old: str
    new: str
    old_model: torch.nn.Module
    query_ids: list[int]
    query_texts: list[str]
    functions: list[str]
    recipe_seed: int
    job: Job
    # a recipe file's settings, in every run's plan.json so that another file's retrains are never mixed in
    # (a pair's own recipe is pinned by f_old's hash already)
    recipe_file: dict = field(default_factory=dict)


@dataclass
class PairInputs:
    """What a compare config names, loaded once for a counterfactual command: the prepared data, the
    resolved pair and its device, the corpus file and its SHA-256, the fine-tune recipe and its data-order
    seed, f_old's tokenizer and f_old (CPU, float32, for its weights hash), a split's query ids and texts."""

    data: object
    old: str
    new: str
    device: str
    corpus_file: Path
    corpus_sha256: str
    recipe: object
    seed: int
    tokenizer: object
    old_model: torch.nn.Module
    query_ids: list[int]
    query_texts: list[str]


def load_pair_inputs(cfg: Namespace, split: str) -> PairInputs:
    """`PairInputs` of ``cfg`` for ``split`` (train, validation or test); an unknown split is refused
    first."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from probes.compare.config import PairConfig
    from probes.counterfactual.ground_truth import split_queries
    from probes.counterfactual.oracle import SPLITS
    from probes.data.hops import HopsData
    from probes.hashing import file_sha256

    if split not in SPLITS:
        raise UserError(f"--split={split!r}: give one of train, validation, test")
    data = HopsData(**cfg.data.as_dict())
    data.prepare()
    pair = PairConfig(**cfg.model.as_dict())
    old, new = pair.paths(cfg.data.corpus_path)
    corpus_file = data.resolve_corpus_path(cfg.data.corpus_path)
    corpus_sha256 = file_sha256(corpus_file)
    recipe, seed = pair_recipe(old, corpus_sha256, cfg.get("recipe"))
    tokenizer = AutoTokenizer.from_pretrained(old)
    old_model = AutoModelForCausalLM.from_pretrained(old, dtype=torch.float32).eval()
    query_ids, query_texts = split_queries(data, SPLITS[split])
    return PairInputs(
        data,
        old,
        new,
        pair.device,
        corpus_file,
        corpus_sha256,
        recipe,
        seed,
        tokenizer,
        old_model,
        query_ids,
        query_texts,
    )


def load_study(cfg: Namespace, *, stack: int, split: str = "test") -> Study:
    """Load what a compare config names (f_old on the CPU for its weights hash) and the retrain job, whose
    queries are ``split``'s (test, validation or train)."""
    from probes.lm.scoring import answer_token_ids

    inputs = load_pair_inputs(cfg, split)
    data, old, new, recipe, seed = inputs.data, inputs.old, inputs.new, inputs.recipe, inputs.seed
    tokenizer, query_ids = inputs.tokenizer, inputs.query_ids
    queries = [data.queries[i] for i in query_ids]
    candidates = answer_token_ids(tokenizer, data.candidates)
    answers = answer_token_ids(tokenizer, [q.constant for q in queries])
    job = Job(
        old=old,
        texts=tuple(data.corpus.texts),
        prompts=tuple(q.prompt for q in queries),
        answers=tuple(answers.tolist()),
        candidates=tuple(candidates.tolist()),
        recipe=recipe,
        device=inputs.device,
        stack=stack,
    )
    functions = [data.query_functions[i] for i in query_ids]
    pinned = {"recipe_file": {"seed": seed, **asdict(recipe)}} if cfg.get("recipe") else {}
    return Study(
        data,
        inputs.corpus_sha256,
        old,
        new,
        inputs.old_model,
        query_ids,
        inputs.query_texts,
        functions,
        seed,
        job,
        pinned,
    )


def claim(cfg: Namespace, out: Path, kind: str, own, *, overwrite: bool, settings: dict, write: bool = True):
    """`probes.outputs.claim_output` of ``out`` for ``kind``, never replacing the config's input files."""
    inputs = [cfg.data.corpus_path, cfg.model.old, cfg.model.new, cfg.get("dlp_checkpoint")]
    return claim_output(out, kind, own, overwrite=overwrite, settings=settings, inputs=inputs, write=write)


def machine(job: Job) -> dict:
    return machine_name(job.device)


def machine_name(device: str) -> dict:
    """The platform, the device's name and torch's version, for a manifest."""
    name = torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or "cpu"
    return {"platform": platform.platform(), "device": name, "torch": torch.__version__}


class ChunkStore:
    """Finished retrains of a run under ``parts/`` of its claimed output (one file per row of the plan, each
    recorded with its checksum in the output's marker); ``plan.json`` holds the run's settings so that a
    rerun resumes only the same run."""

    def __init__(self, output: Output, settings: dict) -> None:
        self.output, self.parts = output, output.folder / PARTS
        settings = json.loads(json.dumps(settings))  # as plan.json reads back (tuples become lists)
        plan = output.folder / PLAN
        if plan.is_file():
            recorded = json.loads(output.verify(PLAN).read_text())
            if recorded != settings:
                changed = sorted(k for k in {*recorded, *settings} if recorded.get(k) != settings.get(k))
                raise UserError(
                    f"{output.folder} holds an unfinished run with other settings ({', '.join(changed)} "
                    "differ); rerun with the same settings to resume it, or give another --out"
                )
        else:
            with atomic_path(plan) as tmp:
                tmp.write_text(json.dumps(settings, indent=2) + "\n")
            output.record(PLAN)
        self.parts.mkdir(exist_ok=True)

    def done(self) -> dict[int, Tensor]:
        """Outputs of the retrains already finished, by row of the plan; a part that fails its checksum (or
        cannot be read) is removed, and its row runs again."""
        found = {}
        for path in sorted(self.parts.glob("row-*.safetensors")):
            name = path.relative_to(self.output.folder).as_posix()
            try:
                found[int(path.stem.split("-")[1])] = load_file(str(self.output.verify(name)))["outputs"]
            except (OutputRefused, SafetensorError, OSError, KeyError, ValueError) as err:
                print(f"probes: {name} is damaged ({one_line(err)}); its retrain runs again")
                self.output.remove(name)
        return found

    def save(self, row: int, outputs: Tensor) -> None:
        """Keep each retrain's outputs as its own file, so that a rerun may chunk the rest differently."""
        name = f"{PARTS}/row-{row:06d}.safetensors"
        with atomic_path(self.output.folder / name) as tmp:
            save_file({"outputs": outputs.contiguous()}, str(tmp))
        self.output.record(name)

    def finish(self) -> None:
        """Drop the run's own bookkeeping (its parts, ``plan.json``) once its results are written; a file in
        ``parts/`` that the run did not write is kept."""
        kept = self.output.remove(f"{PARTS}/")
        self.output.remove(PLAN)
        if kept:
            print(f"probes: kept {', '.join(kept)} (not written by this run)")


def run_chunks(
    store: ChunkStore, job: Job, plan: Plan, *, workers: int, desc: str, executor: Executor = LOCAL
) -> torch.Tensor:
    """Outputs ``[len(plan), 2, q]`` of every retrain in ``plan``: finished ones read back, the others run
    on ``executor`` (up to ``job.chunk`` retrains at a time, each chunk's subsets of one size, as stacking
    needs) and each saved as its chunk finishes."""
    done = store.done()
    by_size: dict[int, list[int]] = {}
    for row in range(len(plan)):
        if row not in done:
            by_size.setdefault(len(plan[row][0]), []).append(row)
    chunk = job.chunk
    runs = {rows[i]: rows[i : i + chunk] for rows in by_size.values() for i in range(0, len(rows), chunk)}
    chunks = [(first, [plan[r] for r in rows]) for first, rows in runs.items()]
    with progress_bar(total=len(plan), initial=len(done), desc=desc, unit="retrain") as bar:
        for first, outputs in execute(job, chunks, workers=workers, executor=executor):
            rows = runs[first]
            for row, output in zip(rows, outputs, strict=True):
                store.save(row, output)
                done[row] = output
            bar.update(len(rows))
    return torch.stack([done[row] for row in range(len(plan))])


def default_workers(device: str, workers: int | None) -> int:
    """Worker processes: every core on a CPU (one thread each), one process on a GPU."""
    if workers is not None:
        return workers
    return max(1, torch.get_num_threads()) if device == "cpu" else 1
