"""python -m probes.counterfactual build|remove|oracle --config configs/compare.yaml ...

build   retrain f_old on M random subsets (K seeds each, or fixed-order) -> GT/ground_truth.safetensors
remove  drop each method's top-k documents per test function, retrain, and measure the answer's loss
oracle  MAGIC's [q, n] influence matrix for every query of a split -> OUT/oracle.safetensors
"""

from __future__ import annotations

from pathlib import Path

import torch
from jsonargparse import ActionYesNo, ArgumentParser

from probes.compare.config import PairConfig, add_study_arguments
from probes.errors import check_writable_folder, cli_main
from probes.pairs.overlay import expand


def _base(parser: ArgumentParser, out_help: str) -> None:
    """The config's data and pair, the output folder and --overwrite."""
    add_study_arguments(parser)
    parser.add_argument("--out", type=str, required=True, help=out_help)
    parser.add_argument(
        "--overwrite",
        action=ActionYesNo,
        default=False,
        help="write beside other files in the output folder (kept: only files its marker records go)",
    )
    parser.add_argument(
        "--recipe",
        type=str | None,
        default=None,
        help="a recipe YAML (e.g. configs/recipes/hops-upstream.yaml) for a pair this project did not build "
        "(default: the pair's build manifest)",
    )


def _common(parser: ArgumentParser, out_help: str) -> None:
    """`_base` and the retrains' seed, stacking and workers (build, remove)."""
    _base(parser, out_help)
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seeds the subsets (build); the random control, ties and --functions sample (remove)",
    )
    parser.add_argument(
        "--stack", type=int, default=25, help="retrains run at once on a GPU (stacked under vmap)"
    )
    parser.add_argument(
        "--workers",
        type=int | None,
        default=None,
        help="processes sharing the retrains on a CPU (default: one per core, one thread each)",
    )
    parser.add_argument(
        "--executor",
        type=str,
        default="local",
        help="local: here (--workers processes on a CPU); ray: each chunk of retrains a Ray task holding "
        "one GPU (one CPU on a CPU) on a local Ray or --ray-address's cluster (pip install 'probes[ray]')",
    )
    parser.add_argument(
        "--ray-address",
        type=str | None,
        default=None,
        help="an existing Ray cluster's address (default: start a Ray of this machine for the run)",
    )


def _build_options(build: ArgumentParser) -> None:
    """build's subsets, regime, kept share, seeds per subset and query split."""
    build.add_argument("--subsets", type=int, default=32, help="M: random subsets, one retrain each")
    build.add_argument(
        "--regime",
        type=str,
        default="stochastic",
        help="stochastic: each subset's documents alone, reshuffled; fixed-order: f_new's run on every "
        "document, same batches and steps, the dropped ones weighted 0 in place (MAGIC's)",
    )
    build.add_argument(
        "--fraction",
        type=float | None,
        default=None,
        help="stochastic: share of the documents each subset keeps (default 0.5)",
    )
    build.add_argument("--drop", type=float | None, default=None, help="fixed-order: share each subset drops")
    build.add_argument(
        "--seeds-per-subset",
        type=int | None,
        default=None,
        help="stochastic: K retrains of every subset with different data-order seeds (default 5); the LDS "
        "reads their mean, the noise ceiling their split-half correlation (K >= 2). fixed-order: 1",
    )
    build.add_argument(
        "--split",
        type=str,
        default="test",
        help="whose answers are recorded: test (compare.py's LDS), or train / validation (a training target "
        "of the influence-trained DLP, configs/dlp-influence.yaml; its subsets and data orders are never "
        "a test build's)",
    )


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m probes.counterfactual", description=__doc__, default_meta=False)
    commands = parser.add_subcommands(dest="command")
    build = ArgumentParser(description="retrain on random subsets: the LDS ground truth")
    _common(build, "the ground-truth folder (resumes an unfinished build of the same settings)")
    _build_options(build)
    commands.add_subcommand("build", build)
    remove = ArgumentParser(description="retrain without each method's top-k documents per test function")
    _common(remove, "the removal folder (resumes an unfinished run of the same settings)")
    remove.add_argument(
        "--labels", type=str, nargs="+", required=True, help="rows of the config's methods (or dlp) to test"
    )
    remove.add_argument("--k", type=int, nargs="+", required=True, help="documents removed per function")
    remove.add_argument(
        "--functions", type=int | None, default=None, help="a seeded sample of this many test functions"
    )
    remove.add_argument(
        "--scores",
        type=str,
        nargs="+",
        default=[],
        help="finished compare.py output folders: their rows computed from the same config and inputs (by "
        "content) are reused, the others scored into OUT/compare",
    )
    commands.add_subcommand("remove", remove)
    oracle = ArgumentParser(description="MAGIC's influence matrix for a split's queries, with a manifest")
    _base(oracle, "the oracle folder (oracle.safetensors, manifest.json)")
    oracle.add_argument("--split", type=str, default="test", help="train, validation or test")
    oracle.add_argument(
        "--query_batch", type=int, default=64, help="queries per reverse pass through the run"
    )
    oracle.add_argument(
        "--every",
        type=int | None,
        default=None,
        help="steps between checkpoints (default: sqrt of the steps)",
    )
    commands.add_subcommand("oracle", oracle)
    return parser


