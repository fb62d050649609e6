"""Where the retrain chunks run: here and in local worker processes (``--executor local``, the default,
`probes.counterfactual.jobs.run_plan`), or as Ray tasks (``--executor ray [--ray-address ADDRESS]``) on a
local Ray or an existing cluster, each holding one GPU or the CPU threads it needs. Ray is the optional
``ray`` extra (``pip install 'probes[ray]'``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from probes.counterfactual.jobs import Job, Plan, Runner, run_plan
from probes.errors import UserError

EXECUTORS = ("local", "ray")
RETRIES = 1  # a failed chunk is submitted once more, then named


@dataclasses.dataclass(frozen=True)
class Executor:
    """How retrain chunks run.

    Args:
        kind: "local" (this process, or ``--workers`` processes on a CPU) or "ray" (one Ray task per chunk).
        address: an existing Ray cluster (``ray start --head`` prints it; "auto" finds the local one); None
            starts a Ray of this machine's CPUs and GPUs for the run.
        threads: CPU threads each Ray task holds and runs with when the retrains run on the CPU.
    """

    kind: str = "local"
    address: str | None = None
    threads: int = 1

    def __post_init__(self) -> None:
        if self.kind not in EXECUTORS:
            raise UserError(f"--executor={self.kind!r}: give one of {list(EXECUTORS)}")
        if self.address is not None and self.kind != "ray":
            raise UserError("--ray-address needs --executor ray")


LOCAL = Executor()  # the default: this process, or local worker processes on a CPU


def execute(
    job: Job, chunks: Sequence[tuple[int, Plan]], *, workers: int, executor: Executor
) -> Iterator[tuple[int, Float[Tensor, "k 2 q"]]]:
    """(chunk key, outputs) of every chunk, in completion order, on ``executor``."""
    if executor.kind == "local":
        return run_plan(job, chunks, workers=workers)
    return run_on_ray(job, chunks, executor)


_RUNNERS: dict[Job, Runner] = {}  # per Ray worker process: f_old loaded once for every chunk of a job


def _ray_chunk(job: Job, plan: Plan, threads: int) -> Tensor:
    """One chunk in a Ray worker: on the GPU Ray gave the task (CUDA_VISIBLE_DEVICES) or the CPU."""
    if not job.device.startswith("cuda"):
        torch.set_num_threads(threads)
    if job not in _RUNNERS:
        _RUNNERS.clear()
        _RUNNERS[job] = Runner(job)
    return _RUNNERS[job].run(plan)


def run_on_ray(
    job: Job, chunks: Sequence[tuple[int, Plan]], executor: Executor
) -> Iterator[tuple[int, Float[Tensor, "k 2 q"]]]:
    """Every chunk as a Ray task (one GPU each for a GPU job, else ``executor.threads`` CPUs), yielded as
    each finishes; a failed task is resubmitted `RETRIES` times, then the run stops naming its chunk."""
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'probes[ray]' (or pip install ray)") from None
    if not chunks:
        return
    if not ray.is_initialized():
        ray.init(
            address=executor.address, include_dashboard=False, log_to_driver=False, logging_level="error"
        )
    gpu = job.device.startswith("cuda")
    device = "cuda" if gpu else job.device  # inside a task, its own GPU is cuda:0
    task = ray.remote(num_gpus=1 if gpu else 0, num_cpus=0 if gpu else executor.threads, max_retries=0)
    remote = task(_ray_chunk)
    ref = ray.put(dataclasses.replace(job, device=device))
    pending = {remote.remote(ref, plan, executor.threads): (key, plan, 0) for key, plan in chunks}
    while pending:
        (done,), _ = ray.wait(list(pending), num_returns=1)
        key, plan, tries = pending.pop(done)
        try:
            yield key, ray.get(done)
        except ray.exceptions.RayError as err:
            if tries >= RETRIES:
                what = f"retrain chunk from plan row {key} ({len(plan)} retrains)"
                raise RuntimeError(f"{what} failed {tries + 1} times on Ray: {err}") from err
            pending[remote.remote(ref, plan, executor.threads)] = (key, plan, tries + 1)
