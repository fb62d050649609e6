"""compare.py --counterfactual on a micro pair: every row's LDS against each ground truth (recomputed from the
saved files), the relevance row, the figure, refusing another setup."""

from __future__ import annotations

import csv
import json
import re

import pytest
import torch
from compare_fixtures import compare
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import AutoModelForCausalLM

from probes.compare import lds_results as lds_report
from probes.compare.results import check_labels
from probes.counterfactual.ground_truth import (
    TENSORS_FILE,
    GroundTruth,
    identity,
    save_ground_truth,
    split_queries,
)
from probes.data.hops import HopsData
from probes.metrics.lds import lds, noise_ceiling

METHODS = [
    {"label": "random_a", "method": "random", "options": {"seed": 0}},
    {"label": "bm25", "method": "bm25", "options": {}},
]


def write_gt(cfg_path, folder, subsets: int = 40, reverse_queries: bool = False, fraction=0.5) -> None:
    """A ground truth whose seed means are exactly linear in the masks with the structural relevance as
    weights (so the relevance row's LDS is 1), 3 seeds with noise around them, identified by the config's
    own data and f_old."""
    cfg = compare.build_parser().parse_args(["--config", str(cfg_path)])
    data = HopsData(**cfg.data.as_dict()).prepare()
    ids, texts = split_queries(data, "test")
    if reverse_queries:
        ids, texts = ids[::-1], texts[::-1]
    old = AutoModelForCausalLM.from_pretrained(cfg.model.old)
    generator = torch.Generator().manual_seed(0)
    n = len(data.corpus.texts)  # subsets of one size, as retraining on a fraction of the corpus draws them
    draws = torch.rand(subsets, n, generator=generator).argsort(dim=1)[:, : round(fraction * n)]
    masks = torch.zeros(subsets, n, dtype=torch.bool).scatter_(1, draws, True)
    mean = (masks.double() @ data.relevant[ids].double().T) / 8 - 3
    # seeds at mean - d, mean, mean + d, all exact in float32: the seed mean stays exactly linear
    offset = torch.randint(-4, 5, (subsets, 1, len(ids)), generator=generator) / 64
    noise = offset * torch.tensor([-1.0, 0.0, 1.0])[:, None]
    manifest = {
        "version": 2,
        "regime": "stochastic",
        "seeds_per_subset": 3,
        "subsets": subsets,
        "fraction": fraction,
        **identity(data.corpus.texts, ids, texts, old, cfg.model.old, cfg.model.new),
    }
    save_ground_truth(folder, GroundTruth(masks, (mean[:, None] + noise).float(), manifest))


def test_every_row_gets_the_lds_that_the_saved_files_give(config, tmp_path, monkeypatch):  # noqa: F811
    cfg = config(methods=METHODS)
    write_gt(cfg, tmp_path / "half")
    write_gt(cfg, tmp_path / "tenth", subsets=30, fraction=0.2)
    drawn = []
    monkeypatch.setattr(lds_report, "save_figure", lambda path, tb, rows, cf: drawn.append((path, rows, cf)))
    truths = [str(tmp_path / "half"), str(tmp_path / "tenth")]
    argv = ["--config", str(cfg), "--out", str(tmp_path / "out"), "--counterfactual", *truths]
    out = compare.main(argv)
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["random_a", "bm25", "relevance", "random_expectation", "counterfactual"]
    entry = metrics["counterfactual"]
    assert list(entry) == ["half", "tenth"] and entry["half"]["path"] == str(tmp_path / "half")
    assert {key: entry["tenth"][key] for key in ("regime", "seeds_per_subset", "fraction", "subsets")} == {
        "regime": "stochastic",
        "seeds_per_subset": 3,
        "fraction": 0.2,
        "subsets": 30,
    }
    assert metrics["relevance"]["macro"]["map"] == 1.0
    assert metrics["relevance"]["lds"]["half"]["mean"] == metrics["relevance"]["lds"]["tenth"]["mean"] == 1.0

    scores = load_file(str(out / "scores.safetensors"))
    with (out / "queries.csv").open() as handle:
        functions = [row["func"] for row in csv.DictReader(handle)]
    for name in ("half", "tenth"):
        truth = load_file(str(tmp_path / name / TENSORS_FILE))
        masks, outputs = truth["masks"].bool(), truth["outputs"]
        ceiling = noise_ceiling(outputs, functions)
        assert entry[name]["noise_ceiling"] == ceiling and ceiling["seeds"] == 3
        for label in ("random_a", "relevance", "bm25"):
            per_query, again = lds(scores[label], masks, outputs.double().mean(dim=1), functions)
            assert metrics[label]["lds"][name] == again
    with (out / "per_query.csv").open() as handle:
        rows = [row for row in csv.DictReader(handle) if row["label"] == "bm25"]
    assert [float(row["lds:tenth"]) for row in rows] == pytest.approx(per_query.tolist())  # bm25's, the last
    table = (out / "table.md").read_text()
    assert "| LDS half (α = 0.5, K = 3) | LDS tenth (α = 0.2, K = 3) |" in table and "Noise ceiling" in table
    assert re.search(r"\| relevance \|.*\| 1\.000 ± 0\.000 \| 1\.000 ± 0\.000 \|", table)
    [(path, figure_rows, figure_entry)] = drawn
    assert path == out / lds_report.FIGURE and figure_entry == entry
    assert [label for label, _ in figure_rows] == ["random_a", "bm25", "relevance"]


