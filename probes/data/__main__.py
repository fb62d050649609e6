"""CLI: `python -m probes.data inspect PATH [--json] [--skip-invalid]` and `... generate --out PATH ...`."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence

from probes.data.corpus import Corpus, CorpusError, load_corpus
from probes.data.queries import candidate_answers, make_queries, relevance
from probes.errors import exit_code


def summary(corpus: Corpus) -> dict:
    """The inspection record: documents, functions and the default queries' relevance counts."""
    queries = make_queries(corpus)
    per_query = relevance(corpus, queries).sum(dim=1)
    return {
        "path": str(corpus.path) if corpus.path is not None else None,
        "documents": len(corpus),
        "distractor_documents": len(corpus.distractors),
        "functions": {
            f.name: {
                "role": f.role,
                "hop_depth": f.hop_depth,
                "wraps": f.wraps,
                "constant": f.constant,
                "documents": len(f.documents),
            }
            for f in corpus.functions.values()
        },  # fmt: skip
        "queries": {
            "count": len(queries),
            "relevant_min": int(per_query.min()),
            "relevant_max": int(per_query.max()),
        },
        "candidate_answers": candidate_answers(corpus),
    }


def render(info: dict) -> str:
    """A readable version of :func:`summary`."""
    fs = info["functions"]
    wrappers = sum(f["wraps"] is not None for f in fs.values())
    lines = [
        f"{info['path']}: {info['documents']} documents ({info['distractor_documents']} distractors), "
        f"{len(fs)} functions ({len(fs) - wrappers} base, {wrappers} wrappers, "
        f"max hop depth {max(f['hop_depth'] for f in fs.values())})",
        "",
        f"{'function':<12} {'role':<12} {'depth':>5}  {'wraps':<12} {'constant':>8} {'docs':>6}",
    ]
    for name, f in fs.items():
        lines.append(
            f"{name:<12} {f['role']:<12} {f['hop_depth']:>5}  {f['wraps'] or '-':<12} "
            f"{f['constant']:>8} {f['documents']:>6}"
        )
    q, answers = info["queries"], info["candidate_answers"]
    lines += [
        "",
        f"queries: {q['count']} (inputs 1..100, format 'returns'); relevant documents per query (pair): "
        f"{q['relevant_min']}..{q['relevant_max']}",
        f"candidate answers: {answers[0]}..{answers[-1]} ({len(answers)})",
    ]
    return "\n".join(lines)


def _inspect(args: argparse.Namespace) -> int:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            corpus = load_corpus(args.path, skip_invalid=args.skip_invalid)
        except CorpusError as err:
            print(f"probes.data inspect: error: {err}", file=sys.stderr)
            return 2
    for w in caught:
        print(f"probes.data inspect: warning: {w.message}", file=sys.stderr)
    info = summary(corpus)
    print(json.dumps(info, indent=2) if args.json else render(info))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from probes.data.synthetic import add_generate_arguments, run_generate

    parser = argparse.ArgumentParser(prog="python -m probes.data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser("inspect", help="check a HOPS JSONL corpus and summarise it")
    inspect.add_argument("path", help="the JSONL corpus")
    inspect.add_argument("--json", action="store_true", help="print the summary as JSON")
    inspect.add_argument("--skip-invalid", action="store_true", help="skip invalid rows (with one warning)")
    inspect.set_defaults(run=_inspect)
    generate = commands.add_parser("generate", help="write a HOPS corpus offline from a seed")
    add_generate_arguments(generate)
    generate.set_defaults(run=run_generate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (2 with one line on stderr for a user error; ``--debug``
    shows its traceback)."""
    return exit_code(_main, argv)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
