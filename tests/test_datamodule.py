"""HopsDataModule: errors name the argument; splits are disjoint, covering, seeded; batches as agreed."""

from __future__ import annotations

import pytest
import torch
from conftest import hops_row

from probes.data.datamodule import HopsDataModule
from probes.data.splits import function_groups


@pytest.fixture
def forest_path(write_jsonl):
    """Six call trees: bases <B0>..<B5>, wrappers <C0>..<C5>, and <D0> on top of <C0> (depth 2)."""
    rows = []
    for i in range(6):
        rows += [hops_row(f"<B{i}>", 10 + i), hops_row(f"<B{i}>", 10 + i)]
        rows.append(hops_row(f"<C{i}>", 10 + i, role="identity", depth=1, text=f"<C{i}> calls <B{i}>"))
    rows.append(hops_row("<D0>", 10, role="identity", depth=2, text="<D0> calls <C0>"))
    rows.append(hops_row("<Z0>", None, role="distractor"))
    return write_jsonl(rows, "forest.jsonl")


def _dm(path, **kw) -> HopsDataModule:
    return HopsDataModule(corpus_path=str(path), **{"inputs": list(range(1, 11)), **kw})


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"split": "x"}, "split must be 'by_input' or 'by_function', got 'x'"),
        ({"relevance": "both"}, "relevance must be"),
        ({"query_format": "nope"}, "query_format must be"),
        ({"inputs": []}, "inputs must be"),
        ({"inputs": [1, 1]}, "inputs must be distinct"),
        ({"val_fraction": 1.0}, "val_fraction must be"),
        ({"test_fraction": -0.1}, "test_fraction must be"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "val_fraction \\+ test_fraction"),
        ({"batch_size": 0}, "batch_size must be"),
        ({"num_workers": -1}, "num_workers must be"),
    ],
)
def test_bad_arguments_are_named(forest_path, kwargs, name):
    with pytest.raises(ValueError, match=name):
        _dm(forest_path, **kwargs)


def test_missing_corpus_path_is_named(tmp_path):
    with pytest.raises(ValueError, match="corpus_path .* is not a file"):
        HopsDataModule(corpus_path=str(tmp_path / "none.jsonl"))


def _check_partition(dm: HopsDataModule) -> dict[str, set[int]]:
    ids = {k: set(v.tolist()) for k, v in dm.split_ids.items()}
    assert all(v.dtype == torch.long and v.tolist() == sorted(v.tolist()) for v in dm.split_ids.values())
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"])
    assert not (ids["val"] & ids["test"])
    assert ids["train"] | ids["val"] | ids["test"] == set(range(len(dm.queries)))
    assert all(ids.values())
    return ids


def test_by_input_split(forest_path):
    dm = _dm(forest_path, val_fraction=0.2, test_fraction=0.3, seed=1)
    dm.setup("fit")
    ids = _check_partition(dm)
    inputs = {k: {dm.queries[i].input for i in v} for k, v in ids.items()}
    assert [len(inputs[k]) for k in ("train", "val", "test")] == [5, 2, 3]
    assert not inputs["train"] & inputs["test"]
    for k, v in ids.items():  # every function in every split
        assert {dm.queries[i].func for i in v} == set(dm.corpus.functions), k
    same = _dm(forest_path, val_fraction=0.2, test_fraction=0.3, seed=1)
    other = _dm(forest_path, val_fraction=0.2, test_fraction=0.3, seed=2)
    assert all(torch.equal(same.split_ids[k], dm.split_ids[k]) for k in ids)
    assert not all(torch.equal(other.split_ids[k], dm.split_ids[k]) for k in ids)


