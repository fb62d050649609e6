"""DLPMethod: a trained probe checkpoint scores compare.py's queries like the module does, sharing f_new."""

from __future__ import annotations

import pytest
import torch
from test_dlp_fixtures import micro_rows, run_cli

from baselines.base import AttributionContext, build_method
from probes.data.datamodule import HopsDataModule
from probes.lm.load import load_pair
from probes.models.method import DLPMethod

FAST = ("--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.num_sanity_val_steps=0")


def context(dm, pair=None) -> AttributionContext:
    val = dm.split_ids["val"]
    return AttributionContext(dm.corpus, dm.queries, None, pair, None, val, dm.relevant[val])


@pytest.mark.parametrize("config", ["configs/dlp.yaml", "configs/dlp-heldout-functions.yaml"])
def test_method_scores_match_the_module(micro_world, in_tmp, config):
    cli = run_cli(micro_world, "fit", *FAST, config=config)
    name = "dlp" if config.endswith("dlp.yaml") else "dlp-heldout-functions"
    checkpoint = in_tmp / "lightning_logs" / name / "checkpoints" / "best.ckpt"
    dm = cli.datamodule
    method = build_method("dlp", checkpoint=str(checkpoint), batch_size=3)
    assert isinstance(method, DLPMethod)
    pair = load_pair(micro_world.old, micro_world.new)
    method.prepare(context(dm, pair))
    assert method.module.reader.lm is pair.new  # the context's f_new, not a second copy
    ids = dm.split_ids["test"]
    scores = method.score(ids)
    assert scores.shape == (len(ids), micro_world.n_documents)
    module = cli.trainer.lightning_module.eval()
    module.load_state_dict(torch.load(checkpoint, weights_only=False)["state_dict"])
    module.set_documents(dm.corpus.texts)
    with torch.no_grad():
        want = module.score([dm.queries[i].prompt for i in ids.tolist()])
    torch.testing.assert_close(scores, want, rtol=1e-4, atol=1e-4)


def test_missing_checkpoint_and_other_corpus_are_refused(micro_world, in_tmp, write_jsonl):
    with pytest.raises(FileNotFoundError, match="train_probe.py fit"):
        build_method("dlp", checkpoint=str(in_tmp / "nope.ckpt"))
    run_cli(micro_world, "fit", *FAST)
    checkpoint = in_tmp / "lightning_logs" / "dlp" / "checkpoints" / "last.ckpt"
    other = HopsDataModule(str(write_jsonl(micro_rows(), "other.jsonl")), inputs=list(range(1, 11))).prepare()
    with pytest.raises(ValueError, match="trained on corpus"):
        DLPMethod(str(checkpoint)).prepare(context(other))
