"""``python -m probes.counterfactual remove`` on a micro pair: which documents each row drops, one shared
baseline, Δ = baseline - removed per function, the tables; retrains replaced by a known function of the
subset (each query's answer log-prob = how many of its relevant documents the subset keeps)."""

from __future__ import annotations

import json
import shutil

import counterfactual_fixtures as fixtures
import pytest
import torch
from counterfactual_fixtures import isolated_cache, no_figures  # noqa: F401

from probes import methods
from probes.counterfactual import executors, jobs, study
from probes.counterfactual.__main__ import main
from probes.counterfactual.ground_truth import split_queries
from probes.counterfactual.remove import load_compare
from probes.counterfactual.selection import RANDOM, RELEVANCE, method_drop, rank_sum
from probes.data.hops import HopsData
from probes.data.synthetic import write_corpus
from probes.errors import UserError
from probes.hashing import file_checksums, file_sha256
from probes.outputs import claim_output
from probes.pairs.train import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def held_out(world: dict) -> tuple:
    """The test queries' relevance rows and functions, in queries.csv order."""
    data = HopsData(corpus_path=str(world["corpus"]), inputs=[1, 2, 3], test_fraction=0.4).prepare()
    ids, _ = split_queries(data)
    return data.relevant[ids], [data.query_functions[i] for i in ids]


@pytest.fixture
def known_retrains(counterfactual_world, monkeypatch):
    """Runner.run returns, per query, [relevant documents kept, 1 if all kept]; returns the subsets run."""
    relevant, _ = held_out(counterfactual_world)
    plans = []

    def run(self, plan, progress=False):
        out = []
        for subset, _ in plan:
            plans.append(subset)
            kept = relevant[:, subset].sum(dim=1).double()
            out.append(torch.stack([kept, (kept == relevant.sum(dim=1)).double()]))
        return torch.stack(out)

    monkeypatch.setattr(jobs.Runner, "run", run)
    return plans


def remove(world: dict, out, *extra: str):
    argv = ["remove", "--config", str(world["config"]), "--out", str(out), "--workers", "1", "--debug"]
    return main([*argv, *extra])


def test_each_row_drops_its_documents_against_one_shared_baseline(
    counterfactual_world, tmp_path, known_retrains, capsys
):
    remove(counterfactual_world, tmp_path / "out", "--labels", "bm25", "random_a", "--k", "2", "8")
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "removal.json").read_text())
    relevant, functions = held_out(counterfactual_world)
    n = relevant.shape[1]
    assert known_retrains[0] == list(range(n))  # the baseline: the full corpus, retrained once
    dropped_sets = set()
    for k, rows in report["k"].items():
        assert list(rows) == ["bm25", "random_a", RANDOM, RELEVANCE]
        for label, entry in rows.items():
            assert sorted(entry["functions"]) == sorted(set(functions))
            for function, result in entry["functions"].items():
                dropped = result["dropped"]
                queries = [j for j, f in enumerate(functions) if f == function]
                mine = relevant[queries].any(dim=0).nonzero().flatten().tolist()
                if label == RELEVANCE:
                    assert dropped == mine if len(mine) <= int(k) else set(dropped) < set(mine)
                else:
                    assert len(set(dropped)) == len(dropped) == int(k)
                lost = relevant[queries][:, dropped].double().sum(dim=1)  # what the removal costs each query
                assert result["delta_logp"] == pytest.approx(lost.mean().item())
                assert result["delta_acc"] == pytest.approx((lost > 0).double().mean().item())
                dropped_sets.add(tuple(dropped))
        short = rows[RELEVANCE]["fewer_than_k"]
        assert (short == sorted(set(functions))) == (int(k) == 8)
    assert len(known_retrains) == 1 + len(dropped_sets)  # a dropped set shared by two rows retrains once
    assert {tuple(i for i in range(n) if i not in d) for d in dropped_sets} == set(
        map(tuple, known_retrains[1:])
    )
    table = (tmp_path / "out" / "removal.md").read_text()
    assert table in printed and "### k = 2" in table and "### k = 8" in table
    assert "| relevance (all, fewer than k, for 4 of 4 functions) |" in table
    assert report["k"]["8"][RELEVANCE]["logp"]["mean"] > 0  # removing what a query needs lowers it
    assert (
        not (tmp_path / "out" / "parts").exists()
        and (tmp_path / "out" / "compare" / "scores.safetensors").is_file()
    )