def test_by_function_keeps_call_trees_together(forest_path):
    dm = _dm(forest_path, split="by_function", val_fraction=0.2, test_fraction=0.3)
    assert function_groups(dm.corpus)[0] == ["<B0>", "<C0>", "<D0>"] and len(function_groups(dm.corpus)) == 6
    ids = _check_partition(dm)
    funcs = {k: {dm.queries[i].func for i in v} for k, v in ids.items()}
    for k, fs in funcs.items():
        for f in fs:
            assert set(dm.corpus.chain(f)) <= fs and set(dm.corpus.wrapped_by(f)) <= fs, (k, f)
    assert not funcs["train"] & funcs["test"]
    # one group at least for each non-zero fraction, even where the fraction rounds to zero
    tiny = _dm(forest_path, split="by_function", val_fraction=0.01, test_fraction=0.01)
    assert all(len(v) for v in tiny.split_ids.values())
    with pytest.raises(ValueError, match="val_fraction=0.45 and test_fraction=0.5 need 3 \\+ 3 .* only 6"):
        _dm(forest_path, split="by_function", val_fraction=0.45, test_fraction=0.5).prepare()
    empty_val = _dm(forest_path, split="by_function", val_fraction=0.0, test_fraction=0.5)
    assert len(empty_val.split_ids["val"]) == 0 and len(empty_val.val_dataloader()) == 0


def test_batches_and_metadata(forest_path):
    dm = _dm(forest_path, batch_size=4, relevance="chain", query_format="output_of")
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert sorted(torch.cat([b["query_ids"] for b in batches]).tolist()) == dm.split_ids["train"].tolist()
    again = [b["query_ids"].tolist() for b in dm.train_dataloader()]
    assert again == [b["query_ids"].tolist() for b in batches]  # seeded shuffle
    b = next(iter(dm.test_dataloader()))
    assert set(b) == {"query_ids", "prompts", "answers", "relevant", "is_wrapper"}
    assert b["relevant"].shape == (4, dm.num_documents) == (4, 20) and b["relevant"].dtype == torch.bool
    assert torch.equal(b["relevant"], dm.relevant[b["query_ids"]])
    assert torch.equal(b["is_wrapper"], dm.is_wrapper[b["query_ids"]])
    first = dm.queries[int(b["query_ids"][0])]
    assert b["prompts"][0] == first.prompt and b["prompts"][0].startswith("The output of ")
    assert b["answers"][0] == first.answer
    assert dm.query_functions[:2] == ["<B0>", "<B0>"] and dm.candidates == list(range(8, 18))
    row = dm.query_table([12])[0]
    assert row == {
        "query_id": 12, "func": "<B1>", "input": 3, "wrapper": False,
        "prompt": dm.queries[12].prompt, "answer": "11", "split": row["split"],
    }  # fmt: skip
    assert len(dm.query_table()) == len(dm.queries) == 130
    with pytest.raises(ValueError, match="correct must have one entry per query"):
        dm.set_correctness(torch.ones(3, dtype=torch.bool))
    dm.set_correctness(torch.arange(130) % 2 == 0)
    assert dm.query_table([1])[0]["correct"] is False
    predicted = torch.cat([b["query_ids"] for b in dm.predict_dataloader()])
    assert torch.equal(predicted, dm.split_ids["test"])


def test_hparams_default_corpus_and_parse_time_link(forest_path, monkeypatch):
    monkeypatch.setattr("probes.data.synthetic.default_corpus_path", lambda: forest_path)
    dm = HopsDataModule(seed=3)
    assert dm.hparams.seed == 3 and dm.hparams.corpus_path is None and dm.hparams.split == "by_input"
    assert dm.num_documents == 20 and len(dm.queries) == 1300


def test_jsonargparse_signature(forest_path):
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(HopsDataModule, "data")
    cfg = parser.parse_args([f"--data.corpus_path={forest_path}", "--data.split=by_function"])
    assert cfg.data.split == "by_function"
    dm = parser.instantiate_classes(cfg).data
    assert isinstance(dm, HopsDataModule) and dm.hparams.split == "by_function" and dm.num_documents == 20
