"""compare.py --counterfactual on a micro pair: every row's LDS, the relevance row, refusing another setup."""

from __future__ import annotations

import csv
import json
import re

import pytest
import torch
from compare_fixtures import compare
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from probes.counterfactual.ground_truth import (
    TENSORS_FILE,
    GroundTruth,
    identity,
    save_ground_truth,
    split_queries,
)
from probes.data.hops import HopsData
from probes.metrics.lds import lds_per_query, summarise_lds
from probes.report import check_labels

METHODS = [
    {"label": "random_a", "method": "random", "options": {"seed": 0}},
    {"label": "bm25", "method": "bm25", "options": {}},
]


def write_gt(cfg_path, folder, subsets: int = 40, reverse_queries: bool = False) -> None:
    """A ground truth whose outputs are exactly linear in the masks with the structural relevance as weights
    (so the relevance row's LDS is 1), with 3 noisy repeats, identified by the config's own data and f_old."""
    cfg = compare.build_parser().parse_args(["--config", str(cfg_path)])
    data = HopsData(**cfg.data.as_dict()).prepare()
    ids, texts = split_queries(data, "test")
    if reverse_queries:
        ids, texts = ids[::-1], texts[::-1]
    old = AutoModelForCausalLM.from_pretrained(cfg.model.old)
    generator = torch.Generator().manual_seed(0)
    n = len(data.corpus.texts)  # subsets of one size, as retraining on a fraction of the corpus draws them
    draws = torch.rand(subsets, n, generator=generator).argsort(dim=1)[:, : n // 2]
    masks = torch.zeros(subsets, n, dtype=torch.bool).scatter_(1, draws, True)
    outputs = (masks.float() @ data.relevant[ids].float().T) / 10 - 3
    repeats = torch.arange(3)
    manifest = {
        "version": 1,
        "subsets": subsets,
        "fraction": 0.5,
        **identity(data.corpus.texts, ids, texts, old, cfg.model.old, cfg.model.new),
    }
    noise = 0.01 * torch.randn(3, len(ids), generator=generator)
    save_ground_truth(folder, GroundTruth(masks, outputs, repeats, outputs[repeats] + noise, manifest))


def test_every_row_gets_the_lds_that_the_saved_files_give(config, tmp_path):  # noqa: F811
    cfg = config(methods=METHODS)
    write_gt(cfg, tmp_path / "gt")
    argv = ["--config", str(cfg), "--out", str(tmp_path / "out"), "--counterfactual", str(tmp_path / "gt")]
    out = compare.main(argv)
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["random_a", "bm25", "relevance", "random_expectation", "counterfactual"]
    assert metrics["counterfactual"]["path"] == str(tmp_path / "gt")
    assert metrics["counterfactual"]["subsets"] == 40 and metrics["counterfactual"]["fraction"] == 0.5
    assert metrics["counterfactual"]["noise_ceiling"]["mean"] > 0.5
    assert metrics["relevance"]["macro"]["map"] == 1.0 and metrics["relevance"]["lds"]["mean"] == 1.0

    scores = load_file(str(out / "scores.safetensors"))
    truth = load_file(str(tmp_path / "gt" / TENSORS_FILE))
    with (out / "queries.csv").open() as handle:
        functions = [row["func"] for row in csv.DictReader(handle)]
    for label in ("random_a", "relevance", "bm25"):
        lds = metrics[label]["lds"]
        assert set(lds) == {"mean", "macro", "ci95", "undefined"}
        per_query = lds_per_query(scores[label], truth["masks"].bool(), truth["outputs"])
        again = summarise_lds(per_query, functions)
        assert again["ci95"] == pytest.approx(lds["ci95"])
        for key in ("mean", "macro", "undefined"):
            assert again[key] == pytest.approx(lds[key])
    with (out / "per_query.csv").open() as handle:
        rows = [row for row in csv.DictReader(handle) if row["label"] == "bm25"]
    assert [float(row["lds"]) for row in rows] == pytest.approx(per_query.tolist())  # bm25's, the last
    table = (out / "table.md").read_text()
    assert "| LDS |" in table and "Noise ceiling" in table
    assert re.search(r"\| relevance \|.*\| 1\.000 ± 0\.000 \|", table)


def test_without_counterfactual_no_lds_and_no_relevance_row(config, tmp_path):  # noqa: F811
    out = compare.main(["--config", str(config(methods=METHODS[:1])), "--out", str(tmp_path / "out")])
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["random_a", "random_expectation"] and "lds" not in metrics["random_a"]
    assert "LDS" not in (out / "table.md").read_text()


def test_ground_truth_of_another_query_order_is_refused_before_any_method_scores(
    config,  # noqa: F811
    tmp_path,
    monkeypatch,
    capsys,
):
    cfg = config(methods=METHODS[:1])
    write_gt(cfg, tmp_path / "gt", reverse_queries=True)
    monkeypatch.setattr("probes.tune.tune", lambda *a, **k: pytest.fail("a method ran before the check"))
    with pytest.raises(SystemExit) as stop:
        compare.main(
            ["--config", str(cfg), "--out", str(tmp_path / "out"), "--counterfactual", str(tmp_path / "gt")]
        )
    assert stop.value.code == 2
    assert re.search(
        f"{tmp_path / 'gt'} does not belong.*same queries in another order", capsys.readouterr().err
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("label", ["relevance", "counterfactual"])
def test_the_relevance_row_and_the_counterfactual_entry_are_reserved_labels(label):
    with pytest.raises(ValueError, match=f"'{label}' is reserved"):
        check_labels(["random", label])


def test_rows_taken_from_a_finished_comparison_give_what_scoring_them_gives(config, tmp_path):  # noqa: F811
    """--scores: the LDS run takes bm25 and the tuned row (with its tuning record) from the plain run of the
    same config instead of scoring them; random_a, whose entry there has another seed, is scored. Every
    number equals that of a run that scores all three."""
    tuned = {"label": "tuned", "method": "random", "options": {}, "tune": {"seed": [0, 1, 2]}}
    plain = [{**METHODS[0], "options": {"seed": 1}}, tuned, METHODS[1]]
    compare.main(["--config", str(config(methods=plain)), "--out", str(tmp_path / "plain")])
    cfg = config(methods=[METHODS[0], tuned, METHODS[1]])
    write_gt(cfg, tmp_path / "gt")
    argv = ["--config", str(cfg), "--counterfactual", str(tmp_path / "gt")]
    compare.main([*argv, "--out", str(tmp_path / "scored")])
    compare.main([*argv, "--scores", str(tmp_path / "plain"), "--out", str(tmp_path / "taken")])
    scored, taken = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("scored", "taken"))
    assert {
        label: entry.get("scores_from")
        for label, entry in taken.items()
        if label in ("random_a", "tuned", "bm25")
    } == {
        "random_a": None,
        "tuned": str(tmp_path / "plain"),
        "bm25": str(tmp_path / "plain"),
    }
    assert (
        taken["tuned"]["tuned"] == scored["tuned"]["tuned"] and len(scored["tuned"]["tuned"]["trials"]) == 3
    )
    for label in ("random_a", "tuned", "bm25", "relevance"):
        for key in ("macro", "subsets", "lds", "hparams"):
            assert taken[label][key] == scored[label][key], (label, key)

    def without_time(folder: str) -> list[str]:
        return [line.rsplit("|", 2)[0] for line in (tmp_path / folder / "table.md").read_text().splitlines()]

    assert without_time("taken") == without_time("scored")
