"""``python -m probes.models stamp CKPT [--corpus C]``: record what a DLP checkpoint saved before probes kept
that record was trained on (its corpus's texts in order and its f_new's weights, by content)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from probes.errors import exit_code


def _main(argv: list[str] | None) -> int:
    from probes.models.provenance import STAMP, stamp

    parser = argparse.ArgumentParser(prog=STAMP.rsplit(" ", 1)[0], description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    sub = commands.add_parser("stamp", help="record the corpus and f_new a checkpoint was trained on")
    sub.add_argument("checkpoint", type=Path, help="a DLP checkpoint (train_probe.py fit) without its record")
    sub.add_argument("--corpus", default=None, help="the corpus it was trained on (default: its hparams')")
    args = parser.parse_args(argv)
    done = stamp(args.checkpoint, args.corpus)
    print(f"stamped {args.checkpoint}: {done['documents']} documents and its f_new, by content")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; a user error returns 2 after one line on stderr (``--debug``: the traceback)."""
    return exit_code(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
