"""Retrain f_old on document subsets and read every test query's answer: the work behind build and remove.

A `Job` holds what a retrain needs (f_old's path, the recipe, the corpus texts, the test prompts and answer
tokens) and is picklable, so that on a CPU each worker process runs whole fine-tunes with
`probes.pairs.train.train` itself (stacking many models under vmap ran slower there: batched matmuls of
small matrices lose to plain ones on a CPU), while on a GPU one process trains ``stack`` models per step
(`probes.counterfactual.retrain.train_stacked`, equal to ``train`` per model).
"""

from __future__ import annotations

import copy
import multiprocessing
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from probes.pairs.train import TrainConfig, encode_texts, train

Plan = list[tuple[list[int], int]]  # (document indices of one retrain, its data-order seed)


@dataclass(frozen=True)
class Job:
    """Everything one retrain needs, by value (sent to worker processes).

    Args:
        old: f_old's folder (weights and tokenizer).
        texts: the corpus's documents, in corpus order (retrain subsets index them).
        prompts: the test queries' prompts, in queries.csv order.
        answers: each prompt's answer token id.
        candidates: the candidate answers' token ids (a query is correct when its answer has the highest
            logit among them, as everywhere in probes).
        recipe: the fine-tuning config that built f_new.
        device: where retrains run; stack: models trained at once on a GPU.
        in_place: the fixed-order regime: every retrain runs on the whole corpus with the recipe's batches,
            the documents outside its subset weighted 0 in place (`probes.pairs.train.token_loss`); False:
            the stochastic regime, a retrain on the subset's documents alone.
    """

    old: str
    texts: tuple[str, ...]
    prompts: tuple[str, ...]
    answers: tuple[int, ...]
    candidates: tuple[int, ...]
    recipe: TrainConfig
    device: str = "cpu"
    stack: int = 1
    in_place: bool = False

    @property
    def chunk(self) -> int:
        """Retrains run together: ``stack`` on a GPU, one per worker call on a CPU."""
        return self.stack if self.device.startswith("cuda") else 1

    def describe(self) -> dict:
        return {
            "recipe": asdict(self.recipe),
            "device": self.device,
            "stack": self.stack,
            "in_place": self.in_place,
        }


class Runner:
    """A loaded f_old (on the job's device) that retrains and evaluates; one per process."""

    def __init__(self, job: Job) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.job = job
        self.tokenizer = AutoTokenizer.from_pretrained(job.old)
        self.model = AutoModelForCausalLM.from_pretrained(job.old, dtype=torch.float32).to(job.device).eval()
        self.seqs = encode_texts(self.tokenizer, list(job.texts), job.recipe.max_length)
        self.pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def outputs(
        self, model: torch.nn.Module, params: dict[str, Tensor] | None = None
    ) -> Float[Tensor, "k 2 q"]:
        """[log p(answer | prompt) over the whole vocabulary; 1.0 where the answer wins among candidates] of
        ``model`` (k = 1), or of the K models stacked in ``params`` (`train_stacked`'s), read at once."""
        from probes.counterfactual.retrain import stacked_logits_at
        from probes.lm.causal import STACKED_ATTENTION, causal_attention
        from probes.lm.scoring import prompt_outputs
        from probes.lm.stack import attention_implementation

        answers = torch.tensor(self.job.answers)
        candidates = torch.tensor(self.job.candidates)

        def read(logits: Tensor, rows: list[int]) -> Tensor:  # logits [b, v] or [b, K, v] -> [b, K * 2]
            logits = logits.float().view(len(rows), -1, logits.shape[-1])
            target = answers[rows].to(logits.device)[:, None].expand(logits.shape[:2])
            logp = logits.log_softmax(-1).gather(2, target[..., None])[..., 0]
            best = candidates.to(logits.device)[logits[..., candidates.to(logits.device)].argmax(-1)]
            return torch.stack([logp, (best == target).float()], -1).flatten(1)

        prompts = list(self.job.prompts)
        if params is None:
            return (
                prompt_outputs(model, self.tokenizer, prompts, read).view(len(prompts), 1, 2).permute(1, 2, 0)
            )
        forward = stacked_logits_at(model, params)
        with attention_implementation(model, STACKED_ATTENTION, causal_attention):
            values = prompt_outputs(model, self.tokenizer, prompts, read, forward=forward)
        return values.view(len(prompts), -1, 2).permute(1, 2, 0)

    def run(self, plan: Plan, progress: bool = False) -> Float[Tensor, "k 2 q"]:
        """Retrain once per (subset, seed) of ``plan`` from f_old and read each retrained model's outputs."""
        from probes.counterfactual.retrain import train_stacked

        subsets, seeds = [s for s, _ in plan], [seed for _, seed in plan]
        weights: list = [None] * len(plan)
        if self.job.in_place:  # every retrain on the whole corpus, its subset's complement weighted 0
            weights = [as_mask([s], len(self.seqs))[0].double().tolist() for s in subsets]
            subsets = [list(range(len(self.seqs)))] * len(plan)
        if self.job.device.startswith("cuda") and len(plan) > 1:
            params = train_stacked(
                self.model,
                self.seqs,
                subsets,
                seeds,
                self.job.recipe,
                pad_id=self.pad,
                progress=progress,
                weights=weights if self.job.in_place else None,
            )
            return self.outputs(self.model, params)
        out = []
        for subset, seed, w in zip(subsets, seeds, weights, strict=True):
            model = copy.deepcopy(self.model)
            seqs = [self.seqs[i] for i in subset]
            train(
                model,
                seqs,
                self.job.recipe,
                pad_id=self.pad,
                seed=seed,
                desc="retrain",
                progress=progress,
                weights=w,
            )
            out.append(self.outputs(model))
        return torch.cat(out)


