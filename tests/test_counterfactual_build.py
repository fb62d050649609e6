"""``python -m probes.counterfactual build`` on micro pairs: subsets and outputs line up with the documents
and queries, K seeds per subset, a killed build resumes without rerunning finished retrains, foreign pairs
are refused, and compare.py --counterfactual reads what build wrote."""

from __future__ import annotations

import json
import multiprocessing.pool

import counterfactual_fixtures as fixtures
import pytest
import torch
from compare_fixtures import load_compare
from counterfactual_fixtures import isolated_cache, no_figures  # noqa: F401
from lm_fixtures import make_micro_pair, micro_rows
from safetensors.torch import load_file

from probes.counterfactual import jobs, regimes
from probes.counterfactual.__main__ import main
from probes.counterfactual.ground_truth import TENSORS_FILE, load_ground_truth, split_queries
from probes.data.hops import HopsData
from probes.data.synthetic import GeneratorConfig, write_corpus
from probes.errors import UserError
from probes.metrics.lds import lds, noise_ceiling

pytestmark = pytest.mark.usefixtures("one_thread")


def build(config, out, *extra: str):
    return main(["build", "--config", str(config), "--out", str(out), "--workers", "1", "--debug", *extra])


RUN = jobs.Runner.run  # the real retrain, wrapped by count_retrains


class Killed(RuntimeError):
    """A build stopped from outside between two retrains."""


def count_retrains(monkeypatch, fail_after: int | None = None) -> list:
    """Record every plan Runner.run retrains; raise (a killed build) once ``fail_after`` retrains ran."""
    plans = []

    def counted(self, plan, progress=False):
        if fail_after is not None and len(plans) >= fail_after:
            raise Killed
        plans.extend(plan)
        return RUN(self, plan, progress)

    monkeypatch.setattr(jobs.Runner, "run", counted)
    return plans


def test_masks_and_outputs_line_up_with_documents_and_queries(tmp_path, monkeypatch):
    """On a pair whose recipe memorises, the subset without <GN>'s documents answers <GN>'s query worse than
    the subset without <JN>'s, and the reverse for <JN>: rows of masks and outputs are the subsets retrained,
    columns of outputs the test queries in split_queries order."""
    corpus = write_corpus(tmp_path / "micro.jsonl", fixtures.CORPUS)
    old, new = fixtures.micro_pair(tmp_path, corpus, finetune=fixtures.MEMORISE)
    config = fixtures.write_config(tmp_path / "micro.yaml", corpus, old, new)
    data = HopsData(corpus_path=str(corpus), inputs=[1, 2, 3], test_fraction=0.4).prepare()
    docs = {f: [i for i, d in enumerate(data.corpus.documents) if d.func == f] for f in ("<GN>", "<JN>")}
    wrappers = [i for i, d in enumerate(data.corpus.documents) if d.func in ("<FN>", "<IN>")]
    subsets = [[i for i in range(12) if i not in gone] for gone in (docs["<GN>"], docs["<JN>"], wrappers)]
    monkeypatch.setattr(regimes, "subsets_of", lambda n, size, count, seed: subsets)
    plans = count_retrains(monkeypatch)
    build(config, tmp_path / "gt", "--subsets", "3", "--fraction", str(8 / 12), "--seeds-per-subset", "2")
    gt = load_ground_truth(tmp_path / "gt")
    ids, _ = split_queries(data)
    assert gt.manifest["queries"]["ids"] == ids
    recipe_seed = gt.manifest["seeds"]["data_order"][0]
    assert gt.manifest["seeds"]["data_order"] == [recipe_seed, recipe_seed + regimes.SEED_STRIDE]
    assert [(sorted(s), seed) for s, seed in plans] == [
        (subset, seed) for subset in subsets for seed in gt.manifest["seeds"]["data_order"]
    ]
    assert [row.nonzero().flatten().tolist() for row in gt.masks] == subsets
    assert gt.regime == {"regime": "stochastic", "seeds_per_subset": 2, "fraction": 8 / 12}
    assert not torch.equal(gt.outputs[:, 0], gt.outputs[:, 1])  # another data order, another model
    functions = [data.query_functions[i] for i in ids]
    for function, without, with_ in (("<GN>", 0, 1), ("<JN>", 1, 0)):
        rows = [j for j, f in enumerate(functions) if f == function]
        assert (gt.outputs[without][:, rows] < gt.outputs[with_][:, rows] - 1.0).all()
    assert gt.manifest["noise_ceiling"] == noise_ceiling(gt.outputs, functions)