def test_the_figure_draws_every_row_and_the_ceiling_per_regime(tmp_path):
    """LDS against the kept fraction: a line per row and the ceiling, one panel per regime; PNG and
    TensorBoard written."""
    summary = {"mean": 0.2, "ci95": [0.1, 0.3]}
    ceiling = {"mean": 0.6, "ci95": [0.5, 0.7]}
    entry = {
        "a": {"regime": "stochastic", "fraction": 0.1, "noise_ceiling": ceiling},
        "b": {"regime": "stochastic", "fraction": 0.5, "noise_ceiling": None},
        "c": {"regime": "fixed-order", "fraction": 0.99, "drop": 0.01, "noise_ceiling": ceiling},
    }
    rows = [("bm25", {"a": summary, "b": summary, "c": summary}), ("random", {"a": summary})]
    fig = lds_report.figure(rows, entry)
    fixed, stochastic = fig.axes  # panels in sorted regime order

    def points(ax) -> dict[str, int]:
        return {c.get_label(): len(c.lines[0].get_xdata()) for c in ax.containers}

    assert stochastic.get_title() == "stochastic regime"
    assert points(stochastic) == {"bm25": 2, "random": 1, "noise ceiling": 1}  # b has no ceiling
    assert points(fixed) == {"bm25": 1, "noise ceiling": 1}
    lds_report.save_figure(tmp_path / lds_report.FIGURE, tmp_path / "tb", rows, entry)
    assert (tmp_path / lds_report.FIGURE).stat().st_size > 0
    run = EventAccumulator(str(tmp_path / "tb"))
    run.Reload()
    assert run.Tags()["images"] == ["test/lds_by_fraction"]  # in the comparison's run, with method names:
    assert {"test/lds_by_fraction/stochastic/bm25", "test/lds_by_fraction/stochastic/random"} <= set(
        run.Tags()["scalars"]
    )


def test_the_note_says_why_a_ground_truth_has_no_ceiling():
    entry = {
        "one_seed": {"regime": "stochastic", "fraction": 0.5, "seeds_per_subset": 1, "subsets": 8},
        "fixed": {"regime": "fixed-order", "fraction": 0.9, "drop": 0.1, "seeds_per_subset": 1, "subsets": 8},
    }
    note = lds_report.note({name: {**truth, "noise_ceiling": None} for name, truth in entry.items()})
    assert "one_seed (8 subsets, α = 0.5, K = 1): not measured (one seed per subset)" in note
    assert "fixed (8 subsets, fixed-order, drop 0.1): none (no seed noise" in note


def test_two_ground_truths_of_one_name_are_refused(config, tmp_path, capsys):  # noqa: F811
    cfg = config(methods=METHODS[:1])
    write_gt(cfg, tmp_path / "a" / "gt")
    write_gt(cfg, tmp_path / "b" / "gt")
    with pytest.raises(SystemExit) as stop:
        compare.main(
            ["--config", str(cfg), "--out", str(tmp_path / "out"), "--counterfactual"]
            + [str(tmp_path / "a" / "gt"), str(tmp_path / "b" / "gt")]
        )
    assert stop.value.code == 2
    assert "share the name 'gt'" in capsys.readouterr().err


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
    monkeypatch.setattr(
        "probes.compare.tune.tune", lambda *a, **k: pytest.fail("a method ran before the check")
    )
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
    assert set(taken["bm25"]["lds"]) == {"gt"}

    def without_time(folder: str) -> list[str]:
        return [line.rsplit("|", 2)[0] for line in (tmp_path / folder / "table.md").read_text().splitlines()]

    assert without_time("taken") == without_time("scored")
    compare.main(
        [*argv, "--model.threads", "3", "--scores", str(tmp_path / "plain"), "--out", str(tmp_path / "t3")]
    )
    assert json.loads((tmp_path / "t3" / "metrics.json").read_text())["bm25"]["scores_from"] == str(
        tmp_path / "plain"
    )
    with pytest.warns(
        UserWarning, match=r"plain: no row taken, model.feature_batch_size is 32 there, 7 here"
    ):
        argv = [*argv, "--model.feature_batch_size", "7", "--scores", str(tmp_path / "plain")]
        compare.main([*argv, "--out", str(tmp_path / "fb7")])
    assert "scores_from" not in json.loads((tmp_path / "fb7" / "metrics.json").read_text())["bm25"]