def test_controls_do_not_depend_on_the_methods_or_the_other_functions(
    counterfactual_world, tmp_path, known_retrains
):
    remove(counterfactual_world, tmp_path / "both", "--labels", "random_a", "bm25", "--k", "3")
    remove(counterfactual_world, tmp_path / "one", "--labels", "bm25", "--k", "3", "--functions", "2")
    both, one = (json.loads((tmp_path / n / "removal.json").read_text())["k"]["3"] for n in ("both", "one"))
    assert len(one[RANDOM]["functions"]) == 2
    for row in (RANDOM, RELEVANCE, "bm25"):
        for function, result in one[row]["functions"].items():
            assert result["dropped"] == both[row]["functions"][function]["dropped"]


class Killed(RuntimeError):
    """A run stopped from outside between two retrains."""


def test_a_killed_removal_resumes_without_rescoring_or_rerunning_retrains(
    counterfactual_world, tmp_path, monkeypatch, known_retrains
):
    compare, known = load_compare(), jobs.Runner.run
    scored = []
    monkeypatch.setattr(compare, "run", lambda cfg, out, run=compare.run: scored.append(1) or run(cfg, out))

    def dying(self, plan, progress=False):
        if len(known_retrains) >= 3:
            raise Killed
        return known(self, plan, progress)

    monkeypatch.setattr(jobs.Runner, "run", dying)
    with pytest.raises(Killed):
        remove(counterfactual_world, tmp_path / "out", "--labels", "bm25", "--k", "2")
    with pytest.raises(UserError, match=r"\(plan, seed differ\)"):
        remove(counterfactual_world, tmp_path / "out", "--labels", "bm25", "--k", "2", "--seed", "1")
    monkeypatch.setattr(jobs.Runner, "run", known)
    remove(counterfactual_world, tmp_path / "out", "--labels", "bm25", "--k", "2")
    report = json.loads((tmp_path / "out" / "removal.json").read_text())
    assert scored == [1] and len(known_retrains) == report["retrains"]  # each retrain ran once


def test_scores_are_reused_only_for_the_same_inputs_by_content(
    counterfactual_world, tmp_path, monkeypatch, known_retrains
):
    """A rerun reuses compare.py's scores; after f_new is rewritten at the same path it scores again."""
    from transformers import AutoModelForCausalLM

    root = tmp_path / "world"
    shutil.copytree(counterfactual_world["root"] / "pair", root / "pair")
    corpus = shutil.copy(counterfactual_world["corpus"], tmp_path / "micro.jsonl")
    new = root / "pair" / "new"
    world = {"config": fixtures.write_config(tmp_path / "micro.yaml", corpus, root / "pair" / "old", new)}
    compare = load_compare()
    scored = []
    monkeypatch.setattr(compare, "run", lambda cfg, out, run=compare.run: scored.append(1) or run(cfg, out))
    for _ in range(2):
        remove(world, tmp_path / "out", "--labels", "bm25", "--k", "2")
    assert scored == [1]
    model = AutoModelForCausalLM.from_pretrained(new)
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)
    model.save_pretrained(new)
    manifest = json.loads((root / "pair" / "manifest.json").read_text())  # rebuilt: checksums recorded anew
    manifest["files"] = file_checksums(root / "pair", ("old", "new"))
    (root / "pair" / "manifest.json").write_text(json.dumps(manifest))
    remove(world, tmp_path / "out", "--labels", "bm25", "--k", "2")
    assert scored == [1, 1]


def test_rows_a_finished_comparison_scored_from_the_same_inputs_are_taken_the_others_scored(
    counterfactual_world, tmp_path, monkeypatch, known_retrains
):
    """--scores: compare.py's run of the config gives bm25's row (the same documents dropped as when remove
    scores it itself); random_a, whose method entry there has another seed, is scored again."""
    world = counterfactual_world
    other = [{**fixtures.METHODS[0], "options": {"seed": 1}}, fixtures.METHODS[1]]
    pair = world["root"] / "pair"
    config = fixtures.write_config(
        tmp_path / "other.yaml", world["corpus"], pair / "old", pair / "new", other
    )
    compare = load_compare()
    compare.main(["--config", str(config), "--out", str(tmp_path / "cmp")])
    content = json.loads((tmp_path / "cmp" / "inputs.json").read_text())["content"]
    assert content["corpus"] == file_sha256(world["corpus"])
    assert content["new"] == file_checksums(pair, ("new",))
    scored = []
    monkeypatch.setattr(
        compare,
        "run",
        lambda cfg, out, run=compare.run: scored.append([e.label for e in cfg.methods]) or run(cfg, out),
    )
    labels = ["--labels", "bm25", "random_a", "--k", "2"]
    remove(world, tmp_path / "reused", *labels, "--scores", str(tmp_path / "cmp"))
    assert scored == [["random_a"]]
    remove(world, tmp_path / "scored", *labels)
    assert scored == [["random_a"], ["random_a", "bm25"]]
    reused, own = (json.loads((tmp_path / d / "removal.json").read_text()) for d in ("reused", "scored"))
    assert reused["scores"] == {
        "bm25": str(tmp_path / "cmp"),
        "random_a": str(tmp_path / "reused" / "compare"),
    }
    assert reused["k"] == own["k"]


