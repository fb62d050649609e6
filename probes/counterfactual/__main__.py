"""python -m probes.counterfactual build|remove --config configs/compare.yaml ...

build   retrain f_old on M random document subsets, K seeds each -> GT/ground_truth.safetensors
remove  drop each method's top-k documents per test function, retrain, and measure the answer's loss
"""

from __future__ import annotations

from pathlib import Path

import torch
from jsonargparse import ActionYesNo, ArgumentParser

from probes.compare_config import PairConfig, add_study_arguments
from probes.errors import check_writable_folder, cli_main
from probes.outputs import check_output_folder


def _common(parser: ArgumentParser, out_help: str) -> None:
    add_study_arguments(parser)
    parser.add_argument("--out", type=str, required=True, help=out_help)
    parser.add_argument(
        "--overwrite",
        action=ActionYesNo,
        default=False,
        help="write into an output folder that holds other files too (kept; only this command's files go)",
    )
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


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m probes.counterfactual", description=__doc__, default_meta=False)
    commands = parser.add_subcommands(dest="command")
    build = ArgumentParser(description="retrain on random subsets: the LDS ground truth")
    _common(build, "the ground-truth folder (resumes an unfinished build of the same settings)")
    build.add_argument("--subsets", type=int, default=32, help="M: random subsets, one retrain each")
    build.add_argument("--fraction", type=float, default=0.5, help="share of the documents each subset keeps")
    build.add_argument(
        "--seeds-per-subset",
        type=int,
        default=5,
        help="K: retrains of every subset with different data-order seeds; the LDS reads their mean, the "
        "noise ceiling their split-half correlation (K >= 2)",
    )
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
    return parser


def main(argv: list[str] | None = None) -> Path:
    """Run a subcommand; a user error exits with one line and code 2 (``--debug``: the traceback)."""
    return cli_main(_main, argv)


def _main(argv: list[str] | None) -> Path:
    from probes.counterfactual import ground_truth, remove

    cfg = build_parser().parse_args(argv)
    sub = cfg[cfg.command]
    PairConfig(**sub.model.as_dict())
    out = Path(sub.out)
    check_writable_folder(out, "out")
    own = (*ground_truth.FILES, "parts/", "plan.json") if cfg.command == "build" else remove.FILES
    inputs = [sub.data.corpus_path, sub.model.old, sub.model.new, sub.dlp_checkpoint]
    check_output_folder(out, own, overwrite=sub.overwrite, inputs=inputs)
    if sub.model.threads and sub.model.device == "cpu":
        torch.set_num_threads(sub.model.threads)
    if cfg.command == "build":
        from probes.counterfactual.build import build_ground_truth, describe

        gt = build_ground_truth(
            sub,
            out,
            subsets=sub.subsets,
            fraction=sub.fraction,
            seeds_per_subset=sub.seeds_per_subset,
            seed=sub.seed,
            stack=sub.stack,
            workers=sub.workers,
        )
        print(f"Wrote {', '.join(ground_truth.FILES)} to {out}/: {describe(gt)}")
    else:
        report = remove.remove_documents(
            sub,
            out,
            labels=sub.labels,
            ks=sub.k,
            functions=sub.functions,
            seed=sub.seed,
            stack=sub.stack,
            workers=sub.workers,
            reuse=sub.scores,
        )
        print((out / remove.TABLE).read_text(), end="")
        sources = ", ".join(sorted(set(report["scores"].values())))
        print(f"Wrote {remove.RESULT}, {remove.TABLE} to {out}/ (the rows' scores from {sources})")
    return out


if __name__ == "__main__":
    main()