def test_a_killed_build_resumes_without_rerunning_finished_retrains(
    counterfactual_world, tmp_path, monkeypatch
):
    count_retrains(monkeypatch, fail_after=2)
    settings = ("--subsets", "3", "--seeds-per-subset", "2")
    with pytest.raises(Killed):
        build(counterfactual_world["config"], tmp_path / "gt", *settings)
    assert len(list((tmp_path / "gt" / "parts").glob("row-*.safetensors"))) == 2
    with pytest.raises(UserError, match=r"\(seeds, seeds_per_subset differ\)"):
        build(counterfactual_world["config"], tmp_path / "gt", "--subsets", "3", "--seeds-per-subset", "1")
    plans = count_retrains(monkeypatch)
    build(counterfactual_world["config"], tmp_path / "gt", *settings)
    assert len(plans) == 4 and not (tmp_path / "gt" / "parts").exists()
    build(counterfactual_world["config"], tmp_path / "whole", *settings)
    resumed, whole = (load_file(str(tmp_path / name / TENSORS_FILE)) for name in ("gt", "whole"))
    assert all(torch.equal(resumed[key], whole[key]) for key in whole)


def test_a_build_on_worker_processes_equals_one_in_this_process_and_its_workers_exit_cleanly(
    counterfactual_world, tmp_path, monkeypatch
):
    """--workers 2 (a spawned process pool) writes this process's ground truth, and its workers have exited
    by themselves (exit code 0) before the pool is torn down: terminated workers leave their progress bars'
    semaphores behind, and Python warns of "leaked semaphore objects" at shutdown."""
    exit_codes, leave = [], multiprocessing.pool.Pool.__exit__

    def recorded(pool, *exc):
        exit_codes.extend(worker.exitcode for worker in pool._pool)
        return leave(pool, *exc)

    monkeypatch.setattr(multiprocessing.pool.Pool, "__exit__", recorded)
    settings = ("--subsets", "3", "--seeds-per-subset", "1")
    build(counterfactual_world["config"], tmp_path / "here", *settings)
    main(
        [
            "build",
            "--config",
            str(counterfactual_world["config"]),
            "--out",
            str(tmp_path / "pool"),
            *settings,
            "--workers",
            "2",
            "--debug",
        ]
    )
    assert exit_codes == [0, 0]
    here, pool = (load_file(str(tmp_path / name / TENSORS_FILE)) for name in ("here", "pool"))
    assert all(torch.equal(pool[key], here[key]) for key in here)


def test_a_pair_without_a_build_manifest_is_refused(tmp_path, write_jsonl):
    corpus = write_jsonl(micro_rows(), "micro.jsonl")
    old, new = make_micro_pair(tmp_path / "pair")
    config = fixtures.write_config(tmp_path / "micro.yaml", corpus, old, new)
    with pytest.raises(UserError, match=r"no build manifest \(.*pair/manifest\.json\)"):
        build(config, tmp_path / "gt")


def test_a_pair_built_on_another_corpus_is_refused(counterfactual_world, tmp_path):
    other = write_corpus(tmp_path / "other.jsonl", GeneratorConfig(n_base=2, docs_per_base=4, seed=7))
    pair = counterfactual_world["root"] / "pair"
    config = fixtures.write_config(tmp_path / "other.yaml", other, pair / "old", pair / "new")
    with pytest.raises(UserError, match="fine-tuned on another corpus"):
        build(config, tmp_path / "gt")
    assert not (tmp_path / "gt").exists()


def test_compare_reads_the_lds_of_a_built_ground_truth(counterfactual_world, tmp_path):
    build(counterfactual_world["config"], tmp_path / "gt", "--subsets", "4", "--seeds-per-subset", "2")
    compare = load_compare()
    out = compare.main(
        [
            "--config",
            str(counterfactual_world["config"]),
            "--out",
            str(tmp_path / "out"),
            "--counterfactual",
            str(tmp_path / "gt"),
        ]
    )
    metrics = json.loads((out / "metrics.json").read_text())
    scores = load_file(str(out / "scores.safetensors"))
    gt = load_ground_truth(tmp_path / "gt")
    data = HopsData(
        corpus_path=str(counterfactual_world["corpus"]), inputs=[1, 2, 3], test_fraction=0.4
    ).prepare()
    functions = [data.query_functions[i] for i in gt.manifest["queries"]["ids"]]
    for label in ("random_a", "bm25", "relevance"):
        assert metrics[label]["lds"]["gt"] == lds(scores[label], gt.masks, gt.seed_mean, functions)[1]
    ceiling = metrics["counterfactual"]["gt"]["noise_ceiling"]
    assert ceiling == gt.manifest["noise_ceiling"] == noise_ceiling(gt.outputs, functions)


