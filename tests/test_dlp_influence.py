"""The influence-trained DLP head: its losses by hand, its targets' checks, and recovery of a synthetic
influence that the DLP itself can express, on functions it never saw."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from dlp_fixtures import run_cli
from safetensors.torch import save_file
from test_dlp_method import check_method_scores_match_the_module

from probes.counterfactual.ground_truth import GroundTruth, save_ground_truth
from probes.errors import UserError
from probes.hashing import content_hash, file_sha256
from probes.metrics.lds import lds_per_query
from probes.models.influence import InfluenceTarget, influence_loss

CONFIG = "configs/dlp-influence.yaml"


def write_oracle(folder, scores, query_ids, texts=None):
    folder.mkdir(parents=True)
    save_file(
        {"scores": scores.float(), "query_ids": torch.tensor(query_ids)}, str(folder / "oracle.safetensors")
    )
    documents = {"count": scores.shape[1], **({"texts": content_hash(list(texts))} if texts else {})}
    sha256 = {"oracle.safetensors": file_sha256(folder / "oracle.safetensors")}
    manifest = {"split": "train", "documents": documents, "sha256": sha256}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def write_gt(folder, masks, outputs, query_ids):
    """A real ground-truth folder (save_ground_truth), outputs [M, K, q]."""
    manifest = {
        "version": 2,
        "subsets": masks.shape[0],
        "fraction": 0.5,
        "regime": "stochastic",
        "seeds_per_subset": outputs.shape[1],
        "documents": {"count": masks.shape[1]},
        "queries": {"ids": list(query_ids)},
        "pair": {"old_weights": "synthetic"},
        "query_split": "train",
    }
    save_ground_truth(folder, GroundTruth(masks=masks.bool(), outputs=outputs, manifest=manifest))
    return folder


def by_hand_pearson(x: list[float], y: list[float]) -> float:
    mx, my = sum(x) / len(x), sum(y) / len(y)
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    return cov / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))


def test_oracle_loss_is_one_minus_the_pearson_of_each_covered_querys_row(tmp_path):
    torch.manual_seed(0)
    oracle = torch.randn(3, 7)
    target = InfluenceTarget(write_oracle(tmp_path / "o", oracle, [10, 11, 12]))
    scores, docs = torch.randn(4, 3), torch.tensor([1, 4, 6])
    losses, covered = target.loss(scores, [11, 99, 12, 10], docs)
    assert covered == [0, 2, 3]  # query 99 is not in the target
    for loss, i, row in zip(losses.tolist(), covered, (1, 2, 0), strict=True):
        want = 1 - by_hand_pearson(scores[i].tolist(), [oracle[row, d].item() for d in docs.tolist()])
        assert loss == pytest.approx(want, abs=1e-6)
    # an affine copy of the oracle (positive slope) has loss 0: the correlation ignores scale and offset
    exact, _ = target.loss(3 * oracle[:, docs] + 2, [10, 11, 12], docs)
    assert exact.abs().max() < 1e-6


def test_the_labels_term_adds_the_weighted_infonce_of_the_drawn_documents(tmp_path):
    """InfluenceHead(labels=w): its batch loss is the influence loss plus w times -log(softmax mass on each
    query's relevant drawn documents), by hand; labels=0 leaves the influence loss alone."""
    from probes.models.heads import InfluenceHead

    torch.manual_seed(0)
    folder = write_oracle(tmp_path / "o", torch.randn(2, 6), [10, 11])
    scores, docs = torch.randn(2, 3), torch.tensor([0, 2, 5])
    relevant = torch.tensor([[1, 0, 1, 0, 0, 0], [0, 0, 0, 1, 0, 1]], dtype=torch.bool)
    batch = {"query_ids": torch.tensor([10, 11]), "relevant": relevant}
    heads = [InfluenceHead(8, 2, 6, [str(folder)], labels=w) for w in (0.0, 0.5)]
    for head in heads:
        head.targets([f"d{i}" for i in range(6)])
    alone, mixed = (head.batch_loss(scores, batch, docs).item() for head in heads)
    infonce = []
    # drawn documents 0, 2, 5: query 0 holds 0 and 2 (columns 0, 1), query 1 holds 5 (column 2)
    for q, positives in ((0, [0, 1]), (1, [2])):
        total = sum(math.exp(v) for v in scores[q].tolist())
        infonce.append(-math.log(sum(math.exp(scores[q, j].item()) for j in positives) / total))
    assert mixed == pytest.approx(alone + 0.5 * sum(infonce) / 2, abs=1e-6)
    assert alone == pytest.approx(influence_loss(heads[0]._targets, scores, [10, 11], docs).item(), abs=1e-7)


def test_counterfactual_loss_correlates_subset_sums_with_the_seed_mean(tmp_path):
    torch.manual_seed(1)
    masks = torch.rand(6, 5) > 0.5
    outputs = torch.randn(6, 3, 2)  # [M, K, q]
    target = InfluenceTarget(write_gt(tmp_path / "gt", masks, outputs, [7, 8]))
    scores, docs = torch.randn(2, 3), torch.tensor([0, 2, 3])
    losses, covered = target.loss(scores, [8, 7], docs)
    assert covered == [0, 1]
    for loss, i, q in zip(losses.tolist(), covered, (1, 0), strict=True):
        sums = [
            sum(scores[i, j].item() for j, d in enumerate(docs.tolist()) if masks[m, d]) for m in range(6)
        ]
        seed_mean = [sum(outputs[m, k, q].item() for k in range(3)) / 3 for m in range(6)]
        assert loss == pytest.approx(1 - by_hand_pearson(sums, seed_mean), abs=1e-6)


def test_a_query_takes_its_first_covering_target_and_an_uncovered_batch_is_none(tmp_path):
    torch.manual_seed(2)
    a = InfluenceTarget(write_oracle(tmp_path / "a", torch.randn(2, 4), [0, 1]))
    b = InfluenceTarget(write_oracle(tmp_path / "b", torch.randn(2, 4), [1, 2]))
    scores, docs = torch.randn(3, 4), torch.arange(4)
    got = influence_loss([a, b], scores, [2, 0, 1], docs)
    want = torch.cat([a.loss(scores[1:], [0, 1], docs)[0], b.loss(scores[:1], [2], docs)[0]]).mean()
    assert got == pytest.approx(want.item(), abs=1e-9)
    assert influence_loss([a], scores, [5, 6, 7], docs) is None


def test_a_target_for_other_documents_or_a_changed_file_is_refused(tmp_path):
    folder = write_oracle(tmp_path / "o", torch.randn(2, 3), [0, 1], texts=["x", "y", "z"])
    with pytest.raises(UserError, match="other training documents"):
        InfluenceTarget(folder).check_documents(["x", "y", "w"])
    InfluenceTarget(folder).check_documents(["x", "y", "z"])
    (folder / "oracle.safetensors").write_bytes(b"changed")
    with pytest.raises(UserError, match="SHA-256"):
        InfluenceTarget(folder)


def untrained_scores(world, seed: int):
    """The data module and an untrained influence DLP's scores of every query (seeded)."""
    cli = run_cli(world, None, f"--seed_everything={seed}", config=CONFIG)
    dm, module = cli.datamodule, cli.model
    dm.prepare_data()
    dm.setup("fit")
    module.configure_model()
    module.set_documents(dm.corpus.texts)
    with torch.no_grad():
        return dm, module.eval().score([q.prompt for q in dm.queries])


def synthetic_ground_truths(teacher, dm, root):
    """Linear datamodels of the teacher's scores: train/val subsets seeded apart from the test ones."""
    out = {}
    for split, seed in (("train", 1), ("val", 2), ("test", 3)):
        ids = dm.split_ids[split].tolist()
        gen = torch.Generator().manual_seed(seed)
        n = teacher.shape[1]  # subsets of one size, as `build` draws them
        masks = torch.zeros(40, n, dtype=torch.bool)
        for mask in masks:
            mask[torch.randperm(n, generator=gen)[: n // 2]] = True
        outputs = (masks.double() @ teacher[ids].double().T).unsqueeze(1)  # [M, 1, q]
        out[split] = (write_gt(root / split, masks, outputs.float(), ids), masks, outputs[:, 0], ids)
    return out


@pytest.mark.slow
def test_influence_trained_dlp_recovers_a_synthetic_influence_on_held_out_functions(micro_world, in_tmp):
    # the synthetic influence is a DLP's own scores (another seed): expressible by a probe of the responses
    dm, scores = untrained_scores(micro_world, 123)
    gts = synthetic_ground_truths(scores, dm, in_tmp / "gt")
    target = f"--model.head.init_args.target=[{gts['train'][0]},{gts['val'][0]}]"
    args = (
        "--trainer.max_epochs=80",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.check_val_every_n_epoch=20",
    )
    cli = run_cli(micro_world, "fit", target, *args, config=CONFIG)
    best = in_tmp / "lightning_logs" / "dlp-influence" / "best.ckpt"
    checkpoint = torch.load(best, weights_only=False)
    assert [t["kind"] for t in checkpoint["influence_target"]] == ["counterfactual", "counterfactual"]
    assert checkpoint["hyper_parameters"]["head"]["class_path"].endswith("InfluenceHead")
    logged = yaml.safe_load(
        next((in_tmp / "lightning_logs" / "dlp-influence").glob("version_*/hparams.yaml")).read_text()
    )
    assert logged["influence_target/0/kind"] == "counterfactual"
    assert logged["influence_target/1/folder"] == str(gts["val"][0])
    _, masks, outputs, ids = gts["test"]
    assert not set(ids) & set(dm.split_ids["train"].tolist())  # held-out functions
    student = cli.model.eval()
    with torch.no_grad():
        predicted = student.score([dm.queries[i].prompt for i in ids])
    assert lds_per_query(predicted, masks, outputs).nanmean() >= 0.9
    check_method_scores_match_the_module(cli, best, micro_world)  # compare.py's dlp row scores it alike
    validated = run_cli(micro_world, "validate", target, f"--ckpt_path={best}", config=CONFIG)
    # validate reads the targets outside fit too, and the best checkpoint scores what selected it
    (selected,) = [v["best_model_score"] for v in checkpoint["callbacks"].values() if "best_model_score" in v]
    got = validated.trainer.callback_metrics["val/influence_corr"]
    assert got == pytest.approx(float(selected), abs=1e-5)
    # an untrained DLP of another seed reaches ~0.7 (documents' responses share structure across probes), not
    # 0.9: the fit, not the architecture alone, recovers the target
    assert lds_per_query(untrained_scores(micro_world, 7)[1][ids], masks, outputs).nanmean() < 0.8
