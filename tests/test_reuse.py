"""Which rows of a finished comparison another command may take (probes.compare.reuse.same_rows): only those
scored from the same data and model config, the same inputs by content and the same method entry."""

from __future__ import annotations

import pytest

from probes.compare.reuse import difference, same_rows


def record(**content) -> dict:
    return {
        "config": {
            "data": {"corpus_path": "c.jsonl", "split": "by_input"},
            "model": {"old": "pair/old", "new": "pair/new", "dtype": "float32"},
            "methods": [
                {"label": "bm25", "method": "bm25", "options": {}, "tune": None},
                {"label": "rand", "method": "random", "options": {"seed": 0}, "tune": None},
            ],
            "dlp_checkpoint": "best.ckpt",
        },
        "content": {"corpus": "c1", "old": {"old/w": "o1"}, "new": {"new/w": "n1"}, "dlp": "d1", **content},
    }


LABELS = ["bm25", "rand", "dlp"]


def test_the_same_config_and_inputs_give_every_row():
    assert same_rows(record(), record(), LABELS) == LABELS


@pytest.mark.parametrize(
    "change",
    [
        lambda r: r["config"]["data"].update(split="by_function"),
        lambda r: r["config"]["model"].update(dtype="bf16"),
        lambda r: r["content"].update(corpus="c2"),
        lambda r: r["content"].update(old={"old/w": "o2"}),
        lambda r: r["content"].update(new={"new/w": "n2"}),
    ],
)
def test_another_data_model_or_input_gives_no_row(change):
    recorded = record()
    change(recorded)
    assert same_rows(recorded, record(), LABELS) == []
    assert difference(recorded, record())  # a reason, for the warning of compare.py --scores


def test_rows_scored_elsewhere_are_taken():
    """Where a run computed (a GPU, its threads, its feature cache) is not what it computed."""
    recorded = record()
    recorded["config"]["model"].update(device="cuda", devices=2, threads=8, feature_cache=False)
    assert difference(recorded, record()) is None
    assert same_rows(recorded, record(), LABELS) == LABELS


def test_the_difference_names_the_setting_or_input():
    recorded = record()
    recorded["config"]["model"].update(dtype="bf16")
    assert difference(recorded, record()) == "model.dtype is 'bf16' there, 'float32' here"
    assert difference(record(new={"new/w": "n2"}), record()) == "another f_new by content"


def test_a_row_whose_method_entry_differs_or_is_missing_is_left_out():
    recorded = record()
    recorded["config"]["methods"][1]["options"] = {"seed": 1}
    assert same_rows(recorded, record(), LABELS) == ["bm25", "dlp"]
    recorded["config"]["methods"].pop(0)
    assert same_rows(recorded, record(), LABELS) == ["dlp"]


def test_the_dlp_row_needs_the_same_checkpoint_bytes():
    assert same_rows(record(dlp="d2"), record(), LABELS) == ["bm25", "rand"]
    assert same_rows(record(dlp=None), record(dlp=None), ["dlp"]) == []  # no checkpoint wanted: no DLP row
