"""Every attribution method on the same test split -> metrics.json, scores, CSVs, table, plot, TensorBoard."""

from __future__ import annotations

from pathlib import Path

import torch
from jsonargparse import ActionYesNo, ArgumentParser, Namespace

from probes.compare.config import PairConfig, add_study_arguments
from probes.compare.results import FILES, claim_results, write_results
from probes.compare.reuse import record, take_rows
from probes.compare.steps import TestSplit, build_methods, load_everything, score_rows, validation
from probes.data.hops import HopsData
from probes.errors import (
    UserError,
    check_writable_folder,
    cli_main,
)
from probes.files import cache_dir
from probes.hashing import file_sha256
from probes.pairs.overlay import expand


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="compare.py", description=__doc__, default_meta=False)
    add_study_arguments(parser)
    parser.add_argument(
        "--counterfactual",
        type=str,
        nargs="+",
        default=[],
        help="counterfactual ground-truth folders (python -m probes.counterfactual build): adds every "
        "method's LDS against each (keyed by folder name), a 'relevance' row and the plot of LDS against "
        "the kept fraction",
    )
    parser.add_argument(
        "--scores",
        type=str,
        nargs="+",
        default=[],
        help="finished compare.py output folders: a row one of them computed from the same config and inputs "
        "(by content: probes/compare/reuse.py) is taken from there, with its tuning, instead of scored again",
    )
    parser.add_argument(
        "--out", type=str | None, default=None, help="output folder (default results/<config>)"
    )
    parser.add_argument(
        "--overwrite",
        action=ActionYesNo,
        default=False,
        help="write beside other files in the output folder (kept: only files its marker records go)",
    )
    return parser


def default_out(cfg: Namespace) -> Path:
    """results/<config name>/ (results/<folder>/<name>/ for a config outside configs/, e.g. ablations)."""
    if not cfg.get("config"):
        return Path("results") / "compare"
    path = Path(str(cfg.config[-1]))
    return Path("results") / (
        path.stem if path.parent.name == "configs" else f"{path.parent.name}/{path.stem}"
    )


def check_config(cfg: Namespace, out: Path) -> None:
    """Every check that needs no model and no corpus pass, so that a bad value fails in a second: the data's
    and the pair's options, a non-empty test split, the output folder and the cache folder."""
    HopsData(**cfg.data.as_dict())
    PairConfig(**cfg.model.as_dict())
    if cfg.data.test_fraction <= 0:
        raise UserError(
            f"data.test_fraction={cfg.data.test_fraction!r} leaves no test queries, and compare.py scores "
            "the test split; give a fraction in (0, 1)"
        )
    check_writable_folder(out, "out", write=True)
    cache = cache_dir()  # refuses a file in the cache folder's place
    if cfg.model.feature_cache or cfg.model.old is None:  # features, or the default pair, are written there
        check_writable_folder(cache, "the cache folder (PROBES_CACHE)", write=True)


def run(cfg: Namespace, out: Path) -> str | None:
    """Score the test split with every method and write the results into ``out``; return the table.

    Under DDP (``model.devices`` > 1) every rank runs this (the feature passes need them all); rank 0 alone
    writes and returns the table, the others return None.
    """
    from probes.compare.lds_results import load_truths
    from probes.lm.ranks import global_rank
    from probes.methods import AttributionContext
    from probes.metrics import random_expectation

    methods = build_methods(cfg)
    truths = load_truths(cfg.counterfactual)  # a bad folder fails now
    data, pair, candidate_ids, features = load_everything(cfg, methods)
    test = TestSplit.of(data, truths)
    test.check_truths(data, pair)  # before any method scores
    val_ids = data.split_ids["val"]
    ctx = AttributionContext(
        data.corpus, data.queries, candidate_ids, pair, features, val_ids, data.relevant[val_ids]
    )
    quiet = global_rank(cfg.model.devices) != 0
    # inputs.json (the pair's files hashed): rank 0 writes it; another DDP rank needs it only to take the
    # same --scores rows as rank 0
    inputs = None
    if cfg.scores or not quiet:
        corpus_sha256 = file_sha256(data.resolve_corpus_path(cfg.data.corpus_path))
        inputs = record(cfg, corpus_sha256, pair.old_path, pair.new_path)
    labels = [label for label, _ in methods]
    taken = take_rows(cfg.scores, inputs, labels, test.ids.tolist(), len(data.corpus)) if cfg.scores else {}
    val = validation(data, ctx, cfg.model.score_batch_size)
    results = score_rows(methods, taken, ctx, test, val, quiet)
    counterfactual = test.relevance_row(results) if truths else None
    random = random_expectation(test.relevant, test.functions, test.is_wrapper, test.correct, test.hop)
    if quiet:
        return None
    output = claim_results(out, cfg)  # re-checked: files that appeared since the start are kept
    table = write_results(out, results, test.relevant, test.rows(data), random, inputs, counterfactual)
    output.record(*FILES)  # every file's checksum, which a later --scores verifies
    return table


def main(argv: list[str] | None = None) -> Path:
    """Run compare.py; a user error exits with one line on stderr and code 2 (``--debug``: the traceback)."""
    return cli_main(_main, argv)


def _main(argv: list[str] | None) -> Path:
    parser = build_parser()
    cfg = parser.parse_args(expand(argv, "compare"))
    out = Path(cfg.out) if cfg.out else default_out(cfg)
    check_config(cfg, out)
    claim_results(out, cfg, write=False)  # its marker is written in `run`, before the results
    threads = torch.get_num_threads()
    if cfg.model.threads and torch.device(cfg.model.device).type == "cpu":
        torch.set_num_threads(cfg.model.threads)
    try:
        table = run(cfg, out)
    finally:
        torch.set_num_threads(threads)
    if table is None:  # a DDP rank other than 0
        return out
    print(table)
    features = "off" if not cfg.model.feature_cache else cache_dir() / "features"
    print(
        f"Wrote {', '.join(FILES)} to {out}/ (tensorboard --logdir {out / 'tensorboard'}); "
        f"feature cache: {features}"
    )
    return out


if __name__ == "__main__":
    main()
