"""python -m probes.counterfactual build|remove --config configs/compare.yaml ...

build   retrain f_old on M random document subsets (f_new's recipe) -> GT/ground_truth.safetensors
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
    parser.add_argument("--seed", type=int, default=0, help="seeds the subsets (build) or random controls")
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
        "--repeats", type=int, default=0, help="subsets retrained again with another seed (noise ceiling)"
    )
    commands.add_subcommand("build", build)
    return parser


def main(argv: list[str] | None = None) -> Path:
    """Run a subcommand; a user error exits with one line and code 2 (``--debug``: the traceback)."""
    return cli_main(_main, argv)


def _main(argv: list[str] | None) -> Path:
    from probes.counterfactual.ground_truth import FILES

    cfg = build_parser().parse_args(argv)
    sub = cfg[cfg.command]
    PairConfig(**sub.model.as_dict())
    out = Path(sub.out)
    check_writable_folder(out, "out")
    own = (*FILES, "parts/", "plan.json")
    check_output_folder(out, own, overwrite=sub.overwrite, inputs=[sub.data.corpus_path, sub.model.old])
    if sub.model.threads and sub.model.device == "cpu":
        torch.set_num_threads(sub.model.threads)
    if cfg.command == "build":
        from probes.counterfactual.build import build_ground_truth, describe

        gt = build_ground_truth(
            sub,
            out,
            subsets=sub.subsets,
            fraction=sub.fraction,
            repeats=sub.repeats,
            seed=sub.seed,
            stack=sub.stack,
            workers=sub.workers,
        )
        print(f"Wrote {', '.join(FILES)} to {out}/: {describe(gt)}")
    return out


if __name__ == "__main__":
    main()