def test_a_corrupt_part_is_recomputed_on_resume(counterfactual_world, tmp_path, monkeypatch):
    """Regression (issue 25): a part of the same size with other bytes was used on resume, and the final
    outputs differed from a clean build's."""
    count_retrains(monkeypatch, fail_after=2)
    with pytest.raises(Killed):
        build(counterfactual_world["config"], tmp_path / "gt", "--subsets", "4", "--seeds-per-subset", "1")
    part = sorted((tmp_path / "gt" / "parts").glob("row-*.safetensors"))[0]
    data = bytearray(part.read_bytes())
    data[-1] ^= 0x80  # the sign bit of the last output
    part.write_bytes(bytes(data))
    plans = count_retrains(monkeypatch)
    build(counterfactual_world["config"], tmp_path / "gt", "--subsets", "4", "--seeds-per-subset", "1")
    assert len(plans) == 3  # the corrupt row again, and the two never run
    build(counterfactual_world["config"], tmp_path / "whole", "--subsets", "4", "--seeds-per-subset", "1")
    resumed, whole = (load_file(str(tmp_path / name / TENSORS_FILE)) for name in ("gt", "whole"))
    assert all(torch.equal(resumed[key], whole[key]) for key in whole)


@pytest.mark.parametrize("overwrite", [(), ("--overwrite",)], ids=["plain", "overwrite"])
@pytest.mark.parametrize("user_file", ["parts/notes.txt", "manifest.json"])
def test_a_users_file_in_a_folder_like_a_ground_truth_is_never_touched(
    counterfactual_world, tmp_path, monkeypatch, user_file, overwrite
):
    """Regression (issue 25): a user's file in GT/parts/ went with parts/ at the end of the build, and a
    user's lone manifest.json was overwritten."""
    out = tmp_path / "gt"
    (out / user_file).parent.mkdir(parents=True, exist_ok=True)
    (out / user_file).write_text("precious")
    monkeypatch.setattr(jobs.Runner, "run", lambda *a, **k: pytest.fail("retrained before refusing"))
    with pytest.raises(ValueError, match=user_file if overwrite else "--overwrite"):
        build(counterfactual_world["config"], out, "--subsets", "3", *overwrite)
    assert [p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()] == [user_file]


def test_a_file_put_into_parts_during_the_build_is_kept(counterfactual_world, tmp_path, monkeypatch):
    out = tmp_path / "gt"

    def run(self, plan, progress=False):
        (out / "parts" / "notes.txt").write_text("precious")
        return RUN(self, plan, progress)

    monkeypatch.setattr(jobs.Runner, "run", run)
    build(counterfactual_world["config"], out, "--subsets", "3", "--seeds-per-subset", "1")
    assert (out / "parts" / "notes.txt").read_text() == "precious"
    assert not list((out / "parts").glob("row-*")) and not (out / "plan.json").exists()
    load_ground_truth(out)


def test_a_training_split_build_records_the_training_queries_and_is_no_test_ground_truth(
    counterfactual_world, tmp_path
):
    from probes.models.influence import InfluenceTarget

    config = counterfactual_world["config"]
    build(
        config,
        tmp_path / "train",
        "--subsets",
        "3",
        "--seeds-per-subset",
        "1",
        "--split",
        "train",
        "--seed",
        "1",
    )
    data = HopsData(
        corpus_path=str(counterfactual_world["corpus"]), inputs=[1, 2, 3], test_fraction=0.4
    ).prepare()
    gt = load_ground_truth(tmp_path / "train")
    assert gt.manifest["query_split"] == "train"
    # never the retrains of a test ground truth: other subsets (seed 1 moved), other data orders
    test_plan = regimes.plan_regime(
        "stochastic",
        gt.masks.shape[1],
        subsets=3,
        fraction=0.5,
        drop=None,
        seeds_per_subset=1,
        seed=1,
        recipe_seed=gt.manifest["seeds"]["data_order"][0] - 500,
    )
    assert gt.manifest["seeds"]["subsets"] == 1 + 2 * regimes.SPLIT_SEED_OFFSET
    assert not torch.equal(gt.masks, test_plan.masks)
    assert gt.manifest["seeds"]["data_order"] != test_plan.manifest["seeds"]["data_order"]
    assert gt.manifest["queries"]["ids"] == split_queries(data, "train")[0] != split_queries(data, "test")[0]
    target = InfluenceTarget(tmp_path / "train")  # the influence-trained DLP's target
    assert sorted(target.rows) == sorted(split_queries(data, "train")[0])
    target.check_documents(data.corpus.texts)
    with pytest.raises(UserError, match="does not belong to this run"):
        load_compare().main(
            [
                "--config",
                str(config),
                "--out",
                str(tmp_path / "out"),
                "--counterfactual",
                str(tmp_path / "train"),
                "--debug",
            ]
        )
    with pytest.raises(UserError, match="--split='dev'"):
        build(config, tmp_path / "dev", "--subsets", "3", "--split", "dev")
