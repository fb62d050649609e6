"""The structural labels' LDS on any ground truth, training and validation splits' included: how much of a
measured-influence target the labels alone predict.

compare.py scores the test split only; a DLP trained on measured influence (configs/dlp-influence.yaml) learns
from the training split's ground truth. This reads each ground truth's own corpus, split options and query
ids from its manifest, rebuilds the queries, checks the documents and queries are the ones it was built for
(their content hashes), and computes the relevance row's LDS (`probes.metrics.lds.lds`, as compare.py does:
mean over queries, 95% interval with subsets and queries resampled).

    python scripts/labels_lds.py GT [GT ...] [--corpus PATH]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from probes.counterfactual.ground_truth import data_problems, load_ground_truth, split_queries
from probes.counterfactual.oracle import SPLITS
from probes.data.hops import HopsData
from probes.errors import UserError, cli_main
from probes.metrics.lds import lds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "truths", type=Path, nargs="+", help="ground truth folders (probes.counterfactual build)"
    )
    parser.add_argument(
        "--corpus", help="the corpus file, where the one named in a manifest has moved (its hash is checked)"
    )
    args = parser.parse_args(argv)
    rows = ["| ground truth | queries | subsets x seeds | retrained accuracy | labels' LDS | 95% interval |"]
    rows.append("|---|---|---|---|---|---|")
    for folder in args.truths:
        truth = load_ground_truth(folder)  # validated and checksummed, as compare.py reads it
        manifest = truth.manifest
        data = HopsData(corpus_path=args.corpus or manifest["corpus"]["path"], **manifest["split"]).prepare()
        ids, query_texts = split_queries(data, SPLITS[manifest["query_split"]])
        problems = data_problems(truth, texts=data.corpus.texts, query_ids=ids, query_texts=query_texts)
        if problems:
            raise UserError(
                f"{truth.where}: the corpus {data.options.corpus_path} with its recorded split options "
                f"does not give what it was built for: {'; and '.join(problems)}. Pass the corpus it was "
                "built on with --corpus"
            )
        _, summary = lds(
            data.relevant[ids].float(),
            truth.masks,
            truth.seed_mean,
            [data.query_functions[i] for i in ids],
        )
        m, k, _ = truth.outputs.shape
        lo, hi = summary["ci95"]
        accuracy = manifest.get("accuracy")
        shown = "–" if accuracy is None else f"{accuracy:.1%}"
        rows.append(
            f"| {folder} ({manifest['query_split']}) | {len(ids)} | {m} x {k} | {shown} | "
            f"{summary['mean']:.3f} | [{lo:.3f}, {hi:.3f}] |"
        )
    print("\n".join(rows))  # once every ground truth has been read and checked


if __name__ == "__main__":
    cli_main(main)
