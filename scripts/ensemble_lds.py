"""The LDS of one row averaged over several finished comparisons (e.g. the DLP of three seeds), beside each
run's own.

Each run's ``[q, n]`` scores of the row are standardised per query (mean 0, sd 1, so that no run weighs more
for its scale) and averaged, as the DLP row of ``compare.py --dlp_checkpoint '[A, B, C]'`` averages its
checkpoints' scores (`probes.models.method.standardised_mean`); the LDS is `probes.metrics.lds.lds` against a
ground truth, as compare.py computes it (mean over queries, 95% interval with subsets and queries resampled).
The runs must list the same test queries.

    python scripts/ensemble_lds.py GT RUN1 RUN2 RUN3 [--label dlp]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from safetensors.torch import load_file

from probes.compare.reuse import KIND
from probes.counterfactual.ground_truth import load_ground_truth
from probes.metrics.lds import lds
from probes.models.method import standardised_mean
from probes.outputs import owned


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("truth", type=Path, help="a ground truth folder (probes.counterfactual build)")
    parser.add_argument("runs", type=Path, nargs="+", help="compare.py output folders holding the row")
    parser.add_argument("--label", default="dlp", help="the row's label in the runs' scores")
    args = parser.parse_args()
    truth = load_ground_truth(args.truth)  # validated and checksummed, as compare.py reads it
    masks, outputs = truth.masks, truth.seed_mean
    functions, runs = None, []
    print("| scores | LDS | 95% interval |\n|---|---|---|")
    for run in args.runs:
        output = owned(run, KIND)  # its files read only where their checksums hold, as --scores reads them
        with output.verify("queries.csv").open(newline="", encoding="utf-8") as handle:
            these = [row["func"] for row in csv.DictReader(handle)]
        if functions is not None and these != functions:
            raise SystemExit(f"{run}/queries.csv lists other test queries than {args.runs[0]}")
        functions = these
        scores = load_file(str(output.verify("scores.safetensors")))[args.label].double()
        print(row(str(run), lds(scores, masks, outputs, functions)[1]))
        runs.append(scores)
    mean = standardised_mean(runs)
    print(row(f"mean of the {len(args.runs)} standardised", lds(mean, masks, outputs, functions)[1]))


def row(name: str, metric: dict) -> str:
    low, high = metric["ci95"]
    return f"| {name} | {metric['mean']:.3f} | [{low:.3f}, {high:.3f}] |"


if __name__ == "__main__":
    main()