def test_an_unknown_label_is_refused_naming_the_configs_methods(
    counterfactual_world, tmp_path, known_retrains
):
    with pytest.raises(UserError, match=r"--labels lsa: not among the config's methods \(random_a, bm25\)"):
        remove(counterfactual_world, tmp_path / "out", "--labels", "lsa", "--k", "2")
    assert known_retrains == []


def test_a_label_whose_library_is_missing_is_refused_with_the_install_hint(
    counterfactual_world, tmp_path, known_retrains, monkeypatch
):
    """compare.py would skip the row and leave no scores to drop: refused before anything is scored."""
    monkeypatch.setattr(methods, "missing_extra", lambda name: "pip install x" if name == "bm25" else None)
    with pytest.raises(UserError, match=r"--labels bm25: their library is not installed \(pip install x\)"):
        remove(counterfactual_world, tmp_path / "out", "--labels", "random_a", "bm25", "--k", "2")
    assert known_retrains == [] and not (tmp_path / "out").exists()


def test_a_label_naming_a_control_row_is_refused(counterfactual_world, tmp_path, known_retrains):
    config = counterfactual_world["config"]
    with_random = tmp_path / "random.yaml"
    with_random.write_text(config.read_text().replace("label: random_a", "label: random"))
    with pytest.raises(UserError, match=r"--labels random: 'random' and 'relevance' name the control rows"):
        main(
            ["remove", "--config", str(with_random), "--out", str(tmp_path / "out"), "--labels", "random"]
            + ["--k", "2", "--debug"]
        )
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_real_retrains_lose_more_without_the_relevant_documents_than_without_random_ones(tmp_path):
    """On a pair whose recipe memorises, dropping a function's relevant documents (its own and its wrapper's
    or base's) lowers its answers more than dropping as many random documents."""
    corpus = write_corpus(tmp_path / "micro.jsonl", fixtures.CORPUS)
    old, new = fixtures.micro_pair(tmp_path, corpus, finetune=fixtures.MEMORISE)
    world = {"config": fixtures.write_config(tmp_path / "micro.yaml", corpus, old, new)}
    remove(world, tmp_path / "out", "--labels", "bm25", "--k", "6", "--functions", "2")
    rows = json.loads((tmp_path / "out" / "removal.json").read_text())["k"]["6"]
    assert rows[RELEVANCE]["logp"]["mean"] > rows[RANDOM]["logp"]["mean"] + 1.0


def test_rank_sum_gives_each_query_one_vote():
    """Document 0 tops query 0 by a huge margin but is last for query 1; document 1 is second for both."""
    scores = torch.tensor([[1e6, 3.0, 2.0, 1.0], [0.0, 3.0, 2.0, 4.0]])
    assert method_drop(scores, 1, 0, "f") == [1] and scores.sum(dim=0).argmax() == 0
    rescaled = scores * torch.tensor([[1e-9], [1e3]])
    assert torch.equal(rank_sum(rescaled), rank_sum(scores))


def test_chunks_hold_one_subset_size(tmp_path, monkeypatch):
    """Stacked retrains need one size: a plan of mixed sizes is chunked within each size."""
    seen = []

    def fake_run_plan(job, chunks, workers):
        for key, plan in chunks:
            seen.append([len(subset) for subset, _ in plan])
            yield key, torch.zeros(len(plan), 2, 1)

    monkeypatch.setattr(executors, "run_plan", fake_run_plan)
    plan = [(list(range(size)), 0) for size in (12, 10, 10, 4, 10, 10, 4)]
    store = study.ChunkStore(
        claim_output(tmp_path / "out", "test", ["parts/", "plan.json"], overwrite=False), {"a": 1}
    )
    job = jobs.Job("old", (), (), (), (), TrainConfig(), device="cuda", stack=3)  # chunks of 3 (never run)
    assert study.run_chunks(store, job, plan, workers=1, desc="t").shape == (7, 2, 1)
    assert sorted(seen) == [[4, 4], [10], [10, 10, 10], [12]]
