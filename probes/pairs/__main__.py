"""``python -m probes.pairs build|evaluate``: build a model pair, or run the reference evaluation of one."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from probes.errors import check_at_least, check_device, check_writable_folder, exit_code


def _inputs(text: str) -> list[int]:
    """``1-100`` or ``1,2,5``."""
    try:
        if "-" in text:
            low, high = (int(part) for part in text.split("-"))
            return list(range(low, high + 1))
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a range like 1-100 or a list like 1,2,5; got {text!r}"
        ) from None


def _parser() -> argparse.ArgumentParser:
    from probes.pairs.presets import PRESETS

    parser = argparse.ArgumentParser(prog="python -m probes.pairs", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build DIR/old and DIR/new (+ manifest.json) for a corpus")
    build.add_argument("--corpus", required=True, type=Path, help="HOPS JSONL corpus to fine-tune on")
    build.add_argument(
        "--out", required=True, type=Path, help="folder to write old/, new/ and manifest.json into"
    )
    build.add_argument(
        "--overwrite",
        action="store_true",
        help="write beside other files in --out (kept: only files its marker records are replaced)",
    )
    build.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="model/training preset")
    build.add_argument("--seed", type=int, default=0, help="seed of the world, the init and the data order")
    build.add_argument("--base", default=None, help="fine-tune this HF causal LM (path or hub id) instead")
    build.add_argument(
        "--epochs", type=float, default=None, help="fine-tuning epochs (default: the recipe's)"
    )
    build.add_argument(
        "--lr", type=float, default=None, help="fine-tuning learning rate (default: the recipe's)"
    )
    build.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    build.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ev = sub.add_parser("evaluate", help="accuracy of f_old and f_new on every function's queries")
    ev.add_argument("--old", required=True, help="f_old directory or hub id")
    ev.add_argument("--new", required=True, help="f_new directory or hub id")
    ev.add_argument("--corpus", required=True, type=Path, help="HOPS JSONL corpus the pair was built for")
    ev.add_argument(
        "--inputs", type=_inputs, default=list(range(1, 101)), help="query inputs (default 1-100)"
    )
    ev.add_argument("--query-format", default="returns", help="returns, output_of or a template")
    ev.add_argument("--dtype", default="float32", help="float32, bfloat16, ...")
    ev.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    ev.add_argument("--json", action="store_true", help='print {"old": {...}, "new": {...}} as JSON')
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (2 with one line on stderr for a user error; ``--debug``
    shows its traceback)."""
    return exit_code(_main, argv)


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "build":
        from probes.outputs import claim_output
        from probes.pairs.build import KIND, PAIR_FILES

        check_writable_folder(args.out, "--out", write=True)
        inputs = [args.corpus, args.base]  # the marker is written with the pair, after training
        claim_output(args.out, KIND, PAIR_FILES, overwrite=args.overwrite, inputs=inputs, write=False)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    check_device(device, "--device")
    if args.command == "build":
        check_at_least("--threads", args.threads, optional=True)
        return _build(args, device)
    return _evaluate(args, device)


def _build(args: argparse.Namespace, device: str) -> int:
    import torch

    from probes.pairs.build import BASE_FINETUNE, build_from_base, build_pair
    from probes.pairs.presets import get_preset

    if args.threads:
        torch.set_num_threads(args.threads)
    preset = get_preset(args.preset)
    finetune = BASE_FINETUNE if args.base else preset.finetune
    overrides = {k: v for k, v in (("epochs", args.epochs), ("lr", args.lr)) if v is not None}
    finetune = dataclasses.replace(finetune, **overrides)
    if args.base:
        manifest = build_from_base(
            args.corpus,
            args.out,
            args.base,
            finetune=finetune,
            seed=args.seed,
            device=device,
            overwrite=args.overwrite,
        )
    else:
        preset = dataclasses.replace(preset, finetune=finetune) if overrides else args.preset
        manifest = build_pair(
            args.corpus, args.out, preset=preset, seed=args.seed, device=device, overwrite=args.overwrite
        )
    new = manifest["evaluation"]["new"]
    print(
        f"wrote {args.out}/old and {args.out}/new in {manifest['seconds']:.0f}s: f_new accuracy "
        f"base {new['base']:.1%}, wrapper {new['wrapper']:.1%}"
    )
    return 0


def _evaluate(args: argparse.Namespace, device: str) -> int:
    from probes.data.corpus import load_corpus
    from probes.lm.load import load_pair, resolve_dtype
    from probes.pairs.evaluate import evaluate_pair, format_table, summary_json

    resolve_dtype(args.dtype)  # before the corpus and the pair load
    corpus = load_corpus(args.corpus)
    pair = load_pair(args.old, args.new, dtype=args.dtype, device=device, corpus=corpus)
    result = evaluate_pair(pair, corpus, inputs=args.inputs, query_format=args.query_format)
    print(json.dumps(summary_json(result)) if args.json else format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
