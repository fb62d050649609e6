"""DLPMethod: a trained probe checkpoint scores compare.py's queries like the module does, sharing f_new."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from dlp_fixtures import FAST, micro_rows, run_cli
from lm_fixtures import perturb

from probes.data.datamodule import HopsDataModule
from probes.lm.load import load_pair
from probes.methods import AttributionContext, build_method
from probes.models.method import DLPMethod, standardised_mean


def context(dm, pair=None) -> AttributionContext:
    val = dm.split_ids["val"]
    return AttributionContext(dm.corpus, dm.queries, None, pair, None, val, dm.relevant[val])


def check_method_scores_match_the_module(cli, checkpoint, world):
    dm = cli.datamodule
    method = build_method("dlp", checkpoint=str(checkpoint), batch_size=3)
    assert isinstance(method, DLPMethod)
    pair = load_pair(world.old, world.new)
    method.prepare(context(dm, pair))
    assert method.modules[0].reader.lm is pair.new  # the context's f_new, not a second copy
    ids = dm.split_ids["test"]
    scores = method.score(ids)
    assert scores.shape == (len(ids), world.n_documents)
    module = cli.trainer.lightning_module.eval()
    module.load_state_dict(torch.load(checkpoint, weights_only=False)["state_dict"])
    with torch.no_grad():
        want = module.score([dm.queries[i].prompt for i in ids.tolist()])
    torch.testing.assert_close(scores, want, rtol=1e-4, atol=1e-4)


def test_multi_hot_method_scores_match_the_module(micro_world, fitted_dlp):
    checkpoint = fitted_dlp.root / "lightning_logs" / "dlp" / "best.ckpt"
    check_method_scores_match_the_module(fitted_dlp.cli, checkpoint, micro_world)


@pytest.mark.slow
def test_pairwise_method_scores_match_the_module(micro_world, in_tmp):
    cli = run_cli(micro_world, "fit", *FAST, config="configs/dlp-heldout-functions.yaml")
    checkpoint = in_tmp / "lightning_logs" / "dlp-heldout-functions" / "best.ckpt"
    check_method_scores_match_the_module(cli, checkpoint, micro_world)


def test_a_seed_ensemble_averages_its_checkpoints_standardised_scores(micro_world, fitted_dlp, tmp_path):
    best = str(fitted_dlp.root / "lightning_logs" / "dlp" / "best.ckpt")
    saved = torch.load(best, weights_only=False)  # a second fit: the same checkpoint, other weights
    torch.manual_seed(0)
    for value in saved["state_dict"].values():
        if value.is_floating_point():
            value.add_(torch.randn_like(value) * 0.5 * value.std().nan_to_num())
    last = str(tmp_path / "other.ckpt")
    torch.save(saved, last)
    dm = fitted_dlp.cli.datamodule
    pair = load_pair(micro_world.old, micro_world.new)
    ids = dm.split_ids["test"]

    def scored(checkpoint):
        method = DLPMethod(checkpoint, batch_size=2)
        method.prepare(context(dm, pair))
        return method, method.score(ids)

    alone = [scored(best)[1], scored(last)[1]]
    assert not torch.allclose(alone[0], alone[1])  # two different fits: the average is not either one
    method, ensemble = scored([best, last])
    assert len(method.modules) == 2 and all(m.reader.lm is pair.new for m in method.modules)  # f_new once
    # independent reference: each run's scores standardised per query by hand, then averaged
    by_hand = sum((s - s.mean(1, keepdim=True)) / s.std(1, keepdim=True) for s in alone) / 2
    torch.testing.assert_close(ensemble, by_hand, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="empty list"):
        DLPMethod([])


def test_standardised_mean_ignores_each_runs_scale_and_offset():
    a, b = torch.randn(3, 7, generator=torch.Generator().manual_seed(0)), torch.randn(3, 7)
    scaled = 5.0 * b + torch.tensor([[1.0], [-2.0], [30.0]])  # another scale and offset per query
    torch.testing.assert_close(standardised_mean([a, scaled]), standardised_mean([a, b]))
    alone = standardised_mean([a])
    torch.testing.assert_close(alone.mean(1), torch.zeros(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(alone.std(1), torch.ones(3))


def corpus_module(write_jsonl, rows, name: str) -> HopsDataModule:
    return HopsDataModule(str(write_jsonl(rows, name)), inputs=list(range(1, 11))).prepare()


def test_missing_checkpoint_is_refused(fitted_dlp):
    with pytest.raises(FileNotFoundError, match="train_probe.py fit"):
        build_method("dlp", checkpoint=str(fitted_dlp.root / "nope.ckpt"))


def test_dlp_checkpoint_scored_a_shuffled_corpus(micro_world, fitted_dlp, write_jsonl):
    """Regression: a checkpoint was matched to its corpus by path, so rows shuffled in place were scored as
    if unchanged, and an identical copy at another path was refused. Now both are matched by content."""
    checkpoint = str(fitted_dlp.root / "lightning_logs" / "dlp" / "version_0" / "checkpoints" / "last.ckpt")
    rows = micro_rows()
    copy = corpus_module(write_jsonl, rows, "copy.jsonl")
    DLPMethod(checkpoint).prepare(context(copy))  # the same texts in the same order elsewhere: accepted
    shuffled = [rows[i] for i in torch.randperm(len(rows), generator=torch.Generator().manual_seed(0))]
    with pytest.raises(ValueError, match="same 18 documents in another row order") as error:
        DLPMethod(checkpoint).prepare(context(corpus_module(write_jsonl, shuffled, "shuffled.jsonl")))
    assert "other weights" not in str(error.value)  # only the corpus differs
    changed = [dict(rows[0], text="<GN>(x) returns 6 ."), *rows[1:]]
    with pytest.raises(ValueError, match="document texts differ"):
        DLPMethod(checkpoint).prepare(context(corpus_module(write_jsonl, changed, "changed.jsonl")))
    pair = load_pair(micro_world.old, micro_world.new)
    perturb(pair.new, scale=1e-2)  # f_new at the checkpoint's path, but other weights
    with pytest.raises(ValueError, match=r"f_new \(.*\) has other weights") as error:
        DLPMethod(checkpoint).prepare(context(copy, pair))
    assert "row order" not in str(error.value) and "texts differ" not in str(error.value)


def test_test_with_a_checkpoint_of_a_shuffled_corpus_is_refused(micro_world, fitted_dlp, in_tmp, capsys):
    checkpoint = fitted_dlp.root / "lightning_logs" / "dlp" / "version_0" / "checkpoints" / "last.ckpt"
    rows = micro_rows()
    shuffled = in_tmp / "shuffled.jsonl"
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(1)).tolist()
    shuffled.write_text("".join(json.dumps(rows[i]) + "\n" for i in order), encoding="utf-8")
    world = dataclasses.replace(micro_world, corpus=shuffled)
    with pytest.raises(SystemExit) as exit_info:  # a user error: one line, exit code 2
        run_cli(world, "test", f"--ckpt_path={checkpoint}")
    assert exit_info.value.code == 2 and "another row order" in capsys.readouterr().err
    copy = in_tmp / "copy.jsonl"
    copy.write_bytes(micro_world.corpus.read_bytes())
    run_cli(dataclasses.replace(micro_world, corpus=copy), "validate", f"--ckpt_path={checkpoint}")
