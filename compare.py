"""Every attribution method on the same test split -> metrics.json, scores, CSVs, table, plot, TensorBoard.

``python compare.py --config configs/compare.yaml [--out DIR]``: the entry; the comparison is
probes.compare (its run: probes/compare/run.py), so an installed wheel runs it too."""

from probes.compare.run import main

if __name__ == "__main__":
    main()
