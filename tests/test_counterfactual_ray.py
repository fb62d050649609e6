"""``build --executor ray`` on a local Ray cluster of CPU workers gives the local executor's ground truth,
resumes from finished retrains, and retries a failed task once before naming it (skipped without Ray)."""

from __future__ import annotations

import pytest
import torch
from counterfactual_fixtures import isolated_cache, no_figures  # noqa: F401
from safetensors.torch import load_file

from probes.counterfactual import executors, jobs
from probes.counterfactual.__main__ import main
from probes.counterfactual.ground_truth import TENSORS_FILE
from probes.counterfactual.jobs import Job
from probes.errors import UserError
from probes.pairs.train import TrainConfig

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'probes[ray]')")
SETTINGS = ("--subsets", "3", "--seeds-per-subset", "2", "--debug")


@pytest.fixture(scope="module")
def local_ray():
    """A Ray of 2 CPU workers on this machine, shared by the module's tests (started once: seconds)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="error")
    yield
    ray.shutdown()


def build(world: dict, out, *extra: str) -> dict[str, torch.Tensor]:
    main(["build", "--config", str(world["config"]), "--out", str(out), *SETTINGS, *extra])
    return load_file(str(out / TENSORS_FILE))


def test_a_build_on_ray_equals_the_local_one_and_resumes(
    local_ray, counterfactual_world, tmp_path, monkeypatch
):
    local = build(counterfactual_world, tmp_path / "local", "--workers", "1")
    on_ray = build(counterfactual_world, tmp_path / "ray", "--executor", "ray")
    assert all(torch.equal(on_ray[k], local[k]) for k in local)
    run = jobs.Runner.run

    def killed_after_two(self, plan, progress=False):
        if len(list((tmp_path / "resumed" / "parts").glob("row-*"))) >= 2:
            raise KeyboardInterrupt  # the driver killed between two retrains
        return run(self, plan, progress)

    monkeypatch.setattr(jobs.Runner, "run", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        build(counterfactual_world, tmp_path / "resumed", "--workers", "1")
    monkeypatch.setattr(jobs.Runner, "run", run)
    submitted, on_ray_runs = [], executors.run_on_ray
    monkeypatch.setattr(
        executors,
        "run_on_ray",
        lambda job, chunks, ex: submitted.extend(chunks) or on_ray_runs(job, chunks, ex),
    )
    resumed = build(counterfactual_world, tmp_path / "resumed", "--executor", "ray")
    assert len(submitted) == 4  # the 2 finished retrains are read back, not rerun
    assert all(torch.equal(resumed[k], local[k]) for k in local)


def test_a_failed_task_is_retried_once_then_named(local_ray, monkeypatch, tmp_path):
    log = tmp_path / "tries.txt"  # the tasks run in Ray's worker processes: they count tries in a file

    def flaky(job, plan, threads):
        tries = log.read_text().count("\n") if log.exists() else 0
        log.write_text("try\n" * (tries + 1))
        if tries == 0 or job.stack == 2:  # the first try fails; a stack-2 job always fails
            raise RuntimeError("worker lost")
        return torch.full((len(plan), 2, 1), float(job.stack))

    monkeypatch.setattr(executors, "_ray_chunk", flaky)  # Ray pickles this module's function by value
    job = Job("old", (), (), (), (), TrainConfig(), stack=1)
    chunks = [(0, [([0], 0)])]
    [(key, out)] = list(executors.run_on_ray(job, chunks, executors.Executor("ray")))
    assert key == 0 and torch.equal(out, torch.ones(1, 2, 1)) and log.read_text().count("\n") == 2
    log.unlink()
    stuck = Job("old", (), (), (), (), TrainConfig(), stack=2)
    with pytest.raises(RuntimeError, match=r"retrain chunk from plan row 0 \(1 retrains\) failed 2 times"):
        list(executors.run_on_ray(stuck, chunks, executors.Executor("ray")))
    assert log.read_text().count("\n") == 2  # tried twice, not more


def test_a_ray_address_without_the_ray_executor_is_refused():
    with pytest.raises(UserError, match="--ray-address needs --executor ray"):
        executors.Executor("local", "auto")