_RUNNER: Runner | None = None


def _init_worker(job: Job, threads: int) -> None:
    global _RUNNER
    torch.set_num_threads(threads)
    _RUNNER = Runner(job)


def _run_in_worker(item: tuple[int, Plan]) -> tuple[int, Tensor]:
    assert _RUNNER is not None
    return item[0], _RUNNER.run(item[1])


def run_plan(
    job: Job, chunks: Sequence[tuple[int, Plan]], *, workers: int, threads: int | None = None
) -> Iterator[tuple[int, Float[Tensor, "k 2 q"]]]:
    """Yield (chunk key, outputs) for every chunk, in completion order.

    On a CPU with ``workers`` > 1 the chunks are spread over that many processes (``threads`` each, default
    the cores split between them); otherwise they run here, one after another."""
    if not chunks:
        return
    if workers <= 1 or job.device != "cpu":
        runner = Runner(job)
        for key, plan in chunks:
            yield key, runner.run(plan, progress=True)
        return
    cores = torch.get_num_threads()
    per = threads or max(1, cores // workers)
    context = multiprocessing.get_context("spawn")
    with context.Pool(min(workers, len(chunks)), initializer=_init_worker, initargs=(job, per)) as pool:
        yield from pool.imap_unordered(_run_in_worker, chunks)
        pool.close()  # let the workers exit cleanly: terminating them leaks tqdm's semaphores (a warning)
        pool.join()


def subsets_of(n: int, size: int, count: int, seed: int) -> list[list[int]]:
    """``count`` seeded random subsets of exactly ``size`` of ``range(n)`` (sorted indices).

    One size for all: with subsets of varying size, the outputs and any score with a positive mean both
    follow the size, and random scores reach a high LDS (measured 0.55 on a micro setup, -0.02 with one
    size)."""
    generator = torch.Generator().manual_seed(seed)
    return [sorted(torch.randperm(n, generator=generator)[:size].tolist()) for _ in range(count)]


def as_mask(subsets: Sequence[Sequence[int]], n: int) -> Bool[Tensor, "m n"]:
    mask = torch.zeros(len(subsets), n, dtype=torch.bool)
    for row, subset in enumerate(subsets):
        mask[row, list(subset)] = True
    return mask