def main(argv: list[str] | None = None) -> Path:
    """Run a subcommand; a user error exits with one line and code 2 (``--debug``: the traceback)."""
    return cli_main(_main, argv)


def _main(argv: list[str] | None) -> Path:
    from probes.counterfactual import build, oracle, remove
    from probes.counterfactual.study import claim

    cfg = build_parser().parse_args(expand(argv, "counterfactual"))  # a pair overlay: these keys
    sub = cfg[cfg.command]
    PairConfig(**sub.model.as_dict())
    out = Path(sub.out)
    check_writable_folder(out, "out", write=True)
    kind, own = {
        "build": (build.KIND, build.OWN),
        "remove": (remove.KIND, remove.FILES),
        "oracle": (oracle.KIND, oracle.OWN),
    }[cfg.command]
    claim(sub, out, kind, own, overwrite=sub.overwrite, settings={}, write=False)  # the marker: later
    if sub.model.threads and sub.model.device == "cpu":
        torch.set_num_threads(sub.model.threads)
    if cfg.command == "oracle":
        manifest = oracle.write_oracle(
            sub, out, split=sub.split, query_batch=sub.query_batch, every=sub.every, overwrite=sub.overwrite
        )
        shape = f"[{len(manifest['queries']['ids'])}, {manifest['documents']['count']}]"
        print(f"Wrote {', '.join(oracle.FILES)} to {out}/: {shape} in {manifest['seconds']:.0f} s")
    elif cfg.command == "build":
        _build(sub, out)
    else:
        _remove(sub, out)
    return out


def _build(sub, out: Path) -> None:
    """``build``: the ground truth of ``sub``'s regime, written to ``out``."""
    from probes.counterfactual import ground_truth
    from probes.counterfactual.build import build_ground_truth, describe
    from probes.counterfactual.executors import Executor

    gt = build_ground_truth(
        sub,
        out,
        subsets=sub.subsets,
        fraction=sub.fraction,
        drop=sub.drop,
        regime=sub.regime,
        seeds_per_subset=sub.seeds_per_subset,
        split=sub.split,
        seed=sub.seed,
        stack=sub.stack,
        workers=sub.workers,
        overwrite=sub.overwrite,
        executor=Executor(sub.executor, sub.ray_address),
    )
    print(f"Wrote {', '.join(ground_truth.FILES)} to {out}/: {describe(gt)}")


def _remove(sub, out: Path) -> None:
    """``remove``: the removal test of ``sub``'s labels, written to ``out`` and printed."""
    from probes.counterfactual import remove
    from probes.counterfactual.executors import Executor

    report = remove.remove_documents(
        sub,
        out,
        labels=sub.labels,
        ks=sub.k,
        functions=sub.functions,
        seed=sub.seed,
        stack=sub.stack,
        workers=sub.workers,
        executor=Executor(sub.executor, sub.ray_address),
        reuse=sub.scores,
        overwrite=sub.overwrite,
    )
    print((out / remove.TABLE).read_text(), end="")
    sources = ", ".join(sorted(set(report["scores"].values())))
    print(f"Wrote {remove.RESULT}, {remove.TABLE} to {out}/ (the rows' scores from {sources})")


if __name__ == "__main__":
    main()
