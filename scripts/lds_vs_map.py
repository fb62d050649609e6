"""Do the methods that rank documents well structurally also predict retraining?

Per ground truth of a finished ``compare.py --counterfactual`` run: the Spearman correlation over method rows
between each row's mean average precision and its mean LDS, with a 95% bootstrap interval over queries (both
means recomputed on each resample).

    python scripts/lds_vs_map.py results/compare [--exclude relevance dlp] [--resamples 1000]
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

import torch

from probes.metrics.spearman import spearman_columns


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "folder", type=Path, help="a compare.py output folder with LDS columns in per_query.csv"
    )
    parser.add_argument("--exclude", nargs="*", default=[], help="row labels to leave out")
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args()
    rows: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    with open(args.folder / "per_query.csv", newline="", encoding="utf-8") as handle:
        for line in csv.DictReader(handle):
            if line["label"] in args.exclude:
                continue
            for key, value in line.items():
                if key == "map" or key.startswith("lds:"):
                    rows[line["label"]][key].append(float(value) if value not in ("", "nan") else 0.0)
    labels = sorted(rows)
    truths = sorted(k for k in rows[labels[0]] if k.startswith("lds:"))
    ap = torch.tensor([rows[label]["map"] for label in labels], dtype=torch.float64)  # [methods, q]
    generator = torch.Generator().manual_seed(0)
    draws = torch.randint(ap.shape[1], (args.resamples, ap.shape[1]), generator=generator)
    print(f"{len(labels)} rows, {ap.shape[1]} queries")
    print("| ground truth | Spearman(mAP, LDS) over rows | 95% interval (queries resampled) |")
    print("|---|---|---|")
    for truth in truths:
        lds = torch.tensor([rows[label][truth] for label in labels], dtype=torch.float64)
        point = spearman_columns(ap.mean(1, keepdim=True), lds.mean(1, keepdim=True))[0]
        boot = spearman_columns(ap[:, draws].mean(2), lds[:, draws].mean(2))  # [methods, resamples]
        low, high = torch.quantile(boot, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
        print(f"| {truth[4:]} | {point:.3f} | [{low:.3f}, {high:.3f}] |")


if __name__ == "__main__":
    main()
