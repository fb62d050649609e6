"""DLPMethod: a trained probe checkpoint scores compare.py's queries like the module does, sharing f_new."""

from __future__ import annotations

import pytest
import torch
from test_dlp_fixtures import FAST, micro_rows, run_cli

from baselines.base import AttributionContext, build_method
from probes.data.datamodule import HopsDataModule
from probes.lm.load import load_pair
from probes.models.method import DLPMethod


def context(dm, pair=None) -> AttributionContext:
    val = dm.split_ids["val"]
    return AttributionContext(dm.corpus, dm.queries, None, pair, None, val, dm.relevant[val])


def check_method_scores_match_the_module(cli, checkpoint, world):
    dm = cli.datamodule
    method = build_method("dlp", checkpoint=str(checkpoint), batch_size=3)
    assert isinstance(method, DLPMethod)
    pair = load_pair(world.old, world.new)
    method.prepare(context(dm, pair))
    assert method.module.reader.lm is pair.new  # the context's f_new, not a second copy
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


def test_missing_checkpoint_and_other_corpus_are_refused(fitted_dlp, write_jsonl):
    with pytest.raises(FileNotFoundError, match="train_probe.py fit"):
        build_method("dlp", checkpoint=str(fitted_dlp.root / "nope.ckpt"))
    checkpoint = fitted_dlp.root / "lightning_logs" / "dlp" / "version_0" / "checkpoints" / "last.ckpt"
    other = HopsDataModule(str(write_jsonl(micro_rows(), "other.jsonl")), inputs=list(range(1, 11))).prepare()
    with pytest.raises(ValueError, match="trained on corpus"):
        DLPMethod(str(checkpoint)).prepare(context(other))
