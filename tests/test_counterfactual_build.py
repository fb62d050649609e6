"""``python -m probes.counterfactual build`` on micro pairs: subsets and outputs line up with the documents
and queries, a killed build resumes without rerunning finished retrains, foreign pairs are refused, and
compare.py --counterfactual reads what build wrote."""

from __future__ import annotations

import json

import counterfactual_fixtures as fixtures
import pytest
import torch
from compare_fixtures import load_compare
from counterfactual_fixtures import isolated_cache, no_figures  # noqa: F401
from lm_fixtures import make_micro_pair, micro_rows
from safetensors.torch import load_file

from probes.counterfactual import build as build_module
from probes.counterfactual import jobs
from probes.counterfactual.__main__ import main
from probes.counterfactual.ground_truth import TENSORS_FILE, load_ground_truth, split_queries
from probes.data.generator import GeneratorConfig, write_corpus
from probes.data.hops import HopsData
from probes.errors import UserError
from probes.metrics.lds import lds_per_query, summarise_lds

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
    monkeypatch.setattr(build_module, "subsets_of", lambda n, size, count, seed: subsets)
    plans = count_retrains(monkeypatch)
    build(config, tmp_path / "gt", "--subsets", "3", "--fraction", str(8 / 12))
    gt = load_ground_truth(tmp_path / "gt")
    ids, _ = split_queries(data)
    assert gt.manifest["queries"]["ids"] == ids
    assert [sorted(s) for s, _ in plans] == subsets
    assert [row.nonzero().flatten().tolist() for row in gt.masks] == subsets
    functions = [data.query_functions[i] for i in ids]
    for function, without, with_ in (("<GN>", 0, 1), ("<JN>", 1, 0)):
        rows = [j for j, f in enumerate(functions) if f == function]
        assert (gt.outputs[without, rows] < gt.outputs[with_, rows] - 1.0).all()


def test_a_killed_build_resumes_without_rerunning_finished_retrains(
    counterfactual_world, tmp_path, monkeypatch
):
    count_retrains(monkeypatch, fail_after=2)
    with pytest.raises(Killed):
        build(counterfactual_world["config"], tmp_path / "gt", "--subsets", "4")
    assert len(list((tmp_path / "gt" / "parts").glob("row-*.safetensors"))) == 2
    with pytest.raises(UserError, match=r"\(fraction differ\)"):
        build(counterfactual_world["config"], tmp_path / "gt", "--subsets", "4", "--fraction", "0.25")
    plans = count_retrains(monkeypatch)
    build(counterfactual_world["config"], tmp_path / "gt", "--subsets", "4")
    assert len(plans) == 2 and not (tmp_path / "gt" / "parts").exists()
    build(counterfactual_world["config"], tmp_path / "whole", "--subsets", "4")
    resumed, whole = (load_file(str(tmp_path / name / TENSORS_FILE)) for name in ("gt", "whole"))
    assert all(torch.equal(resumed[key], whole[key]) for key in whole)


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
    build(counterfactual_world["config"], tmp_path / "gt", "--subsets", "4")
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
        again = summarise_lds(lds_per_query(scores[label], gt.masks, gt.outputs), functions)
        assert again["mean"] == pytest.approx(metrics[label]["lds"]["mean"], nan_ok=True)
        assert again["undefined"] == metrics[label]["lds"]["undefined"]
